// Drives the scheduler for hundreds of random steps without a model: a fake forward pass writes each
// token id into a fake KV array at its slot, then reads every context position back through the block
// table, so wrong block tables, missed copy-on-write copies or bad prefix hits show up as wrong tokens.
// Every step checks the scheduler's invariants; at the end every request has ended and the pool is empty.
#include "scheduler/scheduler.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <set>

namespace uniattn {
namespace {

struct SimOptions {
    int64_t num_blocks = 24;
    int block_size = 4;
    int max_num_seqs = 6;
    int max_num_batched_tokens = 16;
    bool prefix_caching = true;
    int num_steps = 600;         // steps with arrivals; then drain
    double arrival_rate = 0.35;  // new requests per step
    double cancel_rate = 0.02;   // cancellations per step
    int max_prompt = 80;         // some requests can never fit the 96-token pool and are refused
    int max_new = 24;
    int max_n = 3;
    uint64_t seed = 1;
};

struct SimRequest {
    uint64_t id = 0;
    std::vector<int32_t> prompt;
    int n = 1;
    int max_new = 0;
    std::map<int, uint64_t> seq_of_sample;  // live sequences by sample index
    std::map<int, std::vector<int32_t>> generated;
    std::set<int> ended;  // samples that finished or were cancelled
    bool cancelled = false;
    int64_t submitted_step = 0;
};

struct SimResult {
    int64_t preemptions = 0;
    int64_t prefix_hits = 0;
    int64_t copies = 0;
    int64_t forks = 0;
    int64_t finished = 0;
    int64_t cancelled = 0;
    int64_t refused = 0;
    int64_t steps = 0;
};

int32_t SampledToken(uint64_t request_id, int sample, int index) {
    uint64_t x = request_id * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(sample) * 1000003u + index;
    x ^= x >> 31;
    x *= 0xBF58476D1CE4E5B9ULL;
    return static_cast<int32_t>((x >> 33) % 50) + 3;
}

SimResult Simulate(const SimOptions& o) {
    SimResult r;
    std::mt19937_64 rng(o.seed);
    auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    auto chance = [&](double p) { return std::uniform_real_distribution<double>(0, 1)(rng) < p; };

    SchedulerConfig cfg;
    cfg.max_num_seqs = o.max_num_seqs;
    cfg.max_num_batched_tokens = o.max_num_batched_tokens;
    Scheduler sched(cfg, o.num_blocks, o.block_size, o.prefix_caching);
    std::vector<int32_t> fake_kv(static_cast<size_t>(o.num_blocks * o.block_size), -1);

    // A few shared system prompts make prefix hits (and prefix sharing between running sequences) common.
    std::vector<std::vector<int32_t>> stems;
    for (int i = 0; i < 3; ++i) {
        std::vector<int32_t> s(uniform(o.block_size, 3 * o.block_size));
        for (int32_t& t : s) t = uniform(3, 52);
        stems.push_back(s);
    }

    std::map<uint64_t, SimRequest> requests;  // live
    std::vector<SimRequest> done;
    uint64_t next_id = 1;

    auto finish_sample = [&](SimRequest& req, int sample) {
        sched.Finish(req.seq_of_sample.at(sample));
        req.seq_of_sample.erase(sample);
        req.ended.insert(sample);
    };
    auto cancel = [&](SimRequest& req) {
        std::vector<int> live;
        for (const auto& [sample, seq] : req.seq_of_sample) live.push_back(sample);
        for (int sample : live) finish_sample(req, sample);
        // Samples never forked end with the request.
        for (int i = 0; i < req.n; ++i) req.ended.insert(i);
        req.cancelled = true;
    };

    for (int64_t step = 0;; ++step) {
        const bool arrivals_open = step < o.num_steps;
        if (!arrivals_open && requests.empty()) break;
        if (step > o.num_steps + 20000) {
            ADD_FAILURE() << "did not drain: " << requests.size() << " requests left";
            break;
        }
        // Arrivals.
        if (arrivals_open && chance(o.arrival_rate)) {
            SimRequest req;
            req.id = next_id++;
            if (chance(0.5)) req.prompt = stems[uniform(0, 2)];
            const int tail = uniform(req.prompt.empty() ? 1 : 0, o.max_prompt);
            for (int i = 0; i < tail; ++i) req.prompt.push_back(uniform(3, 52));
            req.n = chance(0.2) ? uniform(2, o.max_n) : 1;
            req.max_new = uniform(1, o.max_new);
            req.submitted_step = step;
            const int max_total = static_cast<int>(req.prompt.size()) + req.max_new - 1;
            auto id = sched.AddSequence(req.id, req.prompt, req.n, max_total);
            if (!id.ok()) {
                EXPECT_EQ(id.status().code(), StatusCode::kFailedPrecondition) << id.status().ToString();
                EXPECT_GT(max_total, o.num_blocks * o.block_size);
                ++r.refused;
            } else {
                req.seq_of_sample[0] = *id;
                requests.emplace(req.id, std::move(req));
            }
        }
        // Cancellations, between steps (as the engine applies them).
        if (arrivals_open && !requests.empty() && chance(o.cancel_rate)) {
            auto it = requests.begin();
            std::advance(it, uniform(0, static_cast<int>(requests.size()) - 1));
            cancel(it->second);
            ++r.cancelled;
            done.push_back(std::move(it->second));
            requests.erase(it);
        }

        SchedulerOutput out = sched.Schedule();
        ++r.steps;
        // No forward-pass work while requests wait would be a deadlock.
        if (out.empty()) {
            EXPECT_FALSE(sched.HasWork()) << "step " << step << ": nothing scheduled with work pending";
            if (sched.HasWork()) break;
        }
        int tokens = 0;
        std::set<uint64_t> in_step;
        for (const ScheduledChunk& c : out.chunks) {
            tokens += c.num_tokens;
            EXPECT_GT(c.num_tokens, 0);
            EXPECT_TRUE(in_step.insert(c.seq->seq_id).second) << "sequence scheduled twice in one step";
            EXPECT_EQ(c.start, c.seq->num_computed_tokens);
            EXPECT_EQ(c.wants_logits, c.start + c.num_tokens == c.seq->num_tokens());
            EXPECT_EQ(c.seq->status, SequenceStatus::kRunning);
        }
        EXPECT_LE(tokens, o.max_num_batched_tokens);
        EXPECT_LE(static_cast<int>(out.chunks.size()), o.max_num_seqs);
        EXPECT_EQ(tokens, out.num_prefill_tokens + out.num_decode_tokens);

        // Fake forward: copies first, then write this step's tokens, then read every context position.
        const int bs = o.block_size;
        for (const auto& [src, dst] : out.block_copies) {
            std::copy_n(fake_kv.begin() + static_cast<int64_t>(src) * bs, bs,
                        fake_kv.begin() + static_cast<int64_t>(dst) * bs);
            ++r.copies;
        }
        for (const ScheduledChunk& c : out.chunks) {
            for (int p = c.start; p < c.start + c.num_tokens; ++p) {
                fake_kv[static_cast<int64_t>(c.seq->block_table[p / bs]) * bs + p % bs] = c.seq->tokens[p];
            }
        }
        for (const ScheduledChunk& c : out.chunks) {
            for (int p = 0; p < c.start + c.num_tokens; ++p) {
                const int32_t got = fake_kv[static_cast<int64_t>(c.seq->block_table[p / bs]) * bs + p % bs];
                if (got != c.seq->tokens[p]) {
                    ADD_FAILURE() << "step " << step << ": sequence " << c.seq->seq_id << " reads token " << got
                                  << " at position " << p << ", expected " << c.seq->tokens[p];
                    return r;
                }
            }
        }
        sched.CompleteStep(out);

        // "Sampling": a deterministic token per (request, sample, index), so recompute changes nothing.
        for (const ScheduledChunk& c : out.chunks) {
            if (!c.wants_logits) continue;
            Sequence* seq = c.seq;
            SimRequest& req = requests.at(seq->request_id);
            std::vector<std::pair<int, uint64_t>> samples = {{seq->sample_index, seq->seq_id}};
            if (seq->num_pending_forks > 0) {
                const std::vector<uint64_t> kids = sched.Fork(seq->seq_id, seq->num_pending_forks);
                for (size_t k = 0; k < kids.size(); ++k) {
                    const int sample = static_cast<int>(k) + 1;
                    sched.Find(kids[k])->sample_index = sample;
                    req.seq_of_sample[sample] = kids[k];
                    samples.emplace_back(sample, kids[k]);
                    ++r.forks;
                }
            }
            for (const auto& [sample, seq_id] : samples) {
                std::vector<int32_t>& gen = req.generated[sample];
                const int32_t token = SampledToken(req.id, sample, static_cast<int>(gen.size()));
                gen.push_back(token);
                EXPECT_EQ(sched.Find(seq_id)->num_generated(), static_cast<int>(gen.size()) - 1);
                const bool eos = token == 3;
                if (static_cast<int>(gen.size()) == req.max_new || eos) {
                    finish_sample(req, sample);
                } else {
                    sched.AppendToken(seq_id, token);
                }
            }
        }
        for (auto it = requests.begin(); it != requests.end();) {
            if (static_cast<int>(it->second.ended.size()) == it->second.n) {
                ++r.finished;
                done.push_back(std::move(it->second));
                it = requests.erase(it);
            } else {
                ++it;
            }
        }

        const std::string violation = sched.CheckInvariants();
        if (!violation.empty()) {
            ADD_FAILURE() << "step " << step << ": " << violation;
            return r;
        }
    }

    // Every request ended; every sample of a finished request generated its tokens.
    for (const SimRequest& req : done) {
        EXPECT_EQ(static_cast<int>(req.ended.size()), req.n) << "request " << req.id;
        if (req.cancelled) continue;
        for (int s = 0; s < req.n; ++s) {
            const std::vector<int32_t>& gen = req.generated.at(s);
            EXPECT_TRUE(static_cast<int>(gen.size()) == req.max_new || gen.back() == 3) << "request " << req.id;
            for (size_t i = 0; i < gen.size(); ++i) EXPECT_EQ(gen[i], SampledToken(req.id, s, static_cast<int>(i)));
        }
    }
    EXPECT_FALSE(sched.HasWork());
    EXPECT_EQ(sched.block_manager().num_used(), 0) << "blocks leaked";
    EXPECT_EQ(sched.block_manager().num_free(), o.num_blocks);
    EXPECT_EQ(sched.CheckInvariants(), "");
    r.preemptions = sched.num_preemptions();
    r.prefix_hits = sched.block_manager().prefix_hit_tokens();
    return r;
}

class SchedulerSimTest : public ::testing::TestWithParam<std::tuple<bool, uint64_t>> {};

TEST_P(SchedulerSimTest, TinyPoolRandomTraffic) {
    SimOptions o;
    o.prefix_caching = std::get<0>(GetParam());
    o.seed = std::get<1>(GetParam());
    const SimResult r = Simulate(o);
    EXPECT_GT(r.preemptions, 0) << "the tiny pool should force preemption";
    EXPECT_GT(r.forks, 0);
    EXPECT_GT(r.copies, 0) << "forks of partial prompt blocks should copy on write";
    EXPECT_GT(r.cancelled, 0);
    EXPECT_GT(r.finished, 100);
    if (o.prefix_caching) {
        EXPECT_GT(r.prefix_hits, 0);
    } else {
        EXPECT_EQ(r.prefix_hits, 0);
    }
    std::printf(
        "prefix_caching=%d seed=%llu: %lld steps, %lld finished, %lld cancelled, %lld refused, %lld preemptions, "
        "%lld forks, %lld copies, %lld prefix-hit tokens\n",
        o.prefix_caching, static_cast<unsigned long long>(o.seed), static_cast<long long>(r.steps),
        static_cast<long long>(r.finished), static_cast<long long>(r.cancelled), static_cast<long long>(r.refused),
        static_cast<long long>(r.preemptions), static_cast<long long>(r.forks), static_cast<long long>(r.copies),
        static_cast<long long>(r.prefix_hits));
}

INSTANTIATE_TEST_SUITE_P(Seeds, SchedulerSimTest,
                         ::testing::Combine(::testing::Bool(), ::testing::Values(1u, 2u, 3u, 4u)));

// A roomy pool and budget: no preemption, and many sequences share each step.
TEST(SchedulerSimTest, RoomyPoolNeverPreempts) {
    SimOptions o;
    o.num_blocks = 400;
    o.max_num_seqs = 16;
    o.max_num_batched_tokens = 64;
    o.arrival_rate = 0.5;
    const SimResult r = Simulate(o);
    EXPECT_EQ(r.preemptions, 0);
    EXPECT_EQ(r.refused, 0);
    EXPECT_GT(r.prefix_hits, 0);
}

// Budget of one token per step and one sequence at a time: still no deadlock or starvation.
TEST(SchedulerSimTest, MinimalBudget) {
    SimOptions o;
    o.max_num_seqs = 3;
    o.max_num_batched_tokens = 1;
    o.num_steps = 300;
    o.arrival_rate = 0.1;
    const SimResult r = Simulate(o);
    EXPECT_GT(r.finished, 10);
}

TEST(SchedulerTest, RefusesWhatCanNeverFit) {
    Scheduler sched(SchedulerConfig{4, 32}, 4, 4, true);
    EXPECT_EQ(sched.max_tokens_in_pool(), 16);
    auto too_long = sched.AddSequence(1, std::vector<int32_t>(10, 5), 1, 17);
    ASSERT_FALSE(too_long.ok());
    EXPECT_EQ(too_long.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(too_long.status().message().find("10 tokens"), std::string::npos) << too_long.status().message();
    EXPECT_NE(too_long.status().message().find("16 tokens"), std::string::npos) << too_long.status().message();
    auto too_many = sched.AddSequence(2, {1, 2}, 5, 4);
    ASSERT_FALSE(too_many.ok());
    EXPECT_EQ(too_many.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(sched.AddSequence(3, std::vector<int32_t>(10, 5), 1, 16).ok());
}

// One client request of many prompts (ranks 0, 1, 2, ...) does not keep a later request waiting behind all
// of them: the later one (rank 0) is admitted right after the first prompt.
TEST(SchedulerTest, FairAdmissionInterleavesClientRequests) {
    Scheduler sched(SchedulerConfig{2, 64}, 64, 4, false);
    std::vector<uint64_t> big;
    for (int p = 0; p < 4; ++p) big.push_back(*sched.AddSequence(1 + p, std::vector<int32_t>(4, 1), 1, 8, p));
    const uint64_t single = *sched.AddSequence(9, std::vector<int32_t>(4, 2), 1, 8, 0);
    const uint64_t later_big = *sched.AddSequence(10, std::vector<int32_t>(4, 3), 1, 8, 1);
    SchedulerOutput out = sched.Schedule();
    ASSERT_EQ(out.chunks.size(), 2u);
    EXPECT_EQ(out.chunks[0].seq->seq_id, big[0]);
    EXPECT_EQ(out.chunks[1].seq->seq_id, single);
    sched.CompleteStep(out);
    for (uint64_t s : {big[0], single}) sched.Finish(s);
    out = sched.Schedule();
    ASSERT_EQ(out.chunks.size(), 2u);  // rank 1: the big request's second prompt, then the later rank 1
    EXPECT_EQ(out.chunks[0].seq->seq_id, big[1]);
    EXPECT_EQ(out.chunks[1].seq->seq_id, later_big);
    sched.CompleteStep(out);
    EXPECT_EQ(sched.CheckInvariants(), "");
}

// The oldest running sequence is never the victim while newer ones run; the newest goes first.
TEST(SchedulerTest, PreemptsTheMostRecentlyAdmitted) {
    Scheduler sched(SchedulerConfig{4, 64}, 6, 4, false);
    const uint64_t a = *sched.AddSequence(1, std::vector<int32_t>(8, 1), 1, 24);
    const uint64_t b = *sched.AddSequence(2, std::vector<int32_t>(8, 2), 1, 24);
    const uint64_t c = *sched.AddSequence(3, std::vector<int32_t>(7, 3), 1, 24);
    SchedulerOutput out = sched.Schedule();
    ASSERT_EQ(out.chunks.size(), 3u);  // 2 + 2 + 2 blocks
    sched.CompleteStep(out);
    for (uint64_t s : {a, b, c}) sched.AppendToken(s, 9);
    // a and b need a third block each; c fits its 8th token in its second block. No free block left:
    // a's growth preempts c (newest), b's growth then takes c's freed blocks.
    out = sched.Schedule();
    EXPECT_EQ(out.preempted, std::vector<uint64_t>{c});
    ASSERT_EQ(out.chunks.size(), 2u);
    EXPECT_EQ(out.chunks[0].seq->seq_id, a);
    EXPECT_EQ(out.chunks[1].seq->seq_id, b);
    EXPECT_EQ(sched.num_preemptions(), 1);
    EXPECT_EQ(sched.Find(c)->status, SequenceStatus::kWaiting);
    sched.CompleteStep(out);
    EXPECT_EQ(sched.CheckInvariants(), "");
}

// n samples: the parent prefills alone, forks share every block, the partial block is copied on write.
TEST(SchedulerTest, ForkSharesPromptBlocksAndCopiesOnWrite) {
    Scheduler sched(SchedulerConfig{4, 64}, 16, 4, true);
    const uint64_t p = *sched.AddSequence(1, std::vector<int32_t>{1, 2, 3, 4, 5, 6}, 3, 10);
    SchedulerOutput out = sched.Schedule();
    ASSERT_EQ(out.chunks.size(), 1u);
    sched.CompleteStep(out);
    const std::vector<uint64_t> kids = sched.Fork(p, 2);
    ASSERT_EQ(kids.size(), 2u);
    const std::vector<int32_t> table = sched.Find(p)->block_table;
    for (uint64_t k : kids) EXPECT_EQ(sched.Find(k)->block_table, table);
    EXPECT_EQ(sched.block_manager().ref_count(table[0]), 3);
    EXPECT_EQ(sched.block_manager().num_used(), 2);
    EXPECT_EQ(sched.CheckInvariants(), "");
    sched.AppendToken(p, 7);
    sched.AppendToken(kids[0], 8);
    sched.AppendToken(kids[1], 9);
    out = sched.Schedule();
    ASSERT_EQ(out.chunks.size(), 3u);
    // Two of the three writers copy the shared partial block; the last writes in place.
    EXPECT_EQ(out.block_copies.size(), 2u);
    for (const auto& [src, dst] : out.block_copies) EXPECT_EQ(src, table[1]);
    EXPECT_EQ(sched.block_manager().ref_count(table[0]), 3);
    EXPECT_EQ(sched.block_manager().ref_count(table[1]), 1);
    sched.CompleteStep(out);
    EXPECT_EQ(sched.CheckInvariants(), "");
    for (uint64_t s : {p, kids[0], kids[1]}) sched.Finish(s);
    EXPECT_EQ(sched.block_manager().num_used(), 0);
    EXPECT_EQ(sched.block_manager().num_cached(), 1);  // the one full prompt block
}

// A long prompt is chunked to the token budget while running decodes keep their token each step.
TEST(SchedulerTest, ChunkedPrefillKeepsDecodesFlowing) {
    Scheduler sched(SchedulerConfig{4, 8}, 64, 4, false);
    const uint64_t a = *sched.AddSequence(1, {1, 2, 3}, 1, 40);
    SchedulerOutput out = sched.Schedule();
    sched.CompleteStep(out);
    sched.AppendToken(a, 4);
    const uint64_t b = *sched.AddSequence(2, std::vector<int32_t>(30, 5), 1, 40);
    int b_done = 0;
    for (int step = 0; step < 5; ++step) {
        out = sched.Schedule();
        ASSERT_EQ(out.chunks.size(), 2u);
        EXPECT_EQ(out.chunks[0].seq->seq_id, a);
        EXPECT_EQ(out.chunks[0].num_tokens, 1);
        EXPECT_FALSE(out.chunks[0].is_prefill);
        EXPECT_EQ(out.chunks[1].seq->seq_id, b);
        EXPECT_EQ(out.chunks[1].num_tokens, std::min(7, 30 - b_done));
        EXPECT_EQ(out.num_decode_tokens, 1);
        b_done += out.chunks[1].num_tokens;
        sched.CompleteStep(out);
        sched.AppendToken(a, 4);
        if (out.chunks[1].wants_logits) sched.AppendToken(b, 6);
    }
    EXPECT_EQ(b_done, 30);
    EXPECT_EQ(sched.CheckInvariants(), "");
}

}  // namespace
}  // namespace uniattn
