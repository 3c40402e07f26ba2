// Built-in chat templates. The server does not run Jinja: it recognises the common templates in a
// tokenizer_config.json's `chat_template` and renders them natively; anything else needs
// `model.chat_template` in the config, and until then chat requests get a 400 that says so.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "uniattn/status.h"
#include "uniattn/tokenizer.h"

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
// Parses a config value; "auto" is handled by the caller.
StatusOr<ChatTemplate> ParseChatTemplateName(std::string_view name);
// Recognises a Jinja chat_template by its markers; kNone when it is not one of ours.
ChatTemplate DetectChatTemplate(std::string_view jinja);
// Reads DIR/tokenizer_config.json's chat_template (absent file or key: kNone).
ChatTemplate DetectChatTemplateInDir(const std::string& model_dir, std::string* detail);

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
