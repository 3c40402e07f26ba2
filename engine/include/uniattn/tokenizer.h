// SentencePiece tokenizer (libsentencepiece) with the model's BOS/EOS ids, byte fallback, and an
// incremental detokenizer for streaming that never splits a UTF-8 character.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "uniattn/model_config.h"
#include "uniattn/status.h"

namespace uniattn {

class Tokenizer {
  public:
    // Reads DIR/tokenizer.model and, when present, DIR/tokenizer_config.json (add_bos_token).
    static StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& dir, const ModelConfig& config);
    virtual ~Tokenizer() = default;

    virtual std::vector<int32_t> Encode(std::string_view text, bool add_bos) const = 0;
    // Decodes ids to text; special tokens (BOS/EOS/UNK controls) produce nothing.
    virtual std::string Decode(const std::vector<int32_t>& ids) const = 0;
    virtual std::string IdToPiece(int32_t id) const = 0;
    virtual int vocab_size() const = 0;
    // The most bytes of text one token stands for, when encoding keeps every input byte (no normalization
    // that drops or merges text; byte fallback for what the vocabulary lacks): a text of B bytes then
    // needs at least B / max_token_bytes() tokens, so an oversized prompt is refused before encoding it.
    // 0 when no such bound holds.
    virtual int max_token_bytes() const { return 0; }
    int bos_id() const { return bos_id_; }
    int eos_id() const { return eos_id_; }
    bool add_bos() const { return add_bos_; }

  protected:
    int bos_id_ = 1;
    int eos_id_ = 2;
    bool add_bos_ = true;
};

// For a model without a tokenizer file (random test and benchmark models): token ids only; it encodes
// and decodes nothing. The engine then refuses stop strings (RequestLimits::has_text).
std::unique_ptr<Tokenizer> MakeIdsOnlyTokenizer(const ModelConfig& config);

// Turns a growing token sequence into text pieces. Text is emitted only once it is complete UTF-8 and
// stable (decoding more tokens cannot change it), so concatenating every piece equals decoding the
// whole sequence.
class IncrementalDetokenizer {
  public:
    // `context` are tokens already seen (the prompt); their text is not emitted.
    IncrementalDetokenizer(const Tokenizer* tokenizer, const std::vector<int32_t>& context);
    // Adds one token; returns the new text (possibly empty).
    std::string Push(int32_t id);
    // Text held back at the end (an incomplete UTF-8 sequence); call when the sequence ends.
    std::string Flush();

  private:
    const Tokenizer* tok_;
    std::vector<int32_t> ids_;
    size_t prefix_offset_ = 0;
    size_t read_offset_ = 0;
};

}  // namespace uniattn
