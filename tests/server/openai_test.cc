// Request validation (JSON -> GenerationRequest) and response shaping (events -> JSON / SSE).
#include <gtest/gtest.h>

#include "server/jinja/jinja.h"
#include "server/openai_request.h"
#include "server/openai_response.h"
#include "tests/server/fake_engine.h"

namespace uniattn::server {
namespace {

using nlohmann::json;

class OpenAiTest : public ::testing::Test {
  protected:
    OpenAiTest() {
        model_.model_name = "m";
        model_.tokenizer = &tok_;
        model_.limits.max_model_len = 64;
        model_.limits.vocab_size = tok_.vocab_size();
        model_.chat_template = ChatTemplate::kPlain;
    }
    ApiResult<OpenAiRequest> Completion(const json& body) {
        return ParseOpenAiRequest(Endpoint::kCompletions, body.dump(), model_);
    }
    ApiResult<OpenAiRequest> Chat(const json& body) {
        return ParseOpenAiRequest(Endpoint::kChatCompletions, body.dump(), model_);
    }
    void ExpectError(const ApiResult<OpenAiRequest>& r, int status, const std::string& param,
                     const std::string& code = {}) {
        ASSERT_FALSE(r.ok());
        EXPECT_EQ(r.error().http_status, status) << r.error().message;
        EXPECT_EQ(r.error().param, param) << r.error().message;
        EXPECT_EQ(r.error().code, code) << r.error().message;
    }
    testing::ByteTokenizer tok_;
    ServedModel model_;
};

TEST_F(OpenAiTest, CompletionDefaultsAndFields) {
    auto r = Completion({{"model", "m"},
                         {"prompt", "hi"},
                         {"temperature", 0},
                         {"top_p", 0.5},
                         {"top_k", 5},
                         {"min_p", 0.1},
                         {"repetition_penalty", 1.1},
                         {"presence_penalty", 0.5},
                         {"frequency_penalty", -0.5},
                         {"seed", 7},
                         {"n", 2},
                         {"stop", "x"},
                         {"stop_token_ids", {5}},
                         {"logit_bias", {{"10", -100}}},
                         {"ignore_eos", true},
                         {"logprobs", 3},
                         {"echo", true},
                         {"unknown_field", {1, 2}}});
    ASSERT_TRUE(r.ok()) << r.error().message;
    const OpenAiRequest& q = r.value();
    EXPECT_EQ(q.prompts.size(), 1u);
    EXPECT_EQ(q.prompts[0], (std::vector<int32_t>{1, 3 + 'h', 3 + 'i'}));
    EXPECT_EQ(q.params.max_tokens, 16);
    EXPECT_EQ(q.params.temperature, 0.0f);
    EXPECT_EQ(q.params.top_k, 5);
    EXPECT_EQ(q.params.seed, 7u);
    EXPECT_EQ(q.params.n, 2);
    EXPECT_EQ(q.params.stop, (std::vector<std::string>{"x"}));
    EXPECT_EQ(q.params.stop_token_ids, (std::vector<int32_t>{5}));
    EXPECT_EQ(q.params.logit_bias.at(10), -100.0f);
    EXPECT_TRUE(q.params.ignore_eos);
    EXPECT_EQ(q.params.logprobs, 3);
    EXPECT_TRUE(q.echo);
    EXPECT_EQ(q.num_choices(), 2);
}

// generation_config.json's defaults (after model.override_generation_config) fill the fields a request leaves
// unset, as vLLM's `--generation-config auto`; the request's own fields win; null means unset.
TEST_F(OpenAiTest, ModelSamplingDefaultsFillUnsetFields) {
    model_.sampling_defaults.temperature = 0.6f;
    model_.sampling_defaults.top_p = 0.9f;
    model_.sampling_defaults.top_k = 20;
    auto r = Completion({{"prompt", "hi"}, {"top_p", 0.5}, {"temperature", nullptr}});
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_FLOAT_EQ(r.value().params.temperature, 0.6f);
    EXPECT_FLOAT_EQ(r.value().params.top_p, 0.5f);
    EXPECT_EQ(r.value().params.top_k, 20);
    EXPECT_FLOAT_EQ(r.value().params.min_p, 0.0f);  // not in the defaults: the request's own default
    r = Chat({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"temperature", 0}, {"top_k", -1}});
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_FLOAT_EQ(r.value().params.temperature, 0.0f);
    EXPECT_EQ(r.value().params.top_k, -1);
    EXPECT_FLOAT_EQ(r.value().params.top_p, 0.9f);
}

TEST_F(OpenAiTest, PromptForms) {
    auto list = Completion({{"prompt", {"a", "b"}}});
    ASSERT_TRUE(list.ok());
    EXPECT_EQ(list.value().prompts.size(), 2u);
    auto ids = Completion({{"prompt", {1, 10, 11}}});
    ASSERT_TRUE(ids.ok());
    EXPECT_EQ(ids.value().prompts[0], (std::vector<int32_t>{1, 10, 11}));
    auto lists = Completion({{"prompt", {{1, 10}, {1, 11}}}});
    ASSERT_TRUE(lists.ok());
    EXPECT_EQ(lists.value().prompts.size(), 2u);
    ExpectError(Completion({{"prompt", {1, 100000}}}), 400, "prompt");
    ExpectError(Completion({{"prompt", 5}}), 400, "prompt");
    ExpectError(Completion({{"prompt", json::array()}}), 400, "prompt");
    ExpectError(Completion(json::object()), 400, "prompt");
    auto no_bos = Completion({{"prompt", "a"}, {"add_special_tokens", false}});
    EXPECT_EQ(no_bos.value().prompts[0], (std::vector<int32_t>{3 + 'a'}));
}

TEST_F(OpenAiTest, WrongTypesAndRangesNameTheParam) {
    ExpectError(Completion({{"prompt", "a"}, {"temperature", "hot"}}), 400, "temperature");
    ExpectError(Completion({{"prompt", "a"}, {"temperature", -1}}), 400, "temperature");
    ExpectError(Completion({{"prompt", "a"}, {"top_p", 0}}), 400, "top_p");
    ExpectError(Completion({{"prompt", "a"}, {"top_k", -2}}), 400, "top_k");
    ExpectError(Completion({{"prompt", "a"}, {"max_tokens", 1.5}}), 400, "max_tokens");
    ExpectError(Completion({{"prompt", "a"}, {"max_tokens", 0}}), 400, "max_tokens");
    ExpectError(Completion({{"prompt", "a"}, {"n", 0}}), 400, "n");
    ExpectError(Completion({{"prompt", "a"}, {"stop", {1}}}), 400, "stop");
    ExpectError(Completion({{"prompt", "a"}, {"logprobs", 21}}), 400, "logprobs");
    ExpectError(Completion({{"prompt", "a"}, {"logit_bias", {{"x", 1}}}}), 400, "logit_bias");
    ExpectError(Completion({{"prompt", "a"}, {"logit_bias", {{"5", 200}}}}), 400, "logit_bias");
    ExpectError(Completion({{"prompt", "a"}, {"seed", "x"}}), 400, "seed");
    ExpectError(Completion({{"prompt", "a"}, {"stream", "yes"}}), 400, "stream");
    ExpectError(Completion({{"prompt", "a"}, {"stream_options", {{"include_usage", true}}}}), 400, "stream_options");
    ExpectError(Completion({{"prompt", "a"}, {"stream", true}, {"stream_options", {{"include_usage", 1}}}}), 400,
                "stream_options.include_usage");
    ExpectError(Completion({{"prompt", "a"}, {"presence_penalty", 3}}), 400, "presence_penalty");
    ExpectError(Completion({{"prompt", "a"}, {"best_of", 3}}), 400, "best_of", "unsupported");
    // null means absent.
    EXPECT_TRUE(Completion({{"prompt", "a"}, {"temperature", nullptr}, {"stop", nullptr}}).ok());
}

TEST_F(OpenAiTest, MalformedJson) {
    auto r = ParseOpenAiRequest(Endpoint::kCompletions, "{\"prompt\": ", model_);
    ExpectError(r, 400, "");
    EXPECT_NE(r.error().message.find("invalid JSON"), std::string::npos);
    ExpectError(ParseOpenAiRequest(Endpoint::kCompletions, "[1,2]", model_), 400, "");
    r = ParseOpenAiRequest(Endpoint::kCompletions, std::string(100000, '['), model_);
    ExpectError(r, 400, "");
    EXPECT_EQ(r.error().message, "invalid JSON: nested deeper than 64 levels");
    // The bound counts containers (uniattn/json_io.h's ParseJsonBounded): 64 parse (then fail as no object).
    r = ParseOpenAiRequest(Endpoint::kCompletions, std::string(64, '[') + std::string(64, ']'), model_);
    ExpectError(r, 400, "");
    EXPECT_EQ(r.error().message.find("invalid JSON"), std::string::npos) << r.error().message;
    // A number beyond a double's range is nlohmann's out_of_range, not parse_error (found by fuzz_openai_request).
    r = ParseOpenAiRequest(Endpoint::kCompletions, R"({"prompt": "a", "max_tokens": 1e400})", model_);
    ExpectError(r, 400, "");
    EXPECT_NE(r.error().message.find("number overflow"), std::string::npos) << r.error().message;
    auto t = HandleTokenize(R"({"prompt": -1e99999})", model_);
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.error().http_status, 400);
}

TEST_F(OpenAiTest, UnknownModelIs404) {
    ExpectError(Completion({{"model", "gpt-4"}, {"prompt", "a"}}), 404, "model", "model_not_found");
}

TEST_F(OpenAiTest, ContextLength) {
    // 64-token context: the prompt (BOS + 70 bytes) does not fit.
    auto r = Completion({{"prompt", std::string(70, 'a')}});
    ExpectError(r, 400, "prompt", "context_length_exceeded");
    EXPECT_NE(r.error().message.find("64"), std::string::npos);
    EXPECT_NE(r.error().message.find("71"), std::string::npos);
    auto r2 = Completion({{"prompt", std::string(40, 'a')}, {"max_tokens", 30}});
    ExpectError(r2, 400, "prompt", "context_length_exceeded");
    EXPECT_NE(r2.error().message.find("41 in the prompt"), std::string::npos) << r2.error().message;
    // Without max_tokens the default shrinks to the room left.
    auto r3 = Completion({{"prompt", std::string(60, 'a')}});
    ASSERT_TRUE(r3.ok());
    EXPECT_EQ(r3.value().params.max_tokens, 3);
    auto chat = Chat({{"messages", {{{"role", "user"}, {"content", std::string(80, 'a')}}}}});
    ExpectError(chat, 400, "messages", "context_length_exceeded");
}

// 2147483647 used to wrap in `prompt + max_tokens` (UBSan: signed overflow) and pass the context check.
TEST_F(OpenAiTest, MaxTokensNearIntMaxIsAContextErrorNotAnOverflow) {
    const json messages = {{{"role", "user"}, {"content", "Hi"}}};
    for (int64_t mt : {int64_t{2147483645}, int64_t{2147483646}, int64_t{2147483647}}) {
        auto c = Completion({{"prompt", "Hi"}, {"max_tokens", mt}});
        ExpectError(c, 400, "prompt", "context_length_exceeded");
        EXPECT_NE(c.error().message.find(std::to_string(3 + mt)), std::string::npos) << c.error().message;
        ExpectError(Chat({{"messages", messages}, {"max_tokens", mt}}), 400, "messages", "context_length_exceeded");
        ExpectError(Chat({{"messages", messages}, {"max_completion_tokens", mt}}), 400, "messages",
                    "context_length_exceeded");
    }
    ExpectError(Completion({{"prompt", "Hi"}, {"max_tokens", int64_t{2147483648}}}), 400, "max_tokens");
}

TEST_F(OpenAiTest, PromptsTimesNIsCappedPerRequest) {
    model_.limits.max_sequences_per_request = 8;
    EXPECT_TRUE(Completion({{"prompt", {"a", "b", "c", "d"}}, {"n", 2}}).ok());
    auto r = Completion({{"prompt", {"a", "b", "c"}}, {"n", 3}});
    ExpectError(r, 400, "n");
    EXPECT_NE(r.error().message.find("9 sequences"), std::string::npos) << r.error().message;
    ExpectError(Completion({{"prompt", json::array({"a", "b", "c", "d", "e", "f", "g", "h", "i"})}}), 400, "prompt");
    ExpectError(Completion({{"prompt", "a"}, {"n", 9}}), 400, "n");
}

// Counts Encode calls: an oversized prompt must be refused without one.
class CountingTokenizer final : public Tokenizer {
  public:
    explicit CountingTokenizer(const Tokenizer& inner) : inner_(inner) {}
    std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override {
        ++encodes;
        return inner_.Encode(text, add_bos);
    }
    using Tokenizer::Decode;
    std::string Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override {
        return inner_.Decode(ids, skip_special_tokens);
    }
    std::string IdToPiece(int32_t id) const override { return inner_.IdToPiece(id); }
    int vocab_size() const override { return inner_.vocab_size(); }
    int max_token_bytes() const override { return inner_.max_token_bytes(); }
    mutable int encodes = 0;

  private:
    const Tokenizer& inner_;
};

TEST_F(OpenAiTest, OversizedPromptIsRefusedBeforeTokenizing) {
    CountingTokenizer counting(tok_);
    model_.tokenizer = &counting;
    model_.limits.max_prompt_bytes = 64 * tok_.max_token_bytes();
    auto r = Completion({{"prompt", std::string(65, 'a')}});
    ExpectError(r, 400, "prompt", "context_length_exceeded");
    EXPECT_NE(r.error().message.find("65 bytes"), std::string::npos) << r.error().message;
    ExpectError(Completion({{"prompt", {"a", std::string(1000, 'a')}}}), 400, "prompt", "context_length_exceeded");
    ExpectError(Chat({{"messages", {{{"role", "user"}, {"content", std::string(70, 'a')}}}}}), 400, "messages",
                "context_length_exceeded");
    EXPECT_EQ(counting.encodes, 1);  // only the short "a" of the list, before the long one was reached
    // At the bound the prompt is tokenized (and then fails on its token count: BOS + 64 bytes).
    ExpectError(Completion({{"prompt", std::string(64, 'a')}}), 400, "prompt", "context_length_exceeded");
    EXPECT_EQ(counting.encodes, 2);
}

TEST_F(OpenAiTest, SamplingRangesAreTheEnginesAndNameTheField) {
    auto t = Completion({{"prompt", "a"}, {"temperature", -1}});
    ExpectError(t, 400, "temperature");
    EXPECT_EQ(t.error().message, "temperature: -1 is out of range (must be in [0, 100])");
    model_.limits.max_n = 4;  // max_num_seqs 4
    auto n = Completion({{"prompt", "a"}, {"n", 1000}});
    ExpectError(n, 400, "n");
    EXPECT_EQ(n.error().message, "n: 1000 is out of range (must be in [1, 4] (max_num_seqs))");
    GenerationRequest g;
    g.prompt_ids = {1, 70};
    g.temperature = -1;
    const Status s = ValidateRequest(g, model_.limits).status();
    EXPECT_EQ(s.field(), "temperature");
    EXPECT_EQ(s.message(), t.error().message);
}

TEST_F(OpenAiTest, ChatMessages) {
    auto r = Chat({{"messages",
                    {{{"role", "system"}, {"content", "s"}},
                     {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "u"}}}}}}},
                   {"max_completion_tokens", 5},
                   {"max_tokens", 9},
                   {"logprobs", true},
                   {"top_logprobs", 2}});
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r.value().params.max_tokens, 5);
    EXPECT_EQ(r.value().params.logprobs, 2);
    EXPECT_EQ(r.value().prompts[0], tok_.Encode("s\n\nu", true));
    // Default max_tokens for chat: the room left in the context.
    auto d = Chat({{"messages", {{{"role", "user"}, {"content", "hi"}}}}});
    EXPECT_EQ(d.value().params.max_tokens, 64 - 3);
    ExpectError(Chat({{"messages", "hi"}}), 400, "messages");
    ExpectError(Chat({{"messages", json::array()}}), 400, "messages");
    ExpectError(Chat({{"messages", {{{"role", "wizard"}, {"content", "x"}}}}}), 400, "messages[0].role");
    ExpectError(Chat({{"messages", {{{"role", "user"}, {"content", 5}}}}}), 400, "messages[0].content");
    ExpectError(Chat({{"messages", {{{"role", "user"}, {"content", {{{"type", "image_url"}}}}}}}}), 400,
                "messages[0].content[0].type");
    ExpectError(Chat({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"top_logprobs", 2}}), 400, "top_logprobs");
    ExpectError(Chat({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"tools", {{{"type", "function"}}}}}), 400,
                "tools", "unsupported");
    model_.chat_template = ChatTemplate::kNone;
    auto none = Chat({{"messages", {{{"role", "user"}, {"content", "x"}}}}});
    ExpectError(none, 400, "messages");
    EXPECT_NE(none.error().message.find("chat template"), std::string::npos);
}

// A model with its own Jinja template: the request's conversation reaches the template as vLLM passes it to
// transformers, render errors are 400s naming `messages`, and the text is tokenized without an added BOS.
class OpenAiJinjaTest : public OpenAiTest {
  protected:
    void UseTemplate(const std::string& source) {
        jinja::Error error;
        auto t = std::make_shared<JinjaChatTemplate>();
        t->source = "test.jinja";
        t->tmpl = jinja::Template::Parse(source, &error);
        ASSERT_NE(t->tmpl, nullptr) << error.ToString();
        t->special_tokens = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
        model_.jinja_template = std::move(t);
    }
    // The rendered text (the byte tokenizer decodes ids back to it).
    std::string Prompt(const json& body) {
        auto r = Chat(body);
        if (!r.ok()) return "ERROR " + r.error().param + ": " + r.error().message;
        return tok_.Decode(r.value().prompts[0]);
    }
};

TEST_F(OpenAiJinjaTest, RendersTheTemplateWithoutAnAddedBos) {
    UseTemplate(
        "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{{ eos_token }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}");
    auto r = Chat({{"messages", {{{"role", "user"}, {"content", "hi"}}}}});
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_NE(r.value().prompts[0][0], tok_.bos_id());  // the template's "<s>" is text, not an added id
    EXPECT_EQ(tok_.Decode(r.value().prompts[0]), "<s><user>hi</s><assistant>");
    EXPECT_EQ(Prompt({{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"add_generation_prompt", false}}),
              "<s><user>hi</s>");
    // Roles are the template's business (this one accepts any); content parts are joined with newlines.
    EXPECT_EQ(Prompt({{"messages",
                       {{{"role", "tool"},
                         {"content", {{{"type", "text"}, {"text", "a"}}, {{"type", "text"}, {"text", "b"}}}}}}},
                      {"add_generation_prompt", false}}),
              "<s><tool>a\nb</s>");
}

TEST_F(OpenAiJinjaTest, RenderErrorsAre400sWithTheTemplatesMessage) {
    UseTemplate(
        "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ messages[0].content + 1 }}");
    auto raised = Chat({{"messages", {{{"role", "system"}, {"content", "s"}}}}});
    ExpectError(raised, 400, "messages");
    EXPECT_EQ(raised.error().message, "System role not supported");
    auto runtime = Chat({{"messages", {{{"role", "user"}, {"content", "x"}}}}});
    ExpectError(runtime, 400, "messages");
    EXPECT_NE(runtime.error().message.find("unsupported operand"), std::string::npos) << runtime.error().message;
    auto tokenize = HandleTokenize(R"({"messages": [{"role": "system", "content": "s"}]})", model_);
    ASSERT_FALSE(tokenize.ok());
    EXPECT_EQ(tokenize.error().message, "System role not supported");
}

TEST_F(OpenAiJinjaTest, ChatTemplateKwargs) {
    UseTemplate(
        "{{ messages[0].content }}{% if enable_thinking is defined and enable_thinking is false %}"
        "<think></think>{% endif %}");
    EXPECT_EQ(Prompt({{"messages", {{{"role", "user"}, {"content", "q"}}}}}), "q");
    EXPECT_EQ(Prompt({{"messages", {{{"role", "user"}, {"content", "q"}}}},
                      {"chat_template_kwargs", {{"enable_thinking", false}}}}),
              "q<think></think>");
    ExpectError(Chat({{"messages", {{{"role", "user"}, {"content", "q"}}}}, {"chat_template_kwargs", 1}}), 400,
                "chat_template_kwargs");
    ExpectError(Chat({{"messages", {{{"role", "user"}, {"content", "q"}}}},
                      {"chat_template_kwargs", {{"messages", json::array()}}}}),
                400, "chat_template_kwargs.messages");
}

TEST_F(OpenAiJinjaTest, ToolCallsToolsAndKeyOrder) {
    UseTemplate(
        "{{ tools | tojson }}|{% for m in messages %}{{ m.role }}:{{ m.content }}:"
        "{% for c in m.tool_calls or [] %}{{ c.function.arguments | tojson }}{% endfor %}"
        "{{ m.tool_call_id }};{% endfor %}");
    model_.limits.max_model_len = 4096;
    // Tools reach the template only with tool_choice none (this server parses no tool calls, as vLLM without
    // a tool parser), in the order the client wrote their keys; string arguments become objects.
    const std::string body = R"({"messages": [
        {"role": "user", "content": "w?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"zz\": 1, \"aa\": [2]}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "none", "add_generation_prompt": false})";
    auto r = ParseOpenAiRequest(Endpoint::kChatCompletions, body, model_);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(tok_.Decode(r.value().prompts[0]),
              R"([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]|)"
              R"(user:w?:;assistant:None:{"zz": 1, "aa": [2]};tool:sunny:c1;)");
    const std::string bad = R"({"messages": [{"role": "assistant", "content": null, "tool_calls": [
        {"function": {"name": "f", "arguments": "{not json"}}]}]})";
    ExpectError(ParseOpenAiRequest(Endpoint::kChatCompletions, bad, model_), 400,
                "messages[0].tool_calls[0].function.arguments");
    ExpectError(Chat({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"tools", {{{"type", "function"}}}}}), 400,
                "tools", "unsupported");
    // No tools: the template sees None.
    EXPECT_EQ(Prompt({{"messages", {{{"role", "user"}, {"content", "x"}}}}}), "null|user:x:;");
}

TEST_F(OpenAiJinjaTest, ContinueFinalMessage) {
    UseTemplate(
        "{% for m in messages %}[{{ m.role }}]{{ m.content }}[/{{ m.role }}]{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}");
    const json messages = {{{"role", "user"}, {"content", "Count"}}, {{"role", "assistant"}, {"content", "1, 2,"}}};
    EXPECT_EQ(Prompt({{"messages", messages}, {"add_generation_prompt", false}, {"continue_final_message", true}}),
              "[user]Count[/user][assistant]1, 2,");
    ExpectError(Chat({{"messages", messages}, {"continue_final_message", true}}), 400, "continue_final_message");
}

TEST_F(OpenAiJinjaTest, TokenizeUsesTheSameRendering) {
    UseTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}");
    auto t = HandleTokenize(R"({"messages": [{"role": "user", "content": "ab"}]})", model_);
    ASSERT_TRUE(t.ok()) << t.error().message;
    std::vector<int32_t> ids = t.value()["tokens"].get<std::vector<int32_t>>();
    EXPECT_EQ(tok_.Decode(ids), "<user>ab");
    EXPECT_EQ(t.value()["count"], ids.size());
}

TEST_F(OpenAiTest, TokenizeDetokenize) {
    auto t = HandleTokenize(R"({"prompt": "ab"})", model_);
    ASSERT_TRUE(t.ok());
    EXPECT_EQ(t.value()["tokens"], json({1, 3 + 'a', 3 + 'b'}));
    EXPECT_EQ(t.value()["count"], 3);
    auto d = HandleDetokenize(R"({"tokens": [1, 100, 101]})", model_);
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d.value()["prompt"], "ab");
    EXPECT_FALSE(HandleDetokenize(R"({"tokens": ["a"]})", model_).ok());
    EXPECT_FALSE(HandleTokenize(R"({"prompt": 1})", model_).ok());
}

TEST_F(OpenAiTest, TokenText) {
    EXPECT_EQ(TokenText(tok_, 3 + ' '), " ");
    EXPECT_EQ(TokenText(tok_, 3 + 'a'), "a");
    // One byte of a character: U+FFFD as text (as vLLM); the byte itself is what TokenBytes (`bytes`) gives.
    EXPECT_EQ(TokenText(tok_, 3 + 0xC3), "\uFFFD");
    EXPECT_EQ(tok_.TokenBytes(3 + 0xC3), "\xC3");
}

RequestEvent Token(int index, char ch) {
    RequestEvent e;
    e.kind = RequestEvent::Kind::kToken;
    e.index = index;
    e.token = 3 + ch;
    e.text = std::string(1, ch);
    e.logprob = -0.25f;
    e.top_logprobs = {{3 + 'a', -0.25f}, {3 + 'b', -1.5f}};
    return e;
}

RequestEvent Finished(int index, FinishReason reason, int completion_tokens) {
    RequestEvent e;
    e.kind = RequestEvent::Kind::kFinished;
    e.index = index;
    e.finish_reason = reason;
    e.completion_tokens = completion_tokens;
    e.cached_tokens = 2;
    return e;
}

std::vector<json> ParseSse(const std::string& text, bool* done) {
    std::vector<json> out;
    *done = false;
    size_t pos = 0;
    while ((pos = text.find("data: ", pos)) != std::string::npos) {
        const size_t end = text.find("\n\n", pos);
        const std::string payload = text.substr(pos + 6, end - pos - 6);
        if (payload == "[DONE]") {
            *done = true;
        } else {
            out.push_back(json::parse(payload));
        }
        pos = end + 2;
    }
    return out;
}

TEST_F(OpenAiTest, NonStreamCompletionBody) {
    auto r = Completion({{"prompt", "hi"}, {"n", 2}, {"logprobs", 1}, {"echo", true}});
    ASSERT_TRUE(r.ok());
    OpenAiResponder resp(r.value(), tok_, "cmpl-1", 123);
    EXPECT_EQ(resp.OnEvent(0, Token(0, 'x')), "");
    resp.OnEvent(0, Token(1, 'y'));
    resp.OnEvent(0, Token(0, 'z'));
    resp.OnEvent(0, Finished(0, FinishReason::kLength, 2));
    EXPECT_FALSE(resp.done());
    resp.OnEvent(0, Finished(1, FinishReason::kStop, 1));
    ASSERT_TRUE(resp.done());
    const json body = resp.Body();
    EXPECT_EQ(body["object"], "text_completion");
    EXPECT_EQ(body["choices"][0]["text"], "hixz");
    EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
    EXPECT_EQ(body["choices"][1]["text"], "hiy");
    EXPECT_EQ(body["choices"][1]["finish_reason"], "stop");
    const json& lp = body["choices"][0]["logprobs"];
    // Echoed prompt tokens (BOS skipped) have null logprobs, then the generated ones.
    EXPECT_EQ(lp["tokens"], json({"h", "i", "x", "z"}));
    EXPECT_TRUE(lp["token_logprobs"][0].is_null());
    EXPECT_EQ(lp["token_logprobs"][2], -0.25);
    EXPECT_EQ(lp["top_logprobs"][2], json({{"a", -0.25}}));
    EXPECT_EQ(lp["text_offset"][2], 2);
    EXPECT_EQ(body["usage"]["prompt_tokens"], 3);
    EXPECT_EQ(body["usage"]["completion_tokens"], 3);
    EXPECT_EQ(body["usage"]["total_tokens"], 6);
    EXPECT_EQ(body["usage"]["prompt_tokens_details"]["cached_tokens"], 2);
}

TEST_F(OpenAiTest, StreamingChatChunks) {
    auto r = Chat({{"messages", {{{"role", "user"}, {"content", "hi"}}}},
                   {"stream", true},
                   {"stream_options", {{"include_usage", true}}},
                   {"logprobs", true},
                   {"top_logprobs", 1}});
    ASSERT_TRUE(r.ok());
    OpenAiResponder resp(r.value(), tok_, "chatcmpl-1", 123);
    std::string sse = resp.StreamStart();
    sse += resp.OnEvent(0, Token(0, 'o'));
    RequestEvent pending = Token(0, 'k');
    pending.text.clear();  // held back (a possible stop string)
    sse += resp.OnEvent(0, pending);
    RequestEvent fin = Finished(0, FinishReason::kStop, 2);
    fin.text = "k";
    sse += resp.OnEvent(0, fin);
    ASSERT_TRUE(resp.done());
    sse += resp.StreamEnd();
    bool done = false;
    auto chunks = ParseSse(sse, &done);
    EXPECT_TRUE(done);
    ASSERT_EQ(chunks.size(), 5u) << sse;
    EXPECT_EQ(chunks[0]["object"], "chat.completion.chunk");
    EXPECT_EQ(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    EXPECT_EQ(chunks[1]["choices"][0]["delta"]["content"], "o");
    EXPECT_EQ(chunks[1]["choices"][0]["logprobs"]["content"][0]["token"], "o");
    EXPECT_EQ(chunks[1]["choices"][0]["logprobs"]["content"][0]["top_logprobs"].size(), 1u);
    EXPECT_TRUE(chunks[1]["usage"].is_null());
    EXPECT_FALSE(chunks[2]["choices"][0]["delta"].contains("content"));  // logprobs only
    EXPECT_EQ(chunks[3]["choices"][0]["delta"]["content"], "k");
    EXPECT_EQ(chunks[3]["choices"][0]["finish_reason"], "stop");
    EXPECT_TRUE(chunks[4]["choices"].empty());
    EXPECT_EQ(chunks[4]["usage"]["completion_tokens"], 2);
    EXPECT_EQ(chunks[4]["usage"]["total_tokens"], 2 + 3);
}

// A token that is one byte of a character: its logprob `token` is U+FFFD and `bytes` holds the byte itself.
TEST_F(OpenAiTest, ChatLogprobBytesComeFromTokenBytes) {
    auto r = Chat({{"messages", {{{"role", "user"}, {"content", "hi"}}}}, {"logprobs", true}, {"top_logprobs", 1}});
    ASSERT_TRUE(r.ok());
    OpenAiResponder resp(r.value(), tok_, "chatcmpl-2", 123);
    RequestEvent e = Token(0, 'x');
    e.token = 3 + 0xC3;
    e.text.clear();
    e.top_logprobs = {{3 + 0xC3, -0.25f}};
    (void)resp.OnEvent(0, e);
    RequestEvent fin = Finished(0, FinishReason::kStop, 1);
    (void)resp.OnEvent(0, fin);
    ASSERT_TRUE(resp.done());
    const json body = resp.Body();
    const json& entry = body["choices"][0]["logprobs"]["content"][0];
    EXPECT_EQ(entry["token"], "\uFFFD");
    EXPECT_EQ(entry["bytes"], json::array({0xC3}));
    EXPECT_EQ(entry["top_logprobs"][0]["bytes"], json::array({0xC3}));
}

TEST_F(OpenAiTest, MidStreamErrorIsOneEventThenDone) {
    auto r = Completion({{"prompt", "hi"}, {"stream", true}});
    ASSERT_TRUE(r.ok());
    OpenAiResponder resp(r.value(), tok_, "cmpl-1", 123);
    std::string sse = resp.StreamStart();
    sse += resp.OnEvent(0, Token(0, 'o'));
    RequestEvent err;
    err.kind = RequestEvent::Kind::kError;
    err.error = Internal("boom");
    sse += resp.OnEvent(0, err);
    EXPECT_TRUE(resp.done());
    sse += resp.OnEvent(0, Token(0, 'x'));  // ignored after the error
    sse += resp.StreamEnd();
    bool done = false;
    auto chunks = ParseSse(sse, &done);
    EXPECT_TRUE(done);
    ASSERT_EQ(chunks.size(), 2u);
    EXPECT_EQ(chunks[1]["error"]["message"], "boom");
    EXPECT_EQ(chunks[1]["error"]["type"], "server_error");
}

// Offsets index the echoed text, which is the decoded prompt: a control token (</s>) decodes to nothing
// and starts where the next token does; offsets never run backwards.
TEST_F(OpenAiTest, EchoOffsetsIndexTheDecodedPrompt) {
    auto r = Completion({{"prompt", {1, 2, 3 + 'H', 3 + 'i', 2, 3 + ' ', 3 + 'x'}}, {"echo", true}, {"logprobs", 0}});
    ASSERT_TRUE(r.ok());
    OpenAiResponder resp(r.value(), tok_, "cmpl-1", 123);
    resp.OnEvent(0, Token(0, 'y'));
    resp.OnEvent(0, Finished(0, FinishReason::kLength, 1));
    ASSERT_TRUE(resp.done());
    const json body = resp.Body();
    const std::string text = body["choices"][0]["text"];
    EXPECT_EQ(text, "Hi xy");
    const json& lp = body["choices"][0]["logprobs"];
    EXPECT_EQ(lp["tokens"], json({"</s>", "H", "i", "</s>", " ", "x", "y"}));
    EXPECT_EQ(lp["text_offset"], json({0, 0, 1, 2, 2, 3, 4}));
    for (size_t k = 0; k + 1 < lp["text_offset"].size(); ++k) {
        EXPECT_LE(lp["text_offset"][k], lp["text_offset"][k + 1]);
    }
}

TEST(ApiErrorTest, StatusMapping) {
    EXPECT_EQ(ApiErrorFromStatus(InvalidArgument("x")).http_status, 400);
    EXPECT_EQ(ApiErrorFromStatus(FailedPrecondition("x"), "prompt").code, "context_length_exceeded");
    EXPECT_EQ(ApiErrorFromStatus(ResourceExhausted("x")).http_status, 429);
    EXPECT_EQ(ApiErrorFromStatus(Unavailable("x")).http_status, 503);
    EXPECT_EQ(ApiErrorFromStatus(Internal("x")).http_status, 500);
    EXPECT_EQ(ApiErrorFromStatus(NotFound("x")).http_status, 404);
    const json j = ApiError::BadRequest("m", "p").ToJson();
    EXPECT_EQ(j, json::parse(R"({"error":{"message":"m","type":"invalid_request_error","param":"p","code":null}})"));
}

}  // namespace
}  // namespace uniattn::server
