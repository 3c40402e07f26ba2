// Per-request sampling: logits processors (bias, penalties), then greedy or temperature with
// top-k / top-p / min-p filtering, by the rule of row_select.h. Each request owns its RNG and draws one
// uniform number per token from it, so a seeded request draws the same tokens whatever else runs in the
// batch and on whichever backend selects (host: Sample; device: Prepare + Backend::SampleRows).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "sampling/row_select.h"
#include "sampling/sample_row.h"
#include "uniattn/request.h"
#include "uniattn/status.h"

namespace uniattn {

struct SamplingParams {
    float temperature = 1.0f;         // 0 = greedy
    float top_p = 1.0f;               // (0, 1]
    int top_k = 0;                    // 0 or -1 = off
    float min_p = 0.0f;               // [0, 1]
    float repetition_penalty = 1.0f;  // > 0; 1 = off (divides positive logits, multiplies negative)
    float presence_penalty = 0.0f;    // [-2, 2]
    float frequency_penalty = 0.0f;   // [-2, 2]
    std::map<int32_t, float> logit_bias;
    std::optional<uint64_t> seed;
    int num_logprobs = 0;  // top alternatives to report per token (0 = only the chosen token's)
    // false: SampleResult::logprob is left 0 when num_logprobs is 0, which spares greedy decoding a pass
    // of exp() over the vocabulary.
    bool want_logprob = true;

    // The sampler's share of a request (the seed of each of its n samples is set where the sample is made).
    static SamplingParams From(const GenerationRequest& request);
    // The ranges of uniattn/request.h (ValidateSampling); `vocab_size` bounds logit_bias ids.
    Status Validate(int vocab_size) const;
};

struct SampleResult {
    int32_t token = 0;
    float logprob = 0;  // of the chosen token under the processed distribution (before top-k/p filtering)
    std::vector<std::pair<int32_t, float>> top;  // num_logprobs best (token, logprob), best first
};

class Sampler {
  public:
    Sampler(const SamplingParams& params, uint64_t fallback_seed);
    // Host sampling: `logits` [vocab] is modified in place. `prompt` and `generated` feed the penalties.
    SampleResult Sample(float* logits, int vocab_size, const std::vector<int32_t>& prompt,
                        const std::vector<int32_t>& generated);
    // Device sampling: fills `row` (all but logits_row) and appends the row's edits to `edits`, drawing the
    // token's uniform number; Backend::SampleRows then selects. Sample = Prepare + the reference.
    void Prepare(int vocab_size, const std::vector<int32_t>& prompt, const std::vector<int32_t>& generated,
                 SampleRowParams* row, std::vector<LogitEdit>* edits);
    static SampleResult ToResult(const SampleRowResult& r);

  private:
    SamplingParams params_;
    std::mt19937_64 rng_;
    SelectScratch scratch_;
    std::vector<LogitEdit> edits_;
};

}  // namespace uniattn
