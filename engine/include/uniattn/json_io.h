// JSON for the engine's files (config.json, safetensors headers, model.safetensors.index.json,
// tokenizer_config.json) and the server's request bodies: nlohmann-json, with no exception crossing the
// engine API. Reading goes through ParseJsonBounded, which bounds the nesting depth while it parses
// (nlohmann's parser is iterative, but destroying and dumping a value recurse) and turns every
// json::exception into a JsonParseError; DumpJson never throws either.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "uniattn/status.h"

namespace uniattn {

// What the engine writes (config.json, tokenizer_config.json, safetensors headers): objects keep their
// members in insertion order, so files list keys in the order the code sets them. Files are read into
// nlohmann::json (keys sorted; a repeated key keeps its last value).
using OrderedJson = nlohmann::ordered_json;

// Containers nested deeper than this in one of the engine's files are refused.
inline constexpr int kMaxJsonFileDepth = 256;

struct JsonParseError {
    enum class Kind {
        kSyntax,          // not JSON (nlohmann's parse_error)
        kTooDeep,         // more than max_depth containers nested
        kNumberOverflow,  // a number beyond double range, e.g. 1e400 (nlohmann's out_of_range.406)
    };
    Kind kind = Kind::kSyntax;
    // nlohmann's message without its "[json.exception.parse_error.101] " prefix, e.g. "parse error at line
    // 1, column 2: syntax error ..." or "number overflow parsing '1e400'"; for kTooDeep "nested deeper than N
    // levels".
    std::string detail;
    // Where it failed: the keys and indices from the root, e.g. "rope_parameters.rope_theta" or "a[2]";
    // empty at the top level.
    std::string path;
};

namespace json_detail {

// nlohmann's SAX interface, building the value as json::parse does, plus the depth bound and the path of
// the value being parsed (for messages).
template <class BasicJson>
class BoundedBuilder {
  public:
    using number_integer_t = typename BasicJson::number_integer_t;
    using number_unsigned_t = typename BasicJson::number_unsigned_t;
    using number_float_t = typename BasicJson::number_float_t;
    using string_t = typename BasicJson::string_t;
    using binary_t = typename BasicJson::binary_t;

    BoundedBuilder(BasicJson& root, int max_depth) : root_(root), max_depth_(max_depth) {}

    bool null() { return Put(nullptr) != nullptr; }
    bool boolean(bool v) { return Put(v) != nullptr; }
    bool number_integer(number_integer_t v) { return Put(v) != nullptr; }
    bool number_unsigned(number_unsigned_t v) { return Put(v) != nullptr; }
    bool number_float(number_float_t v, const string_t& /*text*/) { return Put(v) != nullptr; }
    bool string(string_t& v) { return Put(std::move(v)) != nullptr; }
    bool binary(binary_t& v) { return Put(BasicJson::binary(std::move(v))) != nullptr; }
    bool start_object(std::size_t /*size*/) { return Open(BasicJson::object()); }
    bool start_array(std::size_t /*size*/) { return Open(BasicJson::array()); }
    bool key(string_t& k) {
        key_ = k;
        return true;
    }
    bool end_object() { return Close(); }
    bool end_array() { return Close(); }
    bool parse_error(std::size_t /*position*/, const std::string& /*token*/, const nlohmann::detail::exception& e) {
        error_.kind = e.id == 406 ? JsonParseError::Kind::kNumberOverflow : JsonParseError::Kind::kSyntax;
        error_.detail = e.what();
        // "[json.exception.parse_error.101] parse error at line 1, column 2: ..." -> drop the prefix.
        if (const size_t at = error_.detail.find("] "); at != std::string::npos) error_.detail.erase(0, at + 2);
        error_.path = Path(/*with_pending=*/true);
        failed_ = true;
        return false;
    }

    std::optional<JsonParseError> error() const {
        return failed_ ? std::optional<JsonParseError>(error_) : std::nullopt;
    }

  private:
    struct Frame {
        BasicJson* value;
        std::string name;  // how the path names this container: ".key" or "[i]" (empty for the root)
    };

    // Where the next value goes: ".key" in an object, "[i]" in an array.
    std::string PendingName() const {
        if (stack_.empty()) return "";
        const BasicJson& parent = *stack_.back().value;
        return parent.is_array() ? "[" + std::to_string(parent.size()) + "]" : "." + key_;
    }

    std::string Path(bool with_pending) const {
        std::string p;
        for (const Frame& f : stack_) p += f.name;
        if (with_pending) p += PendingName();
        if (!p.empty() && p[0] == '.') p.erase(0, 1);
        return p;
    }

    template <class V>
    BasicJson* Put(V&& v) {
        if (stack_.empty()) {
            root_ = BasicJson(std::forward<V>(v));
            return &root_;
        }
        BasicJson& parent = *stack_.back().value;
        if (parent.is_array()) {
            parent.emplace_back(std::forward<V>(v));
            return &parent.back();
        }
        BasicJson& slot = parent[key_];
        slot = BasicJson(std::forward<V>(v));
        return &slot;
    }

    bool Open(BasicJson&& container) {
        if (static_cast<int>(stack_.size()) >= max_depth_) {
            error_ = {JsonParseError::Kind::kTooDeep, "nested deeper than " + std::to_string(max_depth_) + " levels",
                      Path(/*with_pending=*/false)};
            failed_ = true;
            return false;
        }
        std::string name = PendingName();
        stack_.push_back({Put(std::move(container)), std::move(name)});
        return true;
    }

    bool Close() {
        stack_.pop_back();
        return true;
    }

    BasicJson& root_;
    const int max_depth_;
    std::vector<Frame> stack_;
    string_t key_;
    JsonParseError error_;
    bool failed_ = false;
};

}  // namespace json_detail

// Parses `text` as one JSON document (trailing non-space is an error) into `out`, with at most max_depth
// containers nested. Never throws; nullopt on success.
template <class BasicJson>
std::optional<JsonParseError> ParseJsonBounded(std::string_view text, int max_depth, BasicJson& out) {
    json_detail::BoundedBuilder<BasicJson> builder(out, max_depth);
    try {
        const bool ok = BasicJson::sax_parse(text, &builder);
        std::optional<JsonParseError> error = builder.error();
        if (!error && !ok) error = JsonParseError{JsonParseError::Kind::kSyntax, "invalid JSON", ""};
        if (error) {
            out = BasicJson();
            return error;
        }
    } catch (const nlohmann::json::exception& e) {  // not expected from sax_parse; never let one escape
        out = BasicJson();
        return JsonParseError{JsonParseError::Kind::kSyntax, e.what(), ""};
    } catch (const std::bad_alloc&) {
        out = BasicJson();
        return JsonParseError{JsonParseError::Kind::kSyntax, "out of memory", ""};
    }
    return std::nullopt;
}

// One of the engine's files. `what` names it in messages: "WHAT: invalid JSON: parse error at line 1,
// column 9: ...", "WHAT: invalid JSON: nested deeper than 256 levels", or for a number beyond double range
// "WHAT: "rope_theta" must be a finite number (number overflow parsing '1e400')".
StatusOr<nlohmann::json> ParseJsonFile(std::string_view text, std::string_view what);

// j[key] when j is an object holding key, else nullptr.
template <class BasicJson>
const BasicJson* JsonFind(const BasicJson& j, const std::string& key) {
    if (!j.is_object()) return nullptr;
    const auto it = j.find(key);
    return it == j.end() ? nullptr : &*it;
}

// The value of an integer literal (no fraction, no exponent) that fits int64; nullopt for anything else.
template <class BasicJson>
std::optional<int64_t> JsonInt64(const BasicJson& j) {
    if (j.is_number_unsigned()) {
        const auto u = j.template get<uint64_t>();
        if (u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
        return static_cast<int64_t>(u);
    }
    if (j.is_number_integer()) return j.template get<int64_t>();
    return std::nullopt;
}

// Compact (indent < 0) or pretty-printed JSON; bytes that are not UTF-8 in strings become U+FFFD rather
// than an exception.
template <class BasicJson>
std::string DumpJson(const BasicJson& j, int indent = -1) {
    return j.dump(indent, ' ', false, BasicJson::error_handler_t::replace);
}

}  // namespace uniattn
