// Tokenizers: a Hugging Face tokenizer.json (BPE: Llama-3.x, Qwen2.5/3, SmolLM2, GPT-2, Mistral-style
// byte-fallback vocabularies) or a SentencePiece tokenizer.model, with the model's BOS/EOS ids, and an
// incremental detokenizer for streaming that never splits a UTF-8 character.
//
// Special-token text in prompts follows Hugging Face's default (what vLLM does), in both kinds: text such as
// `<|eot_id|>`, `<|im_start|>` or `[INST]` (tokenizer.json's added tokens, special or not) and, for
// SentencePiece, the control and unknown pieces' text (`<s>`, `</s>`, `<unk>`) is split out of the input and
// becomes its id (TokenId finds those ids by text). The chat path relies on this: a rendered chat template is
// encoded with Encode(text, /*add_special_tokens=*/false). SentencePiece's user-defined pieces are matched by
// the SentencePiece library itself (always one piece).
//
// Every method is const and safe to call from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "uniattn/model_config.h"
#include "uniattn/status.h"

namespace uniattn {

class Tokenizer {
  public:
    // Reads DIR/tokenizer.json when present (what transformers' AutoTokenizer prefers), else
    // DIR/tokenizer.model; DIR/tokenizer_config.json too when present. Needs no weights. Neither file:
    // NotFound naming both. A tokenizer.json component this build does not implement (a model other than
    // BPE, an unknown normalizer, pre-tokenizer, decoder or post-processor): Unimplemented naming the file and
    // the type. `config` gives the BOS/EOS ids when the tokenizer files name none.
    static StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& dir, const ModelConfig& config);
    virtual ~Tokenizer() = default;

    // Text to ids. add_special_tokens: add what the tokenizer adds around one sequence (tokenizer.json: its
    // post-processor template, e.g. Llama-3's <|begin_of_text|>; SentencePiece: BOS). Callers pass
    // `add_special && add_bos()`. Special-token text in `text` becomes its id (see the top of this file).
    // Bytes that are not UTF-8 are replaced by U+FFFD first (one per maximal invalid subsequence, as
    // ReplaceInvalidUtf8 does), so any input encodes.
    virtual std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const = 0;
    // Ids to text, skipping special tokens (vLLM's default skip_special_tokens=True). Ids outside the
    // vocabulary produce nothing. Bytes that do not form UTF-8 (a character cut by the end of `ids`, byte
    // tokens in a wrong order) become U+FFFD, so the result is always valid UTF-8. No clean-up of spaces
    // before punctuation (transformers' clean_up_tokenization_spaces) is done.
    std::string Decode(const std::vector<int32_t>& ids) const { return Decode(ids, /*skip_special_tokens=*/true); }
    // skip_special_tokens=false: special tokens decode to their text (`<|eot_id|>`, `</s>`).
    virtual std::string Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const = 0;
    // The vocabulary's own spelling of one token (tokenizer.json: e.g. "ĠOnce"; SentencePiece: "▁Once",
    // "<0xF0>"); empty for ids outside the vocabulary.
    virtual std::string IdToPiece(int32_t id) const = 0;
    // The raw bytes one token stands for in the middle of a text, byte-level decoded (byte-level BPE "ĠOnce"
    // and SentencePiece "▁Once" are " Once"; a byte token is that one byte, which may be part of a UTF-8
    // character; a special token is its text). This is what OpenAI logprobs' `bytes` field and the token text
    // need. Empty for ids outside the vocabulary. The default reads IdToPiece with SentencePiece's rules.
    virtual std::string TokenBytes(int32_t id) const;
    // Whether the token is special (skipped by Decode): tokenizer.json's added tokens marked special;
    // SentencePiece's control and unknown pieces. The default: BOS or EOS.
    virtual bool IsSpecial(int32_t id) const { return id == bos_id_ || id == eos_id_; }
    // The id of an added or special token given its text (`<|eot_id|>`, `<|im_start|>`, `</s>`); nullopt when
    // the tokenizer has no such token. Plain vocabulary entries are not looked up.
    virtual std::optional<int32_t> TokenId(std::string_view special_text) const {
        (void)special_text;
        return std::nullopt;
    }
    // The tokenizer's own end-of-sequence ids (tokenizer_config.json eos_token, SentencePiece's </s>);
    // config.json / generation_config.json may name more, which the caller adds.
    virtual std::vector<int32_t> eos_ids() const { return {eos_id_}; }
    virtual int vocab_size() const = 0;
    // The most bytes of text one token stands for, when encoding keeps every input byte (no normalization
    // that drops or merges text; byte fallback for what the vocabulary lacks): a text of B bytes then
    // needs at least B / max_token_bytes() tokens, so an oversized prompt is refused before encoding it.
    // 0 when no such bound holds.
    virtual int max_token_bytes() const { return 0; }
    int bos_id() const { return bos_id_; }
    int eos_id() const { return eos_id_; }
    // Whether Encode(text, true) adds anything (SentencePiece: add_bos_token; tokenizer.json: its
    // post-processor adds special tokens around a single sequence).
    bool add_bos() const { return add_bos_; }
    // tokenizer_config.json's model_max_length; 0 when it is absent or transformers' "no limit" placeholder
    // (1e30 and the like: anything of 1e15 or more).
    int64_t model_max_length() const { return model_max_length_; }

  protected:
    int bos_id_ = 1;
    int eos_id_ = 2;
    bool add_bos_ = true;
    int64_t model_max_length_ = 0;
};

// For a model without a tokenizer file (random test and benchmark models): token ids only; it encodes
// and decodes nothing. The engine then refuses stop strings (RequestLimits::has_text).
std::unique_ptr<Tokenizer> MakeIdsOnlyTokenizer(const ModelConfig& config);

// `bytes` with every maximal subsequence that is not well-formed UTF-8 (Unicode's "maximal subpart"
// practice, as Rust's from_utf8_lossy and the WHATWG decoder do) replaced by U+FFFD.
std::string ReplaceInvalidUtf8(std::string_view bytes);

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
