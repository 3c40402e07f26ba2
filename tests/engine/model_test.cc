// The model end to end: greedy text on the pinned default model (stories15M), random models of every
// supported layout against a naive float64 forward pass, dtypes and shards, and every kind of bad model
// directory, each of which must give a Status naming the file (and tensor) at fault.
#include "model/model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "engine/reference_model.h"
#include "engine/test_models.h"
#include "model/session.h"
#include "util/file.h"

namespace uniattn {
namespace {

using testutil::NamedTensor;
using testutil::RandomModelOptions;
using testutil::TempDir;

int Argmax(const float* logits, int n) { return static_cast<int>(std::max_element(logits, logits + n) - logits); }

// ---------------------------------------------------------------------------------------------------------
// stories15M

class Stories15MTest : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        // One thread: these tests run ~1,500 decode steps, and OpenMP's spin-waiting makes two threads several
        // times slower whenever other processes share the two cores (ctest -j, parallel builds). The ops and
        // random-model tests cover the multi-threaded paths.
        backend_ = MakeCpuBackend(1).release();
        auto model = Model::Load(testutil::DefaultModelDir(), backend_);
        if (model.ok()) {
            model_ = std::move(model).value().release();
        } else {
            load_error_ = new std::string(model.status().ToString());
        }
    }
    static void TearDownTestSuite() {
        delete model_;
        delete backend_;
        delete load_error_;
        model_ = nullptr, backend_ = nullptr, load_error_ = nullptr;
    }
    void SetUp() override {
        ASSERT_NE(model_, nullptr) << testutil::kMissingDefaultModel << " (" << *load_error_ << ")";
    }

    std::unique_ptr<Session> NewSession(int block_size = 16, int max_chunk = 256) {
        auto s = Session::Create(model_, backend_, block_size, max_chunk);
        EXPECT_TRUE(s.ok()) << s.status().ToString();
        return std::move(s).value();
    }

    // Greedy decoding after `prompt`: up to `max_new` tokens (fewer when the context fills up). Every logit
    // must be finite.
    std::vector<int32_t> Greedy(Session& session, const std::vector<int32_t>& prompt, int max_new) {
        const int vocab = model_->config.vocab_size;
        std::vector<float> logits;
        Status st = session.Append(prompt, false, &logits);
        EXPECT_TRUE(st.ok()) << st.ToString();
        std::vector<int32_t> out;
        while (st.ok() && static_cast<int>(out.size()) < max_new) {
            EXPECT_EQ(logits.size(), static_cast<size_t>(vocab));
            const auto finite = std::count_if(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); });
            EXPECT_EQ(finite, vocab) << "non-finite logits after " << out.size() << " tokens";
            out.push_back(Argmax(logits.data(), vocab));
            if (session.length() == session.capacity()) break;
            st = session.Append({out.back()}, false, &logits);
            EXPECT_TRUE(st.ok()) << st.ToString();
        }
        return out;
    }

    static Backend* backend_;
    static Model* model_;
    static std::string* load_error_;
};

Backend* Stories15MTest::backend_ = nullptr;
Model* Stories15MTest::model_ = nullptr;
std::string* Stories15MTest::load_error_ = nullptr;

TEST_F(Stories15MTest, Config) {
    const ModelConfig& c = model_->config;
    EXPECT_EQ(c.vocab_size, 32000);
    EXPECT_EQ(c.hidden_size, 288);
    EXPECT_EQ(c.num_layers, 6);
    EXPECT_EQ(c.num_heads, 6);
    EXPECT_EQ(c.num_kv_heads, 6);
    EXPECT_EQ(c.max_position_embeddings, 256);
    EXPECT_TRUE(c.tie_word_embeddings);
}

// The acceptance test of issue 2: the reference llama2.c greedy output.
TEST_F(Stories15MTest, GreedyOnceUponATime) {
    const std::vector<int32_t> prompt = model_->tokenizer->Encode("Once upon a time", true);
    ASSERT_EQ(prompt, (std::vector<int32_t>{1, 9038, 2501, 263, 931}));
    auto session = NewSession();
    const std::vector<int32_t> want = {29892, 727,   471, 263,  2217, 7826, 4257, 365,  2354, 29889,
                                       2296,  18012, 304, 1708, 5377, 297,  278,  6575, 845,  457};
    EXPECT_EQ(Greedy(*session, prompt, 20), want);
    EXPECT_EQ(model_->tokenizer->Decode(want),
              ", there was a little girl named Lily. She loved to play outside in the sunshine");
}

// Long generations to the end of the context, from prompts with unicode, emoji and newlines; the session
// refuses to grow past max_position_embeddings with a status, not a crash.
TEST_F(Stories15MTest, OtherPromptsRunTo200Tokens) {
    const char* prompts[] = {
        "Lily and Ben were",
        "The little dog saw a big red ball. He",
        "One day, a girl named Zo\u00eb found a \U0001F408 in the garden.\nShe",
        "\n",
        "Tom said, \"Let's go to the park!\"\t",
    };
    for (const char* text : prompts) {
        SCOPED_TRACE(text);
        auto session = NewSession();
        const std::vector<int32_t> prompt = model_->tokenizer->Encode(text, true);
        const std::vector<int32_t> out = Greedy(*session, prompt, 200);
        EXPECT_EQ(out.size(), 200u);
        for (int32_t id : out) ASSERT_TRUE(id >= 0 && id < model_->config.vocab_size);
        EXPECT_FALSE(model_->tokenizer->Decode(out).empty());
    }
    auto session = NewSession();
    const std::vector<int32_t> out = Greedy(*session, {1}, 1000);
    EXPECT_EQ(session->length(), 256);
    EXPECT_EQ(out.size(), 256u);  // 255 appended after BOS, and the logits of the full context give one more
    std::vector<float> logits;
    const Status st = session->Append({out.back()}, false, &logits);
    EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.ToString();
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
    EXPECT_EQ(a.size(), b.size());
    float m = 0;
    for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) m = std::max(m, std::abs(a[i] - b[i]));
    return m;
}

// Chunked prefill (chunks of 7 over blocks of 5, so chunks and blocks straddle each other) gives the same
// logits for every prompt position as one chunk; so does token-by-token decode.
TEST_F(Stories15MTest, ChunkedPrefillMatchesOneChunk) {
    const std::vector<int32_t> prompt = model_->tokenizer->Encode(
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine. One day, "
        "she saw a big, red ball in the park.",
        true);
    ASSERT_GT(prompt.size(), 30u);
    std::vector<float> whole, chunked, stepped, step_logits;
    ASSERT_TRUE(NewSession(16, 256)->Append(prompt, true, &whole).ok());
    ASSERT_TRUE(NewSession(5, 7)->Append(prompt, true, &chunked).ok());
    auto one = NewSession(3, 1);
    for (int32_t id : prompt) {
        ASSERT_TRUE(one->Append({id}, false, &step_logits).ok());
        stepped.insert(stepped.end(), step_logits.begin(), step_logits.end());
    }
    ASSERT_EQ(whole.size(), prompt.size() * model_->config.vocab_size);
    EXPECT_LE(MaxAbsDiff(whole, chunked), 1e-4f);
    EXPECT_LE(MaxAbsDiff(whole, stepped), 1e-4f);
}

// ---------------------------------------------------------------------------------------------------------
// Random models against a naive float64 forward pass

using testref::Matrix;
using testref::ReferenceForward;

std::vector<int32_t> RandomTokens(uint64_t seed, int n, int vocab) {
    testutil::Rng rng(seed);
    std::vector<int32_t> t(n);
    for (int32_t& x : t) x = rng.Int(vocab);
    return t;
}

class RandomModelTest : public ::testing::Test {
  protected:
    void SetUp() override { backend_ = MakeCpuBackend(2); }

    std::unique_ptr<Model> Load(const std::string& dir) {
        auto m = Model::Load(dir, backend_.get(), /*load_tokenizer=*/false);
        EXPECT_TRUE(m.ok()) << m.status().ToString();
        return m.ok() ? std::move(m).value() : nullptr;
    }

    // All-position logits of `tokens`, appended in chunks of `max_chunk` over blocks of `block_size`.
    std::vector<float> Logits(const Model& model, const std::vector<int32_t>& tokens, int block_size, int max_chunk) {
        auto s = Session::Create(&model, backend_.get(), block_size, max_chunk);
        EXPECT_TRUE(s.ok()) << s.status().ToString();
        std::vector<float> logits;
        const Status st = (*s)->Append(tokens, true, &logits);
        EXPECT_TRUE(st.ok()) << st.ToString();
        return logits;
    }

    std::unique_ptr<Backend> backend_;
};

struct LayoutCase {
    const char* name;
    RandomModelOptions options;
};

std::vector<LayoutCase> LayoutCases() {
    std::vector<LayoutCase> cases;
    RandomModelOptions o;
    cases.push_back({"gqa 6/2, untied", o});
    o.num_kv_heads = 3;
    o.tie_word_embeddings = true;
    cases.push_back({"gqa 6/3, tied", o});
    o = {};
    o.num_heads = o.num_kv_heads = 4;
    o.hidden_size = 40, o.head_dim = 6, o.num_layers = 3, o.seed = 3;
    cases.push_back({"mha 4x6, head_dim != hidden/heads", o});
    o = {};
    o.num_heads = 8, o.num_kv_heads = 1, o.hidden_size = 64, o.rope_theta = 500000.0, o.seed = 4;
    cases.push_back({"mqa 8/1, theta 5e5", o});
    o = {};
    o.num_layers = 5, o.has_grouping = true, o.grouping_idx = 2, o.grouping_begin_idx = 1, o.grouping_end_idx = 5;
    o.seed = 5;
    cases.push_back({"uniattn G=2 B=1 E=5 (layers: normal anchor reuse anchor reuse), gqa 6/2", o});
    return cases;
}

TEST_F(RandomModelTest, MatchesFloat64Reference) {
    for (const LayoutCase& lc : LayoutCases()) {
        SCOPED_TRACE(lc.name);
        TempDir tmp;
        const ModelConfig config = testutil::MakeConfig(lc.options);
        const std::vector<NamedTensor> tensors = testutil::MakeRandomTensors(config, lc.options.dtype, lc.options.seed);
        ASSERT_TRUE(testutil::WriteModelDir(tmp.path(), config, tensors, lc.options.dtype).ok());
        auto model = Load(tmp.path());
        ASSERT_NE(model, nullptr);
        EXPECT_EQ(model->config.layer_kinds, config.layer_kinds);
        const std::vector<int32_t> tokens = RandomTokens(11, 23, config.vocab_size);
        const Matrix ref = ReferenceForward(config, tensors, tokens);
        double scale = 1.0;
        for (double v : ref) scale = std::max(scale, std::abs(v));
        for (auto [block_size, max_chunk] : {std::pair{16, 256}, std::pair{3, 7}, std::pair{1, 1}}) {
            const std::vector<float> got = Logits(*model, tokens, block_size, max_chunk);
            ASSERT_EQ(got.size(), ref.size());
            double worst = 0;
            for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - ref[i]));
            // fp32 through a few layers of width <= 80: observed differences are at most ~5e-6 absolute, so
            // 2e-5 of the logit scale (>= 1) leaves a margin of a few times.
            EXPECT_LE(worst, 2e-5 * scale) << "block " << block_size << " chunk " << max_chunk;
        }
    }
}

// F16 and BF16 files load to the same fp32 weights as an F32 file of the rounded values, so logits agree
// to the last bit of fp32 arithmetic; both also stay close to the unrounded model.
TEST_F(RandomModelTest, HalfPrecisionFilesMatchRoundedFp32) {
    for (DType dt : {DType::kF16, DType::kBF16}) {
        SCOPED_TRACE(DTypeName(dt));
        TempDir tmp;
        RandomModelOptions o;
        o.dtype = dt;
        const ModelConfig config = testutil::MakeConfig(o);
        const std::vector<NamedTensor> rounded = testutil::MakeRandomTensors(config, dt, o.seed);
        ASSERT_TRUE(testutil::WriteModelDir(tmp.Sub("half"), config, rounded, dt).ok());
        ASSERT_TRUE(testutil::WriteModelDir(tmp.Sub("f32"), config, rounded, DType::kF32).ok());
        const std::vector<NamedTensor> exact = testutil::MakeRandomTensors(config, DType::kF32, o.seed);
        ASSERT_TRUE(testutil::WriteModelDir(tmp.Sub("exact"), config, exact, DType::kF32).ok());
        auto half = Load(tmp.path() + "/half");
        auto f32 = Load(tmp.path() + "/f32");
        auto unrounded = Load(tmp.path() + "/exact");
        ASSERT_TRUE(half && f32 && unrounded);
        const std::vector<int32_t> tokens = RandomTokens(12, 17, config.vocab_size);
        const std::vector<float> lh = Logits(*half, tokens, 16, 256);
        EXPECT_LE(MaxAbsDiff(lh, Logits(*f32, tokens, 16, 256)), 1e-6f);
        // Rounding every weight moves these logits (of order 1) by about 0.003 (F16) and 0.02 (BF16).
        EXPECT_LE(MaxAbsDiff(lh, Logits(*unrounded, tokens, 16, 256)), dt == DType::kF16 ? 0.01f : 0.08f);
    }
}

TEST_F(RandomModelTest, ShardedModelLoads) {
    TempDir tmp;
    RandomModelOptions o;
    o.num_layers = 3;
    ASSERT_TRUE(testutil::WriteRandomModel(tmp.Sub("single"), o).ok());
    o.num_shards = 2;
    ASSERT_TRUE(testutil::WriteRandomModel(tmp.Sub("sharded"), o).ok());
    ASSERT_TRUE(FileExists(tmp.path() + "/sharded/model-00001-of-00002.safetensors"));
    ASSERT_TRUE(FileExists(tmp.path() + "/sharded/model-00002-of-00002.safetensors"));
    ASSERT_FALSE(FileExists(tmp.path() + "/sharded/model.safetensors"));
    auto single = Load(tmp.path() + "/single");
    auto sharded = Load(tmp.path() + "/sharded");
    ASSERT_TRUE(single && sharded);
    const std::vector<int32_t> tokens = RandomTokens(13, 9, o.vocab_size);
    EXPECT_EQ(Logits(*single, tokens, 16, 256), Logits(*sharded, tokens, 16, 256));
}

// A random model with the default model's tokenizer loads with text support; a vocabulary smaller than the
// tokenizer's is refused, naming the tokenizer file.
TEST_F(RandomModelTest, WithTokenizer) {
    const std::string default_dir = testutil::DefaultModelDir();
    ASSERT_TRUE(FileExists(default_dir + "/tokenizer.model")) << testutil::kMissingDefaultModel;
    TempDir tmp;
    RandomModelOptions o;
    o.vocab_size = 32000, o.hidden_size = 16, o.num_heads = 2, o.num_kv_heads = 1, o.intermediate_size = 24;
    ASSERT_TRUE(testutil::WriteRandomModel(tmp.Sub("ok"), o).ok());
    ASSERT_TRUE(testutil::CopyTokenizer(default_dir, tmp.path() + "/ok").ok());
    auto m = Model::Load(tmp.path() + "/ok", backend_.get());
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    ASSERT_NE((*m)->tokenizer, nullptr);
    EXPECT_EQ((*m)->tokenizer->Encode("Once upon a time", true), (std::vector<int32_t>{1, 9038, 2501, 263, 931}));

    o.vocab_size = 1000;
    ASSERT_TRUE(testutil::WriteRandomModel(tmp.Sub("small"), o).ok());
    ASSERT_TRUE(testutil::CopyTokenizer(default_dir, tmp.path() + "/small").ok());
    auto bad = Model::Load(tmp.path() + "/small", backend_.get());
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find(tmp.path() + "/small/tokenizer.model"), std::string::npos)
        << bad.status().message();
}

// ---------------------------------------------------------------------------------------------------------
// Bad model directories: a Status (never a crash) whose message names the file and, where one is at
// fault, the tensor.

class BadModelTest : public ::testing::Test {
  protected:
    void SetUp() override {
        backend_ = MakeCpuBackend(1);
        config_ = testutil::MakeConfig(options_);
        tensors_ = testutil::MakeRandomTensors(config_, DType::kF32, options_.seed);
        dir_ = tmp_.path() + "/model";
    }

    void Write() { ASSERT_TRUE(testutil::WriteModelDir(dir_, config_, tensors_, DType::kF32).ok()); }

    // Loads dir_ and expects failure with a message containing every one of `needles`.
    void ExpectLoadError(const std::vector<std::string>& needles) {
        auto m = Model::Load(dir_, backend_.get(), false);
        ASSERT_FALSE(m.ok()) << "loaded a bad model";
        const std::string& msg = m.status().message();
        for (const std::string& n : needles)
            EXPECT_NE(msg.find(n), std::string::npos) << "\"" << n << "\" not in: " << msg;
    }

    // A safetensors file with a hand-written header (padded to 8 bytes) and `data_bytes` zero bytes.
    void WriteRawSafetensors(const std::string& path, const std::string& header, size_t data_bytes,
                             uint64_t header_len_override = 0) {
        std::string h = header;
        while (h.size() % 8 != 0) h.push_back(' ');
        const uint64_t len = header_len_override ? header_len_override : h.size();
        std::ofstream out(path, std::ios::binary | std::ios::trunc);
        for (int i = 0; i < 8; ++i) out.put(static_cast<char>((len >> (8 * i)) & 0xFF));
        out << h << std::string(data_bytes, '\0');
    }

    RandomModelOptions options_;
    ModelConfig config_;
    std::vector<NamedTensor> tensors_;
    TempDir tmp_;
    std::string dir_;
    std::unique_ptr<Backend> backend_;
};

TEST_F(BadModelTest, ValidModelLoads) {
    Write();
    auto m = Model::Load(dir_, backend_.get(), false);
    EXPECT_TRUE(m.ok()) << m.status().ToString();
}

TEST_F(BadModelTest, MissingDirectory) { ExpectLoadError({dir_}); }

TEST_F(BadModelTest, MissingConfig) {
    Write();
    std::filesystem::remove(dir_ + "/config.json");
    ExpectLoadError({dir_ + "/config.json"});
}

TEST_F(BadModelTest, BadJsonInConfig) {
    Write();
    ASSERT_TRUE(WriteFile(dir_ + "/config.json", "{\"vocab_size\": 97, \"hidden_size\": }").ok());
    ExpectLoadError({dir_ + "/config.json"});
}

TEST_F(BadModelTest, MissingRequiredKey) {
    Write();
    auto text = ReadFile(dir_ + "/config.json");
    ASSERT_TRUE(text.ok());
    auto json = ParseJsonFile(*text, "config.json");
    ASSERT_TRUE(json.ok());
    json->erase("num_hidden_layers");
    ASSERT_TRUE(WriteFile(dir_ + "/config.json", DumpJson(*json)).ok());
    ExpectLoadError({dir_ + "/config.json", "num_hidden_layers"});
}

TEST_F(BadModelTest, MissingSafetensors) {
    Write();
    std::filesystem::remove(dir_ + "/model.safetensors");
    ExpectLoadError({dir_, "model.safetensors"});
}

TEST_F(BadModelTest, EmptySafetensors) {
    Write();
    ASSERT_TRUE(WriteFile(dir_ + "/model.safetensors", "abc").ok());
    ExpectLoadError({dir_ + "/model.safetensors"});
}

TEST_F(BadModelTest, HeaderLengthBeyondFile) {
    Write();
    WriteRawSafetensors(dir_ + "/model.safetensors", "{}", 16, /*header_len_override=*/1 << 20);
    ExpectLoadError({dir_ + "/model.safetensors", "header"});
}

TEST_F(BadModelTest, HeaderNotJson) {
    Write();
    WriteRawSafetensors(dir_ + "/model.safetensors", "{\"a\": [", 0);
    ExpectLoadError({dir_ + "/model.safetensors"});
}

// The file was cut short: the tensor stored last (names are sorted on write) runs past the end.
TEST_F(BadModelTest, TruncatedData) {
    Write();
    const std::string path = dir_ + "/model.safetensors";
    std::filesystem::resize_file(path, std::filesystem::file_size(path) - 100);
    ExpectLoadError({path, "model.norm.weight", "truncated"});
}

TEST_F(BadModelTest, DataOffsetsBeyondFile) {
    Write();
    WriteRawSafetensors(
        dir_ + "/model.safetensors",
        R"({"model.embed_tokens.weight": {"dtype": "F32", "shape": [97, 48], "data_offsets": [0, 18624]}})", 64);
    ExpectLoadError({dir_ + "/model.safetensors", "model.embed_tokens.weight"});
}

TEST_F(BadModelTest, OffsetsDisagreeWithShape) {
    Write();
    WriteRawSafetensors(dir_ + "/model.safetensors",
                        R"({"model.norm.weight": {"dtype": "F32", "shape": [48], "data_offsets": [0, 100]}})", 192);
    ExpectLoadError({dir_ + "/model.safetensors", "model.norm.weight"});
}

TEST_F(BadModelTest, UnknownDType) {
    for (const char* dtype : {"I8", "F64", "F8_E4M3"}) {
        SCOPED_TRACE(dtype);
        Write();
        WriteRawSafetensors(dir_ + "/model.safetensors",
                            std::string(R"({"model.norm.weight": {"dtype": ")") + dtype +
                                R"(", "shape": [48], "data_offsets": [0, 384]}})",
                            384);
        ExpectLoadError({dir_ + "/model.safetensors", "model.norm.weight", dtype});
    }
}

TEST_F(BadModelTest, WrongShape) {
    NamedTensor* t = testutil::FindTensor(tensors_, "model.layers.1.self_attn.k_proj.weight");
    ASSERT_NE(t, nullptr);
    t->shape = {t->shape[0] + 1, t->shape[1]};
    t->data.resize(static_cast<size_t>(t->shape[0] * t->shape[1]), 0.5f);
    Write();
    ExpectLoadError({dir_ + "/model.safetensors", "model.layers.1.self_attn.k_proj.weight", "[17, 48]", "[16, 48]"});
}

TEST_F(BadModelTest, MissingTensor) {
    tensors_.erase(std::remove_if(tensors_.begin(), tensors_.end(),
                                  [](const NamedTensor& t) { return t.name == "model.layers.1.mlp.down_proj.weight"; }),
                   tensors_.end());
    Write();
    ExpectLoadError({dir_, "model.layers.1.mlp.down_proj.weight"});
}

TEST_F(BadModelTest, MissingLmHeadWhenUntied) {
    tensors_.erase(std::remove_if(tensors_.begin(), tensors_.end(),
                                  [](const NamedTensor& t) { return t.name == "lm_head.weight"; }),
                   tensors_.end());
    Write();
    ExpectLoadError({dir_, "lm_head.weight"});
}

TEST_F(BadModelTest, ShardIndexNamesMissingShard) {
    ASSERT_TRUE(testutil::WriteModelDir(dir_, config_, tensors_, DType::kF32, 2).ok());
    std::filesystem::remove(dir_ + "/model-00002-of-00002.safetensors");
    ExpectLoadError({dir_ + "/model-00002-of-00002.safetensors"});
}

TEST_F(BadModelTest, ShardIndexBadJson) {
    ASSERT_TRUE(testutil::WriteModelDir(dir_, config_, tensors_, DType::kF32, 2).ok());
    ASSERT_TRUE(WriteFile(dir_ + "/model.safetensors.index.json", "{\"weight_map\": {").ok());
    ExpectLoadError({dir_ + "/model.safetensors.index.json"});
}

// docs/uniattn.md §5: a loader that ignored either half of a UniAttn checkpoint would silently run another model.
TEST_F(BadModelTest, CompensationTensorsWithoutGroupingKeys) {
    std::vector<float> wc(static_cast<size_t>(config_.num_heads * config_.head_dim * config_.hidden_size), 0.1f);
    tensors_.push_back(
        {LayerTensorName(1, "v2_proj.weight"), {config_.num_heads * config_.head_dim, config_.hidden_size}, wc});
    Write();
    ExpectLoadError({dir_, "v2_proj", "grouping"});
}

TEST_F(BadModelTest, GroupingKeysWithoutCompensationTensors) {
    config_.has_grouping = true;
    config_.grouping_idx = 2;
    config_.grouping_begin_idx = 0;
    config_.grouping_end_idx = 2;
    ASSERT_TRUE(config_.DeriveLayerKinds().ok());
    Write();
    ExpectLoadError({dir_, "v2_proj"});
}

}  // namespace
}  // namespace uniattn
