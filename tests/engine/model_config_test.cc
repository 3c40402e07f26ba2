// ModelConfig::FromJson on the config.json shapes transformers writes (4.x and 5.x).
#include <gtest/gtest.h>

#include <string>

#include "uniattn/model_config.h"

namespace uniattn {
namespace {

std::string Config(const std::string& extra) {
    return R"({"architectures": ["LlamaForCausalLM"], "vocab_size": 32000, "hidden_size": 64,
               "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "max_position_embeddings": 256)" +
           extra + "}";
}

TEST(ModelConfigTest, TopLevelRopeTheta) {
    auto c = ModelConfig::FromJson(Config(R"(, "rope_theta": 500000.0, "torch_dtype": "bfloat16")"), "c.json");
    ASSERT_TRUE(c.ok()) << c.status().message();
    EXPECT_EQ(c->rope_theta, 500000.0);
    EXPECT_EQ(c->torch_dtype, "bfloat16");
    EXPECT_EQ(c->num_kv_heads, 2);
}

TEST(ModelConfigTest, Transformers5RopeParametersAndDtype) {
    auto c = ModelConfig::FromJson(
        Config(R"(, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}, "dtype": "float16")"),
        "c.json");
    ASSERT_TRUE(c.ok()) << c.status().message();
    EXPECT_EQ(c->rope_theta, 500000.0);
    EXPECT_EQ(c->torch_dtype, "float16");
}

TEST(ModelConfigTest, NoRopeKeysMeansTheLlamaDefault) {
    auto c = ModelConfig::FromJson(Config(""), "c.json");
    ASSERT_TRUE(c.ok()) << c.status().message();
    EXPECT_EQ(c->rope_theta, 10000.0);
}

TEST(ModelConfigTest, ScaledRopeIsRefusedClearly) {
    auto c = ModelConfig::FromJson(
        Config(R"(, "rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0})"), "c.json");
    ASSERT_FALSE(c.ok());
    EXPECT_NE(c.status().message().find("rope_type \"llama3\" is not supported"), std::string::npos)
        << c.status().message();
    auto bad = ModelConfig::FromJson(Config(R"(, "rope_parameters": 3)"), "c.json");
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("must be an object"), std::string::npos) << bad.status().message();
}

TEST(ModelConfigTest, NumbersBeyondDoubleAreRefused) {  // fuzz_model_config: "rms_norm_eps": 1e602
    for (const char* extra :
         {R"(, "rms_norm_eps": 1e602)", R"(, "rope_theta": -1e400)", R"(, "rope_parameters": {"rope_theta": 1e999})"}) {
        auto c = ModelConfig::FromJson(Config(extra), "c.json");
        ASSERT_FALSE(c.ok()) << extra;
        EXPECT_NE(c.status().message().find("must be a finite number"), std::string::npos) << c.status().message();
    }
}

// Config("") with `key` set to `value`: replaced where the base text has it, appended otherwise.
std::string ConfigWith(const std::string& key, const std::string& value) {
    std::string text = Config("");
    const std::string needle = "\"" + key + "\": ";
    const size_t at = text.find(needle);
    if (at == std::string::npos) return Config(", " + needle + value);
    const size_t end = text.find_first_of(",}", at);
    return text.substr(0, at) + needle + value + text.substr(end);
}

TEST(ModelConfigTest, ImplausibleSizesAreRefusedBeforeAllocating) {  // fuzz_model_config: 8 GB of layer kinds
    for (const char* key : {"num_hidden_layers", "vocab_size", "hidden_size", "intermediate_size",
                            "max_position_embeddings", "head_dim", "num_attention_heads"}) {
        auto c = ModelConfig::FromJson(ConfigWith(key, "2000000000"), "c.json");
        ASSERT_FALSE(c.ok()) << key;
        EXPECT_NE(c.status().message().find(std::string("\"") + key + "\" is 2000000000, more than the supported"),
                  std::string::npos)
            << c.status().message();
    }
    auto c = ModelConfig::FromJson(ConfigWith("num_hidden_layers", "126"), "c.json");  // Llama-3.1-405B's depth
    ASSERT_TRUE(c.ok()) << c.status().message();
    EXPECT_EQ(c->layer_kinds.size(), 126u);
}

}  // namespace
}  // namespace uniattn
