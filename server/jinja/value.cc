// Values with Python's semantics: equality, truthiness, str()/repr(), json.dumps, and the text helpers
// (UTF-8, whitespace, case mapping) that Python's str methods need.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "server/jinja/internal.h"

namespace uniattn::jinja {

using internal::Fail;

std::string Error::ToString() const {
    if (line <= 0) return message;
    return "line " + std::to_string(line) + ", column " + std::to_string(column) + ": " + message;
}

Value Value::Undefined(std::string hint) {
    Value v;
    v.s_ = std::move(hint);
    return v;
}

Value Value::None() {
    Value v;
    v.kind_ = Kind::kNone;
    return v;
}

Value::Value(bool b) : kind_(Kind::kBool), b_(b) {}
Value::Value(int i) : kind_(Kind::kInt), i_(i) {}
Value::Value(int64_t i) : kind_(Kind::kInt), i_(i) {}
Value::Value(double d) : kind_(Kind::kFloat), f_(d) {}
Value::Value(std::string s) : kind_(Kind::kString), s_(std::move(s)) {}
Value::Value(const char* s) : kind_(Kind::kString), s_(s) {}

Value Value::Markup(std::string s) {
    Value v(std::move(s));
    v.markup_ = true;
    return v;
}

Value Value::MakeList(std::vector<Value> items, bool tuple) {
    Value v;
    v.kind_ = Kind::kList;
    v.list_ = std::make_shared<List>();
    int depth = 0;
    for (const Value& item : items) depth = std::max(depth, item.depth());
    v.list_->items = std::move(items);
    v.list_->tuple = tuple;
    v.list_->depth = depth + 1;
    return v;
}

Value Value::MakeDict(Dict dict) {
    Value v;
    v.kind_ = Kind::kDict;
    v.dict_ = std::make_shared<Dict>(std::move(dict));
    return v;
}

Value Value::MakeObject(std::shared_ptr<Object> object) {
    Value v;
    v.kind_ = Kind::kObject;
    v.object_ = std::move(object);
    return v;
}

Value Value::MakeCallable(std::shared_ptr<Callable> callable) {
    Value v;
    v.kind_ = Kind::kCallable;
    v.callable_ = std::move(callable);
    return v;
}

int Value::depth() const {
    if (kind_ == Kind::kList) return list_->depth;
    if (kind_ == Kind::kDict) return dict_->depth();
    return 0;
}

Value Value::FromJson(const nlohmann::ordered_json& json) {
    switch (json.type()) {
        case nlohmann::ordered_json::value_t::null:
            return None();
        case nlohmann::ordered_json::value_t::boolean:
            return Value(json.get<bool>());
        case nlohmann::ordered_json::value_t::number_integer:
            return Value(json.get<int64_t>());
        case nlohmann::ordered_json::value_t::number_unsigned: {
            const uint64_t u = json.get<uint64_t>();
            if (u > static_cast<uint64_t>(INT64_MAX)) return Value(static_cast<double>(u));
            return Value(static_cast<int64_t>(u));
        }
        case nlohmann::ordered_json::value_t::number_float:
            return Value(json.get<double>());
        case nlohmann::ordered_json::value_t::string:
            return Value(json.get<std::string>());
        case nlohmann::ordered_json::value_t::array: {
            std::vector<Value> items;
            items.reserve(json.size());
            for (const auto& item : json) items.push_back(FromJson(item));
            return MakeList(std::move(items));
        }
        case nlohmann::ordered_json::value_t::object: {
            Dict d;
            for (const auto& [key, item] : json.items()) d.Set(Value(key), FromJson(item));
            return MakeDict(std::move(d));
        }
        case nlohmann::ordered_json::value_t::binary:
        case nlohmann::ordered_json::value_t::discarded:
            return Undefined();
    }
    return Undefined();
}

const Value* Dict::Find(const Value& key) const {
    for (const auto& [k, v] : entries_) {
        if (internal::PyEquals(k, key)) return &v;
    }
    return nullptr;
}

const Value* Dict::Find(std::string_view key) const {
    for (const auto& [k, v] : entries_) {
        if (k.is_string() && k.str() == key) return &v;
    }
    return nullptr;
}

void Dict::Set(Value key, Value value) {
    for (auto& [k, v] : entries_) {
        if (internal::PyEquals(k, key)) {
            v = std::move(value);
            return;
        }
    }
    entries_.emplace_back(std::move(key), std::move(value));
}

int Dict::depth() const {
    int d = 0;
    for (const auto& [k, v] : entries_) d = std::max({d, k.depth(), v.depth()});
    return d + 1;
}

namespace internal {

void Fail(Error::Kind kind, std::string message, int line, int column) {
    throw JinjaException{Error{kind, std::move(message), line, column}};
}

// ---- UTF-8 ----

char32_t NextCodePoint(std::string_view s, size_t* i) {
    const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = byte(*i);
    if (c < 0x80) {
        ++*i;
        return c;
    }
    int n = 0;
    char32_t cp = 0;
    if ((c & 0xE0) == 0xC0) {
        n = 1;
        cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        n = 2;
        cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        n = 3;
        cp = c & 0x07;
    } else {
        ++*i;
        return 0xDC00 + c;
    }
    if (*i + n >= s.size()) {
        ++*i;
        return 0xDC00 + c;
    }
    for (int k = 1; k <= n; ++k) {
        const unsigned char cc = byte(*i + k);
        if ((cc & 0xC0) != 0x80) {
            ++*i;
            return 0xDC00 + c;
        }
        cp = (cp << 6) | (cc & 0x3F);
    }
    *i += n + 1;
    return cp;
}

void AppendUtf8(char32_t cp, std::string* out) {
    if (cp >= 0xDC80 && cp <= 0xDCFF) {  // an undecodable byte, kept as it was
        out->push_back(static_cast<char>(cp - 0xDC00));
    } else if (cp < 0x80) {
        out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

std::u32string ToU32(std::string_view s) {
    std::u32string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size();) out.push_back(NextCodePoint(s, &i));
    return out;
}

std::string FromU32(std::u32string_view s) {
    std::string out;
    out.reserve(s.size());
    for (char32_t c : s) AppendUtf8(c, &out);
    return out;
}

bool IsAsciiOnly(std::string_view s) {
    for (char c : s) {
        if (static_cast<unsigned char>(c) >= 0x80) return false;
    }
    return true;
}

size_t CodePointLength(std::string_view s) {
    size_t n = 0;
    for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    return n;
}

bool IsPyWhitespace(char32_t c) {
    switch (c) {
        case ' ':
        case '\t':
        case '\n':
        case '\r':
        case 0x0B:
        case 0x0C:
        case 0x1C:
        case 0x1D:
        case 0x1E:
        case 0x1F:
        case 0x85:
        case 0xA0:
        case 0x1680:
        case 0x2028:
        case 0x2029:
        case 0x202F:
        case 0x205F:
        case 0x3000:
            return true;
        default:
            return c >= 0x2000 && c <= 0x200A;
    }
}

bool IsLineBoundary(char32_t c) {
    switch (c) {
        case '\n':
        case '\r':
        case 0x0B:
        case 0x0C:
        case 0x1C:
        case 0x1D:
        case 0x1E:
        case 0x85:
        case 0x2028:
        case 0x2029:
            return true;
        default:
            return false;
    }
}

// ---- case mapping ----
// Python uses the full Unicode tables. These cover ASCII, Latin-1, Latin Extended-A, Greek, Cyrillic and
// fullwidth Latin; code points of other cased scripts make the operation an error rather than wrong text.

namespace {

bool InRange(char32_t c, char32_t lo, char32_t hi) { return c >= lo && c <= hi; }

// Scripts with case that the tables below do not cover.
bool IsUnhandledCased(char32_t c) {
    return InRange(c, 0x180, 0x24F) || InRange(c, 0x250, 0x2AF) || InRange(c, 0x370, 0x385) || c == 0x387 ||
           InRange(c, 0x3CF, 0x3FF) || InRange(c, 0x460, 0x52F) || InRange(c, 0x531, 0x58F) ||
           InRange(c, 0x10A0, 0x10FF) || InRange(c, 0x13A0, 0x13FF) || InRange(c, 0x1C80, 0x1CBF) ||
           InRange(c, 0x1D00, 0x1DBF) || InRange(c, 0x1E00, 0x1FFF) || InRange(c, 0x2100, 0x214F) ||
           InRange(c, 0x2160, 0x218F) || InRange(c, 0x24B6, 0x24E9) || InRange(c, 0x2C00, 0x2D2F) ||
           InRange(c, 0xA640, 0xA7FF) || InRange(c, 0xAB30, 0xABBF) || InRange(c, 0xFB00, 0xFB17) ||
           InRange(c, 0x10400, 0x104FF) || InRange(c, 0x10C80, 0x10CFF) || InRange(c, 0x118A0, 0x118FF) ||
           InRange(c, 0x16E40, 0x16E9F) || InRange(c, 0x1E900, 0x1E94F) || InRange(c, 0x1D400, 0x1D7FF);
}

[[noreturn]] void CaseUnsupported(char32_t c) {
    char buf[16];
    std::snprintf(buf, sizeof(buf), "U+%04X", static_cast<unsigned>(c));
    RuntimeError(std::string("changing the case of ") + buf + " is not supported by this renderer");
}

bool IsUpperCp(char32_t c) {
    if (c < 0x80) return c >= 'A' && c <= 'Z';
    if (InRange(c, 0xC0, 0xDE) && c != 0xD7) return true;
    if (InRange(c, 0x100, 0x17F)) {
        if (c == 0x130) return true;
        if (c == 0x131 || c == 0x138 || c == 0x149 || c == 0x17F) return false;
        if (InRange(c, 0x139, 0x148) || InRange(c, 0x179, 0x17E)) return c % 2 == 1;
        if (c == 0x178) return true;
        return c % 2 == 0;
    }
    if (InRange(c, 0x386, 0x3AB)) return c != 0x387 && c != 0x3A2;
    if (InRange(c, 0x400, 0x42F)) return true;
    if (InRange(c, 0xFF21, 0xFF3A)) return true;
    return false;
}

bool IsLowerCp(char32_t c) {
    if (c < 0x80) return c >= 'a' && c <= 'z';
    if (c == 0xAA || c == 0xB5 || c == 0xBA) return true;
    if (InRange(c, 0xDF, 0xFF) && c != 0xF7) return true;
    if (InRange(c, 0x100, 0x17F)) return !IsUpperCp(c);
    if (InRange(c, 0x3AC, 0x3CE)) return true;
    if (c == 0x390) return true;
    if (InRange(c, 0x430, 0x45F)) return true;
    if (InRange(c, 0xFF41, 0xFF5A)) return true;
    return false;
}

bool IsCasedCp(char32_t c) { return IsUpperCp(c) || IsLowerCp(c); }

// Appends the uppercase of c (Python's full mapping: ß → SS).
void UpperCp(char32_t c, std::u32string* out) {
    if (c < 0x80) {
        out->push_back(c >= 'a' && c <= 'z' ? c - 32 : c);
        return;
    }
    if (IsUnhandledCased(c)) CaseUnsupported(c);
    if (c == 0xDF) {
        out->append(U"SS");
    } else if (c == 0xB5) {
        out->push_back(0x39C);
    } else if (c == 0xFF) {
        out->push_back(0x178);
    } else if (InRange(c, 0xE0, 0xFE) && c != 0xF7) {
        out->push_back(c - 32);
    } else if (InRange(c, 0x100, 0x17F)) {
        if (c == 0x131) {
            out->push_back('I');
        } else if (c == 0x149) {
            out->append(U"\u02BCN");
        } else if (c == 0x17F) {
            out->push_back('S');
        } else if (c == 0x138 || IsUpperCp(c)) {
            out->push_back(c);
        } else {
            out->push_back(c - 1);
        }
    } else if (InRange(c, 0x3B1, 0x3C9)) {
        out->push_back(c == 0x3C2 ? 0x3A3 : c - 32);
    } else if (c == 0x3AC) {
        out->push_back(0x386);
    } else if (InRange(c, 0x3AD, 0x3AF)) {
        out->push_back(c - 37);
    } else if (c == 0x3CA || c == 0x3CB) {
        out->push_back(c - 32);
    } else if (c == 0x3CC) {
        out->push_back(0x38C);
    } else if (c == 0x3CD || c == 0x3CE) {
        out->push_back(c - 63);
    } else if (c == 0x390) {
        out->append(U"\u0399\u0308\u0301");
    } else if (c == 0x3B0) {
        out->append(U"\u03A5\u0308\u0301");
    } else if (InRange(c, 0x430, 0x44F)) {
        out->push_back(c - 32);
    } else if (InRange(c, 0x450, 0x45F)) {
        out->push_back(c - 80);
    } else if (InRange(c, 0xFF41, 0xFF5A)) {
        out->push_back(c - 32);
    } else {
        out->push_back(c);
    }
}

// Appends the lowercase of s[i] (final sigma by Python's rule).
void LowerCp(const std::u32string& s, size_t i, std::u32string* out) {
    const char32_t c = s[i];
    if (c < 0x80) {
        out->push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
        return;
    }
    if (IsUnhandledCased(c)) CaseUnsupported(c);
    if (InRange(c, 0xC0, 0xDE) && c != 0xD7) {
        out->push_back(c + 32);
    } else if (InRange(c, 0x100, 0x17F)) {
        if (c == 0x130) {
            out->append(U"i\u0307");
        } else if (c == 0x178) {
            out->push_back(0xFF);
        } else if (IsUpperCp(c)) {
            out->push_back(c + 1);
        } else {
            out->push_back(c);
        }
    } else if (c == 0x3A3) {
        // Final sigma: preceded by a cased letter and not followed by one.
        const bool before = i > 0 && IsCasedCp(s[i - 1]);
        const bool after = i + 1 < s.size() && IsCasedCp(s[i + 1]);
        out->push_back(before && !after ? 0x3C2 : 0x3C3);
    } else if (InRange(c, 0x391, 0x3AB)) {
        out->push_back(c + 32);
    } else if (c == 0x386) {
        out->push_back(0x3AC);
    } else if (InRange(c, 0x388, 0x38A)) {
        out->push_back(c + 37);
    } else if (c == 0x38C) {
        out->push_back(0x3CC);
    } else if (c == 0x38E || c == 0x38F) {
        out->push_back(c + 63);
    } else if (InRange(c, 0x410, 0x42F)) {
        out->push_back(c + 32);
    } else if (InRange(c, 0x400, 0x40F)) {
        out->push_back(c + 80);
    } else if (InRange(c, 0xFF21, 0xFF3A)) {
        out->push_back(c + 32);
    } else {
        out->push_back(c);
    }
}

}  // namespace

std::string PyUpper(std::string_view s) {
    if (IsAsciiOnly(s)) {
        std::string out(s);
        for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        return out;
    }
    const std::u32string u = ToU32(s);
    std::u32string out;
    for (char32_t c : u) UpperCp(c, &out);
    return FromU32(out);
}

std::string PyLower(std::string_view s) {
    if (IsAsciiOnly(s)) {
        std::string out(s);
        for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        return out;
    }
    const std::u32string u = ToU32(s);
    std::u32string out;
    for (size_t i = 0; i < u.size(); ++i) LowerCp(u, i, &out);
    return FromU32(out);
}

std::string PyTitle(std::string_view s) {
    const std::u32string u = ToU32(s);
    std::u32string out;
    bool prev_cased = false;
    for (size_t i = 0; i < u.size(); ++i) {
        const char32_t c = u[i];
        if (c >= 0x80 && IsUnhandledCased(c)) CaseUnsupported(c);
        const bool cased = IsCasedCp(c);
        if (cased) {
            if (prev_cased) {
                LowerCp(u, i, &out);
            } else {
                UpperCp(c, &out);
            }
        } else {
            out.push_back(c);
        }
        prev_cased = cased;
    }
    return FromU32(out);
}

std::string PyCapitalize(std::string_view s) {
    const std::u32string u = ToU32(s);
    std::u32string out;
    for (size_t i = 0; i < u.size(); ++i) {
        if (i == 0) {
            UpperCp(u[0], &out);
        } else {
            LowerCp(u, i, &out);
        }
    }
    return FromU32(out);
}

// ---- repr ----

std::string FloatRepr(double d) {
    if (std::isnan(d)) return "nan";
    if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
    if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
    // The shortest digits that round-trip, then Python's layout: fixed for 1e-4 <= |d| < 1e16.
    char buf[64];
    auto res = std::to_chars(buf, buf + sizeof(buf), d, std::chars_format::scientific);
    std::string sci(buf, res.ptr);
    bool negative = false;
    if (sci[0] == '-') {
        negative = true;
        sci.erase(0, 1);
    }
    const size_t e_pos = sci.find('e');
    std::string digits = sci.substr(0, e_pos);
    digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
    const int exp = std::stoi(sci.substr(e_pos + 1));
    std::string out = negative ? "-" : "";
    if (exp >= -4 && exp < 16) {
        if (exp >= 0) {
            if (static_cast<int>(digits.size()) <= exp + 1) {
                out += digits + std::string(exp + 1 - digits.size(), '0') + ".0";
            } else {
                out += digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
            }
        } else {
            out += "0." + std::string(-exp - 1, '0') + digits;
        }
        return out;
    }
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char ebuf[16];
    std::snprintf(ebuf, sizeof(ebuf), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    return out + ebuf;
}

namespace {

bool IsPrintableCp(char32_t c) {
    if (c < 0x20 || c == 0x7F) return false;
    if (c < 0x7F) return true;
    if (c >= 0x80 && c <= 0xA0) return false;
    if (c == 0xAD) return false;
    if ((c >= 0x2000 && c <= 0x200F) || (c >= 0x2028 && c <= 0x202F) || (c >= 0x205F && c <= 0x206F)) return false;
    if (c == 0x3000 || c == 0xFEFF || c == 0x1680 || (c >= 0xFFF9 && c <= 0xFFFB)) return false;
    if ((c >= 0xD800 && c <= 0xF8FF) || c >= 0xF0000) return false;
    if (c == 0x61C || c == 0x180E || (c >= 0x600 && c <= 0x605) || c == 0x6DD || c == 0x70F) return false;
    if (c == 0xFFFE || c == 0xFFFF) return false;
    return true;
}

}  // namespace

std::string StrRepr(std::string_view s) {
    const bool has_single = s.find('\'') != std::string_view::npos;
    const bool has_double = s.find('"') != std::string_view::npos;
    const char quote = has_single && !has_double ? '"' : '\'';
    std::string out(1, quote);
    for (size_t i = 0; i < s.size();) {
        const char32_t c = NextCodePoint(s, &i);
        if (c == static_cast<char32_t>(quote) || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c == '\n') {
            out += "\\n";
        } else if (c == '\r') {
            out += "\\r";
        } else if (c == '\t') {
            out += "\\t";
        } else if (IsPrintableCp(c)) {
            AppendUtf8(c, &out);
        } else {
            char buf[16];
            if (c < 0x100) {
                std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned>(c));
            } else if (c < 0x10000) {
                std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(c));
            } else {
                std::snprintf(buf, sizeof(buf), "\\U%08x", static_cast<unsigned>(c));
            }
            out += buf;
        }
    }
    out += quote;
    return out;
}

std::string HtmlEscape(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (char c : s) {
        switch (c) {
            case '&':
                out += "&amp;";
                break;
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '"':
                out += "&#34;";
                break;
            case '\'':
                out += "&#39;";
                break;
            default:
                out += c;
        }
    }
    return out;
}

const char* TypeName(const Value& v) {
    switch (v.kind()) {
        case Value::Kind::kUndefined:
            return "Undefined";
        case Value::Kind::kNone:
            return "NoneType";
        case Value::Kind::kBool:
            return "bool";
        case Value::Kind::kInt:
            return "int";
        case Value::Kind::kFloat:
            return "float";
        case Value::Kind::kString:
            return "str";
        case Value::Kind::kList:
            return v.list().view ? v.list().view : v.list().tuple ? "tuple" : "list";
        case Value::Kind::kDict:
            return "dict";
        case Value::Kind::kObject:
            return "object";
        case Value::Kind::kCallable:
            return "function";
    }
    return "?";
}

bool Truthy(const Value& v) {
    switch (v.kind()) {
        case Value::Kind::kUndefined:
        case Value::Kind::kNone:
            return false;
        case Value::Kind::kBool:
            return v.bool_value();
        case Value::Kind::kInt:
            return v.int_value() != 0;
        case Value::Kind::kFloat:
            return v.number() != 0;
        case Value::Kind::kString:
            return !v.str().empty();
        case Value::Kind::kList:
            return !v.list().items.empty() || v.list().view == internal::kGenerator;
        case Value::Kind::kDict:
            return !v.dict().empty();
        case Value::Kind::kObject:
        case Value::Kind::kCallable:
            return true;
    }
    return false;
}

bool PyEquals(const Value& a, const Value& b) {
    if (a.is_number() && b.is_number()) {
        if (a.is_float() || b.is_float()) return a.number() == b.number();
        return a.int_value() == b.int_value();
    }
    if (a.kind() != b.kind()) return false;
    switch (a.kind()) {
        case Value::Kind::kUndefined:
        case Value::Kind::kNone:
            return true;
        case Value::Kind::kBool:
        case Value::Kind::kInt:
        case Value::Kind::kFloat:
            return false;  // handled above
        case Value::Kind::kString:
            return a.str() == b.str();
        case Value::Kind::kList: {
            if (a.list_ptr() == b.list_ptr()) return true;
            const List& x = a.list();
            const List& y = b.list();
            if (x.view || y.view) {
                if (x.view != y.view || std::strcmp(x.view, "dict_values") == 0) return false;
                // dict_keys and dict_items compare as sets.
                if (x.items.size() != y.items.size()) return false;
                for (const Value& item : x.items) {
                    if (std::none_of(y.items.begin(), y.items.end(), [&](const Value& o) { return PyEquals(item, o); }))
                        return false;
                }
                return true;
            }
            if (x.tuple != y.tuple || x.items.size() != y.items.size()) return false;
            for (size_t i = 0; i < x.items.size(); ++i) {
                if (!PyEquals(x.items[i], y.items[i])) return false;
            }
            return true;
        }
        case Value::Kind::kDict: {
            if (a.dict_ptr() == b.dict_ptr()) return true;
            if (a.dict().size() != b.dict().size()) return false;
            for (const auto& [k, v] : a.dict().entries()) {
                const Value* other = b.dict().Find(k);
                if (!other || !PyEquals(v, *other)) return false;
            }
            return true;
        }
        case Value::Kind::kObject:
            return a.object() == b.object();
        case Value::Kind::kCallable:
            return a.callable() == b.callable();
    }
    return false;
}

// ---- json.dumps ----

namespace {

void JsonString(std::string_view s, bool ensure_ascii, std::string* out) {
    out->push_back('"');
    for (size_t i = 0; i < s.size();) {
        const unsigned char byte = static_cast<unsigned char>(s[i]);
        if (byte < 0x80) {
            ++i;
            switch (byte) {
                case '"':
                    *out += "\\\"";
                    break;
                case '\\':
                    *out += "\\\\";
                    break;
                case '\n':
                    *out += "\\n";
                    break;
                case '\r':
                    *out += "\\r";
                    break;
                case '\t':
                    *out += "\\t";
                    break;
                case '\b':
                    *out += "\\b";
                    break;
                case '\f':
                    *out += "\\f";
                    break;
                default:
                    if (byte < 0x20) {
                        char buf[8];
                        std::snprintf(buf, sizeof(buf), "\\u%04x", byte);
                        *out += buf;
                    } else {
                        out->push_back(static_cast<char>(byte));
                    }
            }
            continue;
        }
        const size_t start = i;
        const char32_t cp = NextCodePoint(s, &i);
        if (!ensure_ascii) {
            out->append(s.substr(start, i - start));
            continue;
        }
        char buf[16];
        if (cp >= 0x10000 && !(cp >= 0xDC80 && cp <= 0xDCFF)) {
            const char32_t v = cp - 0x10000;
            std::snprintf(buf, sizeof(buf), "\\u%04x\\u%04x", static_cast<unsigned>(0xD800 + (v >> 10)),
                          static_cast<unsigned>(0xDC00 + (v & 0x3FF)));
        } else {
            std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned>(cp));
        }
        *out += buf;
    }
    out->push_back('"');
}

std::string JsonFloat(double d) {
    if (std::isnan(d)) return "NaN";
    if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
    return FloatRepr(d);
}

std::string JsonKey(const Value& k) {
    switch (k.kind()) {
        case Value::Kind::kString:
            return k.str();
        case Value::Kind::kBool:
            return k.bool_value() ? "true" : "false";
        case Value::Kind::kInt:
            return std::to_string(k.int_value());
        case Value::Kind::kFloat:
            return JsonFloat(k.number());
        case Value::Kind::kNone:
            return "null";
        default:
            RuntimeError(std::string("tojson: keys must be str, int, float, bool or None, not ") + TypeName(k));
    }
}

void Dump(const Value& v, const JsonDumpOptions& o, int level, std::string* out) {
    const auto newline = [&](int lvl) {
        out->push_back('\n');
        for (int i = 0; i < lvl; ++i) *out += o.indent;
    };
    switch (v.kind()) {
        case Value::Kind::kNone:
            *out += "null";
            return;
        case Value::Kind::kBool:
            *out += v.bool_value() ? "true" : "false";
            return;
        case Value::Kind::kInt:
            *out += std::to_string(v.int_value());
            return;
        case Value::Kind::kFloat:
            *out += JsonFloat(v.number());
            return;
        case Value::Kind::kString:
            JsonString(v.str(), o.ensure_ascii, out);
            return;
        case Value::Kind::kList: {
            if (v.list().view) {
                RuntimeError(std::string("tojson: Object of type ") + v.list().view + " is not JSON serializable");
            }
            const auto& items = v.list().items;
            if (items.empty()) {
                *out += "[]";
                return;
            }
            out->push_back('[');
            for (size_t i = 0; i < items.size(); ++i) {
                if (i > 0) *out += o.item_separator;
                if (o.has_indent) newline(level + 1);
                Dump(items[i], o, level + 1, out);
            }
            if (o.has_indent) newline(level);
            out->push_back(']');
            return;
        }
        case Value::Kind::kDict: {
            const auto& entries = v.dict().entries();
            if (entries.empty()) {
                *out += "{}";
                return;
            }
            std::vector<std::pair<std::string, const Value*>> items;
            items.reserve(entries.size());
            for (const auto& [k, item] : entries) {
                if (o.sort_keys && !k.is_string()) {
                    RuntimeError("tojson: sort_keys needs string keys");
                }
                items.emplace_back(JsonKey(k), &item);
            }
            if (o.sort_keys) {
                std::stable_sort(items.begin(), items.end(),
                                 [](const auto& x, const auto& y) { return ToU32(x.first) < ToU32(y.first); });
            }
            out->push_back('{');
            for (size_t i = 0; i < items.size(); ++i) {
                if (i > 0) *out += o.item_separator;
                if (o.has_indent) newline(level + 1);
                JsonString(items[i].first, o.ensure_ascii, out);
                *out += o.key_separator;
                Dump(*items[i].second, o, level + 1, out);
            }
            if (o.has_indent) newline(level);
            out->push_back('}');
            return;
        }
        case Value::Kind::kUndefined:
        case Value::Kind::kObject:
        case Value::Kind::kCallable:
            RuntimeError(std::string("tojson: Object of type ") + TypeName(v) + " is not JSON serializable");
    }
}

}  // namespace

std::string JsonDumps(const Value& v, const JsonDumpOptions& options) {
    std::string out;
    Dump(v, options, 0, &out);
    return out;
}

}  // namespace internal

// ---- str() and repr() ----

namespace {

void Repr(const Value& v, std::string* out);

void Str(const Value& v, std::string* out) {
    switch (v.kind()) {
        case Value::Kind::kUndefined:
            return;
        case Value::Kind::kString:
            *out += v.str();
            return;
        default:
            Repr(v, out);
    }
}

void Repr(const Value& v, std::string* out) {
    switch (v.kind()) {
        case Value::Kind::kUndefined:
            *out += "Undefined";
            return;
        case Value::Kind::kNone:
            *out += "None";
            return;
        case Value::Kind::kBool:
            *out += v.bool_value() ? "True" : "False";
            return;
        case Value::Kind::kInt:
            *out += std::to_string(v.int_value());
            return;
        case Value::Kind::kFloat:
            *out += internal::FloatRepr(v.number());
            return;
        case Value::Kind::kString:
            if (v.is_markup()) {
                *out += "Markup(" + internal::StrRepr(v.str()) + ")";
            } else {
                *out += internal::StrRepr(v.str());
            }
            return;
        case Value::Kind::kList: {
            const List& l = v.list();
            if (l.view == internal::kGenerator) {
                internal::RuntimeError("printing a generator is not supported by this renderer");
            }
            if (l.view) {
                *out += std::string(l.view) + "([";
                for (size_t i = 0; i < l.items.size(); ++i) {
                    if (i > 0) *out += ", ";
                    Repr(l.items[i], out);
                }
                *out += "])";
                return;
            }
            *out += l.tuple ? "(" : "[";
            for (size_t i = 0; i < l.items.size(); ++i) {
                if (i > 0) *out += ", ";
                Repr(l.items[i], out);
            }
            if (l.tuple && l.items.size() == 1) *out += ",";
            *out += l.tuple ? ")" : "]";
            return;
        }
        case Value::Kind::kDict: {
            *out += "{";
            bool first = true;
            for (const auto& [k, item] : v.dict().entries()) {
                if (!first) *out += ", ";
                first = false;
                Repr(k, out);
                *out += ": ";
                Repr(item, out);
            }
            *out += "}";
            return;
        }
        case Value::Kind::kObject:
            if (v.object()->type == Object::Type::kNamespace) {
                *out += "<Namespace ";
                Repr(Value::MakeDict(v.object()->attrs), out);
                *out += ">";
                return;
            }
            internal::RuntimeError("printing a loop or cycler object is not supported by this renderer");
        case Value::Kind::kCallable:
            internal::RuntimeError("printing a function is not supported by this renderer");
    }
}

}  // namespace

std::string ToPyStr(const Value& v) {
    std::string out;
    Str(v, &out);
    return out;
}

std::string ToPyRepr(const Value& v) {
    std::string out;
    Repr(v, &out);
    return out;
}

}  // namespace uniattn::jinja
