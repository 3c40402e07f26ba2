#include "server/openai_response.h"

namespace uniattn::server {

using nlohmann::json;

std::string SseEvent(const json& payload) { return "data: " + DumpJson(payload) + "\n\n"; }

OpenAiResponder::OpenAiResponder(const OpenAiRequest& request, const Tokenizer& tokenizer, std::string id,
                                 int64_t created)
    : request_(request), tokenizer_(tokenizer), id_(std::move(id)), created_(created) {
    choices_.resize(request.num_choices());
    cached_tokens_.assign(request.prompts.size(), 0);
    std::vector<EchoedPrompt> echoes;
    if (request_.echo) {
        for (const auto& ids : request_.prompts) echoes.push_back(EchoPrompt(tokenizer_, ids));
    }
    for (size_t i = 0; i < choices_.size(); ++i) {
        if (request_.logprobs) choices_[i].logprobs = EmptyLogprobs();
        if (!request_.echo) continue;
        const EchoedPrompt& echo = echoes[i / request_.params.n];
        if (request_.logprobs) AppendEchoLogprobs(choices_[i].logprobs, echo);
        choices_[i].text = echo.text;
        choices_[i].text_offset = echo.text.size();
    }
}

EchoedPrompt EchoPrompt(const Tokenizer& tokenizer, const std::vector<int32_t>& ids) {
    EchoedPrompt echo;
    IncrementalDetokenizer detok(&tokenizer, {});
    for (int32_t id : ids) {
        const size_t start = echo.text.size();
        echo.text += detok.Push(id);
        if (id == tokenizer.bos_id()) continue;
        // Text held back for an incomplete UTF-8 character belongs to this token or an earlier one: the
        // token starts no later than the text seen so far.
        echo.tokens.push_back(TokenText(tokenizer, id));
        echo.offsets.push_back(start);
    }
    echo.text += detok.Flush();
    return echo;
}

json OpenAiResponder::EmptyLogprobs() const {
    if (chat()) return json{{"content", json::array()}};
    return json{{"tokens", json::array()},
                {"token_logprobs", json::array()},
                {"top_logprobs", json::array()},
                {"text_offset", json::array()}};
}

void OpenAiResponder::AppendLogprobs(json& lp, Choice& choice, const RequestEvent& e) const {
    const std::string token = TokenText(tokenizer_, e.token);
    if (chat()) {
        auto bytes = [this](int32_t id) {
            json b = json::array();
            for (unsigned char ch : tokenizer_.TokenBytes(id)) b.push_back(static_cast<int>(ch));
            return b;
        };
        json top = json::array();
        for (const TokenLogprob& t : e.top_logprobs) {
            if (static_cast<int>(top.size()) >= request_.top_logprobs) break;
            const std::string s = TokenText(tokenizer_, t.token);
            top.push_back({{"token", s}, {"logprob", t.logprob}, {"bytes", bytes(t.token)}});
        }
        lp["content"].push_back(
            {{"token", token}, {"logprob", e.logprob}, {"bytes", bytes(e.token)}, {"top_logprobs", top}});
    } else {
        lp["tokens"].push_back(token);
        lp["token_logprobs"].push_back(e.logprob);
        json top = json::object();
        int count = 0;
        for (const TokenLogprob& t : e.top_logprobs) {
            if (count++ >= request_.top_logprobs) break;
            const std::string s = TokenText(tokenizer_, t.token);
            if (!top.contains(s)) top[s] = t.logprob;
        }
        lp["top_logprobs"].push_back(request_.top_logprobs > 0 ? top : json(nullptr));
        lp["text_offset"].push_back(choice.text_offset);
    }
}

// Echoed prompt tokens carry no logprobs (the engine does not score the prompt): null entries, as OpenAI
// reports for the first prompt token.
void OpenAiResponder::AppendEchoLogprobs(json& lp, const EchoedPrompt& echo) const {
    for (size_t k = 0; k < echo.tokens.size(); ++k) {
        lp["tokens"].push_back(echo.tokens[k]);
        lp["token_logprobs"].push_back(nullptr);
        lp["top_logprobs"].push_back(nullptr);
        lp["text_offset"].push_back(echo.offsets[k]);
    }
}

json OpenAiResponder::ChunkBase() const {
    json chunk = {{"id", id_},
                  {"object", chat() ? "chat.completion.chunk" : "text_completion"},
                  {"created", created_},
                  {"model", request_.model}};
    if (request_.include_usage) chunk["usage"] = nullptr;
    return chunk;
}

json OpenAiResponder::StreamChoice(int index, const std::string& text, const json* logprobs,
                                   const std::optional<FinishReason>& finish) const {
    json c = {{"index", index}};
    if (chat()) {
        json delta = json::object();
        if (!text.empty()) delta["content"] = text;
        c["delta"] = delta;
    } else {
        c["text"] = text;
    }
    c["logprobs"] = logprobs ? *logprobs : json(nullptr);
    c["finish_reason"] = finish ? json(FinishReasonName(*finish)) : json(nullptr);
    return c;
}

std::string OpenAiResponder::StreamStart() {
    std::string out;
    for (size_t i = 0; i < choices_.size(); ++i) {
        json chunk = ChunkBase();
        if (chat()) {
            chunk["choices"] = json::array({{{"index", i},
                                             {"delta", {{"role", "assistant"}, {"content", ""}}},
                                             {"logprobs", nullptr},
                                             {"finish_reason", nullptr}}});
        } else if (request_.echo) {
            const json* lp = request_.logprobs ? &choices_[i].logprobs : nullptr;
            chunk["choices"] = json::array({StreamChoice(static_cast<int>(i), choices_[i].text, lp, std::nullopt)});
        } else {
            continue;
        }
        out += SseEvent(chunk);
    }
    return out;
}

std::string OpenAiResponder::OnEvent(int prompt_idx, const RequestEvent& e) {
    if (error_ || prompt_idx < 0 || prompt_idx >= static_cast<int>(request_.prompts.size()) || e.index < 0 ||
        e.index >= request_.params.n) {
        return {};
    }
    const int ci = prompt_idx * request_.params.n + e.index;
    Choice& c = choices_[ci];
    if (c.finished) return {};
    switch (e.kind) {
        case RequestEvent::Kind::kToken: {
            ++c.num_tokens;
            json lp;
            const json* lp_ptr = nullptr;
            if (request_.logprobs) {
                if (request_.stream) {
                    lp = EmptyLogprobs();
                    AppendLogprobs(lp, c, e);
                    lp_ptr = &lp;
                } else {
                    AppendLogprobs(c.logprobs, c, e);
                }
            }
            c.text_offset += e.text.size();
            if (!request_.stream) {
                c.text += e.text;
                return {};
            }
            if (e.text.empty() && !lp_ptr) return {};
            json chunk = ChunkBase();
            chunk["choices"] = json::array({StreamChoice(ci, e.text, lp_ptr, std::nullopt)});
            return SseEvent(chunk);
        }
        case RequestEvent::Kind::kFinished: {
            c.finished = true;
            ++num_finished_;
            c.finish_reason = e.finish_reason;
            c.completion_tokens = e.completion_tokens;
            cached_tokens_[prompt_idx] = std::max(cached_tokens_[prompt_idx], e.cached_tokens);
            if (!request_.stream) {
                c.text += e.text;
                return {};
            }
            json chunk = ChunkBase();
            chunk["choices"] = json::array({StreamChoice(ci, e.text, nullptr, e.finish_reason)});
            return SseEvent(chunk);
        }
        case RequestEvent::Kind::kError: {
            error_ = ApiErrorFromStatus(e.error);
            if (!request_.stream) return {};
            return SseEvent(error_->ToJson());
        }
    }
    return {};
}

int OpenAiResponder::completion_tokens() const {
    int total = 0;
    for (const Choice& c : choices_) total += c.completion_tokens >= 0 ? c.completion_tokens : c.num_tokens;
    return total;
}

json OpenAiResponder::Usage() const {
    int prompt = 0, cached = 0;
    for (size_t p = 0; p < request_.prompts.size(); ++p) {
        prompt += static_cast<int>(request_.prompts[p].size());
        cached += cached_tokens_[p];
    }
    const int completion = completion_tokens();
    return {{"prompt_tokens", prompt},
            {"completion_tokens", completion},
            {"total_tokens", prompt + completion},
            {"prompt_tokens_details", {{"cached_tokens", cached}}}};
}

std::string OpenAiResponder::StreamEnd() {
    std::string out;
    if (!error_ && request_.include_usage) {
        json chunk = ChunkBase();
        chunk["choices"] = json::array();
        chunk["usage"] = Usage();
        out += SseEvent(chunk);
    }
    out += kSseDone;
    return out;
}

json OpenAiResponder::Body() const {
    json choices = json::array();
    for (size_t i = 0; i < choices_.size(); ++i) {
        const Choice& c = choices_[i];
        json choice = {{"index", i}};
        if (chat()) {
            choice["message"] = {{"role", "assistant"}, {"content", c.text}};
        } else {
            choice["text"] = c.text;
        }
        choice["logprobs"] = request_.logprobs ? c.logprobs : json(nullptr);
        choice["finish_reason"] = FinishReasonName(c.finish_reason);
        choices.push_back(std::move(choice));
    }
    return {{"id", id_},           {"object", chat() ? "chat.completion" : "text_completion"},
            {"created", created_}, {"model", request_.model},
            {"choices", choices},  {"usage", Usage()}};
}

}  // namespace uniattn::server
