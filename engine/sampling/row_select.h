// The token-selection rule, defined once: the CPU reference below, which Sampler (host sampling) and the
// CPU backend's SampleRows run, and the CUDA kernel (backend/cuda/sampling.cu) computes the same function.
// Given the same processed logits and the same u, every backend picks the same token.
//
// For one row of logits l[0, vocab) (after the row's LogitEdits) and SampleRowParams p:
//   m = max l; argmax ties go to the lower id.
//   logprob(i) = l[i] - (m + log Σ_j exp(l[j] - m))       (temperature 1, before any filtering)
//   greedy (p.temperature == 0): the argmax.
//   otherwise, with inv_t = 1.0f / p.temperature (fp32) and g[i] = (l[i] - m) * inv_t (fp32):
//     order: l descending, ties to the lower id. Every filter below keeps a prefix of this order.
//     weight W[i] = nearbyint(expf(g[i]) · 2^40), an integer: sums of weights are exact, so sums do not
//       depend on the order they are taken in (tokens more than ~28/inv_t nats under the best get weight 0
//       and are never drawn).
//     S1 = the first top_k tokens (all when top_k <= 0).
//     S2 = the tokens of S1 with g[i] >= log_min_p (when use_min_p; the best token always passes).
//     S3 = the shortest prefix of S2 whose weight reaches ceil(top_p · W(S2)) (double product), when
//          top_p < 1; else S2.
//     target = min(floor(u · W(S3)) (double product), W(S3) - 1); the token is the first of S3 at which the
//     running weight exceeds target.
//   top logprobs: the first num_top tokens of the order, with their logprobs.
#pragma once

#include <cstdint>
#include <vector>

#include "sampling/sample_row.h"

namespace uniattn {

constexpr float kSamplingWeightScale = 0x1.0p40f;

// W for g = (l - m) · inv_t <= 0.
uint64_t SamplingWeight(float g);

// Applies a row's edits to its logits in place (the rule of LogitEdit).
void ApplyLogitEdits(float* logits, int vocab, const LogitEdit* edits, int num_edits, float repetition_penalty);

// A token SelectToken considers: its processed logit, id and weight W.
struct SelectCandidate {
    float logit;
    int32_t id;
    uint64_t weight;
};

// Buffers SelectToken reuses between calls.
struct SelectScratch {
    std::vector<SelectCandidate> candidates;
};

// Selects from processed logits [vocab] by the rule above.
SampleRowResult SelectToken(const float* logits, int vocab, const SampleRowParams& p, SelectScratch* scratch);

}  // namespace uniattn
