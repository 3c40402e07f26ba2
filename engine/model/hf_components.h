// The parts of a Hugging Face tokenizer.json pipeline (model/hf_tokenizer.cc reads the file and chains them):
// normalizers, pre-tokenizers, the BPE model, decoders, and the added-token matcher. Each part follows the
// Rust `tokenizers` crate's behaviour for the ids it produces (offsets are not tracked).
//
// Regexes are PCRE2 with UTF and UCP, so \p{L}, \p{N}, \s and (?!\S) read Unicode as Oniguruma does in the
// Rust crate. Unicode normalization and character properties come from ICU.
//
// All parts are immutable after loading and safe to use from several threads (the BPE cache locks).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "uniattn/status.h"

namespace uniattn::hf {

// A compiled PCRE2 pattern.
class Regex {
  public:
    // `literal`: the pattern is a plain string. `subject_may_be_invalid`: matched against bytes that need not
    // be UTF-8 (decoders); otherwise subjects must be valid UTF-8. `what` names the pattern in errors.
    static StatusOr<std::shared_ptr<const Regex>> Compile(std::string_view pattern, bool literal,
                                                          bool subject_may_be_invalid, const std::string& what);
    ~Regex();
    Regex(const Regex&) = delete;
    Regex& operator=(const Regex&) = delete;

    // Appends the [start, end) byte ranges of successive non-overlapping, non-empty matches in `text`.
    void FindAll(std::string_view text, std::vector<std::pair<size_t, size_t>>* matches) const;
    // `text` with every match replaced by `content`.
    std::string ReplaceAll(std::string_view text, std::string_view content) const;

  private:
    Regex() = default;
    void* code_ = nullptr;  // pcre2_code_8
    bool jit_ = false;
    bool invalid_ok_ = false;
};

// ---- normalizers ----

class Normalizer {
  public:
    virtual ~Normalizer() = default;
    virtual void Apply(std::string& text) const = 0;
    // Whether the output is never shorter in bytes than the input (max_token_bytes' bound holds).
    virtual bool NeverShrinks() const = 0;
};

enum class UnicodeForm { kNfc };
std::unique_ptr<Normalizer> MakeUnicodeNormalizer(UnicodeForm form);
std::unique_ptr<Normalizer> MakePrependNormalizer(std::string prepend);
// pattern: a literal string, or `regex` when given.
std::unique_ptr<Normalizer> MakeReplaceNormalizer(std::string pattern, std::shared_ptr<const Regex> regex,
                                                  std::string content);
std::unique_ptr<Normalizer> MakeSequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts);

// ---- pre-tokenizers ----

// One pre-token. `at_start`: it begins at offset 0 of the whole input (Metaspace's prepend_scheme "first").
struct Piece {
    std::string text;
    bool at_start = false;
};

class PreTokenizer {
  public:
    virtual ~PreTokenizer() = default;
    virtual void Apply(std::vector<Piece>& pieces) const = 0;
    virtual bool NeverShrinks() const = 0;
    // Whether this maps bytes to the GPT-2 byte-level alphabet (tokens then count one input byte per character).
    virtual bool IsByteLevel() const { return false; }
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
std::unique_ptr<PreTokenizer> MakeSplitPreTokenizer(std::shared_ptr<const Regex> regex, SplitBehavior behavior,
                                                    bool invert);
// use_regex: split with the GPT-2 pattern first (`gpt2_regex`, compiled by the caller).
std::unique_ptr<PreTokenizer> MakeByteLevelPreTokenizer(bool add_prefix_space, std::shared_ptr<const Regex> gpt2_regex);
enum class PrependScheme { kFirst, kAlways, kNever };
std::unique_ptr<PreTokenizer> MakeMetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split);
std::unique_ptr<PreTokenizer> MakeDigitsPreTokenizer(bool individual_digits);
std::unique_ptr<PreTokenizer> MakeSequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts);

// GPT-2's pre-tokenization pattern (the ByteLevel pre-tokenizer's own when use_regex is true).
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// The GPT-2 byte-level alphabet: byte b is spelled by code point ByteToChar(b); CharToByte inverts it
// (-1 for code points outside the alphabet).
char32_t ByteToChar(uint8_t b);
int CharToByte(char32_t c);
// `bytes` spelled in the byte-level alphabet (UTF-8).
std::string ByteLevelSpell(std::string_view bytes);

// ---- the BPE model ----

struct BpeOptions {
    std::optional<int32_t> unk_id;
    bool fuse_unk = false;
    bool byte_fallback = false;
    bool ignore_merges = false;
};

class BpeModel {
  public:
    // `vocab` token -> id; `merges` in rank order as (left, right) token pairs. Errors name `path`.
    static StatusOr<std::unique_ptr<BpeModel>> Create(std::unordered_map<std::string, int32_t> vocab,
                                                      const std::vector<std::pair<std::string, std::string>>& merges,
                                                      const BpeOptions& options, const std::string& path);
    // Appends the ids of one pre-token.
    void Encode(const std::string& piece, std::vector<int32_t>* out) const;
    std::optional<int32_t> TokenToId(std::string_view token) const;
    // Token spellings by id (empty where no token has that id).
    const std::vector<std::string>& id_to_token() const { return id_to_token_; }
    const BpeOptions& options() const { return options_; }

  private:
    struct Hash {
        using is_transparent = void;
        size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
    };
    struct Merge {
        int32_t rank;
        int32_t new_id;
    };

    void MergeWord(std::string_view piece, std::vector<int32_t>* out) const;

    std::unordered_map<std::string, int32_t, Hash, std::equal_to<>> vocab_;
    std::vector<std::string> id_to_token_;
    std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> rank and merged id
    BpeOptions options_;
    std::array<int32_t, 256> byte_ids_{};  // <0xNN> ids for byte fallback (-1 when missing)

    // Pre-token -> ids, filled as pieces are encoded (up to kCacheCapacity entries, then no more).
    mutable std::shared_mutex cache_mu_;
    mutable std::unordered_map<std::string, std::vector<int32_t>, Hash, std::equal_to<>> cache_;
};

// ---- decoders ----

// One token on its way through the decoders. `added`: an added token's text (the ByteLevel decoder keeps it
// as it is).
struct DecodedToken {
    std::string text;
    bool added = false;
};

class Decoder {
  public:
    virtual ~Decoder() = default;
    // raw: decoding one token for its bytes (Tokenizer::TokenBytes): byte tokens stay bytes (no U+FFFD), and
    // what only applies at the start of a text (Metaspace's first space, Strip) is not done.
    virtual void Apply(std::vector<DecodedToken>& tokens, bool raw) const = 0;
};

std::unique_ptr<Decoder> MakeByteLevelDecoder();
std::unique_ptr<Decoder> MakeMetaspaceDecoder(std::string replacement, PrependScheme scheme);
std::unique_ptr<Decoder> MakeByteFallbackDecoder();
std::unique_ptr<Decoder> MakeFuseDecoder();
std::unique_ptr<Decoder> MakeStripDecoder(char32_t content, int start, int stop);
std::unique_ptr<Decoder> MakeReplaceDecoder(std::string pattern, std::shared_ptr<const Regex> regex,
                                            std::string content);
std::unique_ptr<Decoder> MakeSequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts);

// ---- added tokens ----

struct AddedToken {
    int32_t id = 0;
    std::string content;
    bool special = false;
    bool lstrip = false;
    bool rstrip = false;
    bool single_word = false;
    bool normalized = false;
};

// Finds added tokens in text: leftmost match first, the longest there; a single_word token only where no
// word character touches it; lstrip/rstrip tokens take the whitespace beside them.
class AddedTokenMatcher {
  public:
    // `patterns[i]` is the text to find for `tokens[i]`.
    void Build(std::vector<std::string> patterns, std::vector<const AddedToken*> tokens);
    struct Segment {
        size_t begin = 0;  // in the text
        size_t end = 0;
        const AddedToken* token = nullptr;  // null: plain text
    };
    // Splits `text` into plain text and added tokens (empty plain segments are left out).
    void Split(std::string_view text, std::vector<Segment>* out) const;
    bool empty() const { return tokens_.empty(); }

  private:
    struct Node {
        std::vector<std::pair<unsigned char, int32_t>> next;  // sorted by byte
        int32_t token = -1;                                   // index into tokens_ ending here
    };
    // The longest pattern at text[i]: token index and length, or -1.
    std::pair<int32_t, size_t> Longest(std::string_view text, size_t i) const;

    std::vector<Node> nodes_;
    std::vector<const AddedToken*> tokens_;
    std::array<bool, 256> first_{};
};

// Unicode White_Space (Rust's char::is_whitespace) and word characters (alphanumeric or '_').
bool IsWhitespace(char32_t c);
bool IsWordChar(char32_t c);

}  // namespace uniattn::hf
