#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "sampling/row_select.h"

namespace uniattn {

SamplingParams SamplingParams::From(const GenerationRequest& r) {
    SamplingParams p;
    p.temperature = r.temperature;
    p.top_p = r.top_p;
    p.top_k = r.top_k;
    p.min_p = r.min_p;
    p.repetition_penalty = r.repetition_penalty;
    p.presence_penalty = r.presence_penalty;
    p.frequency_penalty = r.frequency_penalty;
    p.logit_bias = r.logit_bias;
    p.seed = r.seed;
    p.num_logprobs = std::max(0, r.logprobs);
    return p;
}

Status SamplingParams::Validate(int vocab_size) const {
    GenerationRequest r;
    r.temperature = temperature;
    r.top_p = top_p;
    r.top_k = top_k;
    r.min_p = min_p;
    r.repetition_penalty = repetition_penalty;
    r.presence_penalty = presence_penalty;
    r.frequency_penalty = frequency_penalty;
    r.logit_bias = logit_bias;
    r.logprobs = num_logprobs;
    RequestLimits limits;
    limits.vocab_size = vocab_size;
    return ValidateSampling(r, limits);
}

Sampler::Sampler(const SamplingParams& params, uint64_t fallback_seed)
    : params_(params), rng_(params.seed.value_or(fallback_seed)) {}

void Sampler::Prepare(int vocab, const std::vector<int32_t>& prompt, const std::vector<int32_t>& generated,
                      SampleRowParams* row, std::vector<LogitEdit>* edits) {
    const SamplingParams& p = params_;
    row->temperature = p.temperature;
    row->top_k = p.top_k;
    row->top_p = p.top_p;
    row->use_min_p = p.min_p > 0.0f ? 1 : 0;
    row->log_min_p = p.min_p > 0.0f ? std::log(p.min_p) : 0.0f;
    row->repetition_penalty = p.repetition_penalty;
    row->want_logprob = p.want_logprob || p.num_logprobs > 0 ? 1 : 0;
    row->num_top = std::min(p.num_logprobs, kMaxTopLogprobs);
    // 24 random bits: u is exactly representable as a float and its product with a weight sum is the same
    // double on every backend.
    row->u = static_cast<float>(rng_() >> 40) * 0x1.0p-24f;

    // One edit per distinct token that any processor touches.
    row->edit_start = static_cast<int32_t>(edits->size());
    std::unordered_map<int32_t, size_t> at;
    auto edit = [&](int32_t id) -> LogitEdit& {
        auto [it, fresh] = at.emplace(id, edits->size());
        if (fresh) {
            edits->emplace_back();
            edits->back().token_id = id;
        }
        return (*edits)[it->second];
    };
    for (const auto& [id, bias] : p.logit_bias) {
        if (id >= 0 && id < vocab) edit(id).bias = bias;
    }
    if (p.repetition_penalty != 1.0f) {
        for (const std::vector<int32_t>* ids : {&prompt, &generated}) {
            for (int32_t id : *ids) {
                if (id >= 0 && id < vocab) edit(id).repeated = 1;
            }
        }
    }
    if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
        std::unordered_map<int32_t, int> counts;
        for (int32_t id : generated) ++counts[id];
        for (const auto& [id, n] : counts) {
            if (id >= 0 && id < vocab)
                edit(id).subtract = p.presence_penalty + p.frequency_penalty * static_cast<float>(n);
        }
    }
    row->num_edits = static_cast<int32_t>(edits->size()) - row->edit_start;
}

SampleResult Sampler::ToResult(const SampleRowResult& r) {
    SampleResult out;
    out.token = r.token;
    out.logprob = r.logprob;
    for (int i = 0; i < r.num_top; ++i) out.top.emplace_back(r.top_ids[i], r.top_logprobs[i]);
    return out;
}

SampleResult Sampler::Sample(float* logits, int vocab, const std::vector<int32_t>& prompt,
                             const std::vector<int32_t>& generated) {
    SampleRowParams row;
    edits_.clear();
    Prepare(vocab, prompt, generated, &row, &edits_);
    ApplyLogitEdits(logits, vocab, edits_.data(), row.num_edits, row.repetition_penalty);
    return ToResult(SelectToken(logits, vocab, row, &scratch_));
}

}  // namespace uniattn
