// Element types of weights, KV planes and tensor files, and the scalar conversions between them. Shared by
// the file formats (uniattn/safetensors.h), the backends and the KV accounting; no file-format code here.
#pragma once

#include <cstdint>
#include <string>

#include "uniattn/status.h"

namespace uniattn {

enum class DType { kF32, kF16, kBF16 };
const char* DTypeName(DType dtype);  // safetensors spelling: F32, F16, BF16
int DTypeBytes(DType dtype);
StatusOr<DType> ParseDType(const std::string& name);

float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);  // round to nearest even
float BF16ToFloat(uint16_t b);
uint16_t FloatToBF16(float f);  // round to nearest even

}  // namespace uniattn
