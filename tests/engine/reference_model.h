// A naive float64 forward pass of the reference semantics (docs/uniattn.md §2, as the public
// PyTorch code computes it): whole sequences without a cache, every layer keeping its full K and V, the
// anchor's probabilities P handed to the reuse layers above it. The oracle of the engine's logits in
// model_test.cc, model_families_test.cc and uniattn_test.cc.
//
// The families' features are written here from their definitions, independently of the engine's code:
// q/k/v/o biases, Qwen3's per-head q/k RMSNorm before RoPE, head_dim != hidden/heads, GQA, Mistral's sliding
// window (i - W < j <= i) and the RoPE scalings: linear as positions / factor, llama3 by each frequency's
// wavelength (real-models.md), dynamic as vLLM's fixed NTK base for max_len = L · factor.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "engine/test_models.h"
#include "model/weights.h"

namespace uniattn::testref {

using testutil::NamedTensor;

// Deliberate departures, used as controls: a test comparing against the reference must notice them.
struct ReferenceOptions {
    bool wrong_gqa_mapping = false;  // query head h reads KV head h % Hkv instead of h / n_rep
    bool zero_compensation = false;  // reuse layers add no x̃·Wc^T
    bool drop_biases = false;        // no q/k/v/o biases
    bool drop_qk_norm = false;       // no q_norm/k_norm
    bool drop_window = false;        // attend to the whole prefix despite a sliding window
    bool drop_rope_scaling = false;  // plain theta^(-2i/hd) frequencies
};

using Matrix = std::vector<double>;  // row-major

inline const std::vector<float>& Get(const std::vector<NamedTensor>& tensors, const std::string& name) {
    for (const NamedTensor& t : tensors) {
        if (t.name == name) return t.data;
    }
    ADD_FAILURE() << "no tensor " << name;
    static const std::vector<float> empty;
    return empty;
}

// y [T, out] = x [T, in] · w^T, w [out, in]
inline Matrix Linear(const Matrix& x, const std::vector<float>& w, int64_t T, int64_t in, int64_t out) {
    Matrix y(static_cast<size_t>(T * out), 0.0);
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t o = 0; o < out; ++o) {
            double s = 0;
            for (int64_t i = 0; i < in; ++i) s += x[t * in + i] * w[o * in + i];
            y[t * out + o] = s;
        }
    }
    return y;
}

inline Matrix RmsNormRef(const Matrix& x, const std::vector<float>& w, int64_t T, int64_t d, double eps) {
    Matrix y(x.size());
    for (int64_t t = 0; t < T; ++t) {
        double ss = 0;
        for (int64_t i = 0; i < d; ++i) ss += x[t * d + i] * x[t * d + i];
        const double inv = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
        for (int64_t i = 0; i < d; ++i) y[t * d + i] = x[t * d + i] * inv * w[i];
    }
    return y;
}

// The angle of frequency i at position t for the config's RoPE (with its scaling unless dropped).
inline double RopeAngle(const ModelConfig& c, int64_t t, int i, bool drop_scaling) {
    const int hd = c.head_dim;
    double base = c.rope_theta;
    double pos = static_cast<double>(t);
    const RopeScaling& r = c.rope_scaling;
    const RopeType type = drop_scaling ? RopeType::kDefault : r.type;
    if (type == RopeType::kDynamic) {
        const double l =
            r.original_max_position_embeddings > 0 ? r.original_max_position_embeddings : c.max_position_embeddings;
        const double max_len = l * r.factor;
        base = base * std::pow(r.factor * max_len / l - (r.factor - 1), hd / (hd - 2.0));
    }
    if (type == RopeType::kLinear) pos /= r.factor;
    double freq = std::pow(base, -2.0 * i / hd);
    if (type == RopeType::kLlama3) {
        const double wavelen = 2 * 3.14159265358979323846 / freq;
        const double l = r.original_max_position_embeddings;
        if (wavelen > l / r.low_freq_factor) {
            freq = freq / r.factor;  // long wavelengths: fully interpolated
        } else if (wavelen >= l / r.high_freq_factor) {
            const double smooth = (l / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
            freq = smooth * freq + (1 - smooth) * freq / r.factor;
        }
    }
    return pos * freq;
}

// Hugging Face half-split RoPE on x [T, heads·hd], token t at position t.
inline void RopeRef(Matrix& x, int64_t T, int heads, const ModelConfig& c, bool drop_scaling) {
    const int hd = c.head_dim;
    for (int64_t t = 0; t < T; ++t) {
        for (int h = 0; h < heads; ++h) {
            for (int i = 0; i < hd / 2; ++i) {
                const double ang = RopeAngle(c, t, i, drop_scaling);
                double* v = &x[(t * heads + h) * hd];
                const double a = v[i], b = v[i + hd / 2];
                v[i] = a * std::cos(ang) - b * std::sin(ang);
                v[i + hd / 2] = b * std::cos(ang) + a * std::sin(ang);
            }
        }
    }
}

// x [T, n] += bias [n]
inline void AddBiasRef(Matrix& x, const std::vector<float>& bias, int64_t T, int64_t n) {
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t i = 0; i < n; ++i) x[t * n + i] += bias[i];
    }
}

// RMSNorm of every head_dim slice of x [T, heads·hd], scaled by w [hd] (Qwen3's q_norm / k_norm).
inline void HeadNormRef(Matrix& x, const std::vector<float>& w, int64_t T, int heads, int hd, double eps) {
    for (int64_t r = 0; r < T * heads; ++r) {
        double* v = &x[r * hd];
        double ss = 0;
        for (int i = 0; i < hd; ++i) ss += v[i] * v[i];
        const double inv = 1.0 / std::sqrt(ss / hd + eps);
        for (int i = 0; i < hd; ++i) v[i] = v[i] * inv * w[i];
    }
}

// Logits [T, vocab] for one sequence, the whole sequence at once; UniAttn reuse layers apply their anchor's
// probabilities to their own V and add x̃·Wc^T (docs/uniattn.md §2).
inline Matrix ReferenceForward(const ModelConfig& c, const std::vector<NamedTensor>& w,
                               const std::vector<int32_t>& tokens, const ReferenceOptions& opts = {}) {
    const int64_t T = static_cast<int64_t>(tokens.size()), d = c.hidden_size, hd = c.head_dim;
    const int64_t q_dim = c.num_heads * hd, kv_dim = c.num_kv_heads * hd, ff = c.intermediate_size;
    const int n_rep = c.num_heads / c.num_kv_heads;
    // Hugging Face repeat_kv order kv_head(h), or the wrong interleaved order used as a control.
    auto kv_head = [&](int h) { return opts.wrong_gqa_mapping ? h % c.num_kv_heads : h / n_rep; };
    const std::vector<float>& embed = Get(w, "model.embed_tokens.weight");
    Matrix x(static_cast<size_t>(T * d));
    for (int64_t t = 0; t < T; ++t) {
        for (int64_t i = 0; i < d; ++i) x[t * d + i] = embed[tokens[t] * d + i];
    }
    std::vector<double> probs;  // [T, Hq, T] of the latest anchor
    for (int l = 0; l < c.num_layers; ++l) {
        auto W = [&](const std::string& suffix) -> const std::vector<float>& {
            return Get(w, LayerTensorName(l, suffix));
        };
        const Matrix xn = RmsNormRef(x, W("input_layernorm.weight"), T, d, c.rms_norm_eps);
        const bool biases = c.qkv_bias && !opts.drop_biases;
        Matrix v = Linear(xn, W("self_attn.v_proj.weight"), T, d, kv_dim);
        if (biases) AddBiasRef(v, W("self_attn.v_proj.bias"), T, kv_dim);
        if (c.layer_kinds[l] != LayerKind::kReuse) {
            Matrix q = Linear(xn, W("self_attn.q_proj.weight"), T, d, q_dim);
            Matrix k = Linear(xn, W("self_attn.k_proj.weight"), T, d, kv_dim);
            if (biases) {
                AddBiasRef(q, W("self_attn.q_proj.bias"), T, q_dim);
                AddBiasRef(k, W("self_attn.k_proj.bias"), T, kv_dim);
            }
            if (c.qk_norm && !opts.drop_qk_norm) {
                HeadNormRef(q, W("self_attn.q_norm.weight"), T, c.num_heads, static_cast<int>(hd), c.rms_norm_eps);
                HeadNormRef(k, W("self_attn.k_norm.weight"), T, c.num_kv_heads, static_cast<int>(hd), c.rms_norm_eps);
            }
            RopeRef(q, T, c.num_heads, c, opts.drop_rope_scaling);
            RopeRef(k, T, c.num_kv_heads, c, opts.drop_rope_scaling);
            const int64_t window = opts.drop_window ? 0 : c.sliding_window;
            probs.assign(static_cast<size_t>(T * c.num_heads * T), 0.0);
            for (int64_t t = 0; t < T; ++t) {
                const int64_t first = window > 0 ? std::max<int64_t>(0, t - window + 1) : 0;
                for (int h = 0; h < c.num_heads; ++h) {
                    double* p = &probs[(t * c.num_heads + h) * T];
                    double mx = -INFINITY, sum = 0;
                    for (int64_t j = first; j <= t; ++j) {
                        double s = 0;
                        for (int64_t e = 0; e < hd; ++e)
                            s += q[t * q_dim + h * hd + e] * k[j * kv_dim + kv_head(h) * hd + e];
                        p[j] = s / std::sqrt(static_cast<double>(hd));
                        mx = std::max(mx, p[j]);
                    }
                    for (int64_t j = first; j <= t; ++j) sum += (p[j] = std::exp(p[j] - mx));
                    for (int64_t j = first; j <= t; ++j) p[j] /= sum;
                }
            }
        }
        Matrix a(static_cast<size_t>(T * q_dim), 0.0);
        for (int64_t t = 0; t < T; ++t) {
            for (int h = 0; h < c.num_heads; ++h) {
                for (int64_t j = 0; j <= t; ++j) {
                    const double p = probs[(t * c.num_heads + h) * T + j];
                    for (int64_t e = 0; e < hd; ++e)
                        a[t * q_dim + h * hd + e] += p * v[j * kv_dim + kv_head(h) * hd + e];
                }
            }
        }
        Matrix o = Linear(a, W("self_attn.o_proj.weight"), T, q_dim, d);
        if (c.o_bias && !opts.drop_biases) AddBiasRef(o, W("self_attn.o_proj.bias"), T, d);
        for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
        if (c.layer_kinds[l] == LayerKind::kReuse && !opts.zero_compensation) {
            const Matrix comp = Linear(xn, W("v2_proj.weight"), T, d, q_dim);
            for (size_t i = 0; i < x.size(); ++i) x[i] += comp[i];
        }
        const Matrix xn2 = RmsNormRef(x, W("post_attention_layernorm.weight"), T, d, c.rms_norm_eps);
        const Matrix g = Linear(xn2, W("mlp.gate_proj.weight"), T, d, ff);
        const Matrix u = Linear(xn2, W("mlp.up_proj.weight"), T, d, ff);
        Matrix m(g.size());
        for (size_t i = 0; i < m.size(); ++i) m[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
        const Matrix down = Linear(m, W("mlp.down_proj.weight"), T, ff, d);
        for (size_t i = 0; i < x.size(); ++i) x[i] += down[i];
    }
    const Matrix xf = RmsNormRef(x, Get(w, "model.norm.weight"), T, d, c.rms_norm_eps);
    return Linear(xf, Get(w, c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight"), T, d,
                  c.vocab_size);
}

}  // namespace uniattn::testref
