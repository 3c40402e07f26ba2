// A generation request, its event stream, and the one set of limits every front end (HTTP, gRPC) and
// Engine::Submit check it against. Errors name the request field they concern in Status::field(), so a
// front end reports it (OpenAI's `param`) without reading the message; the messages are the same
// whichever API the request came through.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "uniattn/status.h"

namespace uniattn {

// Sampling and stopping, per request. Checked at Submit by ValidateRequest below (the front ends run the
// same checks earlier, before a request is submitted).
struct GenerationRequest {
    std::vector<int32_t> prompt_ids;  // required, non-empty; BOS included if wanted
    int max_tokens = 16;              // >= 1 (capped by the context length)
    int n = 1;                        // parallel samples sharing the prompt's KV blocks
    float temperature = 1.0f;         // 0 = greedy
    float top_p = 1.0f;
    int top_k = 0;  // 0 or -1 = off
    float min_p = 0.0f;
    float repetition_penalty = 1.0f;
    float presence_penalty = 0.0f;
    float frequency_penalty = 0.0f;
    std::map<int32_t, float> logit_bias;
    std::optional<uint64_t> seed;  // sample i of n uses seed + i
    std::vector<int32_t> stop_token_ids;
    std::vector<std::string> stop;  // stop strings: matched across token boundaries, never emitted
    bool ignore_eos = false;
    int logprobs = -1;       // -1: none; 0: the chosen token's; k > 0: also the top k (k <= 20)
    bool detokenize = true;  // fill TokenEvent::text
    // Fair admission: how many sequences (prompts x n) of the same client request were submitted before
    // this one. The waiting queue places a request behind every waiting one with no more earlier
    // sequences, so a client request of many prompts cannot hold the head of the queue for its whole run.
    int num_earlier_sequences = 0;
};

enum class FinishReason {
    kStop,    // EOS, a stop token id or a stop string
    kLength,  // max_tokens or the context length
    kAbort,   // cancelled, or the engine shut down
};
const char* FinishReasonName(FinishReason reason);  // "stop", "length", "abort"

struct TokenLogprob {
    int32_t token = 0;
    float logprob = 0;
};

// One event of a request's stream. Per sample index: zero or more kToken, then exactly one kFinished
// or kError. After every sample has ended the stream is closed.
struct RequestEvent {
    enum class Kind { kToken, kFinished, kError };
    Kind kind = Kind::kToken;
    int index = 0;       // which of the n samples
    int32_t token = -1;  // kToken
    std::string text;    // kToken: new text (may be empty while UTF-8 or a stop string is pending);
                         // kFinished: any text still held back
    float logprob = 0;   // kToken, when requested
    std::vector<TokenLogprob> top_logprobs;
    FinishReason finish_reason = FinishReason::kStop;  // kFinished
    Status error;                                      // kError
    // kFinished/kError: usage of this sample
    int prompt_tokens = 0;
    int completion_tokens = 0;
    int cached_tokens = 0;  // prompt tokens served from the prefix cache
};

// The limits a request is checked against; fixed once the engine has started (Engine::request_limits()).
struct RequestLimits {
    static constexpr int kMaxSamples = 128;  // n, whatever max_num_seqs allows
    static constexpr int kMaxStopStrings = 16;
    static constexpr int kMaxLogprobs = 20;
    static constexpr int kMaxPrompts = 256;  // prompts in one completions request

    int vocab_size = 0;
    int max_model_len = 0;
    int max_n = kMaxSamples;                      // min(kMaxSamples, max_num_seqs)
    int max_sequences_per_request = kMaxSamples;  // prompts x n in one client request
    int64_t kv_pool_tokens = INT64_MAX;           // the whole KV pool: prompt + output of one request must fit
    bool has_text = true;                         // the model has a tokenizer (stop strings need one)
    // Text bytes that max_model_len tokens can hold at most (Tokenizer::max_token_bytes() x max_model_len);
    // 0 when the tokenizer gives no such bound. A longer prompt is refused before it is tokenized.
    int64_t max_prompt_bytes = 0;
};

// Every field but the prompt: n, max_tokens >= 1, the sampling ranges, logit_bias, stop strings and ids,
// logprobs. kInvalidArgument naming the field ("temperature: -1 is out of range (must be in [0, 100])").
Status ValidateSampling(const GenerationRequest& r, const RequestLimits& limits);

// Token ids of a prompt: non-empty, inside the vocabulary. `field` names the prompt in errors.
Status ValidatePromptIds(const std::vector<int32_t>& ids, const RequestLimits& limits, std::string_view field);

// A prompt given as text before it is tokenized: refused (kFailedPrecondition, context_length_exceeded
// over HTTP) when its bytes cannot fit max_model_len tokens, so an oversized prompt costs no tokenization.
Status CheckPromptBytes(int64_t num_bytes, const RequestLimits& limits, std::string_view field);

// prompts x n against max_sequences_per_request (kInvalidArgument on "n", or on "prompt" when n is 1).
Status CheckSequencesPerRequest(int64_t num_prompts, int64_t n, const RequestLimits& limits);

// The context length: the prompt must leave room for one generated token. With `max_tokens` given
// (`strict`), prompt + max_tokens must fit max_model_len (OpenAI); otherwise max_tokens is capped to the
// room left. Returns the tokens the request may generate; errors are kFailedPrecondition on `field`,
// computed in 64 bits (no overflow for any int max_tokens).
StatusOr<int> CheckContextLength(int64_t prompt_len, int64_t max_tokens, bool strict, const RequestLimits& limits,
                                 std::string_view field);

// What Engine::Submit checks: the prompt ids, ValidateSampling, the context (max_tokens capped) and the KV
// pool (prompt + output of one sequence must fit the whole pool). Returns the tokens it may generate.
StatusOr<int> ValidateRequest(const GenerationRequest& r, const RequestLimits& limits);

}  // namespace uniattn
