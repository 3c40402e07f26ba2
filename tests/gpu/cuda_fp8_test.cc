// FP8 weights on the CUDA backend (issue 18) against the CPU oracle, which holds the same fp8 values in fp32:
// MatMul, NormMatMul and SiluMulMatMul with e4m3 weights and per-row scales on every path (the GEMV of 1-2 rows,
// per warp and staged, and the widened 16-bit GEMM beyond), and whole random models (MHA, GQA, UniAttn) loaded
// with engine.quantization=fp8 on both backends: the GPU stores e4m3 bytes, the CPU the values they stand for.
#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/kernels.h"
#include "engine/op_cases.h"
#include "engine/test_models.h"
#include "kv/kv_scales.h"
#include "model/model.h"
#include "model/session.h"

namespace uniattn {
namespace {

using testutil::RelL2;
using testutil::Rng;
using testutil::TempDir;

class CudaFp8Test : public testutil::OpFixture<> {
  protected:
    void SetUp() override {
        auto gpu = CreateCudaBackend(CudaBackendOptions{});
        if (!gpu.ok()) GTEST_SKIP() << "no CUDA device: " << gpu.status().ToString();
        cpu_ = MakeCpuBackend(2);
    }
    // y0 [T, out] plus, on `be`: op 0 x · wᵀ (MatMul); 1 RmsNorm(x) · wᵀ with unit norm weights (NormMatMul);
    // 2 (silu(x) · x) · wᵀ, the SwiGLU of [x | x] (SiluMulMatMul). x [T, in] from the host; the result downloaded.
    std::vector<float> RunOp(Backend* be, const Tensor& w, int op, const std::vector<float>& x_host,
                             const std::vector<float>& y0, int64_t T, int64_t in, int64_t out) {
        const Tensor x = MakeTensor(UploadTo(be, x_host), DType::kF32, T, in);
        const Tensor y = MakeTensor(UploadTo(be, y0), DType::kF32, T, out);
        if (op == 0) {
            be->MatMul(x, w, y, true);
        } else if (op == 1) {
            const Tensor g = MakeTensor(UploadTo(be, std::vector<float>(in, 1.0f)), DType::kF32, 1, in);
            const Tensor xn = MakeTensor(UploadTo(be, std::vector<float>(T * in)), DType::kF32, T, in);
            be->NormMatMul(x, g, 1e-5f, w, y, xn, true);
        } else {
            std::vector<float> gu(static_cast<size_t>(2 * T * in));
            for (int64_t t = 0; t < T; ++t) {
                for (int64_t i = 0; i < in; ++i) gu[t * 2 * in + i] = gu[t * 2 * in + in + i] = x_host[t * in + i];
            }
            const Tensor tgu = MakeTensor(UploadTo(be, gu), DType::kF32, T, 2 * in);
            const Tensor mlp = MakeTensor(UploadTo(be, std::vector<float>(T * in)), DType::kF32, T, in);
            be->SiluMulMatMul(tgu, w, y, mlp, true);
        }
        return DownloadFrom(be, y.data, static_cast<size_t>(T * out), DType::kF32);
    }
    std::unique_ptr<Backend> cpu_;
    void CheckFp8KvAttention(const std::vector<testutil::AttnCase>& cases);
};

// got vs want: |got - want| <= tol[i] everywhere; reports the first misses.
void ExpectNear(const std::vector<float>& got, const std::vector<float>& want, const std::vector<double>& tol,
                const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    int bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        const double err = std::abs(static_cast<double>(got[i]) - want[i]);
        if (!(err <= tol[i]) && bad++ < 5)
            ADD_FAILURE() << what << ": [" << i << "] got " << got[i] << " want " << want[i];
    }
    EXPECT_EQ(bad, 0) << what;
}

// One rounding step of a 16-bit type, relative (the bound of an activation rounded to it).
double Ulp16(DType d) { return d == DType::kF16 ? 0x1.0p-10 : 0x1.0p-7; }

// An fp8 linear weight [out, in] with a scale per row: e4m3 bytes, the fp32 values they stand for, the scales.
// Rows have very different magnitudes, so a scale applied to the wrong row shows.
struct Fp8Weight {
    std::vector<uint8_t> bytes;
    std::vector<float> values, scale;
};
Fp8Weight RandomFp8Weight(Rng& rng, int64_t out, int64_t in) {
    Fp8Weight w;
    w.values.resize(static_cast<size_t>(out * in));
    w.bytes.resize(w.values.size());
    w.scale.resize(static_cast<size_t>(out));
    std::vector<float> row(static_cast<size_t>(in));
    for (int64_t o = 0; o < out; ++o) {
        const float mag = std::ldexp(1.0f, rng.Int(9) - 6);
        float amax = 0;
        for (float& v : row) amax = std::max(amax, std::fabs(v = mag * rng.Uniform(-1, 1)));
        w.scale[o] = amax / kFp8E4M3Max;
        for (int64_t i = 0; i < in; ++i) {
            w.bytes[o * in + i] = FloatToFp8E4M3(row[i] / w.scale[o]);
            w.values[o * in + i] = Fp8E4M3ToFloat(w.bytes[o * in + i]) * w.scale[o];
        }
    }
    return w;
}

// What the FP8 tensor-core path does to activations, on the host: per row s = amax / 448, x -> e4m3(x / s) · s.
std::vector<float> QuantizePerRow(const std::vector<float>& x, int64_t rows, int64_t cols, std::vector<float>* scale) {
    std::vector<float> q(x.size());
    scale->assign(static_cast<size_t>(rows), 1.0f);
    for (int64_t r = 0; r < rows; ++r) {
        float amax = 0;
        for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(x[r * cols + c]));
        const float s = amax > 0 ? amax / kFp8E4M3Max : 1.0f;
        (*scale)[r] = s;
        for (int64_t c = 0; c < cols; ++c) q[r * cols + c] = Fp8E4M3ToFloat(FloatToFp8E4M3(x[r * cols + c] / s)) * s;
    }
    return q;
}

TEST_F(CudaFp8Test, Fp8WeightsOnEveryMatMulPath) {
    Rng rng(808);
    struct Shape {
        int64_t in, out;
    };
    // mode 0: plain GEMV; 1: fused norm / SwiGLU GEMV inputs; 2: also the staged plain GEMV.
    for (int mode = 0; mode < 3; ++mode) {
        CudaBackendOptions options;
        options.fp8_tensor_cores = false;  // 3+ rows: the widened 16-bit GEMM (FP8 tensor cores: the next test)
        options.mma_gemm_max_rows = 0;     // the GEMVs and cuBLAS (the mma kernel: MmaDecodeGemms... below)
        options.fuse_gemv_inputs = mode >= 1;
        options.stage_gemv_input = mode >= 2;
        auto gpu = CreateCudaBackend(options);
        ASSERT_TRUE(gpu.ok());
        for (const Shape& sh : {Shape{1024, 96}, Shape{1056, 64}, Shape{37, 29}, Shape{520, 9000}}) {
            const Fp8Weight fw = RandomFp8Weight(rng, sh.out, sh.in);
            const std::vector<float>& values = fw.values;
            const Tensor wc = MakeTensor(UploadTo(cpu_.get(), values), DType::kF32, sh.out, sh.in);
            Tensor wg = MakeTensor(UploadTo(gpu->get(), fw.bytes), DType::kF8E4M3, sh.out, sh.in);
            wg.scale = UploadTo(gpu->get(), fw.scale);
            for (int64_t T : {1, 2, 3, 17, 65}) {
                SCOPED_TRACE("mode " + std::to_string(mode) + " in " + std::to_string(sh.in) + " out " +
                             std::to_string(sh.out) + " T=" + std::to_string(T));
                // 1-2 rows read the bytes with fp32 activations: fp32 rounding of each term, as on the CPU. More
                // rows widen the weights to fp16 (each e4m3 x scale rounded once) and round the activations:
                // two fp16 rounding steps per term.
                const double rel = T <= 2 ? 1e-5 : 2 * 0x1.0p-10;
                const std::vector<float> xh = RandomVector(rng, T * sh.in, -2.0f, 2.0f);
                const std::vector<float> y0 = RandomVector(rng, T * sh.out);
                std::vector<double> tol(static_cast<size_t>(T * sh.out));
                for (int64_t t = 0; t < T; ++t) {
                    for (int64_t o = 0; o < sh.out; ++o) {
                        double mag = std::abs(y0[t * sh.out + o]);
                        for (int64_t i = 0; i < sh.in; ++i) mag += std::abs(xh[t * sh.in + i] * values[o * sh.in + i]);
                        tol[t * sh.out + o] = rel * mag + 1e-30;
                    }
                }
                auto run = [&](Backend* be, const Tensor& w, int op) {
                    return RunOp(be, w, op, xh, y0, T, sh.in, sh.out);
                };
                ExpectNear(run(gpu->get(), wg, 0), run(cpu_.get(), wc, 0), tol, "MatMul");
                // The norm and SwiGLU change magnitudes (normalised rows, silu(x)·x <= x² of |x| <= 2): the same
                // relative bound on 4x the magnitude.
                std::vector<double> tol4 = tol;
                for (double& v : tol4) v *= 4;
                ExpectNear(run(gpu->get(), wg, 1), run(cpu_.get(), wc, 1), tol4, "NormMatMul");
                ExpectNear(run(gpu->get(), wg, 2), run(cpu_.get(), wc, 2), tol4, "SiluMulMatMul");
            }
        }
    }
}

// GEMMs of 3+ rows on FP8 tensor cores (cuBLASLt): activations quantized to e4m3 per token. MatMul equals the CPU
// oracle run on the same quantized activations (host emulation: the same bytes and scales) up to fp32 summation;
// the fused norm / SwiGLU inputs are quantized on the device from values that may differ from the CPU's in the
// last bit, so those are held to the quantization's own bound against the unquantized oracle: each product off
// by at most 2^-4 of itself (round to nearest with 3 mantissa bits), plus 2^-10 · s of |w| for e4m3 subnormals.
TEST_F(CudaFp8Test, Fp8TensorCoreGemmsQuantizeActivationsPerToken) {
    Rng rng(909);
    struct Shape {
        int64_t in, out;
    };
    struct Plan {
        const char* name;
        bool outer;      // scales in cuBLASLt's epilogue, or in our kernel after it
        bool fast;       // fp8_fast_accum
        int candidates;  // fp8_algo_candidates
        int splits;      // fp8_split_k (0: by shape, as the engine runs; the others pin one GEMM to test their path)
    };
    // Fast accumulation and timed candidates run fewer cases (their own paths: the accumulation mode, and a timed
    // choice of algorithm), the K splits fewer too (by shape: 8 parts for 1024 and 4096 inputs at these output
    // widths; in 4: 1056 inputs do not split in 16-multiples, so one GEMM, the fallback; 11008 outputs never split).
    for (const Plan& plan :
         {Plan{"outer scales", true, false, 1, 1}, Plan{"scales after", false, false, 1, 1},
          Plan{"fast accumulation", true, true, 1, 1}, Plan{"4 timed candidates", true, false, 4, 1},
          Plan{"K split by shape", true, false, 1, 0}, Plan{"K split in 4, 2 timed candidates", true, false, 2, 4}}) {
        const bool split = plan.splits != 1;
        const bool few = !split && (plan.fast || plan.candidates > 1);
        CudaBackendOptions options;
        options.fp8_outer_scales = plan.outer;
        options.fp8_fast_accum = plan.fast;
        options.fp8_algo_candidates = plan.candidates;
        options.fp8_split_k = plan.splits;
        options.mma_gemm_max_rows = 0;  // every row count of 3+ on cuBLASLt
        auto gpu = CreateCudaBackend(options);
        ASSERT_TRUE(gpu.ok());
        for (const Shape& sh : {Shape{1024, 96}, Shape{4096, 1024}, Shape{1056, 64}, Shape{512, 11008}}) {
            if ((few && sh.in != 4096) || (split && sh.out > 4096)) continue;
            const Fp8Weight fw = RandomFp8Weight(rng, sh.out, sh.in);
            const Tensor wc = MakeTensor(UploadTo(cpu_.get(), fw.values), DType::kF32, sh.out, sh.in);
            Tensor wg = MakeTensor(UploadTo(gpu->get(), fw.bytes), DType::kF8E4M3, sh.out, sh.in);
            wg.scale = UploadTo(gpu->get(), fw.scale);
            for (int64_t T : {3, 16, 64, 65, 300}) {
                if ((few && T != 16 && T != 300) || (split && T != 3 && T != 65 && T != 300)) continue;
                SCOPED_TRACE(std::string(plan.name) + " in " + std::to_string(sh.in) + " out " +
                             std::to_string(sh.out) + " T=" + std::to_string(T));
                std::vector<float> xh = RandomVector(rng, T * sh.in, -2.0f, 2.0f);
                for (int64_t i = 0; i < sh.in; i += 7) xh[i] *= 50.0f;  // an outlier column: row 0's scale follows it
                const std::vector<float> y0 = RandomVector(rng, T * sh.out);
                // The inputs each op quantizes, as the CPU computes them: x; RmsNorm(x) (unit weights); silu(x)·x.
                std::vector<std::vector<float>> inputs(3, xh);
                for (int64_t t = 0; t < T; ++t) {
                    double ss = 0;
                    for (int64_t i = 0; i < sh.in; ++i)
                        ss += static_cast<double>(xh[t * sh.in + i]) * xh[t * sh.in + i];
                    const double inv = 1.0 / std::sqrt(ss / sh.in + 1e-5);
                    for (int64_t i = 0; i < sh.in; ++i) {
                        const float v = xh[t * sh.in + i];
                        inputs[1][t * sh.in + i] = static_cast<float>(v * inv);
                        inputs[2][t * sh.in + i] = v / (1.0f + std::exp(-v)) * v;
                    }
                }
                auto run = [&](Backend* be, const Tensor& w, int op, const std::vector<float>& x_host) {
                    return RunOp(be, w, op, x_host, y0, T, sh.in, sh.out);
                };
                // MatMul against the oracle on the host-quantized activations.
                std::vector<float> xs;
                const std::vector<float> xq = QuantizePerRow(xh, T, sh.in, &xs);
                std::vector<double> tight(static_cast<size_t>(T * sh.out));
                for (int64_t t = 0; t < T; ++t) {
                    for (int64_t o = 0; o < sh.out; ++o) {
                        double mag = std::abs(y0[t * sh.out + o]);
                        for (int64_t i = 0; i < sh.in; ++i)
                            mag += std::abs(xq[t * sh.in + i] * fw.values[o * sh.in + i]);
                        // Fast accumulation keeps the tensor cores' partial sums in reduced precision (not
                        // promoted to fp32 every few k-steps): a looser bound, to be confirmed on a GPU.
                        tight[t * sh.out + o] = (plan.fast ? 0x1.0p-7 : 0x1.0p-10) * mag + 1e-30;
                    }
                }
                ExpectNear(run(gpu->get(), wg, 0, xh), run(cpu_.get(), wc, 0, xq), tight, "MatMul");
                // Every op against the unquantized oracle, within the quantization bound.
                for (int op = 0; op < 3; ++op) {
                    const std::vector<float>& in = inputs[op];
                    std::vector<float> s;
                    QuantizePerRow(in, T, sh.in, &s);
                    std::vector<double> bound(static_cast<size_t>(T * sh.out));
                    for (int64_t t = 0; t < T; ++t) {
                        for (int64_t o = 0; o < sh.out; ++o) {
                            double prod = 0, wsum = 0;
                            for (int64_t i = 0; i < sh.in; ++i) {
                                prod += std::abs(in[t * sh.in + i] * fw.values[o * sh.in + i]);
                                wsum += std::abs(fw.values[o * sh.in + i]);
                            }
                            bound[t * sh.out + o] =
                                0x1.0p-4 * 1.01 * prod + 0x1.0p-10 * s[t] * wsum +
                                (plan.fast ? 0x1.0p-7 : 0x1.0p-10) * (prod + std::abs(y0[t * sh.out + o]));
                        }
                    }
                    ExpectNear(run(gpu->get(), wg, op, xh), run(cpu_.get(), wc, 0, in), bound,
                               "op " + std::to_string(op) + " within the quantization bound");
                }
            }
        }
    }
}

// FP8 tensor-core GEMMs of norm / SwiGLU inputs: RmsNormFp8 and SiluMulFp8 quantize the rows in the kernel that
// computes them. That must give exactly the bits of the two-op path (the fp32 norm or SwiGLU, then MatMul's
// QuantizeRowsFp8 and the same GEMM), at decode and prefill row counts, for fp16 and bf16 norm weights.
// Widths 512, 6144 and 14336 take one, two and four register slots a thread in the norm and quantizing kernels
// (elementwise.cu, PlanRowVec); x with a row stride of 512 + 1 takes the scalar kernels.
TEST_F(CudaFp8Test, FusedFp8GemmInputsAreBitIdenticalToTwoOps) {
    Rng rng(919);
    const int64_t out = 144;
    CudaBackendOptions options;
    options.mma_gemm_max_rows = 0;  // every row count of 3+ on FP8 tensor cores
    auto gpu_or = CreateCudaBackend(options);
    ASSERT_TRUE(gpu_or.ok());
    Backend* gpu = gpu_or->get();
    struct Width {
        int64_t in, pad;  // pad: x's row stride is in + pad
    };
    for (const Width wd : {Width{512, 0}, Width{512, 1}, Width{6144, 0}, Width{14336, 0}}) {
        const int64_t in = wd.in;
        const Fp8Weight fw = RandomFp8Weight(rng, out, in);
        Tensor w = MakeTensor(UploadTo(gpu, fw.bytes), DType::kF8E4M3, out, in);
        w.scale = UploadTo(gpu, fw.scale);
        for (DType gd : {DType::kF32, DType::kF16, DType::kBF16}) {
            for (int64_t T : {3, 17, 65, 130}) {
                if (in > 512 && (gd != DType::kBF16 || T == 130)) continue;  // the wide rows: fewer cases
                SCOPED_TRACE(std::string("norm weights ") + DTypeName(gd) + " T=" + std::to_string(T) + " in " +
                             std::to_string(in) + " stride in + " + std::to_string(wd.pad));
                Tensor x =
                    MakeTensor(UploadTo(gpu, RandomVector(rng, T * (in + wd.pad), -2.0f, 2.0f)), DType::kF32, T, in);
                x.ld = in + wd.pad;
                std::vector<float> gh = RandomVector(rng, in, 0.5f, 1.5f);
                for (float& v : gh) {
                    if (gd == DType::kF16) v = HalfToFloat(FloatToHalf(v));
                    if (gd == DType::kBF16) v = BF16ToFloat(FloatToBF16(v));
                }
                const Tensor g = MakeTensor(UploadTo(gpu, gh, gd), gd, 1, in);
                const Tensor xn = MakeTensor(UploadTo(gpu, std::vector<float>(T * in)), DType::kF32, T, in);
                const Tensor fused = MakeTensor(UploadTo(gpu, std::vector<float>(T * out)), DType::kF32, T, out);
                const Tensor two = MakeTensor(UploadTo(gpu, std::vector<float>(T * out)), DType::kF32, T, out);
                gpu->NormMatMul(x, g, 1e-5f, w, fused, xn, false);
                gpu->RmsNorm(x, g, 1e-5f, xn);
                gpu->MatMul(xn, w, two, false);
                EXPECT_EQ(DownloadFrom(gpu, fused.data, T * out), DownloadFrom(gpu, two.data, T * out)) << "NormMatMul";

                const std::vector<float> y0 = RandomVector(rng, T * out);
                const Tensor gu =
                    MakeTensor(UploadTo(gpu, RandomVector(rng, T * 2 * in, -4.0f, 4.0f)), DType::kF32, T, 2 * in);
                const Tensor mlp = MakeTensor(UploadTo(gpu, std::vector<float>(T * in)), DType::kF32, T, in);
                const Tensor fused2 = MakeTensor(UploadTo(gpu, y0), DType::kF32, T, out);
                const Tensor two2 = MakeTensor(UploadTo(gpu, y0), DType::kF32, T, out);
                gpu->SiluMulMatMul(gu, w, fused2, mlp, true);
                gpu->SiluMul(gu, mlp);
                gpu->MatMul(mlp, w, two2, true);
                EXPECT_EQ(DownloadFrom(gpu, fused2.data, T * out), DownloadFrom(gpu, two2.data, T * out))
                    << "SiluMulMatMul";
            }
        }
    }
}

// The engine's own mma.sync GEMM for 1..64 rows (mma_gemm_max_rows, gemm_rows.cu): 16-bit weights, and fp8 weights
// widened in registers under f16 or bf16 activations (the model's 16-bit type). Against the CPU oracle on the same
// weight values: each term may move by one rounding step of the activation dtype (the products and the widening
// are exact), 4x the magnitude for the norm / SwiGLU inputs as above. Shapes: one whose input dimension is split over
// blocks (4096: partial sums added by the last block of each tile), a tail tile (300 channels), and one the kernel
// does not take (in 520: the GEMVs and cuBLAS on the same call path). Rows 1..64 of one shape are batch-invariant bit
// for bit (a row alone, in 3 rows, in 17, in 64), and a second run gives the same bits.
TEST_F(CudaFp8Test, MmaDecodeGemmsMatchTheCpuAndAreBatchInvariant) {
    Rng rng(909);
    struct Shape {
        int64_t in, out;
    };
    struct Case {
        DType w, act;  // act: the activations' 16-bit type (CudaBackendOptions::weight_dtype for fp8 weights)
    };
    for (const Case& c : {Case{DType::kF16, DType::kF16}, Case{DType::kBF16, DType::kBF16},
                          Case{DType::kF8E4M3, DType::kF16}, Case{DType::kF8E4M3, DType::kBF16}}) {
        CudaBackendOptions options;
        options.mma_gemm_max_rows = 64;
        options.weight_dtype = c.act;
        auto gpu_or = CreateCudaBackend(options);
        ASSERT_TRUE(gpu_or.ok());
        Backend* gpu = gpu_or->get();
        for (const Shape& sh : {Shape{1024, 96}, Shape{4096, 256}, Shape{512, 300}, Shape{520, 64}}) {
            const bool mma = sh.in % 256 == 0;
            std::vector<float> values;
            Tensor wg;
            if (c.w == DType::kF8E4M3) {
                const Fp8Weight fw = RandomFp8Weight(rng, sh.out, sh.in);
                values = fw.values;
                wg = MakeTensor(UploadTo(gpu, fw.bytes), DType::kF8E4M3, sh.out, sh.in);
                wg.scale = UploadTo(gpu, fw.scale);
            } else {
                values = RandomVector(rng, sh.out * sh.in, -0.5f, 0.5f);
                for (float& v : values)
                    v = c.w == DType::kF16 ? HalfToFloat(FloatToHalf(v)) : BF16ToFloat(FloatToBF16(v));
                wg = MakeTensor(UploadTo(gpu, values, c.w), c.w, sh.out, sh.in);
            }
            const Tensor wc = MakeTensor(UploadTo(cpu_.get(), values), DType::kF32, sh.out, sh.in);
            const std::vector<float> x64 = RandomVector(rng, 64 * sh.in, -2.0f, 2.0f);
            const std::vector<float> y64 = RandomVector(rng, 64 * sh.out);
            std::vector<float> first[3];  // each op's result at 64 rows
            for (int64_t T : {64, 1, 2, 3, 5, 8, 9, 16, 17, 33}) {
                SCOPED_TRACE(std::string(DTypeName(c.w)) + " act " + DTypeName(c.act) + " in " + std::to_string(sh.in) +
                             " out " + std::to_string(sh.out) + " T=" + std::to_string(T));
                const std::vector<float> xh(x64.begin(), x64.begin() + T * sh.in);
                const std::vector<float> y0(y64.begin(), y64.begin() + T * sh.out);
                std::vector<double> tol(static_cast<size_t>(T * sh.out));
                for (int64_t t = 0; t < T; ++t) {
                    for (int64_t o = 0; o < sh.out; ++o) {
                        double mag = std::abs(y0[t * sh.out + o]);
                        for (int64_t i = 0; i < sh.in; ++i) mag += std::abs(xh[t * sh.in + i] * values[o * sh.in + i]);
                        tol[t * sh.out + o] = Ulp16(c.act) * mag + 1e-30;
                    }
                }
                for (int op = 0; op < 3; ++op) {
                    const char* what = op == 0 ? "MatMul" : (op == 1 ? "NormMatMul" : "SiluMulMatMul");
                    const std::vector<float> got = RunOp(gpu, wg, op, xh, y0, T, sh.in, sh.out);
                    std::vector<double> t_op = tol;
                    if (op > 0) {
                        for (double& v : t_op) v *= 4;
                    }
                    ExpectNear(got, RunOp(cpu_.get(), wc, op, xh, y0, T, sh.in, sh.out), t_op, what);
                    if (!mma) continue;
                    if (T == 64) {
                        first[op] = got;
                        EXPECT_EQ(RunOp(gpu, wg, op, xh, y0, T, sh.in, sh.out), got) << what << ": a second run";
                    } else {
                        const std::vector<float> head(first[op].begin(), first[op].begin() + T * sh.out);
                        EXPECT_EQ(got, head) << what << ": rows of a " << T << "-row batch against the same rows of 64";
                    }
                }
            }
        }
    }
}

// The mma GEMM with its input op fused (fuse_mma_gemm_inputs: up to 8 rows, the norm up to 2): the fp32 rows
// become the 16-bit values RmsNorm16 / SiluMul16 / SplitHiLo would have written as they are staged, and 1/rms is
// summed in the norm kernel's order, so the results must be the two-launch path's bits exactly. Widths 256, 4096 and
// 6144 are norm plans of 2 and 32 virtual warps of one slot and of two slots (PlanRowVec); 4096 inputs split over
// blocks; x with a row stride of in + 4 (fused) and in + 1 (unaligned: both backends run the separate kernels).
TEST_F(CudaFp8Test, FusedMmaGemmInputsAreBitIdenticalToTheSeparateKernels) {
    Rng rng(929);
    const int64_t out = 384;
    for (DType act : {DType::kF16, DType::kBF16}) {
        std::unique_ptr<Backend> be[2];  // fused (the default), separate kernels
        for (int i = 0; i < 2; ++i) {
            CudaBackendOptions options;
            options.mma_gemm_max_rows = 16;
            options.weight_dtype = act;
            options.fuse_mma_gemm_inputs = i == 0;
            auto r = CreateCudaBackend(options);
            ASSERT_TRUE(r.ok());
            be[i] = std::move(r).value();
        }
        for (DType wd : {DType::kF8E4M3, act}) {
            for (const int64_t in : {256, 4096, 6144}) {
                const Fp8Weight fw = RandomFp8Weight(rng, out, in);
                std::vector<float> w16 = RandomVector(rng, out * in, -0.5f, 0.5f);
                const std::vector<float> nw = RandomVector(rng, in, 0.5f, 1.5f);
                for (int64_t pad : {4, 1}) {
                    for (int64_t T : {1, 2, 3, 8, 9}) {
                        SCOPED_TRACE(std::string("act ") + DTypeName(act) + " weights " + DTypeName(wd) + " in " +
                                     std::to_string(in) + " stride in + " + std::to_string(pad) +
                                     " T=" + std::to_string(T));
                        const std::vector<float> xh = RandomVector(rng, T * 2 * (in + pad), -3.0f, 3.0f);
                        const std::vector<float> y0 = RandomVector(rng, T * out);
                        std::vector<float> got[2][3];
                        for (int i = 0; i < 2; ++i) {
                            Backend* g = be[i].get();
                            Tensor w;
                            if (wd == DType::kF8E4M3) {
                                w = MakeTensor(UploadTo(g, fw.bytes), DType::kF8E4M3, out, in);
                                w.scale = UploadTo(g, fw.scale);
                            } else {
                                w = MakeTensor(UploadTo(g, w16, wd), wd, out, in);
                            }
                            Tensor x = MakeTensor(UploadTo(g, xh), DType::kF32, T, in);
                            x.ld = in + pad;
                            Tensor gu = MakeTensor(x.data, DType::kF32, T, 2 * in);
                            gu.ld = 2 * (in + pad);
                            const Tensor norm = MakeTensor(UploadTo(g, nw), DType::kF32, 1, in);
                            const Tensor scratch =
                                MakeTensor(UploadTo(g, std::vector<float>(T * in)), DType::kF32, T, in);
                            for (int op = 0; op < 3; ++op) {
                                if (i == 0) {  // the cases meant to fuse do reach the fused kernel
                                    const cuda::RowGemmInputOp kop[3] = {cuda::RowGemmInputOp::kNone,
                                                                         cuda::RowGemmInputOp::kNorm,
                                                                         cuda::RowGemmInputOp::kSiluMul};
                                    const int64_t max_rows =
                                        op == 1 ? cuda::kRowGemmFusedNormMaxRows : cuda::kRowGemmFusedMaxRows;
                                    const Tensor& xin = op == 2 ? gu : x;
                                    EXPECT_EQ(cuda::RowGemmFusedSupports(kop[op], static_cast<int>(T), xin.f32(),
                                                                         xin.ld, in, op == 1 ? norm.f32() : nullptr),
                                              pad == 4 && T <= max_rows)
                                        << "op " << op;
                                }
                                const Tensor y = MakeTensor(UploadTo(g, y0), DType::kF32, T, out);
                                if (op == 0) g->MatMul(x, w, y, true);
                                if (op == 1) g->NormMatMul(x, norm, 1e-5f, w, y, scratch, true);
                                if (op == 2) g->SiluMulMatMul(gu, w, y, scratch, true);
                                got[i][op] = DownloadFrom(g, y.data, static_cast<size_t>(T * out), DType::kF32);
                            }
                        }
                        EXPECT_EQ(got[0][0], got[1][0]) << "MatMul";
                        EXPECT_EQ(got[0][1], got[1][1]) << "NormMatMul";
                        EXPECT_EQ(got[0][2], got[1][2]) << "SiluMulMatMul";
                        EXPECT_NE(got[0][1], got[0][0]) << "the norm changed nothing";
                    }
                }
            }
        }
    }
}

// Every e4m3 code (the NaN pair aside) read by the GEMVs, per warp and staged: a one-hot input row picks one
// weight, so y is that code's value exactly (scale 1).
TEST_F(CudaFp8Test, GemvsReadEveryCodeExactly) {
    std::vector<uint8_t> codes(256);
    for (int c = 0; c < 256; ++c) codes[c] = (c & 0x7F) == 0x7F ? 0 : static_cast<uint8_t>(c);
    for (bool staged : {false, true}) {
        CudaBackendOptions options;
        options.stage_gemv_input = staged;
        options.mma_gemm_max_rows = 0;  // the GEMVs
        auto gpu = CreateCudaBackend(options);
        ASSERT_TRUE(gpu.ok());
        // 32 output rows, row o holding every code rotated by o: out 32 x in 256.
        std::vector<uint8_t> bytes(32 * 256);
        for (int o = 0; o < 32; ++o) {
            for (int i = 0; i < 256; ++i) bytes[o * 256 + i] = codes[(i + o) % 256];
        }
        Tensor w = MakeTensor(UploadTo(gpu->get(), bytes), DType::kF8E4M3, 32, 256);
        w.scale = UploadTo(gpu->get(), std::vector<float>(32, 1.0f));
        for (int j = 0; j < 256; ++j) {
            std::vector<float> x(256, 0.0f);
            x[j] = 1.0f;
            const Tensor xt = MakeTensor(UploadTo(gpu->get(), x), DType::kF32, 1, 256);
            const Tensor y = MakeTensor(UploadTo(gpu->get(), std::vector<float>(32)), DType::kF32, 1, 32);
            (*gpu)->MatMul(xt, w, y, false);
            const std::vector<float> got = DownloadFrom(gpu->get(), y.data, 32, DType::kF32);
            for (int o = 0; o < 32; ++o) {
                const uint8_t code = codes[(j + o) % 256];
                ASSERT_EQ(got[o], Fp8E4M3ToFloat(code))
                    << "code 0x" << std::hex << int{code} << (staged ? " staged" : "");
            }
        }
    }
}

// The whole-model cases of these tests: MHA, GQA and UniAttn (GQA with reuse layers), small, fp16 files.
struct ModelCase {
    std::string name;
    testutil::RandomModelOptions o;
};
std::vector<ModelCase> ModelCases() {
    std::vector<ModelCase> cases(3);
    cases[0].name = "mha";
    cases[0].o.num_heads = cases[0].o.num_kv_heads = 4;
    cases[0].o.hidden_size = 256;
    cases[1].name = "gqa";
    cases[1].o.num_heads = 8;
    cases[1].o.num_kv_heads = 2;
    cases[1].o.hidden_size = 512;
    cases[2].name = "uniattn";
    cases[2].o = cases[1].o;
    cases[2].o.num_layers = 4;
    cases[2].o.has_grouping = true;
    cases[2].o.grouping_idx = 2;
    cases[2].o.grouping_end_idx = 4;
    for (ModelCase& c : cases) {
        c.o.vocab_size = 300;
        c.o.intermediate_size = 2 * c.o.hidden_size + 64;
        c.o.max_position_embeddings = 256;
        c.o.dtype = DType::kF16;
    }
    return cases;
}

TEST_F(CudaFp8Test, RandomModelsQuantizedAtLoadMatchTheCpuOracle) {
    for (const ModelCase& c : ModelCases()) {
        SCOPED_TRACE(c.name);
        TempDir tmp;
        ASSERT_TRUE(testutil::WriteRandomModel(tmp.path(), c.o).ok());
        LoadOptions lo;
        lo.quantize_fp8 = true;
        auto cm = Model::Load(tmp.path(), cpu_.get(), false, lo);
        ASSERT_TRUE(cm.ok()) << cm.status().ToString();
        // The oracle of the FP8 tensor-core path: the CPU rounding fp8 matmuls' activations per token as well.
        auto cpu_a8 = MakeCpuBackend(2, true);
        auto cm_a8 = Model::Load(tmp.path(), cpu_a8.get(), false, lo);
        ASSERT_TRUE(cm_a8.ok()) << cm_a8.status().ToString();
        for (bool tensor_cores : {false, true}) {
            SCOPED_TRACE(tensor_cores ? "fp8 tensor cores" : "widened weights");
            CudaBackendOptions go;
            go.kv_dtype = DType::kF32;  // the KV cache exact: what is compared is the fp8 weights' arithmetic
            go.fp8_tensor_cores = tensor_cores;
            go.mma_gemm_max_rows = 0;  // decode rows on the fp32-activation GEMVs, as the oracles
            auto gpu = CreateCudaBackend(go);
            ASSERT_TRUE(gpu.ok());
            auto gm = Model::Load(tmp.path(), gpu->get(), false, lo);
            ASSERT_TRUE(gm.ok()) << gm.status().ToString();
            EXPECT_EQ((*gm)->weights.num_fp8_stored, (*gm)->weights.num_fp8_linear);
            EXPECT_GT((*gm)->weights.num_fp8_stored, 0);
            EXPECT_LT((*gm)->weights.bytes, (*cm)->weights.bytes / 3);  // 1-byte linear weights against fp32
            // A prompt of 40 tokens (GEMMs of 40 rows) then 6 decode steps (GEMVs on the bytes).
            Rng rng(c.o.seed);
            std::vector<int32_t> prompt(40), forced(6);
            for (int32_t& t : prompt) t = rng.Int(c.o.vocab_size);
            for (int32_t& t : forced) t = rng.Int(c.o.vocab_size);
            auto steps = [&](const Model& m, Backend* be) {
                auto s = Session::Create(&m, be, 16, 64, 64);
                EXPECT_TRUE(s.ok());
                std::vector<std::vector<float>> out;
                std::vector<float> logits;
                EXPECT_TRUE((*s)->Append(prompt, false, &logits).ok());
                out.push_back(logits);
                for (int32_t t : forced) {
                    EXPECT_TRUE((*s)->Append({t}, false, &logits).ok());
                    out.push_back(logits);
                }
                return out;
            };
            const auto want = tensor_cores ? steps(**cm_a8, cpu_a8.get()) : steps(**cm, cpu_.get());
            const auto plain = steps(**cm, cpu_.get());
            const auto got = steps(**gm, gpu->get());
            ASSERT_EQ(got.size(), want.size());
            double sum_oracle = 0, sum_plain = 0;
            for (size_t i = 0; i < want.size(); ++i) {
                const double e = RelL2(got[i], want[i]), e_plain = RelL2(got[i], plain[i]);
                sum_oracle += e;
                sum_plain += e_plain;
                std::printf(
                    "[ metric   ] %s %s step %zu: relative L2 logit error %.3g (to the fp32-activation "
                    "oracle %.3g)\n",
                    c.name.c_str(), tensor_cores ? "fp8-tc" : "widened", i, e, e_plain);
                if (!tensor_cores) {
                    // The prefill's GEMMs round activations and widened weights to fp16 (about 1e-3 relative per
                    // layer), and the decode steps attend over the K/V it wrote; their own GEMVs are fp32
                    // arithmetic on the same values.
                    EXPECT_LT(e, 1e-2) << c.name << " step " << i;
                } else {
                    // A misplaced scale or byte is O(1e-1) or more against either oracle.
                    EXPECT_LT(e, 0.1) << c.name << " step " << i;
                }
            }
            if (tensor_cores) {
                // The prefill's activations are e4m3 on both sides, but the inputs of each rounding differ in
                // their last bits (fp32 sums in other orders), now and then one lands on the other side of a
                // rounding boundary, and in models this narrow one activation a whole e4m3 step off moves the
                // logits by about 1e-2 (measured on an H100, 2026-12-07: 0.008-0.05 to the emulating oracle,
                // 0.024-0.06 to the unrounded one; summed over the steps 0.46, 0.46 and 0.63 of it for mha, gqa
                // and uniattn). So the check is which oracle the GPU follows: activations left unrounded would sit
                // near the fp32-activation oracle (the widened run's 1e-3), a ratio far above 1.
                EXPECT_LT(sum_oracle, 0.85 * sum_plain) << c.name;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The fp8 e4m3 KV cache (engine.kv_cache_dtype: fp8_e4m3): a value x of KV head h is stored as
// e4m3(x / scale[h]) and read as e4m3(b) · scale[h] (KvPlane::scale), on the CPU oracle and on CUDA alike.

// Per-head scales of very different sizes (head 0 a power of two: x / scale is exact, so the ties below stay ties).
std::vector<float> HeadScales(int num_kv_heads) {
    const float pick[] = {0.25f, 0.0137f, 3.1f, 0.7f};
    std::vector<float> s(static_cast<size_t>(num_kv_heads));
    for (int h = 0; h < num_kv_heads; ++h) s[h] = pick[h % 4] * (1.0f + 0.01f * static_cast<float>(h / 4));
    return s;
}

// K/V rows [rows, ld] for heads of these scales: random values of every magnitude the format has (subnormal,
// normal, beyond ±448 · scale: saturated), zeros of both signs, and in head 0 exact ties between two e4m3 codes.
std::vector<float> KvRows(Rng& rng, int64_t rows, int64_t ld, int num_kv_heads, int head_dim,
                          const std::vector<float>& scale) {
    std::vector<float> x(static_cast<size_t>(rows * ld), testutil::kNaN);  // the padding is never read
    for (int64_t t = 0; t < rows; ++t) {
        for (int h = 0; h < num_kv_heads; ++h) {
            for (int e = 0; e < head_dim; ++e) {
                float v = std::ldexp(rng.Uniform(-1.0f, 1.0f), rng.Int(22) - 11) * scale[h];
                if (e == 0) v = 0.0f;
                if (e == 1) v = -0.0f;
                if (e == 2) v = 1000.0f * scale[h];
                if (h == 0 && e >= 3 && e < 8) {  // midpoints: 1.0625 (1 | 1.125), 1.1875, 0.0029296875 (2^-9 · 1.5)
                    const float ties[] = {1.0625f, -1.1875f, 0.0029296875f, 232.0f, -0.0009765625f};
                    v = ties[e - 3] * scale[h];
                }
                x[t * ld + static_cast<int64_t>(h) * head_dim + e] = v;
            }
        }
    }
    return x;
}

// KV writes store the CPU's bytes: WriteKv (and RopeWriteKv's V, which it writes unrotated) give exactly
// FloatToFp8E4M3(x / scale[h]) in the token's slot and leave every other byte alone; RopeWriteKv's rotated K is
// within one e4m3 step of the CPU's (the rotation's fp32 rounding may differ by an FMA).
TEST_F(CudaFp8Test, KvWritesStoreTheCpuBytes) {
    auto gpu = CreateCudaBackend(CudaBackendOptions{});
    ASSERT_TRUE(gpu.ok());
    Backend* g = gpu->get();
    EXPECT_TRUE(g->SupportsKvDType(DType::kF8E4M3));
    EXPECT_TRUE(g->SupportsKvDType(g->KvDType()));
    Rng rng(1818);
    for (int hd : {128, 64, 48}) {
        SCOPED_TRACE("head_dim " + std::to_string(hd));
        const int hq = 4, hkv = 4, block = 16;
        const int64_t T = 9, kv_dim = static_cast<int64_t>(hkv) * hd, num_blocks = 4;
        const int64_t plane_n = num_blocks * block * kv_dim;
        const std::vector<float> scale = HeadScales(hkv);
        std::vector<int32_t> pos(T);
        std::vector<int64_t> slots(T);
        for (int64_t t = 0; t < T; ++t) {
            pos[t] = 700 + static_cast<int32_t>(3 * t);
            slots[t] = 2 * block + 5 + 3 * t;  // across a block boundary, gaps between
        }
        const std::vector<uint8_t> poison(static_cast<size_t>(plane_n), 0xA5);
        auto plane = [&](Backend* be, const float* sc) {
            KvPlane p{UploadTo(be, poison), DType::kF8E4M3, num_blocks, block, hkv, hd};
            p.scale = sc;
            return p;
        };
        auto bytes_of = [&](Backend* be, const KvPlane& p) {
            be->Synchronize();
            std::vector<uint8_t> b(static_cast<size_t>(plane_n));
            be->CopyToHost(b.data(), p.base, b.size());
            return b;
        };
        const float* gs = UploadTo(g, scale);
        const float* cs = UploadTo(cpu_.get(), scale);
        // WriteKv from rows with a padded stride.
        const int64_t ld = kv_dim + 3;
        const std::vector<float> x = KvRows(rng, T, ld, hkv, hd, scale);
        std::vector<uint8_t> want = poison;
        for (int64_t t = 0; t < T; ++t) {
            for (int64_t i = 0; i < kv_dim; ++i) {
                want[slots[t] * kv_dim + i] = FloatToFp8E4M3(x[t * ld + i] / scale[i / hd]);
            }
        }
        const KvPlane gp = plane(g, gs);
        g->WriteKv(Tensor{UploadTo(g, x), DType::kF32, T, kv_dim, ld}, gp, UploadTo(g, slots));
        const std::vector<uint8_t> got = bytes_of(g, gp);
        int bad = 0;
        for (int64_t i = 0; i < plane_n; ++i) {
            if (got[i] != want[i] && bad++ < 5) {
                ADD_FAILURE() << "WriteKv byte " << i << ": got 0x" << std::hex << int{got[i]} << " want 0x"
                              << int{want[i]};
            }
        }
        EXPECT_EQ(bad, 0);
        // The CPU backend writes the same bytes (the oracle the attention tests read).
        const KvPlane cp = plane(cpu_.get(), cs);
        cpu_->WriteKv(Tensor{UploadTo(cpu_.get(), x), DType::kF32, T, kv_dim, ld}, cp, UploadTo(cpu_.get(), slots));
        EXPECT_EQ(bytes_of(cpu_.get(), cp), want);

        // RopeWriteKv: q | k | v rows; V bytes exact, K within one step of the CPU's Rope then WriteKv.
        const int64_t q_dim = static_cast<int64_t>(hq) * hd, row = q_dim + 2 * kv_dim;
        const std::vector<float> kv_rows = KvRows(rng, T, 2 * kv_dim, 2 * hkv, hd, [&] {
            std::vector<float> two = scale;
            two.insert(two.end(), scale.begin(), scale.end());
            return two;
        }());
        std::vector<float> qkv(static_cast<size_t>(T * row));
        for (int64_t t = 0; t < T; ++t) {
            for (int64_t i = 0; i < q_dim; ++i) qkv[t * row + i] = rng.Uniform(-1, 1);
            for (int64_t i = 0; i < 2 * kv_dim; ++i) qkv[t * row + q_dim + i] = kv_rows[t * 2 * kv_dim + i];
        }
        const std::vector<double> inv_freq = testutil::DefaultInvFreq(10000.0, hd);
        auto rope_write = [&](Backend* be, const float* sc) {
            const Tensor t = MakeTensor(UploadTo(be, qkv), DType::kF32, T, row);
            const KvPlane k = plane(be, sc), v = plane(be, sc);
            be->RopeWriteKv(t.Cols(0, q_dim), t.Cols(q_dim, kv_dim), t.Cols(q_dim + kv_dim, kv_dim), k, v, hq,
                            UploadTo(be, pos), UploadTo(be, slots), UploadTo(be, inv_freq));
            return std::pair<std::vector<uint8_t>, std::vector<uint8_t>>{bytes_of(be, k), bytes_of(be, v)};
        };
        const auto [ck, cv] = rope_write(cpu_.get(), cs);
        const auto [gk, gv] = rope_write(g, gs);
        EXPECT_EQ(gv, cv) << "RopeWriteKv V bytes";
        int k_equal = 0, k_bad = 0;
        for (int64_t i = 0; i < plane_n; ++i) {
            if (gk[i] == ck[i]) {
                ++k_equal;
                continue;
            }
            const float s = scale[(i % kv_dim) / hd];
            const double a = Fp8E4M3ToFloat(gk[i]) * s, b = Fp8E4M3ToFloat(ck[i]) * s;
            if (!(std::abs(a - b) <= (0x1.0p-3 * std::abs(b) + 0x1.0p-9) * s) && k_bad++ < 5) {
                ADD_FAILURE() << "RopeWriteKv K byte " << i << ": got " << a << " want " << b;
            }
        }
        EXPECT_EQ(k_bad, 0);
        std::printf("[ metric   ] head_dim %d: RopeWriteKv K bytes equal to the CPU's: %d of %lld\n", hd, k_equal,
                    static_cast<long long>(plane_n));
    }
}

// Attention and ReuseAttention over fp8 planes against the CPU backend over the same bytes and scales: decode
// (one and several splits, MHA / GQA / MQA, head_dim 128 / 64 / generic, up to 4 sequences, whose last split block
// merges, and more, merged by the combine kernel), prefill tiles, mixed batches, anchor probabilities; on CUDA cores
// and with tensor cores (GQA decode with head_dim 64/128 on DecodeMmaKernel and prefill with head_dim 64/128 on
// PrefillMmaKernel, e4m3 widened to fp16), each with up to 4 (8 on tensor cores) query heads per decode block and
// with one.
// Attention and reuse over fp8 e4m3 K/V planes with per-head scales, on every decode / prefill plan, against the
// CPU reading the same bytes.
void CudaFp8Test::CheckFp8KvAttention(const std::vector<testutil::AttnCase>& cases) {
    using testutil::AttnCase;
    using testutil::AttnSetup;
    const struct {
        bool tensor_cores;
        int heads_per_block;
        const char* name;
        bool staged;
    } plans[] = {{false, 0, "CUDA cores", false},
                 {false, 1, "CUDA cores, one head per block", false},
                 {true, 0, "tensor cores", false},
                 {true, 1, "tensor cores, one head per block", false},
                 {true, 0, "tensor cores, K/V staged in shared memory (decode)", true}};
    Rng rng(1819);
    for (const auto& plan : plans) {
        CudaBackendOptions options;
        options.tensor_core_attention = plan.tensor_cores;
        options.fp8_prefill_tensor_cores = plan.tensor_cores;  // off by default until this test has passed on a GPU
        options.decode_heads_per_block = plan.heads_per_block;
        options.staged_decode_attention = plan.staged;  // off by default until this test has passed on a GPU
        auto gpu = CreateCudaBackend(options);
        ASSERT_TRUE(gpu.ok());
        Backend* g = gpu->get();
        for (const AttnCase& c : cases) {
            SCOPED_TRACE(testutil::Describe(c) + ", " + plan.name);
            AttnSetup s = testutil::MakeAttnSetup(rng, c);
            // Heads of different magnitudes, each with its own scale (amax / 224, as calibration sets them).
            std::vector<float> k_scale(c.num_kv_heads), v_scale(c.num_kv_heads);
            for (int h = 0; h < c.num_kv_heads; ++h) {
                const float km = 0.5f + 0.75f * static_cast<float>(h % 3), vm = 2.0f - 0.6f * static_cast<float>(h % 3);
                k_scale[h] = km / 224.0f;
                v_scale[h] = vm / 224.0f;
                for (size_t slot = 0; slot < static_cast<size_t>(s.k.num_blocks) * c.block_size; ++slot) {
                    for (int e = 0; e < c.head_dim; ++e) {
                        s.k.At(static_cast<int64_t>(slot), h)[e] *= km;
                        s.v.At(static_cast<int64_t>(slot), h)[e] *= vm;
                    }
                }
            }
            auto to_bytes = [&](const testutil::HostPlane& p, const std::vector<float>& sc) {
                std::vector<uint8_t> b(p.data.size());
                for (size_t i = 0; i < b.size(); ++i)
                    b[i] = FloatToFp8E4M3(p.data[i] / sc[(i / c.head_dim) % c.num_kv_heads]);
                return b;
            };
            const std::vector<uint8_t> kb = to_bytes(s.k, k_scale), vb = to_bytes(s.v, v_scale);
            auto plane = [&](Backend* be, const std::vector<uint8_t>& b, const std::vector<float>& sc) {
                KvPlane p{UploadTo(be, b), DType::kF8E4M3, s.k.num_blocks, c.block_size, c.num_kv_heads, c.head_dim};
                p.scale = UploadTo(be, sc);
                return p;
            };
            const int64_t width = static_cast<int64_t>(c.num_heads) * c.head_dim;
            const std::vector<float> q = RandomVector(rng, static_cast<size_t>(s.num_tokens * width));
            const size_t probs_n = static_cast<size_t>(s.num_tokens) * c.num_heads * s.max_context_len;
            const std::vector<float> reuse_p = testutil::RandomProbs(rng, s, c.num_heads);
            struct Out {
                std::vector<float> out, probs, reuse;
            };
            auto run = [&](Backend* be) {
                const KvPlane k = plane(be, kb, k_scale), v = plane(be, vb, v_scale);
                const AttentionBatch b = UploadBatch(be, s);
                const Tensor qt = MakeTensor(UploadTo(be, q), DType::kF32, s.num_tokens, width);
                const Tensor out = MakeTensor(UploadTo(be, std::vector<float>(s.num_tokens * width, testutil::kNaN)),
                                              DType::kF32, s.num_tokens, width);
                const Tensor reuse = MakeTensor(UploadTo(be, std::vector<float>(s.num_tokens * width, testutil::kNaN)),
                                                DType::kF32, s.num_tokens, width);
                float* probs = UploadTo(be, std::vector<float>(probs_n, 0.0f));
                be->Attention(qt, k, v, b, c.num_heads, out, probs);
                be->ReuseAttention(UploadTo(be, reuse_p), v, b, c.num_heads, reuse);
                return Out{DownloadFrom(be, out.data, out.rows * width), DownloadFrom(be, probs, probs_n),
                           DownloadFrom(be, reuse.data, reuse.rows * width)};
            };
            const Out want = run(cpu_.get()), got = run(g);
            // Both sides read e4m3(b) · scale exactly; what differs is fp32 summation order (splits, tiles) and, on
            // tensor cores, where the scales multiply (the scores and the output, not each element) and Q and P as
            // sums of two f16 parts (as for fp16 planes, whose tensor-core tolerance is the same 2e-5).
            const double vmax = 2.0;
            ExpectNear(got.out, want.out, std::vector<double>(want.out.size(), 2e-5 * vmax), "Attention out");
            ExpectNear(got.reuse, want.reuse, std::vector<double>(want.reuse.size(), 2e-5 * vmax), "ReuseAttention");
            std::vector<double> ptol(probs_n);
            for (size_t i = 0; i < probs_n; ++i) ptol[i] = 2e-5 * std::abs(want.probs[i]) + 1e-8;
            ExpectNear(got.probs, want.probs, ptol, "probs");
        }
    }
}

TEST_F(CudaFp8Test, Fp8KvAttentionMatchesTheCpu) {
    using testutil::AttnCase;
    using testutil::AttnSetup;
    const std::vector<AttnCase> cases = {
        {32, 32, 128, 16, {17, 600, 3000}, {1, 1, 1}},  // MHA decode: one split, several, many
        {32, 8, 128, 16, {1, 4100, 2}, {1, 1, 1}},      // GQA n_rep 4, past the largest chunk
        {16, 2, 64, 32, {300, 77}, {1, 1}},             // GQA n_rep 8, head_dim 64
        {6, 6, 48, 16, {70, 33}, {70, 5}},              // generic head_dim, prefill
        {8, 2, 128, 16, {100, 40, 300}, {100, 1, 45}},  // mixed batch
        {4, 1, 64, 32, {130}, {65}},                    // MQA prefill after a cached prefix
        {6, 2, 10, 3, {5, 20, 2, 90}, {3, 7, 2, 1}},    // odd head_dim and block size
        {4, 4, 128, 16, {260, 200}, {260, 130}},        // MHA prefill over several tiles
        // GQA prefill chunks after a cached prefix (a partial last tile), head_dim 128 and 64, and with blocks of
        // 24 tokens (a 64-token tile spans three or four blocks): the tensor-core prefill's fp8 staging.
        {32, 8, 128, 16, {700, 150}, {200, 150}},
        {16, 4, 64, 32, {129, 66}, {129, 2}},
        {8, 2, 128, 24, {300, 90}, {100, 90}},
        // GQA decode of more than 4 sequences (the combine kernel merges the splits): n_rep 7 (a head group of 7,
        // one spare row of the tensor-core tile), head_dim 128; n_rep 4, head_dim 64; both with one split and many.
        {14, 2, 128, 16, {700, 33, 2500, 5, 1200}, {1, 1, 1, 1, 1}},
        {16, 4, 64, 16, {2100, 129, 64, 1000, 3, 257}, {1, 1, 1, 1, 1, 1}},
        {16, 1, 64, 32, {3000, 50}, {1, 1}},  // MQA decode: n_rep 16, two head groups
    };
    CheckFp8KvAttention(cases);
}

// The same on a few small cases, for compute-sanitizer (memcheck and racecheck finish on these in seconds; the
// full sweep above does not finish under racecheck): GQA decode on the tensor-core kernel with several splits, a
// prefill whose 64-token tile spans 24-token blocks, head_dim 64, and an MHA decode.
TEST_F(CudaFp8Test, Fp8KvAttentionSmallCasesForSanitizers) {
    CheckFp8KvAttention({{8, 2, 128, 16, {300, 1}, {1, 1}},
                         {8, 2, 128, 16, {2500}, {1}},  // splits of 160 tokens: three staged tiles
                         {8, 2, 128, 24, {90}, {70}},
                         {16, 4, 64, 32, {150}, {1}},
                         {4, 4, 128, 16, {130}, {1}}});
}

// Whole random models (MHA, GQA, UniAttn with reuse layers reading fp8 V) with 16-bit weights and an fp8 e4m3 KV
// cache on both backends, with the same scales: the CPU's calibration (CalibrateKvScales), which the GPU's own
// calibration must reproduce (it runs the model forward on the CUDA backend). The GPU decodes with tensor-core
// attention (the default: GQA decode steps on DecodeMmaKernel) and on CUDA cores.
TEST_F(CudaFp8Test, RandomModelsWithAnFp8KvCacheMatchTheCpuOracle) {
    for (const ModelCase& c : ModelCases()) {
        SCOPED_TRACE(c.name);
        TempDir tmp;
        ASSERT_TRUE(testutil::WriteRandomModel(tmp.path(), c.o).ok());
        auto cm = Model::Load(tmp.path(), cpu_.get(), false);
        ASSERT_TRUE(cm.ok()) << cm.status().ToString();
        CudaBackendOptions tc;  // fp16 weights (and default KV); the prompt's prefill on tensor cores too
        tc.fp8_prefill_tensor_cores = true;
        auto gpu = CreateCudaBackend(tc);
        ASSERT_TRUE(gpu.ok());
        auto gm = Model::Load(tmp.path(), gpu->get(), false);
        ASSERT_TRUE(gm.ok()) << gm.status().ToString();
        EXPECT_EQ((*gm)->weights.num_fp8_linear, 0);

        auto scales = CalibrateKvScales(**cm, cpu_.get(), KvCalibrationSequences(**cm));
        ASSERT_TRUE(scales.ok()) << scales.status().ToString();
        auto gpu_scales = CalibrateKvScales(**gm, gpu->get(), KvCalibrationSequences(**gm));
        ASSERT_TRUE(gpu_scales.ok()) << gpu_scales.status().ToString();
        for (int l = 0; l < (*cm)->config.num_layers; ++l) {
            ASSERT_EQ(gpu_scales->k[l].size(), scales->k[l].size()) << "layer " << l;
            ASSERT_EQ(gpu_scales->v[l].size(), scales->v[l].size()) << "layer " << l;
            for (size_t h = 0; h < scales->k[l].size(); ++h) {
                EXPECT_NEAR(gpu_scales->k[l][h], scales->k[l][h], 1e-2 * scales->k[l][h]) << "K layer " << l;
            }
            for (size_t h = 0; h < scales->v[l].size(); ++h) {
                EXPECT_NEAR(gpu_scales->v[l][h], scales->v[l][h], 1e-2 * scales->v[l][h]) << "V layer " << l;
            }
        }

        // A prompt of 40 tokens (prefill) then 6 decode steps, every one reading the fp8 cache.
        Rng rng(c.o.seed);
        std::vector<int32_t> prompt(40), forced(6);
        for (int32_t& t : prompt) t = rng.Int(c.o.vocab_size);
        for (int32_t& t : forced) t = rng.Int(c.o.vocab_size);
        auto steps = [&](const Model& m, Backend* be, std::optional<DType> kv) {
            auto s = Session::Create(&m, be, 16, 64, 64, kv, kv ? &*scales : nullptr);
            EXPECT_TRUE(s.ok()) << s.status().ToString();
            std::vector<std::vector<float>> out;
            if (!s.ok()) return out;
            if (kv) EXPECT_EQ((*s)->kv().dtype(), *kv);
            std::vector<float> logits;
            EXPECT_TRUE((*s)->Append(prompt, false, &logits).ok());
            out.push_back(logits);
            for (int32_t t : forced) {
                EXPECT_TRUE((*s)->Append({t}, false, &logits).ok());
                out.push_back(logits);
            }
            return out;
        };
        const auto want = steps(**cm, cpu_.get(), DType::kF8E4M3);
        const auto exact_kv = steps(**cm, cpu_.get(), std::nullopt);  // fp32 KV: how much fp8 KV moves the logits
        CudaBackendOptions cuda_cores;
        cuda_cores.tensor_core_attention = false;
        auto gpu_cc = CreateCudaBackend(cuda_cores);
        ASSERT_TRUE(gpu_cc.ok());
        auto gm_cc = Model::Load(tmp.path(), gpu_cc->get(), false);
        ASSERT_TRUE(gm_cc.ok()) << gm_cc.status().ToString();
        for (bool tensor_cores : {true, false}) {
            const auto got =
                tensor_cores ? steps(**gm, gpu->get(), DType::kF8E4M3) : steps(**gm_cc, gpu_cc->get(), DType::kF8E4M3);
            const char* attn = tensor_cores ? "tensor-core attention" : "CUDA-core attention";
            ASSERT_EQ(got.size(), want.size());
            for (size_t i = 0; i < want.size(); ++i) {
                const double e = RelL2(got[i], want[i]);
                std::printf(
                    "[ metric   ] %s fp8 KV step %zu, %s: relative L2 logit error %.3g (fp8 against fp32 KV on the "
                    "CPU: %.3g)\n",
                    c.name.c_str(), i, attn, e, RelL2(want[i], exact_kv[i]));
                // The prefill's GEMMs round activations to fp16 (about 1e-3 relative per layer), so a K/V value near
                // a rounding boundary may land on the neighbouring e4m3 code; a misplaced scale or byte is O(1e-1).
                EXPECT_LT(e, 1e-2) << c.name << " step " << i << ", " << attn;
            }
        }
    }
}

}  // namespace
}  // namespace uniattn
