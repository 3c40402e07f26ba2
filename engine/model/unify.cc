#include "model/unify.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <vector>

#include "model/forward.h"
#include "model/model.h"
#include "model/session.h"
#include "model/text_corpus.h"
#include "model/weights.h"
#include "sampling/sampler.h"
#include "uniattn/json_io.h"
#include "uniattn/safetensors.h"
#include "util/file.h"

namespace uniattn {

namespace {

void Say(const UnifyOptions& o, const std::string& line) {
    if (o.progress) o.progress(line);
}

// Solves (A + λI) W = B in place for W (A: n×n symmetric positive semi-definite, B: n×m), by Cholesky.
Status SolveRidge(std::vector<double>& a, std::vector<double>& b, int n, int m, double ridge) {
    double mean_diag = 0;
    for (int i = 0; i < n; ++i) mean_diag += a[static_cast<size_t>(i) * n + i];
    mean_diag /= n;
    const double lambda = ridge * (mean_diag > 0 ? mean_diag : 1.0);
    for (int i = 0; i < n; ++i) a[static_cast<size_t>(i) * n + i] += lambda;
    // A = L L^T, L stored in the lower triangle of a.
    for (int j = 0; j < n; ++j) {
        double d = a[static_cast<size_t>(j) * n + j];
        for (int k = 0; k < j; ++k) d -= a[static_cast<size_t>(j) * n + k] * a[static_cast<size_t>(j) * n + k];
        if (d <= 0) return Internal("calibration normal equations are not positive definite");
        const double ljj = std::sqrt(d);
        a[static_cast<size_t>(j) * n + j] = ljj;
        for (int i = j + 1; i < n; ++i) {
            double s = a[static_cast<size_t>(i) * n + j];
            for (int k = 0; k < j; ++k) s -= a[static_cast<size_t>(i) * n + k] * a[static_cast<size_t>(j) * n + k];
            a[static_cast<size_t>(i) * n + j] = s / ljj;
        }
    }
    for (int c = 0; c < m; ++c) {
        for (int i = 0; i < n; ++i) {  // L y = b
            double s = b[static_cast<size_t>(i) * m + c];
            for (int k = 0; k < i; ++k) s -= a[static_cast<size_t>(i) * n + k] * b[static_cast<size_t>(k) * m + c];
            b[static_cast<size_t>(i) * m + c] = s / a[static_cast<size_t>(i) * n + i];
        }
        for (int i = n - 1; i >= 0; --i) {  // L^T w = y
            double s = b[static_cast<size_t>(i) * m + c];
            for (int k = i + 1; k < n; ++k) s -= a[static_cast<size_t>(k) * n + i] * b[static_cast<size_t>(k) * m + c];
            b[static_cast<size_t>(i) * m + c] = s / a[static_cast<size_t>(i) * n + i];
        }
    }
    return Status::Ok();
}

// Writes the unified checkpoint: every original tensor in its own dtype (q/k of reuse layers dropped on
// request) plus v2_proj from `wc` (zeros where absent).
Status WriteCheckpoint(const UnifyOptions& o, const TensorSet& src, const ModelConfig& cfg,
                       const std::map<int, std::vector<float>>& wc) {
    std::vector<std::vector<float>> storage;
    std::vector<TensorToWrite> out;
    const std::vector<std::string> names = src.Names();
    storage.reserve(names.size() + wc.size());
    DType v2_dtype = DType::kF32;
    for (const std::string& name : names) {
        const TensorView* v = src.Find(name);
        if (name == "model.embed_tokens.weight") v2_dtype = v->dtype;
        bool skip = false;
        if (o.drop_unused_qk) {  // Q, K, their biases and Qwen3's q/k norms; the V bias stays (it is read)
            for (int l = 0; l < cfg.num_layers && !skip; ++l) {
                if (cfg.layer_kinds[l] != LayerKind::kReuse) continue;
                for (const char* suffix :
                     {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.q_proj.bias",
                      "self_attn.k_proj.bias", "self_attn.q_norm.weight", "self_attn.k_norm.weight"}) {
                    skip = skip || name == LayerTensorName(l, suffix);
                }
            }
        }
        if (skip) continue;
        storage.emplace_back(static_cast<size_t>(v->numel()));
        v->ToFloat(storage.back().data());
        out.push_back(TensorToWrite{name, v->dtype, v->shape, storage.back().data()});
    }
    const int64_t q_dim = static_cast<int64_t>(cfg.num_heads) * cfg.head_dim;
    for (int l = 0; l < cfg.num_layers; ++l) {
        if (cfg.layer_kinds[l] != LayerKind::kReuse) continue;
        auto it = wc.find(l);
        storage.emplace_back(it != wc.end() ? it->second : std::vector<float>(q_dim * cfg.hidden_size, 0.f));
        out.push_back(TensorToWrite{
            LayerTensorName(l, "v2_proj.weight"), v2_dtype, {q_dim, cfg.hidden_size}, storage.back().data()});
    }
    UA_RETURN_IF_ERROR(MakeDirs(o.out_dir));
    UA_RETURN_IF_ERROR(WriteSafetensors(o.out_dir + "/model.safetensors", out, {{"format", "pt"}}));
    UA_RETURN_IF_ERROR(WriteFile(o.out_dir + "/config.json", DumpJson(cfg.ToJson(), 2) + "\n"));
    for (const char* f : {"tokenizer.model", "tokenizer_config.json", "generation_config.json"}) {
        const std::string from = o.model_dir + "/" + f;
        if (!FileExists(from)) continue;
        UA_ASSIGN_OR_RETURN(std::string bytes, ReadFile(from));
        UA_RETURN_IF_ERROR(WriteFile(o.out_dir + "/" + f, bytes));
    }
    return Status::Ok();
}

}  // namespace

StatusOr<std::vector<std::vector<int32_t>>> SampleFromModel(const Model& model, Backend* backend, int n, int len,
                                                            uint64_t seed,
                                                            const std::function<void(const std::string&)>& progress) {
    // 0: the context length, at most kMaxSampledLen (long-context models would need a KV cache of
    // n × 128k tokens otherwise).
    constexpr int kMaxSampledLen = 2048;
    len = len > 0 ? std::min(len, model.config.max_position_embeddings)
                  : std::min(model.config.max_position_embeddings, kMaxSampledLen);
    const int block_size = 16, blocks_per_seq = (len + block_size - 1) / block_size;
    UA_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> kv,
                        KvCache::Create(backend, model.config, block_size, static_cast<int64_t>(n) * blocks_per_seq));
    ModelRunner runner(&model, backend);
    SamplingParams p;
    p.temperature = 1.0f;
    std::vector<Sampler> samplers;
    std::vector<std::vector<int32_t>> seqs(n, std::vector<int32_t>{model.config.bos_token_id});
    std::vector<std::vector<int32_t>> tables(n);
    std::vector<bool> done(n, false);
    for (int i = 0; i < n; ++i) {
        samplers.emplace_back(p, seed + static_cast<uint64_t>(i));
        for (int b = 0; b < blocks_per_seq; ++b) tables[i].push_back(i * blocks_per_seq + b);
    }
    const int vocab = model.config.vocab_size;
    std::vector<float> logits;
    for (int step = 0;; ++step) {
        ForwardInput in;
        std::vector<int> active;
        for (int i = 0; i < n; ++i) {
            if (done[i]) continue;
            const int pos = static_cast<int>(seqs[i].size()) - 1;
            in.AddSequence({seqs[i].back()}, pos, tables[i], block_size, /*want_last_logits=*/true);
            active.push_back(i);
        }
        if (active.empty()) break;
        in.Finish();
        logits.resize(active.size() * static_cast<size_t>(vocab));
        UA_RETURN_IF_ERROR(runner.Forward(in, *kv, logits.data()));
        for (size_t a = 0; a < active.size(); ++a) {
            const int i = active[a];
            const std::vector<int32_t> generated(seqs[i].begin() + 1, seqs[i].end());
            const SampleResult r = samplers[i].Sample(logits.data() + a * vocab, vocab, {}, generated);
            const std::vector<int32_t>& eos = model.config.eos_token_ids;
            if (std::find(eos.begin(), eos.end(), r.token) != eos.end()) {
                done[i] = true;
            } else {
                seqs[i].push_back(r.token);
                done[i] = static_cast<int>(seqs[i].size()) >= len;
            }
        }
        if (step % 32 == 0 && progress) {
            progress("sampling calibration sequences: step " + std::to_string(step) + "/" + std::to_string(len));
        }
    }
    std::vector<std::vector<int32_t>> corpus;
    for (auto& s : seqs) {
        if (s.size() >= 2) corpus.push_back(std::move(s));
    }
    return corpus;
}

StatusOr<UnifyReport> Unify(const UnifyOptions& o) {
    UA_ASSIGN_OR_RETURN(ModelConfig cfg, Model::LoadConfig(o.model_dir));
    if (cfg.has_grouping) return InvalidArgument(o.model_dir + ": the model is already a UniAttn checkpoint");
    cfg.has_grouping = true;
    cfg.grouping_idx = o.group;
    cfg.grouping_begin_idx = o.begin;
    cfg.grouping_end_idx = o.end;
    UA_RETURN_IF_ERROR(cfg.DeriveLayerKinds());
    if (static_cast<int64_t>(cfg.num_heads) * cfg.head_dim != cfg.hidden_size) {
        return InvalidArgument("UniAttn needs num_heads * head_dim == hidden_size");
    }
    UnifyReport report;
    for (int l = 0; l < cfg.num_layers; ++l) {
        if (cfg.layer_kinds[l] == LayerKind::kReuse) report.reuse_layers.push_back(l);
    }
    UA_ASSIGN_OR_RETURN(TensorSet src, TensorSet::OpenDir(o.model_dir));
    // First write with zero compensation: that is the final answer for --calib none and the starting
    // point of calibration.
    UA_RETURN_IF_ERROR(WriteCheckpoint(o, src, cfg, {}));
    Say(o, "wrote " + o.out_dir + " with " + std::to_string(report.reuse_layers.size()) + " reuse layers");
    if (o.calib == "none" || report.reuse_layers.empty()) return report;

    auto backend = MakeCpuBackend(o.num_threads);
    // The tokenizer is only needed to read a calibration text.
    UA_ASSIGN_OR_RETURN(std::unique_ptr<Model> original, Model::Load(o.model_dir, backend.get(), !o.calib.empty()));
    UA_ASSIGN_OR_RETURN(std::unique_ptr<Model> unified, Model::Load(o.out_dir, backend.get(), false));
    std::vector<std::vector<int32_t>> corpus;
    if (o.calib.empty()) {
        UA_ASSIGN_OR_RETURN(
            corpus, SampleFromModel(*original, backend.get(), o.calib_samples, o.calib_len, o.seed, o.progress));
    } else {
        UA_ASSIGN_OR_RETURN(corpus, LoadCorpus(o.calib, *original->tokenizer, cfg.max_position_embeddings));
    }
    for (const auto& s : corpus) report.calib_tokens += static_cast<int64_t>(s.size());
    Say(o, "calibrating on " + std::to_string(corpus.size()) + " sequences, " + std::to_string(report.calib_tokens) +
               " tokens");

    const int d = cfg.hidden_size;
    // O1[r]: the original model's post-attention residual at every reuse layer, for every token.
    // Sessions hold the longest calibration sequence, not the whole context (131072 tokens for Llama-3.1).
    int max_len = 1;
    for (const auto& seq : corpus) max_len = std::max(max_len, static_cast<int>(seq.size()));
    std::map<int, std::vector<float>> o1;
    {
        UA_ASSIGN_OR_RETURN(std::unique_ptr<Session> s,
                            Session::Create(original.get(), backend.get(), 16, 256, max_len));
        const int last = report.reuse_layers.back();
        s->runner().SetLayerTap([&](int layer, const float*, const float* h1, const float*, int n) {
            if (cfg.layer_kinds[layer] == LayerKind::kReuse) o1[layer].insert(o1[layer].end(), h1, h1 + n * d);
            return layer < last;
        });
        std::vector<float> unused;
        for (const auto& seq : corpus) {
            s->Reset();
            UA_RETURN_IF_ERROR(s->Append(seq, false, &unused));
        }
    }

    std::map<int, std::vector<float>> wc_all;
    UA_ASSIGN_OR_RETURN(std::unique_ptr<Session> us, Session::Create(unified.get(), backend.get(), 16, 256, max_len));
    const int64_t kv_dim = static_cast<int64_t>(cfg.num_kv_heads) * cfg.head_dim;
    for (size_t ri = 0; ri < report.reuse_layers.size(); ++ri) {
        const int r = report.reuse_layers[ri];
        std::vector<double> a(static_cast<size_t>(d) * d, 0.0), b(static_cast<size_t>(d) * d, 0.0);
        std::vector<float> xs, gaps;  // kept to measure the fit
        int64_t row = 0;
        const std::vector<float>& target = o1[r];
        us->runner().SetLayerTap([&](int layer, const float* xn, const float* h1, const float*, int n) {
            if (layer < r) return true;
            for (int t = 0; t < n; ++t, ++row) {
                const float* x = xn + static_cast<int64_t>(t) * d;
                const float* o2 = h1 + static_cast<int64_t>(t) * d;
                const float* o1r = target.data() + row * d;
                for (int i = 0; i < d; ++i) {
                    xs.push_back(x[i]);
                    gaps.push_back(o1r[i] - o2[i]);
                }
            }
            return false;
        });
        std::vector<float> unused;
        for (const auto& seq : corpus) {
            us->Reset();
            UA_RETURN_IF_ERROR(us->Append(seq, false, &unused));
        }
        // Normal equations in double: A = X^T X, B = X^T G.
        for (int64_t t = 0; t < row; ++t) {
            const float* x = xs.data() + t * d;
            const float* g = gaps.data() + t * d;
            for (int i = 0; i < d; ++i) {
                const double xi = x[i];
                double* ar = a.data() + static_cast<size_t>(i) * d;
                double* br = b.data() + static_cast<size_t>(i) * d;
                for (int j = 0; j < d; ++j) {
                    ar[j] += xi * x[j];
                    br[j] += xi * g[j];
                }
            }
        }
        UA_RETURN_IF_ERROR(SolveRidge(a, b, d, d, o.ridge));  // b now holds W [d_in, d_out]
        std::vector<float> wc(static_cast<size_t>(d) * d);
        for (int out = 0; out < d; ++out) {
            for (int in = 0; in < d; ++in)
                wc[static_cast<size_t>(out) * d + in] = static_cast<float>(b[static_cast<size_t>(in) * d + out]);
        }
        double before = 0, after = 0;
        for (int64_t t = 0; t < row; ++t) {
            const float* x = xs.data() + t * d;
            for (int j = 0; j < d; ++j) {
                double pred = 0;
                for (int i = 0; i < d; ++i) pred += static_cast<double>(x[i]) * wc[static_cast<size_t>(j) * d + i];
                const double g = gaps[t * d + j];
                before += g * g;
                after += (g - pred) * (g - pred);
            }
        }
        report.residual_before.push_back(1.0);
        report.residual_after.push_back(before > 0 ? std::sqrt(after / before) : 0.0);
        // Activate this layer's compensation in the unified model for the layers above it.
        const Tensor wc_rows = unified->weights.layers[r].w_vc.Rows(kv_dim, d);
        backend->CopyToDevice(wc_rows.data, wc.data(), sizeof(float) * wc.size());
        wc_all[r] = std::move(wc);
        char line[160];
        std::snprintf(line, sizeof(line), "layer %d (%zu/%zu): %lld tokens, relative residual %.4f -> %.4f", r, ri + 1,
                      report.reuse_layers.size(), static_cast<long long>(row), 1.0, report.residual_after.back());
        Say(o, line);
    }
    us->runner().SetLayerTap(nullptr);
    UA_RETURN_IF_ERROR(WriteCheckpoint(o, src, cfg, wc_all));
    Say(o, "wrote " + o.out_dir + " with calibrated compensation");
    return report;
}

}  // namespace uniattn
