// A Jinja renderer for Hugging Face chat templates: the subset of Jinja2 3.1 that transformers' chat
// templating uses, with the same environment (ImmutableSandboxedEnvironment with trim_blocks=True,
// lstrip_blocks=True and the loopcontrols extension; the `generation` block of transformers'
// AssistantTracker; transformers' `tojson`; the globals raise_exception and strftime_now).
//
// The goal is byte-identical output to Python's jinja2. A construct this library does not implement is a
// parse error naming the line and column (a filter, test or tag it does not know) or a render error (a
// method it does not know), never different text. Values follow Python: dicts keep insertion order, ints
// are 64-bit (overflow is an error), strings are UTF-8 and are indexed by code point.
//
// Thread-safety: a parsed Template is immutable; Render may run concurrently from any number of threads.
// Depends only on the standard library and nlohmann-json.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace uniattn::jinja {

// A parse or render error. `line` and `column` are 1-based positions in the template source (0 when the
// error has no position, e.g. raise_exception's message).
struct Error {
    enum class Kind {
        kSyntax,        // the template cannot be parsed (or uses a construct this library does not support)
        kRaised,        // the template called raise_exception(message)
        kRuntime,       // a type error, an undefined value used, a missing method, ...
        kLimitExceeded  // output, iterations or recursion past RenderOptions' limits
    };
    Kind kind = Kind::kRuntime;
    std::string message;
    int line = 0;
    int column = 0;
    // "line 3, column 7: message" (or just the message when there is no position).
    std::string ToString() const;
};

class Value;
struct List;
class Dict;
struct Object;
struct Callable;

// A Jinja value: Python's None, bool, int, float, str, list/tuple, dict, plus Jinja's Undefined, namespace
// objects and callables (macros, builtins, bound methods). Lists, dicts and objects are shared (Python
// reference semantics); lists and dicts are never modified after construction (the sandbox is immutable),
// only namespace attributes are.
class Value {
  public:
    enum class Kind { kUndefined, kNone, kBool, kInt, kFloat, kString, kList, kDict, kObject, kCallable };

    Value() = default;  // undefined
    static Value Undefined(std::string hint = {});
    static Value None();
    Value(bool b);                       // NOLINT(google-explicit-constructor)
    Value(int i);                        // NOLINT(google-explicit-constructor)
    Value(int64_t i);                    // NOLINT(google-explicit-constructor)
    Value(double d);                     // NOLINT(google-explicit-constructor)
    Value(std::string s);                // NOLINT(google-explicit-constructor)
    Value(const char* s);                // NOLINT(google-explicit-constructor)
    static Value Markup(std::string s);  // a string marked safe (Jinja's Markup: `+` escapes the other side)
    static Value MakeList(std::vector<Value> items, bool tuple = false);
    static Value MakeDict(Dict dict);
    static Value MakeObject(std::shared_ptr<Object> object);
    static Value MakeCallable(std::shared_ptr<Callable> callable);
    // JSON → Value: objects become dicts in the JSON's key order.
    static Value FromJson(const nlohmann::ordered_json& json);

    Kind kind() const { return kind_; }
    bool is_undefined() const { return kind_ == Kind::kUndefined; }
    bool is_none() const { return kind_ == Kind::kNone; }
    bool is_bool() const { return kind_ == Kind::kBool; }
    bool is_int() const { return kind_ == Kind::kInt; }  // not bool (Python's bool is an int subclass: see is_integral)
    bool is_float() const { return kind_ == Kind::kFloat; }
    bool is_number() const { return kind_ == Kind::kBool || kind_ == Kind::kInt || kind_ == Kind::kFloat; }
    bool is_integral() const { return kind_ == Kind::kBool || kind_ == Kind::kInt; }
    bool is_string() const { return kind_ == Kind::kString; }
    bool is_list() const { return kind_ == Kind::kList; }
    bool is_dict() const { return kind_ == Kind::kDict; }
    bool is_object() const { return kind_ == Kind::kObject; }
    bool is_callable() const { return kind_ == Kind::kCallable; }
    bool is_markup() const { return kind_ == Kind::kString && markup_; }

    bool bool_value() const { return b_; }
    int64_t int_value() const { return kind_ == Kind::kBool ? (b_ ? 1 : 0) : i_; }  // bool or int
    double number() const { return kind_ == Kind::kFloat ? f_ : static_cast<double>(int_value()); }
    const std::string& str() const { return s_; }  // string text; the hint of an undefined value
    const List& list() const { return *list_; }
    const Dict& dict() const { return *dict_; }
    const std::shared_ptr<List>& list_ptr() const { return list_; }
    const std::shared_ptr<Dict>& dict_ptr() const { return dict_; }
    const std::shared_ptr<Object>& object() const { return object_; }
    const std::shared_ptr<Callable>& callable() const { return callable_; }
    // Nesting depth of lists and dicts (a scalar is 0): bounded so that hostile templates cannot build
    // values whose destruction or printing would exhaust the stack.
    int depth() const;

  private:
    Kind kind_ = Kind::kUndefined;
    bool markup_ = false;
    bool b_ = false;
    int64_t i_ = 0;
    double f_ = 0;
    std::string s_;
    std::shared_ptr<List> list_;
    std::shared_ptr<Dict> dict_;
    std::shared_ptr<Object> object_;
    std::shared_ptr<Callable> callable_;
};

struct List {
    std::vector<Value> items;
    bool tuple = false;
    int depth = 1;
    // "dict_keys", "dict_values", "dict_items": what dict methods return; "generator": what Jinja's map,
    // select, ... filters return (iterable once, always true, no len(), not JSON, not indexable).
    const char* view = nullptr;
};

// An insertion-ordered dict with Python key equality (1, 1.0 and True are one key).
class Dict {
  public:
    const Value* Find(const Value& key) const;
    const Value* Find(std::string_view key) const;
    void Set(Value key, Value value);  // replaces the value of an existing key in place
    size_t size() const { return entries_.size(); }
    bool empty() const { return entries_.empty(); }
    const std::vector<std::pair<Value, Value>>& entries() const { return entries_; }
    int depth() const;

  private:
    std::vector<std::pair<Value, Value>> entries_;
};

// Python's str(value): None → "None", True → "True", floats as repr(), lists/dicts as their repr.
std::string ToPyStr(const Value& v);
// Python's repr(value).
std::string ToPyRepr(const Value& v);

// Limits against hostile templates and inputs; exceeding one is an Error of kind kLimitExceeded.
struct Limits {
    int64_t max_output_bytes = 16 << 20;  // the rendered text, and any one string built while rendering
    int64_t max_iterations = 1'000'000;   // loop iterations and items built by filters, in all
    int max_call_depth = 200;             // nested macro calls
    int max_value_depth = 128;            // nesting of lists and dicts
};

struct RenderOptions {
    Limits limits;
    // The clock of strftime_now (local time); unset: the system's local time now.
    std::function<std::tm()> now;
};

class Template {
  public:
    // Parses `source` (a chat template). On failure returns nullptr and fills `error` (kind kSyntax, with the
    // line and column).
    static std::unique_ptr<Template> Parse(std::string_view source, Error* error);
    ~Template();

    // Renders with `context` (a dict: the template's variables). Returns false and fills `error` on a
    // render error.
    bool Render(const Value& context, const RenderOptions& options, std::string* out, Error* error) const;

    struct Impl;

  private:
    explicit Template(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace uniattn::jinja
