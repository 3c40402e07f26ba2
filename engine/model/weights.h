// A model's weights on a backend, fused for the layer loop:
//   normal/anchor layers: w_qkv = [Wq; Wk; Wv]   [Hq·hd + 2·Hkv·hd, d]
//   reuse layers:         w_vc  = [Wv; Wc]        [Hkv·hd + Hq·hd, d]   (docs/uniattn.md §2: one GEMM, no Wq/Wk)
//   every layer:          w_gate_up = [Wgate; Wup] [2·ff, d]
// and, where the family has them (ModelConfig qkv_bias / o_bias / qk_norm):
//   normal/anchor layers: b_qkv = [bq | bk | bv]   [1, Hq·hd + 2·Hkv·hd]   (matches w_qkv's rows)
//   reuse layers:         b_v = bv                 [1, Hkv·hd]             (the V part of w_vc; Q/K are never read)
//   every layer:          b_o [1, d]; q_norm, k_norm [1, hd] (normal/anchor only)
// Matrices and the embedding are in backend->WeightDType(); norm weights and biases are fp32 on every backend.
//
// FP8 (issue 18, docs/models.md "FP8"): a linear weight of an FP8 checkpoint (F8_E4M3 with its weight_scale), or
// one quantized at load (LoadOptions::quantize_fp8: per output row, scale = amax / 448, round to nearest even),
// reaches a backend that takes fp8 weights (Backend::HoldsFp8Weights: CUDA) as e4m3 bytes with one fp32 scale per
// row (Tensor::scale), and any other backend as the values it stands for, e4m3 value x scale, in its weight
// dtype: exact in fp32 on the CPU oracle. Block-scaled checkpoint tensors keep their values everywhere. The
// embedding and lm_head stay in 16/32 bits.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "uniattn/model_config.h"
#include "uniattn/safetensors.h"

namespace uniattn {

struct LayerWeights {
    Tensor attn_norm;  // [1, d]
    Tensor ffn_norm;   // [1, d]
    Tensor w_qkv;      // normal/anchor only
    Tensor w_vc;       // reuse only
    Tensor w_o;        // [d, Hq·hd]
    Tensor w_gate_up;  // [2·ff, d]
    Tensor w_down;     // [d, ff]
    Tensor b_qkv;      // normal/anchor with qkv_bias: [1, Hq·hd + 2·Hkv·hd]
    Tensor b_v;        // reuse with qkv_bias: [1, Hkv·hd]
    Tensor b_o;        // o_bias: [1, d]
    Tensor q_norm;     // qk_norm, normal/anchor: [1, hd]
    Tensor k_norm;     // qk_norm, normal/anchor: [1, hd]
};

// How LoadWeights ran, for the start-up log line and benchmarks.
struct WeightLoadStats {
    double seconds = 0;      // reading, converting and uploading every tensor (checks excluded)
    int64_t file_bytes = 0;  // checkpoint bytes read
    int num_threads = 0;     // host threads that converted and staged
};

struct ModelWeights {
    Tensor embed;       // [vocab, d]
    Tensor final_norm;  // [1, d]
    Tensor lm_head;     // [vocab, d]; the embedding when tied
    std::vector<LayerWeights> layers;
    const double* rope_inv_freq = nullptr;  // [head_dim / 2] fp64: ModelConfig::RopeInvFreq() on the backend
    std::vector<std::unique_ptr<DeviceBuffer>> buffers;
    int64_t bytes = 0;
    WeightLoadStats load;    // LoadWeights only
    int num_fp8_linear = 0;  // linear weights holding fp8 values (from the checkpoint or quantized at load)
    int num_fp8_stored = 0;  // of those, stored as e4m3 bytes with per-row scales (Backend::HoldsFp8Weights)
    // An FP8 checkpoint's KV cache scales (self_attn.k_scale / v_scale, or the older kv_scale for both), one per
    // layer (K of reuse layers: 0, unused); empty when the checkpoint has none.
    std::vector<float> kv_k_scale, kv_v_scale;
};

struct LoadOptions {
    // Host threads reading and converting tensors while the backend uploads (the calling thread is one);
    // 0: std::thread::hardware_concurrency(), at most kMaxLoadThreads.
    int num_threads = 0;
    // Tensors are read, converted and uploaded in pieces of at most this many bytes of the backend dtype:
    // the unit of work of one thread and the size of the backend's staging buffers.
    size_t chunk_bytes = size_t{16} << 20;
    // engine.quantization=fp8: every linear weight of a 16/32-bit checkpoint is rounded to e4m3 with a scale per
    // output row (weights already F8_E4M3 keep theirs). The embedding and lm_head are not quantized.
    bool quantize_fp8 = false;
};
inline constexpr int kMaxLoadThreads = 16;

// Loads and checks every tensor: names, shapes, dtypes, and the UniAttn consistency rules of docs/uniattn.md §5.
// A tensor the config does not call for (a bias of a model without attention_bias, say) is an error, as is
// a missing one; reuse layers' q/k projections, biases and norms are allowed but not loaded, and so are
// saved rotary_emb.inv_freq buffers and lm_head.weight of a tied model. Messages name the file and the tensor.
// Every check runs before any data is read. Tensors are then read (TensorView::Read) and converted to the
// backend's dtypes directly (ConvertDType: equal dtypes are copied as bytes) by options.num_threads threads,
// chunk by chunk, into the staging memory of a Backend::MakeUploader, which uploads while they work. Host
// memory beyond the backend's: its staging buffers and 256 KiB per thread. The backend is used by the loader
// threads meanwhile (Uploader) and is synchronised when this returns.
StatusOr<ModelWeights> LoadWeights(const TensorSet& tensors, const ModelConfig& config, Backend* backend,
                                   const LoadOptions& options = {});

// Seeded uniform random weights of `config`'s shapes, generated on the backend (Backend::FillUniform):
// for benchmarks of real shapes without checkpoint files. Linear weights have unit output variance for
// unit-RMS inputs, norms are near 1. fp8: linear weights as e4m3 bytes with per-row scales (the backend must
// hold fp8 weights: Backend::HoldsFp8Weights), the same distribution.
StatusOr<ModelWeights> RandomWeights(const ModelConfig& config, Backend* backend, uint64_t seed, bool fp8 = false);

// The tensor names of the Hugging Face Llama layout.
std::string LayerTensorName(int layer, const std::string& suffix);

}  // namespace uniattn
