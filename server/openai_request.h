// OpenAI-compatible request bodies -> engine GenerationRequests. Validation follows OpenAI and vLLM:
// unknown fields are ignored, null means absent, a wrong type or an out-of-range value is a 400 naming the
// field in `param`, a prompt that cannot fit the context is a 400 with code context_length_exceeded that
// gives the prompt length and the limit.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "server/api_error.h"
#include "server/chat_template.h"
#include "uniattn/engine.h"
#include "uniattn/tokenizer.h"

namespace uniattn::server {

// What request parsing needs to know about the served model.
struct ServedModel {
    std::string model_name;
    const Tokenizer* tokenizer = nullptr;
    RequestLimits limits;  // the engine's (Engine::request_limits), with the server's per-request caps
    ChatTemplate chat_template = ChatTemplate::kNone;  // used when jinja_template is null
    // The model's own Jinja template: when set, chat messages are rendered with it (as transformers and vLLM
    // do) and the text is tokenized without an added BOS (the template writes it).
    std::shared_ptr<const JinjaChatTemplate> jinja_template;
    // Sampling fields a request leaves unset (generation_config.json, then model.override_generation_config).
    SamplingDefaults sampling_defaults;
};

enum class Endpoint { kCompletions, kChatCompletions };

struct OpenAiRequest {
    Endpoint endpoint = Endpoint::kCompletions;
    std::string model;
    std::vector<std::vector<int32_t>> prompts;  // one engine request per prompt (completions accept a list)
    GenerationRequest params;                   // everything but prompt_ids
    bool stream = false;
    bool include_usage = false;  // stream_options.include_usage
    bool echo = false;           // completions only
    bool logprobs = false;       // return logprobs
    int top_logprobs = 0;
    int num_choices() const { return static_cast<int>(prompts.size()) * params.n; }
};

// Parses and validates a /v1/completions or /v1/chat/completions body, renders chat messages and
// tokenizes prompts.
ApiResult<OpenAiRequest> ParseOpenAiRequest(Endpoint endpoint, std::string_view body, const ServedModel& model);

// Parses JSON with a nesting limit (deeply nested input must not exhaust the stack).
ApiResult<nlohmann::json> ParseJsonBody(std::string_view body);

// The `model` field, when present, must name the served model (404 model_not_found otherwise).
std::optional<ApiError> CheckModelName(const nlohmann::json& body, const ServedModel& model, bool required);

// /tokenize: {"prompt": "..."} or {"messages": [...]}, optional add_special_tokens / add_generation_prompt.
ApiResult<nlohmann::json> HandleTokenize(std::string_view body, const ServedModel& model);
// /detokenize: {"tokens": [ids]}.
ApiResult<nlohmann::json> HandleDetokenize(std::string_view body, const ServedModel& model);

// The text of one token for logprobs: its bytes (Tokenizer::TokenBytes: " Once" for "▁Once" or "ĠOnce")
// with bytes that are not complete UTF-8 (one byte of a character) as U+FFFD, as vLLM does. The logprobs'
// `bytes` field is TokenBytes itself.
std::string TokenText(const Tokenizer& tokenizer, int32_t id);

}  // namespace uniattn::server
