// The token-selection rule (sampling/row_select.h): hand-computed cases, a brute-force transcription of
// the rule on random logits with ties, draw frequencies against the rule's probabilities, the logits
// processors, and host sampling (Sampler::Sample) against Prepare + the CPU backend's SampleRows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <vector>

#include "backend/backend.h"
#include "engine/test_models.h"
#include "sampling/row_select.h"
#include "sampling/sampler.h"

namespace uniattn {
namespace {

using testutil::Rng;

SampleRowParams Params(float temperature, float u) {
    SampleRowParams p;
    p.temperature = temperature;
    p.u = u;
    return p;
}

int32_t Select(const std::vector<float>& logits, const SampleRowParams& p) {
    SelectScratch scratch;
    return SelectToken(logits.data(), static_cast<int>(logits.size()), p, &scratch).token;
}

TEST(SelectTokenTest, GreedyIsTheArgmaxWithTiesToTheLowerId) {
    EXPECT_EQ(Select({0.5f, 2.0f, -1.0f, 2.0f}, Params(0, 0.99f)), 1);
    EXPECT_EQ(Select({-3.0f, -3.0f}, Params(0, 0.5f)), 0);
}

// Weights 4 : 3 : 2 : 1 on tokens 3, 0, 2, 1 (probabilities 0.4, 0.3, 0.2, 0.1 in that order).
std::vector<float> FourThreeTwoOne() { return {std::log(3.0f), std::log(1.0f), std::log(2.0f), std::log(4.0f)}; }

TEST(SelectTokenTest, DrawWalksTheCumulativeWeightsInLogitOrder) {
    const auto l = FourThreeTwoOne();
    EXPECT_EQ(Select(l, Params(1, 0.0f)), 3);
    EXPECT_EQ(Select(l, Params(1, 0.39f)), 3);
    EXPECT_EQ(Select(l, Params(1, 0.41f)), 0);
    EXPECT_EQ(Select(l, Params(1, 0.69f)), 0);
    EXPECT_EQ(Select(l, Params(1, 0.71f)), 2);
    EXPECT_EQ(Select(l, Params(1, 0.89f)), 2);
    EXPECT_EQ(Select(l, Params(1, 0.91f)), 1);
    EXPECT_EQ(Select(l, Params(1, 0.99999994f)), 1);
    // Temperature 0.5 squares the weights: 16 : 9 : 4 : 1 over 30.
    EXPECT_EQ(Select(l, Params(0.5f, 0.52f)), 3);
    EXPECT_EQ(Select(l, Params(0.5f, 0.55f)), 0);
    EXPECT_EQ(Select(l, Params(0.5f, 0.84f)), 2);
    EXPECT_EQ(Select(l, Params(0.5f, 0.97f)), 1);
}

TEST(SelectTokenTest, FiltersKeepPrefixesAndRenormalise) {
    const auto l = FourThreeTwoOne();
    SampleRowParams p = Params(1, 0.6f);
    p.top_k = 2;  // 4 : 3 over 7: 0.6 > 4/7
    EXPECT_EQ(Select(l, p), 0);
    p.u = 0.99f;
    EXPECT_EQ(Select(l, p), 0);
    p.u = 0.5f;
    EXPECT_EQ(Select(l, p), 3);
    p = Params(1, 0.99f);
    p.top_p = 0.5f;  // 0.4 < 0.5 <= 0.7: two tokens
    EXPECT_EQ(Select(l, p), 0);
    p.top_p = 0.3f;  // the best alone
    EXPECT_EQ(Select(l, p), 3);
    p = Params(1, 0.99f);
    p.use_min_p = 1;
    p.log_min_p = std::log(0.4f);  // keeps weights >= 0.4 of the best: 4, 3, 2
    EXPECT_EQ(Select(l, p), 2);
    p.log_min_p = std::log(0.6f);  // 4, 3
    EXPECT_EQ(Select(l, p), 0);
    // top-k then min-p then top-p: top_k 3 keeps 4, 3, 2; min_p 0.6 keeps 4, 3; top_p 0.6 of 7 keeps both.
    p.top_k = 3;
    p.top_p = 0.6f;
    EXPECT_EQ(Select(l, p), 0);
    p.top_p = 0.55f;  // 4/7 = 0.571 >= 0.55: the best alone
    EXPECT_EQ(Select(l, p), 3);
}

TEST(SelectTokenTest, TiesAreOrderedByLowerId) {
    // Tokens 4 and 1 tie for best, then 2 and 0: order 1, 4, 0, 2 with weights 1, 1, e^-1, e^-1.
    const std::vector<float> l = {-1.0f, 0.0f, -1.0f, -5.0f, 0.0f};
    SampleRowParams p = Params(1, 0.1f);
    EXPECT_EQ(Select(l, p), 1);
    p.u = 0.4f;
    EXPECT_EQ(Select(l, p), 4);
    p.top_k = 3;
    p.u = 0.99f;
    EXPECT_EQ(Select(l, p), 0);  // the third of the order, not token 2
    p.top_k = 1;
    EXPECT_EQ(Select(l, p), 1);
}

// The rule transcribed literally: the whole vocabulary sorted, every filter a prefix length.
SampleRowResult BruteForce(const std::vector<float>& l, const SampleRowParams& p) {
    const int vocab = static_cast<int>(l.size());
    std::vector<int32_t> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
    const float m = l[order[0]];
    double sum = 0;
    for (float x : l) sum += std::exp(static_cast<double>(x - m));
    const float log_z = m + static_cast<float>(std::log(sum));
    SampleRowResult r;
    if (p.temperature == 0) {
        r.token = order[0];
    } else {
        const float inv_t = 1.0f / p.temperature;
        auto w = [&](int i) { return SamplingWeight((l[order[i]] - m) * inv_t); };
        int n = p.top_k > 0 ? std::min(p.top_k, vocab) : vocab;
        if (p.use_min_p) {
            int k = 0;
            while (k < n && (l[order[k]] - m) * inv_t >= p.log_min_p) ++k;
            n = k;
        }
        uint64_t z = 0;
        for (int i = 0; i < n; ++i) z += w(i);
        if (p.top_p < 1) {
            const auto target = static_cast<uint64_t>(std::ceil(static_cast<double>(p.top_p) * static_cast<double>(z)));
            uint64_t cum = 0;
            int k = 0;
            while (cum < target) cum += w(k++);
            n = k;
            z = cum;
        }
        const uint64_t target =
            std::min(z - 1, static_cast<uint64_t>(std::floor(static_cast<double>(p.u) * static_cast<double>(z))));
        uint64_t cum = 0;
        for (int i = 0; i < n; ++i) {
            cum += w(i);
            if (cum > target) {
                r.token = order[i];
                break;
            }
        }
    }
    r.logprob = l[r.token] - log_z;
    r.num_top = std::min(p.num_top, vocab);
    for (int i = 0; i < r.num_top; ++i) {
        r.top_ids[i] = order[i];
        r.top_logprobs[i] = l[order[i]] - log_z;
    }
    return r;
}

TEST(SelectTokenTest, MatchesTheRuleTranscribedLiterally) {
    Rng rng(42);
    SelectScratch scratch;
    int num_sampled = 0;
    for (int iter = 0; iter < 440; ++iter) {
        // The last 40 rows are vocabulary-sized: draws that walk thousands of tokens into the order (flat
        // logits at high temperature) cross several of SelectToken's lazily sorted blocks.
        const int vocab = iter < 400 ? 1 + rng.Int(3000) : 20000 + rng.Int(20000);
        std::vector<float> l(vocab);
        const float scale = rng.Uniform(0.1f, 8.0f);
        // Every other case rounds logits to 1/4: many ties, at filter boundaries too.
        for (float& x : l) x = iter % 2 ? std::round(rng.Uniform(-scale, scale) * 4) / 4 : rng.Uniform(-scale, scale);
        SampleRowParams p;
        const float temps[] = {0.0f, 0.3f, 1.0f, 1.7f};
        p.temperature = temps[rng.Int(4)];
        p.top_k = rng.Int(3) == 0 ? 1 + rng.Int(vocab + 5) : 0;
        p.top_p = rng.Int(2) ? rng.Uniform(0.05f, 1.0f) : 1.0f;
        p.use_min_p = rng.Int(3) == 0;
        p.log_min_p = std::log(rng.Uniform(0.001f, 1.0f));
        p.u = static_cast<float>(rng.Next() >> 40) * 0x1.0p-24f;
        p.want_logprob = 1;
        p.num_top = rng.Int(21);
        const SampleRowResult got = SelectToken(l.data(), vocab, p, &scratch);
        const SampleRowResult want = BruteForce(l, p);
        ASSERT_EQ(got.token, want.token) << "case " << iter << " vocab " << vocab;
        EXPECT_NEAR(got.logprob, want.logprob, 1e-5);
        ASSERT_EQ(got.num_top, want.num_top);
        for (int i = 0; i < got.num_top; ++i) {
            EXPECT_EQ(got.top_ids[i], want.top_ids[i]);
            EXPECT_NEAR(got.top_logprobs[i], want.top_logprobs[i], 1e-5);
        }
        num_sampled += p.temperature > 0;
    }
    EXPECT_GT(num_sampled, 200);
}

// Draws from 8 tokens with top-k and top-p filtering: each token's frequency over 100k uniform draws is
// within 5 standard deviations of the probability the rule gives it, and filtered tokens never appear.
TEST(SelectTokenTest, FrequenciesFollowTheFilteredDistribution) {
    const std::vector<float> l = {0.3f, -1.2f, 1.1f, 0.0f, -0.4f, 2.0f, -3.0f, 0.9f};
    SampleRowParams p = Params(0.8f, 0);
    p.top_k = 6;      // drops tokens 1 and 6
    p.top_p = 0.85f;  // order 5, 2, 7, 0, 3, 4
    std::vector<int32_t> order = {5, 2, 7, 0, 3, 4};
    std::vector<double> w;
    for (int32_t id : order) w.push_back(std::exp((l[id] - 2.0) / 0.8));
    const double z6 = std::accumulate(w.begin(), w.end(), 0.0);
    size_t n = 0;
    double cum = 0;
    while (cum < 0.85 * z6) cum += w[n++];
    Rng rng(9);
    std::vector<int> counts(l.size(), 0);
    const int draws = 100000;
    SelectScratch scratch;
    for (int i = 0; i < draws; ++i) {
        p.u = static_cast<float>(rng.Next() >> 40) * 0x1.0p-24f;
        ++counts[SelectToken(l.data(), static_cast<int>(l.size()), p, &scratch).token];
    }
    for (size_t k = 0; k < order.size(); ++k) {
        const double prob = k < n ? w[k] / cum : 0.0;
        const double sd = std::sqrt(draws * prob * (1 - prob));
        EXPECT_NEAR(counts[order[k]], draws * prob, 5 * sd + 1e-9) << "token " << order[k];
    }
    EXPECT_EQ(counts[1] + counts[6], 0);
}

TEST(SamplerTest, ProcessorsEditTheLogits) {
    SamplingParams sp;
    sp.temperature = 0;
    sp.repetition_penalty = 2;
    sp.presence_penalty = 0.5f;
    sp.frequency_penalty = 0.25f;
    sp.logit_bias = {{4, -1.5f}};
    sp.num_logprobs = 5;
    Sampler s(sp, 1);
    // l0 = 1/2 (prompt), l1 = -1·2 (prompt), l2 = 2/2 - (0.5 + 0.25·2) (generated twice), l3 = 0.5, l4 = 1 - 1.5.
    std::vector<float> l = {1.0f, -1.0f, 2.0f, 0.5f, 1.0f};
    const SampleResult r = s.Sample(l.data(), 5, {0, 1}, {2, 2});
    EXPECT_EQ(r.token, 0);  // ties with token 3 and wins on the lower id
    ASSERT_EQ(r.top.size(), 5u);
    const std::vector<int32_t> ids = {0, 3, 2, 4, 1};
    const std::vector<float> processed = {0.5f, 0.5f, 0.0f, -0.5f, -2.0f};
    double z = 0;
    for (float x : processed) z += std::exp(x);
    for (int i = 0; i < 5; ++i) {
        EXPECT_EQ(r.top[i].first, ids[i]);
        EXPECT_NEAR(r.top[i].second, processed[i] - std::log(z), 1e-6);
    }
    EXPECT_FLOAT_EQ(r.logprob, r.top[0].second);
}

// Host sampling and Prepare + the CPU backend's SampleRows give the same tokens for the same seeds, with
// rows sharing logits (n > 1 samples of one prompt) and each row's own processors.
TEST(SamplerTest, HostSamplingEqualsBackendSampleRows) {
    auto cpu = MakeCpuBackend(2);
    const int vocab = 5000, num_logits = 3, num_rows = 7;
    Rng rng(5);
    std::vector<float> logits(static_cast<size_t>(num_logits) * vocab);
    for (float& x : logits) x = rng.Uniform(-4, 4);
    auto buf = cpu->Alloc(sizeof(float) * logits.size());
    ASSERT_TRUE(buf.ok());
    cpu->CopyToDevice((*buf)->data(), logits.data(), sizeof(float) * logits.size());
    const Tensor t = MakeTensor((*buf)->data(), DType::kF32, num_logits, vocab);

    std::vector<SamplingParams> params(num_rows);
    for (int r = 0; r < num_rows; ++r) {
        SamplingParams& sp = params[r];
        sp.temperature = r == 0 ? 0.0f : 0.5f + 0.2f * r;
        sp.top_k = r % 3 == 1 ? 50 : 0;
        sp.top_p = r % 2 ? 0.9f : 1.0f;
        sp.min_p = r == 5 ? 0.05f : 0.0f;
        sp.repetition_penalty = r % 2 ? 1.3f : 1.0f;
        sp.presence_penalty = r == 4 ? 0.7f : 0.0f;
        sp.frequency_penalty = r == 6 ? -0.4f : 0.0f;
        if (r == 3) sp.logit_bias = {{17, 5.0f}, {99, -100.0f}};
        sp.num_logprobs = r % 4;
        sp.seed = 100 + r;
    }
    std::vector<std::unique_ptr<Sampler>> host, dev;
    for (const SamplingParams& sp : params) {
        host.push_back(std::make_unique<Sampler>(sp, 0));
        dev.push_back(std::make_unique<Sampler>(sp, 0));
    }
    const std::vector<int32_t> prompt = {1, 17, 99, 4000, 17};
    std::vector<std::vector<int32_t>> generated(num_rows, {3, 3, 250});
    for (int step = 0; step < 20; ++step) {
        std::vector<SampleRowParams> rows(num_rows);
        std::vector<LogitEdit> edits;
        for (int r = 0; r < num_rows; ++r) {
            dev[r]->Prepare(vocab, prompt, generated[r], &rows[r], &edits);
            rows[r].logits_row = r % num_logits;
        }
        std::vector<SampleRowResult> results(num_rows);
        cpu->SampleRows(t, rows.data(), num_rows, edits.data(), static_cast<int>(edits.size()), results.data());
        for (int r = 0; r < num_rows; ++r) {
            std::vector<float> row(logits.begin() + (r % num_logits) * vocab,
                                   logits.begin() + (r % num_logits + 1) * vocab);
            const SampleResult want = host[r]->Sample(row.data(), vocab, prompt, generated[r]);
            const SampleResult got = Sampler::ToResult(results[r]);
            ASSERT_EQ(got.token, want.token) << "row " << r << " step " << step;
            EXPECT_EQ(got.logprob, want.logprob);
            EXPECT_EQ(got.top, want.top);
            generated[r].push_back(got.token);
        }
    }
}

TEST(SamplerTest, SeedsReproduceAndDiffer) {
    SamplingParams sp;
    sp.temperature = 1;
    std::vector<float> logits(1000, 0.0f);
    auto draw = [&](uint64_t seed) {
        sp.seed = seed;
        Sampler s(sp, 0);
        std::vector<int32_t> tokens;
        for (int i = 0; i < 16; ++i) {
            std::vector<float> l = logits;
            tokens.push_back(s.Sample(l.data(), 1000, {}, tokens).token);
        }
        return tokens;
    };
    EXPECT_EQ(draw(3), draw(3));
    EXPECT_NE(draw(3), draw(4));
}

}  // namespace
}  // namespace uniattn
