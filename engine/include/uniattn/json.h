// A small JSON reader and writer for the engine's own files (config.json, safetensors headers,
// model.safetensors.index.json, tokenizer_config.json). The engine has no third-party JSON dependency so
// that it builds on a machine with only a compiler, CMake and CUDA. Numbers keep their source text so
// that 64-bit offsets survive exactly.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "uniattn/status.h"

namespace uniattn {

class Json {
  public:
    enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

    Json() = default;
    static Json Bool(bool b);
    static Json Number(double d);
    static Json Int(int64_t i);
    static Json String(std::string s);
    static Json Array();
    static Json Object();

    Type type() const { return type_; }
    bool is_null() const { return type_ == Type::kNull; }
    bool is_bool() const { return type_ == Type::kBool; }
    bool is_number() const { return type_ == Type::kNumber; }
    bool is_string() const { return type_ == Type::kString; }
    bool is_array() const { return type_ == Type::kArray; }
    bool is_object() const { return type_ == Type::kObject; }

    bool bool_value() const { return bool_; }
    double number_value() const;
    // True when the number is an integer that fits int64 (no fraction, no exponent overflow).
    bool is_integer() const;
    int64_t int_value() const;
    const std::string& string_value() const { return string_; }
    const std::vector<Json>& array() const { return array_; }
    std::vector<Json>& array() { return array_; }
    // Object members in source order.
    const std::vector<std::pair<std::string, Json>>& members() const { return members_; }

    // nullptr when absent or not an object.
    const Json* Find(std::string_view key) const;
    void Set(std::string key, Json value);
    void Push(Json value) { array_.push_back(std::move(value)); }

    std::string Dump() const;  // compact
    std::string DumpPretty(int indent = 2) const;

  private:
    friend class JsonParser;
    void DumpTo(std::string& out, int indent, int depth) const;

    Type type_ = Type::kNull;
    bool bool_ = false;
    std::string number_text_;
    std::string string_;
    std::vector<Json> array_;
    std::vector<std::pair<std::string, Json>> members_;
};

// Parses a whole document; trailing non-space is an error. `what` names the source in messages.
StatusOr<Json> ParseJson(std::string_view text, std::string_view what = "JSON");

}  // namespace uniattn
