#include "server/chat_template.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "tests/server/fake_engine.h"

namespace uniattn::server {
namespace {

const std::vector<ChatMessage> kConversation = {
    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "Bye"}};

TEST(ChatTemplateTest, Llama2) {
    auto t = RenderChatText(ChatTemplate::kLlama2, kConversation, true);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(*t, "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Bye [/INST]");
}

TEST(ChatTemplateTest, Mistral) {
    auto t = RenderChatText(ChatTemplate::kMistral, kConversation, true);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(*t, "<s>[INST] Be brief.\n\nHi [/INST]Hello.</s>[INST] Bye [/INST]");
}

TEST(ChatTemplateTest, Llama3) {
    auto t = RenderChatText(ChatTemplate::kLlama3, {{"user", "Hi"}}, true);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(*t,
              "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplateTest, Chatml) {
    auto t = RenderChatText(ChatTemplate::kChatml, {{"developer", "S"}, {"user", "Hi"}}, true);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(*t, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    auto no_gen = RenderChatText(ChatTemplate::kChatml, {{"user", "Hi"}}, false);
    EXPECT_EQ(*no_gen, "<|im_start|>user\nHi<|im_end|>\n");
}

TEST(ChatTemplateTest, Plain) {
    auto t = RenderChatText(ChatTemplate::kPlain, {{"user", "Once upon a time"}, {"assistant", "there"}}, true);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(*t, "<s>Once upon a time\n\nthere");
}

TEST(ChatTemplateTest, NoneIsAClearError) {
    auto t = RenderChatText(ChatTemplate::kNone, {{"user", "Hi"}}, true);
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.status().message().find("model.chat_template"), std::string::npos);
}

TEST(ChatTemplateTest, AlternationIsChecked) {
    auto t = RenderChatText(ChatTemplate::kLlama2, {{"user", "a"}, {"user", "b"}}, true);
    ASSERT_FALSE(t.ok());
    EXPECT_NE(t.status().message().find("alternate"), std::string::npos);
    EXPECT_FALSE(RenderChatText(ChatTemplate::kChatml, {{"robot", "a"}}, true).ok());
}

// A model directory made by the test, removed at the end.
class TempModelDir {
  public:
    TempModelDir() {
        path_ = std::filesystem::path(::testing::TempDir()) /
                ("chat_template_test_" + std::to_string(getpid()) + "_" + std::to_string(counter_++));
        std::filesystem::create_directories(path_);
    }
    ~TempModelDir() { std::filesystem::remove_all(path_); }
    std::string path() const { return path_.string(); }
    void Write(const std::string& name, const std::string& text) const {
        std::ofstream(path_ / name, std::ios::binary) << text;
    }

  private:
    static inline int counter_ = 0;
    std::filesystem::path path_;
};

std::string Render(const ResolvedChatTemplate& t, const nlohmann::ordered_json& messages,
                   const nlohmann::ordered_json& kwargs = nlohmann::ordered_json::object()) {
    JinjaChatInput input;
    input.messages = messages;
    input.tools = nullptr;
    input.kwargs = kwargs;
    auto text = RenderJinjaChat(*t.jinja, input, 0);
    return text.ok() ? *text : "ERROR: " + text.status().message();
}

const nlohmann::ordered_json kHi = nlohmann::ordered_json::parse(R"([{"role": "user", "content": "Hi"}])");

TEST(ChatTemplateTest, AutoPrefersChatTemplateJinjaThenJsonThenTokenizerConfig) {
    TempModelDir dir;
    dir.Write("tokenizer_config.json",
              R"({"bos_token": {"content": "<B>", "lstrip": false}, "eos_token": "<E>", "model_max_length": 8,
                  "chat_template": "config:{{ bos_token }}{{ messages[0].content }}{{ eos_token }}"})");
    std::string detail;
    auto t = ResolveChatTemplate("auto", dir.path(), &detail);
    ASSERT_TRUE(t.ok()) << t.status().message();
    ASSERT_NE(t->jinja, nullptr);
    EXPECT_EQ(t->name, "auto:" + dir.path() + "/tokenizer_config.json");
    // AddedToken objects stand for their content; numbers are not template variables.
    EXPECT_EQ(Render(*t, kHi), "config:<B>Hi<E>");
    EXPECT_FALSE(t->jinja->special_tokens.contains("model_max_length"));

    dir.Write("chat_template.json", R"({"chat_template": "json:{{ messages[0].content }}"})");
    t = ResolveChatTemplate("auto", dir.path(), &detail);
    ASSERT_TRUE(t.ok()) << t.status().message();
    EXPECT_EQ(Render(*t, kHi), "json:Hi");

    dir.Write("chat_template.jinja", "jinja:{{ messages[0].content }}{{ eos_token }}\n");
    t = ResolveChatTemplate("auto", dir.path(), &detail);
    ASSERT_TRUE(t.ok()) << t.status().message();
    EXPECT_EQ(t->name, "auto:" + dir.path() + "/chat_template.jinja");
    EXPECT_EQ(Render(*t, kHi), "jinja:Hi<E>");  // Jinja drops the file's one trailing newline
}

TEST(ChatTemplateTest, TokenizerConfigListTakesTheDefaultEntry) {
    TempModelDir dir;
    dir.Write("tokenizer_config.json", R"({"chat_template": [{"name": "tool_use", "template": "tools"},
                                                              {"name": "default", "template": "default"}]})");
    auto t = ResolveChatTemplate("auto", dir.path(), nullptr);
    ASSERT_TRUE(t.ok()) << t.status().message();
    EXPECT_EQ(Render(*t, kHi), "default");
}

TEST(ChatTemplateTest, NoTemplateFallsBackToNone) {
    TempModelDir dir;
    std::string detail;
    auto t = ResolveChatTemplate("auto", dir.path(), &detail);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(t->jinja, nullptr);
    EXPECT_EQ(t->builtin, ChatTemplate::kNone);
    EXPECT_NE(detail.find("no chat template"), std::string::npos) << detail;
    // The default model has no template of its own either.
    auto stories = ResolveChatTemplate("auto", std::string(UNIATTN_SOURCE_DIR) + "/models/stories15M", nullptr);
    ASSERT_TRUE(stories.ok());
    EXPECT_EQ(stories->jinja, nullptr);
}

TEST(ChatTemplateTest, BuiltinNamesAndPaths) {
    TempModelDir dir;
    dir.Write("tokenizer_config.json", R"({"chat_template": "ignored", "eos_token": "</s>"})");
    auto builtin = ResolveChatTemplate("chatml", dir.path(), nullptr);
    ASSERT_TRUE(builtin.ok());
    EXPECT_EQ(builtin->jinja, nullptr);
    EXPECT_EQ(builtin->builtin, ChatTemplate::kChatml);
    EXPECT_EQ(builtin->name, "chatml");

    dir.Write("mine.jinja", "mine:{{ messages[0].content }}{{ eos_token }}");
    const std::string path = dir.path() + "/mine.jinja";
    auto file = ResolveChatTemplate(path, dir.path(), nullptr);
    ASSERT_TRUE(file.ok()) << file.status().message();
    EXPECT_EQ(file->name, path);
    EXPECT_EQ(Render(*file, kHi), "mine:Hi</s>");  // the model's special tokens still apply

    auto missing = ResolveChatTemplate(dir.path() + "/absent.jinja", dir.path(), nullptr);
    ASSERT_FALSE(missing.ok());
    EXPECT_NE(missing.status().message().find("absent.jinja"), std::string::npos);
}

TEST(ChatTemplateTest, AParseErrorNamesTheFileLineAndColumn) {
    TempModelDir dir;
    dir.Write("chat_template.jinja", "ok\n{% for m in messages %}\n{{ m.content | no_such_filter }}{% endfor %}");
    auto t = ResolveChatTemplate("auto", dir.path(), nullptr);
    ASSERT_FALSE(t.ok());
    const std::string& msg = t.status().message();
    EXPECT_NE(msg.find(dir.path() + "/chat_template.jinja:3:"), std::string::npos) << msg;
    EXPECT_NE(msg.find("no_such_filter"), std::string::npos) << msg;
}

TEST(ChatTemplateTest, RenderErrorsAreInvalidArgumentWithTheTemplatesMessage) {
    TempModelDir dir;
    dir.Write("chat_template.jinja",
              "{% if messages[0].role != 'system' %}{{ raise_exception('need a system message') }}"
              "{% endif %}{{ messages[0].content + 1 }}");
    auto t = ResolveChatTemplate("auto", dir.path(), nullptr);
    ASSERT_TRUE(t.ok());
    JinjaChatInput input;
    input.messages = kHi;
    auto raised = RenderJinjaChat(*t->jinja, input, 0);
    ASSERT_FALSE(raised.ok());
    EXPECT_EQ(raised.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(raised.status().message(), "need a system message");
    input.messages = nlohmann::ordered_json::parse(R"([{"role": "system", "content": "S"}])");
    auto runtime = RenderJinjaChat(*t->jinja, input, 0);
    ASSERT_FALSE(runtime.ok());
    EXPECT_NE(runtime.status().message().find("chat_template.jinja"), std::string::npos) << runtime.status().message();
}

// The real templates of the tokenizer test data, through the whole server path.
TEST(ChatTemplateTest, RealTokenizerConfigs) {
    const std::string base = std::string(UNIATTN_SOURCE_DIR) + "/models/tokenizers";
    if (!std::filesystem::exists(base + "/qwen3/tokenizer_config.json")) {
        GTEST_SKIP() << base << " is missing: run scripts/fetch_testdata.sh";
    }
    auto llama = ResolveChatTemplate("auto", base + "/llama-3.1", nullptr);
    ASSERT_TRUE(llama.ok()) << llama.status().message();
    ASSERT_NE(llama->jinja, nullptr);
    // This tokenizer_config.json carries the Llama-3 template (the bos_token is written by the template).
    EXPECT_EQ(Render(*llama, kHi),
              "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n");

    auto qwen = ResolveChatTemplate("auto", base + "/qwen3", nullptr);
    ASSERT_TRUE(qwen.ok()) << qwen.status().message();
    JinjaChatInput input;
    input.messages = kHi;
    input.kwargs = {{"enable_thinking", false}};
    auto q = RenderJinjaChat(*qwen->jinja, input, 0);
    ASSERT_TRUE(q.ok()) << q.status().message();
    EXPECT_EQ(*q, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
}

TEST(ChatTemplateTest, BosAndEosBecomeIds) {
    testing::ByteTokenizer tok;
    auto ids = RenderChat(ChatTemplate::kLlama2, {{"user", "a"}, {"assistant", "b"}, {"user", "c"}}, true, tok);
    ASSERT_TRUE(ids.ok());
    int bos = 0, eos = 0;
    for (int32_t id : *ids) {
        bos += id == tok.bos_id();
        eos += id == tok.eos_id();
    }
    EXPECT_EQ(bos, 2);
    EXPECT_EQ(eos, 1);
    EXPECT_EQ((*ids)[0], tok.bos_id());
}

}  // namespace
}  // namespace uniattn::server
