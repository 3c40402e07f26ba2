// The lexer: Jinja2's rules with trim_blocks=True and lstrip_blocks=True. Newlines are normalized to \n and
// one trailing newline is dropped (keep_trailing_newline=False); `{%-`/`-%}` strip all whitespace on that
// side; `{%+`/`+%}` keep it; a block or comment tag alone on its line loses the indentation before it
// (lstrip_blocks) and the newline after it (trim_blocks). Inside brackets the end of a tag is not
// recognised (so `{{ {'a': {'b': 1}} }}` works), like Jinja's balancing stack.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "server/jinja/internal.h"

namespace uniattn::jinja::internal {
namespace {

class Lexer {
  public:
    explicit Lexer(std::string_view raw) {
        // \r\n and \r become \n; one trailing newline is dropped.
        src_.reserve(raw.size());
        for (size_t i = 0; i < raw.size(); ++i) {
            if (raw[i] == '\r') {
                src_.push_back('\n');
                if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
            } else {
                src_.push_back(raw[i]);
            }
        }
        if (!src_.empty() && src_.back() == '\n') src_.pop_back();
        line_starts_.push_back(0);
        for (size_t i = 0; i < src_.size(); ++i) {
            if (src_[i] == '\n') line_starts_.push_back(i + 1);
        }
    }

    std::vector<Token> Run() {
        size_t pos = 0;
        bool line_starting = true;
        while (pos < src_.size()) {
            const size_t tag = FindTagStart(pos);
            if (tag == std::string::npos) {
                Emit(Tok::kData, pos, src_.substr(pos));
                break;
            }
            const char kind = src_[tag + 1];  // '{', '%' or '#'
            size_t after = tag + 2;
            char sign = 0;
            if (after < src_.size() && (src_[after] == '-' || src_[after] == '+')) sign = src_[after++];
            std::string text = src_.substr(pos, tag - pos);
            const size_t raw_end = kind == '%' ? MatchRawBegin(after) : std::string::npos;
            ApplyLeftStrip(&text, sign, /*is_variable=*/kind == '{', line_starting);
            if (!text.empty()) Emit(Tok::kData, pos, std::move(text));
            if (raw_end != std::string::npos) {
                pos = LexRaw(raw_end);
            } else if (kind == '#') {
                pos = LexComment(tag, after);
            } else {
                pos = LexTag(tag, after, kind == '%');
            }
            line_starting = pos > 0 && src_[pos - 1] == '\n';
        }
        Token eof;
        eof.type = Tok::kEof;
        SetPosition(&eof, src_.size());
        tokens_.push_back(eof);
        return std::move(tokens_);
    }

  private:
    [[noreturn]] void SyntaxError(size_t pos, const std::string& message) {
        Token t;
        SetPosition(&t, pos);
        Fail(Error::Kind::kSyntax, message, t.line, t.column);
    }

    void SetPosition(Token* t, size_t pos) const {
        const auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), pos);
        const size_t line_idx = static_cast<size_t>(it - line_starts_.begin()) - 1;
        t->line = static_cast<int>(line_idx) + 1;
        t->column = static_cast<int>(pos - line_starts_[line_idx]) + 1;
    }

    void Emit(Tok type, size_t pos, std::string text) {
        Token t;
        t.type = type;
        t.text = std::move(text);
        SetPosition(&t, pos);
        tokens_.push_back(std::move(t));
    }

    size_t FindTagStart(size_t pos) const {
        for (size_t i = src_.find('{', pos); i != std::string::npos; i = src_.find('{', i + 1)) {
            if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
        }
        return std::string::npos;
    }

    // The length of the Python-whitespace run (\s) at pos.
    size_t WhitespaceRun(size_t pos) const {
        size_t i = pos;
        while (i < src_.size()) {
            size_t j = i;
            if (!IsPyWhitespace(NextCodePoint(src_, &j))) break;
            i = j;
        }
        return i - pos;
    }

    static std::string RStripPy(const std::string& s) {
        const std::u32string u = ToU32(s);
        size_t end = u.size();
        while (end > 0 && IsPyWhitespace(u[end - 1])) --end;
        return FromU32(std::u32string_view(u).substr(0, end));
    }

    static bool AllPyWhitespace(std::string_view s) {
        if (s.empty()) return false;
        for (size_t i = 0; i < s.size();) {
            if (!IsPyWhitespace(NextCodePoint(s, &i))) return false;
        }
        return true;
    }

    static void ApplyLeftStrip(std::string* text, char sign, bool is_variable, bool line_starting) {
        if (sign == '-') {
            *text = RStripPy(*text);
        } else if (sign != '+' && !is_variable) {
            const size_t nl = text->rfind('\n');
            const size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
            if ((l_pos > 0 || line_starting) && AllPyWhitespace(std::string_view(*text).substr(l_pos))) {
                text->resize(l_pos);
            }
        }
    }

    // `{%[-+]? raw (-%}\s*|%})`: returns the position after it, or npos.
    size_t MatchRawBegin(size_t after_sign) const {
        size_t i = after_sign + WhitespaceRun(after_sign);
        if (src_.compare(i, 3, "raw") != 0) return std::string::npos;
        i += 3;
        i += WhitespaceRun(i);
        if (src_.compare(i, 3, "-%}") == 0) return i + 3 + WhitespaceRun(i + 3);
        if (src_.compare(i, 2, "%}") == 0) return i + 2;
        return std::string::npos;
    }

    size_t LexRaw(size_t start) {
        const bool line_starting = start > 0 && src_[start - 1] == '\n';
        for (size_t p = src_.find("{%", start); p != std::string::npos; p = src_.find("{%", p + 1)) {
            size_t i = p + 2;
            char sign = 0;
            if (i < src_.size() && (src_[i] == '-' || src_[i] == '+')) sign = src_[i++];
            i += WhitespaceRun(i);
            if (src_.compare(i, 6, "endraw") != 0) continue;
            i += 6;
            i += WhitespaceRun(i);
            size_t end = std::string::npos;
            if (src_.compare(i, 3, "+%}") == 0) {
                end = i + 3;
            } else if (src_.compare(i, 3, "-%}") == 0) {
                end = i + 3 + WhitespaceRun(i + 3);
            } else if (src_.compare(i, 2, "%}") == 0) {
                end = i + 2;
                if (end < src_.size() && src_[end] == '\n') ++end;
            }
            if (end == std::string::npos) continue;
            std::string text = src_.substr(start, p - start);
            ApplyLeftStrip(&text, sign, false, line_starting);
            if (!text.empty()) Emit(Tok::kData, start, std::move(text));
            return end;
        }
        SyntaxError(start, "missing end of raw directive");
    }

    size_t LexComment(size_t tag, size_t after) {
        for (size_t p = after; p < src_.size(); ++p) {
            if (src_.compare(p, 3, "+#}") == 0) return p + 3;
            if (src_.compare(p, 3, "-#}") == 0) return p + 3 + WhitespaceRun(p + 3);
            if (src_.compare(p, 2, "#}") == 0) {
                size_t end = p + 2;
                if (end < src_.size() && src_[end] == '\n') ++end;
                return end;
            }
        }
        SyntaxError(tag, "missing end of comment tag");
    }

    size_t LexTag(size_t tag, size_t after, bool block) {
        Emit(block ? Tok::kBlockBegin : Tok::kVariableBegin, tag, {});
        std::vector<char> balancing;
        size_t pos = after;
        while (true) {
            if (pos >= src_.size()) {
                SyntaxError(tag, block ? "unexpected end of template: the block tag is not closed with '%}'"
                                       : "unexpected end of template: the expression is not closed with '}}'");
            }
            if (balancing.empty()) {
                const size_t end = MatchTagEnd(pos, block);
                if (end != std::string::npos) {
                    Emit(block ? Tok::kBlockEnd : Tok::kVariableEnd, pos, {});
                    return end;
                }
            }
            if (const size_t ws = WhitespaceRun(pos); ws > 0) {
                pos += ws;
                continue;
            }
            if (size_t n = MatchFloat(pos); n > 0) {
                Token t;
                t.type = Tok::kFloat;
                std::string digits;
                for (size_t k = pos; k < pos + n; ++k) {
                    if (src_[k] != '_') digits.push_back(src_[k]);
                }
                t.float_value = std::strtod(digits.c_str(), nullptr);
                SetPosition(&t, pos);
                tokens_.push_back(std::move(t));
                pos += n;
                continue;
            }
            if (size_t n = MatchInteger(pos); n > 0) {
                Token t;
                t.type = Tok::kInteger;
                t.int_value = ParseInteger(pos, n);
                SetPosition(&t, pos);
                tokens_.push_back(std::move(t));
                pos += n;
                continue;
            }
            if (size_t n = MatchName(pos); n > 0) {
                Emit(Tok::kName, pos, src_.substr(pos, n));
                pos += n;
                continue;
            }
            const char c = src_[pos];
            if (c == '\'' || c == '"') {
                pos = LexString(pos);
                continue;
            }
            static constexpr std::string_view kTwo[] = {"//", "**", "==", "!=", ">=", "<="};
            std::string op;
            for (std::string_view two : kTwo) {
                if (src_.compare(pos, 2, two) == 0) op = std::string(two);
            }
            if (op.empty() && std::string_view("+-/*%~[](){}<>=.:|,;").find(c) != std::string_view::npos) {
                op = std::string(1, c);
            }
            if (op.empty()) SyntaxError(pos, std::string("unexpected character '") + c + "'");
            if (op == "(" || op == "[" || op == "{") {
                balancing.push_back(op == "(" ? ')' : op == "[" ? ']' : '}');
            } else if (op == ")" || op == "]" || op == "}") {
                if (balancing.empty()) SyntaxError(pos, "unexpected '" + op + "'");
                if (balancing.back() != op[0]) {
                    SyntaxError(pos, "unexpected '" + op + "', expected '" + std::string(1, balancing.back()) + "'");
                }
                balancing.pop_back();
            }
            Emit(Tok::kOperator, pos, op);
            pos += op.size();
        }
    }

    size_t MatchTagEnd(size_t pos, bool block) const {
        if (block) {
            if (src_.compare(pos, 3, "+%}") == 0) return pos + 3;
            if (src_.compare(pos, 3, "-%}") == 0) return pos + 3 + WhitespaceRun(pos + 3);
            if (src_.compare(pos, 2, "%}") == 0) {
                const size_t end = pos + 2;
                return end < src_.size() && src_[end] == '\n' ? end + 1 : end;
            }
            return std::string::npos;
        }
        if (src_.compare(pos, 3, "-}}") == 0) return pos + 3 + WhitespaceRun(pos + 3);
        if (src_.compare(pos, 2, "}}") == 0) return pos + 2;
        return std::string::npos;
    }

    bool IsDigit(size_t p) const { return p < src_.size() && src_[p] >= '0' && src_[p] <= '9'; }

    // (\d+_)*\d+ : returns the length matched at p (0: none).
    size_t DigitGroups(size_t p) const {
        if (!IsDigit(p)) return 0;
        size_t i = p;
        while (true) {
            while (IsDigit(i)) ++i;
            if (i < src_.size() && src_[i] == '_' && IsDigit(i + 1)) {
                ++i;
                continue;
            }
            return i - p;
        }
    }

    size_t MatchFloat(size_t p) const {
        if (p > 0 && src_[p - 1] == '.') return 0;
        const size_t int_len = DigitGroups(p);
        if (int_len == 0) return 0;
        size_t i = p + int_len;
        size_t frac_end = 0;
        if (i < src_.size() && src_[i] == '.') {
            if (size_t f = DigitGroups(i + 1); f > 0) frac_end = i + 1 + f;
        }
        // Exponent, after the fraction or right after the integer part.
        const size_t e = frac_end ? frac_end : i;
        if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
            size_t k = e + 1;
            if (k < src_.size() && (src_[k] == '+' || src_[k] == '-')) ++k;
            if (size_t x = DigitGroups(k); x > 0) return k + x - p;
        }
        return frac_end ? frac_end - p : 0;
    }

    size_t MatchInteger(size_t p) const {
        if (!IsDigit(p)) return 0;
        auto lower = [&](size_t k) {
            return k < src_.size() ? static_cast<char>(std::tolower(static_cast<unsigned char>(src_[k]))) : '\0';
        };
        if (src_[p] == '0') {
            const char x = lower(p + 1);
            auto prefixed = [&](auto is_digit) -> size_t {
                size_t i = p + 2;
                size_t n = 0;
                while (true) {
                    size_t k = i;
                    if (k < src_.size() && src_[k] == '_') ++k;
                    if (k < src_.size() && is_digit(lower(k))) {
                        i = k + 1;
                        ++n;
                    } else {
                        break;
                    }
                }
                return n > 0 ? i - p : 0;
            };
            if (x == 'b') {
                if (size_t n = prefixed([](char c) { return c == '0' || c == '1'; })) return n;
            } else if (x == 'o') {
                if (size_t n = prefixed([](char c) { return c >= '0' && c <= '7'; })) return n;
            } else if (x == 'x') {
                if (size_t n = prefixed([](char c) { return std::isxdigit(static_cast<unsigned char>(c)) != 0; })) {
                    return n;
                }
            }
            // 0(_?0)*
            size_t i = p + 1;
            while (true) {
                size_t k = i;
                if (k < src_.size() && src_[k] == '_') ++k;
                if (k < src_.size() && src_[k] == '0') {
                    i = k + 1;
                } else {
                    break;
                }
            }
            return i - p;
        }
        size_t i = p + 1;
        while (true) {
            size_t k = i;
            if (k < src_.size() && src_[k] == '_') ++k;
            if (IsDigit(k)) {
                i = k + 1;
            } else {
                break;
            }
        }
        return i - p;
    }

    int64_t ParseInteger(size_t p, size_t n) {
        std::string digits;
        for (size_t k = p; k < p + n; ++k) {
            if (src_[k] != '_') digits.push_back(src_[k]);
        }
        int base = 10;
        size_t start = 0;
        if (digits.size() > 1 && digits[0] == '0') {
            const char x = static_cast<char>(std::tolower(static_cast<unsigned char>(digits[1])));
            if (x == 'b' || x == 'o' || x == 'x') {
                base = x == 'b' ? 2 : x == 'o' ? 8 : 16;
                start = 2;
            }
        }
        errno = 0;
        char* end = nullptr;
        const unsigned long long v = std::strtoull(digits.c_str() + start, &end, base);
        if (errno == ERANGE || v > static_cast<unsigned long long>(INT64_MAX)) {
            SyntaxError(p, "integer literal too large");
        }
        return static_cast<int64_t>(v);
    }

    size_t MatchName(size_t p) const {
        auto is_start = [](unsigned char c) { return std::isalpha(c) || c == '_' || c >= 0x80; };
        auto is_cont = [](unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; };
        if (!is_start(static_cast<unsigned char>(src_[p]))) return 0;
        size_t i = p;
        while (i < src_.size()) {
            const unsigned char c = static_cast<unsigned char>(src_[i]);
            if (!is_cont(c)) break;
            if (c >= 0x80) {
                size_t j = i;
                if (IsPyWhitespace(NextCodePoint(src_, &j))) break;
                i = j;
            } else {
                ++i;
            }
        }
        return i - p;
    }

    static int HexValue(char c) {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    }

    // A string literal with Python's escapes (Jinja decodes them with 'unicode-escape').
    size_t LexString(size_t start) {
        const char quote = src_[start];
        size_t close = std::string::npos;
        for (size_t i = start + 1; i < src_.size(); ++i) {
            if (src_[i] == '\\') {
                ++i;
            } else if (src_[i] == quote) {
                close = i;
                break;
            }
        }
        if (close == std::string::npos) SyntaxError(start, std::string("unexpected character '") + quote + "'");
        const std::string_view body = std::string_view(src_).substr(start + 1, close - start - 1);
        std::string out;
        for (size_t i = 0; i < body.size();) {
            if (body[i] != '\\') {
                out.push_back(body[i++]);
                continue;
            }
            const size_t esc = i;
            ++i;  // the regex guarantees a character follows
            const char c = body[i];
            auto hex = [&](int n) -> char32_t {
                if (i + n >= body.size()) {
                    SyntaxError(start + 1 + esc, "truncated escape sequence in string literal");
                }
                char32_t v = 0;
                for (int k = 1; k <= n; ++k) {
                    const int h = HexValue(body[i + k]);
                    if (h < 0) SyntaxError(start + 1 + esc, "truncated escape sequence in string literal");
                    v = v * 16 + static_cast<char32_t>(h);
                }
                i += n + 1;
                return v;
            };
            switch (c) {
                case '\n':
                    ++i;
                    break;
                case '\\':
                case '\'':
                case '"':
                    out.push_back(c);
                    ++i;
                    break;
                case 'a':
                    out.push_back('\a');
                    ++i;
                    break;
                case 'b':
                    out.push_back('\b');
                    ++i;
                    break;
                case 'f':
                    out.push_back('\f');
                    ++i;
                    break;
                case 'n':
                    out.push_back('\n');
                    ++i;
                    break;
                case 'r':
                    out.push_back('\r');
                    ++i;
                    break;
                case 't':
                    out.push_back('\t');
                    ++i;
                    break;
                case 'v':
                    out.push_back('\v');
                    ++i;
                    break;
                case 'x':
                    AppendUtf8(hex(2), &out);
                    break;
                case 'u':
                    AppendUtf8(hex(4), &out);
                    break;
                case 'U': {
                    const char32_t v = hex(8);
                    if (v > 0x10FFFF) SyntaxError(start + 1 + esc, "illegal Unicode character in string literal");
                    AppendUtf8(v, &out);
                    break;
                }
                case 'N':
                    SyntaxError(start + 1 + esc, "\\N{...} escapes are not supported by this renderer");
                default:
                    if (c >= '0' && c <= '7') {
                        char32_t v = 0;
                        int n = 0;
                        while (n < 3 && i < body.size() && body[i] >= '0' && body[i] <= '7') {
                            v = v * 8 + static_cast<char32_t>(body[i] - '0');
                            ++i;
                            ++n;
                        }
                        AppendUtf8(v, &out);
                    } else if (static_cast<unsigned char>(c) >= 0x80) {
                        // Jinja first escapes non-ASCII text (backslashreplace), so "\é" decodes to "\xe9".
                        const char32_t cp = NextCodePoint(body, &i);
                        char buf[16];
                        if (cp < 0x100) {
                            std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned>(cp));
                        } else if (cp < 0x10000) {
                            std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(cp));
                        } else {
                            std::snprintf(buf, sizeof(buf), "\\U%08x", static_cast<unsigned>(cp));
                        }
                        out += buf;
                    } else {
                        out.push_back('\\');
                        out.push_back(c);
                        ++i;
                    }
            }
        }
        Emit(Tok::kString, start, std::move(out));
        return close + 1;
    }

    std::string src_;
    std::vector<size_t> line_starts_;
    std::vector<Token> tokens_;
};

}  // namespace

std::vector<Token> Tokenize(std::string_view source) { return Lexer(source).Run(); }

}  // namespace uniattn::jinja::internal
