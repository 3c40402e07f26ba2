// The host communicators of tensor parallelism (parallel/communicator.h): sums right and bit-identical on every
// rank, taken in rank order whatever the threads' timing, over many calls of varied lengths; Abort frees ranks
// waiting for one that never comes, and Reset makes the group usable again. Under CUDA builds, NCCL
// communicators fail cleanly where there is no GPU or no libnccl.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "parallel/communicator.h"

namespace uniattn {
namespace {

// Rank r's value at element i of round `round`: large magnitudes of both signs mixed with small ones, so that
// another order of summation gives other bits ((1e8 + 1) - 1e8 is 0 in float, 1 + (1e8 - 1e8) is 1).
float Value(int rank, int round, int64_t i) {
    static const float kValues[] = {1e8f, 1.0f, -1e8f, 3.0f, 0.5f, -7.25f, 1e-3f, 2.5e7f, -2.5e7f, 0.1f, 16777216.0f};
    constexpr int kNumValues = sizeof(kValues) / sizeof(kValues[0]);
    const uint64_t h = static_cast<uint64_t>(rank) * 7919u + static_cast<uint64_t>(round) * 104729u +
                       static_cast<uint64_t>(i) * 31u + static_cast<uint64_t>(i) / 5u;
    return kValues[h % kNumValues];
}

float RankOrderSum(int size, int round, int64_t i) {
    float s = Value(0, round, i);
    for (int r = 1; r < size; ++r) s += Value(r, round, i);
    return s;
}

uint32_t Bits(float f) {
    uint32_t b;
    std::memcpy(&b, &f, sizeof(b));
    return b;
}

constexpr int64_t kLengths[] = {0, 1, 2, 3, 5, 7, 64, 1001, 4099};

// Every rank thread runs `rounds` reductions over kLengths in turn, checking each result bit for bit against the
// rank-order sum; the ranks' final buffers are then compared with each other.
void RunRounds(int size, int rounds) {
    std::unique_ptr<CommunicatorGroup> group = MakeHostCommunicators(size);
    ASSERT_EQ(group->size(), size);
    EXPECT_EQ(group->Name(), "host");
    std::atomic<int> failures{0};
    std::vector<std::vector<float>> last(size);  // rank -> final buffer of the last round
    std::vector<std::thread> threads;
    for (int rank = 0; rank < size; ++rank) {
        threads.emplace_back([&, rank] {
            Communicator& comm = *group->rank(rank);
            EXPECT_EQ(comm.rank(), rank);
            EXPECT_EQ(comm.size(), size);
            EXPECT_EQ(comm.Name(), "host");
            std::vector<float> buf;
            for (int round = 0; round < rounds; ++round) {
                const int64_t n = kLengths[round % std::size(kLengths)];
                buf.assign(n, 0.0f);
                for (int64_t i = 0; i < n; ++i) buf[i] = Value(rank, round, i);
                Status s = comm.AllReduceSum(buf.data(), n);
                if (!s.ok()) {
                    ADD_FAILURE() << "rank " << rank << " round " << round << ": " << s.ToString();
                    failures++;
                    return;
                }
                for (int64_t i = 0; i < n; ++i) {
                    if (Bits(buf[i]) != Bits(RankOrderSum(size, round, i))) {
                        ADD_FAILURE() << "size " << size << " rank " << rank << " round " << round << " [" << i
                                      << "]: " << buf[i] << " vs rank-order sum " << RankOrderSum(size, round, i);
                        failures++;
                        return;
                    }
                }
            }
            last[rank] = buf;
        });
    }
    for (std::thread& t : threads) t.join();
    ASSERT_EQ(failures.load(), 0);
    for (int rank = 1; rank < size; ++rank) {
        ASSERT_EQ(last[rank].size(), last[0].size());
        EXPECT_EQ(std::memcmp(last[rank].data(), last[0].data(), last[0].size() * sizeof(float)), 0);
    }
}

TEST(CommunicatorTest, ValuesMakeTheOrderMatter) {
    // The test data must tell rank order from others, or the order checks below prove nothing.
    int differs = 0;
    for (int round = 0; round < 50; ++round) {
        for (int64_t i = 0; i < 64; ++i) {
            const float forward = RankOrderSum(4, round, i);
            float backward = Value(3, round, i);
            for (int r = 2; r >= 0; --r) backward += Value(r, round, i);
            const float pairwise =
                (Value(0, round, i) + Value(1, round, i)) + (Value(2, round, i) + Value(3, round, i));
            differs += Bits(forward) != Bits(backward) || Bits(forward) != Bits(pairwise);
        }
    }
    EXPECT_GT(differs, 100);
}

TEST(CommunicatorTest, SumsInRankOrderOnEveryRank) {
    for (int size : {1, 2, 3, 4}) {
        SCOPED_TRACE("size " + std::to_string(size));
        RunRounds(size, 200);
    }
}

TEST(CommunicatorTest, ManyRoundsOneGroup) {
    // Thousands of calls on one group: no growth, no stuck generation.
    RunRounds(3, 3000);
}

TEST(CommunicatorTest, SizeOneIsIdentity) {
    std::unique_ptr<CommunicatorGroup> group = MakeHostCommunicators(1);
    std::vector<float> v = {1.5f, -2.0f, 1e8f};
    for (int i = 0; i < 1000; ++i) ASSERT_TRUE(group->rank(0)->AllReduceSum(v.data(), 3).ok());
    EXPECT_EQ(v, (std::vector<float>{1.5f, -2.0f, 1e8f}));
}

TEST(CommunicatorTest, DisagreeingCountsFailOnEveryRank) {
    std::unique_ptr<CommunicatorGroup> group = MakeHostCommunicators(2);
    std::vector<float> a(4, 1.0f), b(5, 2.0f);
    Status sa, sb;
    std::thread t([&] { sb = group->rank(1)->AllReduceSum(b.data(), 5); });
    sa = group->rank(0)->AllReduceSum(a.data(), 4);
    t.join();
    EXPECT_EQ(sa.code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(sb.code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(a, std::vector<float>(4, 1.0f));
    EXPECT_EQ(b, std::vector<float>(5, 2.0f));
    // The group goes on working.
    std::thread t2([&] { sb = group->rank(1)->AllReduceSum(b.data(), 4); });
    sa = group->rank(0)->AllReduceSum(a.data(), 4);
    t2.join();
    ASSERT_TRUE(sa.ok() && sb.ok());
    EXPECT_EQ(a, std::vector<float>(4, 3.0f));
}

TEST(CommunicatorTest, AbortFreesWaitingRanksAndResetRestores) {
    constexpr int kSize = 4;
    std::unique_ptr<CommunicatorGroup> group = MakeHostCommunicators(kSize);
    std::vector<Status> results(kSize);
    std::vector<std::vector<float>> bufs(kSize, std::vector<float>(10, 1.0f));
    std::atomic<int> entered{0};
    // Ranks 0..2 wait for rank 3, which fails and aborts instead.
    std::vector<std::thread> threads;
    for (int r = 0; r < kSize - 1; ++r) {
        threads.emplace_back([&, r] {
            entered++;
            results[r] = group->rank(r)->AllReduceSum(bufs[r].data(), 10);
        });
    }
    while (entered.load() < kSize - 1) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let them reach the wait (either way is tested)
    group->rank(kSize - 1)->Abort();
    for (std::thread& t : threads) t.join();
    for (int r = 0; r < kSize - 1; ++r) {
        EXPECT_EQ(results[r].code(), StatusCode::kCancelled) << r;
        EXPECT_EQ(bufs[r], std::vector<float>(10, 1.0f)) << r;
    }
    // Later calls fail at once, also on the rank that aborted, until Reset.
    EXPECT_EQ(group->rank(0)->AllReduceSum(bufs[0].data(), 10).code(), StatusCode::kCancelled);
    EXPECT_EQ(group->rank(kSize - 1)->AllReduceSum(bufs[kSize - 1].data(), 10).code(), StatusCode::kCancelled);
    ASSERT_TRUE(group->Reset().ok());
    threads.clear();
    for (int r = 0; r < kSize; ++r) {
        threads.emplace_back([&, r] {
            for (int round = 0; round < 50; ++round) {
                std::fill(bufs[r].begin(), bufs[r].end(), static_cast<float>(r + 1));
                results[r] = group->rank(r)->AllReduceSum(bufs[r].data(), 10);
                if (!results[r].ok()) return;
            }
        });
    }
    for (std::thread& t : threads) t.join();
    for (int r = 0; r < kSize; ++r) {
        EXPECT_TRUE(results[r].ok()) << results[r].ToString();
        EXPECT_EQ(bufs[r], std::vector<float>(10, 10.0f));
    }
}

TEST(CommunicatorTest, AbortDuringRoundsEndsEveryRank) {
    // Ranks loop on reductions; one stops after a while and aborts: every other rank must return (not hang),
    // and each call that succeeded did so on all ranks that made it.
    constexpr int kSize = 3;
    std::unique_ptr<CommunicatorGroup> group = MakeHostCommunicators(kSize);
    std::vector<int> completed(kSize, 0);
    std::vector<std::thread> threads;
    for (int r = 0; r < kSize; ++r) {
        threads.emplace_back([&, r] {
            std::vector<float> buf(33);
            for (int round = 0; round < 100000; ++round) {
                if (r == 1 && round == 137) {
                    group->rank(r)->Abort();
                    return;
                }
                std::fill(buf.begin(), buf.end(), 1.0f);
                if (!group->rank(r)->AllReduceSum(buf.data(), 33).ok()) return;
                EXPECT_EQ(buf[32], 3.0f);
                completed[r]++;
            }
        });
    }
    for (std::thread& t : threads) t.join();
    EXPECT_EQ(completed[1], 137);
    EXPECT_EQ(completed[0], 137);
    EXPECT_EQ(completed[2], 137);
}

#ifdef UNIATTN_HAVE_CUDA
TEST(CommunicatorTest, NcclFailsCleanlyOrWorks) {
    EXPECT_EQ(MakeNcclCommunicators({}, {}).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(MakeNcclCommunicators({0, 1}, {nullptr}).status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(MakeNcclCommunicators({0, 0}, {nullptr, nullptr}).status().code(), StatusCode::kInvalidArgument);
    // Without a GPU or libnccl.so.2 (the CPU test machines) an error, not a crash; with them, one rank.
    auto group = MakeNcclCommunicators({0}, {nullptr});
    if (!group.ok()) {
        EXPECT_EQ(group.status().code(), StatusCode::kUnavailable) << group.status().ToString();
        EXPECT_FALSE(group.status().message().empty());
        return;
    }
    ASSERT_EQ((*group)->size(), 1);
    EXPECT_EQ((*group)->Name(), "nccl");
    EXPECT_EQ((*group)->rank(0)->size(), 1);
}
#endif

}  // namespace
}  // namespace uniattn
