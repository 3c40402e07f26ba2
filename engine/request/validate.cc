// The request limits, written once: HTTP, gRPC and Engine::Submit all call these.
#include <cmath>
#include <sstream>

#include "uniattn/request.h"

namespace uniattn {

const char* FinishReasonName(FinishReason reason) {
    switch (reason) {
        case FinishReason::kStop:
            return "stop";
        case FinishReason::kLength:
            return "length";
        case FinishReason::kAbort:
            return "abort";
    }
    return "?";
}

namespace {

std::string Num(double v) {
    std::ostringstream os;
    os << v;
    return os.str();
}

Status Bad(std::string_view field, const std::string& detail) {
    return {StatusCode::kInvalidArgument, std::string(field) + ": " + detail, std::string(field)};
}

// `v` in [lo, hi] (or (lo, hi] when lo_open); NaN is out of range.
Status CheckRange(std::string_view field, double v, double lo, double hi, bool lo_open = false) {
    if (v >= lo && v <= hi && !(lo_open && v == lo)) return Status::Ok();
    return Bad(field,
               Num(v) + " is out of range (must be in " + (lo_open ? "(" : "[") + Num(lo) + ", " + Num(hi) + "])");
}

Status CheckIntRange(std::string_view field, int64_t v, int64_t lo, int64_t hi, const std::string& why = {}) {
    if (v >= lo && v <= hi) return Status::Ok();
    return Bad(field, std::to_string(v) + " is out of range (must be in [" + std::to_string(lo) + ", " +
                          std::to_string(hi) + "]" + why + ")");
}

Status CheckTokenId(std::string_view field, int64_t id, const RequestLimits& limits) {
    if (id >= 0 && id < limits.vocab_size) return Status::Ok();
    return Bad(field,
               std::to_string(id) + " is not a token id (vocabulary size " + std::to_string(limits.vocab_size) + ")");
}

const char* PromptNoun(std::string_view field) { return field == "messages" ? "messages" : "prompt"; }

Status ContextError(std::string_view field, std::string message) {
    return {StatusCode::kFailedPrecondition, std::move(message), std::string(field)};
}

}  // namespace

Status ValidateSampling(const GenerationRequest& r, const RequestLimits& limits) {
    const std::string n_why = limits.max_n < RequestLimits::kMaxSamples ? " (max_num_seqs)" : "";
    UA_RETURN_IF_ERROR(CheckIntRange("n", r.n, 1, limits.max_n, n_why));
    if (r.max_tokens < 1) return Bad("max_tokens", std::to_string(r.max_tokens) + " is out of range (must be >= 1)");
    UA_RETURN_IF_ERROR(CheckRange("temperature", r.temperature, 0, 100));
    UA_RETURN_IF_ERROR(CheckRange("top_p", r.top_p, 0, 1, /*lo_open=*/true));
    if (r.top_k < -1) return Bad("top_k", std::to_string(r.top_k) + " is out of range (-1 or 0: off; or positive)");
    UA_RETURN_IF_ERROR(CheckRange("min_p", r.min_p, 0, 1));
    UA_RETURN_IF_ERROR(CheckRange("repetition_penalty", r.repetition_penalty, 0, 100, /*lo_open=*/true));
    UA_RETURN_IF_ERROR(CheckRange("presence_penalty", r.presence_penalty, -2, 2));
    UA_RETURN_IF_ERROR(CheckRange("frequency_penalty", r.frequency_penalty, -2, 2));
    for (const auto& [id, bias] : r.logit_bias) {
        UA_RETURN_IF_ERROR(CheckTokenId("logit_bias", id, limits));
        if (!(bias >= -100.0f && bias <= 100.0f)) {
            return Bad("logit_bias",
                       "bias " + Num(bias) + " for token " + std::to_string(id) + " is not in [-100, 100]");
        }
    }
    if (r.stop.size() > static_cast<size_t>(RequestLimits::kMaxStopStrings)) {
        return Bad("stop", "at most " + std::to_string(RequestLimits::kMaxStopStrings) + " stop strings are allowed");
    }
    for (const std::string& s : r.stop) {
        if (s.empty()) return Bad("stop", "stop strings must not be empty");
    }
    if (!r.stop.empty() && !limits.has_text) {
        return Bad("stop", "stop strings need a tokenizer, and this model has none (token ids only)");
    }
    for (int32_t id : r.stop_token_ids) UA_RETURN_IF_ERROR(CheckTokenId("stop_token_ids", id, limits));
    return CheckIntRange("logprobs", r.logprobs, -1, RequestLimits::kMaxLogprobs);
}

Status ValidatePromptIds(const std::vector<int32_t>& ids, const RequestLimits& limits, std::string_view field) {
    if (ids.empty()) return Bad(field, "the prompt is empty (no tokens)");
    for (int32_t id : ids) UA_RETURN_IF_ERROR(CheckTokenId(field, id, limits));
    return Status::Ok();
}

Status CheckPromptBytes(int64_t num_bytes, const RequestLimits& limits, std::string_view field) {
    if (limits.max_prompt_bytes <= 0 || num_bytes <= limits.max_prompt_bytes) return Status::Ok();
    return ContextError(field, "This model's maximum context length is " + std::to_string(limits.max_model_len) +
                                   " tokens. However, your " + PromptNoun(field) + " has " + std::to_string(num_bytes) +
                                   " bytes of text, more than " + std::to_string(limits.max_model_len) +
                                   " tokens can hold (" + std::to_string(limits.max_prompt_bytes) +
                                   " bytes at most). Please reduce the " + "length of the " + PromptNoun(field) + ".");
}

Status CheckSequencesPerRequest(int64_t num_prompts, int64_t n, const RequestLimits& limits) {
    if (num_prompts * n <= limits.max_sequences_per_request) return Status::Ok();
    const std::string detail = std::to_string(num_prompts) + " prompt(s) x n = " + std::to_string(n) + " is " +
                               std::to_string(num_prompts * n) + " sequences; at most " +
                               std::to_string(limits.max_sequences_per_request) +
                               " are allowed per request (server.max_sequences_per_request)";
    return Bad(n > 1 ? "n" : "prompt", detail);
}

StatusOr<int> CheckContextLength(int64_t prompt_len, int64_t max_tokens, bool strict, const RequestLimits& limits,
                                 std::string_view field) {
    const int64_t limit = limits.max_model_len;
    const std::string head = "This model's maximum context length is " + std::to_string(limit) + " tokens. ";
    const char* noun = PromptNoun(field);
    if (prompt_len >= limit) {
        return ContextError(field, head + "However, your " + noun + " resulted in " + std::to_string(prompt_len) +
                                       " tokens, which leaves no room for the completion. Please reduce the length " +
                                       "of the " + noun + ".");
    }
    if (strict && prompt_len + max_tokens > limit) {
        return ContextError(field, head + "However, you requested " + std::to_string(prompt_len + max_tokens) +
                                       " tokens (" + std::to_string(prompt_len) + " in the " + noun + ", " +
                                       std::to_string(max_tokens) + " in the completion). Please reduce the " +
                                       "length of the " + noun + " or completion.");
    }
    return static_cast<int>(std::min(max_tokens, limit - prompt_len));
}

StatusOr<int> ValidateRequest(const GenerationRequest& r, const RequestLimits& limits) {
    UA_RETURN_IF_ERROR(ValidatePromptIds(r.prompt_ids, limits, "prompt_ids"));
    UA_RETURN_IF_ERROR(ValidateSampling(r, limits));
    const int64_t prompt = static_cast<int64_t>(r.prompt_ids.size());
    UA_ASSIGN_OR_RETURN(const int max_new, CheckContextLength(prompt, r.max_tokens, false, limits, "prompt_ids"));
    const int64_t kv_tokens = prompt + max_new - 1;
    if (kv_tokens > limits.kv_pool_tokens) {
        return ContextError("prompt_ids", "the prompt has " + std::to_string(prompt) +
                                              " tokens and max_tokens allows " + std::to_string(max_new) +
                                              " more; that needs " + std::to_string(kv_tokens) +
                                              " tokens of KV cache, but the whole pool " + "holds " +
                                              std::to_string(limits.kv_pool_tokens) + " tokens");
    }
    return max_new;
}

}  // namespace uniattn
