#include "kv/block_manager.h"

#include <algorithm>

namespace uniattn {

namespace {

uint64_t Mix(uint64_t x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

}  // namespace

BlockManager::BlockManager(int64_t num_blocks, int block_size, bool enable_prefix_caching)
    : block_size_(block_size),
      prefix_caching_(enable_prefix_caching),
      ref_count_(static_cast<size_t>(num_blocks), 0),
      content_(static_cast<size_t>(num_blocks)),
      lru_prev_(static_cast<size_t>(num_blocks), -1),
      lru_next_(static_cast<size_t>(num_blocks), -1) {
    UA_CHECK_GT(block_size, 0);
    UA_CHECK_GE(num_blocks, 0);
    UA_CHECK_LE(num_blocks, int64_t{INT32_MAX});
    // Block 0 is handed out first.
    empty_.reserve(static_cast<size_t>(num_blocks));
    for (int64_t b = num_blocks - 1; b >= 0; --b) empty_.push_back(static_cast<int32_t>(b));
}

int64_t BlockManager::NumBlocksForBytes(const ModelConfig& config, DType kv_dtype, int block_size, int64_t bytes) {
    const int64_t per_block = config.KvBytesPerToken(DTypeBytes(kv_dtype)) * block_size;
    return per_block > 0 ? bytes / per_block : 0;
}

uint64_t BlockManager::HashBlock(uint64_t parent, const int32_t* tokens, int num_tokens) {
    uint64_t h = Mix(parent ^ 0x9E3779B97F4A7C15ULL);
    for (int i = 0; i < num_tokens; ++i) h = Mix(h + 0x9E3779B97F4A7C15ULL + static_cast<uint32_t>(tokens[i]));
    return Mix(h ^ static_cast<uint64_t>(num_tokens));
}

void BlockManager::LruUnlink(int32_t b) {
    const int32_t p = lru_prev_[b], n = lru_next_[b];
    if (p >= 0) {
        lru_next_[p] = n;
    } else {
        lru_head_ = n;
    }
    if (n >= 0) {
        lru_prev_[n] = p;
    } else {
        lru_tail_ = p;
    }
    lru_prev_[b] = lru_next_[b] = -1;
    --num_cached_;
}

void BlockManager::LruPushBack(int32_t b) {
    lru_prev_[b] = lru_tail_;
    lru_next_[b] = -1;
    if (lru_tail_ >= 0) {
        lru_next_[lru_tail_] = b;
    } else {
        lru_head_ = b;
    }
    lru_tail_ = b;
    ++num_cached_;
}

void BlockManager::Forget(int32_t b) {
    if (!content_[b]) return;
    auto it = by_hash_.find(content_[b]->hash);
    if (it != by_hash_.end() && it->second == b) by_hash_.erase(it);
    content_[b].reset();
}

std::optional<int32_t> BlockManager::Allocate() {
    int32_t b = -1;
    if (!empty_.empty()) {
        b = empty_.back();
        empty_.pop_back();
    } else if (lru_head_ >= 0) {
        b = lru_head_;
        LruUnlink(b);
        Forget(b);
    } else {
        return std::nullopt;
    }
    UA_CHECK_EQ(ref_count_[b], 0);
    ref_count_[b] = 1;
    return b;
}

void BlockManager::AddRef(int32_t b) {
    UA_CHECK_GT(ref_count_[b], 0);
    ++ref_count_[b];
}

void BlockManager::Release(int32_t b) {
    UA_CHECK_GT(ref_count_[b], 0);
    if (--ref_count_[b] > 0) return;
    if (content_[b]) {
        LruPushBack(b);
    } else {
        empty_.push_back(b);
    }
}

std::vector<int32_t> BlockManager::FindPrefix(const std::vector<int32_t>& tokens, int max_tokens) const {
    std::vector<int32_t> blocks;
    if (!prefix_caching_) return blocks;
    const int limit = std::min<int>(max_tokens, static_cast<int>(tokens.size()));
    uint64_t parent = kRootHash;
    for (int start = 0; start + block_size_ <= limit; start += block_size_) {
        const uint64_t h = HashBlock(parent, tokens.data() + start, block_size_);
        auto it = by_hash_.find(h);
        if (it == by_hash_.end()) break;
        const CachedContent& c = *content_[it->second];
        if (c.parent != parent || !std::equal(c.tokens.begin(), c.tokens.end(), tokens.begin() + start)) break;
        blocks.push_back(it->second);
        parent = h;
    }
    return blocks;
}

int64_t BlockManager::NumFreeAmong(const std::vector<int32_t>& blocks) const {
    int64_t n = 0;
    for (int32_t b : blocks) n += ref_count_[b] == 0 ? 1 : 0;
    return n;
}

void BlockManager::Acquire(const std::vector<int32_t>& blocks) {
    for (int32_t b : blocks) {
        UA_CHECK(content_[b].has_value());
        if (ref_count_[b] == 0) LruUnlink(b);
        ++ref_count_[b];
    }
}

void BlockManager::Register(int32_t b, uint64_t parent, const int32_t* tokens) {
    if (!prefix_caching_) return;
    UA_CHECK_GT(ref_count_[b], 0);
    if (content_[b]) return;
    const uint64_t h = HashBlock(parent, tokens, block_size_);
    if (by_hash_.count(h) > 0) return;
    content_[b] = CachedContent{h, parent, std::vector<int32_t>(tokens, tokens + block_size_)};
    by_hash_.emplace(h, b);
}

std::optional<uint64_t> BlockManager::HashOf(int32_t b) const {
    if (!content_[b]) return std::nullopt;
    return content_[b]->hash;
}

std::string BlockManager::CheckConsistency() const {
    const int64_t n = num_blocks();
    std::vector<char> in_empty(static_cast<size_t>(n), 0), in_lru(static_cast<size_t>(n), 0);
    for (int32_t b : empty_) {
        if (b < 0 || b >= n) return "empty list holds out-of-range block " + std::to_string(b);
        if (in_empty[b]) return "block " + std::to_string(b) + " is on the empty list twice";
        in_empty[b] = 1;
    }
    int64_t lru_len = 0;
    int32_t prev = -1;
    for (int32_t b = lru_head_; b >= 0; b = lru_next_[b]) {
        if (in_lru[b]) return "LRU list has a cycle at block " + std::to_string(b);
        if (lru_prev_[b] != prev) return "LRU back link broken at block " + std::to_string(b);
        in_lru[b] = 1;
        prev = b;
        ++lru_len;
    }
    if (prev != lru_tail_) return "LRU tail mismatch";
    if (lru_len != num_cached_) {
        return "LRU list has " + std::to_string(lru_len) + " blocks, counter says " + std::to_string(num_cached_);
    }
    int64_t registered = 0;
    for (int64_t b = 0; b < n; ++b) {
        const std::string id = "block " + std::to_string(b);
        if (ref_count_[b] < 0) return id + " has a negative reference count";
        if (ref_count_[b] > 0 && (in_empty[b] || in_lru[b])) return id + " is used but on a free list";
        if (ref_count_[b] == 0 && in_empty[b] + in_lru[b] != 1) return id + " is free but on no free list (leaked)";
        if (in_lru[b] && !content_[b]) return id + " is on the LRU list without cached content";
        if (in_empty[b] && content_[b]) return id + " is empty but still registered";
        if (content_[b]) {
            ++registered;
            auto it = by_hash_.find(content_[b]->hash);
            if (it == by_hash_.end() || it->second != b) return id + " is registered but not in the hash map";
        }
    }
    if (registered != static_cast<int64_t>(by_hash_.size())) return "hash map size differs from registered blocks";
    return {};
}

}  // namespace uniattn
