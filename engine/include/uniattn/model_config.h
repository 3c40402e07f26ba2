// A Llama-family model's shape, read from a Hugging Face config.json, with UniAttn's layer kinds
// (docs/uniattn.md §1) derived from the grouping_* keys.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "uniattn/status.h"

namespace uniattn {

// normal: ordinary layer. anchor: computes its own softmax and hands P to the reuse layers above it.
// reuse: no Q/K, no RoPE, no K cache; applies its anchor's P to its own V, plus compensation Wc.
enum class LayerKind { kNormal, kAnchor, kReuse };

struct ModelConfig {
    std::string architecture = "LlamaForCausalLM";
    int vocab_size = 0;
    int hidden_size = 0;
    int intermediate_size = 0;
    int num_layers = 0;
    int num_heads = 0;
    int num_kv_heads = 0;
    int head_dim = 0;
    int max_position_embeddings = 2048;
    double rope_theta = 10000.0;
    double rms_norm_eps = 1e-5;
    bool tie_word_embeddings = false;
    int bos_token_id = 1;
    int eos_token_id = 2;
    std::string torch_dtype = "float32";

    // UniAttn grouping (docs/uniattn.md §1). has_grouping is false for a standard model.
    bool has_grouping = false;
    int grouping_idx = 1;        // G
    int grouping_begin_idx = 0;  // B
    int grouping_end_idx = 0;    // E (exclusive)

    // Derived by DeriveLayerKinds(): one entry per layer.
    std::vector<LayerKind> layer_kinds;
    std::vector<int> anchor_of;  // the anchor layer a reuse layer reads P from; -1 otherwise

    int num_reuse_layers() const;
    int num_rep() const { return num_heads / num_kv_heads; }
    bool HasKeys(int layer) const { return layer_kinds[layer] != LayerKind::kReuse; }

    // Validates G/B/E (G >= 1, 0 <= B <= E <= L + 1) and fills layer_kinds / anchor_of.
    Status DeriveLayerKinds();

    // KV bytes per token for this model's layout and for the same shape with every layer normal
    // (docs/uniattn.md §3: bytes(dtype) * Hkv * hd * (2 * (L - n_reuse) + n_reuse)).
    int64_t KvBytesPerToken(int dtype_bytes) const;
    int64_t DenseKvBytesPerToken(int dtype_bytes) const;

    // Parses config.json text; `path` names the file in messages. Unknown keys are ignored (as in
    // transformers); missing required keys and impossible values are errors.
    static StatusOr<ModelConfig> FromJson(const std::string& text, const std::string& path);
    // config.json as transformers writes it (keys in its order); uniattn/json_io.h's DumpJson writes it out.
    nlohmann::ordered_json ToJson() const;
};

}  // namespace uniattn
