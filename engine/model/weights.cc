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
  private:
    // How one part of a linear weight becomes fp8 values (Loader::Linear): dequantized from the checkpoint's
    // e4m3 bytes and scales, or quantized at load per output row.
    struct Fp8Part {
        int64_t rows = 0, cols = 0;
        const TensorView* scale = nullptr;       // F8_E4M3 parts: weight_scale or weight_scale_inv
        int64_t block_rows = 0, block_cols = 0;  // the tile one scale covers: rows x cols per tensor, 1 x cols per row
        std::vector<float> scale_values;         // read in Run
        bool quantize = false;                   // a 16/32-bit part rounded to e4m3 at load
        float ScaleAt(int64_t r, int64_t col) const {
            const int64_t grid_cols = (cols + block_cols - 1) / block_cols;
            return scale_values[static_cast<size_t>((r / block_rows) * grid_cols + col / block_cols)];
        }
    };

  public:
    Loader(const TensorSet& tensors, const ModelConfig& c, Backend* backend, ModelWeights& w, bool quantize_fp8)
        : tensors_(tensors), config_(c), backend_(backend), w_(w), quantize_fp8_(quantize_fp8) {}

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
    StatusOr<Tensor> Stack(const std::vector<const TensorView*>& parts, DType dtype, std::vector<Fp8Part> fp8 = {}) {
        const int64_t cols = parts[0]->shape.size() == 2 ? parts[0]->shape[1] : parts[0]->shape[0];
        int64_t rows = 0;
        for (const auto* p : parts) rows += p->shape.size() == 2 ? p->shape[0] : 1;
        return Plan(parts, dtype, rows, cols, std::move(fp8));
    }
    // The embedding in the backend's weight dtype; norm weights stay fp32.
    StatusOr<Tensor> Stack(const std::vector<const TensorView*>& parts) {
        return Stack(parts, backend_->WeightDType());
    }
    // Linear weights, stacked: in the backend's weight dtype, holding fp8 values where the checkpoint has them
    // (F8_E4M3 and a weight_scale) or where engine.quantization=fp8 rounds them at load.
    StatusOr<Tensor> Linear(const std::vector<const TensorView*>& parts) {
        std::vector<Fp8Part> fp8(parts.size());
        bool any = false;
        for (size_t i = 0; i < parts.size(); ++i) {
            const TensorView* p = parts[i];
            Fp8Part& f = fp8[i];
            f.rows = p->shape[0];
            f.cols = p->shape[1];
            if (p->dtype == DType::kF8E4M3) {
                UA_RETURN_IF_ERROR(FindScale(p, f));
            } else {
                f.quantize = quantize_fp8_;
            }
            any = any || f.scale != nullptr || f.quantize;
        }
        if (!any) return Stack(parts, backend_->WeightDType());
        ++w_.num_fp8_linear;
        // e4m3 bytes with a scale per row where the backend takes them and every part has one scale per row
        // (per tensor or per channel, or rounded here); block-scaled or partly 16-bit tensors keep their values.
        bool per_row = true;
        for (const Fp8Part& f : fp8)
            per_row = per_row && (f.quantize || (f.scale != nullptr && f.block_cols == f.cols));
        if (!backend_->HoldsFp8Weights() || !per_row) {
            UA_ASSIGN_OR_RETURN(Tensor t, Stack(parts, backend_->WeightDType(), std::move(fp8)));
            t.fp8_rows = per_row;  // what a backend holding fp8 would store as e4m3 rows
            return t;
        }
        ++w_.num_fp8_stored;
        int64_t rows = 0;
        for (const auto* p : parts) rows += p->shape[0];
        UA_ASSIGN_OR_RETURN(std::unique_ptr<DeviceBuffer> sbuf, backend_->Alloc(sizeof(float) * rows));
        UA_ASSIGN_OR_RETURN(Tensor t, Stack(parts, DType::kF8E4M3, std::move(fp8)));
        t.scale = static_cast<const float*>(sbuf->data());
        t.fp8_rows = true;
        Job& job = jobs_.back();
        job.scale_dst = static_cast<float*>(sbuf->data());
        job.row_scale.assign(static_cast<size_t>(rows), 1.0f);
        w_.bytes += static_cast<int64_t>(sizeof(float) * rows);
        w_.buffers.push_back(std::move(sbuf));
        return t;
    }
    // A scalar read before the tensors (KV cache scales); the read happens in Run, after every check.
    Status Scalar(const TensorView* v, float* out) {
        if (v->numel() != 1) {
            return InvalidArgument(v->file + ": tensor \"" + v->name + "\" has shape " + v->ShapeString() +
                                   ", expected one value");
        }
        scalars_.push_back({v, out});
        return Status::Ok();
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
        // The scales (small) first, checked: FP8 weight scales and KV cache scales.
        for (const auto& [v, out] : scalars_) {
            float x = 0;
            v->ToFloat(&x);
            if (!std::isfinite(x) || x <= 0) {
                return InvalidArgument(v->file + ": tensor \"" + v->name + "\" must be a positive finite scale, is " +
                                       std::to_string(x));
            }
            *out = x;
        }
        for (Job& job : jobs_) {
            for (size_t i = 0; i < job.fp8.size(); ++i) {
                Fp8Part& f = job.fp8[i];
                if (f.scale == nullptr) continue;
                f.scale_values.resize(static_cast<size_t>(f.scale->numel()));
                f.scale->ToFloat(f.scale_values.data());
                for (float x : f.scale_values) {
                    if (!std::isfinite(x) || x < 0) {
                        return InvalidArgument(f.scale->file + ": tensor \"" + f.scale->name +
                                               "\" holds a negative or non-finite scale (" + std::to_string(x) + ")");
                    }
                }
            }
        }
        std::vector<Chunk> chunks;
        for (size_t j = 0; j < jobs_.size(); ++j) {
            int64_t per_chunk = static_cast<int64_t>(elem_max / DTypeBytes(jobs_[j].dtype));
            if (!jobs_[j].fp8.empty()) {  // whole rows: a row's scale is computed (or applied) in one piece
                const int64_t cols = jobs_[j].fp8[0].cols;
                per_chunk = std::max<int64_t>(1, per_chunk / cols) * cols;
            }
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
        if (failed) return error;
        for (const Job& job : jobs_) {
            if (job.scale_dst != nullptr) {
                backend_->CopyToDevice(job.scale_dst, job.row_scale.data(), sizeof(float) * job.row_scale.size());
            }
        }
        return Status::Ok();
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
        std::vector<Fp8Part> fp8;  // linear weights with fp8 parts: one per part; else empty
        // dtype kF8E4M3: each row's scale, written by FillFp8 (chunks hold distinct rows) and uploaded to
        // scale_dst once every chunk is in.
        float* scale_dst = nullptr;
        mutable std::vector<float> row_scale;
    };
    // Elements [first, first + count) of jobs_[job].
    struct Chunk {
        size_t job;
        int64_t first;
        int64_t count;
    };

    StatusOr<Tensor> Plan(const std::vector<const TensorView*>& parts, DType dtype, int64_t rows, int64_t cols,
                          std::vector<Fp8Part> fp8 = {}) {
        if (fp8.empty()) {
            for (const auto* p : parts) {
                if (p->dtype == DType::kF8E4M3) {
                    return InvalidArgument(p->file + ": tensor \"" + p->name +
                                           "\" is F8_E4M3, but fp8 is supported for linear layers' weights only");
                }
            }
        }
        const size_t bytes = static_cast<size_t>(rows * cols) * DTypeBytes(dtype);
        UA_ASSIGN_OR_RETURN(std::unique_ptr<DeviceBuffer> buf, backend_->Alloc(bytes));
        Tensor t = MakeTensor(buf->data(), dtype, rows, cols);
        if (rows * cols > 0) jobs_.push_back({parts, dtype, buf->data(), rows * cols, std::move(fp8), nullptr, {}});
        w_.bytes += static_cast<int64_t>(bytes);
        for (const auto* p : parts) w_.load.file_bytes += static_cast<int64_t>(p->nbytes);
        w_.buffers.push_back(std::move(buf));
        return t;
    }

    // Writes elements [first, first + count) of `job` into out, in job.dtype.
    static Status Fill(const Job& job, int64_t first, int64_t count, uint8_t* out, std::vector<uint8_t>& scratch) {
        if (!job.fp8.empty()) return FillFp8(job, first, count, out, scratch);
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

    // Fill for a linear weight with fp8 parts, row by row (chunks hold whole rows): each row is widened to fp32,
    // turned into fp8 values (scaled e4m3 bytes, or rounded at load with scale = amax / 448), and written in
    // job.dtype.
    static Status FillFp8(const Job& job, int64_t first, int64_t count, uint8_t* out, std::vector<uint8_t>& scratch) {
        static const std::vector<float> kE4M3 = [] {
            std::vector<float> t(256);
            for (int b = 0; b < 256; ++b) t[b] = Fp8E4M3ToFloat(static_cast<uint8_t>(b));
            return t;
        }();
        const int64_t out_elem = DTypeBytes(job.dtype);
        const int64_t cols = job.fp8[0].cols;
        std::vector<float> row(static_cast<size_t>(cols));
        int64_t part_start = 0;
        for (size_t pi = 0; pi < job.parts.size(); ++pi) {
            const TensorView* p = job.parts[pi];
            const Fp8Part& f = job.fp8[pi];
            const int64_t n = p->numel();
            const int64_t lo = std::max(first, part_start), hi = std::min(first + count, part_start + n);
            for (int64_t at = lo; at < hi; at += cols) {
                const int64_t r = (at - part_start) / cols;
                const int64_t in_elem = DTypeBytes(p->dtype);
                if (scratch.size() < static_cast<size_t>(cols * in_elem))
                    scratch.resize(static_cast<size_t>(cols * in_elem));
                uint8_t* dst = out + (at - first) * out_elem;
                if (job.dtype == DType::kF8E4M3 && p->dtype == DType::kF8E4M3) {  // stored: the bytes and the scale
                    UA_RETURN_IF_ERROR(p->Read(static_cast<uint64_t>(r * cols), static_cast<size_t>(cols), dst));
                    job.row_scale[static_cast<size_t>(at / cols)] = f.ScaleAt(r, 0);
                    continue;
                }
                UA_RETURN_IF_ERROR(p->Read(static_cast<uint64_t>(r * cols * in_elem),
                                           static_cast<size_t>(cols * in_elem), scratch.data()));
                if (p->dtype == DType::kF8E4M3) {
                    for (int64_t i = 0; i < cols; ++i) row[i] = kE4M3[scratch[i]] * f.ScaleAt(r, i);
                } else {
                    ConvertDType(scratch.data(), p->dtype, row.data(), DType::kF32, cols);
                    if (f.quantize) {
                        float amax = 0;
                        bool finite = true;
                        for (float x : row) {
                            finite = finite && std::isfinite(x);
                            amax = std::max(amax, std::fabs(x));
                        }
                        if (!finite) {
                            return InvalidArgument(p->file + ": tensor \"" + p->name + "\" row " + std::to_string(r) +
                                                   " holds a non-finite value: it cannot be quantized to fp8");
                        }
                        const float scale = amax > 0 ? amax / kFp8E4M3Max : 1.0f;
                        if (job.dtype == DType::kF8E4M3) {  // stored: the bytes and the scale
                            for (int64_t i = 0; i < cols; ++i) dst[i] = FloatToFp8E4M3(row[i] / scale);
                            job.row_scale[static_cast<size_t>(at / cols)] = scale;
                            continue;
                        }
                        for (float& x : row) x = kE4M3[FloatToFp8E4M3(x / scale)] * scale;
                    }
                }
                ConvertDType(row.data(), DType::kF32, dst, job.dtype, cols);
            }
            part_start += n;
        }
        return Status::Ok();
    }

    // The weight_scale (or weight_scale_inv) of an F8_E4M3 linear weight, with the granularity its shape names.
    Status FindScale(const TensorView* p, Fp8Part& f) {
        const std::string where = p->file + ": tensor \"" + p->name + "\"";
        if (!config_.quantization.fp8()) {
            return InvalidArgument(where + " is F8_E4M3, but config.json has no quantization_config");
        }
        const std::string base = p->name.substr(0, p->name.size() - std::string("weight").size());
        for (const char* suffix : {"weight_scale", "weight_scale_inv"}) {
            if (const TensorView* s = tensors_.Find(base + suffix)) {
                if (f.scale != nullptr) {
                    return InvalidArgument(where + " has both weight_scale and weight_scale_inv");
                }
                f.scale = s;
            }
        }
        if (f.scale == nullptr) return InvalidArgument(where + " is F8_E4M3 but has no " + base + "weight_scale");
        const TensorView* s = f.scale;
        const auto& sh = s->shape;
        const int64_t n = s->numel();
        const int br = config_.quantization.block_rows, bc = config_.quantization.block_cols;
        if (n == 1) {
            f.block_rows = f.rows;
            f.block_cols = f.cols;
        } else if (n == f.rows && (sh.size() == 1 || (sh.size() == 2 && sh[1] == 1))) {
            f.block_rows = 1;
            f.block_cols = f.cols;
        } else if (br > 0 && sh.size() == 2 && sh[0] == (f.rows + br - 1) / br && sh[1] == (f.cols + bc - 1) / bc) {
            f.block_rows = br;
            f.block_cols = bc;
        } else {
            std::string want = "[] or [1] (per tensor), [" + std::to_string(f.rows) + "] or [" +
                               std::to_string(f.rows) + ", 1] (per output channel)";
            if (br > 0) {
                want += " or [" + std::to_string((f.rows + br - 1) / br) + ", " +
                        std::to_string((f.cols + bc - 1) / bc) + "] (" + std::to_string(br) + "x" + std::to_string(bc) +
                        " blocks)";
            }
            return InvalidArgument(s->file + ": tensor \"" + s->name + "\" has shape " + s->ShapeString() +
                                   ", expected " + want);
        }
        if (s->dtype == DType::kF8E4M3) {
            return InvalidArgument(s->file + ": tensor \"" + s->name + "\" must be F32, BF16 or F16");
        }
        w_.load.file_bytes += static_cast<int64_t>(s->nbytes);
        return Status::Ok();
    }

    const TensorSet& tensors_;
    const ModelConfig& config_;
    Backend* backend_;
    ModelWeights& w_;
    bool quantize_fp8_;
    std::vector<Job> jobs_;
    std::vector<std::pair<const TensorView*, float*>> scalars_;
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
        if (c.quantization.fp8()) {
            // An FP8 checkpoint's scales: per linear weight (read by Linear; input_scale, the static activation
            // scale, is not used: activations stay 16/32-bit, docs/models.md), and the KV cache's per layer.
            for (std::vector<std::string>* list : {&names, &qk}) {
                const size_t n = list->size();
                for (size_t i = 0; i < n; ++i) {
                    const std::string& w = (*list)[i];
                    if (w.size() < 7 || w.compare(w.size() - 7, 7, ".weight") != 0 ||
                        w.find("norm") != std::string::npos) {
                        continue;
                    }
                    for (const char* s : {"_scale", "_scale_inv"}) ignored.insert(LayerTensorName(l, w + s));
                    ignored.insert(LayerTensorName(l, w.substr(0, w.size() - 6) + "input_scale"));
                }
            }
            for (const char* s : {"self_attn.k_scale", "self_attn.v_scale", "self_attn.kv_scale",
                                  "self_attn.k_proj.output_scale", "self_attn.v_proj.output_scale"}) {
                ignored.insert(LayerTensorName(l, s));
            }
        }
        for (const std::string& n : names) expected.insert(LayerTensorName(l, n));
        for (const std::string& n : qk) (reuse ? ignored : expected).insert(LayerTensorName(l, n));
    }
    if (c.quantization.fp8()) {
        for (const char* s : {"lm_head.weight_scale", "lm_head.weight_scale_inv", "lm_head.input_scale"})
            ignored.insert(s);
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
        if (!c.quantization.fp8() && (name.find("_scale") != std::string::npos)) {
            why += " (an FP8 checkpoint's scale, but config.json has no quantization_config)";
        }
        return InvalidArgument((v ? v->file + ": " : std::string()) + "unexpected tensor \"" + name + "\": " + why);
    }

    ModelWeights w;
    Loader ld(tensors, c, backend, w, options.quantize_fp8);
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
        if (head->dtype == DType::kF8E4M3) {  // lm_head is not quantized at load (vLLM neither), but may come as fp8
            UA_ASSIGN_OR_RETURN(w.lm_head, ld.Linear({head}));
        } else {
            UA_ASSIGN_OR_RETURN(w.lm_head, ld.Stack({head}));
        }
    }
    w.layers.resize(c.num_layers);
    if (c.quantization.fp8()) {  // KV cache scales: all layers or none
        int found = 0;
        std::vector<float>& k = w.kv_k_scale;  // filled by Run
        std::vector<float>& v = w.kv_v_scale;
        k.assign(static_cast<size_t>(c.num_layers), 0.0f);
        v.assign(static_cast<size_t>(c.num_layers), 0.0f);
        for (int l = 0; l < c.num_layers; ++l) {
            // self_attn.k_scale / v_scale; older llm-compressor files name them k_proj / v_proj.output_scale, and
            // older AutoFP8 ones have one kv_scale for both.
            auto find = [&](const char* a, const char* b) {
                const TensorView* t = tensors.Find(LayerTensorName(l, a));
                return t != nullptr ? t : tensors.Find(LayerTensorName(l, b));
            };
            const TensorView* ks = find("self_attn.k_scale", "self_attn.k_proj.output_scale");
            const TensorView* vs = find("self_attn.v_scale", "self_attn.v_proj.output_scale");
            const TensorView* kvs = tensors.Find(LayerTensorName(l, "self_attn.kv_scale"));
            if (ks == nullptr) ks = kvs;
            if (vs == nullptr) vs = kvs;
            if (ks == nullptr && vs == nullptr) continue;
            if (ks == nullptr || vs == nullptr) {
                return InvalidArgument("layer " + std::to_string(l) + " has only one of self_attn.k_scale and v_scale");
            }
            ++found;
            if (c.HasKeys(l)) UA_RETURN_IF_ERROR(ld.Scalar(ks, &k[static_cast<size_t>(l)]));
            UA_RETURN_IF_ERROR(ld.Scalar(vs, &v[static_cast<size_t>(l)]));
        }
        if (found != 0 && found != c.num_layers) {
            return InvalidArgument("KV cache scales (self_attn.k_scale / v_scale) exist for " + std::to_string(found) +
                                   " of " + std::to_string(c.num_layers) + " layers");
        }
        if (found == 0) {
            k.clear();
            v.clear();
        }
    }
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
            UA_ASSIGN_OR_RETURN(lw.w_vc, ld.Linear({wv, wc}));
            if (bv) {
                UA_ASSIGN_OR_RETURN(lw.b_v, ld.Row({bv}));
            }
        } else {
            UA_ASSIGN_OR_RETURN(const TensorView* wq, get("self_attn.q_proj.weight", {q_dim, d}));
            UA_ASSIGN_OR_RETURN(const TensorView* wk, get("self_attn.k_proj.weight", {kv_dim, d}));
            UA_ASSIGN_OR_RETURN(lw.w_qkv, ld.Linear({wq, wk, wv}));
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
        UA_ASSIGN_OR_RETURN(lw.w_o, ld.Linear({wo}));
        if (c.o_bias) {
            UA_ASSIGN_OR_RETURN(const TensorView* bo, get("self_attn.o_proj.bias", {d}));
            UA_ASSIGN_OR_RETURN(lw.b_o, ld.Row({bo}));
        }
        UA_ASSIGN_OR_RETURN(const TensorView* wg, get("mlp.gate_proj.weight", {ff, d}));
        UA_ASSIGN_OR_RETURN(const TensorView* wu, get("mlp.up_proj.weight", {ff, d}));
        UA_ASSIGN_OR_RETURN(lw.w_gate_up, ld.Linear({wg, wu}));
        UA_ASSIGN_OR_RETURN(const TensorView* wd, get("mlp.down_proj.weight", {d, ff}));
        UA_ASSIGN_OR_RETURN(lw.w_down, ld.Linear({wd}));
    }
    const auto start = std::chrono::steady_clock::now();
    UA_RETURN_IF_ERROR(ld.Run(options));
    UA_RETURN_IF_ERROR(UploadRopeTable(c, backend, w));
    backend->Synchronize();
    w.load.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return w;
}

StatusOr<ModelWeights> RandomWeights(const ModelConfig& c, Backend* backend, uint64_t seed, bool fp8) {
    if (fp8 && !backend->HoldsFp8Weights()) {
        return Unimplemented("random fp8 weights: the " + backend->Name() + " backend does not hold fp8 weights");
    }
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
    auto linear = [&](int64_t rows, int64_t cols) -> StatusOr<Tensor> {
        const float a = std::sqrt(3.0f / static_cast<float>(cols));
        if (!fp8) return make(rows, cols, wt, -a, a);
        // e4m3 values uniform in [-448, 448) times a / 448: uniform in [-a, a), rounded to e4m3.
        UA_ASSIGN_OR_RETURN(Tensor t, make(rows, cols, DType::kF8E4M3, -kFp8E4M3Max, kFp8E4M3Max));
        UA_ASSIGN_OR_RETURN(Tensor s, make(1, rows, DType::kF32, a / kFp8E4M3Max, a / kFp8E4M3Max));
        t.scale = s.f32();
        t.fp8_rows = true;
        ++w.num_fp8_linear;
        ++w.num_fp8_stored;
        return t;
    };
    const int64_t d = c.hidden_size, hd = c.head_dim, q_dim = c.num_heads * hd, kv_dim = c.num_kv_heads * hd;
    const int64_t ff = c.intermediate_size, vocab = c.vocab_size;
    UA_ASSIGN_OR_RETURN(w.embed, make(vocab, d, wt, -1.0f, 1.0f));
    UA_ASSIGN_OR_RETURN(w.final_norm, make(1, d, DType::kF32, 0.8f, 1.2f));
    if (c.tie_word_embeddings) {
        w.lm_head = w.embed;
    } else {
        const float a = std::sqrt(3.0f / static_cast<float>(d));  // lm_head stays 16-bit, as in FP8 checkpoints
        UA_ASSIGN_OR_RETURN(w.lm_head, make(vocab, d, wt, -a, a));
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
