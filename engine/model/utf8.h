// UTF-8 helpers for the tokenizers: well-formedness, code point iteration, encoding.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace uniattn::utf8 {

// The length of the well-formed UTF-8 sequence starting at s[i] (1..4), or 0 when the bytes there are not
// one (a stray continuation byte, an overlong form, a surrogate, a value above U+10FFFF, a cut sequence).
size_t WellFormedLength(std::string_view s, size_t i);

// Whether all of `s` is well-formed UTF-8.
bool IsValid(std::string_view s);

// The code point of the well-formed sequence of `len` bytes at s[i].
char32_t DecodeAt(std::string_view s, size_t i, size_t len);

// Appends code point `cp` (<= U+10FFFF) as UTF-8.
void Append(std::string& out, char32_t cp);

// The byte length of the UTF-8 sequence a lead byte starts (1 for ASCII and for bytes that start none).
inline size_t LeadLength(unsigned char c) { return c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace uniattn::utf8
