// SentencePiece tokenizer.model (libsentencepiece): Llama-2-style vocabularies with byte fallback.
#include <algorithm>
#include <array>

#include "model/tokenizer_loaders.h"
#include "uniattn/json_io.h"
#include "util/file.h"

#ifdef UNIATTN_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>

namespace uniattn {

namespace {

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
            model_max_length_ = ModelMaxLength(cfg);
        }
        for (int id = 0; id < sp_.GetPieceSize(); ++id) {
            if (sp_.IsControl(id) || sp_.IsUnknown(id)) {
                const std::string piece = sp_.IdToPiece(id);
                if (piece.empty()) continue;
                specials_.push_back({piece, id});
                first_bytes_[static_cast<unsigned char>(piece[0])] = true;
            }
        }
        // Longest first, so that a special text that starts another is not matched in its place.
        std::sort(specials_.begin(), specials_.end(),
                  [](const Special& a, const Special& b) { return a.text.size() > b.text.size(); });
        max_token_bytes_ = MeasureMaxTokenBytes();
        return Status::Ok();
    }

    using Tokenizer::Decode;

    // The text between special-token texts is encoded piece by piece, each with SentencePiece's own dummy
    // prefix, as Hugging Face's Llama tokenizer (legacy mode) does.
    std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override {
        std::vector<int32_t> out;
        if (add_bos) out.push_back(bos_id_);
        size_t start = 0;
        std::vector<int> ids;
        auto encode_plain = [&](std::string_view part) {
            if (part.empty()) return;
            ids.clear();
            (void)sp_.Encode(part, &ids);
            out.insert(out.end(), ids.begin(), ids.end());
        };
        for (size_t i = 0; i < text.size();) {
            const Special* hit = nullptr;
            if (first_bytes_[static_cast<unsigned char>(text[i])]) {
                for (const Special& s : specials_) {
                    if (text.compare(i, s.text.size(), s.text) == 0) {
                        hit = &s;
                        break;
                    }
                }
            }
            if (hit == nullptr) {
                ++i;
                continue;
            }
            encode_plain(text.substr(start, i - start));
            out.push_back(hit->id);
            i += hit->text.size();
            start = i;
        }
        encode_plain(text.substr(start));
        return out;
    }

    // Skipping special tokens, the rest decodes as one sequence (SentencePiece drops the first piece's
    // dummy-prefix space only). Keeping them, each run of ordinary pieces between two special tokens is
    // decoded on its own and keeps its leading space, as Hugging Face's Llama decoder does ("Once</s> upon").
    std::string Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override {
        std::string out;
        std::vector<int> run;
        std::string run_text;
        auto flush = [&] {
            if (run.empty()) return;
            run_text.clear();
            (void)sp_.Decode(run, &run_text);
            if (!out.empty() && sp_.IdToPiece(run[0]).compare(0, 3, "\xE2\x96\x81") == 0) out += ' ';
            out += run_text;
            run.clear();
        };
        for (int32_t id : ids) {
            if (id < 0 || id >= sp_.GetPieceSize()) continue;
            if (IsSpecial(id)) {
                if (skip_special_tokens) continue;
                flush();
                out += sp_.IdToPiece(id);
                continue;
            }
            run.push_back(id);
        }
        flush();
        return out;
    }

    std::string IdToPiece(int32_t id) const override {
        return id >= 0 && id < sp_.GetPieceSize() ? sp_.IdToPiece(id) : std::string();
    }
    std::string TokenBytes(int32_t id) const override {
        if (id < 0 || id >= sp_.GetPieceSize()) return {};
        if (IsSpecial(id)) return sp_.IdToPiece(id);
        return Tokenizer::TokenBytes(id);
    }
    bool IsSpecial(int32_t id) const override {
        return id >= 0 && id < sp_.GetPieceSize() && (sp_.IsControl(id) || sp_.IsUnknown(id));
    }
    std::optional<int32_t> TokenId(std::string_view special_text) const override {
        for (const Special& s : specials_) {
            if (s.text == special_text) return s.id;
        }
        return std::nullopt;
    }
    int vocab_size() const override { return sp_.GetPieceSize(); }
    int max_token_bytes() const override { return max_token_bytes_; }

  private:
    struct Special {
        std::string text;
        int32_t id;
    };

    // The longest text a piece decodes to, if encoding keeps every byte. SentencePiece does not expose its
    // normalizer, so it is probed: byte fallback must exist, and runs of whitespace and compatibility
    // characters (which NFKC or whitespace folding would change) must survive encode + decode exactly.
    int MeasureMaxTokenBytes() const {
        bool has_bytes = false;
        int longest = 0;
        for (int id = 0; id < sp_.GetPieceSize(); ++id) {
            if (sp_.IsByte(id)) {
                has_bytes = true;
                longest = std::max(longest, 1);
                continue;
            }
            if (sp_.IsUnknown(id)) {
                longest = std::max(longest, 4);  // one character
            }
            // Control pieces are matched by their text too (<s>: 3 bytes).
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
    std::vector<Special> specials_;        // control and unknown pieces' text, longest first
    std::array<bool, 256> first_bytes_{};  // the bytes a special text starts with
    int max_token_bytes_ = 0;
};

}  // namespace

StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& dir, const ModelConfig& config) {
    auto tok = std::make_unique<SentencePieceTokenizer>();
    UA_RETURN_IF_ERROR(tok->Init(dir, config));
    return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace uniattn

#endif  // UNIATTN_HAVE_SENTENCEPIECE
