#include "sampling/row_select.h"

#include <algorithm>
#include <cmath>

namespace uniattn {

uint64_t SamplingWeight(float g) { return static_cast<uint64_t>(std::nearbyint(std::exp(g) * kSamplingWeightScale)); }

void ApplyLogitEdits(float* logits, int vocab, const LogitEdit* edits, int num_edits, float repetition_penalty) {
    for (int e = 0; e < num_edits; ++e) {
        const LogitEdit& ed = edits[e];
        if (ed.token_id < 0 || ed.token_id >= vocab) continue;
        // volatile: the product must be rounded before the subtraction, as on the device (-march=x86-64-v3
        // has FMA, and GCC would otherwise fuse the two).
        volatile float x = logits[ed.token_id] + ed.bias;
        if (ed.repeated != 0) x = x > 0 ? x / repetition_penalty : x * repetition_penalty;
        logits[ed.token_id] = x - ed.subtract;
    }
}

namespace {

// The order every filter keeps a prefix of: logit descending, ties to the lower id.
bool Before(const SelectCandidate& a, const SelectCandidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

}  // namespace

SampleRowResult SelectToken(const float* logits, int vocab, const SampleRowParams& p, SelectScratch* scratch) {
    SampleRowResult r;
    float m = logits[0];
    int32_t argmax = 0;
    for (int i = 1; i < vocab; ++i) {
        if (logits[i] > m) {
            m = logits[i];
            argmax = i;
        }
    }
    const int num_top = std::clamp(p.num_top, 0, std::min(kMaxTopLogprobs, vocab));
    float log_z = 0;
    if (p.want_logprob != 0 || num_top > 0) {
        double sum = 0;
        // float exp (each term within an ulp), summed in double: a quarter of the cost of double exp.
        for (int i = 0; i < vocab; ++i) sum += static_cast<double>(std::exp(logits[i] - m));
        log_z = m + static_cast<float>(std::log(sum));
    }

    std::vector<SelectCandidate>& c = scratch->candidates;
    if (p.temperature == 0.0f) {
        r.token = argmax;
    } else {
        const float inv_t = 1.0f / p.temperature;
        auto g = [&](float l) { return (l - m) * inv_t; };
        auto weight = [&](float l) { return SamplingWeight(g(l)); };
        // S1 (top-k) and S2 (min-p) are sets: restricted to tokens of positive weight (the others never
        // change a sum or get drawn), they are found without ordering anything. W(S2) is an exact integer
        // sum, so it does not need the order either.
        c.clear();
        if (p.top_k > 0 && p.top_k < vocab) {
            for (int i = 0; i < vocab; ++i) c.push_back({logits[i], i, 0});
            std::nth_element(c.begin(), c.begin() + (p.top_k - 1), c.end(), Before);
            c.resize(p.top_k);
            for (SelectCandidate& e : c) e.weight = weight(e.logit);
            c.erase(std::remove_if(c.begin(), c.end(), [](const SelectCandidate& e) { return e.weight == 0; }),
                    c.end());
        } else {
            for (int i = 0; i < vocab; ++i) {
                const uint64_t w = weight(logits[i]);
                if (w > 0) c.push_back({logits[i], i, w});
            }
        }
        if (p.use_min_p != 0) {  // g falls along the order, so this keeps a prefix of it
            c.erase(std::remove_if(c.begin(), c.end(),
                                   [&](const SelectCandidate& e) { return !(g(e.logit) >= p.log_min_p); }),
                    c.end());
        }
        uint64_t z = 0;
        for (const SelectCandidate& e : c) z += e.weight;
        // Only the prefix of the order that the top-p cut and the draw walk through is sorted, in growing
        // blocks (nth_element of the rest, then a sort of the block): the walks usually end within the first
        // few dozen tokens, where sorting every candidate was most of a sampled row's cost (measured in
        // docs/performance.md).
        size_t sorted = 0;
        auto ensure_sorted = [&](size_t k) {
            if (k <= sorted) return;
            const size_t end = std::min(c.size(), std::max({k, 2 * sorted, static_cast<size_t>(64)}));
            if (end < c.size()) std::nth_element(c.begin() + sorted, c.begin() + end, c.end(), Before);
            std::sort(c.begin() + sorted, c.begin() + end, Before);
            sorted = end;
        };
        size_t n = c.size();
        // S3: top-p.
        if (p.top_p < 1.0f) {
            const auto target = static_cast<uint64_t>(std::ceil(static_cast<double>(p.top_p) * static_cast<double>(z)));
            uint64_t cum = 0;
            size_t k = 0;
            while (k < n) {
                ensure_sorted(k + 1);
                cum += c[k++].weight;
                if (cum >= target) break;
            }
            n = k;
            z = cum;
        }
        // The draw.
        uint64_t target = static_cast<uint64_t>(std::floor(static_cast<double>(p.u) * static_cast<double>(z)));
        if (target >= z) target = z - 1;
        uint64_t cum = 0;
        r.token = argmax;  // n == 0 only for NaN logits
        for (size_t i = 0; i < n; ++i) {
            ensure_sorted(i + 1);
            cum += c[i].weight;
            if (cum > target) {
                r.token = c[i].id;
                break;
            }
            if (i + 1 == n) r.token = c[i].id;
        }
    }
    if (p.want_logprob != 0) r.logprob = logits[r.token] - log_z;
    if (num_top > 0) {
        c.clear();
        for (int i = 0; i < vocab; ++i) c.push_back({logits[i], i, 0});
        std::partial_sort(c.begin(), c.begin() + num_top, c.end(), Before);
        r.num_top = num_top;
        for (int i = 0; i < num_top; ++i) {
            r.top_ids[i] = c[i].id;
            r.top_logprobs[i] = c[i].logit - log_z;
        }
    }
    return r;
}

}  // namespace uniattn
