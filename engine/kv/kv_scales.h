// The fp8 e4m3 KV cache's per-head scales (KvPlane::scale): a value x of KV head h is stored as
// FloatToFp8E4M3(x / scale[h]). Where they come from: a checkpoint's per-tensor k_scale / v_scale
// (UniformKvScales), or a measurement on the model itself (CalibrateKvScales: prefill a short text, record
// the largest |K| and |V| of every KV head, and leave headroom).
#pragma once

#include <cstdint>
#include <vector>

#include "uniattn/dtype.h"
#include "uniattn/model_config.h"
#include "uniattn/status.h"

namespace uniattn {

class Backend;
struct Model;

struct KvScales {
    // [num_layers][num_kv_heads]; k[l] is empty for reuse layers (they have no K plane).
    std::vector<std::vector<float>> k, v;
};

// Per-tensor scales (every head of every layer the same), e.g. from a checkpoint's k_scale / v_scale.
KvScales UniformKvScales(const ModelConfig& config, float k, float v);

// InvalidArgument unless `scales` has the shape above for `config` and every scale is finite and positive; the
// message names the layer and head at fault.
Status CheckKvScales(const ModelConfig& config, const KvScales& scales);

// Values up to this many times a head's calibration maximum are stored without clipping.
inline constexpr float kKvScaleHeadroom = 2.0f;

// The fp8 KV cache's per-head scales measured on the model itself: the sequences are prefilled (one Forward
// each, from position 0) through a temporary cache in the backend's own KV dtype; each (layer, kv head) scale
// is amax(|K|) (resp. |V|) over every written position and head_dim entry, divided by
// kFp8E4M3Max / kKvScaleHeadroom (224); a head that stayed 0 gets scale 1. K is measured after RoPE (and
// q/k-norm, biases): what the cache holds. Reuse layers get an empty k entry. Errors: InvalidArgument when
// the sequences hold no token, one is longer than max_position_embeddings or a token is outside the
// vocabulary; FailedPrecondition when a cached value is not finite. Nothing else may run on the backend
// meanwhile.
StatusOr<KvScales> CalibrateKvScales(const Model& model, Backend* backend,
                                     const std::vector<std::vector<int32_t>>& sequences);

// Calibration input, deterministic: a built-in English passage of about 430 words (everyday topics, numbers,
// punctuation) encoded by the model's tokenizer with its special tokens (Encode(text, add_bos())) and split
// into up to 4 sequences of at most L = min(256, max_position_embeddings) tokens (only the first starts with
// BOS). Without a tokenizer (model.tokenizer == nullptr, or one that encodes no text), 2 sequences of L token
// ids from a fixed-seed SplitMix64 stream over [0, vocab_size).
std::vector<std::vector<int32_t>> KvCalibrationSequences(const Model& model);

}  // namespace uniattn
