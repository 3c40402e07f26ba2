// Tensor parallelism on the CPU backend (issue 19): shards of random MHA, GQA (KV heads split and replicated) and
// UniAttn models give the unsplit model's logits within fp32 summation-order tolerance; a mis-ordered shard does
// not; stories15M split 2 and 3 ways serves the same greedy tokens as unsplit, through the engine.
#include "parallel/tensor_parallel.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "model/session.h"
#include "test_models.h"
#include "uniattn/engine.h"

namespace uniattn {
namespace {

using testutil::RelL2;
using testutil::TempDir;

// Two steps through `runner`-like callers: a 21-token prefill (logits of every token) and one decode step.
std::vector<ForwardInput> Steps(int vocab) {
    testutil::Rng rng(3);
    std::vector<int32_t> prompt(21);
    for (int32_t& t : prompt) t = rng.Int(vocab);
    const std::vector<int32_t> blocks = {3, 0, 2};  // out of order: paging is exercised
    ForwardInput a;
    a.AddSequence(prompt, 0, blocks, 16, false);
    for (int i = 0; i < 21; ++i) a.logits_rows.push_back(i);
    a.Finish();
    ForwardInput b;
    b.AddSequence({static_cast<int32_t>(rng.Int(vocab))}, 21, blocks, 16, true);
    b.Finish();
    return {a, b};
}

std::vector<std::vector<float>> RunWhole(const Model& m, Backend* be) {
    auto kv = KvCache::Create(be, m.config, 16, 4);
    EXPECT_TRUE(kv.ok());
    ModelRunner runner(&m, be);
    std::vector<std::vector<float>> out;
    for (const ForwardInput& in : Steps(m.config.vocab_size)) {
        std::vector<float> logits(in.logits_rows.size() * m.config.vocab_size);
        EXPECT_TRUE(runner.Forward(in, **kv, logits.data()).ok());
        out.push_back(logits);
    }
    return out;
}

std::vector<std::vector<float>> RunGroup(const Model& m, int n) {
    std::vector<std::unique_ptr<Backend>> backends;
    for (int r = 0; r < n; ++r) backends.push_back(MakeCpuBackend(1));
    auto g = TensorParallelGroup::Create(m, std::move(backends), MakeHostCommunicators(n));
    EXPECT_TRUE(g.ok()) << g.status().ToString();
    if (!g.ok()) return {};
    EXPECT_TRUE((*g)->CreateKv(16, 4, DType::kF32, nullptr).ok());
    std::vector<std::vector<float>> out;
    for (const ForwardInput& in : Steps(m.config.vocab_size)) {
        std::vector<float> logits(in.logits_rows.size() * m.config.vocab_size);
        EXPECT_TRUE((*g)->Forward(in, logits.data()).ok());
        out.push_back(logits);
    }
    return out;
}

testutil::RandomModelOptions Gqa() {
    testutil::RandomModelOptions o;
    o.vocab_size = 90;
    o.hidden_size = 64;
    o.intermediate_size = 96;
    o.num_layers = 3;
    o.num_heads = 8;
    o.num_kv_heads = 2;
    o.max_position_embeddings = 64;
    o.seed = 17;
    return o;
}

TEST(TensorParallel, ShardsGiveTheWholeModelsLogits) {
    struct Case {
        std::string name;
        testutil::RandomModelOptions o;
        std::vector<int> sizes;
    };
    std::vector<Case> cases;
    cases.push_back({"gqa 8/2 (kv split at 2, replicated at 4 and 8)", Gqa(), {2, 4, 8}});
    testutil::RandomModelOptions mha = Gqa();
    mha.num_kv_heads = 8;
    mha.attention_bias = true;  // q/k/v biases sliced with their rows, o_proj's added once
    cases.push_back({"mha with biases", mha, {2, 4}});
    testutil::RandomModelOptions ua = Gqa();
    ua.has_grouping = true;
    ua.grouping_idx = 3;
    ua.grouping_begin_idx = 0;
    ua.grouping_end_idx = 3;  // layer 0 anchor, 1 and 2 reuse its softmax
    cases.push_back({"uniattn 3/0/3", ua, {2, 4}});
    testutil::RandomModelOptions qwen = Gqa();
    qwen.architecture = "Qwen3ForCausalLM";
    cases.push_back({"qwen3 q/k norms", qwen, {2}});
    for (const Case& c : cases) {
        SCOPED_TRACE(c.name);
        TempDir tmp;
        ASSERT_TRUE(testutil::WriteRandomModel(tmp.path(), c.o).ok());
        auto cpu = MakeCpuBackend(1);
        auto m = Model::Load(tmp.path(), cpu.get(), false);
        ASSERT_TRUE(m.ok()) << m.status().ToString();
        const auto want = RunWhole(**m, cpu.get());
        for (int n : c.sizes) {
            const auto got = RunGroup(**m, n);
            ASSERT_EQ(got.size(), want.size());
            for (size_t s = 0; s < want.size(); ++s) {
                // fp32 sums in another order (per-rank partial sums, then the all-reduce).
                const double e = RelL2(got[s], want[s]);
                std::printf("[ metric   ] %s, %d ranks, step %zu: relative L2 logit error %.3g\n", c.name.c_str(), n, s,
                            e);
                EXPECT_LT(e, 1e-5) << "size " << n << " step " << s;
            }
        }
    }
}

// Only rank 0 computes logits: the group's other ranks hold no lm_head (untied), unless it is the embedding (tied).
TEST(TensorParallel, OnlyRankZeroHoldsTheLmHead) {
    for (bool tied : {false, true}) {
        SCOPED_TRACE(tied ? "tied" : "untied");
        testutil::RandomModelOptions o = Gqa();
        o.tie_word_embeddings = tied;
        TempDir tmp;
        ASSERT_TRUE(testutil::WriteRandomModel(tmp.path(), o).ok());
        auto cpu = MakeCpuBackend(1);
        auto m = Model::Load(tmp.path(), cpu.get(), false);
        ASSERT_TRUE(m.ok()) << m.status().ToString();
        auto r0 = ShardModel(**m, 0, 2, cpu.get());
        auto r1 = ShardModel(**m, 1, 2, cpu.get(), /*with_lm_head=*/false);  // as the group makes rank 1
        ASSERT_TRUE(r0.ok() && r1.ok());
        EXPECT_NE((*r0)->weights.lm_head.data, nullptr);
        const int64_t head_bytes = static_cast<int64_t>(sizeof(float)) * o.vocab_size * o.hidden_size;
        if (tied) {
            EXPECT_EQ((*r1)->weights.lm_head.data, (*r1)->weights.embed.data);
            EXPECT_EQ((*r1)->weights.bytes, (*r0)->weights.bytes);
        } else {
            EXPECT_EQ((*r1)->weights.lm_head.data, nullptr);
            EXPECT_EQ((*r0)->weights.bytes - (*r1)->weights.bytes, head_bytes);
        }
        // The group still gives the whole model's logits.
        const auto want = RunWhole(**m, cpu.get());
        const auto got = RunGroup(**m, 2);
        ASSERT_EQ(got.size(), want.size());
        for (size_t st = 0; st < want.size(); ++st) EXPECT_LT(RelL2(got[st], want[st]), 1e-5) << "step " << st;
    }
}

TEST(TensorParallel, AMisorderedShardIsNotTheModel) {
    // Rank 0 given rank 1's shard and rank 1 rank 0's: the partial sums still add up for o_proj and down_proj
    // (a sum does not care which rank holds which part), but the UniAttn compensation lands on the wrong slice
    // of the hidden size and the KV heads pair with the wrong query heads: the logits move far.
    testutil::RandomModelOptions o = Gqa();
    o.has_grouping = true;
    o.grouping_idx = 3;
    o.grouping_end_idx = 3;
    TempDir tmp;
    ASSERT_TRUE(testutil::WriteRandomModel(tmp.path(), o).ok());
    auto cpu = MakeCpuBackend(1);
    auto m = Model::Load(tmp.path(), cpu.get(), false);
    ASSERT_TRUE(m.ok());
    const auto want = RunWhole(**m, cpu.get());
    for (bool swapped : {false, true}) {
        auto comms = MakeHostCommunicators(2);
        std::vector<std::unique_ptr<Backend>> be;
        std::vector<std::unique_ptr<Model>> shards;
        std::vector<std::unique_ptr<KvCache>> kvs;
        std::vector<std::unique_ptr<ModelRunner>> runners;
        for (int r = 0; r < 2; ++r) {
            be.push_back(MakeCpuBackend(1));
            auto s = ShardModel(**m, swapped ? 1 - r : r, 2, be[r].get());
            ASSERT_TRUE(s.ok());
            shards.push_back(std::move(s).value());
            auto kv = KvCache::Create(be[r].get(), shards[r]->config, 16, 4);
            ASSERT_TRUE(kv.ok());
            kvs.push_back(std::move(kv).value());
            runners.push_back(std::make_unique<ModelRunner>(shards[r].get(), be[r].get()));
            runners[r]->SetCommunicator(comms->rank(r));
        }
        const ForwardInput in = Steps(o.vocab_size)[0];
        std::vector<float> logits(in.logits_rows.size() * o.vocab_size), other(logits.size());
        std::thread t1([&] { EXPECT_TRUE(runners[1]->Forward(in, *kvs[1], other.data()).ok()); });
        EXPECT_TRUE(runners[0]->Forward(in, *kvs[0], logits.data()).ok());
        t1.join();
        EXPECT_EQ(logits, other);  // every rank ends with the same residual, so the same logits
        const double e = RelL2(logits, want[0]);
        if (swapped) {
            EXPECT_GT(e, 0.05) << "a swapped shard must change the logits";
        } else {
            EXPECT_LT(e, 1e-5);
        }
    }
}

TEST(TensorParallel, ModelsThatCannotBeSplitAreRefusedByName) {
    testutil::RandomModelOptions o = Gqa();
    const ModelConfig c = testutil::MakeConfig(o);
    EXPECT_TRUE(ShardConfig(c, 2).ok());
    EXPECT_TRUE(ShardConfig(c, 8).ok());  // 2 KV heads replicated 4 ways
    auto three = ShardConfig(c, 3);
    ASSERT_FALSE(three.ok());
    EXPECT_NE(three.status().message().find("num_attention_heads (8)"), std::string::npos) << three.status().message();
    o.intermediate_size = 100;
    auto ff = ShardConfig(testutil::MakeConfig(o), 8);
    ASSERT_FALSE(ff.ok());
    EXPECT_NE(ff.status().message().find("intermediate_size (100)"), std::string::npos);
    o = Gqa();
    o.num_heads = 12;
    o.num_kv_heads = 4;
    o.hidden_size = 96;
    auto kv = ShardConfig(testutil::MakeConfig(o), 6);  // 4 KV heads: 6 neither divides nor is a multiple
    ASSERT_FALSE(kv.ok());
    EXPECT_NE(kv.status().message().find("num_key_value_heads (4)"), std::string::npos);
}

// Greedy tokens of a few prompts through the engine, split `tp` ways; with n > 1 each prompt asks for n samples
// (they share the prompt's blocks, the partial one copied on write in every rank) and gives n rows.
std::vector<std::vector<int32_t>> Greedy(int tp, const std::string& kv_dtype = "auto", int n = 1) {
    EngineConfig c;
    c.model_dir = testutil::DefaultModelDir();
    c.tensor_parallel_size = tp;
    c.kv_cache_dtype = kv_dtype;
    c.num_threads = 2;
    c.kv_cache_bytes = int64_t{4} << 20;
    c.max_num_batched_tokens = 24;  // prompts chunked
    auto e = Engine::Create(c);
    EXPECT_TRUE(e.ok()) << e.status().ToString() << " (" << testutil::kMissingDefaultModel << "?)";
    if (!e.ok()) return {};
    std::vector<std::vector<int32_t>> out;
    for (const char* text : {"Once upon a time", "Tom had a red ball and", "The sun was shining. Lily"}) {
        GenerationRequest r;
        r.prompt_ids = (*e)->tokenizer().Encode(text, true);
        r.max_tokens = 24;
        r.temperature = 0;
        r.ignore_eos = true;
        r.n = n;
        auto h = (*e)->Submit(r);
        EXPECT_TRUE(h.ok());
        std::vector<std::vector<int32_t>> tokens(n);
        RequestEvent ev;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        while (h.ok() && !(*h)->closed() && std::chrono::steady_clock::now() < deadline) {
            if (!(*h)->Next(&ev, std::chrono::milliseconds(50))) continue;
            EXPECT_NE(ev.kind, RequestEvent::Kind::kError) << ev.error.ToString();
            if (ev.kind == RequestEvent::Kind::kToken) tokens.at(ev.index).push_back(ev.token);
        }
        for (auto& t : tokens) {
            EXPECT_EQ(t.size(), 24u);
            out.push_back(std::move(t));
        }
    }
    return out;
}

TEST(TensorParallel, Stories15MSplitTwoAndThreeWaysServesTheSameGreedyTokens) {
    const auto one = Greedy(1);
    ASSERT_EQ(one.size(), 3u);
    EXPECT_EQ(Greedy(2), one);  // 6 heads: 3 per rank; ff 768: 384
    EXPECT_EQ(Greedy(3), one);  // 2 heads per rank; ff 256
    // An fp8 KV cache: each rank keeps its KV heads' scales (measured on the whole model).
    EXPECT_EQ(Greedy(2, "fp8"), Greedy(1, "fp8"));
    // Three samples of each prompt: the shared partial block is copied in both ranks' caches.
    std::vector<std::vector<int32_t>> three;
    for (const auto& t : one) three.insert(three.end(), 3, t);
    EXPECT_EQ(Greedy(2, "auto", 3), three);
    EngineConfig bad;
    bad.model_dir = testutil::DefaultModelDir();
    bad.tensor_parallel_size = 4;  // 6 heads
    auto e = Engine::Create(bad);
    ASSERT_FALSE(e.ok());
    EXPECT_NE(e.status().message().find("num_attention_heads (6)"), std::string::npos) << e.status().ToString();
}

TEST(TensorParallel, CpuRanksShareTheHostsKvFraction) {
    // kv_cache_memory_fraction of the host's RAM is the whole pool, whatever the rank count: two ranks, each
    // holding half the heads, get the same number of blocks in half the bytes each.
    std::vector<EngineStats> stats;
    for (int tp : {1, 2}) {
        EngineConfig c;
        c.model_dir = testutil::DefaultModelDir();
        c.tensor_parallel_size = tp;
        c.num_threads = 2;
        c.kv_cache_memory_fraction = 0.0005;
        auto e = Engine::Create(c);
        ASSERT_TRUE(e.ok()) << e.status().ToString();
        stats.push_back((*e)->Stats());
    }
    EXPECT_NEAR(static_cast<double>(stats[1].num_blocks_total), static_cast<double>(stats[0].num_blocks_total), 1.0);
    EXPECT_LE(stats[1].kv_bytes_total, stats[0].kv_bytes_total);
    EXPECT_GT(stats[1].kv_bytes_total, stats[0].kv_bytes_total * 99 / 100);
}

}  // namespace
}  // namespace uniattn
