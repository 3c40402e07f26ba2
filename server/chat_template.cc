#include "server/chat_template.h"

#include <nlohmann/json.hpp>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "server/jinja/jinja.h"
#include "uniattn/json_io.h"

namespace uniattn::server {
namespace {

// A rendered prompt: text runs, split where the template places the tokenizer's BOS or EOS token.
struct Segment {
    enum class Kind { kText, kBos, kEos, kBosIfTokenizerWants };
    Kind kind = Kind::kText;
    std::string text;
};

class Renderer {
  public:
    void Text(std::string_view s) {
        if (!segments_.empty() && segments_.back().kind == Segment::Kind::kText) {
            segments_.back().text += s;
        } else {
            segments_.push_back({Segment::Kind::kText, std::string(s)});
        }
    }
    void Bos() { segments_.push_back({Segment::Kind::kBos, {}}); }
    void Eos() { segments_.push_back({Segment::Kind::kEos, {}}); }
    void BosIfWanted() { segments_.push_back({Segment::Kind::kBosIfTokenizerWants, {}}); }
    const std::vector<Segment>& segments() const { return segments_; }

  private:
    std::vector<Segment> segments_;
};

std::string Trim(std::string_view s) {
    size_t b = 0, e = s.size();
    while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
    while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
    return std::string(s.substr(b, e - b));
}

std::string NormalRole(const std::string& role) { return role == "developer" ? "system" : role; }

Status CheckRoles(const std::vector<ChatMessage>& messages) {
    if (messages.empty()) return InvalidArgument("messages: must contain at least one message");
    for (size_t i = 0; i < messages.size(); ++i) {
        const std::string r = NormalRole(messages[i].role);
        if (r != "system" && r != "user" && r != "assistant") {
            return InvalidArgument("messages[" + std::to_string(i) + "].role: '" + messages[i].role +
                                   "' is not one of system, developer, user, assistant");
        }
    }
    return Status::Ok();
}

// [INST]-style templates need user/assistant alternation after an optional leading system message.
Status CheckAlternation(const std::vector<ChatMessage>& messages, size_t first, const char* name) {
    for (size_t i = first; i < messages.size(); ++i) {
        const bool want_user = (i - first) % 2 == 0;
        const std::string r = NormalRole(messages[i].role);
        if ((r == "user") != want_user || r == "system") {
            return InvalidArgument(std::string("messages: the ") + name +
                                   " chat template needs roles to alternate user/assistant/user/... after an "
                                   "optional first system message (message " +
                                   std::to_string(i) + " is '" + messages[i].role + "')");
        }
    }
    return Status::Ok();
}

Status Render(ChatTemplate t, const std::vector<ChatMessage>& messages, bool add_generation_prompt, Renderer& r) {
    UA_RETURN_IF_ERROR(CheckRoles(messages));
    switch (t) {
        case ChatTemplate::kNone:
            return InvalidArgument(
                "messages: this model has no chat template the server can render; set model.chat_template in the "
                "config (plain, llama-2, llama-3, chatml or mistral) or use /v1/completions");
        case ChatTemplate::kPlain: {
            r.BosIfWanted();
            for (size_t i = 0; i < messages.size(); ++i) {
                if (i > 0) r.Text("\n\n");
                r.Text(messages[i].content);
            }
            return Status::Ok();
        }
        case ChatTemplate::kLlama2: {
            size_t first = 0;
            std::string system;
            if (NormalRole(messages[0].role) == "system") {
                system = messages[0].content;
                first = 1;
            }
            UA_RETURN_IF_ERROR(CheckAlternation(messages, first, "llama-2"));
            for (size_t i = first; i < messages.size(); ++i) {
                std::string content = messages[i].content;
                if (i == first && first == 1) content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content;
                if (messages[i].role == "user") {
                    r.Bos();
                    r.Text("[INST] " + Trim(content) + " [/INST]");
                } else {
                    r.Text(" " + Trim(content) + " ");
                    r.Eos();
                }
            }
            return Status::Ok();
        }
        case ChatTemplate::kMistral: {
            size_t first = 0;
            std::string system;
            if (NormalRole(messages[0].role) == "system") {
                system = messages[0].content;
                first = 1;
            }
            UA_RETURN_IF_ERROR(CheckAlternation(messages, first, "mistral"));
            r.Bos();
            for (size_t i = first; i < messages.size(); ++i) {
                std::string content = messages[i].content;
                if (i == first && first == 1) content = system + "\n\n" + content;
                if (messages[i].role == "user") {
                    r.Text("[INST] " + content + " [/INST]");
                } else {
                    r.Text(content);
                    r.Eos();
                }
            }
            return Status::Ok();
        }
        case ChatTemplate::kLlama3: {
            r.Text("<|begin_of_text|>");
            for (const ChatMessage& m : messages) {
                r.Text("<|start_header_id|>" + NormalRole(m.role) + "<|end_header_id|>\n\n" + Trim(m.content) +
                       "<|eot_id|>");
            }
            if (add_generation_prompt) r.Text("<|start_header_id|>assistant<|end_header_id|>\n\n");
            return Status::Ok();
        }
        case ChatTemplate::kChatml: {
            for (const ChatMessage& m : messages) {
                r.Text("<|im_start|>" + NormalRole(m.role) + "\n" + m.content + "<|im_end|>\n");
            }
            if (add_generation_prompt) r.Text("<|im_start|>assistant\n");
            return Status::Ok();
        }
    }
    return Internal("unknown chat template");
}

}  // namespace

const char* ChatTemplateName(ChatTemplate t) {
    switch (t) {
        case ChatTemplate::kNone:
            return "none";
        case ChatTemplate::kPlain:
            return "plain";
        case ChatTemplate::kLlama2:
            return "llama-2";
        case ChatTemplate::kLlama3:
            return "llama-3";
        case ChatTemplate::kChatml:
            return "chatml";
        case ChatTemplate::kMistral:
            return "mistral";
    }
    return "?";
}

StatusOr<ChatTemplate> ParseChatTemplateName(std::string_view name) {
    for (ChatTemplate t : {ChatTemplate::kNone, ChatTemplate::kPlain, ChatTemplate::kLlama2, ChatTemplate::kLlama3,
                           ChatTemplate::kChatml, ChatTemplate::kMistral}) {
        if (name == ChatTemplateName(t)) return t;
    }
    return InvalidArgument("model.chat_template: unknown template '" + std::string(name) + "'");
}

namespace {

std::optional<std::string> ReadTextFile(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

StatusOr<nlohmann::ordered_json> ReadJsonFile(const std::string& path) {
    auto text = ReadTextFile(path);
    if (!text) return NotFound(path + ": cannot be read");
    nlohmann::ordered_json j;
    if (auto error = ParseJsonBounded(*text, kMaxJsonFileDepth, j)) {
        return InvalidArgument(path + ": not valid JSON: " + error->detail);
    }
    if (!j.is_object()) return InvalidArgument(path + ": not a JSON object");
    return j;
}

// tokenizer_config.json's chat_template: a string, or [{"name": ..., "template": ...}] of which "default".
std::optional<std::string> TemplateFromConfigValue(const nlohmann::ordered_json& value) {
    if (value.is_string()) return value.get<std::string>();
    if (value.is_array()) {
        for (const auto& entry : value) {
            if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
                entry["template"].is_string()) {
                return entry["template"].get<std::string>();
            }
        }
    }
    return std::nullopt;
}

// The string entries of tokenizer_config.json, AddedToken objects as their content, lists of those (e.g.
// additional_special_tokens) as lists of strings. The template itself is left out.
nlohmann::ordered_json SpecialTokens(const nlohmann::ordered_json& cfg) {
    nlohmann::ordered_json out = nlohmann::ordered_json::object();
    auto token_text = [](const nlohmann::ordered_json& v) -> std::optional<std::string> {
        if (v.is_string()) return v.get<std::string>();
        if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
        return std::nullopt;
    };
    for (const auto& [key, value] : cfg.items()) {
        if (key == "chat_template" || key == "added_tokens_decoder") continue;
        if (auto text = token_text(value)) {
            out[key] = *text;
        } else if (value.is_array() && !value.empty()) {
            nlohmann::ordered_json list = nlohmann::ordered_json::array();
            for (const auto& item : value) {
                auto t = token_text(item);
                if (!t) {
                    list = nullptr;
                    break;
                }
                list.push_back(*t);
            }
            if (list.is_array()) out[key] = std::move(list);
        }
    }
    return out;
}

StatusOr<std::shared_ptr<const JinjaChatTemplate>> ParseJinjaChatTemplate(const std::string& text,
                                                                          const std::string& source,
                                                                          const std::string& model_dir) {
    jinja::Error error;
    std::shared_ptr<const jinja::Template> tmpl = jinja::Template::Parse(text, &error);
    if (!tmpl) {
        return InvalidArgument("model.chat_template: " + source + ":" + std::to_string(error.line) + ":" +
                               std::to_string(error.column) + ": " + error.message);
    }
    auto t = std::make_shared<JinjaChatTemplate>();
    t->source = source;
    t->tmpl = std::move(tmpl);
    const std::string config_path = model_dir + "/tokenizer_config.json";
    if (std::error_code ec; !model_dir.empty() && std::filesystem::is_regular_file(config_path, ec)) {
        UA_ASSIGN_OR_RETURN(nlohmann::ordered_json cfg, ReadJsonFile(config_path));
        t->special_tokens = SpecialTokens(cfg);
    }
    return std::shared_ptr<const JinjaChatTemplate>(std::move(t));
}

}  // namespace

StatusOr<ResolvedChatTemplate> ResolveChatTemplate(const std::string& setting, const std::string& model_dir,
                                                   std::string* detail) {
    ResolvedChatTemplate r;
    if (setting != "auto") {
        if (auto builtin = ParseChatTemplateName(setting); builtin.ok()) {
            r.builtin = *builtin;
            r.name = ChatTemplateName(*builtin);
            if (detail) *detail = "the built-in " + r.name + " template";
            return r;
        }
        auto text = ReadTextFile(setting);
        if (!text) return NotFound("model.chat_template: " + setting + ": cannot be read");
        UA_ASSIGN_OR_RETURN(r.jinja, ParseJinjaChatTemplate(*text, setting, model_dir));
        r.name = setting;
        if (detail) *detail = "the Jinja template " + setting;
        return r;
    }
    std::error_code ec;
    const std::string jinja_path = model_dir + "/chat_template.jinja";
    const std::string json_path = model_dir + "/chat_template.json";
    const std::string config_path = model_dir + "/tokenizer_config.json";
    std::optional<std::string> text;
    std::string source;
    if (std::filesystem::is_regular_file(jinja_path, ec)) {
        text = ReadTextFile(jinja_path);
        if (!text) return NotFound("model.chat_template: " + jinja_path + ": cannot be read");
        source = jinja_path;
    } else if (std::filesystem::is_regular_file(json_path, ec)) {
        UA_ASSIGN_OR_RETURN(nlohmann::ordered_json j, ReadJsonFile(json_path));
        if (j.contains("chat_template")) text = TemplateFromConfigValue(j["chat_template"]);
        if (!text) return InvalidArgument("model.chat_template: " + json_path + " has no usable chat_template");
        source = json_path;
    } else if (std::filesystem::is_regular_file(config_path, ec)) {
        UA_ASSIGN_OR_RETURN(nlohmann::ordered_json cfg, ReadJsonFile(config_path));
        if (cfg.contains("chat_template") && !cfg["chat_template"].is_null()) {
            text = TemplateFromConfigValue(cfg["chat_template"]);
            if (!text) {
                return InvalidArgument("model.chat_template: " + config_path +
                                       ": chat_template is neither a string nor a list with a \"default\" entry");
            }
            source = config_path;
        }
    }
    if (!text) {
        r.builtin = ChatTemplate::kNone;
        r.name = ChatTemplateName(ChatTemplate::kNone);
        if (detail) {
            *detail = model_dir +
                      " has no chat template (chat_template.jinja, chat_template.json or "
                      "tokenizer_config.json's chat_template); chat requests need model.chat_template";
        }
        return r;
    }
    UA_ASSIGN_OR_RETURN(r.jinja, ParseJinjaChatTemplate(*text, source, model_dir));
    r.name = "auto:" + source;
    if (detail) *detail = "the model's Jinja template from " + source;
    return r;
}

StatusOr<std::string> RenderJinjaChat(const JinjaChatTemplate& t, const JinjaChatInput& input, int64_t max_bytes) {
    // transformers' render call: the tokenizer's special tokens, then messages, tools, documents,
    // add_generation_prompt, then the caller's keyword arguments.
    nlohmann::ordered_json context = t.special_tokens;
    context["messages"] = input.messages;
    context["tools"] = input.tools;
    context["documents"] = nullptr;
    context["add_generation_prompt"] = input.add_generation_prompt;
    for (const auto& [key, value] : input.kwargs.items()) context[key] = value;

    jinja::RenderOptions options;
    if (max_bytes > 0) options.limits.max_output_bytes = max_bytes;
    std::string text;
    jinja::Error error;
    if (!t.tmpl->Render(jinja::Value::FromJson(context), options, &text, &error)) {
        if (error.kind == jinja::Error::Kind::kRaised) return InvalidArgument(error.message);
        return InvalidArgument("the chat template failed (" + t.source + ", " + error.ToString() + ")");
    }
    if (input.continue_final_message) {
        // The text ends right after the last message's content, so that generation continues it.
        const auto& last = input.messages.back();
        const std::string content = last.contains("content") && last["content"].is_string()
                                        ? last["content"].get<std::string>()
                                        : std::string();
        size_t pos = content.empty() ? std::string::npos : text.rfind(content);
        size_t len = content.size();
        if (pos == std::string::npos) {
            size_t b = 0, e = content.size();
            while (b < e && std::isspace(static_cast<unsigned char>(content[b]))) ++b;
            while (e > b && std::isspace(static_cast<unsigned char>(content[e - 1]))) --e;
            const std::string stripped = content.substr(b, e - b);
            if (!stripped.empty()) pos = text.rfind(stripped);
            len = stripped.size();
        }
        if (pos == std::string::npos) {
            return InvalidArgument(
                "continue_final_message: the final message's content does not appear in the rendered chat");
        }
        text.resize(pos + len);
    }
    return text;
}

StatusOr<std::vector<int32_t>> RenderChat(ChatTemplate t, const std::vector<ChatMessage>& messages,
                                          bool add_generation_prompt, const Tokenizer& tokenizer) {
    Renderer r;
    UA_RETURN_IF_ERROR(Render(t, messages, add_generation_prompt, r));
    std::vector<int32_t> ids;
    for (const Segment& s : r.segments()) {
        switch (s.kind) {
            case Segment::Kind::kText: {
                std::vector<int32_t> piece = tokenizer.Encode(s.text, false);
                ids.insert(ids.end(), piece.begin(), piece.end());
                break;
            }
            case Segment::Kind::kBos:
                ids.push_back(tokenizer.bos_id());
                break;
            case Segment::Kind::kEos:
                ids.push_back(tokenizer.eos_id());
                break;
            case Segment::Kind::kBosIfTokenizerWants:
                if (tokenizer.add_bos()) ids.push_back(tokenizer.bos_id());
                break;
        }
    }
    return ids;
}

StatusOr<std::string> RenderChatText(ChatTemplate t, const std::vector<ChatMessage>& messages,
                                     bool add_generation_prompt) {
    Renderer r;
    UA_RETURN_IF_ERROR(Render(t, messages, add_generation_prompt, r));
    std::string out;
    for (const Segment& s : r.segments()) {
        switch (s.kind) {
            case Segment::Kind::kText:
                out += s.text;
                break;
            case Segment::Kind::kBos:
            case Segment::Kind::kBosIfTokenizerWants:
                out += "<s>";
                break;
            case Segment::Kind::kEos:
                out += "</s>";
                break;
        }
    }
    return out;
}

}  // namespace uniattn::server
