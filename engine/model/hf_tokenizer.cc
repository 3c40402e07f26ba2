// Hugging Face tokenizer.json (the Rust `tokenizers` crate's file) and tokenizer_config.json: a BPE model with
// its normalizer, pre-tokenizer, post-processor, decoder and added tokens (model/hf_components.h).
//
// What is read, and how (the rest of the files is ignored: truncation, padding, offsets, the pair template):
//   - added tokens are split out of the raw text first (those with normalized=false), then the text between
//     them is normalized and split again on the normalized ones; special tokens are never kept as text
//     (transformers' split_special_tokens=False, vLLM's default);
//   - tokenizer_config.json's added_tokens_decoder adds tokens tokenizer.json lacks; the tokens it names as
//     bos/eos/unk/pad_token and additional_special_tokens are special (transformers registers them so);
//   - add_bos_token / add_eos_token, when tokenizer_config.json sets either, decide what Encode adds around a
//     sequence (BOS before, EOS after), as transformers' Llama-family tokenizers rebuild their post-processor;
//     otherwise tokenizer.json's post_processor does;
//   - clean_up_tokenization_spaces is not applied (vLLM's incremental detokenizer does not either).
#include <algorithm>
#include <unordered_set>

#include "model/hf_components.h"
#include "model/tokenizer_loaders.h"
#include "model/utf8.h"
#include "uniattn/json_io.h"
#include "util/file.h"

namespace uniattn {

namespace {

using nlohmann::json;

// Errors while reading one file: every message starts with the file's path.
class FileReader {
  public:
    explicit FileReader(std::string path) : path_(std::move(path)) {}
    const std::string& path() const { return path_; }

    Status Bad(const std::string& where, const std::string& what) const {
        return DataLoss(path_ + ": " + where + ": " + what);
    }
    Status Unsupported(const std::string& where, const std::string& what) const {
        return Unimplemented(path_ + ": " + where + ": " + what);
    }

    StatusOr<std::string> String(const json& j, const std::string& key, const std::string& where,
                                 std::optional<std::string> fallback = std::nullopt) const {
        const json* v = JsonFind(j, key);
        if (v == nullptr || v->is_null()) {
            if (fallback) return *fallback;
            return Bad(where, "\"" + key + "\" is missing");
        }
        if (!v->is_string()) return Bad(where + "." + key, "must be a string");
        return v->get<std::string>();
    }
    StatusOr<bool> Bool(const json& j, const std::string& key, const std::string& where, bool fallback) const {
        const json* v = JsonFind(j, key);
        if (v == nullptr || v->is_null()) return fallback;
        if (!v->is_boolean()) return Bad(where + "." + key, "must be true or false");
        return v->get<bool>();
    }
    StatusOr<int64_t> Int(const json& j, const std::string& key, const std::string& where, int64_t fallback) const {
        const json* v = JsonFind(j, key);
        if (v == nullptr || v->is_null()) return fallback;
        const auto i = JsonInt64(*v);
        if (!i) return Bad(where + "." + key, "must be an integer");
        return *i;
    }

  private:
    std::string path_;
};

// A pattern object {"String": "..."} or {"Regex": "..."}: the literal text, or a compiled regex.
struct Pattern {
    std::string literal;
    std::shared_ptr<const hf::Regex> regex;
};

StatusOr<Pattern> ReadPattern(const FileReader& r, const json& node, const std::string& where,
                              bool subject_may_be_invalid, bool compile_literal) {
    const json* p = JsonFind(node, "pattern");
    if (p == nullptr || !p->is_object())
        return r.Bad(where, "\"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
    Pattern out;
    if (const json* s = JsonFind(*p, "String"); s && s->is_string()) {
        out.literal = s->get<std::string>();
        if (compile_literal) {
            UA_ASSIGN_OR_RETURN(out.regex, hf::Regex::Compile(out.literal, /*literal=*/true, subject_may_be_invalid,
                                                              r.path() + ": " + where + ".pattern"));
        }
        return out;
    }
    if (const json* s = JsonFind(*p, "Regex"); s && s->is_string()) {
        UA_ASSIGN_OR_RETURN(out.regex,
                            hf::Regex::Compile(s->get<std::string>(), /*literal=*/false, subject_may_be_invalid,
                                               r.path() + ": " + where + ".pattern"));
        return out;
    }
    return r.Bad(where, "\"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
}

// One code point from a JSON string (Metaspace's replacement, Strip's content).
StatusOr<std::string> ReadChar(const FileReader& r, const json& node, const std::string& key, const std::string& where,
                               const std::string& fallback) {
    UA_ASSIGN_OR_RETURN(std::string s, r.String(node, key, where, fallback));
    if (s.empty() || utf8::WellFormedLength(s, 0) != s.size()) {
        return r.Bad(where + "." + key, "must be one character");
    }
    return s;
}

StatusOr<std::string> TypeOf(const FileReader& r, const json& node, const std::string& where) {
    if (!node.is_object()) return r.Bad(where, "must be an object or null");
    return r.String(node, "type", where);
}

StatusOr<std::unique_ptr<hf::Normalizer>> ReadNormalizer(const FileReader& r, const json& node,
                                                         const std::string& where) {
    if (node.is_null()) return std::unique_ptr<hf::Normalizer>();
    UA_ASSIGN_OR_RETURN(const std::string type, TypeOf(r, node, where));
    if (type == "NFC") {
        auto n = hf::MakeUnicodeNormalizer(hf::UnicodeForm::kNfc);
        if (!n) return Internal(r.path() + ": " + where + ": ICU has no NFC normalizer");
        return n;
    }
    if (type == "Prepend") {
        UA_ASSIGN_OR_RETURN(std::string prepend, r.String(node, "prepend", where));
        return hf::MakePrependNormalizer(std::move(prepend));
    }
    if (type == "Replace") {
        UA_ASSIGN_OR_RETURN(Pattern p, ReadPattern(r, node, where, false, false));
        UA_ASSIGN_OR_RETURN(std::string content, r.String(node, "content", where));
        return hf::MakeReplaceNormalizer(std::move(p.literal), std::move(p.regex), std::move(content));
    }
    if (type == "Sequence") {
        const json* list = JsonFind(node, "normalizers");
        if (list == nullptr || !list->is_array()) return r.Bad(where, "\"normalizers\" must be a list");
        std::vector<std::unique_ptr<hf::Normalizer>> parts;
        for (size_t i = 0; i < list->size(); ++i) {
            UA_ASSIGN_OR_RETURN(auto part,
                                ReadNormalizer(r, (*list)[i], where + ".normalizers[" + std::to_string(i) + "]"));
            if (part) parts.push_back(std::move(part));
        }
        return hf::MakeSequenceNormalizer(std::move(parts));
    }
    return r.Unsupported(where, "normalizer type \"" + type + "\" is not supported (NFC, Prepend, Replace, Sequence)");
}

StatusOr<hf::PrependScheme> ReadPrependScheme(const FileReader& r, const json& node, const std::string& where) {
    const json* scheme = JsonFind(node, "prepend_scheme");
    if (scheme == nullptr || scheme->is_null()) {
        // Files written before prepend_scheme existed say add_prefix_space.
        UA_ASSIGN_OR_RETURN(const bool add, r.Bool(node, "add_prefix_space", where, true));
        return add ? hf::PrependScheme::kAlways : hf::PrependScheme::kNever;
    }
    if (!scheme->is_string()) return r.Bad(where + ".prepend_scheme", "must be a string");
    const std::string s = scheme->get<std::string>();
    if (s == "first") return hf::PrependScheme::kFirst;
    if (s == "always") return hf::PrependScheme::kAlways;
    if (s == "never") return hf::PrependScheme::kNever;
    return r.Bad(where + ".prepend_scheme", "\"" + s + "\" is not first, always or never");
}

StatusOr<std::unique_ptr<hf::PreTokenizer>> ReadPreTokenizer(const FileReader& r, const json& node,
                                                             const std::string& where) {
    if (node.is_null()) return std::unique_ptr<hf::PreTokenizer>();
    UA_ASSIGN_OR_RETURN(const std::string type, TypeOf(r, node, where));
    if (type == "Split") {
        UA_ASSIGN_OR_RETURN(Pattern p, ReadPattern(r, node, where, false, true));
        UA_ASSIGN_OR_RETURN(const std::string behavior, r.String(node, "behavior", where));
        UA_ASSIGN_OR_RETURN(const bool invert, r.Bool(node, "invert", where, false));
        static const std::pair<const char*, hf::SplitBehavior> kBehaviors[] = {
            {"Removed", hf::SplitBehavior::kRemoved},
            {"Isolated", hf::SplitBehavior::kIsolated},
            {"MergedWithPrevious", hf::SplitBehavior::kMergedWithPrevious},
            {"MergedWithNext", hf::SplitBehavior::kMergedWithNext},
            {"Contiguous", hf::SplitBehavior::kContiguous},
        };
        for (const auto& [name, value] : kBehaviors) {
            if (behavior == name) return hf::MakeSplitPreTokenizer(std::move(p.regex), value, invert);
        }
        return r.Unsupported(where + ".behavior", "split behavior \"" + behavior + "\" is not supported");
    }
    if (type == "ByteLevel") {
        UA_ASSIGN_OR_RETURN(const bool add_prefix_space, r.Bool(node, "add_prefix_space", where, true));
        UA_ASSIGN_OR_RETURN(const bool use_regex, r.Bool(node, "use_regex", where, true));
        std::shared_ptr<const hf::Regex> regex;
        if (use_regex) {
            UA_ASSIGN_OR_RETURN(regex, hf::Regex::Compile(hf::kGpt2Pattern, false, false, "the GPT-2 pattern"));
        }
        return hf::MakeByteLevelPreTokenizer(add_prefix_space, std::move(regex));
    }
    if (type == "Metaspace") {
        UA_ASSIGN_OR_RETURN(std::string replacement, ReadChar(r, node, "replacement", where, "\xE2\x96\x81"));
        UA_ASSIGN_OR_RETURN(const hf::PrependScheme scheme, ReadPrependScheme(r, node, where));
        UA_ASSIGN_OR_RETURN(const bool split, r.Bool(node, "split", where, true));
        return hf::MakeMetaspacePreTokenizer(std::move(replacement), scheme, split);
    }
    if (type == "Digits") {
        UA_ASSIGN_OR_RETURN(const bool individual, r.Bool(node, "individual_digits", where, false));
        return hf::MakeDigitsPreTokenizer(individual);
    }
    if (type == "Sequence") {
        const json* list = JsonFind(node, "pretokenizers");
        if (list == nullptr || !list->is_array()) return r.Bad(where, "\"pretokenizers\" must be a list");
        std::vector<std::unique_ptr<hf::PreTokenizer>> parts;
        for (size_t i = 0; i < list->size(); ++i) {
            UA_ASSIGN_OR_RETURN(auto part,
                                ReadPreTokenizer(r, (*list)[i], where + ".pretokenizers[" + std::to_string(i) + "]"));
            if (part) parts.push_back(std::move(part));
        }
        return hf::MakeSequencePreTokenizer(std::move(parts));
    }
    return r.Unsupported(
        where, "pre_tokenizer type \"" + type + "\" is not supported (Split, ByteLevel, Metaspace, Digits, Sequence)");
}

StatusOr<std::unique_ptr<hf::Decoder>> ReadDecoder(const FileReader& r, const json& node, const std::string& where) {
    if (node.is_null()) return std::unique_ptr<hf::Decoder>();
    UA_ASSIGN_OR_RETURN(const std::string type, TypeOf(r, node, where));
    if (type == "ByteLevel") return hf::MakeByteLevelDecoder();
    if (type == "Metaspace") {
        UA_ASSIGN_OR_RETURN(std::string replacement, ReadChar(r, node, "replacement", where, "\xE2\x96\x81"));
        UA_ASSIGN_OR_RETURN(const hf::PrependScheme scheme, ReadPrependScheme(r, node, where));
        return hf::MakeMetaspaceDecoder(std::move(replacement), scheme);
    }
    if (type == "ByteFallback") return hf::MakeByteFallbackDecoder();
    if (type == "Fuse") return hf::MakeFuseDecoder();
    if (type == "Strip") {
        UA_ASSIGN_OR_RETURN(const std::string content, ReadChar(r, node, "content", where, " "));
        UA_ASSIGN_OR_RETURN(const int64_t start, r.Int(node, "start", where, 0));
        UA_ASSIGN_OR_RETURN(const int64_t stop, r.Int(node, "stop", where, 0));
        if (start < 0 || stop < 0 || start > 1 << 20 || stop > 1 << 20) {
            return r.Bad(where, "\"start\" and \"stop\" must be small counts");
        }
        return hf::MakeStripDecoder(utf8::DecodeAt(content, 0, content.size()), static_cast<int>(start),
                                    static_cast<int>(stop));
    }
    if (type == "Replace") {
        UA_ASSIGN_OR_RETURN(Pattern p, ReadPattern(r, node, where, true, false));
        UA_ASSIGN_OR_RETURN(std::string content, r.String(node, "content", where));
        return hf::MakeReplaceDecoder(std::move(p.literal), std::move(p.regex), std::move(content));
    }
    if (type == "Sequence") {
        const json* list = JsonFind(node, "decoders");
        if (list == nullptr || !list->is_array()) return r.Bad(where, "\"decoders\" must be a list");
        std::vector<std::unique_ptr<hf::Decoder>> parts;
        for (size_t i = 0; i < list->size(); ++i) {
            UA_ASSIGN_OR_RETURN(auto part, ReadDecoder(r, (*list)[i], where + ".decoders[" + std::to_string(i) + "]"));
            if (part) parts.push_back(std::move(part));
        }
        return hf::MakeSequenceDecoder(std::move(parts));
    }
    return r.Unsupported(where, "decoder type \"" + type +
                                    "\" is not supported (ByteLevel, Metaspace, ByteFallback, Fuse, Strip, Replace, "
                                    "Sequence)");
}

// What the post-processor adds around a single sequence, as token names (resolved to ids by the caller) or ids.
struct Template {
    std::vector<int32_t> before;
    std::vector<int32_t> after;
};

Status ReadPostProcessor(const FileReader& r, const json& node, const std::string& where, Template* out) {
    if (node.is_null()) return Status::Ok();
    UA_ASSIGN_OR_RETURN(const std::string type, TypeOf(r, node, where));
    if (type == "ByteLevel") return Status::Ok();  // offsets only
    if (type == "Sequence") {
        const json* list = JsonFind(node, "processors");
        if (list == nullptr || !list->is_array()) return r.Bad(where, "\"processors\" must be a list");
        for (size_t i = 0; i < list->size(); ++i) {
            UA_RETURN_IF_ERROR(ReadPostProcessor(r, (*list)[i], where + ".processors[" + std::to_string(i) + "]", out));
        }
        return Status::Ok();
    }
    if (type != "TemplateProcessing") {
        return r.Unsupported(
            where, "post_processor type \"" + type + "\" is not supported (TemplateProcessing, ByteLevel, Sequence)");
    }
    const json* single = JsonFind(node, "single");
    const json* specials = JsonFind(node, "special_tokens");
    if (single == nullptr || !single->is_array()) return r.Bad(where, "\"single\" must be a list");
    Template t;
    bool seen_sequence = false;
    for (size_t i = 0; i < single->size(); ++i) {
        const json& item = (*single)[i];
        const std::string at = where + ".single[" + std::to_string(i) + "]";
        if (const json* seq = JsonFind(item, "Sequence")) {
            UA_ASSIGN_OR_RETURN(const std::string id, r.String(*seq, "id", at + ".Sequence"));
            if (id != "A" || seen_sequence) return r.Bad(at, "a single-sequence template holds $A once");
            seen_sequence = true;
            continue;
        }
        const json* special = JsonFind(item, "SpecialToken");
        if (special == nullptr) return r.Bad(at, "must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
        UA_ASSIGN_OR_RETURN(const std::string name, r.String(*special, "id", at + ".SpecialToken"));
        const json* entry = specials ? JsonFind(*specials, name) : nullptr;
        const json* ids = entry ? JsonFind(*entry, "ids") : nullptr;
        if (ids == nullptr || !ids->is_array()) {
            return r.Bad(at, "special token \"" + name + "\" has no ids in " + where + ".special_tokens");
        }
        for (const json& id : *ids) {
            const auto v = JsonInt64(id);
            if (!v || *v < 0 || *v > INT32_MAX)
                return r.Bad(where + ".special_tokens." + name, "ids must be token ids");
            (seen_sequence ? t.after : t.before).push_back(static_cast<int32_t>(*v));
        }
    }
    if (!seen_sequence) return r.Bad(where + ".single", "the template has no $A");
    // A later processor wraps what the earlier ones produced.
    out->before.insert(out->before.begin(), t.before.begin(), t.before.end());
    out->after.insert(out->after.end(), t.after.begin(), t.after.end());
    return Status::Ok();
}

StatusOr<hf::AddedToken> ReadAddedToken(const FileReader& r, const json& node, const std::string& where,
                                        std::optional<int64_t> id) {
    hf::AddedToken t;
    if (!id) {
        UA_ASSIGN_OR_RETURN(id, r.Int(node, "id", where, -1));
    }
    if (*id < 0 || *id > INT32_MAX) return r.Bad(where, "\"id\" must be a token id");
    t.id = static_cast<int32_t>(*id);
    UA_ASSIGN_OR_RETURN(t.content, r.String(node, "content", where));
    if (t.content.empty()) return r.Bad(where, "\"content\" is empty");
    if (!utf8::IsValid(t.content)) return r.Bad(where, "\"content\" is not UTF-8");
    UA_ASSIGN_OR_RETURN(t.special, r.Bool(node, "special", where, false));
    UA_ASSIGN_OR_RETURN(t.lstrip, r.Bool(node, "lstrip", where, false));
    UA_ASSIGN_OR_RETURN(t.rstrip, r.Bool(node, "rstrip", where, false));
    UA_ASSIGN_OR_RETURN(t.single_word, r.Bool(node, "single_word", where, false));
    UA_ASSIGN_OR_RETURN(t.normalized, r.Bool(node, "normalized", where, !t.special));
    return t;
}

class HfTokenizer final : public Tokenizer {
  public:
    Status Init(const std::string& dir, const ModelConfig& config);

    using Tokenizer::Decode;
    std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const override;
    std::string Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override;
    std::string IdToPiece(int32_t id) const override;
    std::string TokenBytes(int32_t id) const override;
    bool IsSpecial(int32_t id) const override {
        const hf::AddedToken* t = Added(id);
        return t != nullptr && t->special;
    }
    std::optional<int32_t> TokenId(std::string_view special_text) const override {
        const auto it = added_by_content_.find(std::string(special_text));
        if (it == added_by_content_.end()) return std::nullopt;
        return it->second;
    }
    std::vector<int32_t> eos_ids() const override { return {eos_id_}; }
    int vocab_size() const override { return vocab_size_; }
    int max_token_bytes() const override { return max_token_bytes_; }

  private:
    const hf::AddedToken* Added(int32_t id) const {
        if (id < 0 || static_cast<size_t>(id) >= added_index_.size() || added_index_[id] < 0) return nullptr;
        return &added_[added_index_[id]];
    }
    // The ids of text that holds no raw-text added token; `at_start`: it begins the input.
    void EncodeSection(std::string text, bool at_start, std::vector<int32_t>* out) const;
    void EncodePlain(std::string text, bool at_start, std::vector<int32_t>* out) const;
    std::vector<hf::DecodedToken> Tokens(const std::vector<int32_t>& ids, bool skip_special_tokens) const;
    Status ReadConfig(const std::string& path, const ModelConfig& config);
    int MeasureMaxTokenBytes() const;

    std::unique_ptr<hf::Normalizer> normalizer_;
    std::unique_ptr<hf::PreTokenizer> pre_tokenizer_;
    std::unique_ptr<hf::BpeModel> model_;
    std::unique_ptr<hf::Decoder> decoder_;
    Template template_;
    std::vector<hf::AddedToken> added_;
    std::vector<int32_t> added_index_;  // id -> index into added_, -1 when not an added token
    std::unordered_map<std::string, int32_t> added_by_content_;
    hf::AddedTokenMatcher raw_matcher_;         // added tokens with normalized=false, in the raw text
    hf::AddedTokenMatcher normalized_matcher_;  // the others, in normalized text
    int vocab_size_ = 0;
    int max_token_bytes_ = 0;
};

Status HfTokenizer::Init(const std::string& dir, const ModelConfig& config) {
    const std::string path = dir + "/tokenizer.json";
    const FileReader r(path);
    UA_ASSIGN_OR_RETURN(const std::string text, ReadFile(path));
    UA_ASSIGN_OR_RETURN(const json root, ParseJsonFile(text, path));
    if (!root.is_object()) return r.Bad("the document", "must be a JSON object");

    // The model.
    const json* model = JsonFind(root, "model");
    if (model == nullptr || !model->is_object()) return r.Bad("model", "must be an object");
    std::string type = "BPE";  // files from older versions name no type; their BPE has merges
    if (const json* t = JsonFind(*model, "type"); t && !t->is_null()) {
        if (!t->is_string()) return r.Bad("model.type", "must be a string");
        type = t->get<std::string>();
    } else if (JsonFind(*model, "merges") == nullptr) {
        return r.Unsupported("model", "a model without \"type\" and \"merges\" is not BPE; only BPE is supported");
    }
    if (type != "BPE") return r.Unsupported("model.type", "model type \"" + type + "\" is not supported (BPE)");
    if (const json* d = JsonFind(*model, "dropout"); d && !d->is_null() && !(d->is_number() && d->get<double>() == 0)) {
        return r.Unsupported("model.dropout", "BPE dropout is not supported");
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
        UA_ASSIGN_OR_RETURN(const std::string v, r.String(*model, key, "model", ""));
        if (!v.empty())
            return r.Unsupported(std::string("model.") + key, "a non-empty " + std::string(key) + " is not supported");
    }
    const json* vocab_json = JsonFind(*model, "vocab");
    if (vocab_json == nullptr || !vocab_json->is_object()) return r.Bad("model.vocab", "must be an object");
    std::unordered_map<std::string, int32_t> vocab;
    vocab.reserve(vocab_json->size());
    for (const auto& [token, id] : vocab_json->items()) {
        const auto v = JsonInt64(id);
        if (!v || *v < 0 || *v > INT32_MAX) return r.Bad("model.vocab", "\"" + token + "\" must map to a token id");
        vocab.emplace(token, static_cast<int32_t>(*v));
    }
    const json* merges_json = JsonFind(*model, "merges");
    if (merges_json == nullptr || !merges_json->is_array()) return r.Bad("model.merges", "must be a list");
    std::vector<std::pair<std::string, std::string>> merges;
    merges.reserve(merges_json->size());
    for (size_t i = 0; i < merges_json->size(); ++i) {
        const json& m = (*merges_json)[i];
        if (m.is_string()) {  // "left right"
            const std::string s = m.get<std::string>();
            const size_t space = s.find(' ');
            if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
                return r.Bad("model.merges[" + std::to_string(i) + "]", "\"" + s + "\" is not two tokens");
            }
            merges.emplace_back(s.substr(0, space), s.substr(space + 1));
        } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // ["left", "right"]
            merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
        } else {
            return r.Bad("model.merges[" + std::to_string(i) + "]", "must be \"a b\" or [\"a\", \"b\"]");
        }
    }
    hf::BpeOptions options;
    UA_ASSIGN_OR_RETURN(options.fuse_unk, r.Bool(*model, "fuse_unk", "model", false));
    UA_ASSIGN_OR_RETURN(options.byte_fallback, r.Bool(*model, "byte_fallback", "model", false));
    UA_ASSIGN_OR_RETURN(options.ignore_merges, r.Bool(*model, "ignore_merges", "model", false));
    UA_ASSIGN_OR_RETURN(const std::string unk, r.String(*model, "unk_token", "model", ""));
    if (!unk.empty()) {
        const auto it = vocab.find(unk);
        if (it == vocab.end()) return r.Bad("model.unk_token", "\"" + unk + "\" is not in model.vocab");
        options.unk_id = it->second;
    }
    UA_ASSIGN_OR_RETURN(model_, hf::BpeModel::Create(std::move(vocab), merges, options, path));
    merges.clear();

    // The pipeline around it.
    static const json kNull;
    auto member = [&](const char* key) -> const json& {
        const json* v = JsonFind(root, key);
        return v ? *v : kNull;
    };
    UA_ASSIGN_OR_RETURN(normalizer_, ReadNormalizer(r, member("normalizer"), "normalizer"));
    UA_ASSIGN_OR_RETURN(pre_tokenizer_, ReadPreTokenizer(r, member("pre_tokenizer"), "pre_tokenizer"));
    UA_ASSIGN_OR_RETURN(decoder_, ReadDecoder(r, member("decoder"), "decoder"));
    UA_RETURN_IF_ERROR(ReadPostProcessor(r, member("post_processor"), "post_processor", &template_));

    // Added tokens.
    const json& added_json = member("added_tokens");
    if (!added_json.is_null() && !added_json.is_array()) return r.Bad("added_tokens", "must be a list");
    if (added_json.is_array()) {
        for (size_t i = 0; i < added_json.size(); ++i) {
            UA_ASSIGN_OR_RETURN(
                hf::AddedToken t,
                ReadAddedToken(r, added_json[i], "added_tokens[" + std::to_string(i) + "]", std::nullopt));
            added_.push_back(std::move(t));
        }
    }
    bos_id_ = config.bos_token_id;
    eos_id_ = config.eos_token_id;
    const std::string cfg_path = dir + "/tokenizer_config.json";
    if (FileExists(cfg_path)) UA_RETURN_IF_ERROR(ReadConfig(cfg_path, config));

    // Index the added tokens; a later entry for the same id or text replaces an earlier one.
    int32_t max_id = static_cast<int32_t>(model_->id_to_token().size()) - 1;
    for (const hf::AddedToken& t : added_) max_id = std::max(max_id, t.id);
    vocab_size_ = max_id + 1;
    added_index_.assign(static_cast<size_t>(vocab_size_), -1);
    for (size_t i = 0; i < added_.size(); ++i) {
        added_index_[added_[i].id] = static_cast<int32_t>(i);
        added_by_content_[added_[i].content] = added_[i].id;
    }
    std::vector<std::string> raw_patterns, normalized_patterns;
    std::vector<const hf::AddedToken*> raw_tokens, normalized_tokens;
    for (size_t i = 0; i < added_.size(); ++i) {
        const hf::AddedToken& t = added_[i];
        if (added_index_[t.id] != static_cast<int32_t>(i)) continue;  // replaced
        if (t.normalized && normalizer_) {
            std::string content = t.content;
            normalizer_->Apply(content);
            normalized_patterns.push_back(std::move(content));
            normalized_tokens.push_back(&t);
        } else if (t.normalized) {
            normalized_patterns.push_back(t.content);
            normalized_tokens.push_back(&t);
        } else {
            raw_patterns.push_back(t.content);
            raw_tokens.push_back(&t);
        }
    }
    raw_matcher_.Build(std::move(raw_patterns), std::move(raw_tokens));
    normalized_matcher_.Build(std::move(normalized_patterns), std::move(normalized_tokens));

    for (int32_t id : template_.before) {
        if (id >= vocab_size_)
            return r.Bad("post_processor", "special token id " + std::to_string(id) + " is not in the vocabulary");
    }
    for (int32_t id : template_.after) {
        if (id >= vocab_size_)
            return r.Bad("post_processor", "special token id " + std::to_string(id) + " is not in the vocabulary");
    }
    add_bos_ = !template_.before.empty() || !template_.after.empty();
    max_token_bytes_ = MeasureMaxTokenBytes();
    return Status::Ok();
}

Status HfTokenizer::ReadConfig(const std::string& path, const ModelConfig& /*config*/) {
    const FileReader r(path);
    UA_ASSIGN_OR_RETURN(const std::string text, ReadFile(path));
    UA_ASSIGN_OR_RETURN(const json cfg, ParseJsonFile(text, path));
    if (!cfg.is_object()) return r.Bad("the document", "must be a JSON object");
    model_max_length_ = ModelMaxLength(cfg);

    if (const json* decoder = JsonFind(cfg, "added_tokens_decoder"); decoder && !decoder->is_null()) {
        if (!decoder->is_object()) return r.Bad("added_tokens_decoder", "must be an object");
        std::unordered_set<int32_t> known;
        for (const hf::AddedToken& t : added_) known.insert(t.id);
        for (const auto& [key, node] : decoder->items()) {
            const std::string where = "added_tokens_decoder." + key;
            char* end = nullptr;
            const long long id = std::strtoll(key.c_str(), &end, 10);
            if (key.empty() || *end != '\0' || id < 0 || id > INT32_MAX)
                return r.Bad(where, "the key must be a token id");
            UA_ASSIGN_OR_RETURN(hf::AddedToken t, ReadAddedToken(r, node, where, id));
            if (known.count(t.id)) {
                // tokenizer.json's entry stands; the config can only make it special.
                for (hf::AddedToken& a : added_) {
                    if (a.id == t.id && t.special) a.special = true;
                }
                continue;
            }
            added_.push_back(std::move(t));
        }
    }

    // A named token: a string or {"content": ...}; null or absent: none.
    auto token_text = [&](const char* key) -> StatusOr<std::optional<std::string>> {
        const json* v = JsonFind(cfg, key);
        if (v == nullptr || v->is_null()) return std::optional<std::string>();
        if (v->is_string()) return std::optional<std::string>(v->get<std::string>());
        if (v->is_object()) {
            UA_ASSIGN_OR_RETURN(std::string content, r.String(*v, "content", key));
            return std::optional<std::string>(std::move(content));
        }
        return r.Bad(key, "must be a string, {\"content\": ...} or null");
    };
    // The token's id, made a special added token as transformers does.
    auto special_id = [&](const std::string& where, const std::string& content) -> StatusOr<int32_t> {
        for (hf::AddedToken& a : added_) {
            if (a.content == content) {
                a.special = true;
                return a.id;
            }
        }
        const auto id = model_->TokenToId(content);
        if (!id) return r.Bad(where, "\"" + content + "\" is neither an added token nor in the vocabulary");
        hf::AddedToken t;
        t.id = *id;
        t.content = content;
        t.special = true;
        added_.push_back(std::move(t));
        return *id;
    };
    for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token"}) {
        UA_ASSIGN_OR_RETURN(const std::optional<std::string> content, token_text(key));
        if (!content) continue;
        UA_ASSIGN_OR_RETURN(const int32_t id, special_id(key, *content));
        if (std::string_view(key) == "bos_token") bos_id_ = id;
        if (std::string_view(key) == "eos_token") eos_id_ = id;
    }
    if (const json* extra = JsonFind(cfg, "additional_special_tokens"); extra && !extra->is_null()) {
        if (!extra->is_array()) return r.Bad("additional_special_tokens", "must be a list");
        for (size_t i = 0; i < extra->size(); ++i) {
            const json& e = (*extra)[i];
            const std::string where = "additional_special_tokens[" + std::to_string(i) + "]";
            std::string content;
            if (e.is_string()) {
                content = e.get<std::string>();
            } else if (e.is_object()) {
                UA_ASSIGN_OR_RETURN(content, r.String(e, "content", where));
            } else {
                return r.Bad(where, "must be a string or {\"content\": ...}");
            }
            UA_RETURN_IF_ERROR(special_id(where, content).status());
        }
    }

    // add_bos_token / add_eos_token rebuild what Encode adds (transformers' Llama-family behaviour).
    const json* add_bos = JsonFind(cfg, "add_bos_token");
    const json* add_eos = JsonFind(cfg, "add_eos_token");
    if ((add_bos && add_bos->is_boolean()) || (add_eos && add_eos->is_boolean())) {
        UA_ASSIGN_OR_RETURN(const bool bos, r.Bool(cfg, "add_bos_token", "add_bos_token", false));
        UA_ASSIGN_OR_RETURN(const bool eos, r.Bool(cfg, "add_eos_token", "add_eos_token", false));
        UA_ASSIGN_OR_RETURN(const std::optional<std::string> bos_text, token_text("bos_token"));
        UA_ASSIGN_OR_RETURN(const std::optional<std::string> eos_text, token_text("eos_token"));
        if (bos && !bos_text) return r.Bad("add_bos_token", "is true but bos_token names no token");
        if (eos && !eos_text) return r.Bad("add_eos_token", "is true but eos_token names no token");
        template_.before.clear();
        template_.after.clear();
        if (bos) template_.before.push_back(bos_id_);
        if (eos) template_.after.push_back(eos_id_);
    }
    return Status::Ok();
}

// The bound holds when nothing between the input and the model shrinks text, the model spells every input
// character (byte-level alphabet, byte fallback, or an unknown token per character), and no added token takes
// whitespace beside it.
int HfTokenizer::MeasureMaxTokenBytes() const {
    if (normalizer_ && !normalizer_->NeverShrinks()) return 0;
    if (pre_tokenizer_ && !pre_tokenizer_->NeverShrinks()) return 0;
    const bool byte_level = pre_tokenizer_ && pre_tokenizer_->IsByteLevel();
    const hf::BpeOptions& options = model_->options();
    bool covered = false;
    if (byte_level) {
        covered = true;
        for (int b = 0; b < 256; ++b) {
            std::string spelled;
            utf8::Append(spelled, hf::ByteToChar(static_cast<uint8_t>(b)));
            covered = covered && model_->TokenToId(spelled).has_value();
        }
    } else if (options.byte_fallback) {
        covered = true;
        static constexpr char kHex[] = "0123456789ABCDEF";
        for (int b = 0; b < 256; ++b) {
            covered = covered && model_->TokenToId(std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">").has_value();
        }
    } else if (options.unk_id && !options.fuse_unk) {
        covered = true;
    }
    if (!covered) return 0;
    size_t longest = options.unk_id ? 4 : 1;  // an unknown token stands for one character
    for (const std::string& token : model_->id_to_token()) {
        size_t n = token.size();
        if (byte_level) {  // one input byte per character of the spelling
            n = 0;
            for (size_t i = 0; i < token.size(); i += utf8::LeadLength(static_cast<unsigned char>(token[i]))) ++n;
        }
        longest = std::max(longest, n);
    }
    for (const hf::AddedToken& t : added_) {
        if (t.lstrip || t.rstrip) return 0;
        longest = std::max(longest, t.content.size());
    }
    return longest > INT32_MAX ? 0 : static_cast<int>(longest);
}

std::vector<int32_t> HfTokenizer::Encode(std::string_view text, bool add_special_tokens) const {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 4);
    if (add_special_tokens) out.insert(out.end(), template_.before.begin(), template_.before.end());
    const std::string clean = utf8::IsValid(text) ? std::string(text) : ReplaceInvalidUtf8(text);
    std::vector<hf::AddedTokenMatcher::Segment> segments;
    raw_matcher_.Split(clean, &segments);
    for (const auto& s : segments) {
        if (s.token) {
            out.push_back(s.token->id);
        } else {
            EncodeSection(clean.substr(s.begin, s.end - s.begin), s.begin == 0, &out);
        }
    }
    if (add_special_tokens) out.insert(out.end(), template_.after.begin(), template_.after.end());
    return out;
}

void HfTokenizer::EncodeSection(std::string text, bool at_start, std::vector<int32_t>* out) const {
    if (normalizer_) normalizer_->Apply(text);
    if (text.empty()) return;
    if (normalized_matcher_.empty()) {
        EncodePlain(std::move(text), at_start, out);
        return;
    }
    std::vector<hf::AddedTokenMatcher::Segment> segments;
    normalized_matcher_.Split(text, &segments);
    for (const auto& s : segments) {
        if (s.token) {
            out->push_back(s.token->id);
        } else {
            EncodePlain(text.substr(s.begin, s.end - s.begin), at_start && s.begin == 0, out);
        }
    }
}

void HfTokenizer::EncodePlain(std::string text, bool at_start, std::vector<int32_t>* out) const {
    std::vector<hf::Piece> pieces;
    pieces.push_back({std::move(text), at_start});
    if (pre_tokenizer_) pre_tokenizer_->Apply(pieces);
    for (const hf::Piece& p : pieces) model_->Encode(p.text, out);
}

std::vector<hf::DecodedToken> HfTokenizer::Tokens(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
    std::vector<hf::DecodedToken> tokens;
    tokens.reserve(ids.size());
    const auto& spellings = model_->id_to_token();
    for (int32_t id : ids) {
        if (const hf::AddedToken* t = Added(id)) {
            if (!(skip_special_tokens && t->special)) tokens.push_back({t->content, true});
        } else if (id >= 0 && static_cast<size_t>(id) < spellings.size() && !spellings[id].empty()) {
            tokens.push_back({spellings[id], false});
        }
    }
    return tokens;
}

std::string HfTokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
    std::vector<hf::DecodedToken> tokens = Tokens(ids, skip_special_tokens);
    std::string out;
    if (decoder_) {
        decoder_->Apply(tokens, /*raw=*/false);
        for (const auto& t : tokens) out += t.text;
    } else {
        for (size_t i = 0; i < tokens.size(); ++i) {
            if (i > 0) out += ' ';
            out += tokens[i].text;
        }
    }
    return utf8::IsValid(out) ? out : ReplaceInvalidUtf8(out);
}

std::string HfTokenizer::IdToPiece(int32_t id) const {
    if (const hf::AddedToken* t = Added(id)) return t->content;
    const auto& spellings = model_->id_to_token();
    return id >= 0 && static_cast<size_t>(id) < spellings.size() ? spellings[id] : std::string();
}

std::string HfTokenizer::TokenBytes(int32_t id) const {
    if (const hf::AddedToken* t = Added(id)) return t->content;
    std::vector<hf::DecodedToken> tokens = Tokens({id}, false);
    if (tokens.empty()) return {};
    if (decoder_) decoder_->Apply(tokens, /*raw=*/true);
    std::string out;
    for (const auto& t : tokens) out += t.text;
    return out;
}

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& dir, const ModelConfig& config) {
    auto tok = std::make_unique<HfTokenizer>();
    UA_RETURN_IF_ERROR(tok->Init(dir, config));
    return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace uniattn
