// Element types of weights, KV planes and tensor files, and the scalar conversions between them. Shared by
// the file formats (uniattn/safetensors.h), the backends and the KV accounting; no file-format code here.
#pragma once

#include <cstdint>
#include <string>

#include "uniattn/status.h"

namespace uniattn {

// kF8E4M3: OCP fp8 e4m3 ("e4m3fn", torch.float8_e4m3fn): 1 sign, 4 exponent (bias 7) and 3 mantissa bits, no
// infinities, NaN = S.1111.111, largest finite 448, smallest subnormal 2^-9. It holds scaled values (FP8 weights
// with their weight_scale, the fp8 KV cache with per-head scales); ConvertDType moves raw values only.
enum class DType { kF32, kF16, kBF16, kF8E4M3 };
const char* DTypeName(DType dtype);  // safetensors spelling: F32, F16, BF16, F8_E4M3
int DTypeBytes(DType dtype);
StatusOr<DType> ParseDType(const std::string& name);

float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);  // round to nearest even
float BF16ToFloat(uint16_t b);
uint16_t FloatToBF16(float f);  // round to nearest even
inline constexpr float kFp8E4M3Max = 448.0f;
float Fp8E4M3ToFloat(uint8_t b);
// Round to nearest even, saturating: finite values beyond ±448 and ±inf become ±448 (CUDA's __NV_SATFINITE); NaN
// becomes 0x7F.
uint8_t FloatToFp8E4M3(float f);

// Converts n values of src_dtype at `src` into dst_dtype at `dst` in one pass (no fp32 buffer between). The
// result is bit for bit what widening to float (HalfToFloat / BF16ToFloat) and rounding back (FloatToHalf /
// FloatToBF16) gives, except that equal dtypes are copied as bytes: NaN payloads are kept as stored, where
// the round trip would canonicalise them (fp16) or set the quiet bit (bf16). No alignment needed; src and dst
// must not overlap. Thread-safe.
void ConvertDType(const void* src, DType src_dtype, void* dst, DType dst_dtype, int64_t n);

}  // namespace uniattn
