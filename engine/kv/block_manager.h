// Which KV blocks exist, who holds them, and which hold reusable prefix-cache content. Pure host code:
// it never touches KV memory (kv/kv_cache.h owns the bytes), so it is tested without a model.
//
// Every block is in exactly one of three states:
//   used    ref_count > 0: held by one or more sequences (shared through prefix hits or n-sample forks)
//   cached  ref_count == 0 and it holds a registered full block (a hash): free, but reusable by a prefix
//           hit until evicted; kept in LRU order, least recently freed evicted first
//   empty   ref_count == 0, no content worth keeping
// Allocate() takes an empty block when there is one, else evicts the LRU cached block.
//
// Prefix cache: a full block of tokens is identified by the hash chain h_i = H(h_{i-1}, tokens of block i)
// (h_{-1} = a fixed seed), so a block only matches when every token before it matches as well. Matches
// are verified against the stored tokens and parent hash, so a 64-bit collision cannot alias blocks.
//
// Not thread-safe: the engine thread owns it.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "uniattn/dtype.h"
#include "uniattn/model_config.h"

namespace uniattn {

class BlockManager {
  public:
    static constexpr uint64_t kRootHash = 0x6a09e667f3bcc908ULL;

    BlockManager(int64_t num_blocks, int block_size, bool enable_prefix_caching);

    // How many blocks a byte budget buys for this model's layout: block_size · KvBytesPerToken bytes each,
    // so a UniAttn model (no K planes in reuse layers) gets more blocks for the same bytes.
    static int64_t NumBlocksForBytes(const ModelConfig& config, DType kv_dtype, int block_size, int64_t bytes);

    // The chain hash of one full block whose predecessor's hash is `parent`.
    static uint64_t HashBlock(uint64_t parent, const int32_t* tokens, int num_tokens);

    int block_size() const { return block_size_; }
    int64_t num_blocks() const { return static_cast<int64_t>(ref_count_.size()); }
    bool prefix_caching() const { return prefix_caching_; }
    // Blocks that Allocate() can still hand out (empty + cached).
    int64_t num_free() const { return static_cast<int64_t>(empty_.size()) + num_cached_; }
    int64_t num_used() const { return num_blocks() - num_free(); }
    int64_t num_cached() const { return num_cached_; }

    // A block with ref_count 1, or nullopt when every block is used. Evicts the LRU cached block when no
    // empty block is left (its hash is forgotten).
    std::optional<int32_t> Allocate();
    // One more holder (a fork).
    void AddRef(int32_t block);
    // One holder fewer. At zero the block becomes cached (if it holds a registered hash) at the MRU end of
    // the LRU list, else empty. Free a sequence's blocks last-to-first so its tail is evicted before its head.
    void Release(int32_t block);
    int ref_count(int32_t block) const { return ref_count_[block]; }

    // The longest chain of cached/used full blocks matching tokens[0, max_tokens), block by block; no
    // reference is taken. Empty when prefix caching is off.
    std::vector<int32_t> FindPrefix(const std::vector<int32_t>& tokens, int max_tokens) const;
    // How many of `blocks` currently sit in the free (cached) pool: acquiring them lowers num_free().
    int64_t NumFreeAmong(const std::vector<int32_t>& blocks) const;
    // Takes a reference on each block found by FindPrefix (cached ones leave the LRU list).
    void Acquire(const std::vector<int32_t>& blocks);
    // Counts one prefix-cache lookup: `num_query_tokens` looked up, `num_hit_tokens` served from cache.
    void RecordLookup(int64_t num_query_tokens, int64_t num_hit_tokens) {
        if (!prefix_caching_) return;
        query_tokens_ += num_query_tokens;
        hit_tokens_ += num_hit_tokens;
    }

    // Registers a used, full block as holding `tokens` (block_size of them) after parent hash `parent`,
    // once its KV has been written. No-op when caching is off, when the block is already registered, or
    // when another block already holds this content (the duplicate stays unregistered).
    void Register(int32_t block, uint64_t parent, const int32_t* tokens);
    // The registered hash of a block, if any.
    std::optional<uint64_t> HashOf(int32_t block) const;

    int64_t prefix_query_tokens() const { return query_tokens_; }
    int64_t prefix_hit_tokens() const { return hit_tokens_; }

    // Checks the internal bookkeeping (lists, counts, hash map) against the per-block state; returns a
    // description of the first inconsistency, or an empty string. For tests and debug checks.
    std::string CheckConsistency() const;

  private:
    struct CachedContent {
        uint64_t hash = 0;
        uint64_t parent = 0;
        std::vector<int32_t> tokens;
    };
    void LruUnlink(int32_t block);
    void LruPushBack(int32_t block);
    void Forget(int32_t block);  // drops the block's registered content

    int block_size_;
    bool prefix_caching_;
    std::vector<int> ref_count_;
    std::vector<std::optional<CachedContent>> content_;
    std::vector<int32_t> empty_;  // stack of empty block ids
    // Intrusive doubly linked LRU list of cached blocks (-1 = none); head is the least recently freed.
    std::vector<int32_t> lru_prev_, lru_next_;
    int32_t lru_head_ = -1, lru_tail_ = -1;
    int64_t num_cached_ = 0;
    std::unordered_map<uint64_t, int32_t> by_hash_;
    int64_t query_tokens_ = 0, hit_tokens_ = 0;
};

}  // namespace uniattn
