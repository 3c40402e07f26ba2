#include "server/chat_template.h"

#include <gtest/gtest.h>

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

TEST(ChatTemplateTest, Detection) {
    EXPECT_EQ(DetectChatTemplate("{{ '<|start_header_id|>' + message['role'] }}"), ChatTemplate::kLlama3);
    EXPECT_EQ(DetectChatTemplate("{{'<|im_start|>' + message['role']}}"), ChatTemplate::kChatml);
    EXPECT_EQ(DetectChatTemplate("{{ bos_token + '[INST] <<SYS>>\\n' }}"), ChatTemplate::kLlama2);
    EXPECT_EQ(DetectChatTemplate("{{ '[INST] ' + message['content'] + ' [/INST]' }}"), ChatTemplate::kMistral);
    EXPECT_EQ(DetectChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}"), ChatTemplate::kNone);
    // The default model has no chat_template.
    std::string detail;
    EXPECT_EQ(DetectChatTemplateInDir(std::string(UNIATTN_SOURCE_DIR) + "/models/stories15M", &detail),
              ChatTemplate::kNone);
    EXPECT_FALSE(detail.empty());
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
