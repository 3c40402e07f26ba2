// What Engine::Create decides before the engine thread starts, besides loading the model: the dtype a
// device backend holds weights and KV in, and how many bytes the KV pool gets.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "kv/kv_scales.h"
#include "model/forward.h"
#include "uniattn/dtype.h"
#include "uniattn/engine.h"
#include "uniattn/generation_config.h"
#include "uniattn/tokenizer.h"

namespace uniattn {

// engine.dtype: "auto" (bfloat16 for a bfloat16 checkpoint on a device backend, else float16), "float16",
// "bfloat16" or "float32"; the CPU backend computes in float32 only. kInvalidArgument on `dtype`.
StatusOr<DType> ResolveDeviceDType(const EngineConfig& config);

// engine.quantization ("none", "fp8") and engine.kv_cache_dtype ("auto", "fp8_e4m3", "fp8"): kInvalidArgument
// naming the field for another value, kUnimplemented for fp8_e5m2, before anything loads. Both backends take
// both.
struct Fp8Choice {
    bool weights = false;  // round linear weights to e4m3 at load (LoadOptions::quantize_fp8)
    bool kv = false;       // an fp8 e4m3 KV cache
};
StatusOr<Fp8Choice> ResolveFp8(const EngineConfig& config);

// The fp8 KV cache's scales: the checkpoint's self_attn.k_scale / v_scale when it has them (one per layer,
// every head alike), else measured on the model (CalibrateKvScales over KvCalibrationSequences). Logged to stderr.
StatusOr<KvScales> FindKvScales(const Model& model, Backend* backend);

// kv_cache_bytes, or kv_cache_memory_fraction of physical RAM (CPU backend) or of the device memory left
// once the weights are loaded and `runner`'s step workspaces are reserved for the largest step (device
// backends; the figure is logged to stderr).
StatusOr<int64_t> KvPoolBytes(const EngineConfig& config, Backend* backend, ModelRunner* runner, int max_model_len);

// EngineConfig::generation_config: "auto" (MODEL/generation_config.json when present), "none", or a directory.
StatusOr<GenerationConfig> LoadGenerationConfig(const EngineConfig& config);

// The ids that end a sample: the tokenizer's eos, config.json's eos_token_id and generation_config.json's
// (Llama-3.1 lists three: <|end_of_text|>, <|eom_id|>, <|eot_id|>), first occurrence order, no repeats.
std::vector<int32_t> EosTokenIds(const Tokenizer& tokenizer, const ModelConfig& config,
                                 const GenerationConfig& generation);

}  // namespace uniattn
