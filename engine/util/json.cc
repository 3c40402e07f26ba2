#include "uniattn/json.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace uniattn {

Json Json::Bool(bool b) {
    Json j;
    j.type_ = Type::kBool;
    j.bool_ = b;
    return j;
}

Json Json::Number(double d) {
    Json j;
    j.type_ = Type::kNumber;
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.17g", d);
    j.number_text_ = buf;
    return j;
}

Json Json::Int(int64_t i) {
    Json j;
    j.type_ = Type::kNumber;
    j.number_text_ = std::to_string(i);
    return j;
}

Json Json::String(std::string s) {
    Json j;
    j.type_ = Type::kString;
    j.string_ = std::move(s);
    return j;
}

Json Json::Array() {
    Json j;
    j.type_ = Type::kArray;
    return j;
}

Json Json::Object() {
    Json j;
    j.type_ = Type::kObject;
    return j;
}

double Json::number_value() const { return std::strtod(number_text_.c_str(), nullptr); }

bool Json::is_integer() const {
    if (type_ != Type::kNumber || number_text_.empty()) return false;
    for (char c : number_text_) {
        if (c == '.' || c == 'e' || c == 'E') return false;
    }
    errno = 0;
    char* end = nullptr;
    (void)std::strtoll(number_text_.c_str(), &end, 10);
    return errno == 0 && end != nullptr && *end == '\0';
}

int64_t Json::int_value() const { return std::strtoll(number_text_.c_str(), nullptr, 10); }

const Json* Json::Find(std::string_view key) const {
    if (type_ != Type::kObject) return nullptr;
    for (const auto& [k, v] : members_) {
        if (k == key) return &v;
    }
    return nullptr;
}

void Json::Set(std::string key, Json value) {
    for (auto& [k, v] : members_) {
        if (k == key) {
            v = std::move(value);
            return;
        }
    }
    members_.emplace_back(std::move(key), std::move(value));
}

namespace {

void DumpString(std::string& out, const std::string& s) {
    out.push_back('"');
    for (unsigned char c : s) {
        switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            case '\b':
                out += "\\b";
                break;
            case '\f':
                out += "\\f";
                break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof(buf), "\\u%04x", c);
                    out += buf;
                } else {
                    out.push_back(static_cast<char>(c));
                }
        }
    }
    out.push_back('"');
}

void Newline(std::string& out, int indent, int depth) {
    if (indent <= 0) return;
    out.push_back('\n');
    out.append(static_cast<size_t>(indent) * depth, ' ');
}

}  // namespace

void Json::DumpTo(std::string& out, int indent, int depth) const {
    switch (type_) {
        case Type::kNull:
            out += "null";
            break;
        case Type::kBool:
            out += bool_ ? "true" : "false";
            break;
        case Type::kNumber:
            out += number_text_;
            break;
        case Type::kString:
            DumpString(out, string_);
            break;
        case Type::kArray:
            out.push_back('[');
            for (size_t i = 0; i < array_.size(); ++i) {
                if (i) out.push_back(',');
                Newline(out, indent, depth + 1);
                array_[i].DumpTo(out, indent, depth + 1);
            }
            if (!array_.empty()) Newline(out, indent, depth);
            out.push_back(']');
            break;
        case Type::kObject:
            out.push_back('{');
            for (size_t i = 0; i < members_.size(); ++i) {
                if (i) out.push_back(',');
                Newline(out, indent, depth + 1);
                DumpString(out, members_[i].first);
                out += indent > 0 ? ": " : ":";
                members_[i].second.DumpTo(out, indent, depth + 1);
            }
            if (!members_.empty()) Newline(out, indent, depth);
            out.push_back('}');
            break;
    }
}

std::string Json::Dump() const {
    std::string out;
    DumpTo(out, 0, 0);
    return out;
}

std::string Json::DumpPretty(int indent) const {
    std::string out;
    DumpTo(out, indent, 0);
    return out;
}

class JsonParser {
  public:
    JsonParser(std::string_view text, std::string_view what) : text_(text), what_(what) {}

    StatusOr<Json> ParseDocument() {
        Json value;
        UA_RETURN_IF_ERROR(ParseValue(value, 0));
        SkipSpace();
        if (pos_ != text_.size()) return Error("unexpected trailing characters");
        return value;
    }

  private:
    static constexpr int kMaxDepth = 256;

    Status Error(const std::string& msg) const {
        return InvalidArgument(std::string(what_) + ": invalid JSON at byte " + std::to_string(pos_) + ": " + msg);
    }

    void SkipSpace() {
        while (pos_ < text_.size() &&
               (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r')) {
            ++pos_;
        }
    }

    bool Consume(std::string_view lit) {
        if (text_.substr(pos_, lit.size()) == lit) {
            pos_ += lit.size();
            return true;
        }
        return false;
    }

    Status ParseValue(Json& out, int depth) {
        if (depth > kMaxDepth) return Error("nesting too deep");
        SkipSpace();
        if (pos_ >= text_.size()) return Error("unexpected end of input");
        char c = text_[pos_];
        if (c == '{') return ParseObject(out, depth);
        if (c == '[') return ParseArray(out, depth);
        if (c == '"') {
            out.type_ = Json::Type::kString;
            return ParseString(out.string_);
        }
        if (Consume("true")) {
            out = Json::Bool(true);
            return Status::Ok();
        }
        if (Consume("false")) {
            out = Json::Bool(false);
            return Status::Ok();
        }
        if (Consume("null")) {
            out = Json();
            return Status::Ok();
        }
        if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber(out);
        return Error(std::string("unexpected character '") + c + "'");
    }

    Status ParseNumber(Json& out) {
        size_t start = pos_;
        auto digits = [&] {
            size_t s = pos_;
            while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
            return pos_ > s;
        };
        if (text_[pos_] == '-') ++pos_;
        if (!digits()) return Error("bad number");
        if (pos_ < text_.size() && text_[pos_] == '.') {
            ++pos_;
            if (!digits()) return Error("bad number fraction");
        }
        if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
            ++pos_;
            if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
            if (!digits()) return Error("bad number exponent");
        }
        out.type_ = Json::Type::kNumber;
        out.number_text_ = std::string(text_.substr(start, pos_ - start));
        return Status::Ok();
    }

    static void AppendUtf8(std::string& s, uint32_t cp) {
        if (cp < 0x80) {
            s.push_back(static_cast<char>(cp));
        } else if (cp < 0x800) {
            s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
            s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else if (cp < 0x10000) {
            s.push_back(static_cast<char>(0xE0 | (cp >> 12)));
            s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        } else {
            s.push_back(static_cast<char>(0xF0 | (cp >> 18)));
            s.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
            s.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
            s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
        }
    }

    Status ParseHex4(uint32_t& cp) {
        if (pos_ + 4 > text_.size()) return Error("truncated \\u escape");
        cp = 0;
        for (int i = 0; i < 4; ++i) {
            char h = text_[pos_++];
            cp <<= 4;
            if (h >= '0' && h <= '9') {
                cp |= static_cast<uint32_t>(h - '0');
            } else if (h >= 'a' && h <= 'f') {
                cp |= static_cast<uint32_t>(h - 'a' + 10);
            } else if (h >= 'A' && h <= 'F') {
                cp |= static_cast<uint32_t>(h - 'A' + 10);
            } else {
                return Error("bad hex digit in \\u escape");
            }
        }
        return Status::Ok();
    }

    Status ParseString(std::string& out) {
        ++pos_;  // opening quote
        out.clear();
        while (true) {
            if (pos_ >= text_.size()) return Error("unterminated string");
            char c = text_[pos_++];
            if (c == '"') return Status::Ok();
            if (static_cast<unsigned char>(c) < 0x20) return Error("control character in string");
            if (c != '\\') {
                out.push_back(c);
                continue;
            }
            if (pos_ >= text_.size()) return Error("unterminated escape");
            char e = text_[pos_++];
            switch (e) {
                case '"':
                case '\\':
                case '/':
                    out.push_back(e);
                    break;
                case 'b':
                    out.push_back('\b');
                    break;
                case 'f':
                    out.push_back('\f');
                    break;
                case 'n':
                    out.push_back('\n');
                    break;
                case 'r':
                    out.push_back('\r');
                    break;
                case 't':
                    out.push_back('\t');
                    break;
                case 'u': {
                    uint32_t cp = 0;
                    UA_RETURN_IF_ERROR(ParseHex4(cp));
                    if (cp >= 0xD800 && cp <= 0xDBFF) {
                        uint32_t lo = 0;
                        if (!Consume("\\u")) return Error("lone high surrogate");
                        UA_RETURN_IF_ERROR(ParseHex4(lo));
                        if (lo < 0xDC00 || lo > 0xDFFF) return Error("bad low surrogate");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                        return Error("lone low surrogate");
                    }
                    AppendUtf8(out, cp);
                    break;
                }
                default:
                    return Error("bad escape");
            }
        }
    }

    Status ParseArray(Json& out, int depth) {
        ++pos_;
        out = Json::Array();
        SkipSpace();
        if (pos_ < text_.size() && text_[pos_] == ']') {
            ++pos_;
            return Status::Ok();
        }
        while (true) {
            Json item;
            UA_RETURN_IF_ERROR(ParseValue(item, depth + 1));
            out.array_.push_back(std::move(item));
            SkipSpace();
            if (pos_ >= text_.size()) return Error("unterminated array");
            char c = text_[pos_++];
            if (c == ']') return Status::Ok();
            if (c != ',') return Error("expected ',' or ']'");
        }
    }

    Status ParseObject(Json& out, int depth) {
        ++pos_;
        out = Json::Object();
        SkipSpace();
        if (pos_ < text_.size() && text_[pos_] == '}') {
            ++pos_;
            return Status::Ok();
        }
        while (true) {
            SkipSpace();
            if (pos_ >= text_.size() || text_[pos_] != '"') return Error("expected a string key");
            std::string key;
            UA_RETURN_IF_ERROR(ParseString(key));
            SkipSpace();
            if (pos_ >= text_.size() || text_[pos_] != ':') return Error("expected ':'");
            ++pos_;
            Json value;
            UA_RETURN_IF_ERROR(ParseValue(value, depth + 1));
            out.members_.emplace_back(std::move(key), std::move(value));
            SkipSpace();
            if (pos_ >= text_.size()) return Error("unterminated object");
            char c = text_[pos_++];
            if (c == '}') return Status::Ok();
            if (c != ',') return Error("expected ',' or '}'");
        }
    }

    std::string_view text_;
    std::string_view what_;
    size_t pos_ = 0;
};

StatusOr<Json> ParseJson(std::string_view text, std::string_view what) {
    return JsonParser(text, what).ParseDocument();
}

}  // namespace uniattn
