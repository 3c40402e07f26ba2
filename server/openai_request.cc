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

    // A number of any value: its range is checked with every other field (ValidateSampling).
    std::optional<ApiError> Float(const char* name, float* out) const {
        const json* v = Get(name);
        if (!v) return std::nullopt;
        if (!v->is_number()) return WrongType(name, "a number", *v);
        *out = static_cast<float>(v->get<double>());
        return std::nullopt;
    }

    // An integer that fits 32 bits: its range is checked with every other field (ValidateSampling).
    std::optional<ApiError> Int32(const char* name, int* out, bool* present = nullptr) const {
        int64_t v = 0;
        if (auto e = Int(name, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max(), &v, present))
            return e;
        if (Get(name)) *out = static_cast<int>(v);
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

ApiError FromStatus(const Status& status) { return ApiErrorFromStatus(status); }
std::optional<ApiError> IfError(const Status& status) {
    if (status.ok()) return std::nullopt;
    return ApiErrorFromStatus(status);
}

// A token id: an integer that fits 32 bits (the vocabulary is checked with the rest of the request, by
// ValidateSampling or ValidatePromptIds, so every API words it the same way).
std::optional<ApiError> ReadTokenId(const std::string& param, const json& v, const ServedModel& m, int32_t* out) {
    if (!v.is_number_integer()) return WrongType(param, "a token id (integer)", v);
    // nlohmann stores non-negative integers as unsigned, negative ones as signed.
    const bool fits =
        v.is_number_unsigned() ? v.get<uint64_t>() <= static_cast<uint64_t>(INT32_MAX) : v.get<int64_t>() >= INT32_MIN;
    if (!fits) {
        return OutOfRange(
            param, v.dump() + " is not a token id (vocabulary size " + std::to_string(m.limits.vocab_size) + ")");
    }
    *out = static_cast<int32_t>(v.get<int64_t>());
    return std::nullopt;
}

// Sampling and stopping fields shared by both endpoints.
std::optional<ApiError> ParseSampling(const json& body, const ServedModel& m, OpenAiRequest& r,
                                      bool* max_tokens_given) {
    Reader rd(body);
    GenerationRequest& p = r.params;
    m.sampling_defaults.ApplyTo(p);  // what the request leaves unset; its own fields are read over them
    RETURN_IF_API_ERROR(rd.Float("temperature", &p.temperature));
    RETURN_IF_API_ERROR(rd.Float("top_p", &p.top_p));
    RETURN_IF_API_ERROR(rd.Int32("top_k", &p.top_k));
    RETURN_IF_API_ERROR(rd.Float("min_p", &p.min_p));
    RETURN_IF_API_ERROR(rd.Float("repetition_penalty", &p.repetition_penalty));
    RETURN_IF_API_ERROR(rd.Float("presence_penalty", &p.presence_penalty));
    RETURN_IF_API_ERROR(rd.Float("frequency_penalty", &p.frequency_penalty));
    if (const json* v = rd.Get("seed")) {
        if (!v->is_number_integer()) return WrongType("seed", "an integer", *v);
        p.seed = v->is_number_unsigned() ? v->get<uint64_t>() : static_cast<uint64_t>(v->get<int64_t>());
    }
    RETURN_IF_API_ERROR(rd.Int32("n", &p.n));

    bool given = false;
    RETURN_IF_API_ERROR(rd.Int32("max_tokens", &p.max_tokens, &given));
    if (r.endpoint == Endpoint::kChatCompletions) {
        RETURN_IF_API_ERROR(rd.Int32("max_completion_tokens", &p.max_tokens, &given));
    }
    *max_tokens_given = given;

    if (const json* v = rd.Get("stop")) {
        if (v->is_string()) {
            if (!v->get_ref<const std::string&>().empty()) p.stop.push_back(v->get<std::string>());
        } else if (v->is_array()) {
            for (size_t i = 0; i < v->size(); ++i) {
                const json& s = (*v)[i];
                if (!s.is_string()) return WrongType("stop", "a string or a list of strings", s);
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
            RETURN_IF_API_ERROR(ReadTokenId("stop_token_ids", t, m, &id));
            p.stop_token_ids.push_back(id);
        }
    }
    if (const json* v = rd.Get("logit_bias")) {
        if (!v->is_object()) return WrongType("logit_bias", "an object mapping token ids to biases", *v);
        for (const auto& [key, bias] : v->items()) {
            char* end = nullptr;
            errno = 0;
            const long long id = std::strtoll(key.c_str(), &end, 10);
            if (key.empty() || *end != '\0' || errno == ERANGE || id < INT32_MIN || id > INT32_MAX) {
                return OutOfRange("logit_bias", "'" + key + "' is not a token id (vocabulary size " +
                                                    std::to_string(m.limits.vocab_size) + ")");
            }
            if (!bias.is_number()) return WrongType("logit_bias", "numeric biases", bias);
            p.logit_bias[static_cast<int32_t>(id)] = static_cast<float>(bias.get<double>());
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

std::optional<ApiError> ParseIdList(const std::string& param, const json& arr, const ServedModel& m,
                                    std::vector<int32_t>* out) {
    for (const json& t : arr) {
        int32_t id = 0;
        RETURN_IF_API_ERROR(ReadTokenId(param, t, m, &id));
        out->push_back(id);
    }
    return std::nullopt;
}

std::optional<ApiError> ParsePrompts(const json& body, const ServedModel& m, OpenAiRequest& r) {
    Reader rd(body);
    bool add_special = true;
    RETURN_IF_API_ERROR(rd.Bool("add_special_tokens", &add_special));
    const json* v = rd.Get("prompt");
    if (!v) return ApiError::BadRequest("prompt: this field is required", "prompt");
    const bool add_bos = add_special && m.tokenizer->add_bos();
    auto add_text = [&](const std::string& text) -> std::optional<ApiError> {
        // An oversized prompt is refused before it costs a tokenization.
        if (Status s = CheckPromptBytes(static_cast<int64_t>(text.size()), m.limits, "prompt"); !s.ok())
            return FromStatus(s);
        r.prompts.push_back(m.tokenizer->Encode(text, add_bos));
        return std::nullopt;
    };
    if (v->is_string()) {
        RETURN_IF_API_ERROR(IfError(CheckSequencesPerRequest(1, r.params.n, m.limits)));
        RETURN_IF_API_ERROR(add_text(v->get_ref<const std::string&>()));
    } else if (v->is_array()) {
        if (v->empty()) return ApiError::BadRequest("prompt: must not be an empty list", "prompt");
        const json& first = v->front();
        const int64_t num_prompts = first.is_number() ? 1 : static_cast<int64_t>(v->size());
        if (num_prompts > RequestLimits::kMaxPrompts) {
            return OutOfRange("prompt",
                              "at most " + std::to_string(RequestLimits::kMaxPrompts) + " prompts per request");
        }
        RETURN_IF_API_ERROR(IfError(CheckSequencesPerRequest(num_prompts, r.params.n, m.limits)));
        if (first.is_number()) {
            std::vector<int32_t> ids;
            RETURN_IF_API_ERROR(ParseIdList("prompt", *v, m, &ids));
            r.prompts.push_back(std::move(ids));
        } else if (first.is_string()) {
            for (const json& s : *v) {
                if (!s.is_string()) return WrongType("prompt", "a list of strings", s);
                RETURN_IF_API_ERROR(add_text(s.get_ref<const std::string&>()));
            }
        } else if (first.is_array()) {
            for (const json& a : *v) {
                if (!a.is_array()) return WrongType("prompt", "a list of token id lists", a);
                std::vector<int32_t> ids;
                RETURN_IF_API_ERROR(ParseIdList("prompt", a, m, &ids));
                r.prompts.push_back(std::move(ids));
            }
        } else {
            return WrongType("prompt", "a string, a list of strings or a list of token ids", first);
        }
    } else {
        return WrongType("prompt", "a string, a list of strings or a list of token ids", *v);
    }
    for (const auto& p : r.prompts) {
        if (Status s = ValidatePromptIds(p, m.limits, "prompt"); !s.ok()) return FromStatus(s);
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

using ojson = nlohmann::ordered_json;

ApiResult<OpenAiRequest> FinishChatOrCompletion(OpenAiRequest& r, const ServedModel& m, bool max_tokens_given);

// A chat message for a Jinja template, as vLLM hands it to transformers: role, content (a string; text parts
// joined with newlines; null for an assistant message with tool calls), and name, tool_calls (function
// arguments given as a JSON string become an object), tool_call_id, reasoning_content when present.
std::optional<ApiError> JinjaMessage(const ojson& msg, size_t i, ojson* out) {
    const std::string where = "messages[" + std::to_string(i) + "]";
    if (!msg.is_object()) return ApiError::BadRequest(where + ": expected an object", where);
    auto role = msg.find("role");
    if (role == msg.end() || !role->is_string() || role->get_ref<const std::string&>().empty()) {
        return ApiError::BadRequest(where + ".role: a string role is required", where + ".role");
    }
    (*out)["role"] = *role;
    auto content = msg.find("content");
    if (content == msg.end() || content->is_null()) {
        if (*role != "assistant") {
            return ApiError::BadRequest(where + ".content: this field is required", where + ".content");
        }
        (*out)["content"] = nullptr;
    } else if (content->is_string()) {
        (*out)["content"] = *content;
    } else if (content->is_array()) {
        std::string text;
        for (size_t j = 0; j < content->size(); ++j) {
            const ojson& part = (*content)[j];
            const std::string pwhere = where + ".content[" + std::to_string(j) + "]";
            auto type = part.is_object() ? part.find("type") : part.end();
            if (!part.is_object() || type == part.end() || !type->is_string() || *type != "text") {
                return ApiError::BadRequest(pwhere + ".type: only text content parts are supported", pwhere + ".type");
            }
            auto t = part.find("text");
            if (t == part.end() || !t->is_string()) {
                return ApiError::BadRequest(pwhere + ".text: a string is required", pwhere + ".text");
            }
            if (j > 0) text += "\n";
            text += t->get_ref<const std::string&>();
        }
        (*out)["content"] = std::move(text);
    } else {
        return ApiError::BadRequest(where + ".content: expected a string or a list of content parts",
                                    where + ".content");
    }
    for (const char* key : {"name", "tool_call_id", "reasoning_content"}) {
        auto it = msg.find(key);
        if (it == msg.end() || it->is_null()) continue;
        if (!it->is_string()) {
            return ApiError::BadRequest(where + "." + key + ": expected a string", where + "." + key);
        }
        (*out)[key] = *it;
    }
    if (auto calls = msg.find("tool_calls"); calls != msg.end() && !calls->is_null()) {
        if (!calls->is_array()) {
            return ApiError::BadRequest(where + ".tool_calls: expected a list", where + ".tool_calls");
        }
        ojson list = ojson::array();
        for (size_t j = 0; j < calls->size(); ++j) {
            ojson call = (*calls)[j];
            const std::string cwhere = where + ".tool_calls[" + std::to_string(j) + "]";
            if (!call.is_object() || !call.contains("function") || !call["function"].is_object()) {
                return ApiError::BadRequest(cwhere + ".function: an object is required", cwhere + ".function");
            }
            ojson& args = call["function"]["arguments"];
            if (args.is_string()) {
                ojson parsed;
                if (ParseJsonBounded(args.get_ref<const std::string&>(), kMaxJsonDepth, parsed)) {
                    return ApiError::BadRequest(cwhere + ".function.arguments: not valid JSON",
                                                cwhere + ".function.arguments");
                }
                args = std::move(parsed);
            }
            list.push_back(std::move(call));
        }
        (*out)["tool_calls"] = std::move(list);
    }
    return std::nullopt;
}

// Renders the body's conversation with the model's Jinja template and tokenizes it (no BOS added: the
// template writes it). The body is read again with its keys in order: tools and arguments reach the
// template as the client wrote them (Python dicts keep insertion order).
ApiResult<std::vector<int32_t>> JinjaChatPrompt(std::string_view body_text, const ServedModel& m) {
    ojson body;
    if (auto error = ParseJsonBounded(body_text, kMaxJsonDepth, body)) {
        return ApiError::BadRequest("invalid JSON body: " + error->detail);
    }
    JinjaChatInput input;
    auto messages = body.find("messages");
    if (messages == body.end() || messages->is_null()) {
        return ApiError::BadRequest("messages: this field is required", "messages");
    }
    if (!messages->is_array()) return ApiError::BadRequest("messages: expected a list of messages", "messages");
    if (messages->empty()) return ApiError::BadRequest("messages: must contain at least one message", "messages");
    input.messages = ojson::array();
    int64_t content_bytes = 0;
    for (size_t i = 0; i < messages->size(); ++i) {
        ojson msg = ojson::object();
        RETURN_IF_API_ERROR(JinjaMessage((*messages)[i], i, &msg));
        if (msg["content"].is_string())
            content_bytes += static_cast<int64_t>(msg["content"].get_ref<const std::string&>().size());
        input.messages.push_back(std::move(msg));
    }
    RETURN_IF_API_ERROR(IfError(CheckPromptBytes(content_bytes, m.limits, "messages")));
    auto tools = body.find("tools");
    input.tools = tools != body.end() && tools->is_array() ? *tools : ojson(nullptr);
    if (auto v = body.find("add_generation_prompt"); v != body.end() && !v->is_null()) {
        if (!v->is_boolean())
            return ApiError::BadRequest("add_generation_prompt: expected a boolean", "add_generation_prompt");
        input.add_generation_prompt = v->get<bool>();
    }
    if (auto v = body.find("continue_final_message"); v != body.end() && !v->is_null()) {
        if (!v->is_boolean()) {
            return ApiError::BadRequest("continue_final_message: expected a boolean", "continue_final_message");
        }
        input.continue_final_message = v->get<bool>();
    }
    if (input.continue_final_message && input.add_generation_prompt) {
        return ApiError::BadRequest(
            "continue_final_message: cannot be true together with add_generation_prompt (set it to false)",
            "continue_final_message");
    }
    if (auto v = body.find("chat_template_kwargs"); v != body.end() && !v->is_null()) {
        if (!v->is_object())
            return ApiError::BadRequest("chat_template_kwargs: expected an object", "chat_template_kwargs");
        for (const auto& [key, value] : v->items()) {
            if (key == "messages" || key == "tools" || key == "documents" || key == "add_generation_prompt") {
                return ApiError::BadRequest("chat_template_kwargs." + key + ": set by the request itself",
                                            "chat_template_kwargs." + key);
            }
        }
        input.kwargs = *v;
    }
    // The rendered text is bounded like a prompt (max_prompt_bytes, when the engine sets one).
    const int64_t max_bytes = m.limits.max_prompt_bytes > 0 ? m.limits.max_prompt_bytes : 0;
    auto text = RenderJinjaChat(*m.jinja_template, input, max_bytes);
    if (!text.ok()) return ApiError::BadRequest(text.status().message(), "messages");
    return m.tokenizer->Encode(*text, /*add_bos=*/false);
}

}  // namespace

ApiResult<json> ParseJsonBody(std::string_view body) {
    // uniattn/json_io.h: the depth bound (destroying and dumping deep values recurse) and every
    // json::exception caught (also out_of_range.406 for "1e400": one escaping would end the process).
    json out;
    if (auto error = ParseJsonBounded(body, kMaxJsonDepth, out)) {
        if (error->kind == JsonParseError::Kind::kTooDeep)
            return ApiError::BadRequest("invalid JSON: " + error->detail);
        return ApiError::BadRequest("invalid JSON body: " + error->detail);
    }
    return out;
}

std::optional<ApiError> CheckModelName(const json& body, const ServedModel& m, bool required) {
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

ApiResult<OpenAiRequest> ParseOpenAiRequest(Endpoint endpoint, std::string_view body_text, const ServedModel& m) {
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
        RETURN_IF_API_ERROR(rd.Int("logprobs", 0, RequestLimits::kMaxLogprobs, &lp, &lp_given));
        if (lp_given) {
            r.logprobs = true;
            r.top_logprobs = static_cast<int>(lp);
        }
        if (const json* v = rd.Get("suffix"); v && !(v->is_string() && v->get_ref<const std::string&>().empty())) {
            return ApiError::BadRequest("suffix: not supported by this server", "suffix", "unsupported");
        }
        int64_t best_of = r.params.n;
        RETURN_IF_API_ERROR(rd.Int("best_of", 1, RequestLimits::kMaxSamples, &best_of));
        if (best_of != r.params.n) {
            return ApiError::BadRequest("best_of: only best_of == n is supported", "best_of", "unsupported");
        }
        r.params.logprobs = r.logprobs ? r.top_logprobs : -1;
        RETURN_IF_API_ERROR(IfError(ValidateSampling(r.params, m.limits)));  // before any tokenization
        RETURN_IF_API_ERROR(ParsePrompts(body, m, r));
    } else {
        RETURN_IF_API_ERROR(rd.Bool("logprobs", &r.logprobs));
        int64_t top = 0;
        bool top_given = false;
        RETURN_IF_API_ERROR(rd.Int("top_logprobs", 0, RequestLimits::kMaxLogprobs, &top, &top_given));
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
        r.params.logprobs = r.logprobs ? r.top_logprobs : -1;
        RETURN_IF_API_ERROR(IfError(ValidateSampling(r.params, m.limits)));  // before any tokenization
        if (m.jinja_template) {
            auto ids = JinjaChatPrompt(body_text, m);
            if (!ids.ok()) return ids.error();
            if (ids.value().empty()) {
                return ApiError::BadRequest("messages: the rendered conversation is empty", "messages");
            }
            r.prompts.push_back(std::move(ids.value()));
            return FinishChatOrCompletion(r, m, max_tokens_given);
        }
        std::vector<ChatMessage> messages;
        RETURN_IF_API_ERROR(ParseMessages(body, &messages));
        int64_t content_bytes = 0;
        for (const ChatMessage& msg : messages) content_bytes += static_cast<int64_t>(msg.content.size());
        RETURN_IF_API_ERROR(IfError(CheckPromptBytes(content_bytes, m.limits, "messages")));
        auto ids = RenderChat(m.chat_template, messages, add_generation_prompt, *m.tokenizer);
        if (!ids.ok()) return ApiError::BadRequest(ids.status().message(), "messages");
        if (ids->empty()) return ApiError::BadRequest("messages: the rendered conversation is empty", "messages");
        r.prompts.push_back(std::move(ids).value());
    }
    return FinishChatOrCompletion(r, m, max_tokens_given);
}

namespace {

// Context length: every prompt needs room for at least one generated token, and an explicit max_tokens
// must fit; an implicit one is capped to the room left (chat: all of it; completions: OpenAI's default of 16).
ApiResult<OpenAiRequest> FinishChatOrCompletion(OpenAiRequest& r, const ServedModel& m, bool max_tokens_given) {
    const Endpoint endpoint = r.endpoint;
    const bool chat = endpoint == Endpoint::kChatCompletions;
    const int64_t wanted = max_tokens_given ? r.params.max_tokens : chat ? INT32_MAX : 16;
    int max_tokens = INT32_MAX;
    for (const auto& p : r.prompts) {
        auto room = CheckContextLength(static_cast<int64_t>(p.size()), wanted, max_tokens_given, m.limits,
                                       chat ? "messages" : "prompt");
        if (!room.ok()) return FromStatus(room.status());
        max_tokens = std::min(max_tokens, *room);
    }
    r.params.max_tokens = max_tokens;
    return std::move(r);
}

}  // namespace

ApiResult<json> HandleTokenize(std::string_view body_text, const ServedModel& m) {
    auto parsed = ParseJsonBody(body_text);
    if (!parsed.ok()) return parsed.error();
    const json& body = parsed.value();
    if (!body.is_object()) return ApiError::BadRequest("the request body must be a JSON object");
    RETURN_IF_API_ERROR(CheckModelName(body, m, false));
    Reader rd(body);
    bool add_special = true;
    RETURN_IF_API_ERROR(rd.Bool("add_special_tokens", &add_special));
    std::vector<int32_t> ids;
    if (rd.Get("messages") && m.jinja_template) {
        auto r = JinjaChatPrompt(body_text, m);
        if (!r.ok()) return r.error();
        ids = std::move(r.value());
    } else if (rd.Get("messages")) {
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
    return json{{"count", ids.size()}, {"max_model_len", m.limits.max_model_len}, {"tokens", tokens}};
}

ApiResult<json> HandleDetokenize(std::string_view body_text, const ServedModel& m) {
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

std::string TokenText(const Tokenizer& tokenizer, int32_t id) { return ReplaceInvalidUtf8(tokenizer.TokenBytes(id)); }

}  // namespace uniattn::server
