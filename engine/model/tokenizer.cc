#include "uniattn/tokenizer.h"

#include <cstdlib>

#include "model/tokenizer_loaders.h"
#include "model/utf8.h"
#include "uniattn/json_io.h"
#include "util/file.h"

namespace uniattn {

namespace {

bool EndsWith(const std::string& s, std::string_view suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Stands in for a model directory without a tokenizer file (test and benchmark models): token ids only,
// no text.
class IdsOnlyTokenizer final : public Tokenizer {
  public:
    explicit IdsOnlyTokenizer(const ModelConfig& config) : vocab_size_(config.vocab_size) {
        bos_id_ = config.bos_token_id;
        eos_id_ = config.eos_token_id;
    }
    using Tokenizer::Decode;
    std::vector<int32_t> Encode(std::string_view, bool) const override { return {}; }
    std::string Decode(const std::vector<int32_t>&, bool) const override { return {}; }
    std::string IdToPiece(int32_t) const override { return {}; }
    std::string TokenBytes(int32_t) const override { return {}; }
    int vocab_size() const override { return vocab_size_; }

  private:
    int vocab_size_;
};

}  // namespace

std::unique_ptr<Tokenizer> MakeIdsOnlyTokenizer(const ModelConfig& config) {
    return std::make_unique<IdsOnlyTokenizer>(config);
}

// SentencePiece's spelling: U+2581 is a space, <0xNN> one byte.
std::string Tokenizer::TokenBytes(int32_t id) const {
    const std::string piece = IdToPiece(id);
    if (piece.size() == 6 && piece.compare(0, 3, "<0x") == 0 && piece[5] == '>') {
        char* end = nullptr;
        const std::string hex = piece.substr(3, 2);
        const long byte = std::strtol(hex.c_str(), &end, 16);
        if (*end == '\0') return std::string(1, static_cast<char>(byte));
    }
    std::string out;
    static constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581
    for (size_t i = 0; i < piece.size();) {
        if (piece.compare(i, kSpace.size(), kSpace) == 0) {
            out += ' ';
            i += kSpace.size();
        } else {
            out += piece[i++];
        }
    }
    return out;
}

int64_t ModelMaxLength(const nlohmann::json& tokenizer_config) {
    const nlohmann::json* v = JsonFind(tokenizer_config, "model_max_length");
    if (v == nullptr || !v->is_number()) return 0;
    const double d = v->get<double>();
    return d >= 1 && d < 1e15 ? static_cast<int64_t>(d) : 0;
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& dir, const ModelConfig& config) {
    const std::string json_path = dir + "/tokenizer.json";
    const std::string model_path = dir + "/tokenizer.model";
    const bool has_json = FileExists(json_path);
    const bool has_model = FileExists(model_path);
    (void)config;
#ifdef UNIATTN_HAVE_HF_TOKENIZER
    if (has_json) return LoadHfTokenizer(dir, config);
#endif
#ifdef UNIATTN_HAVE_SENTENCEPIECE
    if (has_model) return LoadSentencePieceTokenizer(dir, config);
#endif
    if (has_json) {
        return Unimplemented(json_path +
                             ": this build reads no tokenizer.json (configure with libpcre2-dev and libicu-dev "
                             "installed; UNIATTN_HF_TOKENIZER)");
    }
    if (has_model) {
        return Unimplemented(model_path + ": this build has no SentencePiece (install libsentencepiece-dev)");
    }
    return NotFound(model_path + ": tokenizer file not found (nor " + json_path + ")");
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
    if (full_text.size() > prefix_text.size() && !EndsWith(full_text, utf8::kReplacement) &&
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
