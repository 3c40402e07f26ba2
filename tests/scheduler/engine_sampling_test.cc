// The engine's two sampling places (EngineConfig::SamplingPlace) on the CPU backend: host sampling and
// Backend::SampleRows (the default path on every backend) give the same tokens, logprobs and top
// logprobs for seeded requests with n > 1 samples forked from one prompt and every logits processor.
// Requests run one after another, so both runs batch identically (CPU logits depend on the batch's rows
// in their last bits).
#include <gtest/gtest.h>

#include <map>
#include <memory>

#include "engine/test_models.h"
#include "model/model.h"
#include "uniattn/engine.h"

namespace uniattn {
namespace {

struct Sampled {
    std::vector<int32_t> tokens;
    std::vector<float> logprobs;
    std::vector<std::vector<TokenLogprob>> top;
};

// request -> sample index -> what it drew
using Outputs = std::map<int, std::map<int, Sampled>>;

std::vector<GenerationRequest> Requests() {
    std::vector<GenerationRequest> rs;
    GenerationRequest a;
    a.prompt_ids = {1, 9038, 2501, 263, 931};
    a.max_tokens = 20;
    a.n = 3;
    a.temperature = 0.9f;
    a.top_p = 0.9f;
    a.top_k = 40;
    a.repetition_penalty = 1.2f;
    a.presence_penalty = 0.4f;
    a.frequency_penalty = 0.2f;
    a.logit_bias = {{263, 2.0f}, {29889, -5.0f}};
    a.seed = 77;
    a.logprobs = 3;
    a.ignore_eos = true;
    rs.push_back(a);
    GenerationRequest b;
    b.prompt_ids = {1, 3118, 2462};
    b.max_tokens = 16;
    b.temperature = 1.3f;
    b.min_p = 0.05f;
    b.seed = 5;
    b.logprobs = 0;
    b.ignore_eos = true;
    rs.push_back(b);
    GenerationRequest c = b;
    c.temperature = 0;  // greedy in the same steps
    c.logprobs = 5;
    rs.push_back(c);
    return rs;
}

Outputs Generate(EngineConfig::SamplingPlace place) {
    EngineConfig c;
    c.model_dir = testutil::DefaultModelDir();
    c.num_threads = 1;
    c.max_num_seqs = 8;
    c.kv_cache_bytes = 256 * 16 * 2 * 6 * 288 * 4;  // 256 blocks of fp32 KV for stories15M
    c.sampling_place = place;
    auto engine = Engine::Create(c);
    EXPECT_TRUE(engine.ok()) << testutil::kMissingDefaultModel << " (" << engine.status().ToString() << ")";
    if (!engine.ok()) return {};
    Outputs run;
    const std::vector<GenerationRequest> requests = Requests();
    for (size_t i = 0; i < requests.size(); ++i) {
        auto h = (*engine)->Submit(requests[i]);
        EXPECT_TRUE(h.ok()) << h.status().ToString();
        if (!h.ok()) continue;
        RequestEvent e;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        while (!(*h)->closed() && std::chrono::steady_clock::now() < deadline) {
            if (!(*h)->Next(&e, std::chrono::milliseconds(50))) continue;
            EXPECT_NE(e.kind, RequestEvent::Kind::kError) << e.error.ToString();
            if (e.kind != RequestEvent::Kind::kToken) continue;
            Sampled& s = run[static_cast<int>(i)][e.index];
            s.tokens.push_back(e.token);
            s.logprobs.push_back(e.logprob);
            s.top.push_back(e.top_logprobs);
        }
        EXPECT_TRUE((*h)->closed());
    }
    return run;
}

TEST(EngineSamplingTest, BackendSampleRowsEqualsHostSampling) {
    const Outputs host = Generate(EngineConfig::SamplingPlace::kHost);
    const Outputs backend = Generate(EngineConfig::SamplingPlace::kBackend);
    ASSERT_EQ(host.size(), 3u);
    ASSERT_EQ(host.at(0).size(), 3u);
    ASSERT_EQ(backend.size(), host.size());
    for (const auto& [req, samples] : host) {
        for (const auto& [index, want] : samples) {
            SCOPED_TRACE("request " + std::to_string(req) + " sample " + std::to_string(index));
            const Sampled& got = backend.at(req).at(index);
            EXPECT_EQ(got.tokens, want.tokens);
            EXPECT_EQ(got.logprobs, want.logprobs);
            ASSERT_EQ(got.top.size(), want.top.size());
            for (size_t t = 0; t < want.top.size(); ++t) {
                ASSERT_EQ(got.top[t].size(), want.top[t].size());
                for (size_t k = 0; k < want.top[t].size(); ++k) {
                    EXPECT_EQ(got.top[t][k].token, want.top[t][k].token);
                    EXPECT_EQ(got.top[t][k].logprob, want.top[t][k].logprob);
                }
            }
        }
    }
    // The three samples of request 0 use seeds 77, 78, 79: they differ.
    EXPECT_NE(host.at(0).at(0).tokens, host.at(0).at(1).tokens);
    EXPECT_EQ(host.at(0).at(0).tokens.size(), 20u);
}

}  // namespace
}  // namespace uniattn
