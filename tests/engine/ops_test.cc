// Conformance of every backend op (backend/backend.h) against a naive float64 reference written here, on
// seeded random shapes: odd sizes, strided views (Tensor::Cols), MHA/GQA/MQA, paged KV with shuffled
// non-contiguous block tables, and batches mixing decode tokens with prefill chunks of sequences that
// already have cached tokens. Runs on every backend this build has (ggml's test-backend-ops).
//
// Tolerance: an fp32 result may differ from the float64 one by rounding in every term it sums, so each
// element is compared against kRelTol times the sum of the absolute values of the terms that make it
// (its "magnitude"), not against |reference| alone, which would be ill-conditioned under cancellation.
#include "backend/backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "engine/op_cases.h"
#include "engine/test_models.h"
#ifdef UNIATTN_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace uniattn {
namespace {

using testutil::AttnCase;
using testutil::AttnSetup;
using testutil::Describe;
using testutil::HostPlane;
using testutil::kNaN;
using testutil::MakeAttnSetup;
using testutil::RandomVector;
using testutil::Rng;

constexpr double kRelTol = 1e-5;

// A host image of a 2-D strided buffer [rows, ld] with a view [rows, cols] at column `col`, filled with
// random values; the parts outside the view are canaries that ops must not touch.
struct HostMatrix {
    int64_t rows = 0, cols = 0, ld = 0, col = 0;
    std::vector<float> data;

    HostMatrix(Rng& rng, int64_t rows_, int64_t cols_, int64_t pad_left = 0, int64_t pad_right = 0)
        : rows(rows_), cols(cols_), ld(cols_ + pad_left + pad_right), col(pad_left) {
        data = RandomVector(rng, static_cast<size_t>(rows * ld));
    }
    float& at(int64_t r, int64_t c) { return data[r * ld + col + c]; }
    float at(int64_t r, int64_t c) const { return data[r * ld + col + c]; }
};

class OpsTest : public testutil::OpFixture<::testing::TestWithParam<std::string>> {
  protected:
    void SetUp() override {
        auto backend = MakeBackend(GetParam(), 2);
        if (!backend.ok()) GTEST_SKIP() << "backend " << GetParam() << ": " << backend.status().ToString();
        be_ = std::move(backend).value();
    }

    // Copies host data to a new buffer of the backend under test, kept alive by the fixture.
    template <typename T>
    T* Upload(const std::vector<T>& host) {
        return UploadTo(be_.get(), host);
    }
    std::vector<float> Download(const float* dev, size_t n) { return DownloadFrom(be_.get(), dev, n); }

    // An fp32 activation tensor on the device: the view of `m`.
    Tensor Activation(const HostMatrix& m) {
        float* base = Upload(m.data);
        return Tensor{base + m.col, DType::kF32, m.rows, m.cols, m.ld};
    }
    std::vector<float> Fetch(const Tensor& t, const HostMatrix& m) { return Download(t.f32() - m.col, m.data.size()); }

    // A weight tensor in the backend's weight dtype; `m` is rounded to that dtype in place, so the
    // reference sees exactly the values the backend holds.
    Tensor Weight(HostMatrix& m) {
        const DType dt = be_->WeightDType();
        testutil::RoundToDType(dt, m.data);
        if (dt == DType::kF32) return Activation(m);
        char* base = static_cast<char*>(UploadTo(be_.get(), m.data, dt));
        return Tensor{base + m.col * DTypeBytes(dt), dt, m.rows, m.cols, m.ld};
    }

    std::unique_ptr<Backend> be_;
};

// Checks a fetched strided buffer: inside the view each element against ref within kRelTol·magnitude,
// outside the view bit-identical to the original canaries.
void ExpectMatrixNear(const std::vector<float>& got, const HostMatrix& before, const std::vector<double>& ref,
                      const std::vector<double>& magnitude, const std::string& what) {
    int bad = 0;
    for (int64_t r = 0; r < before.rows; ++r) {
        for (int64_t c = 0; c < before.ld; ++c) {
            const size_t i = static_cast<size_t>(r * before.ld + c);
            const int64_t vc = c - before.col;
            if (vc < 0 || vc >= before.cols) {
                if (std::memcmp(&got[i], &before.data[i], sizeof(float)) != 0 && bad++ < 5) {
                    ADD_FAILURE() << what << ": wrote outside the view at row " << r << " col " << c;
                }
                continue;
            }
            const size_t k = static_cast<size_t>(r * before.cols + vc);
            const double tol = kRelTol * magnitude[k] + 1e-30;
            if (!(std::abs(got[i] - ref[k]) <= tol) && bad++ < 5) {
                ADD_FAILURE() << what << ": [" << r << ", " << vc << "] got " << got[i] << " want " << ref[k]
                              << " (tolerance " << tol << ")";
            }
        }
    }
    EXPECT_EQ(bad, 0) << what;
}

TEST_P(OpsTest, Embedding) {
    Rng rng(1);
    for (int64_t d : {1, 37, 64}) {
        HostMatrix table(rng, 50, d, 0, d == 37 ? 3 : 0);
        HostMatrix out(rng, 17, d, 2, 1);
        std::vector<int32_t> tokens(17);
        for (int32_t& t : tokens) t = rng.Int(50);
        tokens[0] = 0;
        tokens[1] = 49;
        const Tensor tt = Weight(table), to = Activation(out);
        be_->Embedding(Upload(tokens), 17, tt, to);
        std::vector<double> ref, mag;
        for (int t = 0; t < 17; ++t) {
            for (int64_t i = 0; i < d; ++i) {
                ref.push_back(table.at(tokens[t], i));
                mag.push_back(0.0);  // a copy: exact
            }
        }
        ExpectMatrixNear(Fetch(to, out), out, ref, mag, "Embedding d=" + std::to_string(d));
    }
}

TEST_P(OpsTest, RmsNorm) {
    Rng rng(2);
    for (int64_t d : {1, 6, 37, 288}) {
        for (int64_t T : {1, 3, 17}) {
            for (float eps : {1e-5f, 1e-6f}) {
                HostMatrix x(rng, T, d, 1, 2);
                HostMatrix w(rng, 1, d);
                HostMatrix out(rng, T, d, 0, 5);
                const Tensor tx = Activation(x), tw = Weight(w), to = Activation(out);
                be_->RmsNorm(tx, tw, eps, to);
                std::vector<double> ref, mag;
                for (int64_t t = 0; t < T; ++t) {
                    double ss = 0;
                    for (int64_t i = 0; i < d; ++i) ss += static_cast<double>(x.at(t, i)) * x.at(t, i);
                    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
                    for (int64_t i = 0; i < d; ++i) {
                        ref.push_back(x.at(t, i) * inv * w.at(0, i));
                        mag.push_back(std::abs(ref.back()));
                    }
                }
                ExpectMatrixNear(Fetch(to, out), out, ref, mag,
                                 "RmsNorm d=" + std::to_string(d) + " T=" + std::to_string(T));
                // The input is left alone.
                const std::vector<float> x_after = Download(tx.f32() - x.col, x.data.size());
                EXPECT_EQ(std::memcmp(x_after.data(), x.data.data(), x.data.size() * sizeof(float)), 0);
            }
        }
    }
}

// y = x · w^T (+ y), with and without strided views, on both sides of any small-T/large-T split
// (the CPU backend switches to BLAS at 4 rows).
TEST_P(OpsTest, MatMul) {
    Rng rng(3);
    struct Shape {
        int64_t T, in, out;
    };
    for (const Shape& s : {Shape{1, 37, 5}, Shape{3, 37, 29}, Shape{4, 64, 33}, Shape{17, 37, 50}, Shape{17, 1, 1},
                           Shape{5, 288, 97}, Shape{1, 768, 288}}) {
        for (bool strided : {false, true}) {
            for (bool accumulate : {false, true}) {
                const int64_t p = strided ? 1 : 0;
                HostMatrix x(rng, s.T, s.in, 2 * p, 3 * p);
                HostMatrix w(rng, s.out, s.in, p, 4 * p);
                HostMatrix y(rng, s.T, s.out, 5 * p, p);
                const Tensor tx = Activation(x), tw = Weight(w), ty = Activation(y);
                be_->MatMul(tx, tw, ty, accumulate);
                std::vector<double> ref, mag;
                for (int64_t t = 0; t < s.T; ++t) {
                    for (int64_t o = 0; o < s.out; ++o) {
                        double acc = accumulate ? y.at(t, o) : 0.0;
                        double m = std::abs(acc);
                        for (int64_t i = 0; i < s.in; ++i) {
                            acc += static_cast<double>(x.at(t, i)) * w.at(o, i);
                            m += std::abs(static_cast<double>(x.at(t, i)) * w.at(o, i));
                        }
                        ref.push_back(acc);
                        mag.push_back(m);
                    }
                }
                ExpectMatrixNear(Fetch(ty, y), y, ref, mag,
                                 "MatMul T=" + std::to_string(s.T) + " in=" + std::to_string(s.in) +
                                     " out=" + std::to_string(s.out) + (strided ? " strided" : "") +
                                     (accumulate ? " accumulate" : ""));
            }
        }
    }
}

// Hugging Face half-split RoPE: element i pairs with i + head_dim/2, angle pos · inv_freq[i], the table the
// caller gives: theta^(-2i/head_dim) unscaled, and an arbitrary table (a scaled RoPE) that the backend must
// read rather than recompute from a theta. x is a strided view, like the Q and K columns of the fused QKV output.
TEST_P(OpsTest, Rope) {
    Rng rng(4);
    struct Shape {
        int num_heads, head_dim;
        int64_t T;
        double theta;
    };
    for (const Shape& s : {Shape{6, 6, 1, 10000.0}, Shape{2, 10, 3, 10000.0}, Shape{3, 64, 17, 10000.0},
                           Shape{6, 48, 5, 10000.0}, Shape{1, 64, 17, 500000.0}}) {
        for (bool scaled : {false, true}) {
            const int64_t width = static_cast<int64_t>(s.num_heads) * s.head_dim;
            HostMatrix x(rng, s.T, width, 7, 11);
            std::vector<int32_t> positions(s.T);
            for (int32_t& p : positions) p = rng.Int(4096);
            positions[0] = 0;
            if (s.T > 1) positions[1] = 1;
            std::vector<double> inv_freq = testutil::DefaultInvFreq(s.theta, s.head_dim);
            if (scaled) {
                for (double& f : inv_freq) f *= rng.Uniform(0.05f, 1.0f);
            }
            const Tensor tx = Activation(x);
            be_->Rope(tx, s.num_heads, s.head_dim, Upload(positions), Upload(inv_freq));
            std::vector<double> ref(static_cast<size_t>(s.T * width)), mag(ref.size());
            const int half = s.head_dim / 2;
            for (int64_t t = 0; t < s.T; ++t) {
                for (int h = 0; h < s.num_heads; ++h) {
                    for (int i = 0; i < half; ++i) {
                        const double ang = positions[t] * inv_freq[i];
                        const int64_t ia = static_cast<int64_t>(h) * s.head_dim + i, ib = ia + half;
                        const double a = x.at(t, ia), b = x.at(t, ib);
                        ref[t * width + ia] = a * std::cos(ang) - b * std::sin(ang);
                        ref[t * width + ib] = b * std::cos(ang) + a * std::sin(ang);
                        mag[t * width + ia] = mag[t * width + ib] = std::abs(a) + std::abs(b);
                    }
                }
            }
            ExpectMatrixNear(Fetch(tx, x), x, ref, mag,
                             "Rope heads=" + std::to_string(s.num_heads) + " head_dim=" + std::to_string(s.head_dim) +
                                 (scaled ? " scaled table" : ""));
        }
    }
}

// x[t, :] += bias: on a strided view (the fused QKV output, or V columns of a reuse layer's [v | c]).
TEST_P(OpsTest, AddBias) {
    Rng rng(13);
    for (int64_t n : {1, 37, 96}) {
        for (int64_t T : {1, 3, 17}) {
            HostMatrix x(rng, T, n, 3, 2);
            HostMatrix bias(rng, 1, n);
            const Tensor tx = Activation(x);
            be_->AddBias(tx, Activation(bias));
            std::vector<double> ref, mag;
            for (int64_t t = 0; t < T; ++t) {
                for (int64_t i = 0; i < n; ++i) {
                    ref.push_back(static_cast<double>(x.at(t, i)) + bias.at(0, i));
                    mag.push_back(std::abs(x.at(t, i)) + std::abs(bias.at(0, i)));
                }
            }
            ExpectMatrixNear(Fetch(tx, x), x, ref, mag, "AddBias n=" + std::to_string(n) + " T=" + std::to_string(T));
        }
    }
}

// Qwen3's q_norm / k_norm: each head_dim slice of a row normalised by its own RMS and scaled by w, in place,
// on the Q or K columns of a fused row (the other columns are canaries).
TEST_P(OpsTest, HeadRmsNorm) {
    Rng rng(14);
    struct Shape {
        int num_heads, head_dim;
        int64_t T;
    };
    for (const Shape& s : {Shape{1, 6, 1}, Shape{4, 10, 3}, Shape{2, 128, 17}, Shape{8, 64, 5}}) {
        for (float eps : {1e-6f, 1e-5f}) {
            const int64_t width = static_cast<int64_t>(s.num_heads) * s.head_dim;
            HostMatrix x(rng, s.T, width, 5, 9);
            for (float& v : x.data) v *= 4.0f;
            HostMatrix w(rng, 1, s.head_dim);
            const Tensor tx = Activation(x);
            be_->HeadRmsNorm(tx, s.num_heads, s.head_dim, Activation(w), eps);
            std::vector<double> ref(static_cast<size_t>(s.T * width)), mag(ref.size());
            for (int64_t t = 0; t < s.T; ++t) {
                for (int h = 0; h < s.num_heads; ++h) {
                    const int64_t o = static_cast<int64_t>(h) * s.head_dim;
                    double ss = 0;
                    for (int i = 0; i < s.head_dim; ++i) ss += static_cast<double>(x.at(t, o + i)) * x.at(t, o + i);
                    const double inv = 1.0 / std::sqrt(ss / s.head_dim + eps);
                    for (int i = 0; i < s.head_dim; ++i) {
                        ref[t * width + o + i] = x.at(t, o + i) * inv * w.at(0, i);
                        mag[t * width + o + i] = std::abs(ref[t * width + o + i]);
                    }
                }
            }
            ExpectMatrixNear(Fetch(tx, x), x, ref, mag,
                             "HeadRmsNorm heads=" + std::to_string(s.num_heads) +
                                 " head_dim=" + std::to_string(s.head_dim) + " T=" + std::to_string(s.T));
        }
    }
}

TEST_P(OpsTest, WriteKv) {
    Rng rng(5);
    for (int block_size : {1, 3, 16}) {
        HostPlane plane{7, block_size, 2, 10, {}};
        plane.data = RandomVector(rng, static_cast<size_t>(7 * block_size * 2 * 10));
        std::vector<int64_t> all_slots(static_cast<size_t>(7 * block_size));
        std::iota(all_slots.begin(), all_slots.end(), 0);
        for (size_t i = all_slots.size() - 1; i > 0; --i)
            std::swap(all_slots[i], all_slots[rng.Int(static_cast<int>(i + 1))]);
        const int64_t T = std::min<int64_t>(5, static_cast<int64_t>(all_slots.size()));
        const std::vector<int64_t> slots(all_slots.begin(), all_slots.begin() + T);
        // src is the V columns of a fused [q | k | v] row.
        HostMatrix src(rng, T, 20, 13, 0);
        float* dev_plane = Upload(plane.data);
        KvPlane p{dev_plane, DType::kF32, plane.num_blocks, block_size, 2, 10};
        be_->WriteKv(Activation(src), p, Upload(slots));
        const std::vector<float> got = Download(dev_plane, plane.data.size());
        HostPlane want = plane;
        for (int64_t t = 0; t < T; ++t) {
            for (int kvh = 0; kvh < 2; ++kvh) {
                for (int i = 0; i < 10; ++i) want.At(slots[t], kvh)[i] = src.at(t, kvh * 10 + i);
            }
        }
        EXPECT_EQ(std::memcmp(got.data(), want.data.data(), got.size() * sizeof(float)), 0)
            << "WriteKv block_size=" << block_size;
    }
}

class AttentionTest : public OpsTest {
  protected:
    // The batch leaves max_query_len unknown (0): backends must assume the worst.
    AttentionBatch UploadBatch(const AttnSetup& s, int sliding_window = 0) {
        AttentionBatch b = OpsTest::UploadBatch(be_.get(), s);
        b.max_query_len = 0;
        b.sliding_window = sliding_window;
        return b;
    }
    KvPlane UploadPlane(const HostPlane& p) { return OpsTest::UploadPlane(be_.get(), p); }
};

std::vector<AttnCase> AttentionCases() {
    return {
        // MHA, head_dim 10, block size 3: a 1-token prompt, a decode token after 16 cached, a prefill chunk
        // of 5 after 12 cached (crossing block boundaries).
        {4, 4, 10, 3, {1, 17, 17}, {1, 1, 5}},
        // GQA 6/2 (n_rep 3), head_dim 6, block size 1: every token in its own block.
        {6, 2, 6, 1, {3, 9, 4}, {3, 2, 1}},
        // GQA 6/3 (n_rep 2), head_dim 64, block size 16: a whole 17-token prompt, decode, a chunk of 17
        // after 16 cached.
        {6, 3, 64, 16, {17, 1, 33, 40}, {17, 1, 17, 1}},
        // MQA, one sequence, one token, long context.
        {8, 1, 10, 16, {100}, {1}},
        // GQA 6/2, head_dim 64, block size 3, mixed chunk lengths.
        {6, 2, 64, 3, {5, 20, 2}, {3, 7, 2}},
        // The stories15M shape: MHA 6×48, block size 16.
        {6, 6, 48, 16, {30, 64}, {30, 1}},
    };
}

// Sliding windows the attention tests run with: none, a window of 1 (a token sees only itself), and windows
// shorter and longer than some of the cases' contexts.
constexpr int kWindows[] = {0, 1, 5, 16};

// The first position a token at `pos` attends to under `window` (0: no window).
int WindowStart(int pos, int window) { return window > 0 ? std::max(0, pos - window + 1) : 0; }

std::string WindowName(int window) { return window > 0 ? " window " + std::to_string(window) : ""; }

// Reference softmax(q·k/√hd) over positions 0..pos of the token's sequence (pos - window < j under a
// window; p[j] = 0 before it), per query head; the KV head is h / n_rep (Hugging Face repeat_kv order).
std::vector<double> ReferenceProbs(const AttnSetup& s, const HostMatrix& q, int t, int h, int num_heads,
                                   int window = 0) {
    const int n_rep = num_heads / s.k.num_kv_heads;
    const int hd = s.k.head_dim;
    const int n_ctx = s.positions[t] + 1;
    std::vector<double> p(n_ctx, 0.0);
    double mx = -INFINITY;
    const int first = WindowStart(s.positions[t], window);
    for (int j = first; j < n_ctx; ++j) {
        const float* kr = s.k.At(s.Slot(s.seq_of[t], j), h / n_rep);
        double dot = 0;
        for (int e = 0; e < hd; ++e) dot += static_cast<double>(q.at(t, static_cast<int64_t>(h) * hd + e)) * kr[e];
        p[j] = dot / std::sqrt(static_cast<double>(hd));
        mx = std::max(mx, p[j]);
    }
    double sum = 0;
    for (int j = first; j < n_ctx; ++j) sum += (p[j] = std::exp(p[j] - mx));
    for (int j = first; j < n_ctx; ++j) p[j] /= sum;
    return p;
}

TEST_P(AttentionTest, MatchesReference) {
    Rng rng(6);
    for (const AttnCase& c : AttentionCases()) {
        for (const int window : kWindows) {
            for (bool with_probs : {false, true}) {
                SCOPED_TRACE(Describe(c) + WindowName(window) + (with_probs ? " with probs" : ""));
                const AttnSetup s = MakeAttnSetup(rng, c);
                const int64_t width = static_cast<int64_t>(c.num_heads) * c.head_dim;
                const int64_t kv_width = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
                // q is the Q columns of a fused [q | k | v] row; out is a view too.
                HostMatrix q(rng, s.num_tokens, width, 0, 2 * kv_width);
                HostMatrix out(rng, s.num_tokens, width, 3, 1);
                const AttentionBatch b = UploadBatch(s, window);
                const Tensor to = Activation(out);
                float* probs = nullptr;
                const size_t probs_size = static_cast<size_t>(s.num_tokens) * c.num_heads * s.max_context_len;
                if (with_probs) probs = Upload(std::vector<float>(probs_size, kNaN));
                be_->Attention(Activation(q), UploadPlane(s.k), UploadPlane(s.v), b, c.num_heads, to, probs);

                std::vector<double> ref(static_cast<size_t>(s.num_tokens * width)), mag(ref.size());
                std::vector<std::vector<double>> ref_probs;
                const int n_rep = c.num_heads / c.num_kv_heads;
                for (int t = 0; t < s.num_tokens; ++t) {
                    for (int h = 0; h < c.num_heads; ++h) {
                        const std::vector<double> p = ReferenceProbs(s, q, t, h, c.num_heads, window);
                        for (int e = 0; e < c.head_dim; ++e) {
                            double acc = 0, m = 0;
                            for (int j = WindowStart(s.positions[t], window); j < static_cast<int>(p.size()); ++j) {
                                const double vj = s.v.At(s.Slot(s.seq_of[t], j), h / n_rep)[e];
                                acc += p[j] * vj;
                                m += p[j] * std::abs(vj);
                            }
                            ref[t * width + h * c.head_dim + e] = acc;
                            // The probabilities carry fp32 rounding of the q·k sums; scaled by Σ p|v| this stays
                            // within kRelTol for logits of the size these inputs give.
                            mag[t * width + h * c.head_dim + e] = m;
                        }
                        ref_probs.push_back(p);
                    }
                }
                ExpectMatrixNear(Fetch(to, out), out, ref, mag, "Attention");
                if (with_probs) {
                    const std::vector<float> got = Download(probs, probs_size);
                    int bad = 0;
                    for (int t = 0; t < s.num_tokens; ++t) {
                        for (int h = 0; h < c.num_heads; ++h) {
                            const std::vector<double>& p = ref_probs[static_cast<size_t>(t) * c.num_heads + h];
                            const float* row =
                                got.data() + (static_cast<size_t>(t) * c.num_heads + h) * s.max_context_len;
                            for (size_t j = 0; j < p.size(); ++j) {
                                if (!(std::abs(row[j] - p[j]) <= kRelTol * p[j] + 1e-9) && bad++ < 5) {
                                    ADD_FAILURE() << "probs[" << t << ", " << h << ", " << j << "] got " << row[j]
                                                  << " want " << p[j];
                                }
                            }
                        }
                    }
                    EXPECT_EQ(bad, 0);
                }
            }
        }
    }
}

// The same step computed in one batch and one sequence at a time gives the same output: sequences do
// not see each other's blocks, and batching changes nothing.
TEST_P(AttentionTest, BatchEqualsOneSequenceAtATime) {
    Rng rng(7);
    const AttnCase c{6, 2, 10, 3, {7, 25, 1, 12}, {7, 1, 1, 4}};
    for (const int window : kWindows) {
        SCOPED_TRACE(WindowName(window));
        const AttnSetup s = MakeAttnSetup(rng, c);
        const int64_t width = static_cast<int64_t>(c.num_heads) * c.head_dim;
        HostMatrix q(rng, s.num_tokens, width);
        HostMatrix out(rng, s.num_tokens, width);
        const KvPlane k = UploadPlane(s.k), v = UploadPlane(s.v);
        const Tensor tq = Activation(q), to = Activation(out);
        be_->Attention(tq, k, v, UploadBatch(s, window), c.num_heads, to, nullptr);
        const std::vector<float> batched = Fetch(to, out);
        for (size_t i = 0; i < c.context_lens.size(); ++i) {
            const AttnSetup one = testutil::OneSequence(s, static_cast<int>(i));
            const int begin = s.query_start[i], end = s.query_start[i + 1];
            const Tensor q1 = tq.Rows(begin, end - begin);
            HostMatrix o1(rng, end - begin, width);
            const Tensor to1 = Activation(o1);
            be_->Attention(q1, k, v, UploadBatch(one, window), c.num_heads, to1, nullptr);
            const std::vector<float> single = Fetch(to1, o1);
            for (int t = 0; t < end - begin; ++t) {
                for (int64_t e = 0; e < width; ++e) {
                    EXPECT_EQ(single[t * width + e], batched[(begin + t) * width + e]) << "seq " << i << " token " << t;
                }
            }
        }
    }
}

// UniAttn reuse: out[t, h] = Σ_j P[t, h, j] · v[j, h / n_rep], with the anchor's P given. Entries of P
// past each token's position (and, under a sliding window, before it) are NaN and must not be read.
TEST_P(AttentionTest, ReuseAttention) {
    Rng rng(8);
    for (const AttnCase& c : AttentionCases()) {
        for (const int window : kWindows) {
            SCOPED_TRACE(Describe(c) + WindowName(window));
            const AttnSetup s = MakeAttnSetup(rng, c);
            const int64_t width = static_cast<int64_t>(c.num_heads) * c.head_dim;
            std::vector<float> probs = testutil::RandomProbs(rng, s, c.num_heads);
            for (int t = 0; t < s.num_tokens; ++t) {
                for (int h = 0; h < c.num_heads; ++h) {
                    float* row = probs.data() + (static_cast<size_t>(t) * c.num_heads + h) * s.max_context_len;
                    std::fill(row, row + WindowStart(s.positions[t], window), kNaN);
                }
            }
            HostMatrix out(rng, s.num_tokens, width, 2, 5);
            const Tensor to = Activation(out);
            be_->ReuseAttention(Upload(probs), UploadPlane(s.v), UploadBatch(s, window), c.num_heads, to);
            std::vector<double> ref(static_cast<size_t>(s.num_tokens * width)), mag(ref.size());
            const int n_rep = c.num_heads / c.num_kv_heads;
            for (int t = 0; t < s.num_tokens; ++t) {
                for (int h = 0; h < c.num_heads; ++h) {
                    const float* row = probs.data() + (static_cast<size_t>(t) * c.num_heads + h) * s.max_context_len;
                    for (int e = 0; e < c.head_dim; ++e) {
                        double acc = 0, m = 0;
                        for (int j = WindowStart(s.positions[t], window); j <= s.positions[t]; ++j) {
                            const double vj = s.v.At(s.Slot(s.seq_of[t], j), h / n_rep)[e];
                            acc += row[j] * vj;
                            m += std::abs(row[j] * vj);
                        }
                        ref[t * width + h * c.head_dim + e] = acc;
                        mag[t * width + h * c.head_dim + e] = m;
                    }
                }
            }
            ExpectMatrixNear(Fetch(to, out), out, ref, mag, "ReuseAttention");
        }
    }
}

// WriteKv then Attention, as the layer loop does: the chunk's own K/V land in the cache and are seen by
// the chunk's later tokens.
TEST_P(AttentionTest, WriteKvThenAttention) {
    Rng rng(9);
    const AttnCase c{6, 3, 10, 3, {11, 4}, {5, 4}};
    const AttnSetup s = MakeAttnSetup(rng, c);
    const int64_t width = 60, kv_width = 30;
    // The chunk's K and V rows start out only in the fused activation; their cache slots hold NaN.
    HostMatrix qkv(rng, s.num_tokens, width + 2 * kv_width);
    HostPlane k = s.k, v = s.v;
    for (int t = 0; t < s.num_tokens; ++t) {
        for (int h = 0; h < c.num_kv_heads; ++h) {
            for (int e = 0; e < c.head_dim; ++e) {
                qkv.at(t, width + h * c.head_dim + e) = s.k.At(s.slot_mapping[t], h)[e];
                qkv.at(t, width + kv_width + h * c.head_dim + e) = s.v.At(s.slot_mapping[t], h)[e];
                k.At(s.slot_mapping[t], h)[e] = kNaN;
                v.At(s.slot_mapping[t], h)[e] = kNaN;
            }
        }
    }
    const Tensor t_qkv = Activation(qkv);
    const KvPlane kp = UploadPlane(k), vp = UploadPlane(v);
    const AttentionBatch b = UploadBatch(s);
    be_->WriteKv(t_qkv.Cols(width, kv_width), kp, b.slot_mapping);
    be_->WriteKv(t_qkv.Cols(width + kv_width, kv_width), vp, b.slot_mapping);
    HostMatrix out(rng, s.num_tokens, width);
    const Tensor to = Activation(out);
    be_->Attention(t_qkv.Cols(0, width), kp, vp, b, c.num_heads, to, nullptr);

    HostMatrix q(rng, s.num_tokens, width);
    for (int t = 0; t < s.num_tokens; ++t) {
        for (int64_t e = 0; e < width; ++e) q.at(t, e) = qkv.at(t, e);
    }
    const std::vector<float> got = Fetch(to, out);
    for (int t = 0; t < s.num_tokens; ++t) {
        for (int h = 0; h < c.num_heads; ++h) {
            const std::vector<double> p = ReferenceProbs(s, q, t, h, c.num_heads);
            for (int e = 0; e < c.head_dim; ++e) {
                double acc = 0, m = 0;
                for (size_t j = 0; j < p.size(); ++j) {
                    const double vj = s.v.At(s.Slot(s.seq_of[t], static_cast<int>(j)), h / 2)[e];
                    acc += p[j] * vj;
                    m += p[j] * std::abs(vj);
                }
                EXPECT_NEAR(got[t * width + h * c.head_dim + e], acc, kRelTol * m) << t << " " << h << " " << e;
            }
        }
    }
}

TEST_P(OpsTest, SiluMul) {
    Rng rng(10);
    for (int64_t ff : {1, 37, 768}) {
        for (int64_t T : {1, 3, 17}) {
            HostMatrix gate_up(rng, T, 2 * ff, 1, 3);
            for (float& x : gate_up.data) x *= 8.0f;  // reach both saturated ends of silu
            HostMatrix out(rng, T, ff, 0, 2);
            const Tensor to = Activation(out);
            be_->SiluMul(Activation(gate_up), to);
            std::vector<double> ref, mag;
            for (int64_t t = 0; t < T; ++t) {
                for (int64_t i = 0; i < ff; ++i) {
                    const double g = gate_up.at(t, i), u = gate_up.at(t, ff + i);
                    ref.push_back(g / (1.0 + std::exp(-g)) * u);
                    // exp and the division add a few ulps beyond the product's rounding.
                    mag.push_back(4.0 * std::abs(ref.back()));
                }
            }
            ExpectMatrixNear(Fetch(to, out), out, ref, mag, "SiluMul ff=" + std::to_string(ff));
        }
    }
}

TEST_P(OpsTest, Add) {
    Rng rng(11);
    for (int64_t d : {1, 37, 288}) {
        for (int64_t T : {1, 3, 17}) {
            HostMatrix x(rng, T, d, 2, 1);
            HostMatrix y(rng, T, d, 0, 3);
            const Tensor tx = Activation(x);
            be_->Add(tx, Activation(y));
            std::vector<double> ref, mag;
            for (int64_t t = 0; t < T; ++t) {
                for (int64_t i = 0; i < d; ++i) {
                    ref.push_back(static_cast<double>(x.at(t, i)) + y.at(t, i));
                    mag.push_back(std::abs(x.at(t, i)) + std::abs(y.at(t, i)));
                }
            }
            ExpectMatrixNear(Fetch(tx, x), x, ref, mag, "Add d=" + std::to_string(d));
        }
    }
}

TEST_P(OpsTest, GatherRows) {
    Rng rng(12);
    for (int64_t d : {1, 37, 64}) {
        HostMatrix x(rng, 17, d, 1, 2);
        const std::vector<int32_t> rows = {16, 0, 3, 3, 9};
        HostMatrix out(rng, 5, d, 0, 4);
        const Tensor to = Activation(out);
        be_->GatherRows(Activation(x), rows.data(), 5, to);
        std::vector<double> ref, mag;
        for (int32_t r : rows) {
            for (int64_t i = 0; i < d; ++i) {
                ref.push_back(x.at(r, i));
                mag.push_back(0.0);
            }
        }
        ExpectMatrixNear(Fetch(to, out), out, ref, mag, "GatherRows d=" + std::to_string(d));
    }
}

std::vector<std::string> AvailableBackends() {
    std::vector<std::string> names = {"cpu"};
    if (HasBackend("cuda")) names.push_back("cuda");
    return names;
}

INSTANTIATE_TEST_SUITE_P(Backends, OpsTest, ::testing::ValuesIn(AvailableBackends()),
                         [](const auto& info) { return info.param; });
INSTANTIATE_TEST_SUITE_P(Backends, AttentionTest, ::testing::ValuesIn(AvailableBackends()),
                         [](const auto& info) { return info.param; });

#ifdef UNIATTN_HAVE_CUDA
// Option checks come before the device probe, so they hold on machines without a GPU (CI) too.
TEST(CudaBackendOptionsTest, RowSegmentsMustDivideTheBlock) {
    for (int segs : {3, 5, 16, -1}) {
        CudaBackendOptions o;
        o.gemv_row_segs = segs;
        auto be = CreateCudaBackend(o);
        ASSERT_FALSE(be.ok()) << segs;
        EXPECT_EQ(be.status().code(), StatusCode::kInvalidArgument) << be.status().ToString();
        EXPECT_NE(be.status().message().find("gemv_row_segs"), std::string::npos);
    }
}

TEST(CudaBackendOptionsTest, DecodeMinChunkIsAMultipleOf64UpTo2048) {
    for (int mc : {32, 96, 4096, -64}) {
        CudaBackendOptions o;
        o.decode_min_chunk = mc;
        auto be = CreateCudaBackend(o);
        ASSERT_FALSE(be.ok()) << mc;
        EXPECT_EQ(be.status().code(), StatusCode::kInvalidArgument) << be.status().ToString();
        EXPECT_NE(be.status().message().find("decode_min_chunk"), std::string::npos);
    }
}

#endif

}  // namespace
}  // namespace uniattn
