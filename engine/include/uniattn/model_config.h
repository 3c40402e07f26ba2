// A model's shape and family (Llama, Mistral, Qwen2, Qwen3: docs/models.md), read from a Hugging Face
// config.json, with UniAttn's layer kinds (docs/uniattn.md §1) derived from the grouping_* keys.
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

// config.json's rope_scaling (rope_parameters in transformers 5): how the RoPE frequencies are rescaled.
//   kDefault: theta^(-2i/hd) unchanged.       kLinear: divided by factor (positions / factor).
//   kLlama3: Llama 3.1's per-frequency rule (wavelengths above L / low_freq_factor divided by factor, below
//            L / high_freq_factor kept, smoothly interpolated between; L = original_max_position_embeddings).
//   kDynamic: NTK-aware base, fixed once (vLLM's semantics, not transformers' per-forward recomputation,
//            which makes a token's result depend on the batch): theta' = theta · (factor · max_len / L −
//            (factor − 1))^(hd / (hd − 2)) with max_len = L · factor, L = original_max_position_embeddings
//            (max_position_embeddings when absent).
enum class RopeType { kDefault, kLinear, kDynamic, kLlama3 };
struct RopeScaling {
    RopeType type = RopeType::kDefault;
    double factor = 1;
    double low_freq_factor = 1;
    double high_freq_factor = 4;
    int original_max_position_embeddings = 0;
};

// config.json's quantization_config, for FP8 checkpoints as vLLM loads them (docs/models.md "FP8 checkpoints"):
// quant_method "fp8" (AutoFP8 / Qwen / DeepSeek style) or "compressed-tensors" (llm-compressor) with 8-bit float
// weights. Linear weights are F8_E4M3 tensors with a `weight_scale` (or block-wise `weight_scale_inv`) beside them;
// how a scale applies follows from its shape (one value: the tensor; one per output row: the channel; a grid of
// block_rows x block_cols tiles: the block). Other methods and formats (AWQ, GPTQ, int8, fp4) are refused by name.
struct QuantizationConfig {
    std::string method;                  // "" (none), "fp8" or "compressed-tensors"
    int block_rows = 0, block_cols = 0;  // weight_block_size / block_structure; 0: no block-wise scales
    bool static_activations = false;     // activation_scheme "static" (input_scale tensors; see docs/models.md)
    std::vector<std::string> ignored;    // modules kept in 16-bit (ignored_layers / ignore), for messages
    bool fp8() const { return !method.empty(); }
};

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
    int eos_token_id = 2;  // the first of eos_token_ids
    std::vector<int32_t> eos_token_ids = {2};
    std::string torch_dtype = "float32";

    // The family (which tensors exist and which keys change the math); docs/models.md lists them.
    std::string model_type = "llama";
    RopeScaling rope_scaling;
    bool qkv_bias = false;            // q_proj/k_proj/v_proj have biases (Qwen2 always; Llama/Qwen3 attention_bias)
    bool o_bias = false;              // o_proj has a bias (Llama attention_bias)
    bool qk_norm = false;             // Qwen3: RMSNorm over head_dim on each q and k head before RoPE
    int sliding_window = 0;           // > 0: each token attends to its last sliding_window positions (itself included)
    QuantizationConfig quantization;  // FP8 checkpoints; empty method: 16/32-bit weights

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

    // The RoPE inverse frequencies [head_dim / 2] with rope_scaling applied, in double (module comment of
    // RopeScaling); the backends rotate by positions[t] · RopeInvFreq()[i].
    std::vector<double> RopeInvFreq() const;

    // Parses config.json text; `path` names the file in messages. Keys that change the math are implemented
    // or refused by name (kUnimplemented); other unknown keys are ignored (as in transformers); missing
    // required keys and impossible values are errors.
    static StatusOr<ModelConfig> FromJson(const std::string& text, const std::string& path);
    // config.json as transformers writes it (keys in its order); uniattn/json_io.h's DumpJson writes it out.
    nlohmann::ordered_json ToJson() const;
};

}  // namespace uniattn
