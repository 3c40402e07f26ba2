#include "model/fp8_quantize.h"

#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <regex>

#include "backend/backend.h"
#include "model/model.h"
#include "model/session.h"
#include "model/text_corpus.h"
#include "model/unify.h"
#include "model/weights.h"
#include "uniattn/json_io.h"
#include "uniattn/safetensors.h"
#include "util/file.h"

namespace uniattn {

namespace {

void Say(const Fp8QuantizeOptions& o, const std::string& line) {
    if (o.progress) o.progress(line);
}

// In-place lower Cholesky factor of a symmetric positive definite n×n matrix (the upper triangle is zeroed).
Status Cholesky(std::vector<double>& a, int64_t n) {
    for (int64_t j = 0; j < n; ++j) {
        double* aj = a.data() + j * n;
        double d = aj[j];
        for (int64_t k = 0; k < j; ++k) d -= aj[k] * aj[k];
        if (!(d > 0)) return FailedPrecondition("the calibration Gram matrix is not positive definite");
        d = std::sqrt(d);
        aj[j] = d;
#pragma omp parallel for schedule(static)
        for (int64_t i = j + 1; i < n; ++i) {
            double* ai = a.data() + i * n;
            double s = ai[j];
            for (int64_t k = 0; k < j; ++k) s -= ai[k] * aj[k];
            ai[j] = s / d;
        }
        for (int64_t k = j + 1; k < n; ++k) aj[k] = 0;
    }
    return Status::Ok();
}

// The upper triangular U with H⁻¹ = UᵀU (GPTQ's factor): H = LLᵀ, H⁻¹ = L⁻ᵀL⁻¹, then U = (chol(H⁻¹))ᵀ.
StatusOr<std::vector<double>> InverseCholeskyUpper(std::vector<double> h, int64_t n) {
    UA_RETURN_IF_ERROR(Cholesky(h, n));                       // h = L
    std::vector<double> li(static_cast<size_t>(n * n), 0.0);  // L⁻¹, lower
    for (int64_t i = 0; i < n; ++i) {
        li[i * n + i] = 1.0 / h[i * n + i];
        for (int64_t j = 0; j < i; ++j) {
            double s = 0;
            for (int64_t k = j; k < i; ++k) s += h[i * n + k] * li[k * n + j];
            li[i * n + j] = -s / h[i * n + i];
        }
    }
    std::vector<double> inv(static_cast<size_t>(n * n), 0.0);  // L⁻ᵀL⁻¹
#pragma omp parallel for schedule(dynamic, 8)
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j <= i; ++j) {
            double s = 0;
            for (int64_t k = i; k < n; ++k) s += li[k * n + i] * li[k * n + j];
            inv[i * n + j] = s;
            inv[j * n + i] = s;
        }
    }
    UA_RETURN_IF_ERROR(Cholesky(inv, n));  // inv = M, H⁻¹ = MMᵀ
    std::vector<double> u(static_cast<size_t>(n * n), 0.0);
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = i; j < n; ++j) u[i * n + j] = inv[j * n + i];
    }
    return u;
}

// Adds XᵀX of x [t, n] (fp32, host) to h [n, n] (double), through the CPU backend's matrix product.
void AddGram(Backend* cpu, const float* x, int64_t t, int64_t n, std::vector<double>& h) {
    std::vector<float> xt(static_cast<size_t>(n * t)), g(static_cast<size_t>(n * n));
    for (int64_t r = 0; r < t; ++r) {
        for (int64_t c = 0; c < n; ++c) xt[c * t + r] = x[r * n + c];
    }
    const Tensor a = MakeTensor(xt.data(), DType::kF32, n, t);
    cpu->MatMul(a, a, MakeTensor(g.data(), DType::kF32, n, n), false);
    for (size_t i = 0; i < g.size(); ++i) h[i] += g[i];
}

// Linear weights by name: model.layers.N.<proj>.weight -> (layer, which Gram matrix: 0 attention input, 1 ffn
// input, 2 down input, 3 o_proj input).
bool LinearWeight(const std::string& name, int* layer, int* gram) {
    static const std::regex re(
        R"(model\.layers\.(\d+)\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj|v2_proj)\.weight)");
    std::smatch m;
    if (!std::regex_match(name, m, re)) return false;
    *layer = std::stoi(m[1]);
    const std::string p = m[2];
    if (p == "self_attn.o_proj") {
        *gram = 3;
    } else if (p == "mlp.gate_proj" || p == "mlp.up_proj") {
        *gram = 1;
    } else if (p == "mlp.down_proj") {
        *gram = 2;
    } else {
        *gram = 0;
    }
    return true;
}

}  // namespace

Status RoundToFp8(std::vector<float>& w, int64_t rows, int64_t cols, std::vector<double> h, double damp, bool act_order,
                  std::vector<float>& scale, std::vector<uint8_t>& q, int num_threads) {
    if (static_cast<int64_t>(w.size()) != rows * cols) return InvalidArgument("RoundToFp8: w is not rows x cols");
    scale.assign(static_cast<size_t>(rows), 1.0f);
    q.assign(static_cast<size_t>(rows * cols), 0);
    for (int64_t r = 0; r < rows; ++r) {
        float amax = 0;
        bool finite = true;
        for (int64_t c = 0; c < cols; ++c) {
            finite = finite && std::isfinite(w[r * cols + c]);
            amax = std::max(amax, std::fabs(w[r * cols + c]));
        }
        if (!finite) return InvalidArgument("RoundToFp8: row " + std::to_string(r) + " holds a non-finite value");
        if (amax > 0) scale[r] = amax / kFp8E4M3Max;  // as the loader's engine.quantization=fp8
    }
    if (num_threads <= 0) num_threads = omp_get_max_threads();
    if (h.empty()) {
#pragma omp parallel for schedule(static) num_threads(num_threads)
        for (int64_t r = 0; r < rows; ++r) {
            for (int64_t c = 0; c < cols; ++c) {
                const uint8_t b = FloatToFp8E4M3(w[r * cols + c] / scale[r]);
                q[r * cols + c] = b;
                w[r * cols + c] = Fp8E4M3ToFloat(b) * scale[r];
            }
        }
        return Status::Ok();
    }
    if (static_cast<int64_t>(h.size()) != cols * cols) return InvalidArgument("RoundToFp8: h is not cols x cols");
    // perm[k]: the column rounded k-th.
    std::vector<int64_t> perm(static_cast<size_t>(cols));
    for (int64_t i = 0; i < cols; ++i) perm[i] = i;
    if (act_order) {
        std::stable_sort(perm.begin(), perm.end(),
                         [&](int64_t a, int64_t b) { return h[a * cols + a] > h[b * cols + b]; });
        std::vector<double> hp(h.size());
        for (int64_t i = 0; i < cols; ++i) {
            for (int64_t j = 0; j < cols; ++j) hp[i * cols + j] = h[perm[i] * cols + perm[j]];
        }
        h = std::move(hp);
    }
    double mean_diag = 0;
    for (int64_t i = 0; i < cols; ++i) mean_diag += h[i * cols + i];
    mean_diag /= static_cast<double>(cols);
    if (!(mean_diag > 0)) mean_diag = 1;
    for (int64_t i = 0; i < cols; ++i) {
        if (h[i * cols + i] == 0) h[i * cols + i] = 1;  // an input that was always 0: rounding it costs nothing
        h[i * cols + i] += damp * mean_diag;
    }
    UA_ASSIGN_OR_RETURN(const std::vector<double> u, InverseCholeskyUpper(std::move(h), cols));
    // Rows are independent: each rounds its columns in order, pushing each error onto the later columns.
#pragma omp parallel for schedule(dynamic, 4) num_threads(num_threads)
    for (int64_t r = 0; r < rows; ++r) {
        std::vector<double> row(static_cast<size_t>(cols));
        for (int64_t i = 0; i < cols; ++i) row[i] = w[r * cols + perm[i]];
        const float s = scale[r];
        for (int64_t i = 0; i < cols; ++i) {
            const uint8_t b = FloatToFp8E4M3(static_cast<float>(row[i]) / s);
            const float v = Fp8E4M3ToFloat(b) * s;
            q[r * cols + perm[i]] = b;
            w[r * cols + perm[i]] = v;
            const double err = (row[i] - v) / u[i * cols + i];
            const double* ui = u.data() + i * cols;
            for (int64_t j = i + 1; j < cols; ++j) row[j] -= err * ui[j];
        }
    }
    return Status::Ok();
}

double OutputError(const std::vector<float>& w, const std::vector<float>& q, int64_t rows, int64_t cols,
                   const std::vector<double>& h) {
    double total = 0;
#pragma omp parallel for reduction(+ : total) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
        std::vector<double> d(static_cast<size_t>(cols));
        for (int64_t c = 0; c < cols; ++c)
            d[c] = static_cast<double>(w[r * cols + c]) - (q.empty() ? 0.0 : q[r * cols + c]);
        for (int64_t i = 0; i < cols; ++i) {
            double s = 0;
            const double* hi = h.data() + i * cols;
            for (int64_t j = 0; j < cols; ++j) s += hi[j] * d[j];
            total += d[i] * s;
        }
    }
    return total;
}

StatusOr<Fp8QuantizeReport> QuantizeFp8(const Fp8QuantizeOptions& o) {
    if (o.method != "gptq" && o.method != "rtn") {
        return InvalidArgument("method \"" + o.method + "\" is not one of gptq, rtn");
    }
    if (o.out_dir.empty() || o.out_dir == o.model_dir) return InvalidArgument("--out must name a new directory");
    UA_ASSIGN_OR_RETURN(ModelConfig cfg, Model::LoadConfig(o.model_dir));
    if (cfg.quantization.fp8()) return InvalidArgument(o.model_dir + ": the model is already an FP8 checkpoint");
    UA_ASSIGN_OR_RETURN(TensorSet src, TensorSet::OpenDir(o.model_dir));
    Fp8QuantizeReport report;
    auto backend = MakeCpuBackend(o.num_threads);

    // Gram matrices of each layer's inputs on calibration tokens (gptq): [layer][0 attention, 1 ffn, 2 down].
    const int64_t d = cfg.hidden_size, ff = cfg.intermediate_size;
    const int64_t q_dim = static_cast<int64_t>(cfg.num_heads) * cfg.head_dim;
    std::vector<std::array<std::vector<double>, 4>> grams(static_cast<size_t>(cfg.num_layers));
    if (o.method == "gptq") {
        UA_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Load(o.model_dir, backend.get(), !o.calib.empty()));
        std::vector<std::vector<int32_t>> corpus;
        if (o.calib.empty()) {
            UA_ASSIGN_OR_RETURN(
                corpus, SampleFromModel(*model, backend.get(), o.calib_samples, o.calib_len, o.seed, o.progress));
        } else {
            UA_ASSIGN_OR_RETURN(corpus, LoadCorpus(o.calib, *model->tokenizer, cfg.max_position_embeddings));
        }
        int max_len = 1;
        for (const auto& s : corpus) {
            report.calib_tokens += static_cast<int64_t>(s.size());
            max_len = std::max(max_len, static_cast<int>(s.size()));
        }
        Say(o, "calibrating on " + std::to_string(corpus.size()) + " sequences, " +
                   std::to_string(report.calib_tokens) + " tokens");
        for (auto& g : grams) {
            g[0].assign(static_cast<size_t>(d * d), 0.0);
            g[1].assign(static_cast<size_t>(d * d), 0.0);
            g[2].assign(static_cast<size_t>(ff * ff), 0.0);
            g[3].assign(static_cast<size_t>(q_dim * q_dim), 0.0);
        }
        UA_ASSIGN_OR_RETURN(std::unique_ptr<Session> s, Session::Create(model.get(), backend.get(), 16, 256, max_len));
        std::vector<float> u, gu, m;
        Backend* cpu = backend.get();
        s->runner().SetLayerTap([&](int layer, const float* xn, const float* h1, const float* attn, int n) {
            auto& g = grams[static_cast<size_t>(layer)];
            AddGram(cpu, xn, n, d, g[0]);
            AddGram(cpu, attn, n, q_dim, g[3]);
            const LayerWeights& lw = model->weights.layers[static_cast<size_t>(layer)];
            u.resize(static_cast<size_t>(n * d));
            gu.resize(static_cast<size_t>(n * 2 * ff));
            m.resize(static_cast<size_t>(n * ff));
            const Tensor tu = MakeTensor(u.data(), DType::kF32, n, d);
            cpu->RmsNorm(MakeTensor(const_cast<float*>(h1), DType::kF32, n, d), lw.ffn_norm,
                         static_cast<float>(cfg.rms_norm_eps), tu);
            AddGram(cpu, u.data(), n, d, g[1]);
            const Tensor tgu = MakeTensor(gu.data(), DType::kF32, n, 2 * ff);
            cpu->MatMul(tu, lw.w_gate_up, tgu, false);
            cpu->SiluMul(tgu, MakeTensor(m.data(), DType::kF32, n, ff));
            AddGram(cpu, m.data(), n, ff, g[2]);
            return true;
        });
        std::vector<float> unused;
        for (size_t i = 0; i < corpus.size(); ++i) {
            s->Reset();
            UA_RETURN_IF_ERROR(s->Append(corpus[i], false, &unused));
        }
        s->runner().SetLayerTap(nullptr);
    }

    // Every tensor, linear weights rounded; the rest as they were.
    std::vector<std::string> names = src.Names();
    std::vector<std::vector<float>> data;
    data.reserve(names.size() * 2);
    std::vector<TensorToWrite> write;
    double rtn_sum = 0, sum = 0;
    for (const std::string& name : names) {
        const TensorView* v = src.Find(name);
        data.emplace_back(static_cast<size_t>(v->numel()));
        v->ToFloat(data.back().data());
        int layer = 0, gram = -1;
        if (!LinearWeight(name, &layer, &gram) || v->shape.size() != 2) {
            write.push_back({name, v->dtype, v->shape, data.back().data()});
            continue;
        }
        std::vector<float>& w = data.back();
        const int64_t rows = v->shape[0], cols = v->shape[1];
        const std::vector<float> original = w;
        const std::vector<double>* h = nullptr;
        if (o.method == "gptq" && gram >= 0 && layer < cfg.num_layers) h = &grams[static_cast<size_t>(layer)][gram];
        std::vector<float> scale;
        std::vector<uint8_t> q;
        UA_RETURN_IF_ERROR(
            RoundToFp8(w, rows, cols, h ? *h : std::vector<double>{}, o.damp, o.act_order, scale, q, o.num_threads));
        if (h != nullptr) {
            std::vector<float> rtn = original, rtn_scale;
            std::vector<uint8_t> rtn_q;
            UA_RETURN_IF_ERROR(RoundToFp8(rtn, rows, cols, {}, 0, false, rtn_scale, rtn_q, o.num_threads));
            const double base = OutputError(original, {}, rows, cols, *h);
            if (base > 0) {
                rtn_sum += OutputError(original, rtn, rows, cols, *h) / base;
                sum += OutputError(original, w, rows, cols, *h) / base;
                ++report.num_measured;
            }
        }
        for (size_t i = 0; i < q.size(); ++i) w[i] = Fp8E4M3ToFloat(q[i]);  // the bytes, exact in F8_E4M3
        write.push_back({name, DType::kF8E4M3, v->shape, w.data()});
        data.push_back(std::move(scale));
        write.push_back({name + "_scale", DType::kF32, {rows, 1}, data.back().data()});
        ++report.num_tensors;
    }
    if (report.num_measured > 0) {
        report.rtn_output_error = rtn_sum / report.num_measured;
        report.output_error = sum / report.num_measured;
    }

    UA_RETURN_IF_ERROR(MakeDirs(o.out_dir));
    UA_ASSIGN_OR_RETURN(std::string config_text, ReadFile(o.model_dir + "/config.json"));
    UA_ASSIGN_OR_RETURN(nlohmann::json parsed, ParseJsonFile(config_text, o.model_dir + "/config.json"));
    OrderedJson config = OrderedJson::parse(parsed.dump());
    config["quantization_config"] = OrderedJson::parse(R"({
        "quant_method": "compressed-tensors", "format": "float-quantized", "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"],
            "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": true, "dynamic": false,
                        "observer": "minmax"},
            "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "symmetric": true,
                                  "dynamic": true}}},
        "ignore": ["lm_head"]})");
    config["quantization_config"]["uniattn_rounding"] = o.method;
    UA_RETURN_IF_ERROR(WriteFile(o.out_dir + "/config.json", DumpJson(config, 2) + "\n"));
    UA_RETURN_IF_ERROR(WriteSafetensors(o.out_dir + "/model.safetensors", write));
    for (const char* f : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                          "generation_config.json", "chat_template.jinja", "chat_template.json"}) {
        const std::string from = o.model_dir + "/" + f;
        if (!FileExists(from)) continue;
        UA_ASSIGN_OR_RETURN(std::string bytes, ReadFile(from));
        UA_RETURN_IF_ERROR(WriteFile(o.out_dir + "/" + f, bytes));
    }
    Say(o, "wrote " + o.out_dir + ": " + std::to_string(report.num_tensors) + " linear weights in fp8 e4m3");
    return report;
}

}  // namespace uniattn
