// What Engine::Create decides before the engine thread starts, besides loading the model: the dtype a
// device backend holds weights and KV in, and how many bytes the KV pool gets.
#pragma once

#include <cstdint>

#include "backend/backend.h"
#include "model/forward.h"
#include "uniattn/dtype.h"
#include "uniattn/engine.h"

namespace uniattn {

// engine.dtype: "auto" (bfloat16 for a bfloat16 checkpoint on a device backend, else float16), "float16",
// "bfloat16" or "float32"; the CPU backend computes in float32 only. kInvalidArgument on `dtype`.
StatusOr<DType> ResolveDeviceDType(const EngineConfig& config);

// kv_cache_bytes, or kv_cache_memory_fraction of physical RAM (CPU backend) or of the device memory left
// once the weights are loaded and `runner`'s step workspaces are reserved for the largest step (device
// backends; the figure is logged to stderr).
StatusOr<int64_t> KvPoolBytes(const EngineConfig& config, Backend* backend, ModelRunner* runner, int max_model_len);

}  // namespace uniattn
