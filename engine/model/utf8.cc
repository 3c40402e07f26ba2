#include "model/utf8.h"

#include "uniattn/tokenizer.h"

namespace uniattn {

namespace utf8 {

namespace {

// The length of the sequence a lead byte starts and the range its second byte must be in (Unicode Table 3-7:
// this excludes overlong forms, surrogates and values above U+10FFFF); 0 for a byte no sequence starts with.
size_t LeadLength(unsigned char c, unsigned char* lo, unsigned char* hi) {
    *lo = 0x80, *hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) {
        if (c == 0xE0) *lo = 0xA0;
        if (c == 0xED) *hi = 0x9F;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (c == 0xF0) *lo = 0x90;
        if (c == 0xF4) *hi = 0x8F;
        return 4;
    }
    return 0;
}

// How many bytes from s[i] (a lead of a `len`-byte sequence) follow the well-formed pattern: 1 to len.
size_t MatchingPrefix(std::string_view s, size_t i, size_t len, unsigned char lo, unsigned char hi) {
    const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    size_t k = 1;
    if (i + k < s.size() && b(i + k) >= lo && b(i + k) <= hi) {
        ++k;
        while (k < len && i + k < s.size() && (b(i + k) & 0xC0) == 0x80) ++k;
    }
    return k;
}

}  // namespace

size_t WellFormedLength(std::string_view s, size_t i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) return 1;
    unsigned char lo, hi;
    const size_t len = LeadLength(c, &lo, &hi);
    if (len == 0) return 0;
    return MatchingPrefix(s, i, len, lo, hi) == len ? len : 0;
}

bool IsValid(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
        if (static_cast<unsigned char>(s[i]) < 0x80) {
            ++i;
            continue;
        }
        const size_t len = WellFormedLength(s, i);
        if (len == 0) return false;
        i += len;
    }
    return true;
}

char32_t DecodeAt(std::string_view s, size_t i, size_t len) {
    const auto b = [&](size_t k) { return static_cast<char32_t>(static_cast<unsigned char>(s[k])); };
    switch (len) {
        case 1:
            return b(i);
        case 2:
            return ((b(i) & 0x1F) << 6) | (b(i + 1) & 0x3F);
        case 3:
            return ((b(i) & 0x0F) << 12) | ((b(i + 1) & 0x3F) << 6) | (b(i + 2) & 0x3F);
        default:
            return ((b(i) & 0x07) << 18) | ((b(i + 1) & 0x3F) << 12) | ((b(i + 2) & 0x3F) << 6) | (b(i + 3) & 0x3F);
    }
}

void Append(std::string& out, char32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

namespace {

// How many bytes at s[i] form the longest prefix of some well-formed sequence (at least 1): Unicode's
// "maximal subpart", replaced by one U+FFFD.
size_t MaximalSubpart(std::string_view s, size_t i) {
    unsigned char lo, hi;
    const size_t len = LeadLength(static_cast<unsigned char>(s[i]), &lo, &hi);
    return len == 0 ? 1 : MatchingPrefix(s, i, len, lo, hi);
}

}  // namespace

}  // namespace utf8

std::string ReplaceInvalidUtf8(std::string_view bytes) {
    std::string out;
    out.reserve(bytes.size());
    size_t i = 0;
    while (i < bytes.size()) {
        if (static_cast<unsigned char>(bytes[i]) < 0x80) {
            out += bytes[i++];
            continue;
        }
        const size_t len = utf8::WellFormedLength(bytes, i);
        if (len > 0) {
            out.append(bytes.substr(i, len));
            i += len;
        } else {
            out += utf8::kReplacement;
            i += utf8::MaximalSubpart(bytes, i);
        }
    }
    return out;
}

}  // namespace uniattn
