#include "model/hf_components.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/uchar.h>

#include <algorithm>
#include <mutex>
#include <queue>

#include "model/utf8.h"

namespace uniattn::hf {

namespace {

pcre2_code* Code(void* p) { return static_cast<pcre2_code*>(p); }

// Replaces every occurrence of `pattern` (non-empty) in `text`, scanning left to right.
std::string ReplaceLiteral(std::string_view text, std::string_view pattern, std::string_view content) {
    if (pattern.empty()) return std::string(text);
    std::string out;
    out.reserve(text.size());
    size_t pos = 0;
    for (size_t at = text.find(pattern); at != std::string_view::npos; at = text.find(pattern, pos)) {
        out.append(text.substr(pos, at - pos));
        out.append(content);
        pos = at + pattern.size();
    }
    out.append(text.substr(pos));
    return out;
}

// The code point that ends text[0, end) (valid UTF-8 assumed), or nullopt at the start.
std::optional<char32_t> CharBefore(std::string_view text, size_t end) {
    if (end == 0) return std::nullopt;
    size_t b = end - 1;
    while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
    return utf8::DecodeAt(text, b, end - b);
}

std::optional<char32_t> CharAt(std::string_view text, size_t i) {
    if (i >= text.size()) return std::nullopt;
    const size_t len = std::min(utf8::LeadLength(static_cast<unsigned char>(text[i])), text.size() - i);
    return utf8::DecodeAt(text, i, len);
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// Regex

StatusOr<std::shared_ptr<const Regex>> Regex::Compile(std::string_view pattern, bool literal,
                                                      bool subject_may_be_invalid, const std::string& what) {
    // PCRE2_LITERAL takes no UCP; a literal needs none.
    uint32_t options = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    if (subject_may_be_invalid) options |= PCRE2_MATCH_INVALID_UTF;
    int error = 0;
    PCRE2_SIZE error_offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), options, &error,
                                     &error_offset, nullptr);
    if (code == nullptr) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(error, message, sizeof message);
        return Unimplemented(what + ": the regex cannot be compiled by PCRE2 at offset " +
                             std::to_string(error_offset) + ": " + reinterpret_cast<const char*>(message));
    }
    std::shared_ptr<Regex> regex(new Regex());
    regex->code_ = code;
    regex->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    regex->invalid_ok_ = subject_may_be_invalid;
    return std::shared_ptr<const Regex>(std::move(regex));
}

Regex::~Regex() { pcre2_code_free(Code(code_)); }

void Regex::FindAll(std::string_view text, std::vector<std::pair<size_t, size_t>>* matches) const {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(Code(code_), nullptr);
    if (md == nullptr) return;
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    const uint32_t check = invalid_ok_ ? 0 : PCRE2_NO_UTF_CHECK;
    size_t pos = 0;
    while (pos < text.size()) {
        int rc = pcre2_match(Code(code_), subject, text.size(), pos, check, md, nullptr);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {
            // A deeply backtracking match: the interpreter has a larger (heap) budget.
            rc = pcre2_match(Code(code_), subject, text.size(), pos, check | PCRE2_NO_JIT, md, nullptr);
        }
        if (rc < 0) break;
        const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(md);
        const size_t start = ovector[0];
        const size_t end = ovector[1];
        if (end <= start) {
            // An empty match yields no piece; move on by one character.
            pos = start + 1;
            while (pos < text.size() && (static_cast<unsigned char>(text[pos]) & 0xC0) == 0x80) ++pos;
            continue;
        }
        matches->emplace_back(start, end);
        pos = end;
    }
    pcre2_match_data_free(md);
}

std::string Regex::ReplaceAll(std::string_view text, std::string_view content) const {
    std::vector<std::pair<size_t, size_t>> matches;
    FindAll(text, &matches);
    if (matches.empty()) return std::string(text);
    std::string out;
    size_t pos = 0;
    for (const auto& [start, end] : matches) {
        out.append(text.substr(pos, start - pos));
        out.append(content);
        pos = end;
    }
    out.append(text.substr(pos));
    return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Unicode properties

bool IsWhitespace(char32_t c) { return u_isUWhiteSpace(static_cast<UChar32>(c)); }

bool IsWordChar(char32_t c) {
    if (c == '_') return true;
    const auto cp = static_cast<UChar32>(c);
    if (u_hasBinaryProperty(cp, UCHAR_ALPHABETIC)) return true;
    const int8_t type = u_charType(cp);
    return type == U_DECIMAL_DIGIT_NUMBER || type == U_LETTER_NUMBER || type == U_OTHER_NUMBER;
}

// ---------------------------------------------------------------------------------------------------------------
// Normalizers

namespace {

class UnicodeNormalizer final : public Normalizer {
  public:
    explicit UnicodeNormalizer(const icu::Normalizer2* impl) : impl_(impl) {}
    void Apply(std::string& text) const override {
        if (std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; })) {
            return;  // ASCII is in every normalization form
        }
        UErrorCode status = U_ZERO_ERROR;
        const icu::StringPiece in(text.data(), static_cast<int32_t>(text.size()));
        if (impl_->isNormalizedUTF8(in, status) && U_SUCCESS(status)) return;
        status = U_ZERO_ERROR;
        std::string out;
        icu::StringByteSink<std::string> sink(&out, static_cast<int32_t>(text.size()));
        impl_->normalizeUTF8(0, in, sink, nullptr, status);
        if (U_SUCCESS(status)) text = std::move(out);
    }
    bool NeverShrinks() const override { return false; }  // composition joins characters

  private:
    const icu::Normalizer2* impl_;
};

class PrependNormalizer final : public Normalizer {
  public:
    explicit PrependNormalizer(std::string prepend) : prepend_(std::move(prepend)) {}
    void Apply(std::string& text) const override {
        if (!text.empty()) text.insert(0, prepend_);
    }
    bool NeverShrinks() const override { return true; }

  private:
    std::string prepend_;
};

class ReplaceNormalizer final : public Normalizer {
  public:
    ReplaceNormalizer(std::string pattern, std::shared_ptr<const Regex> regex, std::string content)
        : pattern_(std::move(pattern)), regex_(std::move(regex)), content_(std::move(content)) {}
    void Apply(std::string& text) const override {
        text = regex_ ? regex_->ReplaceAll(text, content_) : ReplaceLiteral(text, pattern_, content_);
    }
    bool NeverShrinks() const override { return !regex_ && content_.size() >= pattern_.size(); }

  private:
    std::string pattern_;
    std::shared_ptr<const Regex> regex_;
    std::string content_;
};

class SequenceNormalizer final : public Normalizer {
  public:
    explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts) : parts_(std::move(parts)) {}
    void Apply(std::string& text) const override {
        for (const auto& p : parts_) p->Apply(text);
    }
    bool NeverShrinks() const override {
        return std::all_of(parts_.begin(), parts_.end(), [](const auto& p) { return p->NeverShrinks(); });
    }

  private:
    std::vector<std::unique_ptr<Normalizer>> parts_;
};

}  // namespace

std::unique_ptr<Normalizer> MakeUnicodeNormalizer(UnicodeForm form) {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* impl = nullptr;
    switch (form) {
        case UnicodeForm::kNfc:
            impl = icu::Normalizer2::getNFCInstance(status);
            break;
    }
    if (impl == nullptr || U_FAILURE(status)) return nullptr;
    return std::make_unique<UnicodeNormalizer>(impl);
}

std::unique_ptr<Normalizer> MakePrependNormalizer(std::string prepend) {
    return std::make_unique<PrependNormalizer>(std::move(prepend));
}

std::unique_ptr<Normalizer> MakeReplaceNormalizer(std::string pattern, std::shared_ptr<const Regex> regex,
                                                  std::string content) {
    return std::make_unique<ReplaceNormalizer>(std::move(pattern), std::move(regex), std::move(content));
}

std::unique_ptr<Normalizer> MakeSequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts) {
    return std::make_unique<SequenceNormalizer>(std::move(parts));
}

// ---------------------------------------------------------------------------------------------------------------
// Pre-tokenizers

namespace {

struct Span {
    size_t begin;
    size_t end;
    bool is_match;
};

// Cuts `piece` at the matched spans as the Rust crate's split behaviours do, appending the parts to `out`.
void SplitPiece(Piece&& piece, const std::vector<std::pair<size_t, size_t>>& matches, SplitBehavior behavior,
                bool invert, std::vector<Piece>* out) {
    const std::string& text = piece.text;
    std::vector<Span> spans;
    spans.reserve(matches.size() * 2 + 1);
    size_t prev = 0;
    for (const auto& [start, end] : matches) {
        if (start > prev) spans.push_back({prev, start, false});
        spans.push_back({start, end, true});
        prev = end;
    }
    if (prev < text.size()) spans.push_back({prev, text.size(), false});
    if (invert) {
        for (Span& s : spans) s.is_match = !s.is_match;
    }
    std::vector<std::pair<size_t, size_t>> parts;
    parts.reserve(spans.size());
    switch (behavior) {
        case SplitBehavior::kRemoved:
            for (const Span& s : spans) {
                if (!s.is_match) parts.emplace_back(s.begin, s.end);
            }
            break;
        case SplitBehavior::kIsolated:
            for (const Span& s : spans) parts.emplace_back(s.begin, s.end);
            break;
        case SplitBehavior::kMergedWithPrevious: {
            bool previous_match = false;
            for (const Span& s : spans) {
                if (s.is_match && !previous_match && !parts.empty()) {
                    parts.back().second = s.end;
                } else {
                    parts.emplace_back(s.begin, s.end);
                }
                previous_match = s.is_match;
            }
            break;
        }
        case SplitBehavior::kMergedWithNext: {
            bool next_match = false;
            for (size_t k = spans.size(); k-- > 0;) {
                const Span& s = spans[k];
                if (s.is_match && !next_match && !parts.empty()) {
                    parts.back().first = s.begin;
                } else {
                    parts.emplace_back(s.begin, s.end);
                }
                next_match = s.is_match;
            }
            std::reverse(parts.begin(), parts.end());
            break;
        }
        case SplitBehavior::kContiguous: {
            bool previous_match = false;
            for (const Span& s : spans) {
                if (s.is_match == previous_match && !parts.empty()) {
                    parts.back().second = s.end;
                } else {
                    parts.emplace_back(s.begin, s.end);
                }
                previous_match = s.is_match;
            }
            break;
        }
    }
    if (parts.size() == 1 && parts[0].first == 0 && parts[0].second == text.size()) {
        out->push_back(std::move(piece));
        return;
    }
    for (const auto& [begin, end] : parts) {
        if (end > begin) out->push_back({text.substr(begin, end - begin), piece.at_start && begin == 0});
    }
}

class SplitPreTokenizer final : public PreTokenizer {
  public:
    SplitPreTokenizer(std::shared_ptr<const Regex> regex, SplitBehavior behavior, bool invert)
        : regex_(std::move(regex)), behavior_(behavior), invert_(invert) {}
    void Apply(std::vector<Piece>& pieces) const override {
        std::vector<Piece> out;
        out.reserve(pieces.size());
        std::vector<std::pair<size_t, size_t>> matches;
        for (Piece& p : pieces) {
            matches.clear();
            regex_->FindAll(p.text, &matches);
            SplitPiece(std::move(p), matches, behavior_, invert_, &out);
        }
        pieces = std::move(out);
    }
    bool NeverShrinks() const override { return behavior_ != SplitBehavior::kRemoved; }

  private:
    std::shared_ptr<const Regex> regex_;
    SplitBehavior behavior_;
    bool invert_;
};

const std::array<char32_t, 256>& ByteTable() {
    static const std::array<char32_t, 256> table = [] {
        std::array<char32_t, 256> t{};
        char32_t next = 256;
        for (int b = 0; b < 256; ++b) {
            const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            t[b] = printable ? static_cast<char32_t>(b) : next++;
        }
        return t;
    }();
    return table;
}

const std::array<std::string, 256>& ByteSpellings() {
    static const std::array<std::string, 256> spellings = [] {
        std::array<std::string, 256> s;
        for (int b = 0; b < 256; ++b) utf8::Append(s[b], ByteTable()[b]);
        return s;
    }();
    return spellings;
}

class ByteLevelPreTokenizer final : public PreTokenizer {
  public:
    ByteLevelPreTokenizer(bool add_prefix_space, std::shared_ptr<const Regex> regex)
        : add_prefix_space_(add_prefix_space), regex_(std::move(regex)) {}
    void Apply(std::vector<Piece>& pieces) const override {
        if (add_prefix_space_) {
            for (Piece& p : pieces) {
                if (p.text.empty() || p.text[0] != ' ') p.text.insert(0, 1, ' ');
            }
        }
        if (regex_) {
            std::vector<Piece> out;
            out.reserve(pieces.size());
            std::vector<std::pair<size_t, size_t>> matches;
            for (Piece& p : pieces) {
                matches.clear();
                regex_->FindAll(p.text, &matches);
                SplitPiece(std::move(p), matches, SplitBehavior::kIsolated, false, &out);
            }
            pieces = std::move(out);
        }
        for (Piece& p : pieces) p.text = ByteLevelSpell(p.text);
    }
    bool NeverShrinks() const override { return true; }
    bool IsByteLevel() const override { return true; }

  private:
    bool add_prefix_space_;
    std::shared_ptr<const Regex> regex_;
};

class MetaspacePreTokenizer final : public PreTokenizer {
  public:
    MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
        : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
    void Apply(std::vector<Piece>& pieces) const override {
        std::vector<Piece> out;
        out.reserve(pieces.size());
        for (Piece& p : pieces) {
            p.text = ReplaceLiteral(p.text, " ", replacement_);
            const bool starts = p.text.compare(0, replacement_.size(), replacement_) == 0;
            bool prepend = false;
            switch (scheme_) {
                case PrependScheme::kAlways:
                    prepend = !starts;
                    break;
                case PrependScheme::kFirst:
                    prepend = !starts && p.at_start;
                    break;
                case PrependScheme::kNever:
                    break;
            }
            if (prepend) p.text.insert(0, replacement_);
            if (!split_) {
                out.push_back(std::move(p));
                continue;
            }
            // Each part starts at a replacement character (MergedWithNext).
            size_t begin = 0;
            for (size_t at = p.text.find(replacement_, 1); at != std::string::npos;
                 at = p.text.find(replacement_, at + 1)) {
                if (at > begin) out.push_back({p.text.substr(begin, at - begin), p.at_start && begin == 0});
                begin = at;
            }
            if (p.text.size() > begin) out.push_back({p.text.substr(begin), p.at_start && begin == 0});
        }
        pieces = std::move(out);
    }
    bool NeverShrinks() const override { return replacement_.size() >= 1; }

  private:
    std::string replacement_;
    PrependScheme scheme_;
    bool split_;
};

class DigitsPreTokenizer final : public PreTokenizer {
  public:
    explicit DigitsPreTokenizer(bool individual) : individual_(individual) {}
    void Apply(std::vector<Piece>& pieces) const override {
        std::vector<Piece> out;
        out.reserve(pieces.size());
        for (Piece& p : pieces) {
            const std::string& t = p.text;
            auto digit = [&](size_t i) { return t[i] >= '0' && t[i] <= '9'; };
            size_t begin = 0;
            for (size_t i = 0; i < t.size(); ++i) {
                const bool cut = i > begin && (digit(i) != digit(i - 1) || (individual_ && digit(i)));
                if (cut) {
                    out.push_back({t.substr(begin, i - begin), p.at_start && begin == 0});
                    begin = i;
                }
            }
            if (t.size() > begin) out.push_back({t.substr(begin), p.at_start && begin == 0});
        }
        pieces = std::move(out);
    }
    bool NeverShrinks() const override { return true; }

  private:
    bool individual_;
};

class SequencePreTokenizer final : public PreTokenizer {
  public:
    explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts) : parts_(std::move(parts)) {}
    void Apply(std::vector<Piece>& pieces) const override {
        for (const auto& p : parts_) p->Apply(pieces);
    }
    bool NeverShrinks() const override {
        return std::all_of(parts_.begin(), parts_.end(), [](const auto& p) { return p->NeverShrinks(); });
    }
    bool IsByteLevel() const override {
        return std::any_of(parts_.begin(), parts_.end(), [](const auto& p) { return p->IsByteLevel(); });
    }

  private:
    std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

}  // namespace

char32_t ByteToChar(uint8_t b) { return ByteTable()[b]; }

int CharToByte(char32_t c) {
    static const std::array<int16_t, 324> inverse = [] {
        std::array<int16_t, 324> inv;
        inv.fill(-1);
        for (int b = 0; b < 256; ++b) inv[ByteTable()[b]] = static_cast<int16_t>(b);
        return inv;
    }();
    return c < inverse.size() ? inverse[c] : -1;
}

std::string ByteLevelSpell(std::string_view bytes) {
    const auto& spellings = ByteSpellings();
    std::string out;
    out.reserve(bytes.size() + bytes.size() / 2);
    for (unsigned char b : bytes) out += spellings[b];
    return out;
}

std::unique_ptr<PreTokenizer> MakeSplitPreTokenizer(std::shared_ptr<const Regex> regex, SplitBehavior behavior,
                                                    bool invert) {
    return std::make_unique<SplitPreTokenizer>(std::move(regex), behavior, invert);
}

std::unique_ptr<PreTokenizer> MakeByteLevelPreTokenizer(bool add_prefix_space,
                                                        std::shared_ptr<const Regex> gpt2_regex) {
    return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space, std::move(gpt2_regex));
}

std::unique_ptr<PreTokenizer> MakeMetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split) {
    return std::make_unique<MetaspacePreTokenizer>(std::move(replacement), scheme, split);
}

std::unique_ptr<PreTokenizer> MakeDigitsPreTokenizer(bool individual_digits) {
    return std::make_unique<DigitsPreTokenizer>(individual_digits);
}

std::unique_ptr<PreTokenizer> MakeSequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts) {
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
}

// ---------------------------------------------------------------------------------------------------------------
// BPE

namespace {

constexpr size_t kCacheCapacity = 1 << 17;  // pre-tokens remembered
constexpr size_t kMaxCachedBytes = 256;     // longer pre-tokens are not remembered

uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

StatusOr<std::unique_ptr<BpeModel>> BpeModel::Create(std::unordered_map<std::string, int32_t> vocab,
                                                     const std::vector<std::pair<std::string, std::string>>& merges,
                                                     const BpeOptions& options, const std::string& path) {
    auto model = std::unique_ptr<BpeModel>(new BpeModel());
    model->options_ = options;
    int32_t max_id = -1;
    for (const auto& [token, id] : vocab) {
        if (id < 0) return DataLoss(path + ": model.vocab: \"" + token + "\" has a negative id");
        max_id = std::max(max_id, id);
    }
    model->id_to_token_.resize(static_cast<size_t>(max_id + 1));
    model->vocab_.reserve(vocab.size());
    for (auto& [token, id] : vocab) {
        model->id_to_token_[id] = token;
        model->vocab_.emplace(token, id);
    }
    model->merges_.reserve(merges.size());
    for (size_t rank = 0; rank < merges.size(); ++rank) {
        const auto& [left, right] = merges[rank];
        const auto l = model->vocab_.find(left);
        const auto r = model->vocab_.find(right);
        const auto m = model->vocab_.find(left + right);
        if (l == model->vocab_.end() || r == model->vocab_.end() || m == model->vocab_.end()) {
            return DataLoss(path + ": model.merges[" + std::to_string(rank) + "] (\"" + left + "\", \"" + right +
                            "\") names a token that model.vocab lacks");
        }
        model->merges_[PairKey(l->second, r->second)] = {static_cast<int32_t>(rank), m->second};
    }
    for (int b = 0; b < 256; ++b) {
        static constexpr char kHex[] = "0123456789ABCDEF";
        const std::string name = std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">";
        const auto it = model->vocab_.find(name);
        model->byte_ids_[b] = it == model->vocab_.end() ? -1 : it->second;
    }
    return model;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
    const auto it = vocab_.find(token);
    if (it == vocab_.end()) return std::nullopt;
    return it->second;
}

void BpeModel::Encode(const std::string& piece, std::vector<int32_t>* out) const {
    if (piece.empty()) return;
    if (options_.ignore_merges) {
        if (const auto it = vocab_.find(piece); it != vocab_.end()) {
            out->push_back(it->second);
            return;
        }
    }
    const bool cacheable = piece.size() <= kMaxCachedBytes;
    if (cacheable) {
        std::shared_lock lock(cache_mu_);
        if (const auto it = cache_.find(piece); it != cache_.end()) {
            out->insert(out->end(), it->second.begin(), it->second.end());
            return;
        }
    }
    const size_t first = out->size();
    MergeWord(piece, out);
    if (cacheable) {
        std::unique_lock lock(cache_mu_);
        if (cache_.size() < kCacheCapacity) {
            cache_.emplace(piece, std::vector<int32_t>(out->begin() + static_cast<std::ptrdiff_t>(first), out->end()));
        }
    }
}

void BpeModel::MergeWord(std::string_view piece, std::vector<int32_t>* out) const {
    struct Symbol {
        int32_t id;
        int32_t prev;
        int32_t next;
        bool alive;
    };
    std::vector<Symbol> symbols;
    symbols.reserve(piece.size());
    auto push = [&](int32_t id) {
        const auto n = static_cast<int32_t>(symbols.size());
        symbols.push_back({id, n - 1, -1, true});
        if (n > 0) symbols[n - 1].next = n;
    };
    for (size_t i = 0; i < piece.size();) {
        const size_t len = std::min(utf8::LeadLength(static_cast<unsigned char>(piece[i])), piece.size() - i);
        const std::string_view ch = piece.substr(i, len);
        i += len;
        if (const auto it = vocab_.find(ch); it != vocab_.end()) {
            push(it->second);
            continue;
        }
        if (options_.byte_fallback &&
            std::all_of(ch.begin(), ch.end(), [&](char c) { return byte_ids_[static_cast<unsigned char>(c)] >= 0; })) {
            for (char c : ch) push(byte_ids_[static_cast<unsigned char>(c)]);
            continue;
        }
        if (options_.unk_id) {
            if (options_.fuse_unk && !symbols.empty() && symbols.back().id == *options_.unk_id) continue;
            push(*options_.unk_id);
        }
        // No unknown token: the character is dropped, as the Rust crate does.
    }
    if (symbols.size() > 1) {
        struct Candidate {
            int32_t rank;
            int32_t pos;
            int32_t new_id;
        };
        auto later = [](const Candidate& a, const Candidate& b) {
            return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
        };
        std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> queue(later);
        auto consider = [&](int32_t pos) {
            const int32_t next = symbols[pos].next;
            if (next < 0) return;
            const auto it = merges_.find(PairKey(symbols[pos].id, symbols[next].id));
            if (it != merges_.end()) queue.push({it->second.rank, pos, it->second.new_id});
        };
        for (int32_t pos = 0; pos + 1 < static_cast<int32_t>(symbols.size()); ++pos) consider(pos);
        while (!queue.empty()) {
            const Candidate top = queue.top();
            queue.pop();
            Symbol& left = symbols[top.pos];
            if (!left.alive || left.next < 0) continue;
            const int32_t right_pos = left.next;
            const auto it = merges_.find(PairKey(left.id, symbols[right_pos].id));
            if (it == merges_.end() || it->second.new_id != top.new_id) continue;  // stale
            Symbol& right = symbols[right_pos];
            left.id = top.new_id;
            left.next = right.next;
            right.alive = false;
            if (right.next >= 0) symbols[right.next].prev = top.pos;
            if (left.prev >= 0) consider(left.prev);
            consider(top.pos);
        }
    }
    for (int32_t pos = symbols.empty() ? -1 : 0; pos >= 0; pos = symbols[pos].next) out->push_back(symbols[pos].id);
}

// ---------------------------------------------------------------------------------------------------------------
// Decoders

namespace {

class ByteLevelDecoder final : public Decoder {
  public:
    void Apply(std::vector<DecodedToken>& tokens, bool /*raw*/) const override {
        std::string bytes;
        for (const DecodedToken& t : tokens) {
            if (t.added) {
                bytes += t.text;
                continue;
            }
            // A token spelled wholly in the byte-level alphabet becomes its bytes; any other is kept as it is.
            const size_t mark = bytes.size();
            bool all = true;
            for (size_t i = 0; i < t.text.size();) {
                const size_t len = utf8::WellFormedLength(t.text, i);
                const int b = len == 0 ? -1 : CharToByte(utf8::DecodeAt(t.text, i, len));
                if (b < 0) {
                    all = false;
                    break;
                }
                bytes += static_cast<char>(b);
                i += len;
            }
            if (!all) {
                bytes.resize(mark);
                bytes += t.text;
            }
        }
        tokens.assign(1, DecodedToken{std::move(bytes), false});
    }
};

class MetaspaceDecoder final : public Decoder {
  public:
    MetaspaceDecoder(std::string replacement, PrependScheme scheme)
        : replacement_(std::move(replacement)), scheme_(scheme) {}
    void Apply(std::vector<DecodedToken>& tokens, bool raw) const override {
        for (size_t i = 0; i < tokens.size(); ++i) {
            // The first token's replacement characters stand for the space the pre-tokenizer prepended.
            const bool drop = !raw && i == 0 && scheme_ != PrependScheme::kNever;
            tokens[i].text = ReplaceLiteral(tokens[i].text, replacement_, drop ? "" : " ");
        }
    }

  private:
    std::string replacement_;
    PrependScheme scheme_;
};

// <0xNN> -> NN, or -1.
int ByteTokenValue(const std::string& t) {
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    auto hex = [](char c) {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        return -1;
    };
    const int hi = hex(t[3]);
    const int lo = hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

class ByteFallbackDecoder final : public Decoder {
  public:
    void Apply(std::vector<DecodedToken>& tokens, bool raw) const override {
        std::vector<DecodedToken> out;
        out.reserve(tokens.size());
        std::string run;
        size_t run_tokens = 0;
        auto flush = [&] {
            if (run_tokens == 0) return;
            if (raw || utf8::IsValid(run)) {
                out.push_back({run, false});
            } else {
                // As the Rust crate: bytes that are not UTF-8 become one U+FFFD each.
                for (size_t k = 0; k < run_tokens; ++k) out.push_back({std::string(utf8::kReplacement), false});
            }
            run.clear();
            run_tokens = 0;
        };
        for (DecodedToken& t : tokens) {
            const int b = t.added ? -1 : ByteTokenValue(t.text);
            if (b >= 0) {
                run += static_cast<char>(b);
                ++run_tokens;
                continue;
            }
            flush();
            out.push_back(std::move(t));
        }
        flush();
        tokens = std::move(out);
    }
};

class FuseDecoder final : public Decoder {
  public:
    void Apply(std::vector<DecodedToken>& tokens, bool /*raw*/) const override {
        std::string all;
        for (const DecodedToken& t : tokens) all += t.text;
        tokens.assign(1, DecodedToken{std::move(all), false});
    }
};

class StripDecoder final : public Decoder {
  public:
    StripDecoder(char32_t content, int start, int stop) : start_(start), stop_(stop) {
        utf8::Append(content_, content);
    }
    void Apply(std::vector<DecodedToken>& tokens, bool raw) const override {
        if (raw) return;
        for (DecodedToken& t : tokens) {
            std::string& s = t.text;
            size_t begin = 0;
            for (int k = 0; k < start_ && s.compare(begin, content_.size(), content_) == 0; ++k) {
                begin += content_.size();
            }
            size_t end = s.size();
            for (int k = 0; k < stop_ && end >= begin + content_.size() &&
                            s.compare(end - content_.size(), content_.size(), content_) == 0;
                 ++k) {
                end -= content_.size();
            }
            s = s.substr(begin, end - begin);
        }
    }

  private:
    std::string content_;
    int start_;
    int stop_;
};

class ReplaceDecoder final : public Decoder {
  public:
    ReplaceDecoder(std::string pattern, std::shared_ptr<const Regex> regex, std::string content)
        : pattern_(std::move(pattern)), regex_(std::move(regex)), content_(std::move(content)) {}
    void Apply(std::vector<DecodedToken>& tokens, bool /*raw*/) const override {
        for (DecodedToken& t : tokens) {
            t.text = regex_ ? regex_->ReplaceAll(t.text, content_) : ReplaceLiteral(t.text, pattern_, content_);
        }
    }

  private:
    std::string pattern_;
    std::shared_ptr<const Regex> regex_;
    std::string content_;
};

class SequenceDecoder final : public Decoder {
  public:
    explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts) : parts_(std::move(parts)) {}
    void Apply(std::vector<DecodedToken>& tokens, bool raw) const override {
        for (const auto& p : parts_) p->Apply(tokens, raw);
    }

  private:
    std::vector<std::unique_ptr<Decoder>> parts_;
};

}  // namespace

std::unique_ptr<Decoder> MakeByteLevelDecoder() { return std::make_unique<ByteLevelDecoder>(); }
std::unique_ptr<Decoder> MakeMetaspaceDecoder(std::string replacement, PrependScheme scheme) {
    return std::make_unique<MetaspaceDecoder>(std::move(replacement), scheme);
}
std::unique_ptr<Decoder> MakeByteFallbackDecoder() { return std::make_unique<ByteFallbackDecoder>(); }
std::unique_ptr<Decoder> MakeFuseDecoder() { return std::make_unique<FuseDecoder>(); }
std::unique_ptr<Decoder> MakeStripDecoder(char32_t content, int start, int stop) {
    return std::make_unique<StripDecoder>(content, start, stop);
}
std::unique_ptr<Decoder> MakeReplaceDecoder(std::string pattern, std::shared_ptr<const Regex> regex,
                                            std::string content) {
    return std::make_unique<ReplaceDecoder>(std::move(pattern), std::move(regex), std::move(content));
}
std::unique_ptr<Decoder> MakeSequenceDecoder(std::vector<std::unique_ptr<Decoder>> parts) {
    return std::make_unique<SequenceDecoder>(std::move(parts));
}

// ---------------------------------------------------------------------------------------------------------------
// Added tokens

void AddedTokenMatcher::Build(std::vector<std::string> patterns, std::vector<const AddedToken*> tokens) {
    nodes_.assign(1, Node{});
    tokens_ = std::move(tokens);
    first_.fill(false);
    for (size_t t = 0; t < patterns.size(); ++t) {
        const std::string& p = patterns[t];
        if (p.empty()) continue;
        first_[static_cast<unsigned char>(p[0])] = true;
        int32_t node = 0;
        for (unsigned char c : p) {
            auto& next = nodes_[node].next;
            auto it = std::lower_bound(
                next.begin(), next.end(), c,
                [](const std::pair<unsigned char, int32_t>& e, unsigned char v) { return e.first < v; });
            if (it == next.end() || it->first != c) {
                const auto child = static_cast<int32_t>(nodes_.size());
                it = next.insert(it, {c, child});
                nodes_.emplace_back();  // invalidates `next`; `child` is the index
                node = child;
            } else {
                node = it->second;
            }
        }
        if (nodes_[node].token < 0) nodes_[node].token = static_cast<int32_t>(t);
    }
}

std::pair<int32_t, size_t> AddedTokenMatcher::Longest(std::string_view text, size_t i) const {
    int32_t node = 0;
    std::pair<int32_t, size_t> best{-1, 0};
    for (size_t k = i; k < text.size(); ++k) {
        const auto c = static_cast<unsigned char>(text[k]);
        const auto& next = nodes_[node].next;
        const auto it =
            std::lower_bound(next.begin(), next.end(), c,
                             [](const std::pair<unsigned char, int32_t>& e, unsigned char v) { return e.first < v; });
        if (it == next.end() || it->first != c) break;
        node = it->second;
        if (nodes_[node].token >= 0) best = {nodes_[node].token, k + 1 - i};
    }
    return best;
}

void AddedTokenMatcher::Split(std::string_view text, std::vector<Segment>* out) const {
    size_t start = 0;  // where the current plain text began
    size_t i = 0;
    while (i < text.size()) {
        if (!first_[static_cast<unsigned char>(text[i])]) {
            ++i;
            continue;
        }
        const auto [index, len] = Longest(text, i);
        if (index < 0) {
            ++i;
            continue;
        }
        const AddedToken* token = tokens_[index];
        size_t begin = i;
        size_t end = i + len;
        if (token->single_word) {
            const auto before = CharBefore(text, begin);
            const auto after = CharAt(text, end);
            if ((before && IsWordChar(*before)) || (after && IsWordChar(*after))) {
                i = end;  // this match is not a token here; the search goes on after it
                continue;
            }
        }
        if (token->lstrip) {
            while (begin > start) {
                size_t b = begin - 1;
                while (b > start && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
                if (!IsWhitespace(utf8::DecodeAt(text, b, begin - b))) break;
                begin = b;
            }
        }
        if (token->rstrip) {
            while (end < text.size()) {
                const auto c = CharAt(text, end);
                if (!IsWhitespace(*c)) break;
                end += utf8::LeadLength(static_cast<unsigned char>(text[end]));
            }
        }
        if (begin > start) out->push_back({start, begin, nullptr});
        out->push_back({begin, end, token});
        start = end;
        i = end;
    }
    if (text.size() > start) out->push_back({start, text.size(), nullptr});
}

}  // namespace uniattn::hf
