// The evaluator: Jinja2's runtime semantics for the AST. Scopes follow Jinja's: `set` at the top level
// writes the template's context; every for-loop iteration, macro call and call/filter/set block body gets
// a fresh scope whose assignments vanish when it ends (namespace() objects are how state crosses them);
// `if` opens no scope. Macros see their defining scope as it is when they are called.
#include <algorithm>
#include <climits>
#include <cmath>

#include "server/jinja/internal.h"

namespace uniattn::jinja {

namespace internal {

const Value* Interpreter::Frame::Find(const std::string& name) const {
    for (const auto& [k, v] : vars) {
        if (k == name) return &v;
    }
    return nullptr;
}

void Interpreter::Frame::Set(const std::string& name, Value v) {
    for (auto& [k, existing] : vars) {
        if (k == name) {
            existing = std::move(v);
            return;
        }
    }
    vars.emplace_back(name, std::move(v));
}

Interpreter::Interpreter(const RenderOptions& options) : options_(options) { AddGlobals(&globals_); }

Interpreter::~Interpreter() {
    for (auto& ns : namespaces_) ns->attrs = Dict();
    if (root_) root_->vars.clear();
}

std::string Interpreter::Render(const Body& body, const Value& context) {
    root_ = std::make_shared<Frame>();
    if (context.is_dict()) {
        for (const auto& [k, v] : context.dict().entries()) {
            if (k.is_string()) root_->Set(k.str(), v);
        }
    }
    std::string out;
    Exec(body, root_, &out);
    return out;
}

void Interpreter::CountIterations(int64_t n) {
    iterations_ += n;
    if (iterations_ > options_.limits.max_iterations) {
        Fail(Error::Kind::kLimitExceeded,
             "the template exceeded " + std::to_string(options_.limits.max_iterations) + " loop iterations");
    }
}

void Interpreter::CheckSize(size_t bytes) const {
    if (static_cast<int64_t>(bytes) > options_.limits.max_output_bytes) {
        Fail(Error::Kind::kLimitExceeded,
             "the template's output exceeded " + std::to_string(options_.limits.max_output_bytes) + " bytes");
    }
}

void Interpreter::Append(std::string* out, std::string_view text) const {
    CheckSize(out->size() + text.size());
    out->append(text);
}

Value Interpreter::MakeList(std::vector<Value> items, bool tuple) const {
    Value v = Value::MakeList(std::move(items), tuple);
    if (v.depth() > options_.limits.max_value_depth) {
        Fail(Error::Kind::kLimitExceeded,
             "lists and dicts nest deeper than " + std::to_string(options_.limits.max_value_depth) + " levels");
    }
    return v;
}

Value Interpreter::MakeGenerator(std::vector<Value> items) const {
    Value v = MakeList(std::move(items));
    v.list_ptr()->view = kGenerator;
    return v;
}

std::shared_ptr<Object> Interpreter::NewNamespace() {
    auto ns = std::make_shared<Object>();
    ns->type = Object::Type::kNamespace;
    namespaces_.push_back(ns);
    return ns;
}

void Interpreter::UndefinedError(const Value& v) const { RuntimeError(v.str().empty() ? "undefined value" : v.str()); }

Value Interpreter::Lookup(const std::string& name, const FramePtr& frame) const {
    for (const Frame* f = frame.get(); f; f = f->parent.get()) {
        if (const Value* v = f->Find(name)) return *v;
    }
    if (const Value* v = globals_.Find(std::string_view(name))) return *v;
    return Value::Undefined("'" + name + "' is undefined");
}

// ---- attribute and item access ----

Value Interpreter::GetAttr(const Value& obj, const std::string& name) {
    if (obj.is_undefined()) UndefinedError(obj);
    if (!name.empty() && name[0] == '_') {
        return Value::Undefined("access to attribute '" + name + "' of '" + TypeName(obj) + "' object is unsafe");
    }
    if ((obj.is_string() || obj.is_dict() || obj.is_list()) && IsMethodName(obj, name)) {
        auto c = std::make_shared<Callable>();
        c->name = std::string(TypeName(obj)) + "." + name;
        Value self = obj;
        c->fn = [self, name](Interpreter& in, CallArgs& args) { return in.CallMethod(self, name, args); };
        return Value::MakeCallable(std::move(c));
    }
    if (obj.is_dict()) {
        if (const Value* v = obj.dict().Find(std::string_view(name))) return *v;
        return Value::Undefined("'dict object' has no attribute '" + name + "'");
    }
    if (obj.is_object()) {
        if (const Value* v = obj.object()->attrs.Find(std::string_view(name))) return *v;
        return Value::Undefined("the object has no attribute '" + name + "'");
    }
    return Value::Undefined("'" + std::string(TypeName(obj)) + " object' has no attribute '" + name + "'");
}

Value Interpreter::GetItem(const Value& obj, const Value& key) {
    if (obj.is_undefined()) UndefinedError(obj);
    if (obj.is_dict()) {
        if (!key.is_list() && !key.is_dict()) {
            if (const Value* v = obj.dict().Find(key)) return *v;
        }
        if (key.is_string()) return GetAttr(obj, key.str());
        return Value::Undefined("'dict object' has no attribute " + ToPyRepr(key));
    }
    if (obj.is_list() && obj.list().view) {
        return Value::Undefined(std::string("'") + obj.list().view + "' object is not subscriptable");
    }
    if ((obj.is_list() || obj.is_string()) && key.is_integral()) {
        int64_t i = key.int_value();
        if (obj.is_list()) {
            const auto& items = obj.list().items;
            const int64_t n = static_cast<int64_t>(items.size());
            if (i < 0) i += n;
            if (i < 0 || i >= n)
                return Value::Undefined(std::string(TypeName(obj)) + " object has no element " +
                                        std::to_string(key.int_value()));
            return items[static_cast<size_t>(i)];
        }
        const std::string& s = obj.str();
        if (IsAsciiOnly(s)) {
            const int64_t n = static_cast<int64_t>(s.size());
            if (i < 0) i += n;
            if (i < 0 || i >= n)
                return Value::Undefined("str object has no element " + std::to_string(key.int_value()));
            Value c(std::string(1, s[static_cast<size_t>(i)]));
            return obj.is_markup() ? Value::Markup(c.str()) : c;
        }
        const std::u32string u = ToU32(s);
        const int64_t n = static_cast<int64_t>(u.size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value::Undefined("str object has no element " + std::to_string(key.int_value()));
        std::string c;
        AppendUtf8(u[static_cast<size_t>(i)], &c);
        return obj.is_markup() ? Value::Markup(c) : Value(c);
    }
    if (key.is_string()) return GetAttr(obj, key.str());
    return Value::Undefined(std::string("'") + TypeName(obj) + " object' has no element " + ToPyRepr(key));
}

namespace {

// Python's slice.indices().
void SliceIndices(int64_t n, const Value& start_v, const Value& stop_v, const Value& step_v, int64_t* start,
                  int64_t* stop, int64_t* step) {
    auto as_int = [](const Value& v, const char* what) -> int64_t {
        if (!v.is_integral()) {
            RuntimeError(std::string("slice ") + what + " must be an integer or None, not " + TypeName(v));
        }
        return v.int_value();
    };
    *step = step_v.is_none() || step_v.is_undefined() ? 1 : as_int(step_v, "step");
    if (*step == 0) RuntimeError("slice step cannot be zero");
    const int64_t lower = *step < 0 ? -1 : 0;
    const int64_t upper = *step < 0 ? n - 1 : n;
    auto clamp = [&](const Value& v, int64_t dflt, const char* what) {
        if (v.is_none() || v.is_undefined()) return dflt;
        int64_t i = as_int(v, what);
        if (i < 0) {
            i += n;
            if (i < lower) i = lower;
        } else if (i > upper) {
            i = upper;
        }
        return i;
    };
    *start = clamp(start_v, *step < 0 ? upper : lower, "start");
    *stop = clamp(stop_v, *step < 0 ? lower : upper, "stop");
}

template <typename Seq>
Seq SliceSeq(const Seq& s, int64_t start, int64_t stop, int64_t step) {
    Seq out;
    if (step > 0) {
        for (int64_t i = start; i < stop; i += step) out.push_back(s[static_cast<size_t>(i)]);
    } else {
        for (int64_t i = start; i > stop; i += step) out.push_back(s[static_cast<size_t>(i)]);
    }
    return out;
}

bool CheckedAdd(int64_t a, int64_t b, int64_t* out) { return !__builtin_add_overflow(a, b, out); }
bool CheckedSub(int64_t a, int64_t b, int64_t* out) { return !__builtin_sub_overflow(a, b, out); }
bool CheckedMul(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

[[noreturn]] void Overflow() { RuntimeError("integer overflow (this renderer's integers are 64-bit)"); }

[[noreturn]] void UnsupportedOperands(const std::string& op, const Value& a, const Value& b) {
    RuntimeError("unsupported operand type(s) for " + op + ": '" + TypeName(a) + "' and '" + TypeName(b) + "'");
}

double PyFloorDiv(double a, double b) {
    const double mod = std::fmod(a, b);
    double div = (a - mod) / b;
    if (mod != 0 && ((b < 0) != (mod < 0))) div -= 1.0;
    if (div != 0) {
        const double floordiv = std::floor(div);
        if (div - floordiv > 0.5) return floordiv + 1.0;
        return floordiv;
    }
    return std::copysign(0.0, a / b);
}

double PyFloatMod(double a, double b) {
    double mod = std::fmod(a, b);
    if (mod != 0) {
        if ((b < 0) != (mod < 0)) mod += b;
    } else {
        mod = std::copysign(0.0, b);
    }
    return mod;
}

}  // namespace

// ---- operators ----

Value Interpreter::BinaryOp(const std::string& op, const Value& a, const Value& b) {
    if (a.is_undefined()) UndefinedError(a);
    if (b.is_undefined()) UndefinedError(b);
    const bool nums = a.is_number() && b.is_number();
    const bool ints = a.is_integral() && b.is_integral();
    if (op == "+") {
        if (ints) {
            int64_t r;
            if (!CheckedAdd(a.int_value(), b.int_value(), &r)) Overflow();
            return Value(r);
        }
        if (nums) return Value(a.number() + b.number());
        if (a.is_string() && b.is_string()) {
            if (a.is_markup() || b.is_markup()) {
                std::string s =
                    (a.is_markup() ? a.str() : HtmlEscape(a.str())) + (b.is_markup() ? b.str() : HtmlEscape(b.str()));
                CheckSize(s.size());
                return Value::Markup(std::move(s));
            }
            CheckSize(a.str().size() + b.str().size());
            return Value(a.str() + b.str());
        }
        if (a.is_list() && b.is_list() && a.list().tuple == b.list().tuple && !a.list().view && !b.list().view) {
            std::vector<Value> items = a.list().items;
            items.insert(items.end(), b.list().items.begin(), b.list().items.end());
            CountIterations(static_cast<int64_t>(items.size()));
            return MakeList(std::move(items), a.list().tuple);
        }
        UnsupportedOperands(op, a, b);
    }
    if (op == "-") {
        if (ints) {
            int64_t r;
            if (!CheckedSub(a.int_value(), b.int_value(), &r)) Overflow();
            return Value(r);
        }
        if (nums) return Value(a.number() - b.number());
        UnsupportedOperands(op, a, b);
    }
    if (op == "*") {
        if (ints) {
            int64_t r;
            if (!CheckedMul(a.int_value(), b.int_value(), &r)) Overflow();
            return Value(r);
        }
        if (nums) return Value(a.number() * b.number());
        const Value* seq = nullptr;
        const Value* count = nullptr;
        if ((a.is_string() || (a.is_list() && !a.list().view)) && b.is_integral()) {
            seq = &a;
            count = &b;
        } else if ((b.is_string() || (b.is_list() && !b.list().view)) && a.is_integral()) {
            seq = &b;
            count = &a;
        }
        if (!seq) UnsupportedOperands(op, a, b);
        const int64_t n = std::max<int64_t>(0, count->int_value());
        if (seq->is_string()) {
            if (n > 0 && seq->str().size() > 0)
                CheckSize(seq->str().size() * static_cast<size_t>(std::min<int64_t>(n, INT32_MAX)));
            std::string s;
            for (int64_t i = 0; i < n; ++i) s += seq->str();
            return seq->is_markup() ? Value::Markup(std::move(s)) : Value(std::move(s));
        }
        const size_t len = seq->list().items.size();
        if (len > 0) CountIterations(static_cast<int64_t>(len) * std::min<int64_t>(n, INT32_MAX));
        std::vector<Value> items;
        for (int64_t i = 0; i < n; ++i) items.insert(items.end(), seq->list().items.begin(), seq->list().items.end());
        return MakeList(std::move(items), seq->list().tuple);
    }
    if (op == "/") {
        if (!nums) UnsupportedOperands(op, a, b);
        if (b.number() == 0) RuntimeError("division by zero");
        return Value(a.number() / b.number());
    }
    if (op == "//") {
        if (!nums) UnsupportedOperands(op, a, b);
        if (ints) {
            const int64_t x = a.int_value(), y = b.int_value();
            if (y == 0) RuntimeError("integer division or modulo by zero");
            if (x == INT64_MIN && y == -1) Overflow();
            int64_t q = x / y;
            if ((x % y != 0) && ((x < 0) != (y < 0))) --q;
            return Value(q);
        }
        if (b.number() == 0) RuntimeError("float floor division by zero");
        return Value(PyFloorDiv(a.number(), b.number()));
    }
    if (op == "%") {
        if (a.is_string()) RuntimeError("printf-style string formatting ('%') is not supported by this renderer");
        if (!nums) UnsupportedOperands(op, a, b);
        if (ints) {
            const int64_t x = a.int_value(), y = b.int_value();
            if (y == 0) RuntimeError("integer division or modulo by zero");
            if (y == -1) return Value(static_cast<int64_t>(0));
            int64_t m = x % y;
            if (m != 0 && ((m < 0) != (y < 0))) m += y;
            return Value(m);
        }
        if (b.number() == 0) RuntimeError("float modulo");
        return Value(PyFloatMod(a.number(), b.number()));
    }
    if (op == "**") {
        if (!nums) UnsupportedOperands(op, a, b);
        if (ints && b.int_value() >= 0) {
            int64_t base = a.int_value(), e = b.int_value(), r = 1;
            while (e > 0) {
                if (e & 1) {
                    if (!CheckedMul(r, base, &r)) Overflow();
                }
                e >>= 1;
                if (e > 0 && !CheckedMul(base, base, &base)) Overflow();
            }
            return Value(r);
        }
        const double x = a.number(), y = b.number();
        if (x == 0 && y < 0) RuntimeError("0.0 cannot be raised to a negative power");
        if (x < 0 && std::floor(y) != y) RuntimeError("a negative number raised to a fractional power is complex");
        return Value(std::pow(x, y));
    }
    RuntimeError("unknown operator " + op);
}

bool Interpreter::Compare(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return PyEquals(a, b);
    if (op == "!=") return !PyEquals(a, b);
    if (op == "in") return Contains(b, a);
    if (op == "notin") return !Contains(b, a);
    if (a.is_undefined()) UndefinedError(a);
    if (b.is_undefined()) UndefinedError(b);
    int cmp = 0;
    if (a.is_number() && b.is_number()) {
        if (a.is_float() || b.is_float()) {
            const double x = a.number(), y = b.number();
            if (std::isnan(x) || std::isnan(y)) return false;
            cmp = x < y ? -1 : x > y ? 1 : 0;
        } else {
            cmp = a.int_value() < b.int_value() ? -1 : a.int_value() > b.int_value() ? 1 : 0;
        }
    } else if (a.is_string() && b.is_string()) {
        cmp = a.str().compare(b.str());  // UTF-8 byte order is code point order
        cmp = cmp < 0 ? -1 : cmp > 0 ? 1 : 0;
    } else if (a.is_list() && b.is_list() && a.list().tuple == b.list().tuple && !a.list().view && !b.list().view) {
        const auto& x = a.list().items;
        const auto& y = b.list().items;
        size_t i = 0;
        while (i < x.size() && i < y.size() && PyEquals(x[i], y[i])) ++i;
        if (i < x.size() && i < y.size()) return Compare(op, x[i], y[i]);
        cmp = x.size() < y.size() ? -1 : x.size() > y.size() ? 1 : 0;
    } else {
        RuntimeError("'" + op + "' not supported between instances of '" + TypeName(a) + "' and '" + TypeName(b) + "'");
    }
    if (op == "<") return cmp < 0;
    if (op == "<=") return cmp <= 0;
    if (op == ">") return cmp > 0;
    if (op == ">=") return cmp >= 0;
    RuntimeError("unknown comparison " + op);
}

bool Interpreter::Contains(const Value& container, const Value& item) {
    switch (container.kind()) {
        case Value::Kind::kUndefined:
            return false;  // Jinja's Undefined iterates as empty
        case Value::Kind::kString:
            if (!item.is_string()) {
                if (item.is_undefined()) UndefinedError(item);
                RuntimeError(std::string("'in <string>' requires string as left operand, not ") + TypeName(item));
            }
            return container.str().find(item.str()) != std::string::npos;
        case Value::Kind::kList:
            for (const Value& v : container.list().items) {
                if (PyEquals(v, item)) return true;
            }
            return false;
        case Value::Kind::kDict:
            if (item.is_list() && !item.list().tuple) RuntimeError("unhashable type: 'list'");
            if (item.is_dict()) RuntimeError("unhashable type: 'dict'");
            return container.dict().Find(item) != nullptr;
        default:
            RuntimeError(std::string("argument of type '") + TypeName(container) + "' is not iterable");
    }
}

std::vector<Value> Interpreter::Iterate(const Value& v) {
    switch (v.kind()) {
        case Value::Kind::kUndefined:
            return {};
        case Value::Kind::kList:
            if (v.list().view == kGenerator) {
                // A generator iterates once.
                std::vector<Value> items = std::move(v.list_ptr()->items);
                v.list_ptr()->items.clear();
                return items;
            }
            return v.list().items;
        case Value::Kind::kDict: {
            std::vector<Value> keys;
            keys.reserve(v.dict().size());
            for (const auto& [k, item] : v.dict().entries()) keys.push_back(k);
            return keys;
        }
        case Value::Kind::kString: {
            std::vector<Value> chars;
            const std::string& s = v.str();
            for (size_t i = 0; i < s.size();) {
                const size_t start = i;
                NextCodePoint(s, &i);
                chars.emplace_back(s.substr(start, i - start));
            }
            return chars;
        }
        default:
            RuntimeError(std::string("'") + TypeName(v) + "' object is not iterable");
    }
}

// ---- calls ----

Value Interpreter::Call(const Value& callee, CallArgs& args, const std::string& what) {
    if (callee.is_undefined()) UndefinedError(callee);
    if (!callee.is_callable()) RuntimeError("'" + what + "' is not callable (it is a " + TypeName(callee) + ")");
    return callee.callable()->fn(*this, args);
}

Value Interpreter::MakeMacro(const MacroDef* def, const FramePtr& closure) {
    auto c = std::make_shared<Callable>();
    c->name = def->name;
    std::weak_ptr<Frame> weak = closure;
    c->fn = [def, weak](Interpreter& in, CallArgs& args) {
        FramePtr frame = weak.lock();
        if (!frame) RuntimeError("macro '" + def->name + "' was called after its scope ended");
        return in.CallMacro(def, frame, args);
    };
    return Value::MakeCallable(std::move(c));
}

Value Interpreter::CallMacro(const MacroDef* def, const FramePtr& closure, CallArgs& args) {
    if (call_depth_ >= options_.limits.max_call_depth) {
        Fail(Error::Kind::kLimitExceeded,
             "macro calls nest deeper than " + std::to_string(options_.limits.max_call_depth) + " levels");
    }
    struct DepthGuard {
        int* d;
        explicit DepthGuard(int* depth) : d(depth) { ++*d; }
        ~DepthGuard() { --*d; }
    } guard(&call_depth_);

    auto frame = std::make_shared<Frame>();
    frame->parent = closure;
    const size_t num_params = def->params.size();
    std::vector<bool> bound(num_params, false);
    std::vector<Value> varargs;
    for (size_t i = 0; i < args.args.size(); ++i) {
        if (i < num_params) {
            frame->Set(def->params[i], args.args[i]);
            bound[i] = true;
        } else if (def->uses_varargs) {
            varargs.push_back(args.args[i]);
        } else {
            RuntimeError("macro '" + def->name + "' takes not more than " + std::to_string(num_params) +
                         " argument(s)");
        }
    }
    Dict kwargs;
    Value caller;
    for (auto& [name, value] : args.kwargs) {
        if (name == "caller" && def->uses_caller) {
            caller = value;
            continue;
        }
        auto it = std::find(def->params.begin(), def->params.end(), name);
        if (it != def->params.end()) {
            const size_t idx = static_cast<size_t>(it - def->params.begin());
            if (bound[idx]) RuntimeError("macro '" + def->name + "' got multiple values for argument '" + name + "'");
            frame->Set(name, value);
            bound[idx] = true;
        } else if (def->uses_kwargs) {
            kwargs.Set(Value(name), value);
        } else {
            RuntimeError("macro '" + def->name + "' takes no keyword argument '" + name + "'");
        }
    }
    const size_t first_default = num_params - def->defaults.size();
    for (size_t i = 0; i < num_params; ++i) {
        if (bound[i]) continue;
        if (i >= first_default) {
            frame->Set(def->params[i], Eval(*def->defaults[i - first_default], frame));
        } else {
            frame->Set(def->params[i], Value::Undefined("parameter '" + def->params[i] + "' was not provided"));
        }
    }
    if (def->uses_varargs) frame->Set("varargs", MakeList(std::move(varargs), true));
    if (def->uses_kwargs) frame->Set("kwargs", Value::MakeDict(std::move(kwargs)));
    if (def->uses_caller && !caller.is_undefined()) frame->Set("caller", caller);
    std::string out;
    Exec(def->body, frame, &out);
    return Value(std::move(out));
}

// ---- expressions ----

void Interpreter::EvalCallArgs(const Expr& e, const FramePtr& frame, CallArgs* args) {
    for (const ExprPtr& a : e.items) args->args.push_back(Eval(*a, frame));
    for (const Keyword& kw : e.kwargs) args->kwargs.emplace_back(kw.name, Eval(*kw.value, frame));
}

Value Interpreter::ApplyFilter(const FilterDef* filter, Value input, CallArgs& args) {
    return filter->fn(*this, input, args);
}

bool Interpreter::ApplyTest(const TestDef* test, const Value& value, CallArgs& args) {
    return test->fn(*this, value, args);
}

Value Interpreter::EvalFilterChain(const Expr& e, const FramePtr& frame, const Value* block_input) {
    Value input;
    if (e.a) {
        input = e.a->kind == Expr::Kind::kFilter ? EvalFilterChain(*e.a, frame, block_input) : Eval(*e.a, frame);
    } else if (block_input) {
        input = *block_input;
    }
    if (!e.resolved) RuntimeError(UnresolvedMessage(e));
    CallArgs args;
    EvalCallArgs(e, frame, &args);
    return ApplyFilter(static_cast<const FilterDef*>(e.resolved), std::move(input), args);
}

Value Interpreter::Eval(const Expr& e, const FramePtr& frame) {
    try {
        switch (e.kind) {
            case Expr::Kind::kConst:
                return e.value;
            case Expr::Kind::kName:
                return Lookup(e.name, frame);
            case Expr::Kind::kList:
            case Expr::Kind::kTuple: {
                std::vector<Value> items;
                items.reserve(e.items.size());
                for (const ExprPtr& item : e.items) items.push_back(Eval(*item, frame));
                return MakeList(std::move(items), e.kind == Expr::Kind::kTuple);
            }
            case Expr::Kind::kDict: {
                Dict d;
                for (size_t i = 0; i + 1 < e.items.size(); i += 2) {
                    Value k = Eval(*e.items[i], frame);
                    if ((k.is_list() && !k.list().tuple) || k.is_dict()) {
                        RuntimeError(std::string("unhashable type: '") + TypeName(k) + "'");
                    }
                    d.Set(std::move(k), Eval(*e.items[i + 1], frame));
                }
                Value v = Value::MakeDict(std::move(d));
                if (v.depth() > options_.limits.max_value_depth) {
                    Fail(Error::Kind::kLimitExceeded, "lists and dicts nest too deeply");
                }
                return v;
            }
            case Expr::Kind::kGetAttr:
                return GetAttr(Eval(*e.a, frame), e.name);
            case Expr::Kind::kGetItem:
                return GetItem(Eval(*e.a, frame), Eval(*e.b, frame));
            case Expr::Kind::kSlice: {
                Value obj = Eval(*e.a, frame);
                if (obj.is_undefined()) UndefinedError(obj);
                Value parts[3];
                for (int i = 0; i < 3; ++i) {
                    if (e.items[i]) parts[i] = Eval(*e.items[i], frame);
                }
                int64_t start, stop, step;
                if (obj.is_list() && !obj.list().view) {
                    const auto& items = obj.list().items;
                    SliceIndices(static_cast<int64_t>(items.size()), parts[0], parts[1], parts[2], &start, &stop,
                                 &step);
                    return MakeList(SliceSeq(items, start, stop, step), obj.list().tuple);
                }
                if (obj.is_string()) {
                    const std::u32string u = ToU32(obj.str());
                    SliceIndices(static_cast<int64_t>(u.size()), parts[0], parts[1], parts[2], &start, &stop, &step);
                    std::string s = FromU32(SliceSeq(u, start, stop, step));
                    return obj.is_markup() ? Value::Markup(std::move(s)) : Value(std::move(s));
                }
                return Value::Undefined(std::string("'") + TypeName(obj) + "' object is not subscriptable");
            }
            case Expr::Kind::kCall: {
                Value callee = Eval(*e.a, frame);
                CallArgs args;
                EvalCallArgs(e, frame, &args);
                std::string what = e.a->kind == Expr::Kind::kName || e.a->kind == Expr::Kind::kGetAttr ? e.a->name : "";
                return Call(callee, args, what);
            }
            case Expr::Kind::kFilter:
                return EvalFilterChain(e, frame, nullptr);
            case Expr::Kind::kTest: {
                if (!e.resolved) RuntimeError(UnresolvedMessage(e));
                Value v = Eval(*e.a, frame);
                CallArgs args;
                EvalCallArgs(e, frame, &args);
                return Value(ApplyTest(static_cast<const TestDef*>(e.resolved), v, args));
            }
            case Expr::Kind::kNot:
                return Value(!Truthy(Eval(*e.a, frame)));
            case Expr::Kind::kNeg:
            case Expr::Kind::kPos: {
                Value v = Eval(*e.a, frame);
                if (v.is_undefined()) UndefinedError(v);
                if (!v.is_number()) {
                    RuntimeError(std::string("bad operand type for unary ") + (e.kind == Expr::Kind::kNeg ? "-" : "+") +
                                 ": '" + TypeName(v) + "'");
                }
                if (e.kind == Expr::Kind::kPos) return v.is_bool() ? Value(v.int_value()) : v;
                if (v.is_float()) return Value(-v.number());
                if (v.int_value() == INT64_MIN) Overflow();
                return Value(-v.int_value());
            }
            case Expr::Kind::kBinary:
                return BinaryOp(e.name, Eval(*e.a, frame), Eval(*e.b, frame));
            case Expr::Kind::kAnd: {
                Value a = Eval(*e.a, frame);
                return Truthy(a) ? Eval(*e.b, frame) : a;
            }
            case Expr::Kind::kOr: {
                Value a = Eval(*e.a, frame);
                return Truthy(a) ? a : Eval(*e.b, frame);
            }
            case Expr::Kind::kConcat: {
                std::string s;
                for (const ExprPtr& item : e.items) {
                    s += ToPyStr(Eval(*item, frame));
                    CheckSize(s.size());
                }
                return Value(std::move(s));
            }
            case Expr::Kind::kCompare: {
                Value left = Eval(*e.a, frame);
                for (size_t i = 0; i < e.ops.size(); ++i) {
                    Value right = Eval(*e.items[i], frame);
                    if (!Compare(e.ops[i], left, right)) return Value(false);
                    left = std::move(right);
                }
                return Value(true);
            }
            case Expr::Kind::kCondExpr:
                if (Truthy(Eval(*e.a, frame))) return Eval(*e.b, frame);
                if (e.c) return Eval(*e.c, frame);
                return Value::Undefined("the inline if expression evaluated to false and no else section was defined");
        }
    } catch (JinjaException& ex) {
        if (ex.error.line == 0 && ex.error.kind != Error::Kind::kRaised) {
            ex.error.line = e.line;
            ex.error.column = e.column;
        }
        throw;
    }
    RuntimeError("unknown expression");
}

// ---- statements ----

Interpreter::Flow Interpreter::Exec(const Body& body, const FramePtr& frame, std::string* out) {
    for (const NodePtr& n : body) {
        const Flow flow = ExecNode(*n, frame, out);
        if (flow != Flow::kNormal) return flow;
    }
    return Flow::kNormal;
}

void Interpreter::BindTargets(const std::vector<std::string>& targets, bool is_tuple, const Value& item, Frame* frame) {
    if (!is_tuple) {
        frame->Set(targets[0], item);
        return;
    }
    std::vector<Value> parts;
    if (item.is_list()) {
        parts = item.list().items;
    } else if (item.is_string() || item.is_dict()) {
        parts = Iterate(item);
    } else {
        if (item.is_undefined()) UndefinedError(item);
        RuntimeError(std::string("cannot unpack non-iterable ") + TypeName(item) + " object");
    }
    if (parts.size() != targets.size()) {
        RuntimeError(parts.size() > targets.size()
                         ? "too many values to unpack (expected " + std::to_string(targets.size()) + ")"
                         : "not enough values to unpack (expected " + std::to_string(targets.size()) + ", got " +
                               std::to_string(parts.size()) + ")");
    }
    for (size_t i = 0; i < targets.size(); ++i) frame->Set(targets[i], parts[i]);
}

void Interpreter::Assign(const Node& n, const FramePtr& frame, Value value) {
    if (!n.ns_name.empty()) {
        Value ns = Lookup(n.ns_name, frame);
        if (!ns.is_object() || ns.object()->type != Object::Type::kNamespace) {
            RuntimeError("cannot assign attribute on non-namespace object '" + n.ns_name + "'");
        }
        ns.object()->attrs.Set(Value(n.ns_attr), std::move(value));
        return;
    }
    BindTargets(n.targets, n.target_is_tuple, value, frame.get());
}

void Interpreter::ExecFor(const Node& n, const FramePtr& frame, std::string* out) {
    std::vector<Value> items = Iterate(Eval(*n.expr, frame));
    if (n.cond) {
        std::vector<Value> kept;
        for (Value& item : items) {
            CountIterations(1);
            auto test_frame = std::make_shared<Frame>();
            test_frame->parent = frame;
            BindTargets(n.targets, n.target_is_tuple, item, test_frame.get());
            if (Truthy(Eval(*n.cond, test_frame))) kept.push_back(std::move(item));
        }
        items = std::move(kept);
    }
    if (items.empty()) {
        auto else_frame = std::make_shared<Frame>();
        else_frame->parent = frame;
        Exec(n.else_body, else_frame, out);
        return;
    }
    const int64_t length = static_cast<int64_t>(items.size());
    for (int64_t i = 0; i < length; ++i) {
        CountIterations(1);
        auto iter_frame = std::make_shared<Frame>();
        iter_frame->parent = frame;
        const Value& item = items[static_cast<size_t>(i)];
        auto loop = std::make_shared<Object>();
        loop->type = Object::Type::kLoop;
        Dict& a = loop->attrs;
        a.Set(Value("index"), Value(i + 1));
        a.Set(Value("index0"), Value(i));
        a.Set(Value("revindex"), Value(length - i));
        a.Set(Value("revindex0"), Value(length - i - 1));
        a.Set(Value("first"), Value(i == 0));
        a.Set(Value("last"), Value(i == length - 1));
        a.Set(Value("length"), Value(length));
        a.Set(Value("depth"), Value(1));
        a.Set(Value("depth0"), Value(0));
        a.Set(Value("previtem"),
              i > 0 ? items[static_cast<size_t>(i - 1)] : Value::Undefined("there is no previous item"));
        a.Set(Value("nextitem"),
              i + 1 < length ? items[static_cast<size_t>(i + 1)] : Value::Undefined("there is no next item"));
        auto cycle = std::make_shared<Callable>();
        cycle->name = "loop.cycle";
        cycle->fn = [i](Interpreter&, CallArgs& args) -> Value {
            if (args.args.empty()) RuntimeError("no items for cycling given");
            return args.args[static_cast<size_t>(i) % args.args.size()];
        };
        a.Set(Value("cycle"), Value::MakeCallable(std::move(cycle)));
        iter_frame->Set("loop", Value::MakeObject(std::move(loop)));
        BindTargets(n.targets, n.target_is_tuple, item, iter_frame.get());
        if (Exec(n.body, iter_frame, out) == Flow::kBreak) break;
    }
}

Interpreter::Flow Interpreter::ExecNode(const Node& n, const FramePtr& frame, std::string* out) {
    try {
        switch (n.kind) {
            case Node::Kind::kText:
                Append(out, n.text);
                return Flow::kNormal;
            case Node::Kind::kOutput: {
                Value v = Eval(*n.expr, frame);
                if (v.is_callable()) RuntimeError("printing a function is not supported by this renderer");
                Append(out, ToPyStr(v));
                return Flow::kNormal;
            }
            case Node::Kind::kIf:
                for (size_t i = 0; i < n.conds.size(); ++i) {
                    if (Truthy(Eval(*n.conds[i], frame))) return Exec(n.bodies[i], frame, out);
                }
                return Exec(n.else_body, frame, out);
            case Node::Kind::kFor:
                ExecFor(n, frame, out);
                return Flow::kNormal;
            case Node::Kind::kSet:
                Assign(n, frame, Eval(*n.expr, frame));
                return Flow::kNormal;
            case Node::Kind::kSetBlock: {
                auto inner = std::make_shared<Frame>();
                inner->parent = frame;
                std::string text;
                Exec(n.body, inner, &text);
                Value v(std::move(text));
                if (n.expr) v = EvalFilterChain(*n.expr, frame, &v);
                Assign(n, frame, std::move(v));
                return Flow::kNormal;
            }
            case Node::Kind::kMacro:
                frame->Set(n.macro->name, MakeMacro(n.macro.get(), frame));
                return Flow::kNormal;
            case Node::Kind::kCallBlock: {
                const Expr& call = *n.expr;
                Value callee = Eval(*call.a, frame);
                CallArgs args;
                EvalCallArgs(call, frame, &args);
                args.kwargs.emplace_back("caller", MakeMacro(n.macro.get(), frame));
                Append(out, ToPyStr(Call(callee, args, call.a->name)));
                return Flow::kNormal;
            }
            case Node::Kind::kFilterBlock: {
                auto inner = std::make_shared<Frame>();
                inner->parent = frame;
                std::string text;
                Exec(n.body, inner, &text);
                Value v(std::move(text));
                Append(out, ToPyStr(EvalFilterChain(*n.expr, frame, &v)));
                return Flow::kNormal;
            }
            case Node::Kind::kWith: {
                auto inner = std::make_shared<Frame>();
                inner->parent = frame;
                for (size_t i = 0; i < n.targets.size(); ++i) inner->Set(n.targets[i], Eval(*n.values[i], frame));
                return Exec(n.body, inner, out);
            }
            case Node::Kind::kScope: {
                auto inner = std::make_shared<Frame>();
                inner->parent = frame;
                return Exec(n.body, inner, out);
            }
            case Node::Kind::kBreak:
                return Flow::kBreak;
            case Node::Kind::kContinue:
                return Flow::kContinue;
        }
    } catch (JinjaException& ex) {
        if (ex.error.line == 0 && ex.error.kind != Error::Kind::kRaised) {
            ex.error.line = n.line;
            ex.error.column = n.column;
        }
        throw;
    }
    return Flow::kNormal;
}

}  // namespace internal

// ---- the public API ----

struct Template::Impl {
    internal::Body body;
};

Template::Template(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Template::~Template() = default;

std::unique_ptr<Template> Template::Parse(std::string_view source, Error* error) {
    try {
        auto impl = std::make_unique<Impl>();
        impl->body = internal::ParseTemplate(source);
        return std::unique_ptr<Template>(new Template(std::move(impl)));
    } catch (const internal::JinjaException& ex) {
        if (error) *error = ex.error;
    } catch (const std::bad_alloc&) {
        if (error) *error = Error{Error::Kind::kLimitExceeded, "out of memory while parsing the template", 0, 0};
    }
    return nullptr;
}

bool Template::Render(const Value& context, const RenderOptions& options, std::string* out, Error* error) const {
    try {
        internal::Interpreter interpreter(options);
        *out = interpreter.Render(impl_->body, context);
        return true;
    } catch (const internal::JinjaException& ex) {
        if (error) *error = ex.error;
    } catch (const std::bad_alloc&) {
        if (error) *error = Error{Error::Kind::kLimitExceeded, "out of memory while rendering the template", 0, 0};
    }
    return false;
}

}  // namespace uniattn::jinja
