#include "uniattn/tokenizer.h"

#include <algorithm>

#include "uniattn/json_io.h"
#include "util/file.h"

#ifdef UNIATTN_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

namespace uniattn {

namespace {

// The replacement character U+FFFD: SentencePiece emits it for byte-fallback pieces that do not yet
// form a complete UTF-8 character.
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

bool EndsWith(const std::string& s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

#ifdef UNIATTN_HAVE_SENTENCEPIECE
class SentencePieceTokenizer final : public Tokenizer {
  public:
    Status Init(const std::string& dir, const ModelConfig& config) {
        const std::string path = dir + "/tokenizer.model";
        if (!FileExists(path)) return NotFound(path + ": tokenizer file not found");
        auto st = sp_.Load(path);
        if (!st.ok()) return DataLoss(path + ": cannot load SentencePiece model: " + st.ToString());
        bos_id_ = sp_.bos_id() >= 0 ? sp_.bos_id() : config.bos_token_id;
        eos_id_ = sp_.eos_id() >= 0 ? sp_.eos_id() : config.eos_token_id;
        const std::string cfg_path = dir + "/tokenizer_config.json";
        if (FileExists(cfg_path)) {
            UA_ASSIGN_OR_RETURN(std::string text, ReadFile(cfg_path));
            UA_ASSIGN_OR_RETURN(nlohmann::json cfg, ParseJsonFile(text, cfg_path));
            if (const nlohmann::json* b = JsonFind(cfg, "add_bos_token"); b && b->is_boolean()) {
                add_bos_ = b->get<bool>();
            }
        }
        max_token_bytes_ = MeasureMaxTokenBytes();
        return Status::Ok();
    }

    std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override {
        std::vector<int> ids;
        (void)sp_.Encode(text, &ids);
        std::vector<int32_t> out;
        out.reserve(ids.size() + 1);
        if (add_bos) out.push_back(bos_id_);
        out.insert(out.end(), ids.begin(), ids.end());
        return out;
    }

    std::string Decode(const std::vector<int32_t>& ids) const override {
        std::vector<int> v;
        v.reserve(ids.size());
        for (int32_t id : ids) {
            if (id >= 0 && id < sp_.GetPieceSize()) v.push_back(id);
        }
        std::string out;
        (void)sp_.Decode(v, &out);
        return out;
    }

    std::string IdToPiece(int32_t id) const override {
        return id >= 0 && id < sp_.GetPieceSize() ? sp_.IdToPiece(id) : std::string();
    }
    int vocab_size() const override { return sp_.GetPieceSize(); }
    int max_token_bytes() const override { return max_token_bytes_; }

  private:
    // The longest text a piece decodes to, if encoding keeps every byte. SentencePiece does not expose its
    // normalizer, so it is probed: byte fallback must exist, and runs of whitespace and compatibility
    // characters (which NFKC or whitespace folding would change) must survive encode + decode exactly.
    int MeasureMaxTokenBytes() const {
        bool has_bytes = false;
        int longest = 0;
        for (int id = 0; id < sp_.GetPieceSize(); ++id) {
            if (sp_.IsControl(id)) continue;
            if (sp_.IsByte(id)) {
                has_bytes = true;
                longest = std::max(longest, 1);
                continue;
            }
            if (sp_.IsUnknown(id)) {
                longest = std::max(longest, 4);  // one character
                continue;
            }
            const std::string piece = sp_.IdToPiece(id);
            int bytes = 0;
            for (size_t i = 0; i < piece.size(); ++bytes) i += piece.compare(i, 3, "\xE2\x96\x81") == 0 ? 3 : 1;
            longest = std::max(longest, bytes);
        }
        if (!has_bytes) return 0;
        static constexpr std::string_view kProbe =
            "a  b\t\t c\n\n\r\n  d    \xEF\xAC\x81 \xEF\xBC\xA1 \xE2\x84\xAB e\xCC\x81 \xE3\x80\x80x";
        std::vector<int> ids;
        std::string back;
        if (!sp_.Encode(kProbe, &ids).ok() || !sp_.Decode(ids, &back).ok() || back != kProbe) return 0;
        return longest;
    }

    sentencepiece::SentencePieceProcessor sp_;
    int max_token_bytes_ = 0;
};
#endif

// Stands in for a model directory without tokenizer.model (test and benchmark models): token ids only,
// no text.
class IdsOnlyTokenizer final : public Tokenizer {
  public:
    explicit IdsOnlyTokenizer(const ModelConfig& config) : vocab_size_(config.vocab_size) {
        bos_id_ = config.bos_token_id;
        eos_id_ = config.eos_token_id;
    }
    std::vector<int32_t> Encode(std::string_view, bool) const override { return {}; }
    std::string Decode(const std::vector<int32_t>&) const override { return {}; }
    std::string IdToPiece(int32_t) const override { return {}; }
    int vocab_size() const override { return vocab_size_; }

  private:
    int vocab_size_;
};

}  // namespace

std::unique_ptr<Tokenizer> MakeIdsOnlyTokenizer(const ModelConfig& config) {
    return std::make_unique<IdsOnlyTokenizer>(config);
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& dir, const ModelConfig& config) {
#ifdef UNIATTN_HAVE_SENTENCEPIECE
    auto tok = std::make_unique<SentencePieceTokenizer>();
    UA_RETURN_IF_ERROR(tok->Init(dir, config));
    return std::unique_ptr<Tokenizer>(std::move(tok));
#else
    (void)config;
    return Unimplemented(dir + "/tokenizer.model: this build has no SentencePiece (install libsentencepiece-dev)");
#endif
}

IncrementalDetokenizer::IncrementalDetokenizer(const Tokenizer* tokenizer, const std::vector<int32_t>& context)
    : tok_(tokenizer), ids_(context) {
    // A few tokens of context keep SentencePiece's leading-space handling identical in both decodes.
    read_offset_ = ids_.size();
    prefix_offset_ = ids_.size() > 5 ? ids_.size() - 5 : 0;
}

std::string IncrementalDetokenizer::Push(int32_t id) {
    ids_.push_back(id);
    const std::vector<int32_t> prefix(ids_.begin() + prefix_offset_, ids_.begin() + read_offset_);
    const std::vector<int32_t> full(ids_.begin() + prefix_offset_, ids_.end());
    const std::string prefix_text = tok_->Decode(prefix);
    const std::string full_text = tok_->Decode(full);
    if (full_text.size() > prefix_text.size() && !EndsWith(full_text, kReplacement) &&
        full_text.compare(0, prefix_text.size(), prefix_text) == 0) {
        prefix_offset_ = read_offset_;
        read_offset_ = ids_.size();
        return full_text.substr(prefix_text.size());
    }
    return {};
}

std::string IncrementalDetokenizer::Flush() {
    const std::vector<int32_t> prefix(ids_.begin() + prefix_offset_, ids_.begin() + read_offset_);
    const std::vector<int32_t> full(ids_.begin() + prefix_offset_, ids_.end());
    const std::string prefix_text = tok_->Decode(prefix);
    const std::string full_text = tok_->Decode(full);
    prefix_offset_ = read_offset_ = ids_.size();
    if (full_text.size() > prefix_text.size() && full_text.compare(0, prefix_text.size(), prefix_text) == 0) {
        return full_text.substr(prefix_text.size());
    }
    return {};
}

}  // namespace uniattn
