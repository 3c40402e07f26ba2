#include "server/config.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

namespace uniattn::server {
namespace {

std::string ReadSource(const std::string& rel) {
    std::ifstream in(std::string(UNIATTN_SOURCE_DIR) + "/" + rel);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

TEST(ConfigTest, DefaultYamlParses) {
    auto c = ParseConfig(ReadSource("config/default.yaml"), "default.yaml", {});
    ASSERT_TRUE(c.ok()) << c.status().message();
    EXPECT_EQ(c->engine.model_dir, "models/stories15M");
    EXPECT_EQ(c->chat_template, "plain");
    EXPECT_EQ(c->engine.kv_cache_bytes, 64 << 20);
    EXPECT_EQ(c->http_port, 8000);
}

TEST(ConfigTest, GpuExampleParses) {
    auto c = ParseConfig(ReadSource("config/gpu-example.yaml"), "gpu-example.yaml", {});
    ASSERT_TRUE(c.ok()) << c.status().message();
    EXPECT_EQ(c->engine.backend, "cuda");
}

TEST(ConfigTest, UnknownKeyIsNamedWithSuggestion) {
    auto c = ParseConfig("model:\n  path: m\nengine:\n  blok_size: 16\n", "x.yaml", {});
    ASSERT_FALSE(c.ok());
    EXPECT_NE(c.status().message().find("engine.blok_size"), std::string::npos) << c.status().message();
    EXPECT_NE(c.status().message().find("did you mean 'engine.block_size'"), std::string::npos);
}

TEST(ConfigTest, WrongTypeIsNamed) {
    auto c = ParseConfig("model:\n  path: m\nengine:\n  max_num_seqs: lots\n", "x.yaml", {});
    ASSERT_FALSE(c.ok());
    EXPECT_NE(c.status().message().find("engine.max_num_seqs: expected an integer"), std::string::npos)
        << c.status().message();
    c = ParseConfig("model:\n  path: m\nserver:\n  http_port: \"8000\"\n", "x.yaml", {});
    ASSERT_FALSE(c.ok());
    EXPECT_NE(c.status().message().find("server.http_port"), std::string::npos);
    c = ParseConfig("model:\n  path: m\nserver:\n  api_keys: abc\n", "x.yaml", {});
    ASSERT_FALSE(c.ok());
    EXPECT_NE(c.status().message().find("server.api_keys: expected a list"), std::string::npos);
    c = ParseConfig("model: [1, 2]\n", "x.yaml", {});
    ASSERT_FALSE(c.ok());
    EXPECT_NE(c.status().message().find("model: expected a map"), std::string::npos) << c.status().message();
}

TEST(ConfigTest, ImpossibleValuesAreNamed) {
    const char* cases[][2] = {
        {"engine:\n  block_size: 12\n", "engine.block_size"},
        {"engine:\n  kv_cache_memory_fraction: 1.5\n", "engine.kv_cache_memory_fraction"},
        {"engine:\n  kv_cache_bytes: 12 parsecs\n", "engine.kv_cache_bytes"},
        {"server:\n  http_port: 70000\n", "server.http_port"},
        {"engine:\n  backend: tpu\n", "engine.backend"},
        {"model:\n  chat_template: jinja\n", "model.chat_template"},
        {"logging:\n  level: loud\n", "logging.level"},
        {"engine:\n  dtype: bfloat16\n", "engine.dtype"},
        {"engine:\n  quantization: awq\n", "engine.quantization"},
        {"engine:\n  kv_cache_dtype: fp8_e5m2\n", "engine.kv_cache_dtype"},
        {"engine:\n  max_num_seqs: 64\n  max_num_batched_tokens: 8\n", "engine.max_num_batched_tokens"},
    };
    for (auto& c : cases) {
        auto r = ParseConfig(std::string("model:\n  path: m\n") + c[0], "x.yaml", {});
        ASSERT_FALSE(r.ok()) << c[0];
        EXPECT_NE(r.status().message().find(c[1]), std::string::npos) << r.status().message();
    }
}

// The CUDA backend's device and kernel choices are settable from YAML and --set (they were reachable only
// from benchmarks and tests).
TEST(ConfigTest, ChatTemplateIsAutoABuiltinOrAPath) {
    for (const char* v : {"auto", "plain", "llama-2", "llama-3", "chatml", "mistral", "none", "templates/x.jinja",
                          "/abs/path/template", "my.jinja"}) {
        auto c = ParseConfig(std::string("model:\n  path: m\n  chat_template: \"") + v + "\"\n", "t.yaml", {});
        ASSERT_TRUE(c.ok()) << v << ": " << c.status().message();
        EXPECT_EQ(c->chat_template, v);
    }
    auto bad = ParseConfig("model:\n  path: m\n  chat_template: llama3\n", "t.yaml", {});
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("model.chat_template"), std::string::npos) << bad.status().message();
    EXPECT_NE(bad.status().message().find(".jinja"), std::string::npos) << bad.status().message();
}

TEST(ConfigTest, CudaOptionsReachTheEngineConfig) {
    auto r = ParseConfig(
        "model:\n  path: m\nengine:\n  backend: cuda\n  cuda:\n    device: 1\n    exact_activations: true\n", "x.yaml",
        {{"engine.cuda.gemv_row_segs", "4"}, {"engine.cuda.pdl", "false"}});
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->engine.cuda.device, 1);
    EXPECT_TRUE(r->engine.cuda.exact_activations);
    EXPECT_EQ(r->engine.cuda.gemv_row_segs, 4);
    EXPECT_FALSE(r->engine.cuda.pdl);
    EXPECT_TRUE(r->engine.cuda.fuse_gemv_inputs);  // untouched keys keep their defaults
    auto bad = ParseConfig("model:\n  path: m\n", "x.yaml", {{"engine.cuda.gemv_row_segs", "9"}});
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("engine.cuda.gemv_row_segs"), std::string::npos);
    EXPECT_NE(ConfigToYaml(*r).find("exact_activations: true"), std::string::npos);
    auto chunk = ParseConfig("model:\n  path: m\n", "x.yaml", {{"engine.cuda.decode_min_chunk", "256"}});
    ASSERT_TRUE(chunk.ok()) << chunk.status().message();
    EXPECT_EQ(chunk->engine.cuda.decode_min_chunk, 256);
    EXPECT_NE(ConfigToYaml(*chunk).find("decode_min_chunk: 256"), std::string::npos);
    // Device sampling's blocks per row: 1 by default, 1..64 accepted and printed back, others refused by name.
    EXPECT_EQ(chunk->engine.cuda.sampling_blocks_per_row, 1);
    auto rows = ParseConfig("model:\n  path: m\n", "x.yaml", {{"engine.cuda.sampling_blocks_per_row", "32"}});
    ASSERT_TRUE(rows.ok()) << rows.status().message();
    EXPECT_EQ(rows->engine.cuda.sampling_blocks_per_row, 32);
    EXPECT_NE(ConfigToYaml(*rows).find("sampling_blocks_per_row: 32"), std::string::npos);
    for (const char* v : {"0", "65", "-2"}) {
        auto no = ParseConfig("model:\n  path: m\n", "x.yaml", {{"engine.cuda.sampling_blocks_per_row", v}});
        ASSERT_FALSE(no.ok()) << v;
        EXPECT_NE(no.status().message().find("engine.cuda.sampling_blocks_per_row"), std::string::npos)
            << no.status().message();
    }
    for (const char* v : {"96", "32", "4096", "-64"}) {
        auto no = ParseConfig("model:\n  path: m\n", "x.yaml", {{"engine.cuda.decode_min_chunk", v}});
        ASSERT_FALSE(no.ok()) << v;
        EXPECT_NE(no.status().message().find("multiple of 64"), std::string::npos) << no.status().message();
    }
    // FP8 GEMM K split: 0 (by shape, the default) or a power of two up to 16, printed back; others refused by name.
    EXPECT_EQ(chunk->engine.cuda.fp8_split_k, 0);
    auto split = ParseConfig("model:\n  path: m\nengine:\n  cuda:\n    fp8_split_k: 4\n", "x.yaml", {});
    ASSERT_TRUE(split.ok()) << split.status().message();
    EXPECT_EQ(split->engine.cuda.fp8_split_k, 4);
    EXPECT_NE(ConfigToYaml(*split).find("fp8_split_k: 4"), std::string::npos);
    for (const char* v : {"-1", "3", "6", "17", "32"}) {
        auto no = ParseConfig("model:\n  path: m\n", "x.yaml", {{"engine.cuda.fp8_split_k", v}});
        ASSERT_FALSE(no.ok()) << v;
        EXPECT_NE(no.status().message().find("engine.cuda.fp8_split_k"), std::string::npos) << no.status().message();
    }
    // The switches written before a GPU run: off by default, on through --set, printed back.
    EXPECT_FALSE(chunk->engine.cuda.fuse_mma_gemm_inputs);
    EXPECT_FALSE(chunk->engine.cuda.fp8_prefill_tensor_cores);
    EXPECT_FALSE(chunk->engine.cuda.staged_decode_attention);
    auto on = ParseConfig("model:\n  path: m\n", "x.yaml",
                          {{"engine.cuda.fuse_mma_gemm_inputs", "true"},
                           {"engine.cuda.fp8_prefill_tensor_cores", "true"},
                           {"engine.cuda.staged_decode_attention", "true"}});
    ASSERT_TRUE(on.ok()) << on.status().message();
    EXPECT_TRUE(on->engine.cuda.fuse_mma_gemm_inputs);
    EXPECT_TRUE(on->engine.cuda.fp8_prefill_tensor_cores);
    EXPECT_TRUE(on->engine.cuda.staged_decode_attention);
    EXPECT_NE(ConfigToYaml(*on).find("fuse_mma_gemm_inputs: true"), std::string::npos);
    EXPECT_NE(ConfigToYaml(*on).find("fp8_prefill_tensor_cores: true"), std::string::npos);
    EXPECT_NE(ConfigToYaml(*on).find("staged_decode_attention: true"), std::string::npos);
    // Either needs the tensor-core kernels, and is refused by name without them (it would be ignored).
    for (const char* key : {"engine.cuda.fp8_prefill_tensor_cores", "engine.cuda.staged_decode_attention"}) {
        auto alone = ParseConfig("model:\n  path: m\n", "x.yaml",
                                 {{key, "true"}, {"engine.cuda.tensor_core_attention", "false"}});
        ASSERT_FALSE(alone.ok()) << key;
        EXPECT_NE(alone.status().message().find(key), std::string::npos) << alone.status().message();
    }
}

TEST(ConfigTest, Fp8KeysFromYamlAndSetSurviveThePrintedConfig) {
    auto r = ParseConfig("model:\n  path: m\nengine:\n  quantization: fp8\n", "x.yaml",
                         {{"engine.kv_cache_dtype", "fp8_e4m3"}});
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->engine.quantization, "fp8");
    EXPECT_EQ(r->engine.kv_cache_dtype, "fp8_e4m3");
    auto again = ParseConfig(ConfigToYaml(*r), "printed", {});
    ASSERT_TRUE(again.ok()) << again.status().message();
    EXPECT_EQ(again->engine.quantization, "fp8");
    EXPECT_EQ(again->engine.kv_cache_dtype, "fp8_e4m3");
    auto d = ParseConfig("model:\n  path: m\n", "x.yaml", {});
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->engine.quantization, "none");
    EXPECT_EQ(d->engine.kv_cache_dtype, "auto");
}

TEST(ConfigTest, GenerationConfigKeys) {
    auto r = ParseConfig(
        "model:\n  path: m\n  generation_config: none\n  override_generation_config:\n    temperature: 0.2\n"
        "    top_k: 40\n",
        "x.yaml", {{"model.override_generation_config.top_p", "0.75"}});
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->engine.generation_config, "none");
    EXPECT_FLOAT_EQ(r->override_generation_config.temperature.value_or(-1), 0.2f);
    EXPECT_EQ(r->override_generation_config.top_k.value_or(-1), 40);
    EXPECT_FLOAT_EQ(r->override_generation_config.top_p.value_or(-1), 0.75f);
    EXPECT_FALSE(r->override_generation_config.min_p.has_value());
    auto again = ParseConfig(ConfigToYaml(*r), "printed", {});
    ASSERT_TRUE(again.ok()) << again.status().message();
    EXPECT_EQ(again->engine.generation_config, "none");
    EXPECT_FLOAT_EQ(again->override_generation_config.top_p.value_or(-1), 0.75f);
    EXPECT_EQ(again->override_generation_config.top_k.value_or(-1), 40);
    auto d = ParseConfig("model:\n  path: m\n", "x.yaml", {});
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->engine.generation_config, "auto");
    EXPECT_TRUE(d->override_generation_config.empty());
    auto bad = ParseConfig("model:\n  path: m\n", "x.yaml", {{"model.override_generation_config.top_p", "0"}});
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("model.override_generation_config.top_p: top_p"), std::string::npos)
        << bad.status().message();
}

TEST(ConfigTest, MissingModelPath) {
    auto c = ParseConfig("", "x.yaml", {});
    ASSERT_FALSE(c.ok());
    EXPECT_NE(c.status().message().find("model.path"), std::string::npos);
}

TEST(ConfigTest, OverridesApplyInOrderAndParseYaml) {
    auto o1 = ParseOverride("engine.max_num_seqs=8");
    ASSERT_TRUE(o1.ok());
    auto c = ParseConfig(
        "model:\n  path: m\n", "x.yaml",
        {*o1, {"server.api_keys", "[a, b]"}, {"engine.max_num_seqs", "4"}, {"engine.kv_cache_bytes", "1GiB"}});
    ASSERT_TRUE(c.ok()) << c.status().message();
    EXPECT_EQ(c->engine.max_num_seqs, 4);
    EXPECT_EQ(c->api_keys, (std::vector<std::string>{"a", "b"}));
    EXPECT_EQ(c->engine.kv_cache_bytes, int64_t{1} << 30);
    auto bad = ParseConfig("model:\n  path: m\n", "x.yaml", {{"engine.nope", "1"}});
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("--set: unknown key 'engine.nope'"), std::string::npos);
    EXPECT_FALSE(ParseOverride("novalue").ok());
}

TEST(ConfigTest, ByteSizes) {
    EXPECT_EQ(*ParseByteSize("1024"), 1024);
    EXPECT_EQ(*ParseByteSize("8MiB"), 8 << 20);
    EXPECT_EQ(*ParseByteSize("8 MB"), 8000000);
    EXPECT_EQ(*ParseByteSize("1.5GiB"), int64_t{3} << 29);
    EXPECT_FALSE(ParseByteSize("MiB").ok());
    EXPECT_FALSE(ParseByteSize("5 furlongs").ok());
}

TEST(ConfigTest, EveryKeyIsDocumented) {
    const std::string readme = ReadSource("server/README.md");
    for (const std::string& key : ConfigKeys()) {
        EXPECT_NE(readme.find("`" + key + "`"), std::string::npos) << key << " is not documented in server/README.md";
    }
}

TEST(ConfigTest, PrintedConfigRoundTrips) {
    auto c = ParseConfig(ReadSource("config/default.yaml"), "default.yaml", {{"server.api_keys", "[k]"}});
    ASSERT_TRUE(c.ok());
    const std::string yaml = ConfigToYaml(*c);
    EXPECT_EQ(yaml.find("k]"), std::string::npos) << "API keys must be redacted";
    auto again = ParseConfig(yaml, "printed", {});
    ASSERT_TRUE(again.ok()) << again.status().message() << "\n" << yaml;
    EXPECT_EQ(again->engine.kv_cache_bytes, c->engine.kv_cache_bytes);
}

}  // namespace
}  // namespace uniattn::server
