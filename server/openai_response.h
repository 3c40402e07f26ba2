// Engine events -> OpenAI responses: Server-Sent Event chunks while streaming, one JSON body when not.
// Protocol-only: no sockets, no threads; the HTTP session feeds events in arrival order.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "server/api_error.h"
#include "server/openai_request.h"
#include "uniattn/engine.h"

namespace uniattn::server {

// "data: {json}\n\n" and the terminator.
std::string SseEvent(const nlohmann::json& payload);
inline constexpr std::string_view kSseDone = "data: [DONE]\n\n";

// A prompt as `echo` returns it: its text, and for each token but BOS the token's text and the byte
// offset where it starts in that text. The text is built token by token with the incremental
// detokenizer, so offsets never run backwards and a token that decodes to nothing (a control token such
// as </s>) starts where the next one does.
struct EchoedPrompt {
    std::string text;
    std::vector<std::string> tokens;
    std::vector<size_t> offsets;
};
EchoedPrompt EchoPrompt(const Tokenizer& tokenizer, const std::vector<int32_t>& ids);

class OpenAiResponder {
  public:
    OpenAiResponder(const OpenAiRequest& request, const Tokenizer& tokenizer, std::string id, int64_t created);

    // Streaming: chunks to send before any token (chat: each choice's assistant role; completions with echo:
    // the prompt).
    std::string StreamStart();
    // Consumes one event of prompt `prompt_idx`'s engine request. Streaming: returns the SSE text to send
    // (possibly empty). Not streaming: accumulates and returns "".
    std::string OnEvent(int prompt_idx, const RequestEvent& event);
    // Streaming: the usage chunk (when stream_options.include_usage) and [DONE]. After an error: [DONE] only.
    std::string StreamEnd();

    // Every choice has finished, or an error ended the request.
    bool done() const { return error_.has_value() || num_finished_ == static_cast<int>(choices_.size()); }
    // The first error event (the whole request fails: the caller cancels the rest).
    const std::optional<ApiError>& error() const { return error_; }
    // Not streaming: the response body (call when done() and no error()).
    nlohmann::json Body() const;
    nlohmann::json Usage() const;

    int completion_tokens() const;

  private:
    struct Choice {
        std::string text;
        int num_tokens = 0;
        bool finished = false;
        FinishReason finish_reason = FinishReason::kStop;
        int completion_tokens = -1;  // from the engine's kFinished; -1 until then
        nlohmann::json logprobs;     // non-stream accumulation (format depends on the endpoint)
        size_t text_offset = 0;      // completions logprobs: offset of the next token's text
    };

    bool chat() const { return request_.endpoint == Endpoint::kChatCompletions; }
    nlohmann::json ChunkBase() const;
    nlohmann::json EmptyLogprobs() const;
    // Appends one token's logprobs to `lp` in the endpoint's format.
    void AppendLogprobs(nlohmann::json& lp, Choice& choice, const RequestEvent& e) const;
    void AppendEchoLogprobs(nlohmann::json& lp, const EchoedPrompt& echo) const;
    nlohmann::json StreamChoice(int index, const std::string& text, const nlohmann::json* logprobs,
                                const std::optional<FinishReason>& finish) const;

    const OpenAiRequest& request_;
    const Tokenizer& tokenizer_;
    std::string id_;
    int64_t created_;
    std::vector<Choice> choices_;
    std::vector<int> cached_tokens_;  // per prompt
    int num_finished_ = 0;
    std::optional<ApiError> error_;
};

}  // namespace uniattn::server
