// uniattn-generate as a user runs it: a bad model directory gives a non-zero exit (not a crash) and a
// message on stderr naming the file at fault; the default model prints the reference greedy ids as JSON.
// The tools' command lines (tools/cli.h): --help exits 0, an unknown flag or a bad value exits 1 naming it,
// a missing required flag prints the usage and exits 2.
#include <sys/wait.h>

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/test_models.h"
#include "uniattn/json_io.h"
#include "util/file.h"

namespace uniattn {
namespace {

const std::string kGenerate = std::string(UNIATTN_BINARY_DIR) + "/bin/uniattn-generate";
const std::string kConvert = std::string(UNIATTN_BINARY_DIR) + "/bin/uniattn-convert";
const std::string kEval = std::string(UNIATTN_BINARY_DIR) + "/bin/uniattn-eval";
const std::string kBench = std::string(UNIATTN_BINARY_DIR) + "/bin/uniattn-bench";

struct RunResult {
    int exit_code = -1;  // the shell's: 128 + N when the program died of signal N
    std::string out;
    std::string err;
};

std::string Quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

// Runs `binary` with `args` (already quoted), capturing stdout and stderr.
RunResult RunTool(const std::string& binary, const std::string& args) {
    testutil::TempDir tmp;
    const std::string err_path = tmp.path() + "/stderr";
    const std::string cmd = Quote(binary) + " " + args + " 2>" + Quote(err_path);
    RunResult r;
    FILE* pipe = ::popen(cmd.c_str(), "r");
    if (pipe == nullptr) return r;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0) r.out.append(buf, n);
    const int status = ::pclose(pipe);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    auto err = ReadFile(err_path);
    if (err.ok()) r.err = *err;
    return r;
}

RunResult Generate(const std::string& args) { return RunTool(kGenerate, args); }

class CliTest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_TRUE(FileExists(kGenerate)) << kGenerate << " is not built (ninja uniattn-generate)";
        // The default model's vocabulary, so its tokenizer fits: the tokenizer is checked before any weight.
        options_.vocab_size = 32000, options_.hidden_size = 16, options_.num_heads = 2, options_.num_kv_heads = 1;
        options_.intermediate_size = 24;
        const ModelConfig config = testutil::MakeConfig(options_);
        tensors_ = testutil::MakeRandomTensors(config, DType::kF32, options_.seed);
        dir_ = tmp_.path() + "/model";
        ASSERT_TRUE(testutil::WriteModelDir(dir_, config, tensors_, DType::kF32).ok());
        ASSERT_TRUE(testutil::CopyTokenizer(testutil::DefaultModelDir(), dir_).ok()) << testutil::kMissingDefaultModel;
    }

    // Expects a clean failure (exit code 1..127, not a signal) whose stderr contains every needle.
    void ExpectCleanFailure(const std::vector<std::string>& needles) {
        const RunResult r = Generate("--model " + Quote(dir_) + " --prompt hello --max-tokens 4");
        EXPECT_GT(r.exit_code, 0) << r.err;
        EXPECT_LT(r.exit_code, 128) << "crashed: " << r.err;
        EXPECT_TRUE(r.out.empty()) << r.out;
        for (const std::string& n : needles)
            EXPECT_NE(r.err.find(n), std::string::npos) << "\"" << n << "\" not in: " << r.err;
    }

    testutil::RandomModelOptions options_;
    std::vector<testutil::NamedTensor> tensors_;
    testutil::TempDir tmp_;
    std::string dir_;
};

TEST_F(CliTest, MissingModelDirectory) {
    dir_ += "-missing";
    ExpectCleanFailure({dir_});
}

TEST_F(CliTest, BadJsonConfig) {
    ASSERT_TRUE(WriteFile(dir_ + "/config.json", "{\"vocab_size\": 97,").ok());
    ExpectCleanFailure({dir_ + "/config.json"});
}

TEST_F(CliTest, TruncatedSafetensors) {
    const std::string path = dir_ + "/model.safetensors";
    std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
    ExpectCleanFailure({path, "truncated"});
}

TEST_F(CliTest, GarbageSafetensors) {
    ASSERT_TRUE(WriteFile(dir_ + "/model.safetensors", std::string(64, '\xFF')).ok());
    ExpectCleanFailure({dir_ + "/model.safetensors"});
}

TEST_F(CliTest, WrongTensorShape) {
    const ModelConfig config = testutil::MakeConfig(options_);
    testutil::NamedTensor* t = testutil::FindTensor(tensors_, "model.layers.0.mlp.up_proj.weight");
    ASSERT_NE(t, nullptr);
    t->shape = {t->shape[1], t->shape[0]};  // transposed
    ASSERT_TRUE(testutil::WriteModelDir(dir_, config, tensors_, DType::kF32).ok());
    ExpectCleanFailure({dir_ + "/model.safetensors", "model.layers.0.mlp.up_proj.weight"});
}

// The weights are fine but there is no tokenizer file: named before any weight is read.
TEST_F(CliTest, MissingTokenizer) {
    std::filesystem::remove(dir_ + "/tokenizer.model");
    ExpectCleanFailure({dir_ + "/tokenizer.model"});
}

TEST_F(CliTest, UsageErrorWithoutModel) {
    const RunResult r = Generate("--prompt hello");
    EXPECT_NE(r.exit_code, 0);
    EXPECT_LT(r.exit_code, 128);
    EXPECT_NE(r.err.find("usage"), std::string::npos) << r.err;
}

// Runs `binary args` and expects exit code `code` with `needle` in its stdout (code 0) or stderr.
void ExpectExit(const std::string& binary, const std::string& args, int code, const std::string& needle) {
    const RunResult r = RunTool(binary, args);
    EXPECT_EQ(r.exit_code, code) << args << ": " << r.err;
    const std::string& text = code == 0 ? r.out : r.err;
    EXPECT_NE(text.find(needle), std::string::npos) << args << ": \"" << needle << "\" not in: " << text;
    if (code != 0) EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST_F(CliTest, HelpExitsZero) {
    ExpectExit(kGenerate, "--help", 0, "--max-tokens");
    ExpectExit(kConvert, "unify --help", 0, "--drop-unused-qk");
}

TEST_F(CliTest, UnknownFlagIsAnErrorNamingIt) {
    ExpectExit(kGenerate, "--model " + Quote(dir_) + " --prompt hello --max-tokenz 4", 1, "--max-tokenz");
    ExpectExit(kConvert, "unify --model a --out b --grup 2", 1, "--grup");
}

TEST_F(CliTest, BadValueIsAnErrorNamingTheFlag) {
    for (const std::string bad : {"--max-tokens many", "--temperature warm", "--seed x", "--threads 1.5"}) {
        ExpectExit(kGenerate, "--model " + Quote(dir_) + " --prompt hello " + bad, 1, bad.substr(0, bad.find(' ')));
    }
    ExpectExit(kGenerate, "--model", 1, "--model");  // no value
    ExpectExit(kConvert, "unify --model a --out b --group 2 --begin 0 --end x", 1, "--end");
}

TEST_F(CliTest, ConvertUsageErrors) {
    ExpectExit(kConvert, "", 2, "usage");
    ExpectExit(kConvert, "frobnicate", 2, "usage");
    ExpectExit(kConvert, "unify --model a --out b --group 2 --begin 0", 2, "--end is required");
}

TEST_F(CliTest, GreedyJsonOnDefaultModel) {
    const std::string model = testutil::DefaultModelDir();
    ASSERT_TRUE(FileExists(model + "/config.json")) << model << ": " << testutil::kMissingDefaultModel;
    const RunResult r =
        Generate("--model " + Quote(model) + " --prompt " + Quote("Once upon a time") + " --max-tokens 20 --json");
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto json = ParseJsonFile(r.out, "uniattn-generate stdout");
    ASSERT_TRUE(json.ok()) << json.status().ToString() << "\n" << r.out;
    auto ids = [&](const char* key) {
        std::vector<int64_t> v;
        const nlohmann::json* a = JsonFind(*json, key);
        EXPECT_TRUE(a != nullptr && a->is_array()) << key;
        if (a == nullptr || !a->is_array()) return v;
        for (const nlohmann::json& x : *a) v.push_back(JsonInt64(x).value_or(-1));
        return v;
    };
    EXPECT_EQ(ids("prompt_ids"), (std::vector<int64_t>{1, 9038, 2501, 263, 931}));
    EXPECT_EQ(ids("ids"), (std::vector<int64_t>{29892, 727,   471, 263,  2217, 7826, 4257, 365,  2354, 29889,
                                                2296,  18012, 304, 1708, 5377, 297,  278,  6575, 845,  457}));
    const nlohmann::json* text = JsonFind(*json, "text");
    ASSERT_TRUE(text != nullptr && text->is_string());
    EXPECT_EQ(text->get<std::string>(),
              ", there was a little girl named Lily. She loved to play outside in the sunshine");
    // One object on one line, nothing else on stdout.
    EXPECT_EQ(r.out.find('\n'), r.out.size() - 1);
}

// uniattn-convert unify and uniattn-eval on another family: a tiny Qwen3 (q/k norm, q/k/v/o biases, a
// 131072-token context) with the default model's tokenizer. The unified checkpoint (zero compensation)
// reloads in uniattn-eval; a model against itself agrees on every greedy token with zero KL.
TEST(CliFamilyTest, UnifyAndEvalOnQwen3) {
    ASSERT_TRUE(FileExists(kEval)) << kEval << " is not built (ninja uniattn-eval)";
    const std::string default_dir = testutil::DefaultModelDir();
    ASSERT_TRUE(FileExists(default_dir + "/tokenizer.model")) << testutil::kMissingDefaultModel;
    testutil::TempDir tmp;
    testutil::RandomModelOptions o;
    o.architecture = "Qwen3ForCausalLM";
    o.attention_bias = true;
    o.vocab_size = 32000, o.hidden_size = 32, o.num_heads = 4, o.num_kv_heads = 2, o.head_dim = 8;
    o.intermediate_size = 48, o.num_layers = 4, o.max_position_embeddings = 131072;
    const std::string orig = tmp.Sub("orig");
    ASSERT_TRUE(testutil::WriteRandomModel(orig, o).ok());
    ASSERT_TRUE(testutil::CopyTokenizer(default_dir, orig).ok());
    const std::string text = tmp.path() + "/text.txt";
    ASSERT_TRUE(WriteFile(text, "Once upon a time there was a dog.\n\nThe dog ran to the park and saw a ball.\n").ok());

    const std::string unified = tmp.path() + "/unified";
    const RunResult conv = RunTool(kConvert, "unify --model " + Quote(orig) + " --out " + Quote(unified) +
                                                 " --group 2 --begin 0 --end 4 --calib none --drop-unused-qk");
    ASSERT_EQ(conv.exit_code, 0) << conv.err;

    auto eval = [&](const std::string& model, const std::string& reference) {
        const RunResult r = RunTool(kEval, "--model " + Quote(model) + " --reference " + Quote(reference) + " --text " +
                                               Quote(text) + " --threads 1 --json");
        EXPECT_EQ(r.exit_code, 0) << r.err;
        auto json = ParseJsonFile(r.out, "uniattn-eval stdout");
        EXPECT_TRUE(json.ok()) << r.out;
        return json.ok() ? *json : nlohmann::json::object();
    };
    const nlohmann::json self = eval(orig, orig);
    ASSERT_TRUE(self.contains("mean_kl") && self.contains("greedy_agreement") && self.contains("perplexity"));
    EXPECT_EQ(self["greedy_agreement"].get<double>(), 1.0);
    EXPECT_LT(std::abs(self["mean_kl"].get<double>()), 1e-9);
    EXPECT_GT(self["predicted_tokens"].get<int64_t>(), 10);
    const nlohmann::json u = eval(unified, orig);
    ASSERT_TRUE(u.contains("mean_kl") && u.contains("perplexity"));
    EXPECT_TRUE(std::isfinite(u["perplexity"].get<double>()));
    EXPECT_GT(u["mean_kl"].get<double>(), 1e-6);  // reuse layers without compensation: another model
    EXPECT_EQ(u["predicted_tokens"], self["predicted_tokens"]);
}

// uniattn-bench on the CPU backend (seeded random weights of a tiny config, no checkpoint): the engine-level
// decode and prefill over an fp32 cache and over an e4m3 one (--kv-dtype fp8_e4m3, per-head scales of 1), whose
// JSON reports a quarter of the KV bytes per token; an unknown KV dtype is an error naming it.
TEST(BenchCli, CpuDecodeAndPrefillOverAnFp8Cache) {
    ASSERT_TRUE(FileExists(kBench)) << kBench << " is not built (ninja uniattn-bench)";
    testutil::TempDir tmp;
    const std::string config = tmp.path() + "/config.json";
    ASSERT_TRUE(WriteFile(config, R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-05, "tie_word_embeddings": false})")
                    .ok());
    // 2 layers x (K + V) x 2 KV heads x head_dim 16 elements per token.
    const int64_t elems_per_token = 2 * 2 * 2 * 16;
    for (const std::string kv : {"f32", "fp8_e4m3"}) {
        SCOPED_TRACE(kv);
        const std::string json = tmp.path() + "/" + kv + ".json";
        const RunResult r =
            RunTool(kBench, "--config " + Quote(config) + " --backend cpu --dtype f32 --kv-dtype " + kv +
                                " --decode 2x40 --prefill 24 --steps 2 --warmup 1 --json " + Quote(json));
        ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
        auto text = ReadFile(json);
        ASSERT_TRUE(text.ok());
        auto j = ParseJsonFile(*text, json);
        ASSERT_TRUE(j.ok()) << j.status().ToString();
        const nlohmann::json* dtype = JsonFind(*j, "kv_dtype");
        ASSERT_NE(dtype, nullptr);
        EXPECT_EQ(dtype->get<std::string>(), DTypeName(kv == "f32" ? DType::kF32 : DType::kF8E4M3));
        const nlohmann::json* results = JsonFind(*j, "results");
        ASSERT_TRUE(results != nullptr && results->size() == 1);
        const nlohmann::json& v = (*results)[0];
        EXPECT_EQ(JsonInt64(*JsonFind(v, "kv_bytes_per_token")), elems_per_token * (kv == "f32" ? 4 : 1));
        const nlohmann::json* decode = JsonFind(v, "decode");
        const nlohmann::json* prefill = JsonFind(v, "prefill");
        ASSERT_TRUE(decode != nullptr && decode->size() == 1 && prefill != nullptr && prefill->size() == 1);
        EXPECT_GT((*decode)[0]["ms_per_step"].get<double>(), 0.0);
        EXPECT_EQ(JsonInt64(*JsonFind((*decode)[0], "kv_bytes_per_token")), elems_per_token * (kv == "f32" ? 4 : 1));
    }
    const RunResult bad = RunTool(kBench, "--config " + Quote(config) + " --backend cpu --dtype f32 --kv-dtype fp4");
    EXPECT_EQ(bad.exit_code, 1) << bad.err;
    EXPECT_NE(bad.err.find("fp4"), std::string::npos) << bad.err;
}

}  // namespace
}  // namespace uniattn
