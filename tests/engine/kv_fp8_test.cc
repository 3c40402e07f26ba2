// The fp8 e4m3 KV cache on the CPU backend (the oracle): WriteKv's bytes, attention over fp8 planes equal to
// attention over fp32 planes holding the dequantized values (bit for bit) and close to unquantized attention,
// KvCache's fp8 accounting and refusals, and KV scale calibration against an independent measurement through
// a Session with an fp32 cache.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "engine/op_cases.h"
#include "engine/test_models.h"
#include "kv/kv_cache.h"
#include "kv/kv_scales.h"
#include "model/model.h"
#include "model/session.h"
#include "uniattn/tokenizer.h"

namespace uniattn {
namespace {

using testutil::AttnCase;
using testutil::AttnSetup;
using testutil::HostPlane;
using testutil::kNaN;
using testutil::Rng;

// Bit patterns, so that NaN == NaN and -0 != +0: "exactly the same result".
std::vector<uint32_t> Bits(const std::vector<float>& v) {
    std::vector<uint32_t> b(v.size());
    std::memcpy(b.data(), v.data(), sizeof(float) * v.size());
    return b;
}

// sqrt(Σ (got - want)² / Σ want²) over the finite entries of `want`.
double RelativeRms(const std::vector<float>& got, const std::vector<float>& want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        if (!std::isfinite(want[i])) continue;
        num += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
        den += static_cast<double>(want[i]) * want[i];
    }
    return std::sqrt(num / den);
}

// An fp8 image of a host plane with per-head scales: the bytes, and the fp32 values they stand for.
struct Fp8Plane {
    std::vector<uint8_t> bytes;
    std::vector<float> scale;  // [num_kv_heads]
    HostPlane dequantized;     // Fp8E4M3ToFloat(byte) * scale[h], NaN where the source was NaN
};

// Scales amax/224 per head (CalibrateKvScales' rule) over the finite values of the plane.
Fp8Plane Quantize(const HostPlane& p) {
    Fp8Plane q{std::vector<uint8_t>(p.data.size()), std::vector<float>(p.num_kv_heads, 0.0f), p};
    for (size_t i = 0; i < p.data.size(); ++i) {
        const int h = static_cast<int>(i / p.head_dim % p.num_kv_heads);
        if (std::isfinite(p.data[i])) q.scale[h] = std::max(q.scale[h], std::abs(p.data[i]));
    }
    for (float& s : q.scale) s = s > 0 ? s / (kFp8E4M3Max / kKvScaleHeadroom) : 1.0f;
    for (size_t i = 0; i < p.data.size(); ++i) {
        const int h = static_cast<int>(i / p.head_dim % p.num_kv_heads);
        q.bytes[i] = FloatToFp8E4M3(p.data[i] / q.scale[h]);
        q.dequantized.data[i] = Fp8E4M3ToFloat(q.bytes[i]) * q.scale[h];
    }
    return q;
}

// Multiplies every value of KV head h by factor[h], so that heads need different scales.
void ScaleHeads(HostPlane& p, const std::vector<float>& factor) {
    for (size_t i = 0; i < p.data.size(); ++i) p.data[i] *= factor[i / p.head_dim % p.num_kv_heads];
}

class KvFp8OpsTest : public testutil::OpFixture<> {
  protected:
    void SetUp() override { be_ = MakeCpuBackend(2); }

    KvPlane Fp32Plane(const HostPlane& p) { return UploadPlane(be_.get(), p); }
    KvPlane Fp8PlaneOnBackend(const Fp8Plane& q) {
        const HostPlane& p = q.dequantized;
        KvPlane plane{
            UploadTo(be_.get(), q.bytes), DType::kF8E4M3, p.num_blocks, p.block_size, p.num_kv_heads, p.head_dim};
        plane.scale = UploadTo(be_.get(), q.scale);
        return plane;
    }
    std::vector<float> Run(const AttnSetup& s, const std::vector<float>& q, const KvPlane& k, const KvPlane& v,
                           int num_heads, int window, std::vector<float>* probs) {
        AttentionBatch b = UploadBatch(be_.get(), s);
        b.sliding_window = window;
        const int64_t width = static_cast<int64_t>(num_heads) * s.k.head_dim;
        float* out = UploadTo(be_.get(), std::vector<float>(static_cast<size_t>(s.num_tokens * width), kNaN));
        float* dev_probs = nullptr;
        const size_t probs_size = static_cast<size_t>(s.num_tokens) * num_heads * s.max_context_len;
        if (probs != nullptr) dev_probs = UploadTo(be_.get(), std::vector<float>(probs_size, kNaN));
        be_->Attention(MakeTensor(UploadTo(be_.get(), q), DType::kF32, s.num_tokens, width), k, v, b, num_heads,
                       MakeTensor(out, DType::kF32, s.num_tokens, width), dev_probs);
        if (probs != nullptr) *probs = DownloadFrom(be_.get(), dev_probs, probs_size);
        return DownloadFrom(be_.get(), out, static_cast<size_t>(s.num_tokens * width));
    }
    std::vector<float> RunReuse(const AttnSetup& s, const std::vector<float>& probs, const KvPlane& v, int num_heads,
                                int window) {
        AttentionBatch b = UploadBatch(be_.get(), s);
        b.sliding_window = window;
        const int64_t width = static_cast<int64_t>(num_heads) * s.v.head_dim;
        float* out = UploadTo(be_.get(), std::vector<float>(static_cast<size_t>(s.num_tokens * width), kNaN));
        be_->ReuseAttention(UploadTo(be_.get(), probs), v, b, num_heads,
                            MakeTensor(out, DType::kF32, s.num_tokens, width));
        return DownloadFrom(be_.get(), out, static_cast<size_t>(s.num_tokens * width));
    }

    std::unique_ptr<Backend> be_;
};

TEST_F(KvFp8OpsTest, CpuBackendSupportsF32AndF8KvPlanes) {
    EXPECT_TRUE(be_->SupportsKvDType(DType::kF32));
    EXPECT_TRUE(be_->SupportsKvDType(DType::kF8E4M3));
    EXPECT_FALSE(be_->SupportsKvDType(DType::kF16));
    EXPECT_FALSE(be_->SupportsKvDType(DType::kBF16));
}

// WriteKv stores FloatToFp8E4M3(x / scale[h]) at each row's slot, byte for byte, and nothing elsewhere; values
// beyond the scaled range saturate at ±448, NaN becomes 0x7F.
TEST_F(KvFp8OpsTest, WriteKvStoresScaledFp8Bytes) {
    const int num_blocks = 3, block_size = 4, heads = 3, hd = 5;
    const int64_t width = heads * hd, ld = width + 3;
    const std::vector<float> scale = {0.01f, 0.5f, 3.0f};
    const std::vector<int64_t> slots = {9, 0, 5, 11, 2};
    Rng rng(3);
    // Scaled magnitudes 2^-12 .. 2^9: subnormals, normals and values past 448 that saturate. The 3 columns
    // past each row are not part of it.
    std::vector<float> src(slots.size() * ld, kNaN);
    for (size_t t = 0; t < slots.size(); ++t) {
        for (int64_t e = 0; e < width; ++e) {
            const float sign = rng.Int(2) == 0 ? 1.0f : -1.0f;
            src[t * ld + e] = sign * std::exp2(rng.Uniform(-12.0f, 9.0f)) * scale[e / hd];
        }
    }
    src[0] = 0.0f, src[1] = -0.0f, src[2] = 1e6f, src[3] = -1e6f, src[4] = kNaN;
    src[ld + 5] = std::numeric_limits<float>::infinity();
    const size_t plane_size = static_cast<size_t>(num_blocks) * block_size * width;
    std::vector<uint8_t> sentinel(plane_size, 0xAB);
    KvPlane plane{UploadTo(be_.get(), sentinel), DType::kF8E4M3, num_blocks, block_size, heads, hd};
    plane.scale = UploadTo(be_.get(), scale);
    const Tensor t{UploadTo(be_.get(), src), DType::kF32, static_cast<int64_t>(slots.size()), width, ld};
    be_->WriteKv(t, plane, UploadTo(be_.get(), slots));

    std::vector<uint8_t> got(plane_size);
    be_->CopyToHost(got.data(), plane.base, plane_size);
    std::vector<uint8_t> want = sentinel;
    for (size_t r = 0; r < slots.size(); ++r) {
        for (int64_t e = 0; e < width; ++e)
            want[slots[r] * width + e] = FloatToFp8E4M3(src[r * ld + e] / scale[e / hd]);
    }
    EXPECT_EQ(got, want);
    const int64_t s0 = slots[0] * width;
    EXPECT_EQ(got[s0 + 2], 0x7E);                // 1e6 / 0.01: saturated at +448
    EXPECT_EQ(got[s0 + 3], 0xFE);                // -448
    EXPECT_EQ(got[s0 + 4], 0x7F);                // NaN
    EXPECT_EQ(got[slots[1] * width + 5], 0x7E);  // +inf: saturated
}

// GQA 4/2, head_dim 16, block size 4, two sequences of different lengths (13 tokens: a chunk of 5 after 8
// cached; 7 tokens: a whole prompt) over shuffled non-contiguous blocks.
AttnCase Fp8Case() { return {4, 2, 16, 4, {13, 7}, {5, 7}}; }

// Attention over fp8 K and V (either or both) equals, bit for bit, attention over fp32 planes holding the
// dequantized values, with and without the probabilities output and under a sliding window; and stays within
// the tolerance of e4m3 rounding of the unquantized result.
TEST_F(KvFp8OpsTest, AttentionEqualsAttentionOverDequantizedFp32) {
    const AttnCase c = Fp8Case();
    Rng rng(17);
    AttnSetup s = testutil::MakeAttnSetup(rng, c);
    ScaleHeads(s.k, {2.0f, 0.25f});
    ScaleHeads(s.v, {0.5f, 4.0f});
    const Fp8Plane qk = Quantize(s.k), qv = Quantize(s.v);
    ASSERT_NE(qk.scale[0], qk.scale[1]);
    const int64_t width = static_cast<int64_t>(c.num_heads) * c.head_dim;
    // q·k/√hd of order 3, so the softmax is far from uniform and K's rounding matters.
    const std::vector<float> q = testutil::RandomVector(rng, static_cast<size_t>(s.num_tokens * width), -3.0f, 3.0f);

    struct Mix {
        bool k_fp8, v_fp8;
    };
    for (const Mix mix : {Mix{true, true}, Mix{true, false}, Mix{false, true}}) {
        for (const int window : {0, 5}) {
            for (const bool with_probs : {false, true}) {
                SCOPED_TRACE(std::string("K ") + (mix.k_fp8 ? "fp8" : "fp32") + ", V " + (mix.v_fp8 ? "fp8" : "fp32") +
                             ", window " + std::to_string(window) + (with_probs ? ", probs" : ""));
                const KvPlane k8 = mix.k_fp8 ? Fp8PlaneOnBackend(qk) : Fp32Plane(s.k);
                const KvPlane v8 = mix.v_fp8 ? Fp8PlaneOnBackend(qv) : Fp32Plane(s.v);
                const KvPlane k32 = Fp32Plane(mix.k_fp8 ? qk.dequantized : s.k);
                const KvPlane v32 = Fp32Plane(mix.v_fp8 ? qv.dequantized : s.v);
                std::vector<float> p8, p32;
                const std::vector<float> out8 = Run(s, q, k8, v8, c.num_heads, window, with_probs ? &p8 : nullptr);
                const std::vector<float> out32 = Run(s, q, k32, v32, c.num_heads, window, with_probs ? &p32 : nullptr);
                EXPECT_EQ(Bits(out8), Bits(out32));
                if (with_probs) EXPECT_EQ(Bits(p8), Bits(p32));
                for (float x : out8) ASSERT_TRUE(std::isfinite(x));
            }
        }
    }
}

// ReuseAttention over an fp8 V plane equals, bit for bit, ReuseAttention over the dequantized fp32 plane.
TEST_F(KvFp8OpsTest, ReuseAttentionEqualsReuseOverDequantizedFp32) {
    const AttnCase c = Fp8Case();
    Rng rng(23);
    AttnSetup s = testutil::MakeAttnSetup(rng, c);
    ScaleHeads(s.v, {3.0f, 0.125f});
    const Fp8Plane qv = Quantize(s.v);
    for (const int window : {0, 5}) {
        SCOPED_TRACE("window " + std::to_string(window));
        const std::vector<float> probs = testutil::RandomProbs(rng, s, c.num_heads);
        const std::vector<float> out8 = RunReuse(s, probs, Fp8PlaneOnBackend(qv), c.num_heads, window);
        const std::vector<float> out32 = RunReuse(s, probs, Fp32Plane(qv.dequantized), c.num_heads, window);
        EXPECT_EQ(Bits(out8), Bits(out32));
        for (float x : out8) ASSERT_TRUE(std::isfinite(x));
    }
}

// fp8 against unquantized fp32. e4m3 keeps 3 mantissa bits: in the binade [2^e, 2^(e+1)) the step is 2^(e-3),
// so rounding to nearest moves a value by at most 2^-4 of 2^e (half a step), and a uniformly distributed
// rounding error has RMS 2^(e-3)/sqrt(12): at most 3.6% of the value (at the binade's bottom), about 2.4% for a
// typical one. The stored values' bound, 0.04, is that 3.6% (subnormals, below 2^-6 · scale, round with a
// larger relative step but are rare with scales amax/224). Observed with this seed: stored values 0.0246,
// attention output 0.0242, probabilities 0.0184, reuse output 0.0235: a weighted sum of V rows averages the
// independent errors and K's errors move the logits (|q·k|/sqrt(hd) up to ~3 here) by about as much. The output
// bounds, 0.05, are twice that and far below what a wrong head scale or a misplaced row gives (O(1)).
TEST_F(KvFp8OpsTest, AttentionIsCloseToUnquantized) {
    const AttnCase c = Fp8Case();
    Rng rng(31);
    AttnSetup s = testutil::MakeAttnSetup(rng, c);
    ScaleHeads(s.k, {2.0f, 0.25f});
    ScaleHeads(s.v, {0.5f, 4.0f});
    const Fp8Plane qk = Quantize(s.k), qv = Quantize(s.v);
    const int64_t width = static_cast<int64_t>(c.num_heads) * c.head_dim;
    const std::vector<float> q = testutil::RandomVector(rng, static_cast<size_t>(s.num_tokens * width), -3.0f, 3.0f);

    // Element-wise error of the stored values themselves.
    std::vector<float> kv_ref, kv_deq;
    for (const auto* p : {&qk, &qv}) {
        const HostPlane& orig = p == &qk ? s.k : s.v;
        kv_ref.insert(kv_ref.end(), orig.data.begin(), orig.data.end());
        kv_deq.insert(kv_deq.end(), p->dequantized.data.begin(), p->dequantized.data.end());
    }
    const double storage = RelativeRms(kv_deq, kv_ref);
    std::vector<float> p8, p32;
    const std::vector<float> out8 = Run(s, q, Fp8PlaneOnBackend(qk), Fp8PlaneOnBackend(qv), c.num_heads, 0, &p8);
    const std::vector<float> out32 = Run(s, q, Fp32Plane(s.k), Fp32Plane(s.v), c.num_heads, 0, &p32);
    const double out_err = RelativeRms(out8, out32), probs_err = RelativeRms(p8, p32);
    const std::vector<float> r8 = RunReuse(s, p32, Fp8PlaneOnBackend(qv), c.num_heads, 0);
    const std::vector<float> r32 = RunReuse(s, p32, Fp32Plane(s.v), c.num_heads, 0);
    const double reuse_err = RelativeRms(r8, r32);
    std::printf(
        "fp8 KV relative RMS error: stored values %.4f, attention output %.4f, probabilities %.4f, "
        "reuse output %.4f\n",
        storage, out_err, probs_err, reuse_err);
    EXPECT_LT(storage, 0.04);
    EXPECT_GT(storage, 0.005) << "the values were not quantized";
    EXPECT_LT(out_err, 0.05);
    EXPECT_LT(probs_err, 0.05);
    EXPECT_LT(reuse_err, 0.05);
}

// A UniAttn config (reuse layers 1, 2: no K plane) with GQA.
testutil::RandomModelOptions UniAttnOptions() {
    testutil::RandomModelOptions o;
    o.vocab_size = 61;
    o.hidden_size = 32;
    o.intermediate_size = 48;
    o.num_layers = 4;
    o.num_heads = 4;
    o.num_kv_heads = 2;
    o.max_position_embeddings = 96;
    o.has_grouping = true;
    o.grouping_idx = 3, o.grouping_begin_idx = 0, o.grouping_end_idx = 3;
    o.seed = 5;
    return o;
}

TEST(KvCacheFp8Test, OneBytePerElementAndScalesInEveryPlane) {
    const ModelConfig c = testutil::MakeConfig(UniAttnOptions());
    ASSERT_EQ(c.num_reuse_layers(), 2);
    auto backend = MakeCpuBackend(1);
    KvScales scales = UniformKvScales(c, 0.5f, 0.25f);
    scales.v[3][1] = 7.0f;
    auto kv = KvCache::Create(backend.get(), c, 16, 10, DType::kF8E4M3, &scales);
    ASSERT_TRUE(kv.ok()) << kv.status().ToString();
    auto kv32 = KvCache::Create(backend.get(), c, 16, 10);
    ASSERT_TRUE(kv32.ok());
    EXPECT_EQ((*kv)->dtype(), DType::kF8E4M3);
    EXPECT_EQ((*kv32)->dtype(), DType::kF32);
    EXPECT_EQ((*kv)->bytes_per_block(), c.KvBytesPerToken(1) * 16);
    EXPECT_EQ((*kv)->bytes_per_block() * 4, (*kv32)->bytes_per_block());
    EXPECT_EQ((*kv)->total_bytes(), 10 * c.KvBytesPerToken(1) * 16);
    EXPECT_EQ((*kv)->scales().v, scales.v);
    EXPECT_EQ((*kv)->scales().k, scales.k);
    for (int l = 0; l < c.num_layers; ++l) {
        SCOPED_TRACE("layer " + std::to_string(l));
        EXPECT_EQ((*kv)->HasK(l), c.HasKeys(l));
        EXPECT_EQ(scales.k[l].empty(), !c.HasKeys(l));
        std::vector<float> got(c.num_kv_heads);
        if (c.HasKeys(l)) {
            EXPECT_EQ((*kv)->K(l).dtype, DType::kF8E4M3);
            ASSERT_NE((*kv)->K(l).scale, nullptr);
            backend->CopyToHost(got.data(), (*kv)->K(l).scale, sizeof(float) * got.size());
            EXPECT_EQ(got, scales.k[l]);
        }
        EXPECT_EQ((*kv)->V(l).dtype, DType::kF8E4M3);
        ASSERT_NE((*kv)->V(l).scale, nullptr);
        backend->CopyToHost(got.data(), (*kv)->V(l).scale, sizeof(float) * got.size());
        EXPECT_EQ(got, scales.v[l]);
        EXPECT_EQ((*kv32)->V(l).scale, nullptr);
    }
    // fp32 ignores scales.
    auto kv32s = KvCache::Create(backend.get(), c, 16, 10, DType::kF32, &scales);
    ASSERT_TRUE(kv32s.ok());
    EXPECT_EQ((*kv32s)->V(0).scale, nullptr);
    EXPECT_TRUE((*kv32s)->scales().v.empty());
}

TEST(KvCacheFp8Test, RefusesMissingOrBadScalesAndUnsupportedDTypes) {
    const ModelConfig c = testutil::MakeConfig(UniAttnOptions());
    auto backend = MakeCpuBackend(1);
    auto refused = [&](const KvScales* scales, DType dtype, const std::string& needle) {
        auto kv = KvCache::Create(backend.get(), c, 16, 4, dtype, scales);
        ASSERT_FALSE(kv.ok()) << needle;
        EXPECT_EQ(kv.status().code(), StatusCode::kInvalidArgument) << kv.status().ToString();
        EXPECT_NE(kv.status().message().find(needle), std::string::npos) << kv.status().ToString();
    };
    refused(nullptr, DType::kF8E4M3, "scales");
    const KvScales good = UniformKvScales(c, 1.0f, 1.0f);
    KvScales s = good;
    s.v.pop_back();
    refused(&s, DType::kF8E4M3, "layers");
    s = good;
    s.k[0].push_back(1.0f);
    refused(&s, DType::kF8E4M3, "layer 0");
    s = good;
    s.k[1] = {1.0f, 1.0f};  // layer 1 is a reuse layer: no K plane
    refused(&s, DType::kF8E4M3, "reuse");
    for (const float bad : {0.0f, -1.0f, kNaN, std::numeric_limits<float>::infinity()}) {
        s = good;
        s.v[2][1] = bad;
        refused(&s, DType::kF8E4M3, "layer 2, head 1");
    }
    refused(&good, DType::kBF16, "cpu backend");
    refused(&good, DType::kBF16, "BF16");
    refused(nullptr, DType::kF16, "F16");
}

// A random UniAttn model on disk whose layer-0 V projection is zero for KV head 1, so that head's V stays 0.
class KvCalibrationTest : public ::testing::Test {
  protected:
    void SetUp() override {
        const testutil::RandomModelOptions o = UniAttnOptions();
        const ModelConfig config = testutil::MakeConfig(o);
        std::vector<testutil::NamedTensor> tensors = testutil::MakeRandomTensors(config, DType::kF32, o.seed);
        testutil::NamedTensor* v0 = testutil::FindTensor(tensors, LayerTensorName(0, "self_attn.v_proj.weight"));
        ASSERT_NE(v0, nullptr);
        const int64_t row_len = config.hidden_size;
        std::fill(v0->data.begin() + config.head_dim * row_len, v0->data.begin() + 2 * config.head_dim * row_len, 0.f);
        ASSERT_TRUE(testutil::WriteModelDir(tmp_.path(), config, tensors, DType::kF32).ok());
        backend_ = MakeCpuBackend(2);
        auto model = Model::Load(tmp_.path(), backend_.get(), /*load_tokenizer=*/false);
        ASSERT_TRUE(model.ok()) << model.status().ToString();
        model_ = std::move(model).value();
    }

    testutil::TempDir tmp_;
    std::unique_ptr<Backend> backend_;
    std::unique_ptr<Model> model_;
};

// The scales are amax/224 of what an fp32 cache holds after prefilling the same sequences through a Session,
// measured here independently; no value written during calibration leaves the fp8 range once scaled.
TEST_F(KvCalibrationTest, ScalesAreAmaxOver224OfTheCachedValues) {
    const ModelConfig& c = model_->config;
    const std::vector<std::vector<int32_t>> seqs = KvCalibrationSequences(*model_);
    ASSERT_EQ(seqs.size(), 2u);
    auto scales = CalibrateKvScales(*model_, backend_.get(), seqs);
    ASSERT_TRUE(scales.ok()) << scales.status().ToString();
    ASSERT_TRUE(CheckKvScales(c, *scales).ok());

    const size_t heads = c.num_kv_heads;
    std::vector<std::vector<float>> amax_k(c.num_layers, std::vector<float>(heads, 0.f)), amax_v = amax_k;
    for (const auto& seq : seqs) {
        auto session = Session::Create(model_.get(), backend_.get(), 16, /*max_chunk=*/256, 0, DType::kF32);
        ASSERT_TRUE(session.ok());
        std::vector<float> logits;
        ASSERT_TRUE((*session)->Append(seq, false, &logits).ok());
        const KvCache& kv = (*session)->kv();
        ASSERT_EQ(kv.dtype(), DType::kF32);
        for (int l = 0; l < c.num_layers; ++l) {
            for (int p = 0; p < static_cast<int>(seq.size()); ++p) {
                const int64_t slot = static_cast<int64_t>((*session)->blocks()[p / 16]) * 16 + p % 16;
                for (size_t h = 0; h < heads; ++h) {
                    for (int e = 0; e < c.head_dim; ++e) {
                        const int64_t at = (slot * c.num_kv_heads + h) * c.head_dim + e;
                        if (kv.HasK(l)) {
                            amax_k[l][h] =
                                std::max(amax_k[l][h], std::abs(static_cast<const float*>(kv.K(l).base)[at]));
                        }
                        amax_v[l][h] = std::max(amax_v[l][h], std::abs(static_cast<const float*>(kv.V(l).base)[at]));
                    }
                }
            }
        }
    }
    for (int l = 0; l < c.num_layers; ++l) {
        SCOPED_TRACE("layer " + std::to_string(l));
        ASSERT_EQ(scales->k[l].size(), c.HasKeys(l) ? heads : 0u);
        ASSERT_EQ(scales->v[l].size(), heads);
        for (size_t h = 0; h < heads; ++h) {
            SCOPED_TRACE("head " + std::to_string(h));
            if (l == 0 && h == 1) {
                EXPECT_EQ(amax_v[l][h], 0.0f);
                EXPECT_EQ(scales->v[l][h], 1.0f);  // a head that stayed 0
            } else {
                ASSERT_GT(amax_v[l][h], 0.0f);
                EXPECT_EQ(scales->v[l][h], amax_v[l][h] / 224.0f);
                EXPECT_LE(amax_v[l][h] / scales->v[l][h], kFp8E4M3Max);
            }
            if (c.HasKeys(l)) {
                ASSERT_GT(amax_k[l][h], 0.0f);
                EXPECT_EQ(scales->k[l][h], amax_k[l][h] / 224.0f);
                EXPECT_LE(amax_k[l][h] / scales->k[l][h], kFp8E4M3Max);
            }
        }
    }
}

// The calibrated scales in use: an fp8 Session's logits follow the fp32 Session's. A loose end-to-end check (the
// op tests above pin the arithmetic): 4 layers of e4m3 K/V rounding move these random-model logits by 2.4%
// relative RMS (observed); the bound is twice that.
TEST_F(KvCalibrationTest, Fp8SessionWithCalibratedScalesTracksFp32) {
    const std::vector<std::vector<int32_t>> seqs = KvCalibrationSequences(*model_);
    auto scales = CalibrateKvScales(*model_, backend_.get(), seqs);
    ASSERT_TRUE(scales.ok());
    auto s32 = Session::Create(model_.get(), backend_.get(), 16, 32, 0);
    auto s8 = Session::Create(model_.get(), backend_.get(), 16, 32, 0, DType::kF8E4M3, &*scales);
    ASSERT_TRUE(s32.ok() && s8.ok());
    EXPECT_EQ((*s8)->kv().dtype(), DType::kF8E4M3);
    testutil::Rng rng(77);
    std::vector<int32_t> ids(80);
    for (int32_t& t : ids) t = rng.Int(model_->config.vocab_size);
    std::vector<float> l32, l8;
    ASSERT_TRUE((*s32)->Append(ids, true, &l32).ok());
    ASSERT_TRUE((*s8)->Append(ids, true, &l8).ok());
    const double err = RelativeRms(l8, l32);
    std::printf("fp8 session logits relative RMS error vs fp32: %.4f\n", err);
    EXPECT_LT(err, 0.05);
    EXPECT_GT(err, 0.0);
    // Without scales the fp8 session is refused.
    auto none = Session::Create(model_.get(), backend_.get(), 16, 32, 0, DType::kF8E4M3);
    ASSERT_FALSE(none.ok());
    EXPECT_EQ(none.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(KvCalibrationTest, RefusesEmptyOverlongAndOutOfVocabularyInput) {
    const ModelConfig& c = model_->config;
    EXPECT_EQ(CalibrateKvScales(*model_, backend_.get(), {}).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(CalibrateKvScales(*model_, backend_.get(), {{}, {}}).status().code(), StatusCode::kInvalidArgument);
    const std::vector<int32_t> overlong(c.max_position_embeddings + 1, 1);
    EXPECT_EQ(CalibrateKvScales(*model_, backend_.get(), {overlong}).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(CalibrateKvScales(*model_, backend_.get(), {{1, c.vocab_size}}).status().code(),
              StatusCode::kInvalidArgument);
    EXPECT_EQ(CalibrateKvScales(*model_, backend_.get(), {{1, -1}}).status().code(), StatusCode::kInvalidArgument);
}

TEST(KvCalibrationSequencesTest, WithoutTokenizerTwoSeededSequences) {
    testutil::RandomModelOptions o = UniAttnOptions();
    o.max_position_embeddings = 1000;
    Model m;
    m.config = testutil::MakeConfig(o);
    const auto seqs = KvCalibrationSequences(m);
    ASSERT_EQ(seqs.size(), 2u);
    for (const auto& s : seqs) {
        ASSERT_EQ(s.size(), 256u);
        for (int32_t t : s) ASSERT_TRUE(t >= 0 && t < o.vocab_size) << t;
    }
    EXPECT_NE(seqs[0], seqs[1]);
    EXPECT_EQ(KvCalibrationSequences(m), seqs);
    // A shorter context caps the length; the stream is the same.
    Model short_ctx;
    o.max_position_embeddings = 100;
    short_ctx.config = testutil::MakeConfig(o);
    const auto capped = KvCalibrationSequences(short_ctx);
    ASSERT_EQ(capped.size(), 2u);
    EXPECT_EQ(capped[0], std::vector<int32_t>(seqs[0].begin(), seqs[0].begin() + 100));
    // A tokenizer that encodes no text (ids only) falls back to the same ids.
    m.tokenizer = MakeIdsOnlyTokenizer(m.config);
    EXPECT_EQ(KvCalibrationSequences(m), seqs);
}

TEST(KvCalibrationSequencesTest, WithTokenizerTheEncodedPassageInPieces) {
    testutil::RandomModelOptions o = UniAttnOptions();
    o.vocab_size = 32000;
    o.max_position_embeddings = 2048;
    Model m;
    m.config = testutil::MakeConfig(o);
    auto tok = Tokenizer::Load(testutil::DefaultModelDir(), m.config);
    ASSERT_TRUE(tok.ok()) << testutil::kMissingDefaultModel << ": " << tok.status().ToString();
    m.tokenizer = std::move(tok).value();
    const auto seqs = KvCalibrationSequences(m);
    ASSERT_GE(seqs.size(), 2u);
    ASSERT_LE(seqs.size(), 4u);
    size_t total = 0;
    for (size_t i = 0; i < seqs.size(); ++i) {
        ASSERT_LE(seqs[i].size(), 256u);
        ASSERT_FALSE(seqs[i].empty());
        if (i + 1 < seqs.size()) EXPECT_EQ(seqs[i].size(), 256u);
        for (int32_t t : seqs[i]) ASSERT_TRUE(t >= 0 && t < o.vocab_size) << t;
        total += seqs[i].size();
    }
    std::printf("calibration passage: %zu tokens in %zu sequences\n", total, seqs.size());
    EXPECT_GT(total, 400u);  // about 430 words of prose
    EXPECT_EQ(seqs[0][0], m.tokenizer->bos_id());
    for (size_t i = 1; i < seqs.size(); ++i) EXPECT_NE(seqs[i][0], m.tokenizer->bos_id());
    std::vector<int32_t> all;
    for (const auto& s : seqs) all.insert(all.end(), s.begin(), s.end());
    const std::string text = m.tokenizer->Decode(all);
    EXPECT_NE(text.find("kettle"), std::string::npos) << text;
    EXPECT_NE(text.find("7:45"), std::string::npos) << text;
    EXPECT_EQ(KvCalibrationSequences(m), seqs);
    // A context of 100 tokens: four pieces of 100.
    m.config.max_position_embeddings = 100;
    const auto small = KvCalibrationSequences(m);
    ASSERT_EQ(small.size(), 4u);
    for (const auto& s : small) EXPECT_EQ(s.size(), 100u);
    EXPECT_EQ(small[0], std::vector<int32_t>(seqs[0].begin(), seqs[0].begin() + 100));
}

}  // namespace
}  // namespace uniattn
