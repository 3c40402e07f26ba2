// Random Llama-family model directories for tests: config.json (ModelConfig::ToJson) plus safetensors
// weights (WriteSafetensors), in any shape, GQA or MHA, tied or separate embeddings, fp32/fp16/bf16,
// one file or sharded with model.safetensors.index.json, and optionally UniAttn grouping keys with
// v2_proj tensors for exactly the reuse layers (docs/uniattn.md §1, §5).
//
//   testutil::TempDir tmp;
//   testutil::RandomModelOptions o;
//   o.num_heads = 6, o.num_kv_heads = 2, o.has_grouping = true, o.grouping_idx = 2, o.grouping_end_idx = 4;
//   ASSERT_TRUE(testutil::WriteRandomModel(tmp.path(), o).ok());
//   auto model = Model::Load(tmp.path(), backend.get(), /*load_tokenizer=*/false);
//
// Everything is deterministic in `seed` (a fixed SplitMix64 stream, not <random>'s distributions, so
// the values do not depend on the standard library). Weight values are rounded to `dtype` before they
// are returned or written, so the same tensors written as F32 and as F16/BF16 load to identical fp32
// weights.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "model/weights.h"
#include "uniattn/json_io.h"
#include "uniattn/model_config.h"
#include "uniattn/safetensors.h"
#include "uniattn/status.h"
#include "util/file.h"

namespace uniattn::testutil {

// The project's pinned default model, converted by scripts/setup.sh (git-ignored). Tests that need it
// fail, never skip, when it is missing.
inline std::string DefaultModelDir() { return std::string(UNIATTN_SOURCE_DIR) + "/models/stories15M"; }
inline constexpr char kMissingDefaultModel[] = "the default model is missing: run scripts/setup.sh";

// A small deterministic generator (SplitMix64).
class Rng {
  public:
    explicit Rng(uint64_t seed) : state_(seed) {}
    uint64_t Next() {
        uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    // Uniform in [0, 1).
    double Unit() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
    float Uniform(float lo, float hi) { return lo + static_cast<float>(Unit()) * (hi - lo); }
    // Uniform in [0, n).
    int Int(int n) { return static_cast<int>(Next() % static_cast<uint64_t>(n)); }

  private:
    uint64_t state_;
};

// Removes the directory and everything under it on destruction.
class TempDir {
  public:
    TempDir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "uniattn-test-XXXXXX").string();
        if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
        path_ = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::string& path() const { return path_; }
    // path()/name, created.
    std::string Sub(const std::string& name) const {
        const std::string p = path_ + "/" + name;
        std::filesystem::create_directories(p);
        return p;
    }

  private:
    std::string path_;
};

struct RandomModelOptions {
    // The family (engine/model/model_config.cc's table decides which biases/norms it has) and its keys.
    std::string architecture = "LlamaForCausalLM";
    bool attention_bias = false;  // Llama/Qwen3 "attention_bias" (Qwen2 has q/k/v biases regardless)
    int sliding_window = 0;       // Mistral's window; 0: none
    RopeScaling rope_scaling;
    int vocab_size = 97;
    int hidden_size = 48;
    int intermediate_size = 80;
    int num_layers = 2;
    int num_heads = 6;
    int num_kv_heads = 2;
    int head_dim = 0;  // 0: hidden_size / num_heads
    int max_position_embeddings = 128;
    double rope_theta = 10000.0;
    double rms_norm_eps = 1e-5;
    bool tie_word_embeddings = false;
    DType dtype = DType::kF32;  // the dtype written; values are rounded to it in any case
    uint64_t seed = 1;
    // UniAttn grouping keys (docs/uniattn.md §1); when set, v2_proj tensors are written for exactly the reuse layers.
    bool has_grouping = false;
    int grouping_idx = 1;
    int grouping_begin_idx = 0;
    int grouping_end_idx = 0;
    // > 1: model-0000i-of-0000n.safetensors shards plus model.safetensors.index.json.
    int num_shards = 1;
};

struct NamedTensor {
    std::string name;
    std::vector<int64_t> shape;
    std::vector<float> data;
};

// Rounds every value to the nearest `dtype` value (round to nearest even), in place.
inline void RoundToDType(DType dtype, std::vector<float>& v) {
    for (float& x : v) {
        switch (dtype) {
            case DType::kF32:
                break;
            case DType::kF16:
                x = HalfToFloat(FloatToHalf(x));
                break;
            case DType::kBF16:
                x = BF16ToFloat(FloatToBF16(x));
                break;
            case DType::kF8E4M3:
                x = Fp8E4M3ToFloat(FloatToFp8E4M3(x));
                break;
        }
    }
}

// The config the options describe, with layer kinds derived: written with ToJson and read back with FromJson,
// so the family table sets the flags (qkv_bias, o_bias, qk_norm) as it does for a real config.json. Aborts on
// impossible keys (a bug in the calling test, not an input under test).
inline ModelConfig MakeConfig(const RandomModelOptions& o) {
    ModelConfig c;
    c.architecture = o.architecture;
    c.qkv_bias = o.attention_bias;
    c.sliding_window = o.sliding_window;
    c.rope_scaling = o.rope_scaling;
    c.vocab_size = o.vocab_size;
    c.hidden_size = o.hidden_size;
    c.intermediate_size = o.intermediate_size;
    c.num_layers = o.num_layers;
    c.num_heads = o.num_heads;
    c.num_kv_heads = o.num_kv_heads;
    c.head_dim = o.head_dim > 0 ? o.head_dim : o.hidden_size / o.num_heads;
    c.max_position_embeddings = o.max_position_embeddings;
    c.rope_theta = o.rope_theta;
    c.rms_norm_eps = o.rms_norm_eps;
    c.tie_word_embeddings = o.tie_word_embeddings;
    c.torch_dtype = o.dtype == DType::kF32 ? "float32" : o.dtype == DType::kF16 ? "float16" : "bfloat16";
    c.has_grouping = o.has_grouping;
    c.grouping_idx = o.grouping_idx;
    c.grouping_begin_idx = o.grouping_begin_idx;
    c.grouping_end_idx = o.grouping_end_idx;
    auto parsed = ModelConfig::FromJson(DumpJson(c.ToJson()), "MakeConfig");
    if (!parsed.ok()) {
        std::fprintf(stderr, "MakeConfig: %s\n", parsed.status().ToString().c_str());
        std::abort();
    }
    return std::move(parsed).value();
}

// Every tensor of the Hugging Face layout for `config` (reuse layers keep q_proj/k_proj, with their biases
// and norms, as real UniAttn checkpoints do, and add v2_proj [Hq·hd, d]). Linear weights are uniform with
// unit output variance for unit-RMS inputs, so attention is neither uniform nor one-hot; norms are near 1;
// biases (qkv_bias, o_bias) are uniform in [-0.5, 0.5) and q_norm/k_norm weights in [0.3, 2) so that
// dropping either moves the logits visibly.
inline std::vector<NamedTensor> MakeRandomTensors(const ModelConfig& c, DType dtype, uint64_t seed) {
    Rng rng(seed);
    std::vector<NamedTensor> out;
    auto add = [&](const std::string& name, std::vector<int64_t> shape, float lo, float hi) {
        NamedTensor t{name, std::move(shape), {}};
        int64_t n = 1;
        for (int64_t d : t.shape) n *= d;
        t.data.resize(static_cast<size_t>(n));
        for (float& x : t.data) x = rng.Uniform(lo, hi);
        RoundToDType(dtype, t.data);
        out.push_back(std::move(t));
    };
    auto linear = [&](const std::string& name, int64_t rows, int64_t cols) {
        const float a = std::sqrt(3.0f / static_cast<float>(cols));
        add(name, {rows, cols}, -a, a);
    };
    const int64_t d = c.hidden_size, q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;
    const int64_t kv_dim = static_cast<int64_t>(c.num_kv_heads) * c.head_dim, ff = c.intermediate_size;
    add("model.embed_tokens.weight", {c.vocab_size, d}, -1.0f, 1.0f);
    add("model.norm.weight", {d}, 0.8f, 1.2f);
    if (!c.tie_word_embeddings) linear("lm_head.weight", c.vocab_size, d);
    for (int l = 0; l < c.num_layers; ++l) {
        add(LayerTensorName(l, "input_layernorm.weight"), {d}, 0.8f, 1.2f);
        add(LayerTensorName(l, "post_attention_layernorm.weight"), {d}, 0.8f, 1.2f);
        linear(LayerTensorName(l, "self_attn.q_proj.weight"), q_dim, d);
        linear(LayerTensorName(l, "self_attn.k_proj.weight"), kv_dim, d);
        linear(LayerTensorName(l, "self_attn.v_proj.weight"), kv_dim, d);
        linear(LayerTensorName(l, "self_attn.o_proj.weight"), d, q_dim);
        if (c.qkv_bias) {
            add(LayerTensorName(l, "self_attn.q_proj.bias"), {q_dim}, -0.5f, 0.5f);
            add(LayerTensorName(l, "self_attn.k_proj.bias"), {kv_dim}, -0.5f, 0.5f);
            add(LayerTensorName(l, "self_attn.v_proj.bias"), {kv_dim}, -0.5f, 0.5f);
        }
        if (c.o_bias) add(LayerTensorName(l, "self_attn.o_proj.bias"), {d}, -0.5f, 0.5f);
        if (c.qk_norm) {
            add(LayerTensorName(l, "self_attn.q_norm.weight"), {c.head_dim}, 0.3f, 2.0f);
            add(LayerTensorName(l, "self_attn.k_norm.weight"), {c.head_dim}, 0.3f, 2.0f);
        }
        linear(LayerTensorName(l, "mlp.gate_proj.weight"), ff, d);
        linear(LayerTensorName(l, "mlp.up_proj.weight"), ff, d);
        linear(LayerTensorName(l, "mlp.down_proj.weight"), d, ff);
        if (c.layer_kinds[l] == LayerKind::kReuse) linear(LayerTensorName(l, "v2_proj.weight"), q_dim, d);
    }
    return out;
}

// ||got - want|| / ||want|| over two equal-length vectors (logits comparisons), in double.
inline double RelL2(const std::vector<float>& got, const std::vector<float>& want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        num += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
        den += static_cast<double>(want[i]) * want[i];
    }
    return std::sqrt(num / den);
}

// Finds a tensor by name; nullptr when absent.
inline NamedTensor* FindTensor(std::vector<NamedTensor>& tensors, const std::string& name) {
    for (NamedTensor& t : tensors) {
        if (t.name == name) return &t;
    }
    return nullptr;
}

// Writes DIR/config.json and the tensors in `dtype`: DIR/model.safetensors, or, when num_shards > 1,
// tensors dealt round-robin into model-0000i-of-0000n.safetensors with model.safetensors.index.json.
// DIR is created if needed.
inline Status WriteModelDir(const std::string& dir, const ModelConfig& config, const std::vector<NamedTensor>& tensors,
                            DType dtype, int num_shards = 1) {
    UA_RETURN_IF_ERROR(MakeDirs(dir));
    UA_RETURN_IF_ERROR(WriteFile(dir + "/config.json", DumpJson(config.ToJson(), 2) + "\n"));
    num_shards = std::max(1, num_shards);
    std::vector<std::vector<TensorToWrite>> shards(static_cast<size_t>(num_shards));
    for (size_t i = 0; i < tensors.size(); ++i) {
        shards[i % num_shards].push_back({tensors[i].name, dtype, tensors[i].shape, tensors[i].data.data()});
    }
    if (num_shards == 1) return WriteSafetensors(dir + "/model.safetensors", shards[0]);
    OrderedJson weight_map = OrderedJson::object();
    int64_t total_bytes = 0;
    for (int s = 0; s < num_shards; ++s) {
        char name[64];
        std::snprintf(name, sizeof(name), "model-%05d-of-%05d.safetensors", s + 1, num_shards);
        UA_RETURN_IF_ERROR(WriteSafetensors(dir + "/" + name, shards[s]));
        for (const TensorToWrite& t : shards[s]) {
            weight_map[t.name] = name;
            int64_t n = DTypeBytes(dtype);
            for (int64_t x : t.shape) n *= x;
            total_bytes += n;
        }
    }
    OrderedJson meta = OrderedJson::object();
    meta["total_size"] = total_bytes;
    OrderedJson index = OrderedJson::object();
    index["metadata"] = std::move(meta);
    index["weight_map"] = std::move(weight_map);
    return WriteFile(dir + "/model.safetensors.index.json", DumpJson(index, 2) + "\n");
}

// Copies tokenizer.model (and tokenizer_config.json when present) from `from_dir` into `to_dir`, for random
// models that need text; their vocab_size must cover the tokenizer (32000 for the default model's).
inline Status CopyTokenizer(const std::string& from_dir, const std::string& to_dir) {
    for (const char* name : {"tokenizer.model", "tokenizer_config.json"}) {
        const std::string from = from_dir + "/" + name;
        if (!FileExists(from)) {
            if (std::string(name) == "tokenizer.model") return NotFound(from + ": no tokenizer to copy");
            continue;
        }
        UA_ASSIGN_OR_RETURN(std::string bytes, ReadFile(from));
        UA_RETURN_IF_ERROR(WriteFile(to_dir + "/" + name, bytes));
    }
    return Status::Ok();
}

// MakeConfig + MakeRandomTensors + WriteModelDir.
inline Status WriteRandomModel(const std::string& dir, const RandomModelOptions& o) {
    const ModelConfig config = MakeConfig(o);
    return WriteModelDir(dir, config, MakeRandomTensors(config, o.dtype, o.seed), o.dtype, o.num_shards);
}

}  // namespace uniattn::testutil
