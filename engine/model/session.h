// One sequence on its own KV cache: the simplest driver of ModelRunner, for uniattn-generate,
// uniattn-eval, calibration and tests. The scheduler (engine/scheduler) drives many sequences instead.
// Blocks are handed out in reverse order so that even a single sequence exercises non-contiguous pages.
#pragma once

#include <memory>
#include <optional>
#include <vector>

#include "model/forward.h"

namespace uniattn {

class Session {
  public:
    // Room for the model's whole context (max_position_embeddings, or max_tokens when > 0), in a KV cache of
    // kv_dtype (default backend->KvDType()) with kv_scales for kF8E4M3 (KvCache::Create's errors).
    static StatusOr<std::unique_ptr<Session>> Create(const Model* model, Backend* backend, int block_size = 16,
                                                     int max_chunk = 256, int max_tokens = 0,
                                                     std::optional<DType> kv_dtype = std::nullopt,
                                                     const KvScales* kv_scales = nullptr);

    // Appends tokens in chunks of at most max_chunk; fills logits with [n, vocab] rows: one per appended
    // token when all_logits, else only the last token's.
    Status Append(const std::vector<int32_t>& tokens, bool all_logits, std::vector<float>* logits);
    void Reset() { length_ = 0; }
    int length() const { return length_; }
    int capacity() const { return capacity_; }
    ModelRunner& runner() { return runner_; }
    // The cache and the blocks that hold position p: blocks()[p / block_size] (for tests and calibration).
    const KvCache& kv() const { return *kv_; }
    const std::vector<int32_t>& blocks() const { return blocks_; }

  private:
    Session(const Model* model, Backend* backend) : model_(model), runner_(model, backend) {}
    const Model* model_;
    ModelRunner runner_;
    std::unique_ptr<KvCache> kv_;
    std::vector<int32_t> blocks_;
    int block_size_ = 16;
    int max_chunk_ = 256;
    int capacity_ = 0;
    int length_ = 0;
};

}  // namespace uniattn
