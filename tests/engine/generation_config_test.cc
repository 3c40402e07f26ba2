// generation_config.json: eos ids as an int or a list, request defaults within the ranges a request may use,
// unknown keys ignored, errors naming the file and the key.
#include "uniattn/generation_config.h"

#include <gtest/gtest.h>

#include <fstream>

#include "engine/test_models.h"

namespace uniattn {
namespace {

constexpr char kPath[] = "m/generation_config.json";

TEST(GenerationConfigTest, EosIdsAsIntOrList) {
    // Llama-3.1-8B-Instruct's file, as published.
    auto g = GenerationConfig::FromJson(
        R"({"bos_token_id": 128000, "do_sample": true, "eos_token_id": [128001, 128008, 128009],
            "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.42.3"})",
        kPath);
    ASSERT_TRUE(g.ok()) << g.status().ToString();
    EXPECT_EQ(g->eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
    EXPECT_FLOAT_EQ(g->sampling.temperature.value_or(-1), 0.6f);
    EXPECT_FLOAT_EQ(g->sampling.top_p.value_or(-1), 0.9f);
    EXPECT_FALSE(g->sampling.top_k.has_value());
    EXPECT_EQ(g->sampling.ToString(), "temperature=0.6 top_p=0.9");

    g = GenerationConfig::FromJson(R"({"eos_token_id": 2, "top_k": 20, "repetition_penalty": 1.05,
                                      "min_p": 0.0, "max_new_tokens": 99})",
                                   kPath);
    ASSERT_TRUE(g.ok()) << g.status().ToString();
    EXPECT_EQ(g->eos_token_ids, std::vector<int32_t>{2});
    EXPECT_EQ(g->sampling.top_k.value_or(-5), 20);
    EXPECT_FLOAT_EQ(g->sampling.repetition_penalty.value_or(-1), 1.05f);

    g = GenerationConfig::FromJson("{}", kPath);
    ASSERT_TRUE(g.ok());
    EXPECT_TRUE(g->eos_token_ids.empty());
    EXPECT_TRUE(g->sampling.empty());
    EXPECT_EQ(g->sampling.ToString(), "none");
}

TEST(GenerationConfigTest, DefaultsApplyOnlyWhereSetAndOverridesWin) {
    SamplingDefaults d;
    d.temperature = 0.7f;
    d.top_k = 40;
    GenerationRequest r;
    d.ApplyTo(r);
    EXPECT_FLOAT_EQ(r.temperature, 0.7f);
    EXPECT_EQ(r.top_k, 40);
    EXPECT_FLOAT_EQ(r.top_p, 1.0f);  // unset: the request's own default
    SamplingDefaults over;
    over.temperature = 0.0f;
    over.top_p = 0.5f;
    d.Override(over);
    EXPECT_FLOAT_EQ(d.temperature.value_or(-1), 0.0f);
    EXPECT_FLOAT_EQ(d.top_p.value_or(-1), 0.5f);
    EXPECT_EQ(d.top_k.value_or(-1), 40);
}

TEST(GenerationConfigTest, BadValuesNameTheFileAndKey) {
    struct Case {
        const char* json;
        const char* message;
    };
    const Case cases[] = {
        {R"({"eos_token_id": "x"})", "m/generation_config.json: \"eos_token_id\" must be a token id"},
        {R"({"eos_token_id": [1, -3]})", "m/generation_config.json: \"eos_token_id\" must be a token id"},
        {R"({"temperature": "hot"})", "m/generation_config.json: \"temperature\" must be a number"},
        {R"({"temperature": -0.5})", "m/generation_config.json: temperature"},
        {R"({"top_p": 0})", "m/generation_config.json: top_p"},
        {R"({"top_k": 1.5})", "m/generation_config.json: \"top_k\" must be an integer"},
        {R"([1, 2])", "m/generation_config.json: top level must be a JSON object"},
        {R"({"temperature": )", "m/generation_config.json"},
    };
    for (const Case& c : cases) {
        auto g = GenerationConfig::FromJson(c.json, kPath);
        ASSERT_FALSE(g.ok()) << c.json;
        EXPECT_NE(g.status().message().find(c.message), std::string::npos) << c.json << " -> " << g.status().ToString();
    }
}

TEST(GenerationConfigTest, LoadDirWithoutTheFileIsEmpty) {
    testutil::TempDir tmp;
    auto g = GenerationConfig::LoadDir(tmp.path());
    ASSERT_TRUE(g.ok());
    EXPECT_TRUE(g->eos_token_ids.empty());
    std::ofstream(tmp.path() + "/generation_config.json") << R"({"eos_token_id": [7, 8]})";
    g = GenerationConfig::LoadDir(tmp.path());
    ASSERT_TRUE(g.ok());
    EXPECT_EQ(g->eos_token_ids, (std::vector<int32_t>{7, 8}));
}

}  // namespace
}  // namespace uniattn
