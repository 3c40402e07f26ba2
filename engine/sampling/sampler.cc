#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_map>
#include <unordered_set>

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

SampleResult Sampler::Sample(float* logits, int vocab, const std::vector<int32_t>& prompt,
                             const std::vector<int32_t>& generated) {
    const SamplingParams& p = params_;
    for (const auto& [id, bias] : p.logit_bias) logits[id] += bias;
    if (p.repetition_penalty != 1.0f) {
        std::unordered_set<int32_t> seen(prompt.begin(), prompt.end());
        seen.insert(generated.begin(), generated.end());
        for (int32_t id : seen) {
            if (id < 0 || id >= vocab) continue;
            logits[id] = logits[id] > 0 ? logits[id] / p.repetition_penalty : logits[id] * p.repetition_penalty;
        }
    }
    if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
        std::unordered_map<int32_t, int> counts;
        for (int32_t id : generated) ++counts[id];
        for (const auto& [id, n] : counts) {
            if (id < 0 || id >= vocab) continue;
            logits[id] -= p.presence_penalty + p.frequency_penalty * static_cast<float>(n);
        }
    }

    // Log-softmax of the processed logits (at temperature 1) gives the reported logprobs.
    float mx = -INFINITY;
    int32_t argmax = 0;
    for (int i = 0; i < vocab; ++i) {
        if (logits[i] > mx) {
            mx = logits[i];
            argmax = i;
        }
    }
    const bool need_logprobs = p.want_logprob || p.num_logprobs > 0;
    double sum = 0;
    if (need_logprobs) {
        for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i] - mx));
    }
    const float log_z = need_logprobs ? mx + static_cast<float>(std::log(sum)) : 0.0f;
    auto logprob = [&](int32_t id) { return need_logprobs ? logits[id] - log_z : 0.0f; };

    SampleResult r;
    if (p.temperature == 0.0f) {
        r.token = argmax;
    } else {
        // Candidates sorted by logit; filters cut the tail; then draw from the renormalised rest.
        scratch_.resize(vocab);
        for (int i = 0; i < vocab; ++i) scratch_[i] = {logits[i], i};
        size_t keep = vocab;
        if (p.top_k > 0 && static_cast<size_t>(p.top_k) < keep) keep = p.top_k;
        // The comparator is a strict total order, so sort and partial_sort give the same order; partial_sort's
        // heap is several times slower when it has to order the whole vocabulary (top_k off).
        auto by_logit = [](const auto& a, const auto& b) {
            return a.first > b.first || (a.first == b.first && a.second < b.second);
        };
        if (keep == scratch_.size()) {
            std::sort(scratch_.begin(), scratch_.end(), by_logit);
        } else {
            std::partial_sort(scratch_.begin(), scratch_.begin() + keep, scratch_.end(), by_logit);
        }
        const float inv_t = 1.0f / p.temperature;
        std::vector<double> probs(keep);
        double z = 0;
        for (size_t i = 0; i < keep; ++i) {
            probs[i] = std::exp(static_cast<double>((scratch_[i].first - scratch_[0].first) * inv_t));
            z += probs[i];
        }
        for (double& x : probs) x /= z;
        if (p.min_p > 0.0f) {
            const double floor = p.min_p * probs[0];
            size_t n = 1;
            while (n < keep && probs[n] >= floor) ++n;
            keep = n;
        }
        if (p.top_p < 1.0f) {
            double cum = 0;
            size_t n = 0;
            while (n < keep) {
                cum += probs[n++];
                if (cum >= p.top_p) break;
            }
            keep = n;
        }
        double total = 0;
        for (size_t i = 0; i < keep; ++i) total += probs[i];
        std::uniform_real_distribution<double> u(0.0, total);
        const double draw = u(rng_);
        double acc = 0;
        r.token = scratch_[keep - 1].second;
        for (size_t i = 0; i < keep; ++i) {
            acc += probs[i];
            if (draw < acc) {
                r.token = scratch_[i].second;
                break;
            }
        }
    }
    r.logprob = logprob(r.token);
    if (p.num_logprobs > 0) {
        std::vector<std::pair<float, int32_t>> best;
        best.reserve(vocab);
        for (int i = 0; i < vocab; ++i) best.emplace_back(logits[i], i);
        const size_t n = std::min<size_t>(p.num_logprobs, vocab);
        std::partial_sort(best.begin(), best.begin() + n, best.end(), [](const auto& a, const auto& b) {
            return a.first > b.first || (a.first == b.first && a.second < b.second);
        });
        for (size_t i = 0; i < n; ++i) r.top.emplace_back(best[i].second, logprob(best[i].second));
    }
    return r;
}

}  // namespace uniattn
