// The inputs and outputs of token selection (Backend::SampleRows): plain structs copied to and from the device
// as they are. The selection rule every backend implements exactly is sampling/row_select.h; backend.h and
// row_select.h both include this header and neither includes the other.
#pragma once

#include <cstdint>

namespace uniattn {

constexpr int kMaxTopLogprobs = 20;

// One token's logits processors for one row: the processed logit is
//   x = l + bias;  if (repeated) x = x > 0 ? x / repetition_penalty : x * repetition_penalty;  x -= subtract
// A row's edits name distinct tokens.
struct LogitEdit {
    int32_t token_id = 0;
    float bias = 0;        // logit_bias
    float subtract = 0;    // presence_penalty + frequency_penalty · (count in the generated tokens)
    int32_t repeated = 0;  // 1: in the prompt or the generated tokens (repetition penalty applies)
};

struct SampleRowParams {
    int32_t logits_row = 0;  // the row of the logits tensor to sample from (rows may share one)
    float temperature = 0;   // 0: greedy (argmax, ties to the lower id)
    int32_t top_k = 0;       // <= 0: off
    float top_p = 1;         // (0, 1]
    float log_min_p = 0;     // logf(min_p), used when use_min_p
    int32_t use_min_p = 0;
    float repetition_penalty = 1;
    float u = 0;               // uniform in [0, 1), drawn by the request's own RNG
    int32_t want_logprob = 0;  // fill SampleRowResult::logprob
    int32_t num_top = 0;       // top logprobs wanted, <= kMaxTopLogprobs
    int32_t edit_start = 0;    // this row's edits: [edit_start, edit_start + num_edits)
    int32_t num_edits = 0;
};

struct SampleRowResult {
    int32_t token = 0;
    float logprob = 0;  // log-softmax of the processed logits at temperature 1 (0 unless wanted)
    int32_t num_top = 0;
    int32_t top_ids[kMaxTopLogprobs] = {};  // best first: logit descending, ties to the lower id
    float top_logprobs[kMaxTopLogprobs] = {};
};

}  // namespace uniattn
