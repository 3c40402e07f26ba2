// Checkpoint loading (model/weights.cc LoadWeights, uniattn/dtype.h ConvertDType): the parallel, chunked,
// direct-conversion loader gives bit for bit the weights of the original path (each tensor widened to fp32
// with TensorView::ToFloat, then rounded with FloatToHalf / FloatToBF16), for every source dtype, every
// target dtype, any thread count and any chunk size, through the CPU backend's in-place uploader and the
// default staging one (Backend::MakeUploader).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "engine/test_models.h"
#include "gtest/gtest.h"
#include "model/weights.h"
#include "staging_backend.h"
#include "uniattn/dtype.h"
#include "uniattn/safetensors.h"

namespace uniattn {
namespace {

using testutil::Rng;
using testutil::StagingBackend;
using testutil::TempDir;

bool IsHalfNaN(uint16_t h) { return (h & 0x7C00) == 0x7C00 && (h & 0x3FF) != 0; }
bool IsBF16NaN(uint16_t b) { return (b & 0x7F80) == 0x7F80 && (b & 0x7F) != 0; }

// The original conversion of one value: widen to float, round to the target.
std::vector<uint8_t> ViaFloat(float f, DType to) {
    std::vector<uint8_t> out(static_cast<size_t>(DTypeBytes(to)));
    uint16_t h = 0;
    switch (to) {
        case DType::kF32:
            std::memcpy(out.data(), &f, 4);
            return out;
        case DType::kF16:
            h = FloatToHalf(f);
            break;
        case DType::kBF16:
            h = FloatToBF16(f);
            break;
        case DType::kF8E4M3:
            out[0] = FloatToFp8E4M3(f);
            return out;
    }
    std::memcpy(out.data(), &h, 2);
    return out;
}

float Widen(const uint8_t* p, DType from) {
    uint16_t h;
    float f;
    switch (from) {
        case DType::kF32:
            std::memcpy(&f, p, 4);
            return f;
        case DType::kF16:
            std::memcpy(&h, p, 2);
            return HalfToFloat(h);
        case DType::kBF16:
            std::memcpy(&h, p, 2);
            return BF16ToFloat(h);
        case DType::kF8E4M3:
            return Fp8E4M3ToFloat(p[0]);
    }
    return 0;
}

constexpr DType kDTypes[] = {DType::kF32, DType::kF16, DType::kBF16};

// Every fp16 and bf16 bit pattern into every dtype, from and to unaligned addresses.
TEST(ConvertDType, EverySixteenBitValueMatchesTheRoundTripThroughFloat) {
    for (DType from : {DType::kF16, DType::kBF16}) {
        std::vector<uint8_t> src(2 * 65536 + 1);
        for (uint32_t v = 0; v < 65536; ++v) {
            const auto h = static_cast<uint16_t>(v);
            std::memcpy(src.data() + 1 + 2 * v, &h, 2);
        }
        for (DType to : kDTypes) {
            const int out_bytes = DTypeBytes(to);
            std::vector<uint8_t> dst(static_cast<size_t>(out_bytes) * 65536 + 3);
            ConvertDType(src.data() + 1, from, dst.data() + 3, to, 65536);
            int mismatches = 0;
            for (uint32_t v = 0; v < 65536 && mismatches < 5; ++v) {
                const uint8_t* got = dst.data() + 3 + static_cast<size_t>(out_bytes) * v;
                const auto h = static_cast<uint16_t>(v);
                if (from == to) {
                    // Equal dtypes are copied; the round trip agrees except on NaN payloads, which it rewrites.
                    uint16_t g;
                    std::memcpy(&g, got, 2);
                    EXPECT_EQ(g, h);
                    const std::vector<uint8_t> old = ViaFloat(Widen(src.data() + 1 + 2 * v, from), to);
                    const bool nan = from == DType::kF16 ? IsHalfNaN(h) : IsBF16NaN(h);
                    if (!nan) EXPECT_EQ(std::memcmp(old.data(), got, 2), 0) << "0x" << std::hex << v;
                    continue;
                }
                const std::vector<uint8_t> want = ViaFloat(Widen(src.data() + 1 + 2 * v, from), to);
                if (std::memcmp(want.data(), got, static_cast<size_t>(out_bytes)) != 0) {
                    ++mismatches;
                    ADD_FAILURE() << DTypeName(from) << " -> " << DTypeName(to) << ": 0x" << std::hex << v;
                }
            }
        }
    }
}

// fp32 sources: special values (zeros, infinities, NaNs, subnormals, rounding ties, overflow edges) and a
// million seeded random bit patterns.
TEST(ConvertDType, Fp32ValuesMatchTheScalarRounding) {
    std::vector<uint32_t> bits = {0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC12345,
                                  0x00000001, 0x807FFFFF, 0x33000000, 0x33000001, 0x387FE000, 0x38800000, 0x477FEFFF,
                                  0x477FF000, 0x477FF001, 0x7F7FFFFF, 0x3F808000, 0x3F818000, 0x3F800001, 0x3F807FFF};
    Rng rng(7);
    for (int i = 0; i < (1 << 20); ++i) bits.push_back(static_cast<uint32_t>(rng.Next()));
    const auto n = static_cast<int64_t>(bits.size());
    std::vector<uint8_t> src(4 * bits.size() + 2);
    std::memcpy(src.data() + 2, bits.data(), 4 * bits.size());
    for (DType to : kDTypes) {
        const int out_bytes = DTypeBytes(to);
        std::vector<uint8_t> dst(static_cast<size_t>(out_bytes * n) + 1);
        ConvertDType(src.data() + 2, DType::kF32, dst.data() + 1, to, n);
        int mismatches = 0;
        for (int64_t i = 0; i < n && mismatches < 5; ++i) {
            float f;
            std::memcpy(&f, &bits[i], 4);
            const std::vector<uint8_t> want = ViaFloat(f, to);
            if (std::memcmp(want.data(), dst.data() + 1 + out_bytes * i, static_cast<size_t>(out_bytes)) != 0) {
                ++mismatches;
                ADD_FAILURE() << "F32 -> " << DTypeName(to) << ": 0x" << std::hex << bits[i];
            }
        }
    }
}

// What the original loader put in a stacked tensor: every part widened to fp32, then rounded to `dtype`.
std::vector<uint8_t> OldStack(const TensorSet& set, const std::vector<std::string>& names, DType dtype) {
    std::vector<float> f;
    for (const std::string& name : names) {
        const TensorView* v = set.Find(name);
        EXPECT_NE(v, nullptr) << name;
        if (v == nullptr) return {};
        const size_t at = f.size();
        f.resize(at + static_cast<size_t>(v->numel()));
        v->ToFloat(f.data() + at);
    }
    std::vector<uint8_t> out;
    for (float x : f) {
        const std::vector<uint8_t> b = ViaFloat(x, dtype);
        out.insert(out.end(), b.begin(), b.end());
    }
    return out;
}

void ExpectTensor(const Tensor& t, const std::vector<uint8_t>& want, const std::string& what) {
    ASSERT_EQ(static_cast<size_t>(t.rows * t.cols * DTypeBytes(t.dtype)), want.size()) << what;
    EXPECT_EQ(std::memcmp(t.data, want.data(), want.size()), 0) << what;
}

// Every loaded tensor against the original path.
void ExpectOldWeights(const TensorSet& set, const ModelConfig& c, const ModelWeights& w, DType wt,
                      const std::string& where) {
    auto name = [](int l, const char* s) { return LayerTensorName(l, s); };
    ExpectTensor(w.embed, OldStack(set, {"model.embed_tokens.weight"}, wt), where + " embed");
    ExpectTensor(w.lm_head, OldStack(set, {"lm_head.weight"}, wt), where + " lm_head");
    ExpectTensor(w.final_norm, OldStack(set, {"model.norm.weight"}, DType::kF32), where + " norm");
    for (int l = 0; l < c.num_layers; ++l) {
        const LayerWeights& lw = w.layers[l];
        const std::string at = where + " layer " + std::to_string(l);
        ExpectTensor(lw.attn_norm, OldStack(set, {name(l, "input_layernorm.weight")}, DType::kF32), at + " attn_norm");
        ExpectTensor(lw.ffn_norm, OldStack(set, {name(l, "post_attention_layernorm.weight")}, DType::kF32),
                     at + " ffn_norm");
        ExpectTensor(lw.w_qkv,
                     OldStack(set,
                              {name(l, "self_attn.q_proj.weight"), name(l, "self_attn.k_proj.weight"),
                               name(l, "self_attn.v_proj.weight")},
                              wt),
                     at + " w_qkv");
        ExpectTensor(lw.w_o, OldStack(set, {name(l, "self_attn.o_proj.weight")}, wt), at + " w_o");
        ExpectTensor(lw.w_gate_up, OldStack(set, {name(l, "mlp.gate_proj.weight"), name(l, "mlp.up_proj.weight")}, wt),
                     at + " w_gate_up");
        ExpectTensor(lw.w_down, OldStack(set, {name(l, "mlp.down_proj.weight")}, wt), at + " w_down");
        if (c.qkv_bias) {
            ExpectTensor(lw.b_qkv,
                         OldStack(set,
                                  {name(l, "self_attn.q_proj.bias"), name(l, "self_attn.k_proj.bias"),
                                   name(l, "self_attn.v_proj.bias")},
                                  DType::kF32),
                         at + " b_qkv");
        }
        if (c.o_bias) ExpectTensor(lw.b_o, OldStack(set, {name(l, "self_attn.o_proj.bias")}, DType::kF32), at + " b_o");
    }
}

// A Llama model with biases whose tensors are stored in fp16, bf16 and fp32 in turn (fused tensors mix them).
ModelConfig WriteMixedModel(const std::string& dir, int vocab, int hidden) {
    testutil::RandomModelOptions o;
    o.attention_bias = true;
    o.vocab_size = vocab;
    o.hidden_size = hidden;
    o.num_heads = 4;
    o.num_kv_heads = 2;
    o.intermediate_size = 2 * hidden + 8;
    o.num_layers = 2;
    o.seed = 11;
    const ModelConfig c = testutil::MakeConfig(o);
    std::vector<testutil::NamedTensor> tensors = testutil::MakeRandomTensors(c, DType::kF32, o.seed);
    std::vector<TensorToWrite> write;
    for (size_t i = 0; i < tensors.size(); ++i) {
        write.push_back({tensors[i].name, kDTypes[i % 3], tensors[i].shape, tensors[i].data.data()});
    }
    EXPECT_TRUE(MakeDirs(dir).ok());
    EXPECT_TRUE(WriteSafetensors(dir + "/model.safetensors", write).ok());
    return c;
}

TEST(LoadWeights, AnyThreadsAndChunksGiveTheOriginalBitsForEveryTargetDType) {
    TempDir tmp;
    const std::string dir = tmp.Sub("mixed");
    const ModelConfig c = WriteMixedModel(dir, 97, 48);
    auto set = TensorSet::OpenDir(dir);
    ASSERT_TRUE(set.ok()) << set.status().ToString();
    // Chunks from one element (and odd sizes that cut parts and elements' neighbours anywhere) to the default.
    const size_t chunk_sizes[] = {4, 6, 100, 1000, size_t{16} << 20};
    for (int threads : {1, 3, 8}) {
        for (size_t chunk : chunk_sizes) {
            LoadOptions options;
            options.num_threads = threads;
            options.chunk_bytes = chunk;
            const std::string where = std::to_string(threads) + " threads, " + std::to_string(chunk) + " B chunks";
            {
                std::unique_ptr<Backend> cpu = MakeCpuBackend(1);
                auto w = LoadWeights(*set, c, cpu.get(), options);
                ASSERT_TRUE(w.ok()) << w.status().ToString();
                ExpectOldWeights(*set, c, *w, DType::kF32, "cpu, " + where);
                EXPECT_EQ(w->load.num_threads, threads);
            }
            for (DType wt : kDTypes) {
                StagingBackend staging(wt);
                auto w = LoadWeights(*set, c, &staging, options);
                ASSERT_TRUE(w.ok()) << w.status().ToString();
                ExpectOldWeights(*set, c, *w, wt, std::string("staging ") + DTypeName(wt) + ", " + where);
                if (chunk == 4) EXPECT_GT(staging.copies(), 1000);  // one copy per chunk: the tensors were split
            }
        }
    }
}

// Tensors larger than the per-thread conversion scratch (256 KiB) and than one chunk.
TEST(LoadWeights, LargeTensorsSpanScratchAndChunks) {
    TempDir tmp;
    const std::string dir = tmp.Sub("large");
    const ModelConfig c = WriteMixedModel(dir, 4099, 64);  // embed [4099, 64]: 512 KiB as fp16
    auto set = TensorSet::OpenDir(dir);
    ASSERT_TRUE(set.ok()) << set.status().ToString();
    for (size_t chunk : {size_t{96} << 10, size_t{16} << 20}) {
        for (DType wt : kDTypes) {
            LoadOptions options;
            options.num_threads = 4;
            options.chunk_bytes = chunk;
            StagingBackend staging(wt);
            auto w = LoadWeights(*set, c, &staging, options);
            ASSERT_TRUE(w.ok()) << w.status().ToString();
            ExpectOldWeights(*set, c, *w, wt, std::string("staging ") + DTypeName(wt));
            int64_t file_bytes = 0;
            for (const std::string& n : set->Names()) file_bytes += static_cast<int64_t>(set->Find(n)->nbytes);
            EXPECT_EQ(w->load.file_bytes, file_bytes);
        }
    }
}

TEST(LoadWeights, DefaultThreadsAreHardwareThreadsCapped) {
    TempDir tmp;
    const std::string dir = tmp.Sub("m");
    const ModelConfig c = WriteMixedModel(dir, 97, 48);
    auto set = TensorSet::OpenDir(dir);
    ASSERT_TRUE(set.ok());
    std::unique_ptr<Backend> cpu = MakeCpuBackend(1);
    auto w = LoadWeights(*set, c, cpu.get());
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    const int hw = static_cast<int>(std::thread::hardware_concurrency());
    EXPECT_EQ(w->load.num_threads, std::max(1, std::min(hw, kMaxLoadThreads)));
    ExpectOldWeights(*set, c, *w, DType::kF32, "default options");
}

// A file cut short after it was opened is a read error naming the file, not a crash (the loader reads with
// pread, so no SIGBUS from the mapping).
TEST(LoadWeights, FileTruncatedAfterOpenIsDataLoss) {
    TempDir tmp;
    const std::string dir = tmp.Sub("cut");
    const ModelConfig c = WriteMixedModel(dir, 97, 48);
    auto set = TensorSet::OpenDir(dir);
    ASSERT_TRUE(set.ok());
    ASSERT_EQ(::truncate((dir + "/model.safetensors").c_str(), 4096), 0);
    for (int threads : {1, 4}) {
        LoadOptions options;
        options.num_threads = threads;
        options.chunk_bytes = 512;
        std::unique_ptr<Backend> cpu = MakeCpuBackend(1);
        auto w = LoadWeights(*set, c, cpu.get(), options);
        ASSERT_FALSE(w.ok());
        EXPECT_EQ(w.status().code(), StatusCode::kDataLoss) << w.status().ToString();
        EXPECT_NE(w.status().message().find("model.safetensors"), std::string::npos) << w.status().ToString();
    }
}

}  // namespace
}  // namespace uniattn
