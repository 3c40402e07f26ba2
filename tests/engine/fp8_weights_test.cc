// FP8 e4m3 (issue 18): the scalar conversions, config.json's quantization_config, FP8 checkpoints (per-tensor,
// per-channel and block scales, as vLLM loads them) and engine.quantization=fp8 (rounding at load), on the CPU
// oracle. The CPU holds fp8 values in fp32, so every loaded weight is compared exactly with e4m3 value x scale.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>

#include "engine_setup.h"
#include "model/model.h"
#include "model/session.h"
#include "staging_backend.h"
#include "test_models.h"
#include "uniattn/json_io.h"

namespace uniattn {
namespace {

using testutil::NamedTensor;
using testutil::TempDir;

// The nearest finite e4m3 value by exhaustive search, ties to the even code; beyond 448, 448 (saturation).
uint8_t ReferenceEncode(float x) {
    if (std::isnan(x)) return 0x7F;
    const uint8_t sign = std::signbit(x) ? 0x80 : 0;
    const double a = std::fabs(static_cast<double>(x));
    if (a >= 448) return sign | 0x7E;
    uint8_t best = 0;
    double best_d = INFINITY;
    for (int c = 0; c <= 0x7E; ++c) {
        const double d = std::fabs(static_cast<double>(Fp8E4M3ToFloat(static_cast<uint8_t>(c))) - a);
        if (d < best_d || (d == best_d && (c & 1) == 0)) {
            best = static_cast<uint8_t>(c);
            best_d = d;
        }
    }
    return sign | best;
}

TEST(Fp8E4M3, EveryCodeDecodesAndRoundTrips) {
    EXPECT_EQ(Fp8E4M3ToFloat(0x38), 1.0f);
    EXPECT_EQ(Fp8E4M3ToFloat(0x7E), 448.0f);
    EXPECT_EQ(Fp8E4M3ToFloat(0xFE), -448.0f);
    EXPECT_EQ(Fp8E4M3ToFloat(0x01), std::ldexp(1.0f, -9));  // smallest subnormal
    EXPECT_EQ(Fp8E4M3ToFloat(0x08), std::ldexp(1.0f, -6));  // smallest normal
    EXPECT_EQ(Fp8E4M3ToFloat(0x07), 7 * std::ldexp(1.0f, -9));
    EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0x7F)));
    EXPECT_TRUE(std::isnan(Fp8E4M3ToFloat(0xFF)));
    for (int b = 0; b < 256; ++b) {
        if ((b & 0x7F) == 0x7F) continue;
        EXPECT_EQ(FloatToFp8E4M3(Fp8E4M3ToFloat(static_cast<uint8_t>(b))), b) << "code " << b;
    }
    EXPECT_EQ(DTypeBytes(DType::kF8E4M3), 1);
    EXPECT_STREQ(DTypeName(DType::kF8E4M3), "F8_E4M3");
    ASSERT_TRUE(ParseDType("F8_E4M3").ok());
    EXPECT_EQ(*ParseDType("F8_E4M3"), DType::kF8E4M3);
    auto e5m2 = ParseDType("F8_E5M2");
    ASSERT_FALSE(e5m2.ok());
    EXPECT_NE(e5m2.status().message().find("e5m2"), std::string::npos) << e5m2.status().message();
}

TEST(Fp8E4M3, RoundsToNearestEvenAndSaturatesLikeAnExhaustiveSearch) {
    testutil::Rng rng(7);
    std::vector<float> xs = {0.0f, -0.0f, 448.0f, 449.0f, 464.0f, 1e9f, INFINITY, -INFINITY, 1e-30f, -1e-30f};
    // Every midpoint between neighbouring codes (exact ties), and just above and below each.
    for (int c = 0; c < 0x7E; ++c) {
        const float lo = Fp8E4M3ToFloat(static_cast<uint8_t>(c)), hi = Fp8E4M3ToFloat(static_cast<uint8_t>(c + 1));
        const float mid = (lo + hi) / 2;  // exact: both are short binary fractions
        xs.insert(xs.end(), {mid, -mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)});
    }
    for (int i = 0; i < 100000; ++i) {
        const float m = rng.Uniform(1.0f, 2.0f);
        xs.push_back((rng.Int(2) ? -1.0f : 1.0f) * std::ldexp(m, rng.Int(24) - 13));
    }
    for (float x : xs) EXPECT_EQ(FloatToFp8E4M3(x), ReferenceEncode(x)) << "x = " << x;
    EXPECT_EQ(FloatToFp8E4M3(std::numeric_limits<float>::quiet_NaN()), 0x7F);
    // ConvertDType goes through the same scalars, both ways.
    std::vector<uint8_t> bytes(xs.size());
    ConvertDType(xs.data(), DType::kF32, bytes.data(), DType::kF8E4M3, static_cast<int64_t>(xs.size()));
    std::vector<uint16_t> half(xs.size());
    ConvertDType(bytes.data(), DType::kF8E4M3, half.data(), DType::kF16, static_cast<int64_t>(xs.size()));
    for (size_t i = 0; i < xs.size(); ++i) {
        ASSERT_EQ(bytes[i], FloatToFp8E4M3(xs[i])) << i;
        ASSERT_EQ(HalfToFloat(half[i]), Fp8E4M3ToFloat(bytes[i])) << i;  // e4m3 values are exact in fp16
    }
}

// config.json text of a small model with `quant` as its quantization_config.
std::string ConfigWith(const std::string& quant) {
    testutil::RandomModelOptions o;
    OrderedJson j = testutil::MakeConfig(o).ToJson();
    j["quantization_config"] = OrderedJson::parse(quant);
    return DumpJson(j);
}

TEST(Fp8Config, QuantizationConfigsOfPublishedCheckpoints) {
    // AutoFP8 / vLLM "fp8": per-tensor scales, static activations.
    auto a = ModelConfig::FromJson(
        ConfigWith(R"({"activation_scheme": "static", "ignored_layers": ["lm_head"], "quant_method": "fp8"})"), "a");
    ASSERT_TRUE(a.ok()) << a.status().message();
    EXPECT_EQ(a->quantization.method, "fp8");
    EXPECT_TRUE(a->quantization.static_activations);
    EXPECT_EQ(a->quantization.ignored, std::vector<std::string>{"lm_head"});
    EXPECT_EQ(a->quantization.block_rows, 0);
    // Qwen3 / DeepSeek block-wise fp8.
    auto b = ModelConfig::FromJson(ConfigWith(R"({"activation_scheme": "dynamic", "fmt": "e4m3",
        "quant_method": "fp8", "weight_block_size": [128, 128]})"),
                                   "b");
    ASSERT_TRUE(b.ok()) << b.status().message();
    EXPECT_FALSE(b->quantization.static_activations);
    EXPECT_EQ(b->quantization.block_rows, 128);
    EXPECT_EQ(b->quantization.block_cols, 128);
    // llm-compressor's compressed-tensors FP8 (channel weights, dynamic per-token activations).
    auto c = ModelConfig::FromJson(ConfigWith(R"({"quant_method": "compressed-tensors", "format": "float-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"],
          "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "symmetric": true, "dynamic": false},
          "input_activations": {"num_bits": 8, "type": "float", "strategy": "token", "dynamic": true}}},
        "ignore": ["lm_head"], "kv_cache_scheme": null})"),
                                   "c");
    ASSERT_TRUE(c.ok()) << c.status().message();
    EXPECT_EQ(c->quantization.method, "compressed-tensors");
    EXPECT_FALSE(c->quantization.static_activations);
    // No quantization_config: nothing.
    testutil::RandomModelOptions o;
    EXPECT_FALSE(testutil::MakeConfig(o).quantization.fp8());
}

TEST(Fp8Config, OtherMethodsAndFormatsAreRefusedByName) {
    const std::vector<std::pair<std::string, std::string>> cases = {
        {R"({"quant_method": "awq", "bits": 4})", "\"awq\""},
        {R"({"quant_method": "gptq", "bits": 4})", "\"gptq\""},
        {R"({"quant_method": "fp8", "fmt": "e5m2"})", "e5m2"},
        {R"({"quant_method": "fp8", "weight_block_size": [128]})", "weight_block_size"},
        {R"({"quant_method": "compressed-tensors", "config_groups": {"g": {"weights":
            {"num_bits": 8, "type": "int", "strategy": "channel"}}}})",
         "8-bit \"int\""},
        {R"({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {}})",
         "pack-quantized"},
        {R"({"quant_method": "compressed-tensors", "config_groups": {"g": {"weights":
            {"num_bits": 8, "type": "float", "strategy": "group"}}}})",
         "\"group\""},
        {R"({"bits": 4})", "quant_method"},
    };
    for (const auto& [quant, needle] : cases) {
        auto c = ModelConfig::FromJson(ConfigWith(quant), "config.json");
        ASSERT_FALSE(c.ok()) << quant;
        EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status().message();
        EXPECT_NE(c.status().message().find("quantization_config"), std::string::npos) << c.status().message();
    }
}

// An FP8 checkpoint of a random model: every linear weight rounded to e4m3 with a scale of the given granularity
// ("tensor", "channel" or "block" of 16x16), written as F8_E4M3 + F32 weight_scale (weight_scale_inv for blocks),
// everything else F32. Returns the values each linear weight stands for (e4m3 value x scale), by name.
struct Fp8Checkpoint {
    ModelConfig config;
    std::map<std::string, std::vector<float>> values;
};

Fp8Checkpoint WriteFp8Checkpoint(const std::string& dir, const testutil::RandomModelOptions& o,
                                 const std::string& granularity, const std::string& quant_json,
                                 const std::vector<std::string>& keep_16bit = {}) {
    Fp8Checkpoint out;
    out.config = testutil::MakeConfig(o);
    std::vector<NamedTensor> tensors = testutil::MakeRandomTensors(out.config, o.dtype, o.seed);
    std::vector<NamedTensor> scales;
    std::vector<TensorToWrite> write;
    std::vector<std::vector<float>> keep;  // storage for the written values
    keep.reserve(tensors.size() * 2);
    const int B = 16;
    for (NamedTensor& t : tensors) {
        const bool linear = t.shape.size() == 2 && t.name.find("embed_tokens") == std::string::npos &&
                            t.name != "lm_head.weight" &&
                            std::find(keep_16bit.begin(), keep_16bit.end(), t.name) == keep_16bit.end();
        if (!linear) {
            write.push_back({t.name, DType::kF32, t.shape, t.data.data()});
            continue;
        }
        const int64_t rows = t.shape[0], cols = t.shape[1];
        std::vector<int64_t> sshape;
        int64_t br = rows, bc = cols;
        if (granularity == "channel") {
            br = 1;
            sshape = {rows, 1};
        } else if (granularity == "block") {
            br = bc = B;
            sshape = {(rows + B - 1) / B, (cols + B - 1) / B};
        } else {
            sshape = {};
        }
        const int64_t gr = (rows + br - 1) / br, gc = (cols + bc - 1) / bc;
        std::vector<float> s(static_cast<size_t>(gr * gc), 0.0f);
        for (int64_t r = 0; r < rows; ++r) {
            for (int64_t c = 0; c < cols; ++c) {
                float& m = s[static_cast<size_t>((r / br) * gc + c / bc)];
                m = std::max(m, std::fabs(t.data[static_cast<size_t>(r * cols + c)]));
            }
        }
        for (float& x : s) x = x / 448.0f;
        std::vector<float> q(t.data.size()), v(t.data.size());
        for (int64_t r = 0; r < rows; ++r) {
            for (int64_t c = 0; c < cols; ++c) {
                const size_t i = static_cast<size_t>(r * cols + c);
                const float sc = s[static_cast<size_t>((r / br) * gc + c / bc)];
                q[i] = Fp8E4M3ToFloat(FloatToFp8E4M3(t.data[i] / sc));  // exact in F8_E4M3 when written
                v[i] = q[i] * sc;
            }
        }
        out.values[t.name] = v;
        keep.push_back(std::move(q));
        write.push_back({t.name, DType::kF8E4M3, t.shape, keep.back().data()});
        keep.push_back(std::move(s));
        const std::string base = t.name.substr(0, t.name.size() - 6);
        write.push_back({base + (granularity == "block" ? "weight_scale_inv" : "weight_scale"), DType::kF32, sshape,
                         keep.back().data()});
    }
    OrderedJson j = out.config.ToJson();
    j["quantization_config"] = OrderedJson::parse(quant_json);
    EXPECT_TRUE(MakeDirs(dir).ok());
    EXPECT_TRUE(WriteFile(dir + "/config.json", DumpJson(j, 2)).ok());
    EXPECT_TRUE(WriteSafetensors(dir + "/model.safetensors", write).ok());
    auto parsed = ModelConfig::FromJson(DumpJson(j), "config.json");
    EXPECT_TRUE(parsed.ok()) << parsed.status().message();
    if (parsed.ok()) out.config = *parsed;
    return out;
}

// The rows of a loaded fused tensor, against the expected values of its parts stacked.
void ExpectRows(const Tensor& t, const std::vector<const std::vector<float>*>& parts, const std::string& what) {
    std::vector<float> want;
    for (const auto* p : parts) want.insert(want.end(), p->begin(), p->end());
    ASSERT_EQ(t.dtype, DType::kF32) << what;
    ASSERT_EQ(static_cast<size_t>(t.rows * t.cols), want.size()) << what;
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(t.f32()[i], want[i]) << what << " element " << i;
}

void ExpectFp8Weights(const Model& m, Fp8Checkpoint& ck, const std::string& where) {
    auto v = [&](int l, const char* s) { return &ck.values.at(LayerTensorName(l, s)); };
    for (int l = 0; l < m.config.num_layers; ++l) {
        const LayerWeights& lw = m.weights.layers[l];
        const std::string at = where + " layer " + std::to_string(l);
        if (m.config.HasKeys(l)) {
            ExpectRows(
                lw.w_qkv,
                {v(l, "self_attn.q_proj.weight"), v(l, "self_attn.k_proj.weight"), v(l, "self_attn.v_proj.weight")},
                at + " w_qkv");
        } else {
            ExpectRows(lw.w_vc, {v(l, "self_attn.v_proj.weight"), v(l, "v2_proj.weight")}, at + " w_vc");
        }
        ExpectRows(lw.w_o, {v(l, "self_attn.o_proj.weight")}, at + " w_o");
        ExpectRows(lw.w_gate_up, {v(l, "mlp.gate_proj.weight"), v(l, "mlp.up_proj.weight")}, at + " w_gate_up");
        ExpectRows(lw.w_down, {v(l, "mlp.down_proj.weight")}, at + " w_down");
    }
}

testutil::RandomModelOptions SmallGqaUniAttn() {
    testutil::RandomModelOptions o;
    o.hidden_size = 48;  // not a multiple of the 16-row blocks in every tensor: partial edge blocks
    o.intermediate_size = 88;
    o.num_layers = 3;
    o.num_heads = 6;
    o.num_kv_heads = 2;
    o.has_grouping = true;
    o.grouping_idx = 2;
    o.grouping_begin_idx = 1;
    o.grouping_end_idx = 3;  // layer 1 anchor, layer 2 reuse
    o.seed = 5;
    return o;
}

TEST(Fp8Checkpoint, PerTensorPerChannelAndBlockScalesLoadTheValuesTheyStandFor) {
    const std::map<std::string, std::string> quant = {
        {"tensor", R"({"quant_method": "fp8", "activation_scheme": "static"})"},
        {"channel", R"({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups":
            {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}}})"},
        {"block", R"({"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [16, 16]})"},
    };
    for (const auto& [granularity, q] : quant) {
        TempDir tmp;
        Fp8Checkpoint ck = WriteFp8Checkpoint(tmp.path(), SmallGqaUniAttn(), granularity, q);
        auto backend = MakeCpuBackend(1);
        for (int threads : {1, 3}) {
            LoadOptions lo;
            lo.num_threads = threads;
            lo.chunk_bytes = 1000;  // several rows per chunk, never a partial row
            auto m = Model::Load(tmp.path(), backend.get(), false, lo);
            ASSERT_TRUE(m.ok()) << granularity << ": " << m.status().message();
            EXPECT_EQ((*m)->weights.num_fp8_linear, 3 * 4) << granularity;
            ExpectFp8Weights(**m, ck, granularity + " threads " + std::to_string(threads));
        }
    }
}

TEST(Fp8Checkpoint, QuantizingAtLoadEqualsTheCheckpointQuantizedPerChannel) {
    // engine.quantization=fp8 on the 16/32-bit model gives the same weights, bit for bit, as the same model
    // quantized per output channel ahead of time; the embedding, lm_head and norms are left as they are.
    TempDir tmp;
    testutil::RandomModelOptions o = SmallGqaUniAttn();
    o.dtype = DType::kBF16;
    const ModelConfig c = testutil::MakeConfig(o);
    std::vector<NamedTensor> tensors = testutil::MakeRandomTensors(c, DType::kBF16, o.seed);
    ASSERT_TRUE(testutil::WriteModelDir(tmp.Sub("bf16"), c, tensors, DType::kBF16).ok());
    Fp8Checkpoint ck =
        WriteFp8Checkpoint(tmp.Sub("fp8"), o, "channel", R"({"quant_method": "fp8", "activation_scheme": "dynamic"})");
    auto backend = MakeCpuBackend(2);
    LoadOptions lo;
    lo.quantize_fp8 = true;
    auto m = Model::Load(tmp.path() + "/bf16", backend.get(), false, lo);
    ASSERT_TRUE(m.ok()) << m.status().message();
    ExpectFp8Weights(**m, ck, "quantized at load");
    auto plain = Model::Load(tmp.path() + "/bf16", backend.get(), false);
    ASSERT_TRUE(plain.ok());
    const ModelWeights& a = (*m)->weights;
    const ModelWeights& b = (*plain)->weights;
    auto same = [](const Tensor& x, const Tensor& y) {
        return x.rows == y.rows && x.cols == y.cols &&
               std::memcmp(x.data, y.data, static_cast<size_t>(x.rows * x.cols) * DTypeBytes(x.dtype)) == 0;
    };
    EXPECT_TRUE(same(a.embed, b.embed));
    EXPECT_TRUE(same(a.lm_head, b.lm_head));
    EXPECT_TRUE(same(a.layers[0].attn_norm, b.layers[0].attn_norm));
    EXPECT_FALSE(same(a.layers[0].w_down, b.layers[0].w_down));  // rounded: bf16 has more mantissa than e4m3
    EXPECT_EQ(a.num_fp8_linear, 12);
    EXPECT_EQ(b.num_fp8_linear, 0);
    // The fp8 linear weights are marked (the CPU's activation emulation keys on it); nothing else is.
    for (const LayerWeights& l : a.layers) EXPECT_TRUE(l.w_down.fp8_rows && l.w_gate_up.fp8_rows && l.w_o.fp8_rows);
    EXPECT_FALSE(a.embed.fp8_rows || a.lm_head.fp8_rows || b.layers[0].w_down.fp8_rows);
}

// MakeCpuBackend(n, fp8_activations=true): MatMul of 3+ rows by an fp8_rows weight rounds each activation row to
// e4m3 with s = amax / 448 first (the CUDA FP8 GEMMs' inputs); 1-2 rows (the GEMVs), other weights and shapes
// cuBLASLt's FP8 GEMMs do not take (a dimension not a multiple of 16: widened on CUDA) are exact.
TEST(Fp8Activations, TheCpuEmulationRoundsEachTokenAsTheFp8GemmsDo) {
    testutil::Rng rng(77);
    const int64_t in = 48, out = 32;
    auto emu = MakeCpuBackend(1, true);
    auto plain = MakeCpuBackend(1);
    std::vector<float> w(static_cast<size_t>(out * in));
    for (float& v : w) v = rng.Uniform(-1, 1);
    Tensor wt = MakeTensor(w.data(), DType::kF32, out, in);
    wt.fp8_rows = true;
    for (int64_t T : {1, 2, 3, 7}) {
        SCOPED_TRACE("T=" + std::to_string(T));
        std::vector<float> x(static_cast<size_t>(T * in)), q(x.size());
        for (float& v : x) v = rng.Uniform(-3, 3);
        x[5] = 1000.0f;  // row 0's scale follows its outlier; its small values round coarsely
        for (int64_t t = 0; t < T; ++t) {
            float amax = 0;
            for (int64_t i = 0; i < in; ++i) amax = std::max(amax, std::fabs(x[t * in + i]));
            const float s = amax / kFp8E4M3Max;
            for (int64_t i = 0; i < in; ++i) q[t * in + i] = Fp8E4M3ToFloat(FloatToFp8E4M3(x[t * in + i] / s)) * s;
        }
        auto mm = [&](Backend* be, std::vector<float> xs, const Tensor& weight) {
            std::vector<float> y(static_cast<size_t>(T * out));
            be->MatMul(MakeTensor(xs.data(), DType::kF32, T, in), weight, MakeTensor(y.data(), DType::kF32, T, out),
                       false);
            return y;
        };
        const std::vector<float> got = mm(emu.get(), x, wt);
        EXPECT_EQ(got, mm(plain.get(), T > 2 ? q : x, wt));
        if (T > 2) EXPECT_NE(got, mm(plain.get(), x, wt));
        Tensor not_fp8 = wt;
        not_fp8.fp8_rows = false;
        EXPECT_EQ(mm(emu.get(), x, not_fp8), mm(plain.get(), x, not_fp8));
        Tensor rows_24 = wt;  // 24 output rows: no FP8 GEMM on CUDA either
        rows_24.rows = 24;
        std::vector<float> y24(static_cast<size_t>(T * 24)), want24(y24.size());
        emu->MatMul(MakeTensor(x.data(), DType::kF32, T, in), rows_24, MakeTensor(y24.data(), DType::kF32, T, 24),
                    false);
        plain->MatMul(MakeTensor(x.data(), DType::kF32, T, in), rows_24, MakeTensor(want24.data(), DType::kF32, T, 24),
                      false);
        EXPECT_EQ(y24, want24);
    }
}

TEST(Fp8Checkpoint, BackendsThatTakeFp8GetTheBytesAndOneScalePerRow) {
    // A backend with HoldsFp8Weights (CUDA) gets e4m3 bytes and per-row scales whose product is, bit for bit, the
    // value the CPU oracle holds: from a per-tensor checkpoint (the scales of q, k and v land on their rows of the
    // fused tensor), a per-channel one, and rounding at load. Block-scaled tensors keep their values (16-bit).
    const std::map<std::string, std::string> quant = {
        {"tensor", R"({"quant_method": "fp8"})"},
        {"channel", R"({"quant_method": "fp8"})"},
        {"block", R"({"quant_method": "fp8", "weight_block_size": [16, 16]})"},
        {"at load", ""},
    };
    for (const auto& [granularity, q] : quant) {
        TempDir tmp;
        testutil::RandomModelOptions o = SmallGqaUniAttn();
        LoadOptions lo;
        lo.chunk_bytes = 700;
        if (granularity == "at load") {
            ASSERT_TRUE(testutil::WriteRandomModel(tmp.path(), o).ok());
            lo.quantize_fp8 = true;
        } else {
            WriteFp8Checkpoint(tmp.path(), o, granularity, q);
        }
        auto cpu = MakeCpuBackend(1);
        auto oracle = Model::Load(tmp.path(), cpu.get(), false, lo);
        ASSERT_TRUE(oracle.ok()) << oracle.status().message();
        testutil::StagingBackend staging(DType::kF16, /*fp8=*/true);
        auto stored = Model::Load(tmp.path(), &staging, false, lo);
        ASSERT_TRUE(stored.ok()) << stored.status().message();
        const bool native = granularity != "block";
        EXPECT_EQ((*stored)->weights.num_fp8_stored, native ? 12 : 0) << granularity;
        for (int l = 0; l < o.num_layers; ++l) {
            const LayerWeights& a = (*stored)->weights.layers[l];
            const LayerWeights& b = (*oracle)->weights.layers[l];
            const std::vector<std::pair<const Tensor*, const Tensor*>> pairs = {
                {l == 2 ? &a.w_vc : &a.w_qkv, l == 2 ? &b.w_vc : &b.w_qkv},
                {&a.w_o, &b.w_o},
                {&a.w_gate_up, &b.w_gate_up},
                {&a.w_down, &b.w_down}};
            for (const auto& [s, want] : pairs) {
                ASSERT_EQ(s->rows, want->rows);
                if (!native) {
                    ASSERT_EQ(s->dtype, DType::kF16);
                    ASSERT_EQ(s->scale, nullptr);
                    continue;
                }
                ASSERT_EQ(s->dtype, DType::kF8E4M3) << granularity;
                ASSERT_NE(s->scale, nullptr);
                const auto* bytes = static_cast<const uint8_t*>(s->data);
                for (int64_t r = 0; r < s->rows; ++r) {
                    for (int64_t c = 0; c < s->cols; ++c) {
                        ASSERT_EQ(Fp8E4M3ToFloat(bytes[r * s->ld + c]) * s->scale[r], want->f32()[r * want->ld + c])
                            << granularity << " layer " << l << " row " << r << " col " << c;
                    }
                }
                // Rows() keeps the scales with their rows.
                EXPECT_EQ(s->Rows(3, 2).scale, s->scale + 3);
            }
        }
    }
}

TEST(Fp8Checkpoint, IgnoredLayersStaySixteenBitAndKvScalesAreRead) {
    TempDir tmp;
    testutil::RandomModelOptions o = SmallGqaUniAttn();
    const std::string down0 = LayerTensorName(0, "mlp.down_proj.weight");
    Fp8Checkpoint ck =
        WriteFp8Checkpoint(tmp.path(), o, "tensor",
                           R"({"quant_method": "fp8", "ignored_layers": ["model.layers.0.mlp.down_proj"]})", {down0});
    // Add KV scales: rewrite the file with them (k_scale on every layer, reuse layers' unused).
    auto set = TensorSet::OpenDir(tmp.path());
    ASSERT_TRUE(set.ok());
    std::vector<std::vector<float>> data;
    std::vector<TensorToWrite> write;
    data.reserve(set->Names().size() + 6);
    for (const std::string& n : set->Names()) {
        const TensorView* v = set->Find(n);
        data.emplace_back(static_cast<size_t>(v->numel()));
        v->ToFloat(data.back().data());
        write.push_back({n, v->dtype, v->shape, data.back().data()});
    }
    for (int l = 0; l < o.num_layers; ++l) {
        data.push_back({0.25f * static_cast<float>(l + 1)});
        // Layer 1 in llm-compressor's older spelling.
        write.push_back({LayerTensorName(l, l == 1 ? "self_attn.k_proj.output_scale" : "self_attn.k_scale"),
                         DType::kF32,
                         {},
                         data.back().data()});
        data.push_back({0.5f * static_cast<float>(l + 1)});
        write.push_back({LayerTensorName(l, "self_attn.v_scale"), DType::kF32, {}, data.back().data()});
    }
    ASSERT_TRUE(WriteSafetensors(tmp.path() + "/model.safetensors", write).ok());
    auto backend = MakeCpuBackend(1);
    auto m = Model::Load(tmp.path(), backend.get(), false);
    ASSERT_TRUE(m.ok()) << m.status().message();
    EXPECT_EQ((*m)->weights.num_fp8_linear, 11);
    const auto& w = (*m)->weights;
    ASSERT_EQ(w.kv_k_scale.size(), 3u);
    EXPECT_EQ(w.kv_k_scale[0], 0.25f);
    EXPECT_EQ(w.kv_k_scale[1], 0.5f);
    EXPECT_EQ(w.kv_k_scale[2], 0.0f);  // layer 2 reuses: no K
    EXPECT_EQ(w.kv_v_scale[2], 1.5f);
    // FindKvScales hands them out per head.
    auto s = FindKvScales(**m, backend.get());
    ASSERT_TRUE(s.ok()) << s.status().message();
    EXPECT_EQ(s->k[1], std::vector<float>(2, 0.5f));
    EXPECT_TRUE(s->k[2].empty());
    EXPECT_EQ(s->v[2], std::vector<float>(2, 1.5f));
}

// Writes the checkpoint of WriteFp8Checkpoint, then applies `edit` to its tensors (by name) and config.
Status LoadEdited(
    const std::string& dir,
    const std::function<void(std::vector<TensorToWrite>&, OrderedJson&, std::vector<std::vector<float>>&)>& edit) {
    WriteFp8Checkpoint(dir, SmallGqaUniAttn(), "channel", R"({"quant_method": "fp8"})");
    std::vector<std::vector<float>> data;
    std::vector<TensorToWrite> write;
    {
        auto set = TensorSet::OpenDir(dir);
        if (!set.ok()) return set.status();
        data.reserve(set->Names().size() + 8);
        for (const std::string& n : set->Names()) {
            const TensorView* v = set->Find(n);
            data.emplace_back(static_cast<size_t>(v->numel()));
            v->ToFloat(data.back().data());
            write.push_back({n, v->dtype, v->shape, data.back().data()});
        }
    }
    auto text = ReadFile(dir + "/config.json");
    if (!text.ok()) return text.status();
    OrderedJson j = OrderedJson::parse(*text);
    edit(write, j, data);
    UA_RETURN_IF_ERROR(WriteFile(dir + "/config.json", DumpJson(j, 2)));
    UA_RETURN_IF_ERROR(WriteSafetensors(dir + "/model.safetensors", write));
    auto backend = MakeCpuBackend(1);
    auto m = Model::Load(dir, backend.get(), false);
    return m.ok() ? Status::Ok() : m.status();
}

TEST(Fp8Checkpoint, BrokenCheckpointsAreClearErrors) {
    auto find = [](std::vector<TensorToWrite>& w, const std::string& name) -> TensorToWrite& {
        for (TensorToWrite& t : w) {
            if (t.name == name) return t;
        }
        ADD_FAILURE() << name;
        return w[0];
    };
    const std::string q0 = LayerTensorName(0, "self_attn.q_proj.weight");
    struct Case {
        std::string what, needle;
        std::function<void(std::vector<TensorToWrite>&, OrderedJson&, std::vector<std::vector<float>>&)> edit;
    };
    const std::vector<Case> cases = {
        {"no weight_scale", "has no model.layers.0.self_attn.q_proj.weight_scale",
         [&](auto& w, auto&, auto&) {
             w.erase(std::remove_if(w.begin(), w.end(), [&](auto& t) { return t.name == q0 + "_scale"; }), w.end());
         }},
        {"scale shape", "expected [] or [1] (per tensor), [48] or [48, 1]",
         [&](auto& w, auto&, auto&) {
             find(w, q0 + "_scale").shape = {24, 2};
         }},
        {"negative scale", "negative or non-finite scale",
         [&](auto& w, auto&, auto& data) {
             data.push_back(std::vector<float>(48, -1.0f));
             find(w, q0 + "_scale").data = data.back().data();
         }},
        {"no quantization_config", "config.json has no quantization_config",
         [&](auto&, OrderedJson& j, auto&) { j.erase("quantization_config"); }},
        {"fp8 embedding", "fp8 is supported for linear layers' weights only",
         [&](auto& w, auto&, auto&) { find(w, "model.embed_tokens.weight").dtype = DType::kF8E4M3; }},
        {"KV scales for some layers", "exist for 1 of 3 layers",
         [&](auto& w, auto&, auto& data) {
             data.push_back({0.5f});
             w.push_back({LayerTensorName(0, "self_attn.k_scale"), DType::kF32, {}, data.back().data()});
             w.push_back({LayerTensorName(0, "self_attn.v_scale"), DType::kF32, {}, data.back().data()});
         }},
        {"zero KV scale", "must be a positive finite scale",
         [&](auto& w, auto&, auto& data) {
             data.push_back({0.0f});
             for (int l = 0; l < 3; ++l) {
                 w.push_back({LayerTensorName(l, "self_attn.kv_scale"), DType::kF32, {1}, data.back().data()});
             }
         }},
    };
    for (const Case& c : cases) {
        TempDir tmp;
        const Status s = LoadEdited(tmp.path(), c.edit);
        ASSERT_FALSE(s.ok()) << c.what;
        EXPECT_NE(s.message().find(c.needle), std::string::npos) << c.what << ": " << s.message();
    }
}

TEST(Fp8Engine, ChoicesAreCheckedBeforeLoading) {
    EngineConfig c;
    c.backend = "cpu";
    c.quantization = "fp8";
    c.kv_cache_dtype = "fp8_e4m3";
    auto ok = ResolveFp8(c);
    ASSERT_TRUE(ok.ok());
    EXPECT_TRUE(ok->weights && ok->kv);
    c.kv_cache_dtype = "fp8";
    EXPECT_TRUE(ResolveFp8(c)->kv);
    c.backend = "cuda";  // fp8 weights and the fp8 KV cache (its CUDA-core attention kernels) alike
    auto cuda = ResolveFp8(c);
    ASSERT_TRUE(cuda.ok()) << cuda.status().message();
    EXPECT_TRUE(cuda->weights && cuda->kv);
    c.kv_cache_dtype = "fp8_e4m3";
    EXPECT_TRUE(ResolveFp8(c)->kv);
    c.kv_cache_dtype = "fp8_e5m2";  // still refused by name on cuda
    EXPECT_EQ(ResolveFp8(c).status().code(), StatusCode::kUnimplemented);
    c.kv_cache_dtype = "auto";
    auto cuda_weights = ResolveFp8(c);
    ASSERT_TRUE(cuda_weights.ok()) << cuda_weights.status().message();
    EXPECT_TRUE(cuda_weights->weights);
    EXPECT_FALSE(cuda_weights->kv);
    c.backend = "cpu";
    c.quantization = "int4";
    EXPECT_EQ(ResolveFp8(c).status().code(), StatusCode::kInvalidArgument);
    c.quantization = "none";
    c.kv_cache_dtype = "fp8_e5m2";
    EXPECT_EQ(ResolveFp8(c).status().code(), StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace uniattn
