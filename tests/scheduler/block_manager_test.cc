#include "kv/block_manager.h"

#include <gtest/gtest.h>

#include <numeric>
#include <set>

namespace uniattn {
namespace {

std::vector<int32_t> Iota(int n, int32_t first) {
    std::vector<int32_t> v(n);
    std::iota(v.begin(), v.end(), first);
    return v;
}

// Registers tokens' full blocks in `blocks` as a sequence would after its forward pass.
void RegisterAll(BlockManager& bm, const std::vector<int32_t>& blocks, const std::vector<int32_t>& tokens) {
    uint64_t parent = BlockManager::kRootHash;
    const int bs = bm.block_size();
    for (size_t i = 0; i < blocks.size() && (i + 1) * bs <= tokens.size(); ++i) {
        bm.Register(blocks[i], parent, tokens.data() + i * bs);
        parent = BlockManager::HashBlock(parent, tokens.data() + i * bs, bs);
    }
}

std::vector<int32_t> AllocateN(BlockManager& bm, int n) {
    std::vector<int32_t> out;
    for (int i = 0; i < n; ++i) {
        auto b = bm.Allocate();
        EXPECT_TRUE(b.has_value());
        if (b) out.push_back(*b);
    }
    return out;
}

void ReleaseAll(BlockManager& bm, const std::vector<int32_t>& blocks) {
    for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) bm.Release(*it);
}

TEST(BlockManagerTest, AllocatesEveryBlockOnceThenExhausts) {
    BlockManager bm(8, 4, true);
    EXPECT_EQ(bm.num_free(), 8);
    std::set<int32_t> seen;
    for (int i = 0; i < 8; ++i) {
        auto b = bm.Allocate();
        ASSERT_TRUE(b.has_value());
        EXPECT_TRUE(seen.insert(*b).second) << "block " << *b << " handed out twice";
        EXPECT_EQ(bm.ref_count(*b), 1);
    }
    EXPECT_FALSE(bm.Allocate().has_value());
    EXPECT_EQ(bm.num_free(), 0);
    EXPECT_EQ(bm.num_used(), 8);
    bm.Release(3);
    EXPECT_EQ(bm.num_free(), 1);
    EXPECT_EQ(bm.Allocate(), std::optional<int32_t>(3));
    EXPECT_EQ(bm.CheckConsistency(), "");
}

TEST(BlockManagerTest, ReferenceCounts) {
    BlockManager bm(4, 4, true);
    const int32_t b = *bm.Allocate();
    bm.AddRef(b);
    bm.AddRef(b);
    EXPECT_EQ(bm.ref_count(b), 3);
    bm.Release(b);
    bm.Release(b);
    EXPECT_EQ(bm.ref_count(b), 1);
    EXPECT_EQ(bm.num_used(), 1);
    bm.Release(b);
    EXPECT_EQ(bm.ref_count(b), 0);
    EXPECT_EQ(bm.num_used(), 0);
    EXPECT_EQ(bm.num_free(), 4);
    EXPECT_EQ(bm.CheckConsistency(), "");
}

TEST(BlockManagerTest, PrefixHitsFollowTheHashChain) {
    BlockManager bm(16, 4, true);
    const std::vector<int32_t> tokens = Iota(14, 100);  // 3 full blocks + 2 tokens
    const std::vector<int32_t> blocks = AllocateN(bm, 4);
    RegisterAll(bm, blocks, tokens);
    EXPECT_FALSE(bm.HashOf(blocks[3]).has_value()) << "a partial block is never registered";
    ReleaseAll(bm, blocks);
    EXPECT_EQ(bm.num_cached(), 3);
    EXPECT_EQ(bm.num_free(), 16);

    EXPECT_EQ(bm.FindPrefix(tokens, 14), std::vector<int32_t>(blocks.begin(), blocks.begin() + 3));
    EXPECT_EQ(bm.FindPrefix(tokens, 11), std::vector<int32_t>(blocks.begin(), blocks.begin() + 2));
    std::vector<int32_t> other = tokens;
    other[9] = 7;  // differs inside block 2
    EXPECT_EQ(bm.FindPrefix(other, 14), std::vector<int32_t>(blocks.begin(), blocks.begin() + 2));
    other = tokens;
    other[0] = 7;  // differs in block 0: nothing after it can match either
    EXPECT_TRUE(bm.FindPrefix(other, 14).empty());

    // Acquiring hits takes them out of the free pool and counts tokens.
    const std::vector<int32_t> hit = bm.FindPrefix(tokens, 13);
    EXPECT_EQ(bm.NumFreeAmong(hit), 3);
    bm.Acquire(hit);
    bm.RecordLookup(14, 12);
    EXPECT_EQ(bm.num_free(), 13);
    EXPECT_EQ(bm.num_cached(), 0);
    EXPECT_EQ(bm.prefix_query_tokens(), 14);
    EXPECT_EQ(bm.prefix_hit_tokens(), 12);
    // Used blocks still match (sharing with a running sequence).
    EXPECT_EQ(bm.FindPrefix(tokens, 14).size(), 3u);
    EXPECT_EQ(bm.NumFreeAmong(hit), 0);
    bm.Acquire(hit);
    EXPECT_EQ(bm.ref_count(hit[0]), 2);
    ReleaseAll(bm, hit);
    ReleaseAll(bm, hit);
    EXPECT_EQ(bm.num_cached(), 3);
    EXPECT_EQ(bm.CheckConsistency(), "");
}

TEST(BlockManagerTest, EvictsLeastRecentlyFreedCachedBlocksLast) {
    BlockManager bm(6, 2, true);
    const std::vector<int32_t> a_tokens = {1, 2, 3, 4}, b_tokens = {5, 6, 7, 8};
    const std::vector<int32_t> a = AllocateN(bm, 2), b = AllocateN(bm, 2);
    RegisterAll(bm, a, a_tokens);
    RegisterAll(bm, b, b_tokens);
    ReleaseAll(bm, a);  // freed first: evicted first, its tail (a[1]) before its head (a[0])
    ReleaseAll(bm, b);
    EXPECT_EQ(bm.num_cached(), 4);
    // The two never-used blocks go first: cached content survives while empty blocks remain.
    const std::vector<int32_t> fresh = AllocateN(bm, 2);
    for (int32_t x : fresh) EXPECT_FALSE(bm.HashOf(x).has_value());
    EXPECT_EQ(bm.FindPrefix(a_tokens, 4).size(), 2u);
    // Now eviction: a[1], then a[0].
    EXPECT_EQ(bm.Allocate(), std::optional<int32_t>(a[1]));
    EXPECT_EQ(bm.FindPrefix(a_tokens, 4).size(), 1u);
    EXPECT_EQ(bm.Allocate(), std::optional<int32_t>(a[0]));
    EXPECT_TRUE(bm.FindPrefix(a_tokens, 4).empty());
    EXPECT_EQ(bm.FindPrefix(b_tokens, 4).size(), 2u);
    // A hit refreshes nothing by itself, but acquiring and releasing moves the block to the MRU end.
    // b was freed tail first, so b[1] is next; touching it makes b[0] the LRU block.
    bm.Acquire({b[1]});
    bm.Release(b[1]);
    EXPECT_EQ(bm.Allocate(), std::optional<int32_t>(b[0]));
    EXPECT_EQ(bm.Allocate(), std::optional<int32_t>(b[1]));
    EXPECT_FALSE(bm.Allocate().has_value());
    EXPECT_EQ(bm.num_cached(), 0);
    EXPECT_EQ(bm.CheckConsistency(), "");
}

TEST(BlockManagerTest, DuplicateContentStaysUnregistered) {
    BlockManager bm(4, 2, true);
    const std::vector<int32_t> tokens = {9, 9};
    const int32_t first = *bm.Allocate(), second = *bm.Allocate();
    bm.Register(first, BlockManager::kRootHash, tokens.data());
    bm.Register(second, BlockManager::kRootHash, tokens.data());
    EXPECT_TRUE(bm.HashOf(first).has_value());
    EXPECT_FALSE(bm.HashOf(second).has_value());
    bm.Release(second);
    bm.Release(first);
    EXPECT_EQ(bm.num_cached(), 1);
    EXPECT_EQ(bm.FindPrefix(tokens, 2), std::vector<int32_t>{first});
    EXPECT_EQ(bm.CheckConsistency(), "");
}

TEST(BlockManagerTest, PrefixCachingOff) {
    BlockManager bm(4, 2, false);
    const std::vector<int32_t> tokens = {1, 2, 3, 4};
    const std::vector<int32_t> blocks = AllocateN(bm, 2);
    RegisterAll(bm, blocks, tokens);
    EXPECT_FALSE(bm.HashOf(blocks[0]).has_value());
    ReleaseAll(bm, blocks);
    EXPECT_EQ(bm.num_cached(), 0);
    EXPECT_TRUE(bm.FindPrefix(tokens, 4).empty());
    bm.RecordLookup(4, 0);
    EXPECT_EQ(bm.prefix_query_tokens(), 0);
    EXPECT_EQ(bm.CheckConsistency(), "");
}

TEST(BlockManagerTest, HashChainDependsOnParentAndTokens) {
    const std::vector<int32_t> t = {1, 2, 3, 4};
    const uint64_t h = BlockManager::HashBlock(BlockManager::kRootHash, t.data(), 4);
    EXPECT_NE(h, BlockManager::HashBlock(h, t.data(), 4));
    const std::vector<int32_t> u = {1, 2, 4, 3};
    EXPECT_NE(h, BlockManager::HashBlock(BlockManager::kRootHash, u.data(), 4));
    EXPECT_EQ(h, BlockManager::HashBlock(BlockManager::kRootHash, t.data(), 4));
}

TEST(BlockManagerTest, UniAttnLayoutBuysMoreBlocksForTheSameBytes) {
    ModelConfig dense;
    dense.num_layers = 4;
    dense.num_heads = 4;
    dense.num_kv_heads = 2;
    dense.head_dim = 16;
    ASSERT_TRUE(dense.DeriveLayerKinds().ok());
    ModelConfig unified = dense;
    unified.has_grouping = true;
    unified.grouping_idx = 2;
    unified.grouping_begin_idx = 0;
    unified.grouping_end_idx = 4;  // layers 1 and 3 reuse: no K planes
    ASSERT_TRUE(unified.DeriveLayerKinds().ok());
    ASSERT_EQ(unified.num_reuse_layers(), 2);
    const int64_t bytes = 1 << 20;
    const int64_t dense_blocks = BlockManager::NumBlocksForBytes(dense, DType::kF32, 16, bytes);
    const int64_t unified_blocks = BlockManager::NumBlocksForBytes(unified, DType::kF32, 16, bytes);
    // Dense: 4 B · 2 · 16 · 2 · 4 layers = 1024 B/token; unified: 4 · 2 · 16 · (2·2 + 2) = 768 B/token.
    EXPECT_EQ(dense_blocks, bytes / (1024 * 16));
    EXPECT_EQ(unified_blocks, bytes / (768 * 16));
    EXPECT_GT(unified_blocks, dense_blocks);
}

}  // namespace
}  // namespace uniattn
