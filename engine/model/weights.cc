#include "model/weights.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace uniattn {

std::string LayerTensorName(int layer, const std::string& suffix) {
    return "model.layers." + std::to_string(layer) + "." + suffix;
}

namespace {

// Plans the backend tensors while the checks run (Stack, Row: buffers are allocated, nothing is read), then
// fills them all at once (Run).
class Loader {
  public:
    Loader(const TensorSet& tensors, Backend* backend, ModelWeights& w) : tensors_(tensors), backend_(backend), w_(w) {}

    // Finds a tensor and checks its shape.
    StatusOr<const TensorView*> Get(const std::string& name, std::vector<int64_t> shape) {
        const TensorView* v = tensors_.Find(name);
        if (v == nullptr) return NotFound("missing tensor \"" + name + "\"");
        if (v->shape != shape) {
            TensorView want;
            want.shape = shape;
            return InvalidArgument(v->file + ": tensor \"" + name + "\" has shape " + v->ShapeString() + ", expected " +
                                   want.ShapeString());
        }
        return v;
    }

    // Stacks the given tensors along rows into one backend tensor [Σ rows, cols] of `dtype`.
    StatusOr<Tensor> Stack(const std::vector<const TensorView*>& parts, DType dtype) {
        const int64_t cols = parts[0]->shape.size() == 2 ? parts[0]->shape[1] : parts[0]->shape[0];
        int64_t rows = 0;
        for (const auto* p : parts) rows += p->shape.size() == 2 ? p->shape[0] : 1;
        return Plan(parts, dtype, rows, cols);
    }
    // Matrices (and the embedding) in the backend's weight dtype; norm weights stay fp32.
    StatusOr<Tensor> Stack(const std::vector<const TensorView*>& parts) {
        return Stack(parts, backend_->WeightDType());
    }
    StatusOr<Tensor> Norm(const TensorView* part) { return Stack({part}, DType::kF32); }
    // 1-D tensors joined end to end into one fp32 row [1, Σ n] (biases).
    StatusOr<Tensor> Row(const std::vector<const TensorView*>& parts) {
        int64_t n = 0;
        for (const auto* p : parts) n += p->numel();
        return Plan(parts, DType::kF32, 1, n);
    }

    // Reads, converts and uploads every planned tensor.
    Status Run(const LoadOptions& options) {
        const size_t elem_max = std::max<size_t>(options.chunk_bytes, 4);
        std::vector<Chunk> chunks;
        for (size_t j = 0; j < jobs_.size(); ++j) {
            const int64_t per_chunk = static_cast<int64_t>(elem_max / DTypeBytes(jobs_[j].dtype));
            for (int64_t first = 0; first < jobs_[j].numel; first += per_chunk) {
                chunks.push_back({j, first, std::min(per_chunk, jobs_[j].numel - first)});
            }
        }
        int num_threads = options.num_threads;
        if (num_threads <= 0) {
            num_threads = std::min<int>(static_cast<int>(std::thread::hardware_concurrency()), kMaxLoadThreads);
        }
        num_threads = std::max(1, std::min<int>(num_threads, static_cast<int>(chunks.size())));
        w_.load.num_threads = num_threads;
        std::unique_ptr<Uploader> uploader = backend_->MakeUploader(elem_max, num_threads);

        std::atomic<size_t> next{0};
        std::atomic<bool> failed{false};
        std::mutex error_mu;
        Status error;
        auto work = [&] {
            std::vector<uint8_t> scratch(kScratchBytes);
            for (size_t i = next++; i < chunks.size() && !failed; i = next++) {
                const Chunk& c = chunks[i];
                const Job& job = jobs_[c.job];
                const size_t elem = static_cast<size_t>(DTypeBytes(job.dtype));
                UploadChunk staged = uploader->Stage(static_cast<char*>(job.dst) + c.first * static_cast<int64_t>(elem),
                                                     static_cast<size_t>(c.count) * elem);
                Status st = Fill(job, c.first, c.count, static_cast<uint8_t*>(staged.host), scratch);
                uploader->Submit(staged);  // even a failed chunk returns its staging buffer
                if (!st.ok()) {
                    std::lock_guard<std::mutex> lock(error_mu);
                    if (!failed.exchange(true)) error = std::move(st);
                }
            }
        };
        std::vector<std::thread> threads;
        threads.reserve(static_cast<size_t>(num_threads - 1));
        for (int t = 1; t < num_threads; ++t) threads.emplace_back(work);
        work();
        for (std::thread& t : threads) t.join();
        uploader->Finish();
        return failed ? error : Status::Ok();
    }

  private:
    // Source bytes a thread reads at a time when it converts: the scratch stays in its core's cache.
    static constexpr size_t kScratchBytes = size_t{256} << 10;

    // One backend tensor: its parts end to end, in `dtype`.
    struct Job {
        std::vector<const TensorView*> parts;
        DType dtype;
        void* dst;
        int64_t numel;
    };
    // Elements [first, first + count) of jobs_[job].
    struct Chunk {
        size_t job;
        int64_t first;
        int64_t count;
    };

    StatusOr<Tensor> Plan(const std::vector<const TensorView*>& parts, DType dtype, int64_t rows, int64_t cols) {
        const size_t bytes = static_cast<size_t>(rows * cols) * DTypeBytes(dtype);
        UA_ASSIGN_OR_RETURN(std::unique_ptr<DeviceBuffer> buf, backend_->Alloc(bytes));
        Tensor t = MakeTensor(buf->data(), dtype, rows, cols);
        if (rows * cols > 0) jobs_.push_back({parts, dtype, buf->data(), rows * cols});
        w_.bytes += static_cast<int64_t>(bytes);
        for (const auto* p : parts) w_.load.file_bytes += static_cast<int64_t>(p->nbytes);
        w_.buffers.push_back(std::move(buf));
        return t;
    }

    // Writes elements [first, first + count) of `job` into out, in job.dtype.
    static Status Fill(const Job& job, int64_t first, int64_t count, uint8_t* out, std::vector<uint8_t>& scratch) {
        const int64_t out_elem = DTypeBytes(job.dtype);
        int64_t part_start = 0;  // the part's first element in the job
        for (const TensorView* p : job.parts) {
            const int64_t n = p->numel();
            const int64_t lo = std::max(first, part_start), hi = std::min(first + count, part_start + n);
            if (lo < hi) {
                const int64_t in_elem = DTypeBytes(p->dtype);
                uint8_t* dst = out + (lo - first) * out_elem;
                const uint64_t src = static_cast<uint64_t>((lo - part_start) * in_elem);
                if (p->dtype == job.dtype) {
                    UA_RETURN_IF_ERROR(p->Read(src, static_cast<size_t>((hi - lo) * in_elem), dst));
                } else {
                    const int64_t step = static_cast<int64_t>(scratch.size()) / in_elem;
                    for (int64_t at = 0; at < hi - lo; at += step) {
                        const int64_t m = std::min(step, hi - lo - at);
                        UA_RETURN_IF_ERROR(p->Read(src + static_cast<uint64_t>(at * in_elem),
                                                   static_cast<size_t>(m * in_elem), scratch.data()));
                        ConvertDType(scratch.data(), p->dtype, dst + at * out_elem, job.dtype, m);
                    }
                }
            }
            part_start += n;
        }
        return Status::Ok();
    }

    const TensorSet& tensors_;
    Backend* backend_;
    ModelWeights& w_;
    std::vector<Job> jobs_;
};

// Uploads the model's RoPE frequency table once; every layer's rotation reads it.
Status UploadRopeTable(const ModelConfig& c, Backend* backend, ModelWeights& w) {
    const std::vector<double> inv_freq = c.RopeInvFreq();
    const size_t bytes = std::max<size_t>(sizeof(double) * inv_freq.size(), sizeof(double));
    UA_ASSIGN_OR_RETURN(std::unique_ptr<DeviceBuffer> buf, backend->Alloc(bytes));
    backend->CopyToDevice(buf->data(), inv_freq.data(), sizeof(double) * inv_freq.size());
    w.rope_inv_freq = static_cast<const double*>(buf->data());
    w.buffers.push_back(std::move(buf));
    return Status::Ok();
}

}  // namespace

StatusOr<ModelWeights> LoadWeights(const TensorSet& tensors, const ModelConfig& c, Backend* backend,
                                   const LoadOptions& options) {
    // docs/uniattn.md §5 (checkpoints): v2_proj tensors must match the reuse set exactly, and only with grouping keys.
    std::set<int> v2_layers;
    for (const std::string& name : tensors.Names()) {
        const std::string prefix = "model.layers.";
        const std::string suffix = ".v2_proj.weight";
        if (name.rfind(prefix, 0) == 0 && name.size() > suffix.size() &&
            name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
            const std::string mid = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
            if (mid.find_first_not_of("0123456789") == std::string::npos && !mid.empty()) {
                v2_layers.insert(std::stoi(mid));
            } else {
                return InvalidArgument("unexpected compensation tensor \"" + name + "\"");
            }
        }
    }
    std::set<int> reuse_layers;
    for (int l = 0; l < c.num_layers; ++l) {
        if (c.layer_kinds[l] == LayerKind::kReuse) reuse_layers.insert(l);
    }
    auto list = [](const std::set<int>& s) {
        std::string out;
        for (int l : s) {
            if (!out.empty()) out += ',';
            out += std::to_string(l);
        }
        return "{" + out + "}";
    };
    if (!v2_layers.empty() && !c.has_grouping) {
        return InvalidArgument("checkpoint has v2_proj tensors for layers " + list(v2_layers) +
                               " but config.json has no grouping_idx/grouping_begin_idx/grouping_end_idx keys");
    }
    if (c.has_grouping && !reuse_layers.empty() && v2_layers.empty()) {
        return InvalidArgument("config.json has UniAttn grouping keys (reuse layers " + list(reuse_layers) +
                               ") but the checkpoint has no v2_proj tensors");
    }
    if (v2_layers != reuse_layers) {
        return InvalidArgument("v2_proj tensors exist for layers " + list(v2_layers) +
                               " but the grouping keys make the reuse layers " + list(reuse_layers));
    }

    if (!reuse_layers.empty() && static_cast<int64_t>(c.num_heads) * c.head_dim != c.hidden_size) {
        return InvalidArgument(
            "UniAttn compensation is added to the residual stream, so it needs num_heads * head_dim (" +
            std::to_string(c.num_heads * c.head_dim) + ") == hidden_size (" + std::to_string(c.hidden_size) + ")");
    }

    // Every tensor must be one this config calls for (or one that is allowed and ignored): a bias or norm the
    // config does not mention would otherwise be dropped silently, and the model computed would be another.
    std::set<std::string> expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
    std::set<std::string> ignored;
    for (int l = 0; l < c.num_layers; ++l) {
        const bool reuse = c.layer_kinds[l] == LayerKind::kReuse;
        std::vector<std::string> names = {"input_layernorm.weight",  "post_attention_layernorm.weight",
                                          "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                                          "mlp.gate_proj.weight",    "mlp.up_proj.weight",
                                          "mlp.down_proj.weight"};
        std::vector<std::string> qk = {"self_attn.q_proj.weight", "self_attn.k_proj.weight"};
        if (c.qkv_bias) {
            names.push_back("self_attn.v_proj.bias");
            qk.push_back("self_attn.q_proj.bias");
            qk.push_back("self_attn.k_proj.bias");
        }
        if (c.o_bias) names.push_back("self_attn.o_proj.bias");
        if (c.qk_norm) {
            qk.push_back("self_attn.q_norm.weight");
            qk.push_back("self_attn.k_norm.weight");
        }
        if (reuse) names.push_back("v2_proj.weight");
        for (const std::string& n : names) expected.insert(LayerTensorName(l, n));
        for (const std::string& n : qk) (reuse ? ignored : expected).insert(LayerTensorName(l, n));
    }
    for (const std::string& name : tensors.Names()) {
        if (expected.count(name) > 0 || ignored.count(name) > 0) continue;
        const std::string inv_freq = "rotary_emb.inv_freq";  // a buffer older checkpoints saved; recomputed
        if (name.size() >= inv_freq.size() &&
            name.compare(name.size() - inv_freq.size(), inv_freq.size(), inv_freq) == 0) {
            continue;
        }
        const TensorView* v = tensors.Find(name);
        std::string why = "not part of a " + c.architecture + " model with this config.json";
        if (name.find(".bias") != std::string::npos) why += " (attention_bias / mlp_bias)";
        if (name.find("_norm.") != std::string::npos) why += " (q_norm/k_norm are Qwen3ForCausalLM's)";
        return InvalidArgument((v ? v->file + ": " : std::string()) + "unexpected tensor \"" + name + "\": " + why);
    }

    ModelWeights w;
    Loader ld(tensors, backend, w);
    const int64_t d = c.hidden_size, hd = c.head_dim, q_dim = c.num_heads * hd, kv_dim = c.num_kv_heads * hd;
    const int64_t ff = c.intermediate_size, vocab = c.vocab_size;

    UA_ASSIGN_OR_RETURN(const TensorView* embed, ld.Get("model.embed_tokens.weight", {vocab, d}));
    UA_ASSIGN_OR_RETURN(w.embed, ld.Stack({embed}));
    UA_ASSIGN_OR_RETURN(const TensorView* norm, ld.Get("model.norm.weight", {d}));
    UA_ASSIGN_OR_RETURN(w.final_norm, ld.Norm(norm));
    if (c.tie_word_embeddings) {
        w.lm_head = w.embed;
    } else {
        UA_ASSIGN_OR_RETURN(const TensorView* head, ld.Get("lm_head.weight", {vocab, d}));
        UA_ASSIGN_OR_RETURN(w.lm_head, ld.Stack({head}));
    }
    w.layers.resize(c.num_layers);
    for (int l = 0; l < c.num_layers; ++l) {
        LayerWeights& lw = w.layers[l];
        auto get = [&](const std::string& suffix, std::vector<int64_t> shape) {
            return ld.Get(LayerTensorName(l, suffix), std::move(shape));
        };
        UA_ASSIGN_OR_RETURN(const TensorView* in_norm, get("input_layernorm.weight", {d}));
        UA_ASSIGN_OR_RETURN(lw.attn_norm, ld.Norm(in_norm));
        UA_ASSIGN_OR_RETURN(const TensorView* post_norm, get("post_attention_layernorm.weight", {d}));
        UA_ASSIGN_OR_RETURN(lw.ffn_norm, ld.Norm(post_norm));
        UA_ASSIGN_OR_RETURN(const TensorView* wv, get("self_attn.v_proj.weight", {kv_dim, d}));
        const TensorView* bv = nullptr;
        if (c.qkv_bias) {
            UA_ASSIGN_OR_RETURN(bv, get("self_attn.v_proj.bias", {kv_dim}));
        }
        if (c.layer_kinds[l] == LayerKind::kReuse) {
            // Q/K (and their biases and norms) are never read for reuse layers (docs/uniattn.md §2), so they are
            // neither required nor loaded.
            UA_ASSIGN_OR_RETURN(const TensorView* wc, get("v2_proj.weight", {q_dim, d}));
            UA_ASSIGN_OR_RETURN(lw.w_vc, ld.Stack({wv, wc}));
            if (bv) {
                UA_ASSIGN_OR_RETURN(lw.b_v, ld.Row({bv}));
            }
        } else {
            UA_ASSIGN_OR_RETURN(const TensorView* wq, get("self_attn.q_proj.weight", {q_dim, d}));
            UA_ASSIGN_OR_RETURN(const TensorView* wk, get("self_attn.k_proj.weight", {kv_dim, d}));
            UA_ASSIGN_OR_RETURN(lw.w_qkv, ld.Stack({wq, wk, wv}));
            if (bv) {
                UA_ASSIGN_OR_RETURN(const TensorView* bq, get("self_attn.q_proj.bias", {q_dim}));
                UA_ASSIGN_OR_RETURN(const TensorView* bk, get("self_attn.k_proj.bias", {kv_dim}));
                UA_ASSIGN_OR_RETURN(lw.b_qkv, ld.Row({bq, bk, bv}));
            }
            if (c.qk_norm) {
                UA_ASSIGN_OR_RETURN(const TensorView* qn, get("self_attn.q_norm.weight", {hd}));
                UA_ASSIGN_OR_RETURN(lw.q_norm, ld.Norm(qn));
                UA_ASSIGN_OR_RETURN(const TensorView* kn, get("self_attn.k_norm.weight", {hd}));
                UA_ASSIGN_OR_RETURN(lw.k_norm, ld.Norm(kn));
            }
        }
        UA_ASSIGN_OR_RETURN(const TensorView* wo, get("self_attn.o_proj.weight", {d, q_dim}));
        UA_ASSIGN_OR_RETURN(lw.w_o, ld.Stack({wo}));
        if (c.o_bias) {
            UA_ASSIGN_OR_RETURN(const TensorView* bo, get("self_attn.o_proj.bias", {d}));
            UA_ASSIGN_OR_RETURN(lw.b_o, ld.Row({bo}));
        }
        UA_ASSIGN_OR_RETURN(const TensorView* wg, get("mlp.gate_proj.weight", {ff, d}));
        UA_ASSIGN_OR_RETURN(const TensorView* wu, get("mlp.up_proj.weight", {ff, d}));
        UA_ASSIGN_OR_RETURN(lw.w_gate_up, ld.Stack({wg, wu}));
        UA_ASSIGN_OR_RETURN(const TensorView* wd, get("mlp.down_proj.weight", {d, ff}));
        UA_ASSIGN_OR_RETURN(lw.w_down, ld.Stack({wd}));
    }
    const auto start = std::chrono::steady_clock::now();
    UA_RETURN_IF_ERROR(ld.Run(options));
    UA_RETURN_IF_ERROR(UploadRopeTable(c, backend, w));
    backend->Synchronize();
    w.load.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return w;
}

StatusOr<ModelWeights> RandomWeights(const ModelConfig& c, Backend* backend, uint64_t seed) {
    ModelWeights w;
    const DType wt = backend->WeightDType();
    uint64_t stream = seed * 0x100000001B3ULL;
    auto make = [&](int64_t rows, int64_t cols, DType dtype, float lo, float hi) -> StatusOr<Tensor> {
        const size_t bytes = static_cast<size_t>(rows * cols) * DTypeBytes(dtype);
        UA_ASSIGN_OR_RETURN(std::unique_ptr<DeviceBuffer> buf, backend->Alloc(bytes));
        backend->FillUniform(buf->data(), dtype, rows * cols, lo, hi, ++stream);
        Tensor t = MakeTensor(buf->data(), dtype, rows, cols);
        w.bytes += static_cast<int64_t>(bytes);
        w.buffers.push_back(std::move(buf));
        return t;
    };
    // Unit output variance for unit-RMS inputs, as tests/engine/test_models.h draws them.
    auto linear = [&](int64_t rows, int64_t cols) {
        const float a = std::sqrt(3.0f / static_cast<float>(cols));
        return make(rows, cols, wt, -a, a);
    };
    const int64_t d = c.hidden_size, hd = c.head_dim, q_dim = c.num_heads * hd, kv_dim = c.num_kv_heads * hd;
    const int64_t ff = c.intermediate_size, vocab = c.vocab_size;
    UA_ASSIGN_OR_RETURN(w.embed, make(vocab, d, wt, -1.0f, 1.0f));
    UA_ASSIGN_OR_RETURN(w.final_norm, make(1, d, DType::kF32, 0.8f, 1.2f));
    if (c.tie_word_embeddings) {
        w.lm_head = w.embed;
    } else {
        UA_ASSIGN_OR_RETURN(w.lm_head, linear(vocab, d));
    }
    w.layers.resize(c.num_layers);
    for (int l = 0; l < c.num_layers; ++l) {
        LayerWeights& lw = w.layers[l];
        UA_ASSIGN_OR_RETURN(lw.attn_norm, make(1, d, DType::kF32, 0.8f, 1.2f));
        UA_ASSIGN_OR_RETURN(lw.ffn_norm, make(1, d, DType::kF32, 0.8f, 1.2f));
        if (c.layer_kinds[l] == LayerKind::kReuse) {
            UA_ASSIGN_OR_RETURN(lw.w_vc, linear(kv_dim + q_dim, d));
            if (c.qkv_bias) {
                UA_ASSIGN_OR_RETURN(lw.b_v, make(1, kv_dim, DType::kF32, -0.5f, 0.5f));
            }
        } else {
            UA_ASSIGN_OR_RETURN(lw.w_qkv, linear(q_dim + 2 * kv_dim, d));
            if (c.qkv_bias) {
                UA_ASSIGN_OR_RETURN(lw.b_qkv, make(1, q_dim + 2 * kv_dim, DType::kF32, -0.5f, 0.5f));
            }
            if (c.qk_norm) {
                UA_ASSIGN_OR_RETURN(lw.q_norm, make(1, hd, DType::kF32, 0.8f, 1.2f));
                UA_ASSIGN_OR_RETURN(lw.k_norm, make(1, hd, DType::kF32, 0.8f, 1.2f));
            }
        }
        UA_ASSIGN_OR_RETURN(lw.w_o, linear(d, q_dim));
        if (c.o_bias) {
            UA_ASSIGN_OR_RETURN(lw.b_o, make(1, d, DType::kF32, -0.5f, 0.5f));
        }
        UA_ASSIGN_OR_RETURN(lw.w_gate_up, linear(2 * ff, d));
        UA_ASSIGN_OR_RETURN(lw.w_down, linear(d, ff));
    }
    UA_RETURN_IF_ERROR(UploadRopeTable(c, backend, w));
    return w;
}

}  // namespace uniattn
