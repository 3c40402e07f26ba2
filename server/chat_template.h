// Chat templates: the model's own Jinja template (server/jinja, rendered as Hugging Face transformers
// renders it), or one of the built-in templates rendered natively (named in `model.chat_template`, and the
// fallback for models without a template of their own).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "uniattn/status.h"
#include "uniattn/tokenizer.h"

namespace uniattn::jinja {
class Template;
}

namespace uniattn::server {

enum class ChatTemplate {
    kNone,     // no usable template: chat requests are rejected
    kPlain,    // message contents separated by blank lines; for base models (the default stories15M)
    kLlama2,   // <s>[INST] <<SYS>>...<</SYS>> user [/INST] assistant </s>
    kLlama3,   // <|start_header_id|>role<|end_header_id|>\n\n content <|eot_id|>
    kChatml,   // <|im_start|>role\n content <|im_end|>\n
    kMistral,  // <s>[INST] user [/INST]assistant</s>
};

const char* ChatTemplateName(ChatTemplate t);  // "none", "plain", "llama-2", ...
// Parses a built-in template's name.
StatusOr<ChatTemplate> ParseChatTemplateName(std::string_view name);

// A model's Jinja chat template, parsed once at start-up; immutable, shared by every request thread.
struct JinjaChatTemplate {
    std::string source;  // the file it came from ("DIR/tokenizer_config.json", a .jinja path)
    std::shared_ptr<const jinja::Template> tmpl;
    // The template's variables besides the conversation: every string entry of tokenizer_config.json (an
    // AddedToken object there stands for its `content`), e.g. bos_token and eos_token.
    nlohmann::ordered_json special_tokens = nlohmann::ordered_json::object();
};

// What `model.chat_template` resolves to: a Jinja template, else a built-in one.
struct ResolvedChatTemplate {
    std::string name;  // "auto:<file>", the .jinja path, or the built-in name (gRPC ModelInfo.chat_template)
    ChatTemplate builtin = ChatTemplate::kNone;  // used when `jinja` is null
    std::shared_ptr<const JinjaChatTemplate> jinja;
};

// `setting` is model.chat_template: "auto" takes the model's own template, the first of DIR/chat_template.jinja,
// DIR/chat_template.json's "chat_template", DIR/tokenizer_config.json's "chat_template" (a string, or a list
// of {name, template} of which "default" is used); a model without one gets kNone (chat requests are
// refused). A built-in name selects that template; anything else is the path of a .jinja file. A template
// that does not parse is an error naming the file, line and column. `detail` says what was chosen.
StatusOr<ResolvedChatTemplate> ResolveChatTemplate(const std::string& setting, const std::string& model_dir,
                                                   std::string* detail);

// One Jinja rendering: the conversation as the template sees it (see ChatTemplateContext in
// openai_request.cc) and transformers' options.
struct JinjaChatInput {
    nlohmann::ordered_json messages;                                   // a list of message objects
    nlohmann::ordered_json tools;                                      // a list, or null when absent
    nlohmann::ordered_json kwargs = nlohmann::ordered_json::object();  // chat_template_kwargs
    bool add_generation_prompt = true;
    bool continue_final_message = false;  // cut the text after the last message's content (vLLM, transformers)
};

// Renders `input` with the template. A render error (raise_exception, a runtime error, a limit) is an
// InvalidArgument whose message is the template's (for a 400). `max_bytes` bounds the rendered text.
StatusOr<std::string> RenderJinjaChat(const JinjaChatTemplate& t, const JinjaChatInput& input, int64_t max_bytes);

struct ChatMessage {
    std::string role;  // system, user, assistant ("developer" is treated as system)
    std::string content;
};

// Renders `messages` and tokenizes the result: special markers that the template spells as BOS/EOS become
// the tokenizer's ids; everything else is encoded as text (a SentencePiece model that has the markers as
// user-defined symbols keeps them as single tokens).
StatusOr<std::vector<int32_t>> RenderChat(ChatTemplate t, const std::vector<ChatMessage>& messages,
                                          bool add_generation_prompt, const Tokenizer& tokenizer);

// The rendered text (BOS/EOS spelled <s> and </s>), for tests and logging.
StatusOr<std::string> RenderChatText(ChatTemplate t, const std::vector<ChatMessage>& messages,
                                     bool add_generation_prompt);

}  // namespace uniattn::server
