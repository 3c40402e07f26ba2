// Text corpora for evaluation and calibration, with one protocol so that figures compare across tools:
// a file is split into documents at blank lines; each document is BOS plus its tokens, truncated to
// the model's context length.
#pragma once

#include <string>
#include <vector>

#include "uniattn/status.h"
#include "uniattn/tokenizer.h"

namespace uniattn {

std::vector<std::string> SplitDocuments(const std::string& text);
// Reads FILE and returns its documents as token sequences (BOS + tokens, at most max_len tokens each;
// documents with fewer than 2 tokens are dropped).
StatusOr<std::vector<std::vector<int32_t>>> LoadCorpus(const std::string& path, const Tokenizer& tokenizer,
                                                       int max_len);

}  // namespace uniattn
