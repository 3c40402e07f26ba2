// ModelConfig::FromJson on the config.json shapes transformers writes (4.x and 5.x).
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <string>
#include <vector>

#include "uniattn/json_io.h"
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

TEST(ModelConfigTest, UnimplementedRopeTypesAreRefusedByName) {
    for (const char* type : {"yarn", "longrope", "su", "mrope", "llama4"}) {
        for (const char* key : {"rope_scaling", "rope_parameters"}) {
            auto c = ModelConfig::FromJson(
                Config(std::string(", \"") + key + "\": {\"rope_type\": \"" + type + "\", \"factor\": 4.0}"), "c.json");
            ASSERT_FALSE(c.ok()) << key << " " << type;
            EXPECT_EQ(c.status().code(), StatusCode::kUnimplemented);
            EXPECT_NE(c.status().message().find(std::string("\"") + key + "\" rope_type \"" + type + "\""),
                      std::string::npos)
                << c.status().message();
        }
    }
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

// ---------------------------------------------------------------------------------------------------------
// The families and the keys that change the math (docs/models.md lists each row with its test).

// A config of `arch` with the base sizes plus `extra` (which may override nothing the base sets).
std::string FamilyConfig(const std::string& arch, const std::string& extra = "") {
    return R"({"architectures": [")" + arch + R"("], "vocab_size": 320, "hidden_size": 64,
               "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "max_position_embeddings": 256)" +
           extra + "}";
}

StatusOr<ModelConfig> Parse(const std::string& text) { return ModelConfig::FromJson(text, "c.json"); }

// Expects a refusal naming every needle.
void ExpectRefused(const std::string& text, StatusCode code, const std::vector<std::string>& needles) {
    auto c = Parse(text);
    ASSERT_FALSE(c.ok()) << text;
    EXPECT_EQ(c.status().code(), code) << c.status().ToString();
    for (const std::string& n : needles) {
        EXPECT_NE(c.status().message().find(n), std::string::npos) << "\"" << n << "\" not in " << c.status().message();
    }
}

// theta^(-2i/hd) written out here, for the scalings to be checked against.
std::vector<double> PlainFreqs(double theta, int hd) {
    std::vector<double> f;
    for (int i = 0; i < hd / 2; ++i) f.push_back(std::pow(theta, -2.0 * i / hd));
    return f;
}

void ExpectFreqsNear(const std::vector<double>& got, const std::vector<double>& want) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-15 * want[i] + 1e-300) << "i=" << i;
}

constexpr char kLlama31Rope[] = R"(, "rope_theta": 500000.0, "head_dim": 128, "rope_scaling": {"factor": 8.0,
    "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192, "rope_type": "llama3"})";

// Llama-3.1-8B's rope_scaling, exactly: wavelengths below 8192/4 keep their frequency, above 8192/1 are
// divided by 8, and between them the frequency is interpolated by s = (8192 / wavelength - 1) / (4 - 1).
TEST(ModelConfigTest, RopeScalingLlama3) {
    auto c = Parse(FamilyConfig("LlamaForCausalLM", kLlama31Rope));
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->rope_scaling.type, RopeType::kLlama3);
    EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
    std::vector<double> want = PlainFreqs(500000.0, 128);
    int kept = 0, divided = 0, smoothed = 0;
    for (double& f : want) {
        const double wavelength = 2 * std::numbers::pi / f;
        if (wavelength < 8192.0 / 4) {
            ++kept;
        } else if (wavelength > 8192.0 / 1) {
            f /= 8;
            ++divided;
        } else {
            const double s = (8192.0 / wavelength - 1) / 3;
            f = s * f + (1 - s) * f / 8;
            ++smoothed;
        }
    }
    EXPECT_GT(kept, 0);
    EXPECT_GT(divided, 0);
    EXPECT_GT(smoothed, 0);
    ExpectFreqsNear(c->RopeInvFreq(), want);
    // The transformers 5 spelling gives the same model.
    auto t5 = Parse(FamilyConfig("LlamaForCausalLM", R"(, "head_dim": 128, "rope_parameters": {"factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
        "rope_theta": 500000.0, "rope_type": "llama3"})"));
    ASSERT_TRUE(t5.ok()) << t5.status().ToString();
    EXPECT_EQ(t5->rope_theta, 500000.0);
    ExpectFreqsNear(t5->RopeInvFreq(), want);
    // llama3 without its parameters is an error naming the missing one.
    ExpectRefused(FamilyConfig("LlamaForCausalLM", R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0})"),
                  StatusCode::kInvalidArgument, {"original_max_position_embeddings"});
}

// linear: positions / factor, i.e. every frequency / factor.
TEST(ModelConfigTest, RopeScalingLinear) {
    auto c = Parse(FamilyConfig("LlamaForCausalLM", R"(, "rope_scaling": {"type": "linear", "factor": 4.0})"));
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->rope_scaling.type, RopeType::kLinear);
    std::vector<double> want = PlainFreqs(10000.0, 16);
    for (double& f : want) f /= 4;
    ExpectFreqsNear(c->RopeInvFreq(), want);
    ExpectRefused(FamilyConfig("LlamaForCausalLM", R"(, "rope_scaling": {"rope_type": "linear"})"),
                  StatusCode::kInvalidArgument, {"factor"});
}

// dynamic: vLLM's fixed base for max_len = L · factor, base · (factor · max_len / L − (factor − 1))^(hd/(hd−2)),
// not transformers' per-forward recomputation (docs/models.md says why).
TEST(ModelConfigTest, RopeScalingDynamicIsVllmsFixedBase) {
    for (const char* extra : {R"(, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0})",
                              R"(, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0,
                                    "original_max_position_embeddings": 4096})"}) {
        auto c = Parse(FamilyConfig("LlamaForCausalLM", extra));
        ASSERT_TRUE(c.ok()) << c.status().ToString();
        EXPECT_EQ(c->rope_scaling.type, RopeType::kDynamic);
        const double l = c->rope_scaling.original_max_position_embeddings > 0 ? 4096 : 256;
        const double max_len = l * 2.0;
        const double base = 10000.0 * std::pow(2.0 * max_len / l - 1.0, 16.0 / 14.0);
        ExpectFreqsNear(c->RopeInvFreq(), PlainFreqs(base, 16));
    }
}

TEST(ModelConfigTest, RopeScalingDefaultChangesNothing) {
    for (const char* extra : {R"(, "rope_scaling": null)", R"(, "rope_scaling": {"rope_type": "default"})",
                              R"(, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0})"}) {
        auto c = Parse(FamilyConfig("LlamaForCausalLM", extra));
        ASSERT_TRUE(c.ok()) << c.status().ToString();
        EXPECT_EQ(c->rope_scaling.type, RopeType::kDefault);
        ExpectFreqsNear(c->RopeInvFreq(), PlainFreqs(10000.0, 16));
    }
}

// A member of rope_scaling that the type does not read would change the rotation somewhere: refused by name.
TEST(ModelConfigTest, UnknownRopeScalingMembersAreRefusedByName) {
    ExpectRefused(FamilyConfig("LlamaForCausalLM",
                               R"(, "rope_scaling": {"rope_type": "linear", "factor": 2.0, "attention_factor": 0.5})"),
                  StatusCode::kUnimplemented, {"rope_scaling.attention_factor"});
    ExpectRefused(
        FamilyConfig("Qwen2ForCausalLM", R"(, "rope_scaling": {"type": "default", "mrope_section": [16, 24, 24]})"),
        StatusCode::kUnimplemented, {"rope_scaling.mrope_section"});
}

// Qwen2: q/k/v biases always, no o bias; the shipped sliding_window with use_sliding_window false loads
// (max_window_layers is then ignored); use_sliding_window true is refused by name.
TEST(ModelConfigTest, Qwen2BiasesAndSwitchedOffWindow) {
    auto c = Parse(FamilyConfig("Qwen2ForCausalLM", R"(, "model_type": "qwen2", "use_sliding_window": false,
        "sliding_window": 32768, "max_window_layers": 21, "tie_word_embeddings": true)"));
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->model_type, "qwen2");
    EXPECT_TRUE(c->qkv_bias);
    EXPECT_FALSE(c->o_bias);
    EXPECT_FALSE(c->qk_norm);
    EXPECT_EQ(c->sliding_window, 0);
    EXPECT_TRUE(c->tie_word_embeddings);
    ExpectRefused(FamilyConfig("Qwen2ForCausalLM", R"(, "use_sliding_window": true, "sliding_window": 4096)"),
                  StatusCode::kUnimplemented, {"use_sliding_window"});
}

// Llama: attention_bias gives q/k/v and o biases; mlp_bias is refused by name.
TEST(ModelConfigTest, LlamaAttentionBiasAndMlpBias) {
    auto plain = Parse(FamilyConfig("LlamaForCausalLM", R"(, "attention_bias": false, "mlp_bias": false)"));
    ASSERT_TRUE(plain.ok());
    EXPECT_FALSE(plain->qkv_bias || plain->o_bias || plain->qk_norm);
    auto c = Parse(FamilyConfig("LlamaForCausalLM", R"(, "attention_bias": true)"));
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_TRUE(c->qkv_bias);
    EXPECT_TRUE(c->o_bias);
    ExpectRefused(FamilyConfig("LlamaForCausalLM", R"(, "mlp_bias": true)"), StatusCode::kUnimplemented,
                  {"\"mlp_bias\""});
}

// Qwen3: q_norm/k_norm always; head_dim need not be hidden / heads (and is 128 when absent, as in
// transformers' Qwen3Config); attention_bias gives q/k/v/o biases.
TEST(ModelConfigTest, Qwen3QkNormAndHeadDim) {
    auto c = Parse(FamilyConfig("Qwen3ForCausalLM", R"(, "head_dim": 32, "attention_bias": false)"));
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->model_type, "qwen3");
    EXPECT_TRUE(c->qk_norm);
    EXPECT_EQ(c->head_dim, 32);  // hidden 64 / 4 heads = 16
    EXPECT_FALSE(c->qkv_bias || c->o_bias);
    auto d = Parse(FamilyConfig("Qwen3ForCausalLM", R"(, "attention_bias": true)"));
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    EXPECT_EQ(d->head_dim, 128);
    EXPECT_TRUE(d->qkv_bias && d->o_bias);
}

// Mistral: sliding_window (an int, or null for none; absent means transformers' default 4096) is a real window.
TEST(ModelConfigTest, MistralSlidingWindow) {
    auto c = Parse(FamilyConfig("MistralForCausalLM", R"(, "sliding_window": 4096)"));
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->model_type, "mistral");
    EXPECT_EQ(c->sliding_window, 4096);
    auto none = Parse(FamilyConfig("MistralForCausalLM", R"(, "sliding_window": null)"));
    ASSERT_TRUE(none.ok());
    EXPECT_EQ(none->sliding_window, 0);
    auto absent = Parse(FamilyConfig("MistralForCausalLM"));
    ASSERT_TRUE(absent.ok());
    EXPECT_EQ(absent->sliding_window, 4096);
    ExpectRefused(FamilyConfig("MistralForCausalLM", R"(, "sliding_window": 0)"), StatusCode::kInvalidArgument,
                  {"sliding_window"});
    // transformers' Mistral has no attention biases whatever the key says, vLLM's reads it: refused.
    ExpectRefused(FamilyConfig("MistralForCausalLM", R"(, "attention_bias": true)"), StatusCode::kUnimplemented,
                  {"attention_bias"});
    // Llama has no window: the key changes nothing there.
    auto llama = Parse(FamilyConfig("LlamaForCausalLM", R"(, "sliding_window": 64)"));
    ASSERT_TRUE(llama.ok());
    EXPECT_EQ(llama->sliding_window, 0);
}

TEST(ModelConfigTest, HiddenActOtherThanSiluIsRefused) {
    EXPECT_TRUE(Parse(FamilyConfig("LlamaForCausalLM", R"(, "hidden_act": "silu")")).ok());
    ExpectRefused(FamilyConfig("LlamaForCausalLM", R"(, "hidden_act": "gelu_pytorch_tanh")"),
                  StatusCode::kUnimplemented, {"hidden_act", "gelu_pytorch_tanh"});
}

TEST(ModelConfigTest, PartialRotaryFactor) {
    EXPECT_TRUE(Parse(FamilyConfig("LlamaForCausalLM", R"(, "partial_rotary_factor": 1.0)")).ok());
    ExpectRefused(FamilyConfig("LlamaForCausalLM", R"(, "partial_rotary_factor": 0.5)"), StatusCode::kUnimplemented,
                  {"partial_rotary_factor", "0.5"});
}

// pretraining_tp > 1 made old transformers split the same projections into slices and sum them: the same
// model (and current transformers ignores the key), so any value loads.
TEST(ModelConfigTest, PretrainingTpChangesNothing) {
    for (const char* tp : {R"(, "pretraining_tp": 1)", R"(, "pretraining_tp": 2)"}) {
        EXPECT_TRUE(Parse(FamilyConfig("LlamaForCausalLM", tp)).ok()) << tp;
    }
}

TEST(ModelConfigTest, LogitSoftcappingIsRefused) {
    EXPECT_TRUE(
        Parse(FamilyConfig("LlamaForCausalLM", R"(, "attn_logit_softcapping": null, "final_logit_softcapping": null)"))
            .ok());
    ExpectRefused(FamilyConfig("LlamaForCausalLM", R"(, "attn_logit_softcapping": 50.0)"), StatusCode::kUnimplemented,
                  {"attn_logit_softcapping"});
    ExpectRefused(FamilyConfig("LlamaForCausalLM", R"(, "final_logit_softcapping": 30.0)"), StatusCode::kUnimplemented,
                  {"final_logit_softcapping"});
}

TEST(ModelConfigTest, UseQkNormOnLlamaIsRefused) {
    EXPECT_TRUE(Parse(FamilyConfig("LlamaForCausalLM", R"(, "use_qk_norm": false)")).ok());
    ExpectRefused(FamilyConfig("LlamaForCausalLM", R"(, "use_qk_norm": true)"), StatusCode::kUnimplemented,
                  {"use_qk_norm"});
}

TEST(ModelConfigTest, LayerTypes) {
    EXPECT_TRUE(
        Parse(FamilyConfig("Qwen3ForCausalLM", R"(, "layer_types": ["full_attention", "full_attention"])")).ok());
    ExpectRefused(FamilyConfig("Qwen3ForCausalLM", R"(, "layer_types": ["full_attention", "sliding_attention"])"),
                  StatusCode::kUnimplemented, {"layer_types[1]", "sliding_attention"});
    ExpectRefused(FamilyConfig("Qwen2ForCausalLM", R"(, "layer_types": ["full_attention"])"),
                  StatusCode::kInvalidArgument, {"layer_types", "num_hidden_layers"});
    // A Mistral window applies to every layer, so its layers are all "sliding_attention".
    EXPECT_TRUE(
        Parse(FamilyConfig("MistralForCausalLM",
                           R"(, "sliding_window": 8, "layer_types": ["sliding_attention", "sliding_attention"])"))
            .ok());
}

TEST(ModelConfigTest, TieWordEmbeddingsAndRopeThetaWork) {
    auto c = Parse(FamilyConfig("Qwen2ForCausalLM", R"(, "tie_word_embeddings": true, "rope_theta": 1000000.0)"));
    ASSERT_TRUE(c.ok());
    EXPECT_TRUE(c->tie_word_embeddings);
    ExpectFreqsNear(c->RopeInvFreq(), PlainFreqs(1000000.0, 16));
}

TEST(ModelConfigTest, EosTokenIdIntOrList) {
    auto list = Parse(
        FamilyConfig("LlamaForCausalLM", R"(, "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009])"));
    ASSERT_TRUE(list.ok()) << list.status().ToString();
    EXPECT_EQ(list->eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
    EXPECT_EQ(list->eos_token_id, 128001);
    EXPECT_EQ(list->bos_token_id, 128000);
    auto one = Parse(FamilyConfig("Qwen3ForCausalLM", R"(, "eos_token_id": 151645)"));
    ASSERT_TRUE(one.ok());
    EXPECT_EQ(one->eos_token_ids, (std::vector<int32_t>{151645}));
    EXPECT_EQ(one->eos_token_id, 151645);
    ExpectRefused(FamilyConfig("LlamaForCausalLM", R"(, "eos_token_id": [])"), StatusCode::kInvalidArgument,
                  {"eos_token_id"});
    ExpectRefused(FamilyConfig("LlamaForCausalLM", R"(, "eos_token_id": ["</s>"])"), StatusCode::kInvalidArgument,
                  {"eos_token_id"});
}

TEST(ModelConfigTest, ArchitecturesAndModelType) {
    ExpectRefused(FamilyConfig("GemmaForCausalLM"), StatusCode::kUnimplemented,
                  {"GemmaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"});
    ExpectRefused(FamilyConfig("Qwen2ForCausalLM", R"(, "model_type": "qwen3")"), StatusCode::kInvalidArgument,
                  {"model_type", "qwen3", "Qwen2ForCausalLM"});
    // Without "architectures" the model_type names the family.
    auto c = Parse(R"({"model_type": "qwen3", "vocab_size": 320, "hidden_size": 64, "intermediate_size": 128,
                       "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 16})");
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(c->architecture, "Qwen3ForCausalLM");
    EXPECT_TRUE(c->qk_norm);
}

// ToJson writes each family's keys so that FromJson reads back the same model (unify writes config.json with it).
TEST(ModelConfigTest, ToJsonRoundTripsEveryFamily) {
    const std::vector<std::string> configs = {
        FamilyConfig("LlamaForCausalLM", kLlama31Rope + std::string(R"(, "eos_token_id": [128001, 128009])")),
        FamilyConfig("LlamaForCausalLM",
                     R"(, "attention_bias": true, "rope_scaling": {"type": "linear", "factor": 2.0})"),
        FamilyConfig(
            "LlamaForCausalLM",
            R"(, "rope_scaling": {"rope_type": "dynamic", "factor": 3.0, "original_max_position_embeddings": 128})"),
        FamilyConfig("MistralForCausalLM", R"(, "sliding_window": 7)"),
        FamilyConfig("MistralForCausalLM", R"(, "sliding_window": null)"),
        FamilyConfig("Qwen2ForCausalLM",
                     R"(, "use_sliding_window": false, "sliding_window": 32768, "tie_word_embeddings": true)"),
        FamilyConfig("Qwen3ForCausalLM", R"(, "head_dim": 32, "attention_bias": true, "grouping_idx": 2,
                                             "grouping_begin_idx": 0, "grouping_end_idx": 2)"),
    };
    for (const std::string& text : configs) {
        auto a = Parse(text);
        ASSERT_TRUE(a.ok()) << a.status().ToString();
        auto b = Parse(DumpJson(a->ToJson()));
        ASSERT_TRUE(b.ok()) << b.status().ToString() << "\n" << DumpJson(a->ToJson());
        EXPECT_EQ(DumpJson(a->ToJson()), DumpJson(b->ToJson()));
        EXPECT_EQ(b->architecture, a->architecture);
        EXPECT_EQ(b->model_type, a->model_type);
        EXPECT_EQ(b->qkv_bias, a->qkv_bias);
        EXPECT_EQ(b->o_bias, a->o_bias);
        EXPECT_EQ(b->qk_norm, a->qk_norm);
        EXPECT_EQ(b->sliding_window, a->sliding_window);
        EXPECT_EQ(b->head_dim, a->head_dim);
        EXPECT_EQ(b->eos_token_ids, a->eos_token_ids);
        EXPECT_EQ(b->tie_word_embeddings, a->tie_word_embeddings);
        EXPECT_EQ(b->rope_scaling.type, a->rope_scaling.type);
        EXPECT_EQ(b->RopeInvFreq(), a->RopeInvFreq());
        EXPECT_EQ(b->layer_kinds, a->layer_kinds);
    }
}

}  // namespace
}  // namespace uniattn
