#include "server/chat_template.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

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

ChatTemplate DetectChatTemplate(std::string_view jinja) {
    auto has = [&](std::string_view marker) { return jinja.find(marker) != std::string_view::npos; };
    if (has("<|start_header_id|>")) return ChatTemplate::kLlama3;
    if (has("<|im_start|>")) return ChatTemplate::kChatml;
    if (has("[INST]")) return has("<<SYS>>") ? ChatTemplate::kLlama2 : ChatTemplate::kMistral;
    return ChatTemplate::kNone;
}

ChatTemplate DetectChatTemplateInDir(const std::string& model_dir, std::string* detail) {
    const std::string path = model_dir + "/tokenizer_config.json";
    std::ifstream in(path);
    if (!in) {
        if (detail) *detail = path + " not found";
        return ChatTemplate::kNone;
    }
    std::stringstream ss;
    ss << in.rdbuf();
    nlohmann::json cfg;
    if (ParseJsonBounded(ss.str(), kMaxJsonFileDepth, cfg) || !cfg.is_object()) {
        if (detail) *detail = path + " is not a JSON object";
        return ChatTemplate::kNone;
    }
    auto it = cfg.find("chat_template");
    if (it == cfg.end() || it->is_null()) {
        if (detail) *detail = path + " has no chat_template";
        return ChatTemplate::kNone;
    }
    std::string jinja;
    if (it->is_string()) {
        jinja = it->get<std::string>();
    } else if (it->is_array()) {
        // [{"name": "default", "template": "..."}, ...]
        for (const auto& entry : *it) {
            if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
                entry["template"].is_string()) {
                jinja = entry["template"].get<std::string>();
            }
        }
    }
    const ChatTemplate t = DetectChatTemplate(jinja);
    if (detail) {
        *detail = t == ChatTemplate::kNone ? path + "'s chat_template is not one of the built-in templates"
                                           : "recognised " + std::string(ChatTemplateName(t)) + " in " + path;
    }
    return t;
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
