// The tokenizer kinds behind Tokenizer::Load (engine/model/tokenizer.cc dispatches).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "uniattn/json_io.h"
#include "uniattn/model_config.h"
#include "uniattn/status.h"
#include "uniattn/tokenizer.h"

namespace uniattn {

// tokenizer_config.json's model_max_length as Tokenizer::model_max_length() reports it (0 for none).
int64_t ModelMaxLength(const nlohmann::json& tokenizer_config);

#ifdef UNIATTN_HAVE_SENTENCEPIECE
// DIR/tokenizer.model (and DIR/tokenizer_config.json when present): model/sentencepiece_tokenizer.cc.
StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& dir, const ModelConfig& config);
#endif

#ifdef UNIATTN_HAVE_HF_TOKENIZER
// DIR/tokenizer.json (and DIR/tokenizer_config.json when present): model/hf_tokenizer.cc.
StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& dir, const ModelConfig& config);
#endif

}  // namespace uniattn
