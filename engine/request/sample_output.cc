#include "request/sample_output.h"

#include <algorithm>

#include "uniattn/status.h"

namespace uniattn {
namespace {

// Length of the longest suffix of `text` that is a proper prefix of one of `stops`.
size_t StopPrefixSuffix(const std::string& text, const std::vector<std::string>& stops) {
    size_t best = 0;
    for (const std::string& s : stops) {
        for (size_t n = std::min(text.size(), s.size() - 1); n > best; --n) {
            if (text.compare(text.size() - n, n, s, 0, n) == 0) {
                best = n;
                break;
            }
        }
    }
    return best;
}

// Position of the earliest complete stop string in `text`, or npos.
size_t FindStop(const std::string& text, const std::vector<std::string>& stops) {
    size_t best = std::string::npos;
    for (const std::string& s : stops) best = std::min(best, text.find(s));
    return best;
}

}  // namespace

SampleOutput::SampleOutput(const GenerationRequest& request, const Tokenizer* tokenizer,
                           const std::vector<int32_t>* eos_ids, bool wants_text, int index, int max_new_tokens)
    : request_(request), eos_ids_(eos_ids), index_(index), max_new_tokens_(max_new_tokens) {
    if (wants_text) detok_ = std::make_unique<IncrementalDetokenizer>(tokenizer, request.prompt_ids);
}

bool SampleOutput::OnToken(const SampleResult& result, int cached_tokens, std::vector<RequestEvent>* out) {
    UA_CHECK(!done_);
    const GenerationRequest& r = request_;
    generated_.push_back(result.token);
    const bool eos = !r.ignore_eos && std::find(eos_ids_->begin(), eos_ids_->end(), result.token) != eos_ids_->end();
    if (eos || std::find(r.stop_token_ids.begin(), r.stop_token_ids.end(), result.token) != r.stop_token_ids.end()) {
        Finish(FinishReason::kStop, cached_tokens, out);  // the stop token itself is not emitted
        return false;
    }
    RequestEvent ev;
    ev.kind = RequestEvent::Kind::kToken;
    ev.index = index_;
    ev.token = result.token;
    if (r.logprobs >= 0) {
        ev.logprob = result.logprob;
        for (const auto& [token, logprob] : result.top) ev.top_logprobs.push_back({token, logprob});
    }
    bool stopped = false;
    if (detok_) {
        held_ += detok_->Push(result.token);
        size_t emit = held_.size();
        if (!r.stop.empty()) {
            const size_t at = FindStop(held_, r.stop);
            if (at != std::string::npos) {
                emit = at;
                stopped = true;
            } else {
                emit -= StopPrefixSuffix(held_, r.stop);
            }
        }
        if (r.detokenize) ev.text = held_.substr(0, emit);
        held_.erase(0, stopped ? held_.size() : emit);
    }
    out->push_back(std::move(ev));
    if (stopped) {
        Finish(FinishReason::kStop, cached_tokens, out);
        return false;
    }
    if (static_cast<int>(generated_.size()) >= max_new_tokens_) {
        Finish(FinishReason::kLength, cached_tokens, out);
        return false;
    }
    return true;
}

void SampleOutput::Finish(FinishReason reason, int cached_tokens, std::vector<RequestEvent>* out) {
    finish_reason_ = reason;
    RequestEvent ev = EndEvent(RequestEvent::Kind::kFinished, cached_tokens);
    ev.finish_reason = reason;
    if (detok_) {
        std::string tail = held_ + detok_->Flush();
        if (!request_.stop.empty()) {
            const size_t at = FindStop(tail, request_.stop);
            if (at != std::string::npos) tail.resize(at);
        }
        if (request_.detokenize) ev.text = std::move(tail);
        held_.clear();
    }
    out->push_back(std::move(ev));
}

void SampleOutput::Fail(const Status& error, int cached_tokens, std::vector<RequestEvent>* out) {
    RequestEvent ev = EndEvent(RequestEvent::Kind::kError, cached_tokens);
    ev.error = error;
    out->push_back(std::move(ev));
}

RequestEvent SampleOutput::EndEvent(RequestEvent::Kind kind, int cached_tokens) {
    UA_CHECK(!done_);
    done_ = true;
    RequestEvent ev;
    ev.kind = kind;
    ev.index = index_;
    ev.prompt_tokens = static_cast<int>(request_.prompt_ids.size());
    ev.completion_tokens = static_cast<int>(generated_.size());
    ev.cached_tokens = cached_tokens;
    return ev;
}

}  // namespace uniattn
