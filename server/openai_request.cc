#include "server/openai_request.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>

namespace uniattn::server {
namespace {

using nlohmann::json;

constexpr int kMaxJsonDepth = 64;
constexpr int kMaxN = 128;
constexpr int kMaxPrompts = 256;
constexpr int kMaxStops = 16;
constexpr int kMaxLogprobs = 20;

const char* TypeName(const json& v) {
    switch (v.type()) {
        case json::value_t::null:
            return "null";
        case json::value_t::boolean:
            return "a boolean";
        case json::value_t::number_integer:
        case json::value_t::number_unsigned:
            return "an integer";
        case json::value_t::number_float:
            return "a number";
        case json::value_t::string:
            return "a string";
        case json::value_t::array:
            return "an array";
        case json::value_t::object:
            return "an object";
        case json::value_t::binary:
        case json::value_t::discarded:
            return "an unsupported value";
    }
    return "?";
}

ApiError WrongType(const std::string& param, const char* expected, const json& got) {
    return ApiError::BadRequest(param + ": expected " + expected + ", got " + TypeName(got), param);
}

ApiError OutOfRange(const std::string& param, const std::string& detail) {
    return ApiError::BadRequest(param + ": " + detail, param);
}

std::string Num(double v) {
    std::ostringstream os;
    os << v;
    return os.str();
}

// Field readers: absent or null leaves `out` untouched and succeeds.
class Reader {
  public:
    explicit Reader(const json& obj) : obj_(obj) {}

    const json* Get(const char* name) const {
        auto it = obj_.find(name);
        if (it == obj_.end() || it->is_null()) return nullptr;
        return &*it;
    }

    std::optional<ApiError> Bool(const char* name, bool* out) const {
        const json* v = Get(name);
        if (!v) return std::nullopt;
        if (!v->is_boolean()) return WrongType(name, "a boolean", *v);
        *out = v->get<bool>();
        return std::nullopt;
    }

    std::optional<ApiError> Double(const char* name, double lo, double hi, bool lo_open, double* out,
                                   bool* present = nullptr) const {
        const json* v = Get(name);
        if (!v) return std::nullopt;
        if (!v->is_number()) return WrongType(name, "a number", *v);
        const double d = v->get<double>();
        if (!std::isfinite(d) || d < lo || d > hi || (lo_open && d == lo)) {
            return OutOfRange(name, Num(d) + " is out of range (must be in " + (lo_open ? "(" : "[") + Num(lo) + ", " +
                                        (std::isinf(hi) ? std::string("inf)") : Num(hi) + "]") + ")");
        }
        *out = d;
        if (present) *present = true;
        return std::nullopt;
    }

    std::optional<ApiError> Float(const char* name, double lo, double hi, bool lo_open, float* out) const {
        double d = *out;
        if (auto e = Double(name, lo, hi, lo_open, &d)) return e;
        *out = static_cast<float>(d);
        return std::nullopt;
    }

    std::optional<ApiError> Int(const char* name, int64_t lo, int64_t hi, int64_t* out, bool* present = nullptr) const {
        const json* v = Get(name);
        if (!v) return std::nullopt;
        if (!v->is_number_integer()) return WrongType(name, "an integer", *v);
        if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi)) {
            return OutOfRange(name, v->dump() + " is out of range (must be in [" + std::to_string(lo) + ", " +
                                        std::to_string(hi) + "])");
        }
        const int64_t i = v->get<int64_t>();
        if (i < lo || i > hi) {
            return OutOfRange(name, std::to_string(i) + " is out of range (must be in [" + std::to_string(lo) + ", " +
                                        std::to_string(hi) + "])");
        }
        *out = i;
        if (present) *present = true;
        return std::nullopt;
    }

  private:
    const json& obj_;
};

#define RETURN_IF_API_ERROR(expr)        \
    do {                                 \
        if (auto api_err_ = (expr)) {    \
            return std::move(*api_err_); \
        }                                \
    } while (0)

std::optional<ApiError> CheckTokenId(const std::string& param, const json& v, const ModelContext& m, int32_t* out) {
    if (!v.is_number_integer()) return WrongType(param, "a token id (integer)", v);
    // nlohmann stores non-negative integers as unsigned, negative ones as signed.
    const bool in_range = v.is_number_unsigned() ? v.get<uint64_t>() < static_cast<uint64_t>(m.vocab_size)
                                                 : v.get<int64_t>() >= 0 && v.get<int64_t>() < m.vocab_size;
    if (!in_range) {
        return OutOfRange(param,
                          v.dump() + " is not a token id (vocabulary size " + std::to_string(m.vocab_size) + ")");
    }
    *out = static_cast<int32_t>(v.get<int64_t>());
    return std::nullopt;
}

// Sampling and stopping fields shared by both endpoints.
std::optional<ApiError> ParseSampling(const json& body, const ModelContext& m, OpenAiRequest& r,
                                      bool* max_tokens_given) {
    Reader rd(body);
    GenerationRequest& p = r.params;
    RETURN_IF_API_ERROR(rd.Float("temperature", 0, 100, false, &p.temperature));
    RETURN_IF_API_ERROR(rd.Float("top_p", 0, 1, true, &p.top_p));
    int64_t top_k = p.top_k;
    RETURN_IF_API_ERROR(rd.Int("top_k", -1, std::numeric_limits<int32_t>::max(), &top_k));
    p.top_k = static_cast<int>(top_k);
    RETURN_IF_API_ERROR(rd.Float("min_p", 0, 1, false, &p.min_p));
    RETURN_IF_API_ERROR(rd.Float("repetition_penalty", 0, 100, true, &p.repetition_penalty));
    RETURN_IF_API_ERROR(rd.Float("presence_penalty", -2, 2, false, &p.presence_penalty));
    RETURN_IF_API_ERROR(rd.Float("frequency_penalty", -2, 2, false, &p.frequency_penalty));
    if (const json* v = rd.Get("seed")) {
        if (!v->is_number_integer()) return WrongType("seed", "an integer", *v);
        p.seed = v->is_number_unsigned() ? v->get<uint64_t>() : static_cast<uint64_t>(v->get<int64_t>());
    }
    int64_t n = 1;
    RETURN_IF_API_ERROR(rd.Int("n", 1, kMaxN, &n));
    p.n = static_cast<int>(n);

    int64_t max_tokens = 0;
    bool given = false;
    RETURN_IF_API_ERROR(rd.Int("max_tokens", 1, std::numeric_limits<int32_t>::max(), &max_tokens, &given));
    if (r.endpoint == Endpoint::kChatCompletions) {
        RETURN_IF_API_ERROR(
            rd.Int("max_completion_tokens", 1, std::numeric_limits<int32_t>::max(), &max_tokens, &given));
    }
    *max_tokens_given = given;
    if (given) p.max_tokens = static_cast<int>(max_tokens);

    if (const json* v = rd.Get("stop")) {
        if (v->is_string()) {
            if (!v->get_ref<const std::string&>().empty()) p.stop.push_back(v->get<std::string>());
        } else if (v->is_array()) {
            if (v->size() > kMaxStops) {
                return OutOfRange("stop", "at most " + std::to_string(kMaxStops) + " stop strings are allowed");
            }
            for (size_t i = 0; i < v->size(); ++i) {
                const json& s = (*v)[i];
                if (!s.is_string()) return WrongType("stop", "a string or a list of strings", s);
                if (s.get_ref<const std::string&>().empty())
                    return OutOfRange("stop", "stop strings must not be empty");
                p.stop.push_back(s.get<std::string>());
            }
        } else {
            return WrongType("stop", "a string or a list of strings", *v);
        }
    }
    if (const json* v = rd.Get("stop_token_ids")) {
        if (!v->is_array()) return WrongType("stop_token_ids", "a list of token ids", *v);
        for (const json& t : *v) {
            int32_t id = 0;
            RETURN_IF_API_ERROR(CheckTokenId("stop_token_ids", t, m, &id));
            p.stop_token_ids.push_back(id);
        }
    }
    if (const json* v = rd.Get("logit_bias")) {
        if (!v->is_object()) return WrongType("logit_bias", "an object mapping token ids to biases", *v);
        for (const auto& [key, bias] : v->items()) {
            char* end = nullptr;
            errno = 0;
            const long long id = std::strtoll(key.c_str(), &end, 10);
            if (key.empty() || *end != '\0' || errno == ERANGE || id < 0 || id >= m.vocab_size) {
                return OutOfRange("logit_bias", "'" + key + "' is not a token id (vocabulary size " +
                                                    std::to_string(m.vocab_size) + ")");
            }
            if (!bias.is_number()) return WrongType("logit_bias", "numeric biases", bias);
            const double b = bias.get<double>();
            if (!(b >= -100 && b <= 100)) {
                return OutOfRange("logit_bias", "bias " + Num(b) + " for token " + key + " is not in [-100, 100]");
            }
            p.logit_bias[static_cast<int32_t>(id)] = static_cast<float>(b);
        }
    }
    RETURN_IF_API_ERROR(rd.Bool("ignore_eos", &p.ignore_eos));
    RETURN_IF_API_ERROR(rd.Bool("stream", &r.stream));
    if (const json* v = rd.Get("stream_options")) {
        if (!v->is_object()) return WrongType("stream_options", "an object", *v);
        if (!r.stream)
            return ApiError::BadRequest("stream_options: only allowed when stream is true", "stream_options");
        Reader so(*v);
        auto e = so.Bool("include_usage", &r.include_usage);
        if (e) {
            e->param = "stream_options.include_usage";
            e->message = "stream_options." + e->message;
            return e;
        }
    }
    return std::nullopt;
}

std::optional<ApiError> ParseIdList(const std::string& param, const json& arr, const ModelContext& m,
                                    std::vector<int32_t>* out) {
    for (const json& t : arr) {
        int32_t id = 0;
        RETURN_IF_API_ERROR(CheckTokenId(param, t, m, &id));
        out->push_back(id);
    }
    return std::nullopt;
}

std::optional<ApiError> ParsePrompts(const json& body, const ModelContext& m, OpenAiRequest& r) {
    Reader rd(body);
    bool add_special = true;
    RETURN_IF_API_ERROR(rd.Bool("add_special_tokens", &add_special));
    const json* v = rd.Get("prompt");
    if (!v) return ApiError::BadRequest("prompt: this field is required", "prompt");
    const bool add_bos = add_special && m.tokenizer->add_bos();
    auto add_text = [&](const std::string& text) {
        r.prompts.push_back(m.tokenizer->Encode(text, add_bos));
        r.prompt_texts.push_back(text);
    };
    auto add_ids = [&](std::vector<int32_t> ids) {
        r.prompt_texts.push_back(m.tokenizer->Decode(ids));
        r.prompts.push_back(std::move(ids));
    };
    if (v->is_string()) {
        add_text(v->get<std::string>());
    } else if (v->is_array()) {
        if (v->empty()) return ApiError::BadRequest("prompt: must not be an empty list", "prompt");
        if (v->size() > kMaxPrompts) {
            return OutOfRange("prompt", "at most " + std::to_string(kMaxPrompts) + " prompts per request");
        }
        const json& first = v->front();
        if (first.is_number()) {
            std::vector<int32_t> ids;
            RETURN_IF_API_ERROR(ParseIdList("prompt", *v, m, &ids));
            add_ids(std::move(ids));
        } else if (first.is_string()) {
            for (const json& s : *v) {
                if (!s.is_string()) return WrongType("prompt", "a list of strings", s);
                add_text(s.get<std::string>());
            }
        } else if (first.is_array()) {
            for (const json& a : *v) {
                if (!a.is_array()) return WrongType("prompt", "a list of token id lists", a);
                std::vector<int32_t> ids;
                RETURN_IF_API_ERROR(ParseIdList("prompt", a, m, &ids));
                add_ids(std::move(ids));
            }
        } else {
            return WrongType("prompt", "a string, a list of strings or a list of token ids", first);
        }
    } else {
        return WrongType("prompt", "a string, a list of strings or a list of token ids", *v);
    }
    for (const auto& p : r.prompts) {
        if (p.empty()) return ApiError::BadRequest("prompt: the prompt is empty (no tokens)", "prompt");
    }
    return std::nullopt;
}

std::optional<ApiError> ParseMessages(const json& body, std::vector<ChatMessage>* out) {
    auto it = body.find("messages");
    if (it == body.end() || it->is_null()) return ApiError::BadRequest("messages: this field is required", "messages");
    if (!it->is_array()) return WrongType("messages", "a list of messages", *it);
    if (it->empty()) return ApiError::BadRequest("messages: must contain at least one message", "messages");
    for (size_t i = 0; i < it->size(); ++i) {
        const json& msg = (*it)[i];
        const std::string where = "messages[" + std::to_string(i) + "]";
        if (!msg.is_object()) return WrongType(where, "an object", msg);
        ChatMessage cm;
        auto role = msg.find("role");
        if (role == msg.end() || !role->is_string()) {
            return ApiError::BadRequest(where + ".role: a string role is required", where + ".role");
        }
        cm.role = role->get<std::string>();
        if (cm.role != "system" && cm.role != "developer" && cm.role != "user" && cm.role != "assistant") {
            return ApiError::BadRequest(
                where + ".role: '" + cm.role + "' is not supported (system, developer, user, assistant)",
                where + ".role");
        }
        auto content = msg.find("content");
        if (content == msg.end() || content->is_null()) {
            if (cm.role != "assistant") {
                return ApiError::BadRequest(where + ".content: this field is required", where + ".content");
            }
        } else if (content->is_string()) {
            cm.content = content->get<std::string>();
        } else if (content->is_array()) {
            for (size_t j = 0; j < content->size(); ++j) {
                const json& part = (*content)[j];
                const std::string pwhere = where + ".content[" + std::to_string(j) + "]";
                if (!part.is_object()) return WrongType(pwhere, "a content part object", part);
                auto type = part.find("type");
                if (type == part.end() || !type->is_string() || *type != "text") {
                    return ApiError::BadRequest(pwhere + ".type: only text content parts are supported",
                                                pwhere + ".type");
                }
                auto text = part.find("text");
                if (text == part.end() || !text->is_string()) {
                    return ApiError::BadRequest(pwhere + ".text: a string is required", pwhere + ".text");
                }
                cm.content += text->get<std::string>();
            }
        } else {
            return WrongType(where + ".content", "a string or a list of content parts", *content);
        }
        out->push_back(std::move(cm));
    }
    return std::nullopt;
}

ApiError ContextLengthError(const ModelContext& m, Endpoint ep, int prompt_len, int max_tokens, bool max_given) {
    const bool chat = ep == Endpoint::kChatCompletions;
    const char* what = chat ? "messages" : "prompt";
    std::string msg = "This model's maximum context length is " + std::to_string(m.max_model_len) + " tokens. ";
    if (prompt_len >= m.max_model_len || !max_given) {
        msg += std::string("However, your ") + what + " resulted in " + std::to_string(prompt_len) +
               " tokens, which leaves no room for the completion. Please reduce the length of the " + what + ".";
    } else {
        msg += "However, you requested " + std::to_string(prompt_len + max_tokens) + " tokens (" +
               std::to_string(prompt_len) + " in the " + what + ", " + std::to_string(max_tokens) +
               " in the completion). Please reduce the length of the " + what + " or completion.";
    }
    return ApiError::BadRequest(msg, what, "context_length_exceeded");
}

}  // namespace

ApiResult<json> ParseJsonBody(std::string_view body) {
    // nlohmann's parser is iterative, but destroying and dumping deep values recurse: bound the depth first.
    int depth = 0;
    bool in_string = false, escaped = false;
    for (char ch : body) {
        if (in_string) {
            if (escaped) {
                escaped = false;
            } else if (ch == '\\') {
                escaped = true;
            } else if (ch == '"') {
                in_string = false;
            }
        } else if (ch == '"') {
            in_string = true;
        } else if (ch == '[' || ch == '{') {
            if (++depth > kMaxJsonDepth) {
                return ApiError::BadRequest("invalid JSON: nested deeper than " + std::to_string(kMaxJsonDepth) +
                                            " levels");
            }
        } else if (ch == ']' || ch == '}') {
            --depth;
        }
    }
    try {
        return json::parse(body);
    } catch (const json::exception& e) {
        // Not only parse_error: a number too large for a double ("1e400") is out_of_range.406, and an
        // exception escaping here would end the process from an HTTP thread.
        std::string what = e.what();
        // "[json.exception.parse_error.101] parse error at line 1, column 2: ..." -> drop the prefix.
        if (const size_t pos = what.find("] "); pos != std::string::npos) what = what.substr(pos + 2);
        return ApiError::BadRequest("invalid JSON body: " + what);
    }
}

std::optional<ApiError> CheckModelName(const json& body, const ModelContext& m, bool required) {
    auto it = body.find("model");
    if (it == body.end() || it->is_null()) {
        if (required) return ApiError::BadRequest("model: this field is required", "model");
        return std::nullopt;
    }
    if (!it->is_string()) return WrongType("model", "a string", *it);
    if (*it != m.model_name) {
        return ApiError::NotFound(
            "The model `" + it->get<std::string>() + "` does not exist. This server serves `" + m.model_name + "`.",
            "model", "model_not_found");
    }
    return std::nullopt;
}

ApiResult<OpenAiRequest> ParseOpenAiRequest(Endpoint endpoint, std::string_view body_text, const ModelContext& m) {
    auto parsed = ParseJsonBody(body_text);
    if (!parsed.ok()) return parsed.error();
    const json& body = parsed.value();
    if (!body.is_object()) return ApiError::BadRequest("the request body must be a JSON object");

    OpenAiRequest r;
    r.endpoint = endpoint;
    r.model = m.model_name;
    RETURN_IF_API_ERROR(CheckModelName(body, m, /*required=*/false));

    bool max_tokens_given = false;
    RETURN_IF_API_ERROR(ParseSampling(body, m, r, &max_tokens_given));
    Reader rd(body);

    if (endpoint == Endpoint::kCompletions) {
        RETURN_IF_API_ERROR(rd.Bool("echo", &r.echo));
        int64_t lp = -1;
        bool lp_given = false;
        RETURN_IF_API_ERROR(rd.Int("logprobs", 0, kMaxLogprobs, &lp, &lp_given));
        if (lp_given) {
            r.logprobs = true;
            r.top_logprobs = static_cast<int>(lp);
        }
        if (const json* v = rd.Get("suffix"); v && !(v->is_string() && v->get_ref<const std::string&>().empty())) {
            return ApiError::BadRequest("suffix: not supported by this server", "suffix", "unsupported");
        }
        int64_t best_of = r.params.n;
        RETURN_IF_API_ERROR(rd.Int("best_of", 1, kMaxN, &best_of));
        if (best_of != r.params.n) {
            return ApiError::BadRequest("best_of: only best_of == n is supported", "best_of", "unsupported");
        }
        RETURN_IF_API_ERROR(ParsePrompts(body, m, r));
        if (!max_tokens_given) r.params.max_tokens = 16;  // OpenAI's default for completions
    } else {
        RETURN_IF_API_ERROR(rd.Bool("logprobs", &r.logprobs));
        int64_t top = 0;
        bool top_given = false;
        RETURN_IF_API_ERROR(rd.Int("top_logprobs", 0, kMaxLogprobs, &top, &top_given));
        if (top_given && !r.logprobs && top > 0) {
            return ApiError::BadRequest("top_logprobs: requires logprobs to be true", "top_logprobs");
        }
        r.top_logprobs = static_cast<int>(top);
        if (const json* v = rd.Get("response_format")) {
            if (!v->is_object()) return WrongType("response_format", "an object", *v);
            auto type = v->find("type");
            if (type == v->end() || !type->is_string() || *type != "text") {
                return ApiError::BadRequest("response_format: only {\"type\": \"text\"} is supported",
                                            "response_format", "unsupported");
            }
        }
        if (const json* v = rd.Get("tools")) {
            const json* choice = rd.Get("tool_choice");
            const bool none = choice && choice->is_string() && *choice == "none";
            if (!v->is_array()) return WrongType("tools", "a list", *v);
            if (!v->empty() && !none) {
                return ApiError::BadRequest("tools: tool calling is not supported by this server", "tools",
                                            "unsupported");
            }
        }
        bool add_generation_prompt = true;
        RETURN_IF_API_ERROR(rd.Bool("add_generation_prompt", &add_generation_prompt));
        std::vector<ChatMessage> messages;
        RETURN_IF_API_ERROR(ParseMessages(body, &messages));
        auto ids = RenderChat(m.chat_template, messages, add_generation_prompt, *m.tokenizer);
        if (!ids.ok()) return ApiError::BadRequest(ids.status().message(), "messages");
        if (ids->empty()) return ApiError::BadRequest("messages: the rendered conversation is empty", "messages");
        r.prompt_texts.push_back({});
        r.prompts.push_back(std::move(ids).value());
    }
    r.params.logprobs = r.logprobs ? r.top_logprobs : -1;

    // Context length: every prompt needs room for at least one generated token, and an explicit
    // max_tokens must fit; an implicit one shrinks to the room left.
    int min_room = std::numeric_limits<int>::max();
    for (const auto& p : r.prompts) {
        const int len = static_cast<int>(p.size());
        if (len >= m.max_model_len || (max_tokens_given && len + r.params.max_tokens > m.max_model_len)) {
            return ContextLengthError(m, endpoint, len, r.params.max_tokens, max_tokens_given);
        }
        min_room = std::min(min_room, m.max_model_len - len);
    }
    if (!max_tokens_given) {
        r.params.max_tokens =
            endpoint == Endpoint::kChatCompletions ? min_room : std::min(r.params.max_tokens, min_room);
    }
    return r;
}

ApiResult<json> HandleTokenize(std::string_view body_text, const ModelContext& m) {
    auto parsed = ParseJsonBody(body_text);
    if (!parsed.ok()) return parsed.error();
    const json& body = parsed.value();
    if (!body.is_object()) return ApiError::BadRequest("the request body must be a JSON object");
    RETURN_IF_API_ERROR(CheckModelName(body, m, false));
    Reader rd(body);
    bool add_special = true;
    RETURN_IF_API_ERROR(rd.Bool("add_special_tokens", &add_special));
    std::vector<int32_t> ids;
    if (rd.Get("messages")) {
        bool add_generation_prompt = true;
        RETURN_IF_API_ERROR(rd.Bool("add_generation_prompt", &add_generation_prompt));
        std::vector<ChatMessage> messages;
        RETURN_IF_API_ERROR(ParseMessages(body, &messages));
        auto r = RenderChat(m.chat_template, messages, add_generation_prompt, *m.tokenizer);
        if (!r.ok()) return ApiError::BadRequest(r.status().message(), "messages");
        ids = std::move(r).value();
    } else {
        const json* p = rd.Get("prompt");
        if (!p) return ApiError::BadRequest("prompt: this field is required (or messages)", "prompt");
        if (!p->is_string()) return WrongType("prompt", "a string", *p);
        ids = m.tokenizer->Encode(p->get<std::string>(), add_special && m.tokenizer->add_bos());
    }
    json tokens = json::array();
    for (int32_t id : ids) tokens.push_back(id);
    return json{{"count", ids.size()}, {"max_model_len", m.max_model_len}, {"tokens", tokens}};
}

ApiResult<json> HandleDetokenize(std::string_view body_text, const ModelContext& m) {
    auto parsed = ParseJsonBody(body_text);
    if (!parsed.ok()) return parsed.error();
    const json& body = parsed.value();
    if (!body.is_object()) return ApiError::BadRequest("the request body must be a JSON object");
    RETURN_IF_API_ERROR(CheckModelName(body, m, false));
    auto it = body.find("tokens");
    if (it == body.end() || it->is_null()) return ApiError::BadRequest("tokens: this field is required", "tokens");
    if (!it->is_array()) return WrongType("tokens", "a list of token ids", *it);
    std::vector<int32_t> ids;
    RETURN_IF_API_ERROR(ParseIdList("tokens", *it, m, &ids));
    return json{{"prompt", m.tokenizer->Decode(ids)}};
}

std::string TokenText(const Tokenizer& tokenizer, int32_t id) {
    std::string piece = tokenizer.IdToPiece(id);
    // <0xNN>: a byte-fallback piece.
    if (piece.size() == 6 && piece[0] == '<' && piece[1] == '0' && piece[2] == 'x' && piece[5] == '>') {
        char* end = nullptr;
        const std::string hex = piece.substr(3, 2);
        const long byte = std::strtol(hex.c_str(), &end, 16);
        if (*end == '\0') return std::string(1, static_cast<char>(byte));
    }
    std::string out;
    static constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581
    for (size_t i = 0; i < piece.size();) {
        if (piece.compare(i, kSpace.size(), kSpace) == 0) {
            out += ' ';
            i += kSpace.size();
        } else {
            out += piece[i++];
        }
    }
    return out;
}

}  // namespace uniattn::server
