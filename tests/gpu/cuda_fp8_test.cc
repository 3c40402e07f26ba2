// FP8 weights on the CUDA backend (issue 18) against the CPU oracle, which holds the same fp8 values in fp32:
// MatMul, NormMatMul and SiluMulMatMul with e4m3 weights and per-row scales on every path (the GEMV of 1-2 rows,
// per warp and staged, and the widened 16-bit GEMM beyond), and whole random models (MHA, GQA, UniAttn) loaded
// with engine.quantization=fp8 on both backends: the GPU stores e4m3 bytes, the CPU the values they stand for.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "engine/op_cases.h"
#include "engine/test_models.h"
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
    std::unique_ptr<Backend> cpu_;
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
        options.fuse_gemv_inputs = mode >= 1;
        options.stage_gemv_input = mode >= 2;
        auto gpu = CreateCudaBackend(options);
        ASSERT_TRUE(gpu.ok());
        for (const Shape& sh : {Shape{1024, 96}, Shape{1056, 64}, Shape{37, 29}, Shape{520, 9000}}) {
            // fp8 weights: rows with very different magnitudes (so a scale applied to the wrong row shows).
            std::vector<float> values(static_cast<size_t>(sh.out * sh.in)), scale(static_cast<size_t>(sh.out));
            std::vector<uint8_t> bytes(values.size());
            for (int64_t o = 0; o < sh.out; ++o) {
                const float mag = std::ldexp(1.0f, rng.Int(9) - 6);
                float amax = 0;
                std::vector<float> row(static_cast<size_t>(sh.in));
                for (float& v : row) amax = std::max(amax, std::fabs(v = mag * rng.Uniform(-1, 1)));
                scale[o] = amax / kFp8E4M3Max;
                for (int64_t i = 0; i < sh.in; ++i) {
                    bytes[o * sh.in + i] = FloatToFp8E4M3(row[i] / scale[o]);
                    values[o * sh.in + i] = Fp8E4M3ToFloat(bytes[o * sh.in + i]) * scale[o];
                }
            }
            const Tensor wc = MakeTensor(UploadTo(cpu_.get(), values), DType::kF32, sh.out, sh.in);
            Tensor wg = MakeTensor(UploadTo(gpu->get(), bytes), DType::kF8E4M3, sh.out, sh.in);
            wg.scale = UploadTo(gpu->get(), scale);
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
                    const Tensor x = MakeTensor(UploadTo(be, xh), DType::kF32, T, sh.in);
                    const Tensor y = MakeTensor(UploadTo(be, y0), DType::kF32, T, sh.out);
                    if (op == 0) {
                        be->MatMul(x, w, y, true);
                    } else if (op == 1) {  // RmsNorm(x) with unit weights: the same sum, normalised rows
                        const Tensor g =
                            MakeTensor(UploadTo(be, std::vector<float>(sh.in, 1.0f)), DType::kF32, 1, sh.in);
                        const Tensor xn =
                            MakeTensor(UploadTo(be, std::vector<float>(T * sh.in)), DType::kF32, T, sh.in);
                        be->NormMatMul(x, g, 1e-5f, w, y, xn, true);
                    } else {  // SwiGLU of [x | x]
                        std::vector<float> gu(static_cast<size_t>(2 * T * sh.in));
                        for (int64_t t = 0; t < T; ++t) {
                            for (int64_t i = 0; i < sh.in; ++i)
                                gu[t * 2 * sh.in + i] = gu[t * 2 * sh.in + sh.in + i] = xh[t * sh.in + i];
                        }
                        const Tensor tgu = MakeTensor(UploadTo(be, gu), DType::kF32, T, 2 * sh.in);
                        const Tensor mlp =
                            MakeTensor(UploadTo(be, std::vector<float>(T * sh.in)), DType::kF32, T, sh.in);
                        be->SiluMulMatMul(tgu, w, y, mlp, true);
                    }
                    return DownloadFrom(be, y.data, static_cast<size_t>(T * sh.out), DType::kF32);
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
    for (bool outer : {true, false}) {  // scales in cuBLASLt's epilogue, or in our kernel after it
        CudaBackendOptions options;
        options.fp8_outer_scales = outer;
        auto gpu = CreateCudaBackend(options);
        ASSERT_TRUE(gpu.ok());
        for (const Shape& sh : {Shape{1024, 96}, Shape{4096, 1024}, Shape{1056, 64}, Shape{512, 11008}}) {
            const Fp8Weight fw = RandomFp8Weight(rng, sh.out, sh.in);
            const Tensor wc = MakeTensor(UploadTo(cpu_.get(), fw.values), DType::kF32, sh.out, sh.in);
            Tensor wg = MakeTensor(UploadTo(gpu->get(), fw.bytes), DType::kF8E4M3, sh.out, sh.in);
            wg.scale = UploadTo(gpu->get(), fw.scale);
            for (int64_t T : {3, 16, 64, 65, 300}) {
                SCOPED_TRACE(std::string(outer ? "outer scales" : "scales after") + " in " + std::to_string(sh.in) +
                             " out " + std::to_string(sh.out) + " T=" + std::to_string(T));
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
                    const Tensor x = MakeTensor(UploadTo(be, x_host), DType::kF32, T, sh.in);
                    const Tensor y = MakeTensor(UploadTo(be, y0), DType::kF32, T, sh.out);
                    if (op == 0) {
                        be->MatMul(x, w, y, true);
                    } else if (op == 1) {
                        const Tensor g =
                            MakeTensor(UploadTo(be, std::vector<float>(sh.in, 1.0f)), DType::kF32, 1, sh.in);
                        const Tensor xn =
                            MakeTensor(UploadTo(be, std::vector<float>(T * sh.in)), DType::kF32, T, sh.in);
                        be->NormMatMul(x, g, 1e-5f, w, y, xn, true);
                    } else {
                        std::vector<float> gu(static_cast<size_t>(2 * T * sh.in));
                        for (int64_t t = 0; t < T; ++t) {
                            for (int64_t i = 0; i < sh.in; ++i)
                                gu[t * 2 * sh.in + i] = gu[t * 2 * sh.in + sh.in + i] = x_host[t * sh.in + i];
                        }
                        const Tensor tgu = MakeTensor(UploadTo(be, gu), DType::kF32, T, 2 * sh.in);
                        const Tensor mlp =
                            MakeTensor(UploadTo(be, std::vector<float>(T * sh.in)), DType::kF32, T, sh.in);
                        be->SiluMulMatMul(tgu, w, y, mlp, true);
                    }
                    return DownloadFrom(be, y.data, static_cast<size_t>(T * sh.out), DType::kF32);
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
                        tight[t * sh.out + o] = 0x1.0p-10 * mag + 1e-30;
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
                            bound[t * sh.out + o] = 0x1.0p-4 * 1.01 * prod + 0x1.0p-10 * s[t] * wsum +
                                                    0x1.0p-10 * (prod + std::abs(y0[t * sh.out + o]));
                        }
                    }
                    ExpectNear(run(gpu->get(), wg, op, xh), run(cpu_.get(), wc, 0, in), bound,
                               "op " + std::to_string(op) + " within the quantization bound");
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

TEST_F(CudaFp8Test, RandomModelsQuantizedAtLoadMatchTheCpuOracle) {
    struct Case {
        std::string name;
        testutil::RandomModelOptions o;
    };
    std::vector<Case> cases(3);
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
    for (Case& c : cases) {
        SCOPED_TRACE(c.name);
        c.o.vocab_size = 300;
        c.o.intermediate_size = 2 * c.o.hidden_size + 64;
        c.o.max_position_embeddings = 256;
        c.o.dtype = DType::kF16;
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
            for (size_t i = 0; i < want.size(); ++i) {
                const double e = RelL2(got[i], want[i]);
                std::printf(
                    "[ metric   ] %s %s step %zu: relative L2 logit error %.3g (to the fp32-activation "
                    "oracle %.3g)\n",
                    c.name.c_str(), tensor_cores ? "fp8-tc" : "widened", i, e, RelL2(got[i], plain[i]));
                // Widened: the prefill's GEMMs round activations and widened weights to fp16 (about 1e-3 relative
                // per layer), and the decode steps attend over the K/V it wrote; their own GEMVs are fp32
                // arithmetic on the same values. Tensor cores: the prefill's activations are e4m3 on both sides
                // (the CPU emulates the rounding), fp32 sums in another order; a fused input one bit off can round
                // to a neighbouring e4m3 value, rarely. A misplaced scale or byte, or activations left unrounded,
                // is O(1e-1) or more.
                EXPECT_LT(e, 1e-2) << c.name << " step " << i;
            }
        }
    }
}

}  // namespace
}  // namespace uniattn
