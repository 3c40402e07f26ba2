// Every CUDA op against its CPU twin (the oracle) on fresh random inputs: fp32/fp16/bf16 weights on both
// sides of the MatMul paths (GEMV, hi/lo split, plain 16-bit), fp32/fp16/bf16 KV planes, head_dim
// 128/64 (specialised) and 48/10 (generic), MHA/GQA/MQA, decode contexts long enough for split-K,
// prefill tiles, mixed batches, anchor probabilities and UniAttn reuse. Outputs are poisoned with NaN
// first, so an element the GPU never writes fails. The CPU side always sees fp32 copies of exactly the
// values the GPU holds (16-bit data is rounded before upload), so differences are arithmetic only.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "engine/op_cases.h"
#include "engine/test_models.h"

namespace uniattn {
namespace {

using testutil::AttnCase;
using testutil::AttnSetup;
using testutil::kNaN;
using testutil::RandomProbs;
using testutil::RandomVector;
using testutil::Rng;

const char* Name(DType d) { return DTypeName(d); }

// Relative size of one rounding step of a dtype (unit roundoff times two).
double Ulp(DType d) {
    switch (d) {
        case DType::kF32:
            return 0x1.0p-23;
        case DType::kF16:
            return 0x1.0p-10;
        case DType::kBF16:
            return 0x1.0p-7;
    }
    return 0;
}

class CudaOpsTest : public testutil::OpFixture<> {
  protected:
    void SetUp() override {
        auto gpu = CreateCudaBackend(CudaBackendOptions{});
        if (!gpu.ok()) GTEST_SKIP() << "no CUDA device: " << gpu.status().ToString();
        gpu_ = std::move(gpu).value();
        cpu_ = MakeCpuBackend(2);
    }

    // A [rows, ld] fp32 buffer on both backends with the same contents; the view starts at column `col`.
    struct Twin {
        Tensor cpu, gpu;
        std::vector<float> host;
    };
    Twin Both(const std::vector<float>& host, int64_t rows, int64_t cols, int64_t ld, int64_t col = 0,
              DType gpu_dtype = DType::kF32) {
        Twin t;
        t.host = host;
        testutil::RoundToDType(gpu_dtype, t.host);
        auto* c = static_cast<float*>(UploadTo(cpu_.get(), t.host));
        char* g = static_cast<char*>(UploadTo(gpu_.get(), t.host, gpu_dtype));
        t.cpu = Tensor{c + col, DType::kF32, rows, cols, ld};
        t.gpu = Tensor{g + col * DTypeBytes(gpu_dtype), gpu_dtype, rows, cols, ld};
        return t;
    }
    std::vector<float> Fetch(Backend* be, const Tensor& t, int64_t col) {
        const size_t n = static_cast<size_t>(t.rows * t.ld);
        return DownloadFrom(be, static_cast<const char*>(t.data) - col * DTypeBytes(t.dtype), n, t.dtype);
    }

    std::unique_ptr<Backend> cpu_, gpu_;
};

// got vs want elementwise: |got - want| <= tol[i]; NaN fails. Reports the first few misses.
void ExpectNear(const std::vector<float>& got, const std::vector<float>& want, const std::vector<double>& tol,
                const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    int bad = 0;
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        const double err = std::abs(static_cast<double>(got[i]) - want[i]);
        if (!(err <= tol[i])) {
            if (bad++ < 5) ADD_FAILURE() << what << ": [" << i << "] got " << got[i] << " want " << want[i];
        }
        if (std::isfinite(err)) worst = std::max(worst, err / (tol[i] + 1e-30));
    }
    EXPECT_EQ(bad, 0) << what << " (worst error / tolerance " << worst << ")";
}
void ExpectNear(const std::vector<float>& got, const std::vector<float>& want, double abs_tol,
                const std::string& what) {
    ExpectNear(got, want, std::vector<double>(want.size(), abs_tol), what);
}

TEST_F(CudaOpsTest, MatMulEveryPath) {
    Rng rng(101);
    struct Shape {
        int64_t in, out;
    };
    for (DType wd : {DType::kF32, DType::kF16, DType::kBF16}) {
        for (const Shape& sh : {Shape{1024, 96}, Shape{1056, 64}, Shape{37, 29}}) {
            for (int64_t T : {1, 2, 3, 4, 12, 16, 17, 32, 64, 65, 130}) {
                for (bool accumulate : {false, true}) {
                    const bool strided = T % 2 == 1;
                    const int64_t xp = strided ? 3 : 0, yp = strided ? 2 : 0;
                    Twin x = Both(RandomVector(rng, T * (sh.in + xp)), T, sh.in, sh.in + xp, xp);
                    Twin w = Both(RandomVector(rng, sh.out * sh.in), sh.out, sh.in, sh.in, 0, wd);
                    const std::vector<float> y0 = RandomVector(rng, T * (sh.out + yp));
                    Twin y = Both(y0, T, sh.out, sh.out + yp, yp);
                    cpu_->MatMul(x.cpu, w.cpu, y.cpu, accumulate);
                    gpu_->MatMul(x.gpu, w.gpu, y.gpu, accumulate);
                    const std::vector<float> want = Fetch(cpu_.get(), y.cpu, yp);
                    const std::vector<float> got = Fetch(gpu_.get(), y.gpu, yp);
                    // Up to 64 rows the GPU keeps fp32 activations (GEMV or the hi/lo split): fp32 rounding
                    // of each term, as the CPU. Beyond, activations are rounded to the weight dtype: each
                    // term may move by one rounding step of that dtype.
                    const double rel = (wd == DType::kF32 || T <= 64) ? 1e-5 : Ulp(wd);
                    std::vector<double> tol(want.size(), 0.0);
                    for (int64_t t = 0; t < T; ++t) {
                        for (int64_t o = 0; o < sh.out; ++o) {
                            double mag = accumulate ? std::abs(y0[t * (sh.out + yp) + yp + o]) : 0.0;
                            for (int64_t i = 0; i < sh.in; ++i) {
                                mag += std::abs(x.host[t * (sh.in + xp) + xp + i] * w.host[o * sh.in + i]);
                            }
                            tol[t * (sh.out + yp) + yp + o] = rel * mag + 1e-30;
                        }
                    }
                    ExpectNear(got, want, tol,
                               std::string("MatMul ") + Name(wd) + " T=" + std::to_string(T) +
                                   " in=" + std::to_string(sh.in) + (accumulate ? " acc" : ""));
                }
            }
        }
    }
}

// RmsNorm + MatMul and SwiGLU + MatMul as one op, with the GEMV-fused loads (1-2 rows) and without.
// The 1-2 row GEMV paths with their input transforms: unfused (norm / SwiGLU kernels, then the per-warp
// GEMV), fused (the transform staged in shared memory by each block of a persistent grid, or applied in
// each warp's loads when in % 8 != 0), and plain GEMVs through the staged kernel, with 1-8 warps sharing an
// output row (520 inputs = 65 chunks: segments of unequal length). 9000 output rows exceed
// what one grid holds resident, so the loop over rows runs; batch 5 takes the GEMM path.
TEST_F(CudaOpsTest, FusedMatMulsMatchCpu) {
    Rng rng(107);
    // mode 0 unfused; 1 fused (segments per row by shape); 2 also plain GEMVs staged; 3-5: fused and staged
    // with 2, 4 and 8 warps per output row.
    for (int mode = 0; mode < 6; ++mode) {
        CudaBackendOptions options;
        options.fuse_gemv_inputs = mode >= 1;
        options.stage_gemv_input = mode >= 2;
        options.gemv_row_segs = mode >= 3 ? 1 << (mode - 2) : 0;
        gpu_ = std::move(CreateCudaBackend(options)).value();
        for (auto [in, out] : {std::pair<int64_t, int64_t>{520, 136}, {516, 40}, {1040, 9000}}) {
            for (int64_t T : {1, 2, 5}) {
                SCOPED_TRACE("mode " + std::to_string(mode) + " in " + std::to_string(in) + " out " +
                             std::to_string(out) + " T=" + std::to_string(T));
                Twin x = Both(RandomVector(rng, T * in, -2.0f, 2.0f), T, in, in);
                Twin g = Both(RandomVector(rng, in, 0.5f, 1.5f), 1, in, in);
                Twin w = Both(RandomVector(rng, out * in), out, in, in, 0, DType::kF16);
                Twin xn = Both(std::vector<float>(T * in, kNaN), T, in, in);
                Twin y = Both(std::vector<float>(T * out, kNaN), T, out, out);
                cpu_->NormMatMul(x.cpu, g.cpu, 1e-5f, w.cpu, y.cpu, xn.cpu, false);
                gpu_->NormMatMul(x.gpu, g.gpu, 1e-5f, w.gpu, y.gpu, xn.gpu, false);
                // Sums of 520 products of size <= 3: fp32 rounding in either order stays far below 5e-4 (scaled
                // with the length); a wrong norm, gate, row or staged position gives errors of order 1.
                const double tol = 5e-4 * static_cast<double>(in) / 520;
                ExpectNear(Fetch(gpu_.get(), y.gpu, 0), Fetch(cpu_.get(), y.cpu, 0), tol, "NormMatMul");

                Twin gu = Both(RandomVector(rng, T * 2 * in, -4.0f, 4.0f), T, 2 * in, 2 * in);
                Twin mlp = Both(std::vector<float>(T * in, kNaN), T, in, in);
                Twin y2 = Both(RandomVector(rng, T * out), T, out, out);
                cpu_->SiluMulMatMul(gu.cpu, w.cpu, y2.cpu, mlp.cpu, true);
                gpu_->SiluMulMatMul(gu.gpu, w.gpu, y2.gpu, mlp.gpu, true);
                ExpectNear(Fetch(gpu_.get(), y2.gpu, 0), Fetch(cpu_.get(), y2.cpu, 0), tol, "SiluMulMatMul");

                Twin y3 = Both(RandomVector(rng, T * out), T, out, out);
                cpu_->MatMul(x.cpu, w.cpu, y3.cpu, true);
                gpu_->MatMul(x.gpu, w.gpu, y3.gpu, true);
                ExpectNear(Fetch(gpu_.get(), y3.gpu, 0), Fetch(cpu_.get(), y3.cpu, 0), tol, "MatMul");
            }
        }
    }
}

TEST_F(CudaOpsTest, SmallOps) {
    Rng rng(102);
    for (DType wd : {DType::kF32, DType::kF16, DType::kBF16}) {
        SCOPED_TRACE(Name(wd));
        const int64_t d = 288, vocab = 50, T = 7;
        // Embedding from a 16-bit table is an exact conversion.
        Twin table = Both(RandomVector(rng, vocab * d), vocab, d, d, 0, wd);
        std::vector<int32_t> tokens(T);
        for (int32_t& t : tokens) t = rng.Int(static_cast<int>(vocab));
        Twin e = Both(std::vector<float>(T * d, kNaN), T, d, d);
        cpu_->Embedding(UploadTo(cpu_.get(), tokens), T, table.cpu, e.cpu);
        gpu_->Embedding(UploadTo(gpu_.get(), tokens), T, table.gpu, e.gpu);
        ExpectNear(Fetch(gpu_.get(), e.gpu, 0), Fetch(cpu_.get(), e.cpu, 0), 0.0, "Embedding");

        Twin x = Both(RandomVector(rng, T * (d + 4)), T, d, d + 4, 1);
        Twin w = Both(RandomVector(rng, d, 0.5f, 1.5f), 1, d, d, 0, wd);
        Twin out = Both(std::vector<float>(T * d, kNaN), T, d, d);
        cpu_->RmsNorm(x.cpu, w.cpu, 1e-5f, out.cpu);
        gpu_->RmsNorm(x.gpu, w.gpu, 1e-5f, out.gpu);
        ExpectNear(Fetch(gpu_.get(), out.gpu, 0), Fetch(cpu_.get(), out.cpu, 0), 1e-5, "RmsNorm");
    }
    {
        const int64_t T = 5, ff = 333;
        std::vector<float> gu = RandomVector(rng, T * 2 * ff, -8.0f, 8.0f);
        Twin g = Both(gu, T, 2 * ff, 2 * ff);
        Twin o = Both(std::vector<float>(T * ff, kNaN), T, ff, ff);
        cpu_->SiluMul(g.cpu, o.cpu);
        gpu_->SiluMul(g.gpu, o.gpu);
        const std::vector<float> want = Fetch(cpu_.get(), o.cpu, 0);
        std::vector<double> tol(want.size());
        for (size_t i = 0; i < tol.size(); ++i) tol[i] = 1e-6 * std::abs(want[i]) + 1e-7;
        ExpectNear(Fetch(gpu_.get(), o.gpu, 0), want, tol, "SiluMul");

        Twin a = Both(RandomVector(rng, T * 40), T, 30, 40, 5);
        Twin b = Both(RandomVector(rng, T * 30), T, 30, 30);
        cpu_->Add(a.cpu, b.cpu);
        gpu_->Add(a.gpu, b.gpu);
        ExpectNear(Fetch(gpu_.get(), a.gpu, 5), Fetch(cpu_.get(), a.cpu, 5), 0.0, "Add");

        const std::vector<int32_t> rows = {4, 0, 2};
        Twin src = Both(RandomVector(rng, T * 30), T, 30, 30);
        Twin dst = Both(std::vector<float>(3 * 30, kNaN), 3, 30, 30);
        cpu_->GatherRows(src.cpu, rows.data(), 3, dst.cpu);
        gpu_->GatherRows(src.gpu, rows.data(), 3, dst.gpu);
        ExpectNear(Fetch(gpu_.get(), dst.gpu, 0), Fetch(cpu_.get(), dst.cpu, 0), 0.0, "GatherRows");
    }
    for (int hd : {128, 48, 10}) {
        const int heads = 3;
        const int64_t T = 6, width = heads * hd;
        std::vector<int32_t> pos(T);
        for (int32_t& p : pos) p = rng.Int(5000);
        Twin x = Both(RandomVector(rng, T * (width + 7)), T, width, width + 7, 2);
        const std::vector<double> inv_freq = testutil::DefaultInvFreq(500000.0, hd);
        cpu_->Rope(x.cpu, heads, hd, UploadTo(cpu_.get(), pos), UploadTo(cpu_.get(), inv_freq));
        gpu_->Rope(x.gpu, heads, hd, UploadTo(gpu_.get(), pos), UploadTo(gpu_.get(), inv_freq));
        ExpectNear(Fetch(gpu_.get(), x.gpu, 2), Fetch(cpu_.get(), x.cpu, 2), 4e-6,
                   "Rope head_dim " + std::to_string(hd));
    }
}

TEST_F(CudaOpsTest, FillUniformMatchesHostStream) {
    for (DType d : {DType::kF32, DType::kF16, DType::kBF16}) {
        const int64_t n = 100003;
        void* g = UploadTo(gpu_.get(), std::vector<float>(n, kNaN), d);
        void* c = UploadTo(cpu_.get(), std::vector<float>(n, kNaN), d);
        gpu_->FillUniform(g, d, n, -0.25f, 0.75f, 42);
        cpu_->FillUniform(c, d, n, -0.25f, 0.75f, 42);
        // The device may fuse lo + u·(hi - lo) into one FMA: one rounding step of the dtype apart at most.
        ExpectNear(DownloadFrom(gpu_.get(), g, n, d), DownloadFrom(cpu_.get(), c, n, d), Ulp(d), Name(d));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Paged attention

std::string Describe(const AttnCase& c, DType kv) { return std::string(Name(kv)) + " " + testutil::Describe(c); }

std::vector<AttnCase> AttentionCases() {
    return {
        // Decode, MHA head_dim 128: one split, several splits, more than kTargetSplits.
        {32, 32, 128, 16, {17, 600, 3000}, {1, 1, 1}},
        // Decode, GQA n_rep 4 (one block per KV head), context past the largest chunk.
        {32, 8, 128, 16, {1, 4100, 2}, {1, 1, 1}},
        // Decode, GQA n_rep 8 (two head groups per KV head), head_dim 64, block size 32.
        {16, 2, 64, 32, {300, 77}, {1, 1}},
        // Decode and prefill at the stories15M shape (generic head_dim 48).
        {6, 6, 48, 16, {200, 64}, {1, 1}},
        {6, 6, 48, 16, {70, 33}, {70, 5}},
        // Mixed batch: prefill chunks (over several query tiles, with and without a cached prefix) and a
        // decode token, GQA head_dim 128.
        {8, 2, 128, 16, {100, 40, 300}, {100, 1, 45}},
        // MQA prefill after a cached prefix, head_dim 64.
        {4, 1, 64, 32, {130}, {65}},
        // Odd head_dim and block size (generic kernels), mixed lengths.
        {6, 2, 10, 3, {5, 20, 2, 90}, {3, 7, 2, 1}},
    };
}

// The step's K/V rounded to the KV dtype, so the CPU side sees exactly the values the GPU holds.
AttnSetup MakeSetup(Rng& rng, const AttnCase& c, DType kv) {
    AttnSetup s = testutil::MakeAttnSetup(rng, c);
    testutil::RoundToDType(kv, s.k.data);
    testutil::RoundToDType(kv, s.v.data);
    return s;
}

class CudaAttentionTest : public CudaOpsTest {};

TEST_F(CudaAttentionTest, MatchesCpu) {
    Rng rng(103);
    for (int heads_per_block : {0, 1}) {  // GQA decode: shared K/V reads, or one query head per block
        CudaBackendOptions options;
        options.decode_heads_per_block = heads_per_block;
        gpu_ = std::move(CreateCudaBackend(options)).value();
        SCOPED_TRACE("decode heads per block " + std::to_string(heads_per_block));
        for (DType kv : {DType::kF32, DType::kF16, DType::kBF16}) {
            for (const AttnCase& c : AttentionCases()) {
                for (bool with_probs : {false, true}) {
                    SCOPED_TRACE(Describe(c, kv) + (with_probs ? " with probs" : ""));
                    const AttnSetup s = MakeSetup(rng, c, kv);
                    const int64_t width = static_cast<int64_t>(c.num_heads) * c.head_dim;
                    const int64_t kv_width = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
                    // q: the Q columns of a fused [q | k | v] row; out: a padded view.
                    Twin q = Both(RandomVector(rng, s.num_tokens * (width + 2 * kv_width)), s.num_tokens, width,
                                  width + 2 * kv_width);
                    Twin out =
                        Both(std::vector<float>(s.num_tokens * (width + 1), kNaN), s.num_tokens, width, width + 1, 1);
                    const size_t probs_size = static_cast<size_t>(s.num_tokens) * c.num_heads * s.max_context_len;
                    float* cp = nullptr;
                    float* gp = nullptr;
                    if (with_probs) {
                        cp = static_cast<float*>(UploadTo(cpu_.get(), std::vector<float>(probs_size, kNaN)));
                        gp = static_cast<float*>(UploadTo(gpu_.get(), std::vector<float>(probs_size, kNaN)));
                    }
                    cpu_->Attention(q.cpu, UploadPlane(cpu_.get(), s.k, DType::kF32),
                                    UploadPlane(cpu_.get(), s.v, DType::kF32), UploadBatch(cpu_.get(), s), c.num_heads,
                                    out.cpu, cp);
                    gpu_->Attention(q.gpu, UploadPlane(gpu_.get(), s.k, kv), UploadPlane(gpu_.get(), s.v, kv),
                                    UploadBatch(gpu_.get(), s), c.num_heads, out.gpu, gp);
                    // Outputs are convex combinations of values in [-1, 1]; both sides round in fp32 with
                    // different summation orders (split-K, tiles).
                    std::vector<float> want = Fetch(cpu_.get(), out.cpu, 1), got = Fetch(gpu_.get(), out.gpu, 1);
                    for (int64_t t = 0; t < s.num_tokens; ++t) {  // the padding column must stay NaN
                        EXPECT_TRUE(std::isnan(got[t * (width + 1)]));
                        got[t * (width + 1)] = want[t * (width + 1)] = 0.f;
                    }
                    ExpectNear(got, want, 2e-5, "Attention out");
                    if (with_probs) {
                        std::vector<float> pw = DownloadFrom(cpu_.get(), cp, probs_size);
                        std::vector<float> pg = DownloadFrom(gpu_.get(), gp, probs_size);
                        std::vector<double> tol(probs_size, 0.0);
                        for (int t = 0; t < s.num_tokens; ++t) {
                            for (int h = 0; h < c.num_heads; ++h) {
                                const size_t row = (static_cast<size_t>(t) * c.num_heads + h) * s.max_context_len;
                                for (int j = 0; j < s.max_context_len; ++j) {
                                    if (j <= s.positions[t]) {
                                        tol[row + j] = 2e-5 * pw[row + j] + 1e-8;
                                    } else {  // past the token's position: never written on either side
                                        EXPECT_TRUE(std::isnan(pg[row + j]));
                                        pg[row + j] = pw[row + j] = 0.f;
                                    }
                                }
                            }
                        }
                        ExpectNear(pg, pw, tol, "probs");
                    }
                }
            }
        }
    }
}

TEST_F(CudaAttentionTest, ReuseMatchesCpu) {
    Rng rng(104);
    for (int heads_per_block : {0, 1}) {  // GQA decode: shared K/V reads, or one query head per block
        CudaBackendOptions options;
        options.decode_heads_per_block = heads_per_block;
        gpu_ = std::move(CreateCudaBackend(options)).value();
        SCOPED_TRACE("decode heads per block " + std::to_string(heads_per_block));
        for (DType kv : {DType::kF32, DType::kF16, DType::kBF16}) {
            for (const AttnCase& c : AttentionCases()) {
                SCOPED_TRACE(Describe(c, kv));
                const AttnSetup s = MakeSetup(rng, c, kv);
                const int64_t width = static_cast<int64_t>(c.num_heads) * c.head_dim;
                const std::vector<float> probs = RandomProbs(rng, s, c.num_heads);
                Twin out = Both(std::vector<float>(s.num_tokens * width, kNaN), s.num_tokens, width, width);
                cpu_->ReuseAttention(static_cast<float*>(UploadTo(cpu_.get(), probs)),
                                     UploadPlane(cpu_.get(), s.v, DType::kF32), UploadBatch(cpu_.get(), s), c.num_heads,
                                     out.cpu);
                gpu_->ReuseAttention(static_cast<float*>(UploadTo(gpu_.get(), probs)), UploadPlane(gpu_.get(), s.v, kv),
                                     UploadBatch(gpu_.get(), s), c.num_heads, out.gpu);
                ExpectNear(Fetch(gpu_.get(), out.gpu, 0), Fetch(cpu_.get(), out.cpu, 0), 2e-5, "ReuseAttention");
            }
        }
    }
}

// A sequence's attention output is bit-identical alone and in a batch (its kernel, its splits and its
// summation order depend on nothing else).
TEST_F(CudaAttentionTest, BatchIsBitIdenticalToEachSequenceAlone) {
    Rng rng(105);
    const AttnCase c{8, 2, 128, 16, {100, 40, 3000, 7}, {100, 1, 1, 3}};
    for (bool reuse : {false, true}) {
        const AttnSetup s = MakeSetup(rng, c, DType::kF16);
        const int64_t width = static_cast<int64_t>(c.num_heads) * c.head_dim;
        const KvPlane k = UploadPlane(gpu_.get(), s.k, DType::kF16), v = UploadPlane(gpu_.get(), s.v, DType::kF16);
        Twin q = Both(RandomVector(rng, s.num_tokens * width), s.num_tokens, width, width);
        const std::vector<float> probs = RandomProbs(rng, s, c.num_heads);
        auto run = [&](const AttnSetup& one, const Tensor& qv, const std::vector<float>& p) {
            Twin out = Both(std::vector<float>(one.num_tokens * width, kNaN), one.num_tokens, width, width);
            if (reuse) {
                gpu_->ReuseAttention(static_cast<float*>(UploadTo(gpu_.get(), p)), v, UploadBatch(gpu_.get(), one),
                                     c.num_heads, out.gpu);
            } else {
                gpu_->Attention(qv, k, v, UploadBatch(gpu_.get(), one), c.num_heads, out.gpu, nullptr);
            }
            return Fetch(gpu_.get(), out.gpu, 0);
        };
        const std::vector<float> batched = run(s, q.gpu, probs);
        for (size_t i = 0; i < c.context_lens.size(); ++i) {
            const int begin = s.query_start[i], end = s.query_start[i + 1];
            const AttnSetup one = testutil::OneSequence(s, static_cast<int>(i));
            std::vector<float> p1;
            for (int t = begin; t < end; ++t) {
                for (int h = 0; h < c.num_heads; ++h) {
                    const float* row = probs.data() + (static_cast<size_t>(t) * c.num_heads + h) * s.max_context_len;
                    p1.insert(p1.end(), row, row + one.max_context_len);
                }
            }
            const std::vector<float> single = run(one, q.gpu.Rows(begin, end - begin), p1);
            EXPECT_EQ(std::memcmp(single.data(), batched.data() + begin * width, single.size() * sizeof(float)), 0)
                << (reuse ? "reuse " : "attention ") << "sequence " << i;
        }
    }
}

// The fused prologue equals Rope, Rope, WriteKv, WriteKv on the CPU; the planes are in the KV dtype.
TEST_F(CudaAttentionTest, RopeWriteKvMatchesCpu) {
    Rng rng(106);
    for (DType kv : {DType::kF32, DType::kF16, DType::kBF16}) {
        for (int hd : {128, 64, 48}) {
            SCOPED_TRACE(std::string(Name(kv)) + " head_dim " + std::to_string(hd));
            const int hq = 4, hkv = 2, block = 16;
            const int64_t T = 9, q_dim = hq * hd, kv_dim = hkv * hd, row = q_dim + 2 * kv_dim;
            const int64_t num_blocks = 4, plane_n = num_blocks * block * kv_dim;
            std::vector<int32_t> pos(T);
            std::vector<int64_t> slots(T);
            for (int64_t t = 0; t < T; ++t) {
                pos[t] = 1000 + static_cast<int32_t>(t);
                slots[t] = 3 * block + t;  // non-zero block, crossing nothing
            }
            Twin qkv = Both(RandomVector(rng, T * row), T, row, row);
            auto planes = [&](Backend* be, DType dt) {
                return std::pair<KvPlane, KvPlane>{
                    KvPlane{UploadTo(be, std::vector<float>(plane_n, kNaN), dt), dt, num_blocks, block, hkv, hd},
                    KvPlane{UploadTo(be, std::vector<float>(plane_n, kNaN), dt), dt, num_blocks, block, hkv, hd}};
            };
            auto [ck, cv] = planes(cpu_.get(), DType::kF32);
            auto [gk, gv] = planes(gpu_.get(), kv);
            cpu_->RopeWriteKv(qkv.cpu.Cols(0, q_dim), qkv.cpu.Cols(q_dim, kv_dim), qkv.cpu.Cols(q_dim + kv_dim, kv_dim),
                              ck, cv, hq, UploadTo(cpu_.get(), pos), UploadTo(cpu_.get(), slots),
                              UploadTo(cpu_.get(), testutil::DefaultInvFreq(10000.0, hd)));
            gpu_->RopeWriteKv(qkv.gpu.Cols(0, q_dim), qkv.gpu.Cols(q_dim, kv_dim), qkv.gpu.Cols(q_dim + kv_dim, kv_dim),
                              gk, gv, hq, UploadTo(gpu_.get(), pos), UploadTo(gpu_.get(), slots),
                              UploadTo(gpu_.get(), testutil::DefaultInvFreq(10000.0, hd)));
            const std::vector<float> cq = Fetch(cpu_.get(), qkv.cpu, 0), gq = Fetch(gpu_.get(), qkv.gpu, 0);
            std::vector<float> cq_only, gq_only;
            for (int64_t t = 0; t < T; ++t) {
                cq_only.insert(cq_only.end(), cq.begin() + t * row, cq.begin() + t * row + q_dim);
                gq_only.insert(gq_only.end(), gq.begin() + t * row, gq.begin() + t * row + q_dim);
            }
            ExpectNear(gq_only, cq_only, 4e-6, "rotated q");
            for (int which = 0; which < 2; ++which) {
                std::vector<float> want = DownloadFrom(cpu_.get(), (which == 0 ? ck : cv).base, plane_n);
                testutil::RoundToDType(kv, want);
                const std::vector<float> got = DownloadFrom(gpu_.get(), (which == 0 ? gk : gv).base, plane_n, kv);
                std::vector<double> tol(plane_n);
                for (int64_t i = 0; i < plane_n; ++i) {
                    // Written slots: one rounding step of the KV dtype (rotation rounding may tip it); the
                    // rest must stay NaN on both sides.
                    if (std::isnan(want[i])) {
                        EXPECT_TRUE(std::isnan(got[i])) << i;
                        tol[i] = 0;
                    } else {
                        tol[i] = Ulp(kv) * std::abs(want[i]) + 1e-6;
                    }
                }
                std::vector<float> g2 = got, w2 = want;
                for (int64_t i = 0; i < plane_n; ++i) {
                    if (std::isnan(w2[i])) g2[i] = w2[i] = 0.f;
                }
                ExpectNear(g2, w2, tol, which == 0 ? "K plane" : "V plane");
            }
        }
    }
}

}  // namespace
}  // namespace uniattn
