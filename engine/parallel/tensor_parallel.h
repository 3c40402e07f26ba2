// Tensor parallelism (issue 19): Megatron-style shards of one model over `size` ranks, driven by one engine thread.
//
// Rank r of N holds: query heads [r·Hq/N, (r+1)·Hq/N) with their rows of Wq and columns of Wo; the KV heads those
// query heads read (Hkv/N of them, or, when there are fewer KV heads than ranks, the one KV head its query heads
// share, replicated across the ranks that use it) with their rows of Wk, Wv and its own KV cache planes; rows
// [r·ff/N, (r+1)·ff/N) of Wgate and Wup and those columns of Wdown; for a UniAttn reuse layer its rows of Wv as
// above and rows [r·d/N, (r+1)·d/N) of the compensation Wc (the slice of the hidden size its share of the
// compensation adds to). The embedding, the norms, the biases of o_proj and lm_head are replicated: every rank
// keeps the whole residual stream. o_proj, down_proj (and the compensation) give partial sums that the ranks
// all-reduce before they join the residual (ModelRunner::SetCommunicator), so after each layer every rank holds
// the same residual; logits come from rank 0.
//
// One thread per rank, in one process: the engine thread runs rank 0 and hands the same ForwardInput to the
// other ranks' threads; the scheduler and block manager are shared (every rank's cache has the same blocks,
// each with its own heads). Chosen over a process per GPU because one process keeps one scheduler, one
// tokenizer and one HTTP front end with no IPC: CUDA and NCCL support one thread per device
// (ncclCommInitAll), and the CPU backend needs nothing else.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "kv/kv_cache.h"
#include "kv/kv_scales.h"
#include "model/forward.h"
#include "model/model.h"
#include "parallel/communicator.h"

namespace uniattn {

// The shape one rank sees: heads, KV heads and intermediate size divided (KV heads: at least 1). kInvalidArgument
// naming the field when the model cannot be split `size` ways (heads, intermediate size, KV heads neither
// divisible by size nor dividing it).
StatusOr<ModelConfig> ShardConfig(const ModelConfig& full, int size);

// The query heads of rank `rank` start at rank·Hq/size; its KV heads start at this index of the full model's.
int FirstKvHead(const ModelConfig& full, int rank, int size);

// Rank `rank`'s weights (layout above) on `backend`, in its weight dtype, from a model loaded on the CPU
// backend (host memory; fp32). Tokenizer not copied. with_lm_head false leaves lm_head out (null) unless it is
// the embedding (tied): TensorParallelGroup's ranks other than 0 never compute logits.
StatusOr<std::unique_ptr<Model>> ShardModel(const Model& full, int rank, int size, Backend* backend,
                                            bool with_lm_head = true);

// The ranks of one engine: their backends, shard models, runners, caches and threads.
class TensorParallelGroup {
  public:
    // Shards `full` (on the CPU backend) over the backends and connects them with `comms` (one per rank, rank
    // order). Starts size - 1 worker threads.
    static StatusOr<std::unique_ptr<TensorParallelGroup>> Create(const Model& full,
                                                                 std::vector<std::unique_ptr<Backend>> backends,
                                                                 std::unique_ptr<CommunicatorGroup> comms);
    ~TensorParallelGroup();

    int size() const { return static_cast<int>(ranks_.size()); }
    Backend* backend(int r) { return ranks_[r].backend.get(); }
    const Model& model(int r) const { return *ranks_[r].model; }
    ModelRunner& runner(int r) { return *ranks_[r].runner; }
    KvCache& kv(int r) { return *ranks_[r].kv; }

    // One KV cache per rank, num_blocks blocks each, for its shard's heads.
    Status CreateKv(int block_size, int64_t num_blocks, DType dtype, const KvScales* scales);
    // Runs the step on every rank at once (rank 0 here, the others on their threads); rank 0's logits to
    // host_logits (or kept for SampleLogits when null). The first failure is returned; it aborts the
    // communicators so that no rank waits for the others forever.
    Status Forward(const ForwardInput& in, float* host_logits);
    // Copies KV blocks on every rank (prefix-cache copy-on-write).
    void CopyBlocks(const std::vector<std::pair<int32_t, int32_t>>& copies);

  private:
    struct Rank {
        std::unique_ptr<Backend> backend;
        std::unique_ptr<Model> model;
        std::unique_ptr<ModelRunner> runner;
        std::unique_ptr<KvCache> kv;
    };
    TensorParallelGroup() = default;
    void Work(int r);

    ModelConfig full_config_;
    std::vector<Rank> ranks_;
    std::unique_ptr<CommunicatorGroup> comms_;
    std::vector<std::thread> threads_;
    std::mutex mu_;
    std::condition_variable cv_;
    const ForwardInput* job_ = nullptr;  // guarded by mu_
    uint64_t job_id_ = 0;                // guarded by mu_: bumped per step
    int pending_ = 0;                    // guarded by mu_: workers still running the step
    std::vector<Status> results_;        // per rank, for the step
    bool stopping_ = false;              // guarded by mu_
};

}  // namespace uniattn
