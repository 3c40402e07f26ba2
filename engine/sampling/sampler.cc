#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>

#include "sampling/row_select.h"

namespace uniattn {

Status SamplingParams::Validate(int vocab_size) const {
    auto bad = [](const std::string& field, const std::string& why) { return InvalidArgument(field + " " + why); };
    if (!(temperature >= 0.0f) || temperature > 100.0f) return bad("temperature", "must be in [0, 100]");
    if (!(top_p > 0.0f && top_p <= 1.0f)) return bad("top_p", "must be in (0, 1]");
    if (top_k < -1) return bad("top_k", "must be -1, 0 (off) or positive");
    if (!(min_p >= 0.0f && min_p <= 1.0f)) return bad("min_p", "must be in [0, 1]");
    if (!(repetition_penalty > 0.0f) || repetition_penalty > 100.0f) {
        return bad("repetition_penalty", "must be in (0, 100]");
    }
    if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f)) return bad("presence_penalty", "must be in [-2, 2]");
    if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f)) {
        return bad("frequency_penalty", "must be in [-2, 2]");
    }
    for (const auto& [id, bias] : logit_bias) {
        if (id < 0 || id >= vocab_size)
            return bad("logit_bias", "has token id " + std::to_string(id) + " outside the vocabulary");
        if (!(bias >= -100.0f && bias <= 100.0f)) return bad("logit_bias", "values must be in [-100, 100]");
    }
    if (num_logprobs < 0 || num_logprobs > 20) return bad("logprobs", "must be in [0, 20]");
    return Status::Ok();
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
