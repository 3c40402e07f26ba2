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
bool Before(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
}

}  // namespace

SampleRowResult SelectToken(const float* logits, int vocab, const SampleRowParams& p, SelectScratch* scratch) {
    std::vector<uint64_t>* weights = &scratch->weights;
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
        for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i] - m));
        log_z = m + static_cast<float>(std::log(sum));
    }

    std::vector<std::pair<float, int32_t>>& c = scratch->candidates;
    if (p.temperature == 0.0f) {
        r.token = argmax;
    } else {
        const float inv_t = 1.0f / p.temperature;
        auto g = [&](float l) { return (l - m) * inv_t; };
        auto weight = [&](float l) { return SamplingWeight(g(l)); };
        // S1 (top-k), restricted to tokens of positive weight: the others never change a sum or get drawn.
        c.clear();
        if (p.top_k > 0 && p.top_k < vocab) {
            for (int i = 0; i < vocab; ++i) c.emplace_back(logits[i], i);
            std::nth_element(c.begin(), c.begin() + (p.top_k - 1), c.end(), Before);
            c.resize(p.top_k);
            c.erase(std::remove_if(c.begin(), c.end(), [&](const auto& e) { return weight(e.first) == 0; }), c.end());
        } else {
            for (int i = 0; i < vocab; ++i) {
                if (weight(logits[i]) > 0) c.emplace_back(logits[i], i);
            }
        }
        std::sort(c.begin(), c.end(), Before);
        // S2: min-p cuts a prefix (g falls along the order).
        size_t n = c.size();
        if (p.use_min_p != 0) {
            n = 0;
            while (n < c.size() && g(c[n].first) >= p.log_min_p) ++n;
        }
        std::vector<uint64_t>& w = *weights;
        w.resize(n);
        uint64_t z = 0;
        for (size_t i = 0; i < n; ++i) z += w[i] = weight(c[i].first);
        // S3: top-p.
        if (p.top_p < 1.0f) {
            const auto target = static_cast<uint64_t>(std::ceil(static_cast<double>(p.top_p) * static_cast<double>(z)));
            uint64_t cum = 0;
            size_t k = 0;
            while (k < n) {
                cum += w[k++];
                if (cum >= target) break;
            }
            n = k;
            z = cum;
        }
        // The draw.
        uint64_t target = static_cast<uint64_t>(std::floor(static_cast<double>(p.u) * static_cast<double>(z)));
        if (target >= z) target = z - 1;
        uint64_t cum = 0;
        r.token = n > 0 ? c[n - 1].second : argmax;  // n == 0 only for NaN logits
        for (size_t i = 0; i < n; ++i) {
            cum += w[i];
            if (cum > target) {
                r.token = c[i].second;
                break;
            }
        }
    }
    if (p.want_logprob != 0) r.logprob = logits[r.token] - log_z;
    if (num_top > 0) {
        c.clear();
        for (int i = 0; i < vocab; ++i) c.emplace_back(logits[i], i);
        std::partial_sort(c.begin(), c.begin() + num_top, c.end(), Before);
        r.num_top = num_top;
        for (int i = 0; i < num_top; ++i) {
            r.top_ids[i] = c[i].second;
            r.top_logprobs[i] = c[i].first - log_z;
        }
    }
    return r;
}

}  // namespace uniattn
