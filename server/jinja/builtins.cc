// Jinja's builtin filters and tests, the globals chat templates use, and the methods of str, dict and list,
// with the argument names and defaults of Jinja 3.1 and Python 3. transformers' tojson replaces Jinja's.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <unordered_set>

#include "server/jinja/internal.h"

namespace uniattn::jinja::internal {
namespace {

// Binds positional and keyword arguments to named parameters; too many or unknown ones are errors.
class Args {
  public:
    Args(CallArgs& args, std::string what, std::initializer_list<const char*> names)
        : what_(std::move(what)), names_(names), values_(names.size()) {
        if (args.args.size() > names_.size()) {
            RuntimeError(what_ + "() takes at most " + std::to_string(names_.size()) + " argument(s), " +
                         std::to_string(args.args.size()) + " given");
        }
        for (size_t i = 0; i < args.args.size(); ++i) values_[i] = &args.args[i];
        for (auto& kw : args.kwargs) {
            const std::string& name = kw.first;
            const Value& value = kw.second;
            auto it = std::find_if(names_.begin(), names_.end(), [&](const char* n) { return name == n; });
            if (it == names_.end()) RuntimeError(what_ + "() got an unexpected keyword argument '" + name + "'");
            const size_t idx = static_cast<size_t>(it - names_.begin());
            if (values_[idx]) RuntimeError(what_ + "() got multiple values for argument '" + name + "'");
            values_[idx] = &value;
        }
    }
    // Given and not None.
    bool Has(size_t i) const { return values_[i] && !values_[i]->is_none(); }
    bool Given(size_t i) const { return values_[i] != nullptr; }
    const Value& Get(size_t i) const { return *values_[i]; }
    Value Or(size_t i, Value dflt) const { return values_[i] ? *values_[i] : std::move(dflt); }
    bool Bool(size_t i, bool dflt) const { return values_[i] ? Truthy(*values_[i]) : dflt; }
    int64_t Int(size_t i, int64_t dflt) const {
        if (!values_[i]) return dflt;
        if (!values_[i]->is_integral()) {
            RuntimeError(what_ + "(): '" + names_[i] + "' must be an integer, not " + TypeName(*values_[i]));
        }
        return values_[i]->int_value();
    }
    std::string Str(size_t i, const std::string& dflt) const {
        if (!values_[i]) return dflt;
        if (!values_[i]->is_string()) {
            RuntimeError(what_ + "(): '" + names_[i] + "' must be a string, not " + TypeName(*values_[i]));
        }
        return values_[i]->str();
    }

  private:
    std::string what_;
    std::vector<const char*> names_;
    std::vector<const Value*> values_;
};

std::string RequireString(const Value& v, const char* what) {
    if (!v.is_string()) RuntimeError(std::string(what) + " needs a string, not " + TypeName(v));
    return v.str();
}

Value StrLike(const Value& like, std::string s) {
    return like.is_markup() ? Value::Markup(std::move(s)) : Value(std::move(s));
}

int64_t PyLen(Interpreter& in, const Value& v) {
    switch (v.kind()) {
        case Value::Kind::kUndefined:
            return 0;
        case Value::Kind::kString:
            return static_cast<int64_t>(CodePointLength(v.str()));
        case Value::Kind::kList:
            if (v.list().view == kGenerator) RuntimeError("object of type 'generator' has no len()");
            return static_cast<int64_t>(v.list().items.size());
        case Value::Kind::kDict:
            return static_cast<int64_t>(v.dict().size());
        default:
            (void)in;
            RuntimeError(std::string("object of type '") + TypeName(v) + "' has no len()");
    }
}

// ---- strip / split helpers on code points ----

std::string Strip(const std::string& s, const Value* chars, bool left, bool right) {
    std::u32string set;
    const bool ws = !chars || chars->is_none() || chars->is_undefined();
    if (!ws) set = ToU32(RequireString(*chars, "strip"));
    auto strip_it = [&](char32_t c) { return ws ? IsPyWhitespace(c) : set.find(c) != std::u32string::npos; };
    if (IsAsciiOnly(s) && (ws || IsAsciiOnly(FromU32(set)))) {
        size_t b = 0, e = s.size();
        if (left) {
            while (b < e && strip_it(static_cast<unsigned char>(s[b]))) ++b;
        }
        if (right) {
            while (e > b && strip_it(static_cast<unsigned char>(s[e - 1]))) --e;
        }
        return s.substr(b, e - b);
    }
    const std::u32string u = ToU32(s);
    size_t b = 0, e = u.size();
    if (left) {
        while (b < e && strip_it(u[b])) ++b;
    }
    if (right) {
        while (e > b && strip_it(u[e - 1])) --e;
    }
    return FromU32(std::u32string_view(u).substr(b, e - b));
}

std::vector<std::string> SplitWhitespace(const std::string& s, int64_t maxsplit, bool from_right) {
    const std::u32string u = ToU32(s);
    std::vector<std::string> parts;
    if (!from_right) {
        size_t i = 0;
        while (true) {
            while (i < u.size() && IsPyWhitespace(u[i])) ++i;
            if (i >= u.size()) break;
            if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
                size_t e = u.size();
                while (e > i && IsPyWhitespace(u[e - 1])) --e;
                parts.push_back(FromU32(std::u32string_view(u).substr(i, e - i)));
                break;
            }
            size_t j = i;
            while (j < u.size() && !IsPyWhitespace(u[j])) ++j;
            parts.push_back(FromU32(std::u32string_view(u).substr(i, j - i)));
            i = j;
        }
        return parts;
    }
    size_t e = u.size();
    while (true) {
        while (e > 0 && IsPyWhitespace(u[e - 1])) --e;
        if (e == 0) break;
        if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
            size_t b = 0;
            while (b < e && IsPyWhitespace(u[b])) ++b;
            parts.push_back(FromU32(std::u32string_view(u).substr(b, e - b)));
            break;
        }
        size_t b = e;
        while (b > 0 && !IsPyWhitespace(u[b - 1])) --b;
        parts.push_back(FromU32(std::u32string_view(u).substr(b, e - b)));
        e = b;
    }
    std::reverse(parts.begin(), parts.end());
    return parts;
}

std::vector<std::string> SplitSep(const std::string& s, const std::string& sep, int64_t maxsplit, bool from_right) {
    if (sep.empty()) RuntimeError("empty separator");
    std::vector<std::string> parts;
    if (!from_right) {
        size_t start = 0;
        while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
            const size_t p = s.find(sep, start);
            if (p == std::string::npos) break;
            parts.push_back(s.substr(start, p - start));
            start = p + sep.size();
        }
        parts.push_back(s.substr(start));
        return parts;
    }
    size_t end = s.size();
    while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
        if (end < sep.size()) break;
        const size_t p = s.rfind(sep, end - sep.size());
        if (p == std::string::npos) break;
        parts.push_back(s.substr(p + sep.size(), end - p - sep.size()));
        end = p;
    }
    parts.push_back(s.substr(0, end));
    std::reverse(parts.begin(), parts.end());
    return parts;
}

std::vector<std::string> SplitLines(const std::string& s, bool keepends) {
    const std::u32string u = ToU32(s);
    std::vector<std::string> lines;
    size_t start = 0;
    for (size_t i = 0; i < u.size(); ++i) {
        if (!IsLineBoundary(u[i])) continue;
        size_t end = i + 1;
        if (u[i] == '\r' && i + 1 < u.size() && u[i + 1] == '\n') end = i + 2;
        lines.push_back(FromU32(std::u32string_view(u).substr(start, (keepends ? end : i) - start)));
        start = end;
        i = end - 1;
    }
    if (start < u.size()) lines.push_back(FromU32(std::u32string_view(u).substr(start)));
    return lines;
}

std::string Replace(const std::string& s, const std::string& old, const std::string& repl, int64_t count) {
    std::string out;
    if (old.empty()) {
        const std::u32string u = ToU32(s);
        int64_t n = 0;
        for (size_t i = 0; i <= u.size(); ++i) {
            if (count < 0 || n < count) {
                out += repl;
                ++n;
            }
            if (i < u.size()) AppendUtf8(u[i], &out);
        }
        return out;
    }
    size_t start = 0;
    int64_t n = 0;
    while (count < 0 || n < count) {
        const size_t p = s.find(old, start);
        if (p == std::string::npos) break;
        out.append(s, start, p - start);
        out += repl;
        start = p + old.size();
        ++n;
    }
    out.append(s, start, std::string::npos);
    return out;
}

Value StringList(Interpreter& in, const Value& like, const std::vector<std::string>& parts) {
    std::vector<Value> items;
    items.reserve(parts.size());
    in.CountIterations(static_cast<int64_t>(parts.size()));
    for (const std::string& p : parts) items.push_back(StrLike(like, p));
    return in.MakeList(std::move(items));
}

// Code point index arguments (start, end) of find/count/startswith: byte offsets into s.
void CodePointRange(const std::string& s, const Args& a, size_t start_idx, size_t* b, size_t* e) {
    *b = 0;
    *e = s.size();
    if (!a.Has(start_idx) && !a.Has(start_idx + 1)) return;
    const std::u32string u = ToU32(s);
    const int64_t n = static_cast<int64_t>(u.size());
    auto norm = [&](int64_t i) {
        if (i < 0) i = std::max<int64_t>(0, i + n);
        return std::min(i, n);
    };
    const int64_t cb = a.Has(start_idx) ? norm(a.Int(start_idx, 0)) : 0;
    const int64_t ce = a.Has(start_idx + 1) ? norm(a.Int(start_idx + 1, n)) : n;
    *b = FromU32(std::u32string_view(u).substr(0, static_cast<size_t>(cb))).size();
    *e = ce <= cb ? *b : FromU32(std::u32string_view(u).substr(0, static_cast<size_t>(ce))).size();
}

int64_t ByteToCodePointIndex(const std::string& s, size_t byte) {
    return static_cast<int64_t>(CodePointLength(std::string_view(s).substr(0, byte)));
}

// str.format: {} {0} {name} {name.attr} {0[key]} with !s / !r and a format spec for strings and numbers.
std::string FormatSpec(const Value& v, const std::string& spec) {
    if (spec.empty()) return ToPyStr(v);
    // [[fill]align][sign][width][.precision][type]
    size_t i = 0;
    char32_t fill = ' ';
    char align = 0;
    const std::u32string u = ToU32(spec);
    if (u.size() >= 2 && (u[1] == '<' || u[1] == '>' || u[1] == '^' || u[1] == '=')) {
        fill = u[0];
        align = static_cast<char>(u[1]);
        i = 2;
    } else if (!u.empty() && (u[0] == '<' || u[0] == '>' || u[0] == '^' || u[0] == '=')) {
        align = static_cast<char>(u[0]);
        i = 1;
    }
    char sign = 0;
    if (i < u.size() && (u[i] == '+' || u[i] == '-' || u[i] == ' ')) sign = static_cast<char>(u[i++]);
    if (i < u.size() && u[i] == '0' && !align) {
        fill = '0';
        align = '=';
        ++i;
    }
    int64_t width = 0;
    while (i < u.size() && u[i] >= '0' && u[i] <= '9') width = width * 10 + (u[i++] - '0');
    int64_t precision = -1;
    if (i < u.size() && u[i] == '.') {
        ++i;
        precision = 0;
        while (i < u.size() && u[i] >= '0' && u[i] <= '9') precision = precision * 10 + (u[i++] - '0');
    }
    char type = 0;
    if (i < u.size()) type = static_cast<char>(u[i++]);
    if (i != u.size() || width > 10000 || precision > 1000) {
        RuntimeError("the format spec '" + spec + "' is not supported by this renderer");
    }
    std::string body;
    bool numeric = false;
    if (v.is_string()) {
        if (type && type != 's') RuntimeError("unknown format code '" + std::string(1, type) + "' for a str");
        body = v.str();
        if (precision >= 0) body = FromU32(ToU32(body).substr(0, static_cast<size_t>(precision)));
    } else if (v.is_number() && !(v.is_bool() && !type)) {
        numeric = true;
        char buf[512];
        if (type == 'd' || (!type && v.is_integral() && precision < 0)) {
            if (!v.is_integral()) RuntimeError("unknown format code 'd' for a float");
            std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(v.int_value()));
        } else if (type == 'f' || type == 'F' || type == 'e' || type == 'E' || type == '%') {
            double d = v.number();
            if (type == '%') d *= 100;
            const char t = type == '%' ? 'f' : type;
            const std::string fmt = std::string("%.") + std::to_string(precision < 0 ? 6 : precision) + t;
            std::snprintf(buf, sizeof(buf), fmt.c_str(), d);
            if (type == '%') std::strncat(buf, "%", sizeof(buf) - std::strlen(buf) - 1);
        } else if (!type && precision < 0) {
            std::snprintf(buf, sizeof(buf), "%s", ToPyStr(v).c_str());
        } else {
            RuntimeError("the format spec '" + spec + "' is not supported by this renderer");
        }
        body = buf;
        if (sign == '+' && body[0] != '-') body = "+" + body;
        if (sign == ' ' && body[0] != '-') body = " " + body;
    } else {
        RuntimeError("format specs for " + std::string(TypeName(v)) + " values are not supported by this renderer");
    }
    const int64_t len = static_cast<int64_t>(CodePointLength(body));
    if (width <= len) return body;
    const size_t pad = static_cast<size_t>(width - len);
    std::string fill_s;
    AppendUtf8(fill, &fill_s);
    auto repeat = [&](size_t n) {
        std::string r;
        for (size_t k = 0; k < n; ++k) r += fill_s;
        return r;
    };
    if (!align) align = numeric ? '>' : '<';
    switch (align) {
        case '<':
            return body + repeat(pad);
        case '>':
            return repeat(pad) + body;
        case '^':
            return repeat(pad / 2) + body + repeat(pad - pad / 2);
        default: {  // '=': padding after the sign
            if (!body.empty() && (body[0] == '-' || body[0] == '+' || body[0] == ' ')) {
                return body.substr(0, 1) + repeat(pad) + body.substr(1);
            }
            return repeat(pad) + body;
        }
    }
}

std::string StrFormat(Interpreter& in, const std::string& fmt, CallArgs& args) {
    std::string out;
    size_t auto_idx = 0;
    bool used_auto = false, used_manual = false;
    for (size_t i = 0; i < fmt.size(); ++i) {
        const char c = fmt[i];
        if (c == '}') {
            if (i + 1 < fmt.size() && fmt[i + 1] == '}') {
                out += '}';
                ++i;
                continue;
            }
            RuntimeError("single '}' encountered in format string");
        }
        if (c != '{') {
            out += c;
            continue;
        }
        if (i + 1 < fmt.size() && fmt[i + 1] == '{') {
            out += '{';
            ++i;
            continue;
        }
        const size_t close = fmt.find('}', i);
        if (close == std::string::npos) RuntimeError("single '{' encountered in format string");
        std::string field = fmt.substr(i + 1, close - i - 1);
        if (field.find('{') != std::string::npos) RuntimeError("nested format fields are not supported");
        i = close;
        std::string spec, conv;
        if (size_t colon = field.find(':'); colon != std::string::npos) {
            spec = field.substr(colon + 1);
            field.resize(colon);
        }
        if (size_t bang = field.find('!'); bang != std::string::npos) {
            conv = field.substr(bang + 1);
            field.resize(bang);
        }
        // The argument name, then .attr / [key] parts.
        size_t name_end = field.find_first_of(".[");
        const std::string name = field.substr(0, name_end);
        Value v;
        if (name.empty()) {
            if (used_manual) RuntimeError("cannot switch from manual field specification to automatic field numbering");
            used_auto = true;
            if (auto_idx >= args.args.size())
                RuntimeError("Replacement index " + std::to_string(auto_idx) +
                             " out of range for positional args tuple");
            v = args.args[auto_idx++];
        } else if (std::all_of(name.begin(), name.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
            if (used_auto) RuntimeError("cannot switch from automatic field numbering to manual field specification");
            used_manual = true;
            const size_t idx = std::stoul(name);
            if (idx >= args.args.size()) RuntimeError("Replacement index " + name + " out of range");
            v = args.args[idx];
        } else {
            auto it =
                std::find_if(args.kwargs.begin(), args.kwargs.end(), [&](const auto& kw) { return kw.first == name; });
            if (it == args.kwargs.end()) RuntimeError("KeyError: '" + name + "'");
            v = it->second;
        }
        while (name_end != std::string::npos && name_end < field.size()) {
            if (field[name_end] == '.') {
                const size_t next = field.find_first_of(".[", name_end + 1);
                const std::string attr = field.substr(name_end + 1, next - name_end - 1);
                if (!attr.empty() && attr[0] == '_') RuntimeError("access to attribute '" + attr + "' is unsafe");
                v = in.GetAttr(v, attr);
                name_end = next;
            } else {
                const size_t rb = field.find(']', name_end);
                if (rb == std::string::npos) RuntimeError("missing ']' in format string");
                const std::string key = field.substr(name_end + 1, rb - name_end - 1);
                const bool digits =
                    !key.empty() && std::all_of(key.begin(), key.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
                v = in.GetItem(v, digits ? Value(static_cast<int64_t>(std::stoll(key))) : Value(key));
                name_end = rb + 1;
            }
        }
        if (conv == "r") {
            v = Value(ToPyRepr(v));
        } else if (conv == "s") {
            v = Value(ToPyStr(v));
        } else if (!conv.empty()) {
            RuntimeError("unknown conversion specifier " + conv);
        }
        out += FormatSpec(v, spec);
        in.CheckSize(out.size());
    }
    return out;
}

bool AsciiAll(const std::string& s, int (*pred)(int)) {
    if (s.empty()) return false;
    if (!IsAsciiOnly(s)) RuntimeError("character class tests on non-ASCII text are not supported by this renderer");
    for (char c : s) {
        if (!pred(static_cast<unsigned char>(c))) return false;
    }
    return true;
}

bool PyIsLower(const std::string& s) {
    const std::string lower = PyLower(s), upper = PyUpper(s);
    return lower == s && upper != s;
}

bool PyIsUpper(const std::string& s) {
    const std::string lower = PyLower(s), upper = PyUpper(s);
    return upper == s && lower != s;
}

const std::unordered_set<std::string>& StrMethods() {
    static const std::unordered_set<std::string> kNames = {
        "capitalize", "casefold",     "center",       "count",   "encode",     "endswith",    "expandtabs",
        "find",       "format",       "format_map",   "index",   "isalnum",    "isalpha",     "isascii",
        "isdecimal",  "isdigit",      "isidentifier", "islower", "isnumeric",  "isprintable", "isspace",
        "istitle",    "isupper",      "join",         "ljust",   "lower",      "lstrip",      "maketrans",
        "partition",  "removeprefix", "removesuffix", "replace", "rfind",      "rindex",      "rjust",
        "rpartition", "rsplit",       "rstrip",       "split",   "splitlines", "startswith",  "strip",
        "swapcase",   "title",        "translate",    "upper",   "zfill"};
    return kNames;
}

const std::unordered_set<std::string>& DictMethods() {
    static const std::unordered_set<std::string> kNames = {"clear", "copy",    "fromkeys",   "get",    "items", "keys",
                                                           "pop",   "popitem", "setdefault", "update", "values"};
    return kNames;
}

const std::unordered_set<std::string>& ListMethods() {
    static const std::unordered_set<std::string> kNames = {"append", "clear", "copy",   "count",   "extend", "index",
                                                           "insert", "pop",   "remove", "reverse", "sort"};
    return kNames;
}

Value DictItems(Interpreter& in, const Value& d) {
    std::vector<Value> items;
    items.reserve(d.dict().size());
    in.CountIterations(static_cast<int64_t>(d.dict().size()));
    for (const auto& [k, v] : d.dict().entries()) items.push_back(in.MakeList({k, v}, true));
    return in.MakeList(std::move(items));
}

Value StrMethod(Interpreter& in, const Value& self, const std::string& name, CallArgs& call) {
    const std::string& s = self.str();
    const std::string what = "str." + name;
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
        Args a(call, what, {"chars"});
        const Value* chars = a.Given(0) ? &a.Get(0) : nullptr;
        return StrLike(self, Strip(s, chars, name != "rstrip", name != "lstrip"));
    }
    if (name == "split" || name == "rsplit") {
        Args a(call, what, {"sep", "maxsplit"});
        const int64_t maxsplit = a.Int(1, -1);
        const bool right = name == "rsplit";
        if (!a.Has(0)) return StringList(in, self, SplitWhitespace(s, maxsplit, right));
        return StringList(in, self, SplitSep(s, a.Str(0, ""), maxsplit, right));
    }
    if (name == "splitlines") {
        Args a(call, what, {"keepends"});
        return StringList(in, self, SplitLines(s, a.Bool(0, false)));
    }
    if (name == "replace") {
        Args a(call, what, {"old", "new", "count"});
        std::string old = a.Str(0, ""), repl = a.Str(1, "");
        if (self.is_markup()) {
            if (!a.Get(0).is_markup()) old = HtmlEscape(old);
            if (!a.Get(1).is_markup()) repl = HtmlEscape(repl);
        }
        std::string r = Replace(s, old, repl, a.Int(2, -1));
        in.CheckSize(r.size());
        return StrLike(self, std::move(r));
    }
    if (name == "upper") return StrLike(self, PyUpper(s));
    if (name == "lower") return StrLike(self, PyLower(s));
    if (name == "title") return StrLike(self, PyTitle(s));
    if (name == "capitalize") return StrLike(self, PyCapitalize(s));
    if (name == "startswith" || name == "endswith") {
        Args a(call, what, {"prefix", "start", "end"});
        size_t b, e;
        CodePointRange(s, a, 1, &b, &e);
        const std::string_view view = std::string_view(s).substr(b, e - b);
        std::vector<Value> options;
        if (a.Given(0) && a.Get(0).is_list() && a.Get(0).list().tuple) {
            options = a.Get(0).list().items;
        } else {
            options.push_back(a.Or(0, Value()));
        }
        for (const Value& o : options) {
            const std::string p = RequireString(o, what.c_str());
            if (name == "startswith" ? view.substr(0, p.size()) == p
                                     : view.size() >= p.size() && view.substr(view.size() - p.size()) == p) {
                return Value(true);
            }
        }
        return Value(false);
    }
    if (name == "find" || name == "rfind" || name == "index" || name == "rindex" || name == "count") {
        Args a(call, what, {"sub", "start", "end"});
        const std::string sub = a.Str(0, "");
        size_t b, e;
        CodePointRange(s, a, 1, &b, &e);
        const std::string view = s.substr(b, e - b);
        if (name == "count") {
            if (sub.empty()) return Value(static_cast<int64_t>(CodePointLength(view) + 1));
            int64_t n = 0;
            for (size_t p = view.find(sub); p != std::string::npos; p = view.find(sub, p + sub.size())) ++n;
            return Value(n);
        }
        const size_t p = name[0] == 'r' ? view.rfind(sub) : view.find(sub);
        if (p == std::string::npos) {
            if (name == "index" || name == "rindex") RuntimeError("substring not found");
            return Value(static_cast<int64_t>(-1));
        }
        return Value(ByteToCodePointIndex(s, b + p));
    }
    if (name == "format") return StrLike(self, StrFormat(in, s, call));
    if (name == "join") {
        Args a(call, what, {"iterable"});
        std::string out;
        bool first = true;
        for (const Value& item : in.Iterate(a.Or(0, Value()))) {
            if (!item.is_string()) {
                RuntimeError(std::string("sequence item: expected str instance, ") + TypeName(item) + " found");
            }
            if (!first) out += s;
            first = false;
            out += self.is_markup() && !item.is_markup() ? HtmlEscape(item.str()) : item.str();
            in.CheckSize(out.size());
        }
        return StrLike(self, std::move(out));
    }
    if (name == "isdigit" || name == "isdecimal" || name == "isnumeric") {
        Args a(call, what, {});
        return Value(AsciiAll(s, [](int c) { return std::isdigit(c); }));
    }
    if (name == "isalpha") {
        Args a(call, what, {});
        return Value(AsciiAll(s, [](int c) { return std::isalpha(c); }));
    }
    if (name == "isalnum") {
        Args a(call, what, {});
        return Value(AsciiAll(s, [](int c) { return std::isalnum(c); }));
    }
    if (name == "isspace") {
        Args a(call, what, {});
        if (s.empty()) return Value(false);
        for (size_t i = 0; i < s.size();) {
            if (!IsPyWhitespace(NextCodePoint(s, &i))) return Value(false);
        }
        return Value(true);
    }
    if (name == "islower") {
        Args a(call, what, {});
        return Value(PyIsLower(s));
    }
    if (name == "isupper") {
        Args a(call, what, {});
        return Value(PyIsUpper(s));
    }
    if (name == "partition" || name == "rpartition") {
        Args a(call, what, {"sep"});
        const std::string sep = a.Str(0, "");
        if (sep.empty()) RuntimeError("empty separator");
        const size_t p = name == "partition" ? s.find(sep) : s.rfind(sep);
        std::vector<Value> parts;
        if (p == std::string::npos) {
            parts = name == "partition" ? std::vector<Value>{StrLike(self, s), StrLike(self, ""), StrLike(self, "")}
                                        : std::vector<Value>{StrLike(self, ""), StrLike(self, ""), StrLike(self, s)};
        } else {
            parts = {StrLike(self, s.substr(0, p)), StrLike(self, sep), StrLike(self, s.substr(p + sep.size()))};
        }
        return in.MakeList(std::move(parts), true);
    }
    if (name == "removeprefix" || name == "removesuffix") {
        Args a(call, what, {"affix"});
        const std::string x = a.Str(0, "");
        if (name == "removeprefix") return StrLike(self, s.compare(0, x.size(), x) == 0 ? s.substr(x.size()) : s);
        if (s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0) {
            return StrLike(self, s.substr(0, s.size() - x.size()));
        }
        return StrLike(self, s);
    }
    if (name == "ljust" || name == "rjust" || name == "center" || name == "zfill") {
        Args a(call, what, {"width", "fillchar"});
        const int64_t width = a.Int(0, 0);
        const int64_t len = static_cast<int64_t>(CodePointLength(s));
        if (width > len) in.CheckSize(static_cast<size_t>(width) * 4);
        if (width <= len) return StrLike(self, s);
        const size_t pad = static_cast<size_t>(width - len);
        std::string fill = name == "zfill" ? "0" : a.Str(1, " ");
        if (CodePointLength(fill) != 1) RuntimeError("The fill character must be exactly one character long");
        auto rep = [&](size_t n) {
            std::string r;
            for (size_t k = 0; k < n; ++k) r += fill;
            return r;
        };
        if (name == "ljust") return StrLike(self, s + rep(pad));
        if (name == "rjust") return StrLike(self, rep(pad) + s);
        if (name == "zfill") {
            if (!s.empty() && (s[0] == '-' || s[0] == '+'))
                return StrLike(self, s.substr(0, 1) + rep(pad) + s.substr(1));
            return StrLike(self, rep(pad) + s);
        }
        // Python's center puts the odd character on the left when the width is odd... of the padding.
        const size_t left = pad / 2 + (pad & static_cast<size_t>(width) & 1);
        return StrLike(self, rep(left) + s + rep(pad - left));
    }
    RuntimeError("the string method '" + name + "' is not supported by this renderer");
}

Value DictMethod(Interpreter& in, const Value& self, const std::string& name, CallArgs& call) {
    const std::string what = "dict." + name;
    if (name == "get") {
        Args a(call, what, {"key", "default"});
        if (!a.Given(0)) RuntimeError("dict.get() takes at least 1 argument");
        const Value& key = a.Get(0);
        if ((key.is_list() && !key.list().tuple) || key.is_dict()) {
            RuntimeError(std::string("unhashable type: '") + TypeName(key) + "'");
        }
        if (const Value* v = self.dict().Find(key)) return *v;
        return a.Or(1, Value::None());
    }
    if (name == "items" || name == "keys" || name == "values") {
        Args a(call, what, {});
        Value view = name == "items" ? DictItems(in, self) : Value();
        if (name != "items") {
            std::vector<Value> out;
            in.CountIterations(static_cast<int64_t>(self.dict().size()));
            for (const auto& [k, v] : self.dict().entries()) out.push_back(name == "keys" ? k : v);
            view = in.MakeList(std::move(out));
        }
        view.list_ptr()->view = name == "items" ? "dict_items" : name == "keys" ? "dict_keys" : "dict_values";
        return view;
    }
    if (name == "copy") {
        Args a(call, what, {});
        return Value::MakeDict(self.dict());
    }
    if (name == "pop" || name == "popitem" || name == "setdefault" || name == "update" || name == "clear") {
        RuntimeError("access to attribute '" + name + "' of 'dict' object is unsafe");
    }
    RuntimeError("the dict method '" + name + "' is not supported by this renderer");
}

Value ListMethod(Interpreter& in, const Value& self, const std::string& name, CallArgs& call) {
    const std::string what = std::string(TypeName(self)) + "." + name;
    const auto& items = self.list().items;
    if (name == "index" || name == "count") {
        Args a(call, what, {"value"});
        const Value x = a.Or(0, Value());
        int64_t n = 0;
        for (size_t i = 0; i < items.size(); ++i) {
            if (PyEquals(items[i], x)) {
                if (name == "index") return Value(static_cast<int64_t>(i));
                ++n;
            }
        }
        if (name == "index") RuntimeError(ToPyRepr(x) + " is not in list");
        return Value(n);
    }
    if (name == "copy" && !self.list().tuple) {
        Args a(call, what, {});
        return in.MakeList(items);
    }
    if (self.list().tuple) RuntimeError("'tuple' object has no attribute '" + name + "'");
    RuntimeError("access to attribute '" + name + "' of 'list' object is unsafe");
}

// ---- sorting helpers (Jinja's ignore_case) ----

Value SortKey(Interpreter& in, const Value& item, bool case_sensitive, const std::vector<std::string>& attr_path) {
    Value v = item;
    for (const std::string& part : attr_path) {
        const bool digits =
            !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
        v = in.GetItem(v, digits ? Value(static_cast<int64_t>(std::stoll(part))) : Value(part));
    }
    if (!case_sensitive && v.is_string()) return Value(PyLower(v.str()));
    return v;
}

std::vector<std::string> AttrPath(const Args& a, size_t idx) {
    std::vector<std::string> path;
    if (!a.Has(idx)) return path;
    const Value& v = a.Get(idx);
    if (v.is_integral()) return {std::to_string(v.int_value())};
    std::string s = RequireString(v, "attribute");
    size_t start = 0;
    while (true) {
        const size_t dot = s.find('.', start);
        path.push_back(s.substr(start, dot - start));
        if (dot == std::string::npos) break;
        start = dot + 1;
    }
    return path;
}

void StableSort(Interpreter& in, std::vector<std::pair<Value, Value>>* keyed, bool reverse) {
    std::stable_sort(keyed->begin(), keyed->end(), [&](const auto& x, const auto& y) {
        return reverse ? in.Compare("<", y.first, x.first) : in.Compare("<", x.first, y.first);
    });
}

// ---- filters ----

Value FTojson(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "tojson", {"ensure_ascii", "indent", "separators", "sort_keys"});
    JsonDumpOptions o;
    o.ensure_ascii = a.Bool(0, false);
    if (a.Has(1)) {
        const Value& ind = a.Get(1);
        o.has_indent = true;
        if (ind.is_string()) {
            o.indent = ind.str();
        } else if (ind.is_integral()) {
            o.indent = std::string(static_cast<size_t>(std::clamp<int64_t>(ind.int_value(), 0, 1000)), ' ');
        } else {
            RuntimeError("tojson: indent must be an integer or a string");
        }
        o.item_separator = ",";
    }
    if (a.Has(2)) {
        const Value& sep = a.Get(2);
        if (!sep.is_list() || sep.list().items.size() != 2 || !sep.list().items[0].is_string() ||
            !sep.list().items[1].is_string()) {
            RuntimeError("tojson: separators must be a pair of strings");
        }
        o.item_separator = sep.list().items[0].str();
        o.key_separator = sep.list().items[1].str();
    }
    o.sort_keys = a.Bool(3, false);
    std::string s = JsonDumps(v, o);
    in.CheckSize(s.size());
    return Value(std::move(s));
}

Value FTrim(Interpreter&, Value& v, CallArgs& call) {
    Args a(call, "trim", {"chars"});
    const Value* chars = a.Given(0) ? &a.Get(0) : nullptr;
    return StrLike(v, Strip(ToPyStr(v), chars, true, true));
}

Value FLength(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "length", {});
    return Value(PyLen(in, v));
}

Value FUpper(Interpreter&, Value& v, CallArgs& call) {
    Args a(call, "upper", {});
    return StrLike(v, PyUpper(ToPyStr(v)));
}

Value FLower(Interpreter&, Value& v, CallArgs& call) {
    Args a(call, "lower", {});
    return StrLike(v, PyLower(ToPyStr(v)));
}

Value FCapitalize(Interpreter&, Value& v, CallArgs& call) {
    Args a(call, "capitalize", {});
    return StrLike(v, PyCapitalize(ToPyStr(v)));
}

// Jinja's title: each run split at whitespace, '-', '(', '{', '[', '<' gets an upper first letter.
Value FTitle(Interpreter&, Value& v, CallArgs& call) {
    Args a(call, "title", {});
    const std::u32string u = ToU32(ToPyStr(v));
    std::u32string out;
    auto is_sep = [](char32_t c) {
        return IsPyWhitespace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
    };
    size_t i = 0;
    while (i < u.size()) {
        size_t j = i;
        const bool sep = is_sep(u[i]);
        while (j < u.size() && is_sep(u[j]) == sep) ++j;
        const std::string item = FromU32(u.substr(i, j - i));
        std::string first, rest;
        size_t k = 0;
        const char32_t c0 = NextCodePoint(item, &k);
        AppendUtf8(c0, &first);
        out += ToU32(PyUpper(first) + PyLower(item.substr(k)));
        i = j;
    }
    return StrLike(v, FromU32(out));
}

Value FDefault(Interpreter&, Value& v, CallArgs& call) {
    Args a(call, "default", {"default_value", "boolean"});
    if (v.is_undefined() || (a.Bool(1, false) && !Truthy(v))) return a.Or(0, Value(""));
    return v;
}

Value FItems(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "items", {});
    if (v.is_undefined()) return in.MakeGenerator({});
    if (!v.is_dict()) RuntimeError(std::string("can only get item pairs from a mapping, not ") + TypeName(v));
    return in.MakeGenerator(DictItems(in, v).list().items);
}

Value FJoin(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "join", {"d", "attribute"});
    const std::string sep = a.Given(0) ? ToPyStr(a.Get(0)) : "";
    const std::vector<std::string> path = AttrPath(a, 1);
    std::string out;
    bool first = true;
    const std::vector<Value> items = in.Iterate(v);
    in.CountIterations(static_cast<int64_t>(items.size()));
    for (const Value& item : items) {
        if (!first) out += sep;
        first = false;
        out += ToPyStr(path.empty() ? item : SortKey(in, item, true, path));
        in.CheckSize(out.size());
    }
    return Value(std::move(out));
}

Value FReplace(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "replace", {"old", "new", "count"});
    std::string r =
        Replace(ToPyStr(v), ToPyStr(a.Or(0, Value(""))), ToPyStr(a.Or(1, Value(""))), a.Has(2) ? a.Int(2, -1) : -1);
    in.CheckSize(r.size());
    return Value(std::move(r));
}

// The test of select/reject/selectattr/rejectattr: by name (with arguments) or truthiness.
bool RunTest(Interpreter& in, const Value& value, const std::string* test_name, std::vector<Value> test_args) {
    if (!test_name) return Truthy(value);
    const TestDef* test = FindTest(*test_name);
    if (!test) RuntimeError("no test named '" + *test_name + "'");
    CallArgs args;
    args.args = std::move(test_args);
    return in.ApplyTest(test, value, args);
}

Value SelectOrReject(Interpreter& in, Value& v, CallArgs& call, bool select, bool by_attr) {
    const char* what = by_attr ? (select ? "selectattr" : "rejectattr") : (select ? "select" : "reject");
    if (!call.kwargs.empty()) RuntimeError(std::string(what) + "() takes no keyword arguments");
    size_t pos = 0;
    std::vector<std::string> path;
    if (by_attr) {
        if (call.args.empty()) RuntimeError(std::string(what) + "() needs an attribute name");
        std::string attr = RequireString(call.args[0], what);
        size_t start = 0;
        while (true) {
            const size_t dot = attr.find('.', start);
            path.push_back(attr.substr(start, dot - start));
            if (dot == std::string::npos) break;
            start = dot + 1;
        }
        pos = 1;
    }
    std::string test_name;
    const bool has_test = call.args.size() > pos;
    if (has_test) test_name = RequireString(call.args[pos], what);
    std::vector<Value> test_args(call.args.begin() + static_cast<std::ptrdiff_t>(std::min(call.args.size(), pos + 1)),
                                 call.args.end());
    std::vector<Value> out;
    if (!Truthy(v)) return in.MakeGenerator({});  // Jinja: `if value:` before iterating
    const std::vector<Value> items = in.Iterate(v);
    in.CountIterations(static_cast<int64_t>(items.size()));
    for (const Value& item : items) {
        const Value subject = by_attr ? SortKey(in, item, true, path) : item;
        if (RunTest(in, subject, has_test ? &test_name : nullptr, test_args) == select) out.push_back(item);
    }
    return in.MakeGenerator(std::move(out));
}

Value FSelect(Interpreter& in, Value& v, CallArgs& call) { return SelectOrReject(in, v, call, true, false); }
Value FReject(Interpreter& in, Value& v, CallArgs& call) { return SelectOrReject(in, v, call, false, false); }
Value FSelectAttr(Interpreter& in, Value& v, CallArgs& call) { return SelectOrReject(in, v, call, true, true); }
Value FRejectAttr(Interpreter& in, Value& v, CallArgs& call) { return SelectOrReject(in, v, call, false, true); }

Value FMap(Interpreter& in, Value& v, CallArgs& call) {
    if (!Truthy(v)) return in.MakeGenerator({});  // Jinja: `if value:` before iterating
    const std::vector<Value> items = in.Iterate(v);
    in.CountIterations(static_cast<int64_t>(items.size()));
    std::vector<Value> out;
    if (call.args.empty()) {
        Args a(call, "map", {"attribute", "default"});
        if (!a.Given(0)) RuntimeError("map() needs a filter name or attribute=");
        const std::vector<std::string> path = AttrPath(a, 0);
        for (const Value& item : items) {
            Value x = SortKey(in, item, true, path);
            if (x.is_undefined() && a.Given(1)) x = a.Get(1);
            out.push_back(std::move(x));
        }
        return in.MakeGenerator(std::move(out));
    }
    const std::string name = RequireString(call.args[0], "map");
    const FilterDef* filter = FindFilter(name);
    if (!filter) RuntimeError("no filter named '" + name + "'");
    for (const Value& item : items) {
        CallArgs args;
        args.args.assign(call.args.begin() + 1, call.args.end());
        args.kwargs = call.kwargs;
        out.push_back(in.ApplyFilter(filter, item, args));
    }
    return in.MakeGenerator(std::move(out));
}

Value FFirst(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "first", {});
    if (v.is_list() && v.list().view == kGenerator) {
        auto& items = v.list_ptr()->items;  // a generator: take one item
        if (items.empty()) return Value::Undefined("No first item, sequence was empty.");
        Value first = items.front();
        items.erase(items.begin());
        return first;
    }
    const std::vector<Value> items = in.Iterate(v);
    if (items.empty()) return Value::Undefined("No first item, sequence was empty.");
    return items.front();
}

Value FLast(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "last", {});
    if (v.is_undefined() || v.is_dict() || (v.is_list() && v.list().view == kGenerator)) {
        RuntimeError(std::string("'") + TypeName(v) + "' object is not reversible");
    }
    const std::vector<Value> items = in.Iterate(v);
    if (items.empty()) return Value::Undefined("No last item, sequence was empty.");
    return items.back();
}

Value FList(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "list", {});
    std::vector<Value> items = in.Iterate(v);
    in.CountIterations(static_cast<int64_t>(items.size()));
    return in.MakeList(std::move(items));
}

Value FString(Interpreter&, Value& v, CallArgs& call) {
    Args a(call, "string", {});
    if (v.is_string()) return v;
    return Value(ToPyStr(v));
}

std::optional<int64_t> ParsePyInt(std::string s, int base) {
    const std::string t = Strip(s, nullptr, true, true);
    std::string digits;
    for (size_t i = 0; i < t.size(); ++i) {
        if (t[i] == '_' && i > 0 && i + 1 < t.size() && std::isalnum(static_cast<unsigned char>(t[i - 1])) &&
            std::isalnum(static_cast<unsigned char>(t[i + 1]))) {
            continue;
        }
        digits += t[i];
    }
    if (digits.empty() || !IsAsciiOnly(digits)) return std::nullopt;
    errno = 0;
    char* end = nullptr;
    const long long x = std::strtoll(digits.c_str(), &end, base);
    if (*end != '\0' || errno == ERANGE || std::isspace(static_cast<unsigned char>(digits[0]))) return std::nullopt;
    return static_cast<int64_t>(x);
}

std::optional<double> ParsePyFloat(const std::string& s) {
    const std::string t = Strip(s, nullptr, true, true);
    if (t.empty() || !IsAsciiOnly(t) || t.find('_') != std::string::npos) return std::nullopt;
    std::string lower = PyLower(t);
    const std::string unsigned_part = lower[0] == '+' || lower[0] == '-' ? lower.substr(1) : lower;
    if (unsigned_part == "inf" || unsigned_part == "infinity" || unsigned_part == "nan") {
        const double x = unsigned_part == "nan" ? NAN : INFINITY;
        return lower[0] == '-' ? -x : x;
    }
    if (unsigned_part.find_first_of("xpn") != std::string::npos) return std::nullopt;
    char* end = nullptr;
    const double x = std::strtod(t.c_str(), &end);
    if (*end != '\0') return std::nullopt;
    return x;
}

Value FInt(Interpreter&, Value& v, CallArgs& call) {
    Args a(call, "int", {"default", "base"});
    const Value dflt = a.Or(0, Value(static_cast<int64_t>(0)));
    const int64_t base = a.Int(1, 10);
    if (v.is_string()) {
        if (auto i = ParsePyInt(v.str(), static_cast<int>(base))) return Value(*i);
        if (auto f = ParsePyFloat(v.str()); f && std::isfinite(*f) && std::fabs(*f) < 9.2e18) {
            return Value(static_cast<int64_t>(std::trunc(*f)));
        }
        return dflt;
    }
    if (v.is_integral()) return Value(v.int_value());
    if (v.is_float()) {
        if (!std::isfinite(v.number()) || std::fabs(v.number()) >= 9.2e18) return dflt;
        return Value(static_cast<int64_t>(std::trunc(v.number())));
    }
    return dflt;
}

Value FFloat(Interpreter&, Value& v, CallArgs& call) {
    Args a(call, "float", {"default"});
    const Value dflt = a.Or(0, Value(0.0));
    if (v.is_number()) return Value(v.number());
    if (v.is_string()) {
        if (auto f = ParsePyFloat(v.str())) return Value(*f);
    }
    return dflt;
}

Value FAbs(Interpreter&, Value& v, CallArgs& call) {
    Args a(call, "abs", {});
    if (v.is_float()) return Value(std::fabs(v.number()));
    if (v.is_integral()) {
        if (v.int_value() == INT64_MIN) RuntimeError("integer overflow");
        return Value(v.int_value() < 0 ? -v.int_value() : v.int_value());
    }
    RuntimeError(std::string("bad operand type for abs(): '") + TypeName(v) + "'");
}

Value FRound(Interpreter&, Value& v, CallArgs& call) {
    Args a(call, "round", {"precision", "method"});
    const int64_t precision = a.Int(0, 0);
    const std::string method = a.Str(1, "common");
    if (!v.is_number()) RuntimeError(std::string("round: expected a number, got ") + TypeName(v));
    if (method != "common" && method != "ceil" && method != "floor") {
        RuntimeError("method must be common, ceil or floor");
    }
    if (method == "common") {
        if (v.is_integral()) {
            if (precision >= 0) return Value(v.int_value());
            RuntimeError("round() with a negative precision of an integer is not supported by this renderer");
        }
        if (precision < 0 || precision > 300) {
            RuntimeError("round() precision outside 0..300 is not supported by this renderer");
        }
        const double x = v.number();
        if (!std::isfinite(x)) return Value(x);
        // printf rounds the exact binary value half-to-even, as Python's round() does.
        char buf[512];
        std::snprintf(buf, sizeof(buf), "%.*f", static_cast<int>(precision), x);
        return Value(std::strtod(buf, nullptr));
    }
    const double scale = std::pow(10.0, static_cast<double>(precision));
    const double x = v.number() * scale;
    return Value((method == "ceil" ? std::ceil(x) : std::floor(x)) / scale);
}

Value FUnique(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "unique", {"case_sensitive", "attribute"});
    const bool cs = a.Bool(0, false);
    const std::vector<std::string> path = AttrPath(a, 1);
    std::vector<Value> out, seen;
    const std::vector<Value> items = in.Iterate(v);
    in.CountIterations(static_cast<int64_t>(items.size() * std::min<size_t>(items.size(), 1000)));
    for (const Value& item : items) {
        const Value key = SortKey(in, item, cs, path);
        if ((key.is_list() && !key.list().tuple) || key.is_dict()) {
            RuntimeError(std::string("unhashable type: '") + TypeName(key) + "'");
        }
        if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return PyEquals(s, key); })) {
            seen.push_back(key);
            out.push_back(item);
        }
    }
    return in.MakeGenerator(std::move(out));
}

Value FSort(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "sort", {"reverse", "case_sensitive", "attribute"});
    const bool reverse = a.Bool(0, false);
    const bool cs = a.Bool(1, false);
    const std::vector<std::string> path = AttrPath(a, 2);
    std::vector<std::pair<Value, Value>> keyed;
    for (const Value& item : in.Iterate(v)) keyed.emplace_back(SortKey(in, item, cs, path), item);
    in.CountIterations(static_cast<int64_t>(keyed.size()) * 16);
    StableSort(in, &keyed, reverse);
    std::vector<Value> out;
    for (auto& [k, item] : keyed) out.push_back(std::move(item));
    return in.MakeList(std::move(out));
}

Value MinMax(Interpreter& in, Value& v, CallArgs& call, bool max) {
    Args a(call, max ? "max" : "min", {"case_sensitive", "attribute"});
    const bool cs = a.Bool(0, false);
    const std::vector<std::string> path = AttrPath(a, 1);
    const std::vector<Value> items = in.Iterate(v);
    if (items.empty()) return Value::Undefined("No aggregated item, sequence was empty.");
    size_t best = 0;
    Value best_key = SortKey(in, items[0], cs, path);
    for (size_t i = 1; i < items.size(); ++i) {
        Value key = SortKey(in, items[i], cs, path);
        if (max ? in.Compare(">", key, best_key) : in.Compare("<", key, best_key)) {
            best = i;
            best_key = std::move(key);
        }
    }
    return items[best];
}

Value FMin(Interpreter& in, Value& v, CallArgs& call) { return MinMax(in, v, call, false); }
Value FMax(Interpreter& in, Value& v, CallArgs& call) { return MinMax(in, v, call, true); }

Value FDictsort(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "dictsort", {"case_sensitive", "by", "reverse"});
    const bool cs = a.Bool(0, false);
    const std::string by = a.Str(1, "key");
    if (by != "key" && by != "value") RuntimeError("You can only sort by either \"key\" or \"value\"");
    if (!v.is_dict()) RuntimeError(std::string("dictsort needs a mapping, not ") + TypeName(v));
    std::vector<std::pair<Value, Value>> keyed;
    for (const auto& [k, item] : v.dict().entries()) {
        const Value& key = by == "key" ? k : item;
        keyed.emplace_back(!cs && key.is_string() ? Value(PyLower(key.str())) : key, in.MakeList({k, item}, true));
    }
    in.CountIterations(static_cast<int64_t>(keyed.size()) * 16);
    StableSort(in, &keyed, a.Bool(2, false));
    std::vector<Value> out;
    for (auto& [key, item] : keyed) out.push_back(std::move(item));
    return in.MakeList(std::move(out));
}

Value FIndent(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "indent", {"width", "first", "blank"});
    std::string indention;
    if (a.Given(0) && a.Get(0).is_string()) {
        indention = a.Get(0).str();
    } else {
        const int64_t width = a.Int(0, 4);
        indention = std::string(static_cast<size_t>(std::clamp<int64_t>(width, 0, 1000)), ' ');
    }
    const bool first = a.Bool(1, false);
    const bool blank = a.Bool(2, false);
    const std::string s = ToPyStr(v) + "\n";
    std::vector<std::string> lines = SplitLines(s, false);
    std::string rv;
    if (blank) {
        for (size_t i = 0; i < lines.size(); ++i) {
            if (i > 0) rv += "\n" + indention;
            rv += lines[i];
        }
    } else {
        rv = lines.empty() ? "" : lines[0];
        if (lines.size() > 1) {
            rv += "\n";
            for (size_t i = 1; i < lines.size(); ++i) {
                if (i > 1) rv += "\n";
                if (!lines[i].empty()) rv += indention;
                rv += lines[i];
            }
        }
    }
    if (first) rv = indention + rv;
    in.CheckSize(rv.size());
    return StrLike(v, std::move(rv));
}

Value FSafe(Interpreter&, Value& v, CallArgs& call) {
    Args a(call, "safe", {});
    return Value::Markup(ToPyStr(v));
}

Value FEscape(Interpreter&, Value& v, CallArgs& call) {
    Args a(call, "escape", {});
    if (v.is_markup()) return v;
    return Value::Markup(HtmlEscape(ToPyStr(v)));
}

Value FForceEscape(Interpreter&, Value& v, CallArgs& call) {
    Args a(call, "forceescape", {});
    return Value::Markup(HtmlEscape(ToPyStr(v)));
}

Value FWordcount(Interpreter&, Value& v, CallArgs& call) {
    Args a(call, "wordcount", {});
    const std::u32string u = ToU32(ToPyStr(v));
    int64_t n = 0;
    bool in_word = false;
    for (char32_t c : u) {
        bool word;
        if (c < 0x80) {
            word = std::isalnum(static_cast<int>(c)) || c == '_';
        } else {
            if (!IsPyWhitespace(c) && !(c >= 0x2000 && c <= 0x206F) && !(c >= 0x3000 && c <= 0x303F) &&
                !(c >= 0xFF00 && c <= 0xFF0F) && !(c >= 0x80 && c <= 0xBF)) {
                word = true;
            } else {
                word = false;
            }
        }
        if (word && !in_word) ++n;
        in_word = word;
    }
    return Value(n);
}

Value FReverse(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "reverse", {});
    if (v.is_string()) {
        std::u32string u = ToU32(v.str());
        std::reverse(u.begin(), u.end());
        return StrLike(v, FromU32(u));
    }
    std::vector<Value> items = in.Iterate(v);
    std::reverse(items.begin(), items.end());
    return in.MakeList(std::move(items));
}

Value FSum(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "sum", {"attribute", "start"});
    const std::vector<std::string> path = AttrPath(a, 0);
    Value total = a.Or(1, Value(static_cast<int64_t>(0)));
    const std::vector<Value> items = in.Iterate(v);
    in.CountIterations(static_cast<int64_t>(items.size()));
    for (const Value& item : items)
        total = in.BinaryOp("+", total, path.empty() ? item : SortKey(in, item, true, path));
    return total;
}

Value FBatch(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "batch", {"linecount", "fill_with"});
    const int64_t n = a.Int(0, 0);
    if (n <= 0) RuntimeError("batch: linecount must be positive");
    const std::vector<Value> items = in.Iterate(v);
    in.CountIterations(static_cast<int64_t>(items.size()));
    std::vector<Value> out, cur;
    for (const Value& item : items) {
        cur.push_back(item);
        if (static_cast<int64_t>(cur.size()) == n) {
            out.push_back(in.MakeList(std::move(cur)));
            cur.clear();
        }
    }
    if (!cur.empty()) {
        if (a.Has(1)) {
            while (static_cast<int64_t>(cur.size()) < n) cur.push_back(a.Get(1));
        }
        out.push_back(in.MakeList(std::move(cur)));
    }
    return in.MakeGenerator(std::move(out));
}

Value FCenter(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "center", {"width"});
    CallArgs inner;
    inner.args.push_back(Value(a.Int(0, 80)));
    return StrMethod(in, Value(ToPyStr(v)), "center", inner);
}

Value FAttr(Interpreter& in, Value& v, CallArgs& call) {
    Args a(call, "attr", {"name"});
    const std::string name = a.Str(0, "");
    if (v.is_dict()) {
        // Jinja's attr filter uses getattr only: dict keys are not attributes.
        if (IsMethodName(v, name)) return in.GetAttr(v, name);
        return Value::Undefined("'dict object' has no attribute '" + name + "'");
    }
    return in.GetAttr(v, name);
}

constexpr FilterDef kFilters[] = {
    {"abs", FAbs},
    {"attr", FAttr},
    {"batch", FBatch},
    {"capitalize", FCapitalize},
    {"center", FCenter},
    {"count", FLength},
    {"d", FDefault},
    {"default", FDefault},
    {"dictsort", FDictsort},
    {"e", FEscape},
    {"escape", FEscape},
    {"first", FFirst},
    {"float", FFloat},
    {"forceescape", FForceEscape},
    {"indent", FIndent},
    {"int", FInt},
    {"items", FItems},
    {"join", FJoin},
    {"last", FLast},
    {"length", FLength},
    {"list", FList},
    {"lower", FLower},
    {"map", FMap},
    {"max", FMax},
    {"min", FMin},
    {"reject", FReject},
    {"rejectattr", FRejectAttr},
    {"replace", FReplace},
    {"reverse", FReverse},
    {"round", FRound},
    {"safe", FSafe},
    {"select", FSelect},
    {"selectattr", FSelectAttr},
    {"sort", FSort},
    {"string", FString},
    {"sum", FSum},
    {"title", FTitle},
    {"tojson", FTojson},
    {"trim", FTrim},
    {"unique", FUnique},
    {"upper", FUpper},
    {"wordcount", FWordcount},
};

// ---- tests ----

bool TDefined(Interpreter&, const Value& v, CallArgs&) { return !v.is_undefined(); }
bool TUndefined(Interpreter&, const Value& v, CallArgs&) { return v.is_undefined(); }
bool TNone(Interpreter&, const Value& v, CallArgs&) { return v.is_none(); }
bool TString(Interpreter&, const Value& v, CallArgs&) { return v.is_string(); }
bool TNumber(Interpreter&, const Value& v, CallArgs&) { return v.is_number(); }
bool TInteger(Interpreter&, const Value& v, CallArgs&) { return v.is_int(); }
bool TFloat(Interpreter&, const Value& v, CallArgs&) { return v.is_float(); }
bool TBoolean(Interpreter&, const Value& v, CallArgs&) { return v.is_bool(); }
bool TMapping(Interpreter&, const Value& v, CallArgs&) { return v.is_dict(); }
bool TIterable(Interpreter&, const Value& v, CallArgs&) {
    return v.is_undefined() || v.is_string() || v.is_list() || v.is_dict();
}
bool TSequence(Interpreter&, const Value& v, CallArgs&) {
    // dict views have no __getitem__, generators no __len__.
    return v.is_undefined() || v.is_string() || (v.is_list() && !v.list().view) || v.is_dict();
}
bool TCallable(Interpreter&, const Value& v, CallArgs&) { return v.is_callable(); }
bool TTrue(Interpreter&, const Value& v, CallArgs&) { return v.is_bool() && v.bool_value(); }
bool TFalse(Interpreter&, const Value& v, CallArgs&) { return v.is_bool() && !v.bool_value(); }
bool TEscaped(Interpreter&, const Value& v, CallArgs&) { return v.is_markup(); }

int64_t IntForTest(Interpreter& in, const Value& v, const char* what) {
    if (v.is_undefined()) in.UndefinedError(v);
    if (!v.is_integral()) RuntimeError(std::string("the '") + what + "' test needs an integer");
    return v.int_value();
}

bool TOdd(Interpreter& in, const Value& v, CallArgs& call) {
    Args a(call, "odd", {});
    return IntForTest(in, v, "odd") % 2 != 0;
}
bool TEven(Interpreter& in, const Value& v, CallArgs& call) {
    Args a(call, "even", {});
    return IntForTest(in, v, "even") % 2 == 0;
}
bool TDivisibleBy(Interpreter& in, const Value& v, CallArgs& call) {
    Args a(call, "divisibleby", {"num"});
    const Value mod = in.BinaryOp("%", v, a.Or(0, Value()));
    return PyEquals(mod, Value(static_cast<int64_t>(0)));
}

bool CompareTest(Interpreter& in, const Value& v, CallArgs& call, const char* op) {
    Args a(call, op, {"other"});
    return in.Compare(op, v, a.Or(0, Value()));
}
bool TEq(Interpreter& in, const Value& v, CallArgs& call) { return CompareTest(in, v, call, "=="); }
bool TNe(Interpreter& in, const Value& v, CallArgs& call) { return CompareTest(in, v, call, "!="); }
bool TLt(Interpreter& in, const Value& v, CallArgs& call) { return CompareTest(in, v, call, "<"); }
bool TLe(Interpreter& in, const Value& v, CallArgs& call) { return CompareTest(in, v, call, "<="); }
bool TGt(Interpreter& in, const Value& v, CallArgs& call) { return CompareTest(in, v, call, ">"); }
bool TGe(Interpreter& in, const Value& v, CallArgs& call) { return CompareTest(in, v, call, ">="); }
bool TIn(Interpreter& in, const Value& v, CallArgs& call) {
    Args a(call, "in", {"seq"});
    return in.Contains(a.Or(0, Value()), v);
}
bool TLower(Interpreter&, const Value& v, CallArgs&) { return PyIsLower(ToPyStr(v)); }
bool TUpper(Interpreter&, const Value& v, CallArgs&) { return PyIsUpper(ToPyStr(v)); }
bool TSameAs(Interpreter&, const Value& v, CallArgs& call) {
    Args a(call, "sameas", {"other"});
    const Value other = a.Or(0, Value());
    if (v.kind() != other.kind()) return false;
    switch (v.kind()) {
        case Value::Kind::kNone:
            return true;
        case Value::Kind::kBool:
            return v.bool_value() == other.bool_value();
        case Value::Kind::kList:
            return v.list_ptr() == other.list_ptr();
        case Value::Kind::kDict:
            return v.dict_ptr() == other.dict_ptr();
        case Value::Kind::kObject:
            return v.object() == other.object();
        case Value::Kind::kCallable:
            return v.callable() == other.callable();
        default:
            RuntimeError("the 'sameas' test on strings and numbers is not supported by this renderer");
    }
}
bool TFilter(Interpreter&, const Value& v, CallArgs&) { return v.is_string() && FindFilter(v.str()) != nullptr; }
bool TTest(Interpreter&, const Value& v, CallArgs&) { return v.is_string() && FindTest(v.str()) != nullptr; }

constexpr TestDef kTests[] = {
    {"!=", TNe},
    {"<", TLt},
    {"<=", TLe},
    {"==", TEq},
    {">", TGt},
    {">=", TGe},
    {"boolean", TBoolean},
    {"callable", TCallable},
    {"defined", TDefined},
    {"divisibleby", TDivisibleBy},
    {"eq", TEq},
    {"equalto", TEq},
    {"escaped", TEscaped},
    {"even", TEven},
    {"false", TFalse},
    {"filter", TFilter},
    {"float", TFloat},
    {"ge", TGe},
    {"greaterthan", TGt},
    {"gt", TGt},
    {"in", TIn},
    {"integer", TInteger},
    {"iterable", TIterable},
    {"le", TLe},
    {"lessthan", TLt},
    {"lower", TLower},
    {"lt", TLt},
    {"mapping", TMapping},
    {"ne", TNe},
    {"none", TNone},
    {"number", TNumber},
    {"odd", TOdd},
    {"sameas", TSameAs},
    {"sequence", TSequence},
    {"string", TString},
    {"test", TTest},
    {"true", TTrue},
    {"undefined", TUndefined},
    {"upper", TUpper},
};

// ---- globals ----

std::shared_ptr<Callable> Builtin(const char* name, std::function<Value(Interpreter&, CallArgs&)> fn) {
    auto c = std::make_shared<Callable>();
    c->name = name;
    c->fn = std::move(fn);
    return c;
}

Value GRange(Interpreter& in, CallArgs& call) {
    if (!call.kwargs.empty()) RuntimeError("range() takes no keyword arguments");
    if (call.args.empty() || call.args.size() > 3) RuntimeError("range expected 1 to 3 arguments");
    for (const Value& v : call.args) {
        if (!v.is_integral())
            RuntimeError(std::string("range(): '") + TypeName(v) + "' object cannot be interpreted as an integer");
    }
    int64_t start = 0, stop, step = 1;
    if (call.args.size() == 1) {
        stop = call.args[0].int_value();
    } else {
        start = call.args[0].int_value();
        stop = call.args[1].int_value();
        if (call.args.size() == 3) step = call.args[2].int_value();
    }
    if (step == 0) RuntimeError("range() arg 3 must not be zero");
    // Jinja's sandbox refuses ranges of more than 100000 items.
    const long double count_ld = step > 0
                                     ? (stop > start ? (static_cast<long double>(stop) - start + step - 1) / step : 0)
                                     : (start > stop ? (static_cast<long double>(start) - stop - step - 1) / -step : 0);
    const int64_t count = static_cast<int64_t>(count_ld);
    if (count > 100000) RuntimeError("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
    in.CountIterations(count);
    std::vector<Value> items;
    items.reserve(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) items.emplace_back(start + i * step);
    return in.MakeList(std::move(items));
}

Value GDict(Interpreter& in, CallArgs& call) {
    Dict d;
    if (call.args.size() > 1) RuntimeError("dict expected at most 1 argument");
    if (call.args.size() == 1) {
        const Value& src = call.args[0];
        if (src.is_dict()) {
            d = src.dict();
        } else {
            for (const Value& pair : in.Iterate(src)) {
                if (!pair.is_list() || pair.list().items.size() != 2) {
                    RuntimeError("dictionary update sequence element has the wrong length; 2 is required");
                }
                d.Set(pair.list().items[0], pair.list().items[1]);
            }
        }
    }
    for (auto& [k, v] : call.kwargs) d.Set(Value(k), v);
    return Value::MakeDict(std::move(d));
}

Value GNamespace(Interpreter& in, CallArgs& call) {
    auto ns = in.NewNamespace();
    if (call.args.size() > 1) RuntimeError("namespace() takes at most 1 positional argument");
    if (call.args.size() == 1) {
        const Value& src = call.args[0];
        if (!src.is_dict()) RuntimeError("namespace() takes a mapping as its positional argument");
        for (const auto& [k, v] : src.dict().entries()) ns->attrs.Set(k, v);
    }
    for (auto& [k, v] : call.kwargs) ns->attrs.Set(Value(k), v);
    return Value::MakeObject(ns);
}

Value GRaiseException(Interpreter&, CallArgs& call) {
    Args a(call, "raise_exception", {"message"});
    Fail(Error::Kind::kRaised, a.Given(0) ? ToPyStr(a.Get(0)) : "");
}

Value GStrftimeNow(Interpreter& in, CallArgs& call) {
    Args a(call, "strftime_now", {"format"});
    const std::string fmt = a.Str(0, "");
    std::tm tm{};
    if (in.options().now) {
        tm = in.options().now();
    } else {
        const std::time_t t = std::time(nullptr);
        localtime_r(&t, &tm);
    }
    if (fmt.empty()) return Value("");
    std::string buf(fmt.size() * 8 + 64, '\0');
    const size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &tm);
    if (n == 0) RuntimeError("strftime_now: the format produced no output or is too long");
    buf.resize(n);
    return Value(std::move(buf));
}

}  // namespace

const FilterDef* FindFilter(std::string_view name) {
    for (const FilterDef& f : kFilters) {
        if (name == f.name) return &f;
    }
    return nullptr;
}

const TestDef* FindTest(std::string_view name) {
    for (const TestDef& t : kTests) {
        if (name == t.name) return &t;
    }
    return nullptr;
}

void AddGlobals(Dict* globals) {
    globals->Set(Value("range"), Value::MakeCallable(Builtin("range", GRange)));
    globals->Set(Value("dict"), Value::MakeCallable(Builtin("dict", GDict)));
    globals->Set(Value("namespace"), Value::MakeCallable(Builtin("namespace", GNamespace)));
    globals->Set(Value("raise_exception"), Value::MakeCallable(Builtin("raise_exception", GRaiseException)));
    globals->Set(Value("strftime_now"), Value::MakeCallable(Builtin("strftime_now", GStrftimeNow)));
}

bool IsMethodName(const Value& self, const std::string& name) {
    if (self.is_string()) return StrMethods().count(name) > 0;
    if (self.is_dict()) return DictMethods().count(name) > 0;
    if (self.is_list()) return self.list().tuple ? (name == "index" || name == "count") : ListMethods().count(name) > 0;
    return false;
}

Value Interpreter::CallMethod(const Value& self, const std::string& name, CallArgs& args) {
    if (self.is_string()) return StrMethod(*this, self, name, args);
    if (self.is_dict()) return DictMethod(*this, self, name, args);
    if (self.is_list()) return ListMethod(*this, self, name, args);
    RuntimeError("no method " + name);
}

}  // namespace uniattn::jinja::internal
