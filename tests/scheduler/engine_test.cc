// End to end through uniattn::Engine on the pinned stories15M model and on a small random UniAttn
// model: concurrent greedy requests (staggered, some cancelled) give exactly the tokens each gives alone,
// with prefix caching on and off, and with preemption forced by a tiny KV pool.
#include "uniattn/engine.h"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "engine/test_models.h"
#include "model/model.h"

namespace uniattn {
namespace {

const std::string kStories = std::string(UNIATTN_SOURCE_DIR) + "/models/stories15M";

// A random UniAttn model (layers 1 and 3 reuse their anchor's softmax) written once per test run.
const std::string& UniAttnModelDir() {
    static testutil::TempDir* tmp = new testutil::TempDir();  // lives until exit
    static const std::string dir = [] {
        testutil::RandomModelOptions o;
        o.vocab_size = 256;
        o.hidden_size = 64;
        o.intermediate_size = 128;
        o.num_layers = 4;
        o.num_heads = 4;
        o.num_kv_heads = 2;
        o.max_position_embeddings = 256;
        o.has_grouping = true;
        o.grouping_idx = 2;
        o.grouping_begin_idx = 0;
        o.grouping_end_idx = 4;
        o.seed = 7;
        const std::string d = tmp->Sub("uniattn");
        const Status s = testutil::WriteRandomModel(d, o);
        if (!s.ok()) std::abort();
        return d;
    }();
    return dir;
}

struct SampleOutput {
    std::vector<int32_t> tokens;
    std::string text;
    bool finished = false;
    FinishReason reason = FinishReason::kStop;
    Status error;
    std::vector<RequestEvent> events;
};

using Output = std::map<int, SampleOutput>;

void Absorb(const RequestEvent& e, Output& out) {
    SampleOutput& s = out[e.index];
    EXPECT_FALSE(s.finished) << "event after the end of sample " << e.index;
    s.events.push_back(e);
    s.text += e.text;
    switch (e.kind) {
        case RequestEvent::Kind::kToken:
            s.tokens.push_back(e.token);
            break;
        case RequestEvent::Kind::kFinished:
            s.finished = true;
            s.reason = e.finish_reason;
            break;
        case RequestEvent::Kind::kError:
            s.finished = true;
            s.error = e.error;
            break;
    }
}

Output Drain(RequestHandle& h) {
    Output out;
    RequestEvent e;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!h.closed() && std::chrono::steady_clock::now() < deadline) {
        if (h.Next(&e, std::chrono::milliseconds(50))) Absorb(e, out);
    }
    EXPECT_TRUE(h.closed()) << "stream did not close";
    return out;
}

EngineConfig Config(const std::string& dir, bool prefix_caching, int64_t num_blocks) {
    EngineConfig c;
    c.model_dir = dir;
    c.enable_prefix_caching = prefix_caching;
    c.num_threads = 1;
    c.max_num_seqs = 8;
    c.max_num_batched_tokens = 48;  // small, so prompts are chunked
    auto config = Model::LoadConfig(dir);
    EXPECT_TRUE(config.ok()) << config.status().ToString();
    c.kv_cache_bytes = num_blocks * c.block_size * config->KvBytesPerToken(4);  // fp32 KV
    return c;
}

std::unique_ptr<Engine> MakeEngine(const EngineConfig& c) {
    auto e = Engine::Create(c);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    return e.ok() ? std::move(e).value() : nullptr;
}

GenerationRequest Greedy(std::vector<int32_t> prompt, int max_tokens, bool ignore_eos) {
    GenerationRequest r;
    r.prompt_ids = std::move(prompt);
    r.max_tokens = max_tokens;
    r.temperature = 0;
    r.ignore_eos = ignore_eos;
    return r;
}

struct Workload {
    std::vector<GenerationRequest> requests;
};

// Prompts of many lengths; half share a long stem (prefix-cache hits), a few are identical.
Workload MakeWorkload(const std::string& dir) {
    Workload w;
    const bool stories = dir == kStories;
    std::vector<std::vector<int32_t>> prompts;
    if (stories) {
        auto engine = MakeEngine(Config(dir, false, 64));
        const Tokenizer& tok = engine->tokenizer();
        const std::string stem =
            "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. One day,";
        const std::vector<std::string> tails = {" she saw a big dog.", " her mom said", " it rained.",
                                                " Lily went to the park with her friend Tom and they played"};
        prompts.push_back(tok.Encode("Once upon a time", true));
        for (const std::string& t : tails) prompts.push_back(tok.Encode(stem + t, true));
        prompts.push_back(tok.Encode("The cat sat on the mat and looked at the bird.", true));
        prompts.push_back(tok.Encode(stem, true));
        prompts.push_back(tok.Encode("Tom had a red ball", true));
        prompts.push_back(tok.Encode(stem + " she saw a big dog.", true));  // identical to an earlier one
        prompts.push_back(tok.Encode("One day", true));
    } else {
        testutil::Rng rng(11);
        std::vector<int32_t> stem(40);
        for (int32_t& t : stem) t = 3 + rng.Int(250);
        for (int i = 0; i < 10; ++i) {
            std::vector<int32_t> p;
            if (i % 2 == 0) p = stem;
            const int tail = 1 + rng.Int(30);
            for (int k = 0; k < tail; ++k) p.push_back(3 + rng.Int(250));
            prompts.push_back(p);
        }
        prompts.push_back(prompts[2]);
    }
    for (size_t i = 0; i < prompts.size(); ++i) {
        // The random model may draw EOS at any point; ignore it there so lengths stay varied and long.
        w.requests.push_back(Greedy(prompts[i], 6 + static_cast<int>(i * 5) % 13, !stories));
    }
    return w;
}

// Each request alone on a roomy engine: the reference.
const std::vector<Output>& Reference(const std::string& dir) {
    static std::map<std::string, std::vector<Output>> cache;
    auto it = cache.find(dir);
    if (it != cache.end()) return it->second;
    auto engine = MakeEngine(Config(dir, false, 256));
    std::vector<Output> ref;
    for (const GenerationRequest& r : MakeWorkload(dir).requests) {
        auto h = engine->Submit(r);
        EXPECT_TRUE(h.ok()) << h.status().ToString();
        ref.push_back(Drain(**h));
        EXPECT_EQ(ref.back().size(), 1u);
        EXPECT_FALSE(ref.back()[0].tokens.empty());
    }
    return cache[dir] = ref;
}

struct ConcurrentCase {
    std::string name;
    bool uniattn;
    bool prefix_caching;
    bool tiny_pool;
};

class ConcurrentGreedyTest : public ::testing::TestWithParam<ConcurrentCase> {};

TEST_P(ConcurrentGreedyTest, MatchesEachRequestAlone) {
    const ConcurrentCase& p = GetParam();
    const std::string dir = p.uniattn ? UniAttnModelDir() : kStories;
    const std::vector<Output>& ref = Reference(dir);
    const Workload w = MakeWorkload(dir);
    // Tiny: one block more than the largest request needs, so sequences keep preempting one another.
    int64_t tiny_blocks = 0;
    for (const GenerationRequest& r : w.requests) {
        const int64_t kv_tokens = static_cast<int64_t>(r.prompt_ids.size()) + r.max_tokens - 1;
        tiny_blocks = std::max<int64_t>(tiny_blocks, (kv_tokens + 15) / 16 + 1);
    }
    auto engine = MakeEngine(Config(dir, p.prefix_caching, p.tiny_pool ? tiny_blocks : 256));
    ASSERT_NE(engine, nullptr);

    const size_t n = w.requests.size();
    std::vector<std::shared_ptr<RequestHandle>> handles(n);
    std::vector<Output> got(n);
    const std::set<size_t> cancel_early = {3}, cancel_after_two = {6};
    size_t submitted = 0;
    auto submit_next = [&] {
        auto h = engine->Submit(w.requests[submitted]);
        ASSERT_TRUE(h.ok()) << h.status().ToString();
        handles[submitted] = *h;
        if (cancel_early.count(submitted)) (*h)->Cancel();
        ++submitted;
    };
    // Staggered: a third now, then one more every few steps.
    for (size_t i = 0; i < n / 3; ++i) submit_next();
    int64_t last_steps = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    for (;;) {
        bool all_closed = submitted == n;
        for (size_t i = 0; i < submitted; ++i) {
            RequestEvent e;
            while (handles[i]->TryNext(&e)) {
                Absorb(e, got[i]);
                if (cancel_after_two.count(i) && got[i][0].tokens.size() == 2) handles[i]->Cancel();
            }
            all_closed = all_closed && handles[i]->closed();
        }
        if (all_closed) break;
        ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "timed out";
        const int64_t steps = engine->Stats().steps;
        if (submitted < n && (steps >= last_steps + 2 || engine->Idle())) {
            submit_next();
            last_steps = steps;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }

    for (size_t i = 0; i < n; ++i) {
        SCOPED_TRACE("request " + std::to_string(i));
        ASSERT_EQ(got[i].size(), 1u);
        const SampleOutput& g = got[i].at(0);
        const SampleOutput& r = ref[i].at(0);
        ASSERT_TRUE(g.finished);
        ASSERT_TRUE(g.error.ok()) << g.error.ToString();
        if (cancel_early.count(i) || cancel_after_two.count(i)) {
            // Cancelled: whatever came out is a prefix of the reference, and the stream says abort
            // (unless the request had already finished).
            ASSERT_LE(g.tokens.size(), r.tokens.size());
            EXPECT_EQ(g.tokens, std::vector<int32_t>(r.tokens.begin(), r.tokens.begin() + g.tokens.size()));
            if (g.tokens.size() < r.tokens.size()) EXPECT_EQ(g.reason, FinishReason::kAbort);
            continue;
        }
        EXPECT_EQ(g.tokens, r.tokens);
        EXPECT_EQ(g.reason, r.reason);
        EXPECT_EQ(g.text, r.text);
    }

    for (int i = 0; i < 100 && !engine->Idle(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_TRUE(engine->Idle());
    EngineStats s = engine->Stats();
    for (int i = 0; i < 100 && s.num_blocks_used != 0; ++i) {  // stats are published after the step
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        s = engine->Stats();
    }
    EXPECT_EQ(s.num_blocks_used, 0) << "blocks leaked";
    EXPECT_EQ(s.num_running, 0);
    EXPECT_EQ(s.num_waiting, 0);
    if (p.tiny_pool) EXPECT_GT(s.num_preemptions, 0) << "the tiny pool should have forced preemption";
    if (p.prefix_caching) {
        EXPECT_GT(s.prefix_cache_hits, 0);
    } else {
        EXPECT_EQ(s.prefix_cache_hits, 0);
    }
    std::printf("%s: %lld steps, %lld preemptions, prefix cache %lld/%lld tokens\n", p.name.c_str(),
                static_cast<long long>(s.steps), static_cast<long long>(s.num_preemptions),
                static_cast<long long>(s.prefix_cache_hits), static_cast<long long>(s.prefix_cache_queries));
}

INSTANTIATE_TEST_SUITE_P(Models, ConcurrentGreedyTest,
                         ::testing::Values(ConcurrentCase{"stories_cache_roomy", false, true, false},
                                           ConcurrentCase{"stories_nocache_roomy", false, false, false},
                                           ConcurrentCase{"stories_cache_tiny", false, true, true},
                                           ConcurrentCase{"stories_nocache_tiny", false, false, true},
                                           ConcurrentCase{"uniattn_cache_roomy", true, true, false},
                                           ConcurrentCase{"uniattn_nocache_roomy", true, false, false},
                                           ConcurrentCase{"uniattn_cache_tiny", true, true, true},
                                           ConcurrentCase{"uniattn_nocache_tiny", true, false, true}),
                         [](const ::testing::TestParamInfo<ConcurrentCase>& info) { return info.param.name; });

TEST(EngineTest, GreedyStoriesStartsAsExpected) {
    auto engine = MakeEngine(Config(kStories, true, 64));
    ASSERT_NE(engine, nullptr);
    const std::vector<int32_t> prompt = engine->tokenizer().Encode("Once upon a time", true);
    ASSERT_EQ(prompt, (std::vector<int32_t>{1, 9038, 2501, 263, 931}));
    auto h = engine->Submit(Greedy(prompt, 10, false));
    ASSERT_TRUE(h.ok());
    const Output out = Drain(**h);
    EXPECT_EQ(out.at(0).tokens, (std::vector<int32_t>{29892, 727, 471, 263, 2217, 7826, 4257, 365, 2354, 29889}));
    EXPECT_EQ(out.at(0).text, ", there was a little girl named Lily.");
    EXPECT_EQ(out.at(0).reason, FinishReason::kLength);
    const RequestEvent& fin = out.at(0).events.back();
    EXPECT_EQ(fin.prompt_tokens, 5);
    EXPECT_EQ(fin.completion_tokens, 10);
    EXPECT_EQ(engine->model_info().name, "stories15M");
    EXPECT_EQ(engine->model_info().max_model_len, 256);
    EXPECT_EQ(engine->model_info().kv_bytes_per_token, engine->model_info().kv_bytes_per_token_dense);
}

// n greedy samples fork off one prefill and share its blocks (copy-on-write of the partial block): every
// sample equals the single-sample answer, also under preemption.
TEST(EngineTest, ParallelSamplesShareThePrompt) {
    for (int64_t blocks : {64, 4}) {
        auto engine = MakeEngine(Config(kStories, true, blocks));
        ASSERT_NE(engine, nullptr);
        const std::vector<int32_t> prompt = engine->tokenizer().Encode("Once upon a time, in a big forest,", true);
        auto one = engine->Submit(Greedy(prompt, 12, true));
        ASSERT_TRUE(one.ok());
        const std::vector<int32_t> expected = Drain(**one).at(0).tokens;
        GenerationRequest r = Greedy(prompt, 12, true);
        r.n = 3;
        auto h = engine->Submit(r);
        ASSERT_TRUE(h.ok());
        const Output out = Drain(**h);
        ASSERT_EQ(out.size(), 3u);
        for (const auto& [index, s] : out) EXPECT_EQ(s.tokens, expected) << "sample " << index << ", blocks " << blocks;
        if (blocks == 4) EXPECT_GT(engine->Stats().num_preemptions, 0);
    }
}

// A seeded request draws the same tokens alone and in a busy batch; sample i uses seed + i.
TEST(EngineTest, SeededSamplingIsReproducibleInABusyBatch) {
    auto engine = MakeEngine(Config(kStories, true, 128));
    ASSERT_NE(engine, nullptr);
    const Tokenizer& tok = engine->tokenizer();
    GenerationRequest r;
    r.prompt_ids = tok.Encode("The little dog", true);
    r.max_tokens = 16;
    r.temperature = 1.0f;
    r.top_p = 0.95f;
    r.seed = 1234;
    r.n = 2;
    r.ignore_eos = true;
    auto alone = engine->Submit(r);
    ASSERT_TRUE(alone.ok());
    const Output a = Drain(**alone);

    std::vector<std::shared_ptr<RequestHandle>> noise;
    for (int i = 0; i < 5; ++i) {
        GenerationRequest o = r;
        o.prompt_ids = tok.Encode("Tom and Sue went to " + std::string(i, 'a'), true);
        o.seed.reset();
        o.n = 1;
        o.max_tokens = 20;
        auto h = engine->Submit(o);
        ASSERT_TRUE(h.ok());
        noise.push_back(*h);
    }
    auto busy = engine->Submit(r);
    ASSERT_TRUE(busy.ok());
    const Output b = Drain(**busy);
    for (auto& h : noise) Drain(*h);
    ASSERT_EQ(a.size(), 2u);
    ASSERT_EQ(b.size(), 2u);
    EXPECT_EQ(a.at(0).tokens, b.at(0).tokens);
    EXPECT_EQ(a.at(1).tokens, b.at(1).tokens);
    EXPECT_NE(a.at(0).tokens, a.at(1).tokens) << "samples should use different seeds";

    // Sample 1 of seed s is sample 0 of seed s + 1.
    GenerationRequest shifted = r;
    shifted.n = 1;
    shifted.seed = 1235;
    auto h = engine->Submit(shifted);
    ASSERT_TRUE(h.ok());
    EXPECT_EQ(Drain(**h).at(0).tokens, a.at(1).tokens);
}

TEST(EngineTest, RefusesPromptsThatCanNeverFit) {
    auto engine = MakeEngine(Config(kStories, true, 8));  // 128 tokens of KV
    ASSERT_NE(engine, nullptr);
    auto too_long = engine->Submit(Greedy(std::vector<int32_t>(300, 100), 4, false));
    ASSERT_FALSE(too_long.ok());
    EXPECT_EQ(too_long.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(too_long.status().message().find("300"), std::string::npos) << too_long.status().message();
    EXPECT_NE(too_long.status().message().find("256"), std::string::npos) << too_long.status().message();

    auto exact = engine->Submit(Greedy(std::vector<int32_t>(256, 100), 4, false));
    ASSERT_FALSE(exact.ok());
    EXPECT_EQ(exact.status().code(), StatusCode::kFailedPrecondition);

    auto pool = engine->Submit(Greedy(std::vector<int32_t>(100, 100), 100, false));
    ASSERT_FALSE(pool.ok());
    EXPECT_EQ(pool.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(pool.status().message().find("100 tokens"), std::string::npos) << pool.status().message();
    EXPECT_NE(pool.status().message().find("128"), std::string::npos) << pool.status().message();

    auto fits = engine->Submit(Greedy(std::vector<int32_t>(100, 100), 29, true));
    ASSERT_TRUE(fits.ok()) << fits.status().ToString();
    EXPECT_EQ(Drain(**fits).at(0).tokens.size(), 29u);
}

TEST(EngineTest, MaxTokensIsCappedByTheContext) {
    auto engine = MakeEngine(Config(kStories, true, 64));
    ASSERT_NE(engine, nullptr);
    auto h = engine->Submit(Greedy(std::vector<int32_t>(250, 100), 50, true));
    ASSERT_TRUE(h.ok());
    const Output out = Drain(**h);
    EXPECT_EQ(out.at(0).tokens.size(), 6u);
    EXPECT_EQ(out.at(0).reason, FinishReason::kLength);
}

TEST(EngineTest, QueueFullIsResourceExhausted) {
    EngineConfig c = Config(kStories, true, 64);
    c.max_num_seqs = 1;
    c.max_queued_requests = 2;
    auto engine = MakeEngine(c);
    ASSERT_NE(engine, nullptr);
    const std::vector<int32_t> prompt = {1, 9038, 2501, 263, 931};
    auto running = engine->Submit(Greedy(prompt, 200, true));
    ASSERT_TRUE(running.ok());
    RequestEvent e;
    ASSERT_TRUE((*running)->Next(&e, std::chrono::seconds(10)));  // it is scheduled: no longer queued
    auto q1 = engine->Submit(Greedy(prompt, 4, true));
    auto q2 = engine->Submit(Greedy(prompt, 4, true));
    ASSERT_TRUE(q1.ok());
    ASSERT_TRUE(q2.ok());
    auto full = engine->Submit(Greedy(prompt, 4, true));
    ASSERT_FALSE(full.ok());
    EXPECT_EQ(full.status().code(), StatusCode::kResourceExhausted);
    EXPECT_NE(full.status().message().find("max_queued_requests"), std::string::npos);
    (*running)->Cancel();
    EXPECT_EQ(Drain(**running).at(0).reason, FinishReason::kAbort);
    EXPECT_EQ(Drain(**q1).at(0).tokens.size(), 4u);
    EXPECT_EQ(Drain(**q2).at(0).tokens.size(), 4u);
}

TEST(EngineTest, ValidationNamesTheField) {
    auto engine = MakeEngine(Config(kStories, true, 16));
    ASSERT_NE(engine, nullptr);
    auto expect_bad = [&](GenerationRequest r, const std::string& field) {
        auto h = engine->Submit(std::move(r));
        ASSERT_FALSE(h.ok()) << field;
        EXPECT_EQ(h.status().code(), StatusCode::kInvalidArgument) << field;
        EXPECT_EQ(h.status().field(), field) << h.status().message();
        EXPECT_EQ(h.status().message().rfind(field + ": ", 0), 0u) << h.status().message();
    };
    const GenerationRequest ok = Greedy({1, 9038}, 4, false);
    GenerationRequest r = ok;
    r.prompt_ids.clear();
    expect_bad(r, "prompt_ids");
    r = ok;
    r.prompt_ids.push_back(32000);
    expect_bad(r, "prompt_ids");
    r = ok;
    r.max_tokens = 0;
    expect_bad(r, "max_tokens");
    r = ok;
    r.n = 0;
    expect_bad(r, "n");
    r = ok;
    r.n = 9;  // > max_num_seqs
    expect_bad(r, "n");
    r = ok;
    r.temperature = -1;
    expect_bad(r, "temperature");
    r = ok;
    r.top_p = 0;
    expect_bad(r, "top_p");
    r = ok;
    r.top_k = -2;
    expect_bad(r, "top_k");
    r = ok;
    r.min_p = 2;
    expect_bad(r, "min_p");
    r = ok;
    r.repetition_penalty = 0;
    expect_bad(r, "repetition_penalty");
    r = ok;
    r.presence_penalty = 3;
    expect_bad(r, "presence_penalty");
    r = ok;
    r.frequency_penalty = -3;
    expect_bad(r, "frequency_penalty");
    r = ok;
    r.logit_bias[40000] = 1;
    expect_bad(r, "logit_bias");
    r = ok;
    r.logprobs = 21;
    expect_bad(r, "logprobs");
    r = ok;
    r.stop_token_ids = {-1};
    expect_bad(r, "stop_token_ids");
    r = ok;
    r.stop = {""};
    expect_bad(r, "stop");
    EXPECT_TRUE(engine->Submit(ok).ok());
}

TEST(EngineTest, StopStringsMatchAcrossTokensAndAreNeverEmitted) {
    auto engine = MakeEngine(Config(kStories, true, 64));
    ASSERT_NE(engine, nullptr);
    const std::vector<int32_t> prompt = {1, 9038, 2501, 263, 931};
    // ", there was a little girl named Lily." : "ttle gi" spans " little" and " girl".
    GenerationRequest r = Greedy(prompt, 20, false);
    r.stop = {"zebra", "ttle gi"};
    auto h = engine->Submit(r);
    ASSERT_TRUE(h.ok());
    Output out = Drain(**h);
    EXPECT_EQ(out.at(0).text, ", there was a li");
    EXPECT_EQ(out.at(0).reason, FinishReason::kStop);
    for (const RequestEvent& e : out.at(0).events) EXPECT_EQ(e.text.find("ttle"), std::string::npos);
    EXPECT_EQ(out.at(0).tokens, (std::vector<int32_t>{29892, 727, 471, 263, 2217, 7826}));

    // A held-back prefix that never completes is released at the end.
    r.stop = {"Lily!"};
    r.max_tokens = 9;  // ends right after "Lily"
    h = engine->Submit(r);
    ASSERT_TRUE(h.ok());
    out = Drain(**h);
    EXPECT_EQ(out.at(0).text, ", there was a little girl named Lily");
    EXPECT_EQ(out.at(0).reason, FinishReason::kLength);
    EXPECT_EQ(out.at(0).events.back().text, "Lily");

    // Stop token ids end the sample without emitting the token.
    r = Greedy(prompt, 20, false);
    r.stop_token_ids = {2217};
    h = engine->Submit(r);
    ASSERT_TRUE(h.ok());
    out = Drain(**h);
    EXPECT_EQ(out.at(0).tokens, (std::vector<int32_t>{29892, 727, 471, 263}));
    EXPECT_EQ(out.at(0).reason, FinishReason::kStop);
    EXPECT_EQ(out.at(0).events.back().completion_tokens, 5);
}

TEST(EngineTest, EosStopsUnlessIgnored) {
    auto engine = MakeEngine(Config(kStories, true, 64));
    ASSERT_NE(engine, nullptr);
    GenerationRequest r = Greedy({1, 9038, 2501, 263, 931}, 3, false);
    r.logit_bias[2] = 100;  // EOS
    auto h = engine->Submit(r);
    ASSERT_TRUE(h.ok());
    Output out = Drain(**h);
    EXPECT_TRUE(out.at(0).tokens.empty());
    EXPECT_EQ(out.at(0).reason, FinishReason::kStop);
    r.ignore_eos = true;
    h = engine->Submit(r);
    ASSERT_TRUE(h.ok());
    out = Drain(**h);
    EXPECT_EQ(out.at(0).tokens, (std::vector<int32_t>{2, 2, 2}));
    EXPECT_EQ(out.at(0).reason, FinishReason::kLength);
}

// generation_config.json's eos_token_id list ends a sample on any of its ids (Llama-3.1 lists three), its
// sampling fields become ModelInfo::sampling_defaults, and `generation_config: none` ignores the file.
TEST(EngineTest, GenerationConfigEosListAndDefaults) {
    const std::string dir = UniAttnModelDir();
    const std::vector<int32_t> prompt = {5, 17, 42, 9};
    std::vector<int32_t> plain;
    {
        auto engine = MakeEngine(Config(dir, true, 64));
        ASSERT_NE(engine, nullptr);
        EXPECT_TRUE(engine->model_info().sampling_defaults.empty());
        auto h = engine->Submit(Greedy(prompt, 6, true));
        ASSERT_TRUE(h.ok());
        plain = Drain(**h).at(0).tokens;
        ASSERT_EQ(plain.size(), 6u);
    }
    // The first generated token that is not config.json's eos: the list's second entry ends the sample there.
    size_t stop_at = 0;
    while (stop_at < plain.size() && plain[stop_at] == 2) ++stop_at;
    ASSERT_LT(stop_at, plain.size());
    testutil::TempDir tmp;
    const std::string copy = tmp.Sub("model");
    std::filesystem::copy(dir, copy, std::filesystem::copy_options::recursive);
    {
        std::ofstream f(copy + "/generation_config.json");
        f << "{\"eos_token_id\": [250, " << plain[stop_at]
          << "], \"temperature\": 0.6, \"top_p\": 0.9, \"do_sample\": true}";
    }
    EngineConfig c = Config(copy, true, 64);
    {
        auto engine = MakeEngine(c);
        ASSERT_NE(engine, nullptr);
        const ModelInfo& info = engine->model_info();
        EXPECT_EQ(info.eos_token_ids, (std::vector<int32_t>{2, 250, plain[stop_at]}));
        ASSERT_TRUE(info.sampling_defaults.temperature.has_value());
        EXPECT_FLOAT_EQ(*info.sampling_defaults.temperature, 0.6f);
        EXPECT_FLOAT_EQ(info.sampling_defaults.top_p.value_or(0), 0.9f);
        EXPECT_FALSE(info.sampling_defaults.top_k.has_value());
        auto h = engine->Submit(Greedy(prompt, 6, false));
        ASSERT_TRUE(h.ok());
        const Output out = Drain(**h);
        EXPECT_EQ(out.at(0).tokens, std::vector<int32_t>(plain.begin(), plain.begin() + stop_at));
        EXPECT_EQ(out.at(0).reason, FinishReason::kStop);
        h = engine->Submit(Greedy(prompt, 6, true));  // ignore_eos covers every eos id
        ASSERT_TRUE(h.ok());
        EXPECT_EQ(Drain(**h).at(0).tokens, plain);
    }
    c.generation_config = "none";
    {
        auto engine = MakeEngine(c);
        ASSERT_NE(engine, nullptr);
        EXPECT_EQ(engine->model_info().eos_token_ids, (std::vector<int32_t>{2}));
        EXPECT_TRUE(engine->model_info().sampling_defaults.empty());
    }
    // A default a request could not ask for is a broken file, named before the weights load.
    {
        std::ofstream f(copy + "/generation_config.json");
        f << "{\"temperature\": -1}";
    }
    c.generation_config = "auto";
    auto bad = Engine::Create(c);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find(copy + "/generation_config.json: temperature"), std::string::npos)
        << bad.status().ToString();
    c.generation_config = copy + "/missing";
    bad = Engine::Create(c);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("generation_config: " + copy + "/missing"), std::string::npos);
}

TEST(EngineTest, Logprobs) {
    auto engine = MakeEngine(Config(kStories, true, 64));
    ASSERT_NE(engine, nullptr);
    GenerationRequest r = Greedy({1, 9038, 2501, 263, 931}, 4, false);
    r.logprobs = 3;
    auto h = engine->Submit(r);
    ASSERT_TRUE(h.ok());
    const Output out = Drain(**h);
    int tokens = 0;
    for (const RequestEvent& e : out.at(0).events) {
        if (e.kind != RequestEvent::Kind::kToken) continue;
        ++tokens;
        ASSERT_EQ(e.top_logprobs.size(), 3u);
        EXPECT_EQ(e.top_logprobs[0].token, e.token);  // greedy picks the best
        EXPECT_FLOAT_EQ(e.top_logprobs[0].logprob, e.logprob);
        EXPECT_LE(e.logprob, 0.0f);
        EXPECT_GE(e.top_logprobs[0].logprob, e.top_logprobs[1].logprob);
    }
    EXPECT_EQ(tokens, 4);
}

TEST(EngineTest, CancelFreesBlocksAndDrainingRefusesNewWork) {
    auto engine = MakeEngine(Config(kStories, true, 64));
    ASSERT_NE(engine, nullptr);
    auto h = engine->Submit(Greedy({1, 9038, 2501, 263, 931}, 200, true));
    ASSERT_TRUE(h.ok());
    RequestEvent e;
    ASSERT_TRUE((*h)->Next(&e, std::chrono::seconds(10)));
    (*h)->Cancel();
    (*h)->Cancel();  // idempotent
    const Output out = Drain(**h);
    EXPECT_EQ(out.at(0).reason, FinishReason::kAbort);
    for (int i = 0; i < 100 && (!engine->Idle() || engine->Stats().num_blocks_used > 0); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_TRUE(engine->Idle());
    EXPECT_EQ(engine->Stats().num_blocks_used, 0);
    EXPECT_LT(engine->Stats().seconds_since_last_step, 1.0);

    engine->StartDraining();
    EXPECT_TRUE(engine->Stats().draining);
    auto refused = engine->Submit(Greedy({1, 9038}, 4, false));
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), StatusCode::kUnavailable);
}

TEST(EngineTest, DestructorAbortsWhatIsLeft) {
    std::shared_ptr<RequestHandle> h;
    {
        auto engine = MakeEngine(Config(kStories, true, 64));
        ASSERT_NE(engine, nullptr);
        GenerationRequest r = Greedy({1, 9038, 2501, 263, 931}, 200, true);
        r.n = 2;
        auto s = engine->Submit(r);
        ASSERT_TRUE(s.ok());
        h = *s;
        RequestEvent e;
        ASSERT_TRUE(h->Next(&e, std::chrono::seconds(10)));
    }
    const Output out = Drain(*h);
    ASSERT_EQ(out.size(), 2u);
    for (const auto& [index, s] : out) EXPECT_EQ(s.reason, FinishReason::kAbort);
    h->Cancel();  // harmless after the engine is gone
}

class CountingObserver : public EngineObserver {
  public:
    void OnRequestFinished(const RequestTimings& t) override {
        std::lock_guard<std::mutex> lock(mu);
        finished.push_back(t);
    }
    void OnStep(int prefill, int decode, double, double forward_s, double) override {
        std::lock_guard<std::mutex> lock(mu);
        prefill_tokens += prefill;
        decode_tokens += decode;
        forward_total += forward_s;
        ++steps;
    }
    std::mutex mu;
    std::vector<RequestTimings> finished;
    int64_t prefill_tokens = 0, decode_tokens = 0, steps = 0;
    double forward_total = 0;
};

TEST(EngineTest, ObserverSeesStepsAndTimings) {
    auto engine = MakeEngine(Config(kStories, false, 64));
    ASSERT_NE(engine, nullptr);
    auto observer = std::make_shared<CountingObserver>();
    engine->SetObserver(observer);
    auto h = engine->Submit(Greedy({1, 9038, 2501, 263, 931}, 6, true));
    ASSERT_TRUE(h.ok());
    Drain(**h);
    std::lock_guard<std::mutex> lock(observer->mu);
    ASSERT_EQ(observer->finished.size(), 1u);
    const RequestTimings& t = observer->finished[0];
    EXPECT_EQ(t.prompt_tokens, 5);
    EXPECT_EQ(t.generation_tokens, 6);
    EXPECT_EQ(t.finish_reason, FinishReason::kLength);
    EXPECT_EQ(t.inter_token_s.size(), 5u);
    EXPECT_GT(t.ttft_s, 0);
    EXPECT_GE(t.e2e_s, t.ttft_s);
    EXPECT_FALSE(t.errored);
    EXPECT_EQ(observer->prefill_tokens, 5);
    EXPECT_EQ(observer->decode_tokens, 5);
    EXPECT_EQ(observer->steps, 6);
    EXPECT_GT(observer->forward_total, 0);
}

// The same bytes buy more KV blocks for the UniAttn layout than for its dense twin.
TEST(EngineTest, UniAttnModelFitsMoreTokensInTheSameBytes) {
    testutil::TempDir tmp;
    testutil::RandomModelOptions o;
    o.num_layers = 4;
    o.max_position_embeddings = 64;
    const std::string dense_dir = tmp.Sub("dense");
    ASSERT_TRUE(testutil::WriteRandomModel(dense_dir, o).ok());
    o.has_grouping = true;
    o.grouping_idx = 4;
    o.grouping_begin_idx = 0;
    o.grouping_end_idx = 4;  // one anchor, three reuse layers: 5 planes instead of 8
    const std::string unified_dir = tmp.Sub("unified");
    ASSERT_TRUE(testutil::WriteRandomModel(unified_dir, o).ok());
    EngineConfig c;
    c.num_threads = 1;
    c.kv_cache_bytes = 1 << 20;
    c.model_dir = dense_dir;
    auto dense = MakeEngine(c);
    c.model_dir = unified_dir;
    auto unified = MakeEngine(c);
    ASSERT_NE(dense, nullptr);
    ASSERT_NE(unified, nullptr);
    EXPECT_EQ(unified->model_info().kv_bytes_per_token * 8, dense->model_info().kv_bytes_per_token * 5);
    EXPECT_EQ(unified->model_info().kv_bytes_per_token_dense, dense->model_info().kv_bytes_per_token);
    const int64_t dense_blocks = dense->Stats().num_blocks_total, unified_blocks = unified->Stats().num_blocks_total;
    EXPECT_EQ(dense_blocks, (1 << 20) / (16 * dense->model_info().kv_bytes_per_token));
    EXPECT_EQ(unified_blocks, (1 << 20) / (16 * unified->model_info().kv_bytes_per_token));
    EXPECT_GT(unified_blocks * 5, dense_blocks * 8 - 8 * 5);  // 8/5 as many, up to rounding
    // Model without tokenizer.model: token ids only; stop strings are refused.
    GenerationRequest r = Greedy({1, 5, 7}, 4, true);
    r.stop = {"x"};
    auto refused = unified->Submit(r);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
    r.stop.clear();
    auto h = unified->Submit(r);
    ASSERT_TRUE(h.ok());
    const Output out = Drain(**h);
    EXPECT_EQ(out.at(0).tokens.size(), 4u);
    EXPECT_EQ(out.at(0).text, "");
}

TEST(EngineTest, DtypeIsCheckedAndReported) {
    EngineConfig c = Config(kStories, false, 16);
    auto engine = MakeEngine(c);  // dtype "auto" on the CPU: float32
    ASSERT_NE(engine, nullptr);
    EXPECT_EQ(engine->model_info().dtype, "F32 / F32");
    c.dtype = "float32";
    EXPECT_TRUE(Engine::Create(c).ok());
    for (const char* dtype : {"float16", "bfloat16"}) {
        c.dtype = dtype;
        auto e = Engine::Create(c);
        ASSERT_FALSE(e.ok()) << dtype;
        EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
        EXPECT_NE(e.status().message().find("cpu backend computes in float32"), std::string::npos)
            << e.status().message();
    }
    c.dtype = "fp8";
    auto e = Engine::Create(c);
    ASSERT_FALSE(e.ok());
    EXPECT_NE(e.status().message().find("dtype \"fp8\" is not one of auto, float16, bfloat16, float32"),
              std::string::npos)
        << e.status().message();
}

}  // namespace
}  // namespace uniattn
