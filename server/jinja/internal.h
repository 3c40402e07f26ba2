// Internals of the Jinja library shared by its sources: tokens, the AST, text helpers with Python's
// semantics, and the exception that carries an Error inside the library (never out of it: Template's
// methods catch it).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "server/jinja/jinja.h"

namespace uniattn::jinja {
namespace internal {
class Interpreter;
}

// ---- objects and callables ----

struct Object {
    enum class Type { kNamespace, kLoop };
    Type type = Type::kNamespace;
    Dict attrs;
};

struct CallArgs {
    std::vector<Value> args;
    std::vector<std::pair<std::string, Value>> kwargs;
};

struct Callable {
    std::string name;
    std::function<Value(internal::Interpreter&, CallArgs&)> fn;
};

}  // namespace uniattn::jinja

namespace uniattn::jinja::internal {

// Thrown inside the library only; Template::Parse and Template::Render turn it into an Error.
struct JinjaException {
    Error error;
};

[[noreturn]] void Fail(Error::Kind kind, std::string message, int line = 0, int column = 0);
[[noreturn]] inline void RuntimeError(std::string message) { Fail(Error::Kind::kRuntime, std::move(message)); }

// ---- tokens ----

enum class Tok {
    kData,
    kVariableBegin,
    kVariableEnd,
    kBlockBegin,
    kBlockEnd,
    kName,
    kString,
    kInteger,
    kFloat,
    kOperator,  // text holds the operator: + - * / // % ** ~ [ ] ( ) { } == != < <= > >= = . : | , ;
    kEof,
};

struct Token {
    Tok type = Tok::kEof;
    std::string text;  // data, name, decoded string, operator
    int64_t int_value = 0;
    double float_value = 0;
    int line = 1;
    int column = 1;
};

std::vector<Token> Tokenize(std::string_view source);

// ---- AST ----

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;
struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Keyword {
    std::string name;
    ExprPtr value;
};

struct Expr {
    enum class Kind {
        kConst,     // value
        kName,      // name
        kList,      // items
        kTuple,     // items
        kDict,      // items as key, value pairs
        kGetAttr,   // a.name
        kGetItem,   // a[b]
        kSlice,     // a[items[0]:items[1]:items[2]] (null entries: omitted)
        kCall,      // a(args, kwargs)
        kFilter,    // a|name(args, kwargs); a is null inside a filter block
        kTest,      // a is name(args, kwargs)
        kNot,       // not a
        kNeg,       // -a
        kPos,       // +a
        kBinary,    // a op b (op: + - * / // % **)
        kAnd,       // a and b
        kOr,        // a or b
        kConcat,    // items joined by ~
        kCompare,   // a ops[0] items[0] ops[1] items[1] ...
        kCondExpr,  // b if a else c (c may be null)
    };
    Kind kind;
    int line = 0;
    int column = 0;
    Value value;
    std::string name;  // name, attribute, filter/test, binary operator
    ExprPtr a, b, c;
    std::vector<ExprPtr> items;
    std::vector<Keyword> kwargs;
    std::vector<std::string> ops;    // compare operators: == != < <= > >= in notin
    const void* resolved = nullptr;  // the builtin filter or test, resolved at parse time
};

struct MacroDef;

struct Node {
    enum class Kind {
        kText,         // text
        kOutput,       // expr
        kIf,           // conds[i] → bodies[i]; else_body
        kFor,          // targets in expr [if cond]: body; else_body
        kSet,          // targets (or ns.attr: ns_name, attr) = expr
        kSetBlock,     // targets[0] = rendered body, through filter (may be null)
        kMacro,        // macro
        kCallBlock,    // expr (a call), caller = macro
        kFilterBlock,  // expr (a filter chain with a null innermost operand) over the rendered body
        kWith,         // targets = values; body
        kScope,        // body in its own scope (transformers' {% generation %})
        kBreak,
        kContinue,
    };
    Kind kind;
    int line = 0;
    int column = 0;
    std::string text;
    ExprPtr expr;
    ExprPtr cond;
    std::vector<std::string> targets;
    bool target_is_tuple = false;
    std::string ns_name, ns_attr;  // {% set ns.attr = ... %}
    std::vector<ExprPtr> conds;
    std::vector<Body> bodies;
    std::vector<ExprPtr> values;
    Body body;
    Body else_body;
    std::shared_ptr<MacroDef> macro;
};

struct MacroDef {
    std::string name;
    std::vector<std::string> params;
    std::vector<ExprPtr> defaults;  // for the last defaults.size() params
    Body body;
    bool uses_varargs = false;
    bool uses_kwargs = false;
    bool uses_caller = false;
};

inline constexpr const char* kGenerator = "generator";

Body ParseTemplate(std::string_view source);
// The error for a filter or test that did not resolve (raised at parse time or, inside an `if`, when called).
std::string UnresolvedMessage(const Expr& e);

// ---- builtins, resolved by name at parse time ----
struct FilterDef;
struct TestDef;
const FilterDef* FindFilter(std::string_view name);
const TestDef* FindTest(std::string_view name);

// ---- text with Python semantics ----

// Decodes one UTF-8 code point at s[*i] and advances *i; invalid bytes decode as themselves (U+0080..U+00FF
// would be wrong, so they are returned as 0xDC80 + byte, like Python's surrogateescape).
char32_t NextCodePoint(std::string_view s, size_t* i);
void AppendUtf8(char32_t cp, std::string* out);
std::u32string ToU32(std::string_view s);
std::string FromU32(std::u32string_view s);
bool IsAsciiOnly(std::string_view s);
size_t CodePointLength(std::string_view s);
// Python's str.isspace() for one code point (also what \s matches and what strip() removes).
bool IsPyWhitespace(char32_t c);
// Python's str.splitlines() line boundaries.
bool IsLineBoundary(char32_t c);
// Python's str.upper()/lower(); throws a runtime error for letters outside the scripts it knows.
std::string PyUpper(std::string_view s);
std::string PyLower(std::string_view s);
std::string PyTitle(std::string_view s);       // str.title()
std::string PyCapitalize(std::string_view s);  // str.capitalize()
// Python's float repr.
std::string FloatRepr(double d);
// Python's repr() of a str.
std::string StrRepr(std::string_view s);
// markupsafe.escape: & < > " '
std::string HtmlEscape(std::string_view s);

// Python equality and truthiness.
bool PyEquals(const Value& a, const Value& b);
bool Truthy(const Value& v);
const char* TypeName(const Value& v);

// transformers' tojson: json.dumps(x, ensure_ascii, indent, separators, sort_keys).
struct JsonDumpOptions {
    bool ensure_ascii = false;
    bool has_indent = false;
    std::string indent;  // the indent unit (spaces, or a string)
    std::string item_separator = ", ";
    std::string key_separator = ": ";
    bool sort_keys = false;
};
std::string JsonDumps(const Value& v, const JsonDumpOptions& options);

}  // namespace uniattn::jinja::internal

namespace uniattn::jinja::internal {

// One render: the scopes, the limits, and the operations builtins need (attribute and item access, calls,
// Python's operators). Not shared between threads: each Render builds its own.
class Interpreter {
  public:
    struct Frame {
        std::vector<std::pair<std::string, Value>> vars;  // small scopes: a vector beats a map
        std::shared_ptr<Frame> parent;
        const Value* Find(const std::string& name) const;
        void Set(const std::string& name, Value v);
    };
    using FramePtr = std::shared_ptr<Frame>;

    explicit Interpreter(const RenderOptions& options);
    ~Interpreter();

    std::string Render(const Body& body, const Value& context);

    // Jinja's environment.getattr / getitem (sandboxed: underscore attributes are undefined, methods that
    // would modify a list or dict raise when called).
    Value GetAttr(const Value& obj, const std::string& name);
    Value GetItem(const Value& obj, const Value& key);
    Value Call(const Value& callee, CallArgs& args, const std::string& what);
    Value CallMethod(const Value& self, const std::string& name, CallArgs& args);

    // Python's operators.
    Value BinaryOp(const std::string& op, const Value& a, const Value& b);
    bool Compare(const std::string& op, const Value& a, const Value& b);
    bool Contains(const Value& container, const Value& item);
    // Python's iter(): the items of a list, the keys of a dict, the characters of a string; undefined is empty.
    std::vector<Value> Iterate(const Value& v);

    const RenderOptions& options() const { return options_; }
    // Loop iterations and items built by builtins count against limits.max_iterations.
    void CountIterations(int64_t n);
    // A string or the output grew: fail past limits.max_output_bytes.
    void CheckSize(size_t bytes) const;
    Value MakeList(std::vector<Value> items, bool tuple = false) const;
    Value MakeGenerator(std::vector<Value> items) const;
    std::shared_ptr<Object> NewNamespace();
    [[noreturn]] void UndefinedError(const Value& v) const;

    // Filters and tests applied by name (map, select, selectattr).
    Value ApplyFilter(const FilterDef* filter, Value input, CallArgs& args);
    bool ApplyTest(const TestDef* test, const Value& value, CallArgs& args);

  private:
    enum class Flow { kNormal, kBreak, kContinue };

    Value Lookup(const std::string& name, const FramePtr& frame) const;
    Value Eval(const Expr& e, const FramePtr& frame);
    Value EvalFilterChain(const Expr& e, const FramePtr& frame, const Value* block_input);
    void EvalCallArgs(const Expr& e, const FramePtr& frame, CallArgs* args);
    Flow Exec(const Body& body, const FramePtr& frame, std::string* out);
    Flow ExecNode(const Node& n, const FramePtr& frame, std::string* out);
    void ExecFor(const Node& n, const FramePtr& frame, std::string* out);
    void Assign(const Node& n, const FramePtr& frame, Value value);
    void BindTargets(const std::vector<std::string>& targets, bool is_tuple, const Value& item, Frame* frame);
    Value MakeMacro(const MacroDef* def, const FramePtr& closure);
    Value CallMacro(const MacroDef* def, const FramePtr& closure, CallArgs& args);
    void Append(std::string* out, std::string_view text) const;

    const RenderOptions& options_;
    Dict globals_;
    FramePtr root_;
    int64_t iterations_ = 0;
    int call_depth_ = 0;
    std::vector<std::shared_ptr<Object>> namespaces_;  // cleared at the end: breaks reference cycles
};

// Builtins (builtins.cc).
struct FilterDef {
    const char* name;
    Value (*fn)(Interpreter& in, Value& input, CallArgs& args);
};
struct TestDef {
    const char* name;
    bool (*fn)(Interpreter& in, const Value& value, CallArgs& args);
};
// range, dict, namespace, raise_exception, strftime_now.
void AddGlobals(Dict* globals);
// Methods of str, dict and list; `known` says whether `name` is a method of that type at all.
bool IsMethodName(const Value& self, const std::string& name);

}  // namespace uniattn::jinja::internal
