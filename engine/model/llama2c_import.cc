#include "model/llama2c_import.h"

#include <cstring>
#include <vector>

#include "uniattn/json_io.h"
#include "uniattn/model_config.h"
#include "uniattn/safetensors.h"
#include "util/file.h"

namespace uniattn {

namespace {

// Row permutation of Hugging Face's Llama conversion: within each head, llama2.c's pair (2i, 2i+1)
// becomes (i, i + head_dim/2).
std::vector<float> PermuteRope(const float* w, int num_heads, int head_dim, int cols) {
    std::vector<float> out(static_cast<size_t>(num_heads) * head_dim * cols);
    const int half = head_dim / 2;
    for (int h = 0; h < num_heads; ++h) {
        for (int i = 0; i < half; ++i) {
            for (int r = 0; r < 2; ++r) {
                const int64_t src = static_cast<int64_t>(h) * head_dim + 2 * i + r;
                const int64_t dst = static_cast<int64_t>(h) * head_dim + r * half + i;
                std::memcpy(&out[dst * cols], w + src * cols, sizeof(float) * cols);
            }
        }
    }
    return out;
}

}  // namespace

Status ImportLlama2c(const Llama2cImportOptions& o) {
    UA_ASSIGN_OR_RETURN(std::string bin, ReadFile(o.checkpoint));
    if (bin.size() >= 4 && std::memcmp(bin.data(), "ak42", 4) == 0) {
        return Unimplemented(o.checkpoint +
                             ": llama2.c version-1+ exports (magic \"ak42\") are not supported; "
                             "use the legacy format of run.c");
    }
    if (bin.size() < 28) return DataLoss(o.checkpoint + ": too short for a llama2.c header");
    int32_t h[7];
    std::memcpy(h, bin.data(), sizeof(h));
    const int dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kv_heads = h[4], seq_len = h[6];
    const bool shared = h[5] > 0;
    const int vocab = shared ? h[5] : -h[5];
    if (dim <= 0 || hidden <= 0 || layers <= 0 || heads <= 0 || kv_heads <= 0 || vocab <= 0 || seq_len <= 0 ||
        dim % heads != 0 || heads % kv_heads != 0 || dim > (1 << 16) || layers > 1024 || vocab > (1 << 22)) {
        return DataLoss(o.checkpoint + ": implausible llama2.c header (dim " + std::to_string(dim) + ", layers " +
                        std::to_string(layers) + ", heads " + std::to_string(heads) + ", vocab " +
                        std::to_string(vocab) + ")");
    }
    const int head_dim = dim / heads;
    const int64_t kv_dim = static_cast<int64_t>(kv_heads) * head_dim;
    const int64_t L = layers, D = dim, F = hidden, V = vocab;
    const int64_t floats = V * D + L * D + L * D * D + 2 * L * D * kv_dim + L * D * D + L * D + 3 * L * D * F + D +
                           static_cast<int64_t>(seq_len) * head_dim + (shared ? 0 : V * D);
    const int64_t want = 28 + 4 * floats;
    if (static_cast<int64_t>(bin.size()) != want) {
        return DataLoss(o.checkpoint + ": " + std::to_string(bin.size()) + " bytes, but the header implies " +
                        std::to_string(want) + " (truncated or trailing data?)");
    }
    const float* p = reinterpret_cast<const float*>(bin.data() + 28);  // std::string data is suitably aligned
    auto take = [&](int64_t n) {
        const float* at = p;
        p += n;
        return at;
    };
    const float* embed = take(V * D);
    const float* rms_att = take(L * D);
    const float* wq = take(L * D * D);
    const float* wk = take(L * kv_dim * D);
    const float* wv = take(L * kv_dim * D);
    const float* wo = take(L * D * D);
    const float* rms_ffn = take(L * D);
    const float* w1 = take(L * F * D);
    const float* w2 = take(L * D * F);
    const float* w3 = take(L * F * D);
    const float* rms_final = take(D);
    take(static_cast<int64_t>(seq_len) * head_dim);  // freq_cis_real, freq_cis_imag: recomputed at run time
    const float* wcls = shared ? embed : take(V * D);

    UA_RETURN_IF_ERROR(MakeDirs(o.out_dir));
    std::vector<std::vector<float>> permuted;
    permuted.reserve(2 * layers);
    std::vector<TensorToWrite> tensors;
    auto add = [&](const std::string& name, std::vector<int64_t> shape, const float* data) {
        tensors.push_back(TensorToWrite{name, o.dtype, std::move(shape), data});
    };
    add("model.embed_tokens.weight", {V, D}, embed);
    for (int l = 0; l < layers; ++l) {
        auto name = [&](const char* s) { return "model.layers." + std::to_string(l) + "." + s; };
        add(name("input_layernorm.weight"), {D}, rms_att + l * D);
        permuted.push_back(PermuteRope(wq + l * D * D, heads, head_dim, dim));
        add(name("self_attn.q_proj.weight"), {D, D}, permuted.back().data());
        permuted.push_back(PermuteRope(wk + l * kv_dim * D, kv_heads, head_dim, dim));
        add(name("self_attn.k_proj.weight"), {kv_dim, D}, permuted.back().data());
        add(name("self_attn.v_proj.weight"), {kv_dim, D}, wv + l * kv_dim * D);
        add(name("self_attn.o_proj.weight"), {D, D}, wo + l * D * D);
        add(name("post_attention_layernorm.weight"), {D}, rms_ffn + l * D);
        add(name("mlp.gate_proj.weight"), {F, D}, w1 + l * F * D);
        add(name("mlp.down_proj.weight"), {D, F}, w2 + l * D * F);
        add(name("mlp.up_proj.weight"), {F, D}, w3 + l * F * D);
    }
    add("model.norm.weight", {D}, rms_final);
    if (!shared) add("lm_head.weight", {V, D}, wcls);
    UA_RETURN_IF_ERROR(WriteSafetensors(o.out_dir + "/model.safetensors", tensors, {{"format", "pt"}}));

    ModelConfig c;
    c.vocab_size = vocab;
    c.hidden_size = dim;
    c.intermediate_size = hidden;
    c.num_layers = layers;
    c.num_heads = heads;
    c.num_kv_heads = kv_heads;
    c.head_dim = head_dim;
    c.max_position_embeddings = seq_len;
    c.rope_theta = 10000.0;
    c.rms_norm_eps = 1e-5;
    c.tie_word_embeddings = shared;
    c.torch_dtype = o.dtype == DType::kF32 ? "float32" : (o.dtype == DType::kF16 ? "float16" : "bfloat16");
    UA_RETURN_IF_ERROR(WriteFile(o.out_dir + "/config.json", DumpJson(c.ToJson(), 2) + "\n"));

    const OrderedJson tc = {{"tokenizer_class", "LlamaTokenizer"},
                            {"add_bos_token", true},
                            {"add_eos_token", false},
                            {"bos_token", "<s>"},
                            {"eos_token", "</s>"},
                            {"unk_token", "<unk>"},
                            {"model_max_length", seq_len}};
    UA_RETURN_IF_ERROR(WriteFile(o.out_dir + "/tokenizer_config.json", DumpJson(tc, 2) + "\n"));
    if (!o.tokenizer.empty()) {
        UA_ASSIGN_OR_RETURN(std::string spm, ReadFile(o.tokenizer));
        UA_RETURN_IF_ERROR(WriteFile(o.out_dir + "/tokenizer.model", spm));
    }
    return Status::Ok();
}

}  // namespace uniattn
