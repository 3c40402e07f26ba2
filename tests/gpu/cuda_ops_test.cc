// Every CUDA op against its CPU twin (the oracle) on fresh random inputs: fp32/fp16/bf16 weights on both
// sides of the MatMul paths (GEMV, hi/lo split, plain 16-bit), fp32/fp16/bf16 KV planes, head_dim
// 128/64 (specialised) and 48/10 (generic), MHA/GQA/MQA, decode contexts long enough for split-K,
// prefill tiles, mixed batches, anchor probabilities and UniAttn reuse, sliding windows in all of them;
// the new families' small ops (bias add, per-head RMSNorm, RoPE from scaled frequency tables). Outputs are
// poisoned with NaN first, so an element the GPU never writes fails. The CPU side always sees fp32 copies of exactly
// the values the GPU holds (16-bit data is rounded before upload), so differences are arithmetic only.
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
#include "uniattn/model_config.h"

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
        case DType::kF8E4M3:
            return 0x1.0p-3;
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
    for (bool exact : {false, true}) {  // CudaOptions::exact_activations (default false)
        CudaBackendOptions options;
        options.exact_activations = exact;
        gpu_ = std::move(CreateCudaBackend(options)).value();
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
                        // 1-2 rows (GEMV), and up to 64 with exact activations (the hi/lo split), keep fp32
                        // activations: fp32 rounding of each term, as the CPU. Otherwise activations are rounded to
                        // the weight dtype: each term may move by one rounding step of that dtype.
                        const bool fp32_terms = wd == DType::kF32 || T <= 2 || (exact && T <= 64);
                        const double rel = fp32_terms ? 1e-5 : Ulp(wd);
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
                                   std::string("MatMul ") + Name(wd) + " T=" + std::to_string(T) + " in=" +
                                       std::to_string(sh.in) + (accumulate ? " acc" : "") + (exact ? " exact" : ""));
                    }
                }
            }
        }
    }
}

// GEMMs on 16-bit activations (3+ rows with exact_activations off, 65+ rows always): NormMatMul and SiluMulMatMul
// write the GEMM's 16-bit input straight from the norm / SwiGLU kernel. That must give exactly the bits of the
// two-op path (fp32 norm or SwiGLU, then MatMul's own rounding of its input), for both 16-bit weight dtypes.
TEST_F(CudaOpsTest, FusedGemmInputsAreBitIdenticalToTwoOps) {
    Rng rng(113);
    const int64_t in = 520, out = 136;
    for (DType wd : {DType::kF16, DType::kBF16}) {
        for (int64_t T : {3, 5, 64, 65, 130}) {
            SCOPED_TRACE(std::string(Name(wd)) + " T=" + std::to_string(T));
            Twin x = Both(RandomVector(rng, T * in, -2.0f, 2.0f), T, in, in);
            Twin g = Both(RandomVector(rng, in, 0.5f, 1.5f), 1, in, in);
            Twin w = Both(RandomVector(rng, out * in), out, in, in, 0, wd);
            Twin w2 = Both(RandomVector(rng, out * in), out, in, in, 0, wd);
            Twin xn = Both(std::vector<float>(T * in, kNaN), T, in, in);
            Twin gu = Both(RandomVector(rng, T * 2 * in, -4.0f, 4.0f), T, 2 * in, 2 * in);
            Twin mlp = Both(std::vector<float>(T * in, kNaN), T, in, in);
            const std::vector<float> y0 = RandomVector(rng, T * out);
            Twin fused = Both(std::vector<float>(T * out, kNaN), T, out, out);
            Twin two = Both(std::vector<float>(T * out, kNaN), T, out, out);
            gpu_->NormMatMul(x.gpu, g.gpu, 1e-5f, w.gpu, fused.gpu, xn.gpu, false);
            gpu_->RmsNorm(x.gpu, g.gpu, 1e-5f, xn.gpu);
            gpu_->MatMul(xn.gpu, w.gpu, two.gpu, false);
            const std::vector<float> a = Fetch(gpu_.get(), fused.gpu, 0), b = Fetch(gpu_.get(), two.gpu, 0);
            EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(float) * a.size()), 0) << "NormMatMul";
            // The fused result is also the CPU's within one rounding step of the weight dtype per term.
            cpu_->RmsNorm(x.cpu, g.cpu, 1e-5f, xn.cpu);
            cpu_->MatMul(xn.cpu, w.cpu, two.cpu, false);
            const std::vector<float> xn_cpu = Fetch(cpu_.get(), xn.cpu, 0);
            std::vector<double> tol(static_cast<size_t>(T * out));
            for (int64_t t = 0; t < T; ++t) {
                for (int64_t o = 0; o < out; ++o) {
                    double mag = 0;
                    for (int64_t i = 0; i < in; ++i) mag += std::abs(xn_cpu[t * in + i] * w.host[o * in + i]);
                    tol[t * out + o] = Ulp(wd) * mag + 1e-30;
                }
            }
            ExpectNear(a, Fetch(cpu_.get(), two.cpu, 0), tol, "NormMatMul vs CPU");

            Twin fused2 = Both(y0, T, out, out), two2 = Both(y0, T, out, out);
            gpu_->SiluMulMatMul(gu.gpu, w2.gpu, fused2.gpu, mlp.gpu, true);
            gpu_->SiluMul(gu.gpu, mlp.gpu);
            gpu_->MatMul(mlp.gpu, w2.gpu, two2.gpu, true);
            const std::vector<float> c = Fetch(gpu_.get(), fused2.gpu, 0), d = Fetch(gpu_.get(), two2.gpu, 0);
            EXPECT_EQ(std::memcmp(c.data(), d.data(), sizeof(float) * c.size()), 0) << "SiluMulMatMul";
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
        options.exact_activations = true;  // batch 5's GEMM on fp32 activations: the tolerance below is fp32's
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

// RmsNorm on each plan of the register row kernels (PlanRowVec in elementwise.cu: one slot a thread up to 4096 wide,
// then 2, 4 and 8 slots of 1024 threads) and on the scalar kernel (a row stride that is not a multiple of 4), to fp32
// and to the 16-bit input of the mma GEMMs, against the CPU; and a row normalised alone equals the same row in a batch.
TEST_F(CudaOpsTest, RmsNormOnEveryRowPlanMatchesCpu) {
    Rng rng(104);
    for (int64_t d : {4096, 6144, 14336, 20480}) {
        for (int64_t pad : {0, 1}) {  // 1: x's row stride d + 1, the scalar kernel
            SCOPED_TRACE("d " + std::to_string(d) + " stride d + " + std::to_string(pad));
            const int64_t T = 3;
            Twin x = Both(RandomVector(rng, T * (d + pad), -3.0f, 3.0f), T, d, d + pad);
            Twin w = Both(RandomVector(rng, d, 0.5f, 1.5f), 1, d, d, 0, DType::kBF16);
            Twin out = Both(std::vector<float>(T * d, kNaN), T, d, d);
            cpu_->RmsNorm(x.cpu, w.cpu, 1e-5f, out.cpu);
            gpu_->RmsNorm(x.gpu, w.gpu, 1e-5f, out.gpu);
            const std::vector<float> all = Fetch(gpu_.get(), out.gpu, 0);
            ExpectNear(all, Fetch(cpu_.get(), out.cpu, 0), 1e-5, "RmsNorm");
            Twin one = Both(std::vector<float>(d, kNaN), 1, d, d);
            gpu_->RmsNorm(Tensor{x.gpu.data, DType::kF32, 1, d, d + pad}, w.gpu, 1e-5f, one.gpu);
            EXPECT_EQ(Fetch(gpu_.get(), one.gpu, 0), std::vector<float>(all.begin(), all.begin() + d))
                << "a row alone against the same row in 3";
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

// x += bias on the views the layer loop passes: the whole fused [q | k | v] rows (Qwen2's q/k/v biases, one
// concatenated bias) and the V columns of a reuse layer's [v | compensation] rows. One fp32 add per element on
// both sides: bit-identical.
TEST_F(CudaOpsTest, AddBiasMatchesCpu) {
    Rng rng(110);
    struct View {
        int64_t rows, cols, ld, col;
    };
    for (const View& vw : {View{1, 640, 640, 0}, View{7, 640, 640, 0}, View{37, 96, 96 + 288, 0}, View{5, 100, 333, 17},
                           View{130, 1536, 1536, 0}}) {
        SCOPED_TRACE("rows " + std::to_string(vw.rows) + " cols " + std::to_string(vw.cols) + " ld " +
                     std::to_string(vw.ld) + " col " + std::to_string(vw.col));
        Twin x = Both(RandomVector(rng, vw.rows * vw.ld, -4.0f, 4.0f), vw.rows, vw.cols, vw.ld, vw.col);
        Twin bias = Both(RandomVector(rng, vw.cols), 1, vw.cols, vw.cols);
        cpu_->AddBias(x.cpu, bias.cpu);
        gpu_->AddBias(x.gpu, bias.gpu);
        // The whole buffer: columns outside the view must be untouched on both sides.
        ExpectNear(Fetch(gpu_.get(), x.gpu, vw.col), Fetch(cpu_.get(), x.cpu, vw.col), 0.0, "AddBias");
    }
}

// Qwen3's per-head q/k RMSNorm on the strided views of the layer loop: q = qkv.Cols(0, Hq·hd) and
// k = qkv.Cols(Hq·hd, Hkv·hd) of fused [q | k | v] rows; V columns must be untouched. head_dim 64 and 128
// (the models'), 48 (generic lanes), 256 (the largest the brief names).
TEST_F(CudaOpsTest, HeadRmsNormMatchesCpu) {
    Rng rng(111);
    for (int hd : {64, 128, 48, 256}) {
        for (int64_t T : {1, 3, 67}) {
            SCOPED_TRACE("head_dim " + std::to_string(hd) + " rows " + std::to_string(T));
            const int hq = 8, hkv = 2;
            const int64_t q_dim = hq * hd, kv_dim = hkv * hd, row = q_dim + 2 * kv_dim;
            Twin qkv = Both(RandomVector(rng, T * row, -3.0f, 3.0f), T, row, row);
            Twin qw = Both(RandomVector(rng, hd, 0.5f, 1.5f), 1, hd, hd);
            Twin kw = Both(RandomVector(rng, hd, 0.5f, 1.5f), 1, hd, hd);
            cpu_->HeadRmsNorm(qkv.cpu.Cols(0, q_dim), hq, hd, qw.cpu, 1e-6f);
            cpu_->HeadRmsNorm(qkv.cpu.Cols(q_dim, kv_dim), hkv, hd, kw.cpu, 1e-6f);
            gpu_->HeadRmsNorm(qkv.gpu.Cols(0, q_dim), hq, hd, qw.gpu, 1e-6f);
            gpu_->HeadRmsNorm(qkv.gpu.Cols(q_dim, kv_dim), hkv, hd, kw.gpu, 1e-6f);
            const std::vector<float> want = Fetch(cpu_.get(), qkv.cpu, 0);
            // The sum of squares over <= 256 elements in another order (a warp tree against the CPU's loop):
            // a few fp32 roundings relative to each output; a wrong head, stride or weight is off by O(1).
            std::vector<double> tol(want.size());
            for (size_t i = 0; i < tol.size(); ++i) tol[i] = 1e-5 * std::abs(want[i]) + 1e-6;
            for (int64_t t = 0; t < T; ++t) {  // the V columns: untouched, bit for bit
                for (int64_t i = q_dim + kv_dim; i < row; ++i) tol[t * row + i] = 0;
            }
            ExpectNear(Fetch(gpu_.get(), qkv.gpu, 0), want, tol, "HeadRmsNorm");
        }
    }
}

// Rope and the fused RopeWriteKv read the model's inverse-frequency table: Llama 3.1's scaled table (the
// config keys of Llama-3.1-8B), linear and dynamic scaling, from ModelConfig::RopeInvFreq as the model loader
// computes it, at positions up to 128k.
TEST_F(CudaOpsTest, RopeScaledTablesMatchCpu) {
    Rng rng(112);
    std::vector<std::pair<std::string, RopeScaling>> scalings;
    RopeScaling llama3;
    llama3.type = RopeType::kLlama3;
    llama3.factor = 8;
    llama3.low_freq_factor = 1;
    llama3.high_freq_factor = 4;
    llama3.original_max_position_embeddings = 8192;
    scalings.emplace_back("llama3", llama3);
    RopeScaling linear;
    linear.type = RopeType::kLinear;
    linear.factor = 4;
    scalings.emplace_back("linear", linear);
    RopeScaling dynamic;
    dynamic.type = RopeType::kDynamic;
    dynamic.factor = 2;
    dynamic.original_max_position_embeddings = 4096;
    scalings.emplace_back("dynamic", dynamic);
    for (const auto& [name, scaling] : scalings) {
        for (int hd : {128, 64}) {
            SCOPED_TRACE(name + " head_dim " + std::to_string(hd));
            ModelConfig config;
            config.head_dim = hd;
            config.rope_theta = 500000.0;
            config.rope_scaling = scaling;
            const std::vector<double> inv_freq = config.RopeInvFreq();
            ASSERT_EQ(inv_freq.size(), static_cast<size_t>(hd / 2));
            const double* cpu_table = UploadTo(cpu_.get(), inv_freq);
            const double* gpu_table = UploadTo(gpu_.get(), inv_freq);
            const int hq = 4, hkv = 2, block = 16;
            const int64_t T = 11, q_dim = hq * hd, kv_dim = hkv * hd, row = q_dim + 2 * kv_dim;
            std::vector<int32_t> pos(T);
            for (int32_t& p : pos) p = rng.Int(131072);
            const int32_t* cpu_pos = UploadTo(cpu_.get(), pos);
            const int32_t* gpu_pos = UploadTo(gpu_.get(), pos);

            Twin x = Both(RandomVector(rng, T * (q_dim + 3)), T, q_dim, q_dim + 3, 1);
            cpu_->Rope(x.cpu, hq, hd, cpu_pos, cpu_table);
            gpu_->Rope(x.gpu, hq, hd, gpu_pos, gpu_table);
            ExpectNear(Fetch(gpu_.get(), x.gpu, 1), Fetch(cpu_.get(), x.cpu, 1), 4e-6, "Rope");

            // The fused prologue with fp32 planes: rotated q in place, rotated k and plain v in the planes.
            const int64_t num_blocks = 1, plane_n = num_blocks * block * kv_dim;
            std::vector<int64_t> slots(T);
            std::iota(slots.begin(), slots.end(), 2);
            Twin qkv = Both(RandomVector(rng, T * row), T, row, row);
            const KvPlane ck{
                UploadTo(cpu_.get(), std::vector<float>(plane_n, kNaN)), DType::kF32, num_blocks, block, hkv, hd};
            const KvPlane cv{
                UploadTo(cpu_.get(), std::vector<float>(plane_n, kNaN)), DType::kF32, num_blocks, block, hkv, hd};
            const KvPlane gk{
                UploadTo(gpu_.get(), std::vector<float>(plane_n, kNaN)), DType::kF32, num_blocks, block, hkv, hd};
            const KvPlane gv{
                UploadTo(gpu_.get(), std::vector<float>(plane_n, kNaN)), DType::kF32, num_blocks, block, hkv, hd};
            cpu_->RopeWriteKv(qkv.cpu.Cols(0, q_dim), qkv.cpu.Cols(q_dim, kv_dim), qkv.cpu.Cols(q_dim + kv_dim, kv_dim),
                              ck, cv, hq, cpu_pos, UploadTo(cpu_.get(), slots), cpu_table);
            gpu_->RopeWriteKv(qkv.gpu.Cols(0, q_dim), qkv.gpu.Cols(q_dim, kv_dim), qkv.gpu.Cols(q_dim + kv_dim, kv_dim),
                              gk, gv, hq, gpu_pos, UploadTo(gpu_.get(), slots), gpu_table);
            std::vector<float> gq = Fetch(gpu_.get(), qkv.gpu, 0), cq = Fetch(cpu_.get(), qkv.cpu, 0);
            for (int64_t t = 0; t < T; ++t) {  // k's contents afterwards are unspecified: compare q only
                for (int64_t i = q_dim; i < row; ++i) gq[t * row + i] = cq[t * row + i] = 0.f;
            }
            ExpectNear(gq, cq, 4e-6, "RopeWriteKv q");
            for (int which = 0; which < 2; ++which) {
                std::vector<float> want = DownloadFrom(cpu_.get(), (which == 0 ? ck : cv).base, plane_n);
                std::vector<float> got = DownloadFrom(gpu_.get(), (which == 0 ? gk : gv).base, plane_n);
                int nan_mismatch = 0;
                for (int64_t i = 0; i < plane_n; ++i) {
                    if (std::isnan(want[i]) || std::isnan(got[i])) {
                        nan_mismatch += std::isnan(want[i]) != std::isnan(got[i]);
                        got[i] = want[i] = 0.f;
                    }
                }
                EXPECT_EQ(nan_mismatch, 0) << "slots written on one side only";
                ExpectNear(got, want, 4e-6, which == 0 ? "K plane" : "V plane");
            }
        }
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
        // Decode, n_rep 7 (Qwen2.5-7B's 28/4: a head group of 7, one spare row) and n_rep 16 (MQA, two groups).
        {14, 2, 128, 16, {700, 33}, {1, 1}},
        {16, 1, 128, 16, {90, 2500}, {1, 1}},
        // MHA prefill over several query blocks and K/V tiles of the tensor-core kernel (64 x 64), one chunk
        // after a cached prefix of 70 tokens, the other from position 0.
        {4, 4, 128, 16, {260, 200}, {260, 130}},
    };
}

// The attention plans the op tests run: up to 4 query heads sharing a decode block's K/V reads, one head per
// decode block, and the tensor-core kernels (16-bit planes with head_dim 64/128: GQA decode and every prefill;
// other cases keep the CUDA-core kernels).
struct AttentionPlanCase {
    int heads_per_block;
    bool tensor_cores;
    int decode_min_chunk;
    const char* name;
    bool staged = false;  // GQA and MHA decode on DecodeStagedKernel (staged_decode_attention)
    // Whether the plan is the default's but for the split size.
    bool Variant() const { return decode_min_chunk != 0; }
    CudaBackendOptions Options() const {
        CudaBackendOptions o;
        o.decode_heads_per_block = heads_per_block;
        o.tensor_core_attention = tensor_cores;
        o.decode_min_chunk = decode_min_chunk;
        o.staged_decode_attention = staged;
        return o;
    }
};
const AttentionPlanCase kAttentionPlans[] = {{0, false, 0, "decode: heads share K/V reads"},
                                             {1, false, 0, "decode: one head per block"},
                                             {0, true, 0, "tensor cores (GQA decode, prefill)"},
                                             {0, true, 64, "tensor cores, decode splits of at least 64 tokens"},
                                             {0, true, 0, "tensor cores, K/V staged in shared memory (decode)", true},
                                             {0, true, 256, "staged, decode splits of at least 256 tokens", true}};

// The step's K/V rounded to the KV dtype, so the CPU side sees exactly the values the GPU holds.
AttnSetup MakeSetup(Rng& rng, const AttnCase& c, DType kv) {
    AttnSetup s = testutil::MakeAttnSetup(rng, c);
    testutil::RoundToDType(kv, s.k.data);
    testutil::RoundToDType(kv, s.v.data);
    return s;
}

// The first position a token at pos attends to under a sliding window (0: none), as backend.h defines it.
int WindowStart(int pos, int window) { return window > 0 ? std::max(0, pos - window + 1) : 0; }

// Sets every K/V slot of a sequence before the earliest window start of its step's tokens to NaN: a kernel
// that reads them (instead of skipping them) poisons its output. Only the GPU gets the poisoned planes.
void PoisonBeforeWindows(AttnSetup& s, int window) {
    if (window <= 0) return;
    const int num_seqs = static_cast<int>(s.context_len.size());
    for (int i = 0; i < num_seqs; ++i) {
        const int first = WindowStart(s.positions[s.query_start[i]], window);
        for (int j = 0; j < first; ++j) {
            for (int h = 0; h < s.k.num_kv_heads; ++h) {
                std::fill_n(s.k.At(s.Slot(i, j), h), s.k.head_dim, kNaN);
                std::fill_n(s.v.At(s.Slot(i, j), h), s.v.head_dim, kNaN);
            }
        }
    }
}

// Probability rows for a reuse layer under a window: RandomProbs' rows with the positions before the token's
// window at 0 and the rest renormalised (what an anchor with that window leaves).
std::vector<float> WindowedProbs(Rng& rng, const AttnSetup& s, int num_heads, int window) {
    std::vector<float> probs = RandomProbs(rng, s, num_heads);
    if (window <= 0) return probs;
    for (int t = 0; t < s.num_tokens; ++t) {
        const int first = WindowStart(s.positions[t], window);
        for (int h = 0; h < num_heads; ++h) {
            float* row = probs.data() + (static_cast<size_t>(t) * num_heads + h) * s.max_context_len;
            double sum = 0;
            for (int j = first; j <= s.positions[t]; ++j) sum += row[j];
            std::fill(row, row + first, 0.0f);
            for (int j = first; j <= s.positions[t]; ++j) row[j] = static_cast<float>(row[j] / sum);
        }
    }
    return probs;
}

class CudaAttentionTest : public CudaOpsTest {
  protected:
    // One attention call on both backends, outputs (and probabilities) compared. Under a window the GPU's
    // planes hold NaN before every sequence's first window, and probabilities before a token's window must
    // be exactly 0.
    void CheckAttention(Rng& rng, const AttnCase& c, DType kv, bool with_probs, int window) {
        AttnSetup s = MakeSetup(rng, c, kv);
        AttnSetup poisoned = s;
        PoisonBeforeWindows(poisoned, window);
        const int64_t width = static_cast<int64_t>(c.num_heads) * c.head_dim;
        const int64_t kv_width = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
        // q: the Q columns of a fused [q | k | v] row; out: a padded view.
        Twin q =
            Both(RandomVector(rng, s.num_tokens * (width + 2 * kv_width)), s.num_tokens, width, width + 2 * kv_width);
        Twin out = Both(std::vector<float>(s.num_tokens * (width + 1), kNaN), s.num_tokens, width, width + 1, 1);
        const size_t probs_size = static_cast<size_t>(s.num_tokens) * c.num_heads * s.max_context_len;
        float* cp = nullptr;
        float* gp = nullptr;
        if (with_probs) {
            cp = static_cast<float*>(UploadTo(cpu_.get(), std::vector<float>(probs_size, kNaN)));
            gp = static_cast<float*>(UploadTo(gpu_.get(), std::vector<float>(probs_size, kNaN)));
        }
        AttentionBatch cb = UploadBatch(cpu_.get(), s), gb = UploadBatch(gpu_.get(), s);
        cb.sliding_window = gb.sliding_window = window;
        cpu_->Attention(q.cpu, UploadPlane(cpu_.get(), s.k, DType::kF32), UploadPlane(cpu_.get(), s.v, DType::kF32), cb,
                        c.num_heads, out.cpu, cp);
        gpu_->Attention(q.gpu, UploadPlane(gpu_.get(), poisoned.k, kv), UploadPlane(gpu_.get(), poisoned.v, kv), gb,
                        c.num_heads, out.gpu, gp);
        // Outputs are convex combinations of values in [-1, 1]; both sides round in fp32 with different
        // summation orders (split-K, tiles).
        std::vector<float> want = Fetch(cpu_.get(), out.cpu, 1), got = Fetch(gpu_.get(), out.gpu, 1);
        for (int64_t t = 0; t < s.num_tokens; ++t) {  // the padding column must stay NaN
            EXPECT_TRUE(std::isnan(got[t * (width + 1)]));
            got[t * (width + 1)] = want[t * (width + 1)] = 0.f;
        }
        ExpectNear(got, want, 2e-5, "Attention out");
        if (!with_probs) return;
        std::vector<float> pw = DownloadFrom(cpu_.get(), cp, probs_size);
        std::vector<float> pg = DownloadFrom(gpu_.get(), gp, probs_size);
        std::vector<double> tol(probs_size, 0.0);
        int nonzero_before_window = 0;
        for (int t = 0; t < s.num_tokens; ++t) {
            const int first = WindowStart(s.positions[t], window);
            for (int h = 0; h < c.num_heads; ++h) {
                const size_t row = (static_cast<size_t>(t) * c.num_heads + h) * s.max_context_len;
                for (int j = 0; j < s.max_context_len; ++j) {
                    if (j < first) {
                        nonzero_before_window += pg[row + j] != 0.f;  // NaN counts too
                    } else if (j <= s.positions[t]) {
                        tol[row + j] = 2e-5 * pw[row + j] + 1e-8;
                    } else {  // past the token's position: never written on either side
                        EXPECT_TRUE(std::isnan(pg[row + j]));
                        pg[row + j] = pw[row + j] = 0.f;
                    }
                }
            }
        }
        EXPECT_EQ(nonzero_before_window, 0) << "probabilities before the window must be 0";
        ExpectNear(pg, pw, tol, "probs");
    }

    // One reuse call on both backends. Under a window the GPU's probabilities and V before a token's window
    // are NaN (the CPU's are 0 and finite): the GPU must not read them.
    void CheckReuse(Rng& rng, const AttnCase& c, DType kv, int window) {
        AttnSetup s = MakeSetup(rng, c, kv);
        AttnSetup poisoned = s;
        PoisonBeforeWindows(poisoned, window);
        const int64_t width = static_cast<int64_t>(c.num_heads) * c.head_dim;
        const std::vector<float> probs = WindowedProbs(rng, s, c.num_heads, window);
        std::vector<float> gpu_probs = probs;
        for (int t = 0; t < s.num_tokens; ++t) {
            for (int h = 0; h < c.num_heads; ++h) {
                float* row = gpu_probs.data() + (static_cast<size_t>(t) * c.num_heads + h) * s.max_context_len;
                std::fill(row, row + WindowStart(s.positions[t], window), kNaN);
            }
        }
        Twin out = Both(std::vector<float>(s.num_tokens * width, kNaN), s.num_tokens, width, width);
        AttentionBatch cb = UploadBatch(cpu_.get(), s), gb = UploadBatch(gpu_.get(), s);
        cb.sliding_window = gb.sliding_window = window;
        cpu_->ReuseAttention(static_cast<float*>(UploadTo(cpu_.get(), probs)),
                             UploadPlane(cpu_.get(), s.v, DType::kF32), cb, c.num_heads, out.cpu);
        gpu_->ReuseAttention(static_cast<float*>(UploadTo(gpu_.get(), gpu_probs)),
                             UploadPlane(gpu_.get(), poisoned.v, kv), gb, c.num_heads, out.gpu);
        ExpectNear(Fetch(gpu_.get(), out.gpu, 0), Fetch(cpu_.get(), out.cpu, 0), 2e-5, "ReuseAttention");
    }
};

TEST_F(CudaAttentionTest, MatchesCpu) {
    Rng rng(103);
    for (const AttentionPlanCase& plan : kAttentionPlans) {
        gpu_ = std::move(CreateCudaBackend(plan.Options())).value();
        SCOPED_TRACE(plan.name);
        for (DType kv : {DType::kF32, DType::kF16, DType::kBF16}) {
            for (const AttnCase& c : AttentionCases()) {
                for (bool with_probs : {false, true}) {
                    SCOPED_TRACE(Describe(c, kv) + (with_probs ? " with probs" : ""));
                    CheckAttention(rng, c, kv, with_probs, 0);
                }
            }
        }
    }
}

TEST_F(CudaAttentionTest, ReuseMatchesCpu) {
    Rng rng(104);
    for (const AttentionPlanCase& plan : kAttentionPlans) {
        gpu_ = std::move(CreateCudaBackend(plan.Options())).value();
        SCOPED_TRACE(plan.name);
        for (DType kv : {DType::kF32, DType::kF16, DType::kBF16}) {
            for (const AttnCase& c : AttentionCases()) {
                SCOPED_TRACE(Describe(c, kv));
                CheckReuse(rng, c, kv, 0);
            }
        }
    }
}

// The staged decode kernel does DecodeMmaKernel's arithmetic in the same order: bit-identical outputs, anchor
// probabilities and reuse outputs, for GQA decode batches whose splits span one, two and several staged tiles
// (partial last tiles, warps past the end), head_dim 128 and 64, fp16 and bf16, default and 256-token splits.
TEST_F(CudaAttentionTest, StagedDecodeIsBitIdenticalToTheRegisterKernel) {
    const std::vector<AttnCase> cases = {{32, 8, 128, 16, {1, 4100, 2, 700, 129}, {1, 1, 1, 1, 1}},
                                         {16, 4, 64, 32, {300, 2500, 65}, {1, 1, 1}},
                                         {14, 2, 128, 16, {33, 1200}, {1, 1}}};
    Rng rng(117);
    for (int min_chunk : {0, 256}) {
        CudaBackendOptions reg, staged;
        reg.decode_min_chunk = staged.decode_min_chunk = min_chunk;
        staged.staged_decode_attention = true;
        std::unique_ptr<Backend> a = std::move(CreateCudaBackend(reg)).value();
        std::unique_ptr<Backend> b = std::move(CreateCudaBackend(staged)).value();
        for (DType kv : {DType::kF16, DType::kBF16}) {
            for (const AttnCase& c : cases) {
                SCOPED_TRACE(Describe(c, kv) + " min chunk " + std::to_string(min_chunk));
                const AttnSetup s = MakeSetup(rng, c, kv);
                const int64_t width = static_cast<int64_t>(c.num_heads) * c.head_dim;
                const std::vector<float> q = RandomVector(rng, s.num_tokens * width);
                const std::vector<float> reuse_p = testutil::RandomProbs(rng, s, c.num_heads);
                const size_t probs_n = static_cast<size_t>(s.num_tokens) * c.num_heads * s.max_context_len;
                struct Out {
                    std::vector<float> out, probs, reuse;
                };
                auto run = [&](Backend* be) {
                    const KvPlane k = UploadPlane(be, s.k, kv), v = UploadPlane(be, s.v, kv);
                    const AttentionBatch batch = UploadBatch(be, s);
                    const Tensor qt = MakeTensor(UploadTo(be, q), DType::kF32, s.num_tokens, width);
                    const Tensor out = MakeTensor(UploadTo(be, std::vector<float>(s.num_tokens * width, kNaN)),
                                                  DType::kF32, s.num_tokens, width);
                    const Tensor reuse = MakeTensor(UploadTo(be, std::vector<float>(s.num_tokens * width, kNaN)),
                                                    DType::kF32, s.num_tokens, width);
                    float* probs = UploadTo(be, std::vector<float>(probs_n, 0.0f));
                    be->Attention(qt, k, v, batch, c.num_heads, out, probs);
                    be->ReuseAttention(UploadTo(be, reuse_p), v, batch, c.num_heads, reuse);
                    return Out{DownloadFrom(be, out.data, s.num_tokens * width), DownloadFrom(be, probs, probs_n),
                               DownloadFrom(be, reuse.data, s.num_tokens * width)};
                };
                const Out want = run(a.get()), got = run(b.get());
                EXPECT_EQ(std::memcmp(got.out.data(), want.out.data(), want.out.size() * sizeof(float)), 0);
                EXPECT_EQ(std::memcmp(got.probs.data(), want.probs.data(), probs_n * sizeof(float)), 0);
                EXPECT_EQ(std::memcmp(got.reuse.data(), want.reuse.data(), want.reuse.size() * sizeof(float)), 0);
                EXPECT_FALSE(std::isnan(got.out[0]));  // written at all
            }
        }
    }
}

// A few small cases on every plan and 16-bit dtype, with and without the anchor's probabilities, and the reuse
// path: what compute-sanitizer's memcheck and racecheck run (the full sweeps above do not finish under racecheck).
// GQA decode on the tensor-core kernel with several splits (and a second sequence, so the splits are merged by the
// combine kernel or the last block), a prefill over two 64-token query tiles after a cached prefix, head_dim 64,
// an MHA decode.
TEST_F(CudaAttentionTest, SmallCasesForSanitizers) {
    const std::vector<AttnCase> cases = {{8, 2, 128, 16, {300, 40}, {1, 1}},
                                         {8, 2, 128, 16, {150}, {90}},
                                         {16, 4, 64, 32, {200}, {1}},
                                         {4, 4, 128, 16, {130}, {1}}};
    Rng rng(113);
    for (const AttentionPlanCase& plan : kAttentionPlans) {
        gpu_ = std::move(CreateCudaBackend(plan.Options())).value();
        SCOPED_TRACE(plan.name);
        for (DType kv : {DType::kF16, DType::kBF16}) {
            for (const AttnCase& c : cases) {
                SCOPED_TRACE(Describe(c, kv));
                for (bool with_probs : {false, true}) CheckAttention(rng, c, kv, with_probs, 0);
                CheckReuse(rng, c, kv, 0);
            }
        }
    }
}

// Sliding windows (Mistral) in every path of AttentionCases(): decode with one split, several splits and more
// than the target number (window 1000 of a 3000/4100-token context: splits of the window only), prefill tiles
// whose rows have different window starts (window 1, 3, 16 inside one 32-row tile), chunked prefill after a
// cached prefix, mixed batches, MHA/GQA/MQA, specialised and generic head_dim; with and without the anchor's
// probabilities, and the reuse layer reading windowed P. Windows larger than a context equal no window.
TEST_F(CudaAttentionTest, SlidingWindowMatchesCpu) {
    Rng rng(109);
    for (const AttentionPlanCase& plan : kAttentionPlans) {
        CudaBackendOptions options = plan.Options();
        for (bool fused_merge : {true, false}) {  // the last split block merges, or the combine kernel
            // The plan with another split size runs once (the longest test of the suite on the device).
            if (plan.Variant() && fused_merge) continue;
            options.fuse_attention_combine = fused_merge;
            gpu_ = std::move(CreateCudaBackend(options)).value();
            SCOPED_TRACE(std::string(plan.name) + (fused_merge ? ", merge in the last block" : ", combine kernel"));
            for (DType kv : {DType::kF32, DType::kF16, DType::kBF16}) {
                for (int window : {1, 3, 16, 100, 1000}) {
                    for (const AttnCase& c : AttentionCases()) {
                        SCOPED_TRACE(Describe(c, kv) + " window " + std::to_string(window));
                        for (bool with_probs : {false, true}) {
                            SCOPED_TRACE(with_probs ? "with probs" : "without probs");
                            CheckAttention(rng, c, kv, with_probs, window);
                        }
                        CheckReuse(rng, c, kv, window);
                    }
                }
            }
        }
    }
}

// A sequence's attention output is bit-identical alone and in a batch (its kernel, its splits and its
// summation order depend on nothing else), with and without a sliding window. Five sequences: the batch's
// decode splits are merged by the combine kernel, each sequence alone by its last split block.
TEST_F(CudaAttentionTest, BatchIsBitIdenticalToEachSequenceAlone) {
    Rng rng(105);
    const AttnCase c{8, 2, 128, 16, {100, 40, 3000, 7, 1500}, {100, 1, 1, 3, 1}};
    for (int plan : {0, 1, 2}) {  // CUDA cores, tensor cores, tensor cores with K/V staged in shared memory
        CudaBackendOptions options;
        options.tensor_core_attention = plan > 0;
        options.staged_decode_attention = plan == 2;
        gpu_ = std::move(CreateCudaBackend(options)).value();
        SCOPED_TRACE(plan == 0 ? "CUDA cores" : (plan == 1 ? "tensor cores" : "tensor cores, staged"));
        for (int window : {0, 100, 1000}) {
            for (bool reuse : {false, true}) {
                SCOPED_TRACE(std::string(reuse ? "reuse" : "attention") + " window " + std::to_string(window));
                const AttnSetup s = MakeSetup(rng, c, DType::kF16);
                const int64_t width = static_cast<int64_t>(c.num_heads) * c.head_dim;
                const KvPlane k = UploadPlane(gpu_.get(), s.k, DType::kF16),
                              v = UploadPlane(gpu_.get(), s.v, DType::kF16);
                Twin q = Both(RandomVector(rng, s.num_tokens * width), s.num_tokens, width, width);
                const std::vector<float> probs = WindowedProbs(rng, s, c.num_heads, window);
                auto run = [&](const AttnSetup& one, const Tensor& qv, const std::vector<float>& p) {
                    Twin out = Both(std::vector<float>(one.num_tokens * width, kNaN), one.num_tokens, width, width);
                    AttentionBatch b = UploadBatch(gpu_.get(), one);
                    b.sliding_window = window;
                    if (reuse) {
                        gpu_->ReuseAttention(static_cast<float*>(UploadTo(gpu_.get(), p)), v, b, c.num_heads, out.gpu);
                    } else {
                        gpu_->Attention(qv, k, v, b, c.num_heads, out.gpu, nullptr);
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
                            const float* row =
                                probs.data() + (static_cast<size_t>(t) * c.num_heads + h) * s.max_context_len;
                            p1.insert(p1.end(), row, row + one.max_context_len);
                        }
                    }
                    const std::vector<float> single = run(one, q.gpu.Rows(begin, end - begin), p1);
                    EXPECT_EQ(std::memcmp(single.data(), batched.data() + begin * width, single.size() * sizeof(float)),
                              0)
                        << "sequence " << i;
                }
            }
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
