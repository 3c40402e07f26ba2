// Continuous batching: every step decides which sequences run, how many of their tokens, and which KV
// blocks they own. Pure host code (no model, no KV memory), driven by the engine thread:
//
//   out = Schedule();            // chunks to run, block copies to do first, who was preempted
//   ... copy blocks, run one forward pass over out.chunks ...
//   CompleteStep(out);           // KV now holds the chunks: advance, register full blocks in the cache
//   ... for each chunk with wants_logits: Fork() pending samples, sample, AppendToken() or Finish() ...
//
// Policy (see engine/README.md):
//   - First come, first served. Running sequences are served before waiting ones: decodes first (one
//     token each), then the running prefills' next chunks, then new admissions from the head of the
//     waiting queue, all under max_num_batched_tokens; running + reserved fork slots <= max_num_seqs.
//     The waiting queue is never overtaken: if its head does not fit, nothing behind it is admitted.
//   - Long prompts are chunked to the remaining token budget, so decodes keep flowing.
//   - When blocks run out, the most recently admitted running sequence is preempted: its blocks are
//     released (full ones stay in the prefix cache), it returns to the front of the waiting queue and is
//     recomputed from its tokens (prompt and generated) later. The oldest running sequence is never
//     preempted while others run, and a sequence that fits the whole pool alone (AddSequence refuses
//     any other) always makes progress: no deadlock, no starvation.
//   - Admission looks up the prefix cache for the sequence's full blocks (never the block holding its
//     last token, whose logits are needed), shares the hits and computes only the rest.
//   - n samples: one sequence prefills the prompt; when its logits are ready the engine forks the other
//     n - 1 samples, which share every block (reference counts). A block shared by several sequences is
//     copied before one of them writes into it (copy-on-write: only the partial last prompt block).
//
// Sequence state machine (SequenceStatus):
//   AddSequence ──> kWaiting ──admitted──> kRunning ──preempted (blocks released)──> kWaiting (front)
//   Finish() from either state forgets the sequence and releases its blocks.
//
// Not thread-safe: the engine thread owns it.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kv/block_manager.h"
#include "uniattn/status.h"

namespace uniattn {

struct SchedulerConfig {
    int max_num_seqs = 64;             // sequences per step (running + fork slots reserved by waiting ones)
    int max_num_batched_tokens = 512;  // tokens per step
};

enum class SequenceStatus { kWaiting, kRunning };

struct Sequence {
    uint64_t seq_id = 0;
    uint64_t request_id = 0;  // the caller's tag
    int sample_index = 0;     // set by the caller on forks
    uint64_t arrival = 0;     // FCFS order; forks inherit their parent's
    SequenceStatus status = SequenceStatus::kWaiting;
    std::vector<int32_t> tokens;  // prompt, then generated tokens
    int num_prompt_tokens = 0;
    int max_total_tokens = 0;     // the most tokens this sequence will ever hold in the KV cache
    int num_computed_tokens = 0;  // tokens[0, num_computed_tokens) have their KV in block_table
    std::vector<int32_t> block_table;
    std::vector<uint64_t> block_hashes;  // chain hashes of tokens' full blocks, filled as blocks fill
    int num_pending_forks = 0;           // samples still to fork off once the prompt's logits are ready
    bool in_prefill = true;              // computing more than its newest token (prompt, or recompute)
    int num_cached_tokens = -1;          // prefix-cache hit at its first admission; -1 before
    int num_preemptions = 0;
    int queue_rank = 0;  // fair admission order in the waiting queue (AddSequence); INT_MIN once preempted

    int num_tokens() const { return static_cast<int>(tokens.size()); }
    int num_generated() const { return num_tokens() - num_prompt_tokens; }
    int num_slots() const { return 1 + num_pending_forks; }
};

// One sequence's share of a step: tokens[start, start + num_tokens) at positions start...
struct ScheduledChunk {
    Sequence* seq = nullptr;
    int start = 0;
    int num_tokens = 0;
    bool wants_logits = false;  // the chunk ends at the sequence's newest token: sample after it
    bool is_prefill = false;
};

struct SchedulerOutput {
    std::vector<ScheduledChunk> chunks;
    // Copy whole KV blocks (src, dst), in this order, before the forward pass (copy-on-write).
    std::vector<std::pair<int32_t, int32_t>> block_copies;
    std::vector<uint64_t> preempted;  // sequences preempted by this step
    int num_prefill_tokens = 0;
    int num_decode_tokens = 0;
    bool empty() const { return chunks.empty(); }
};

class Scheduler {
  public:
    Scheduler(const SchedulerConfig& config, int64_t num_blocks, int block_size, bool enable_prefix_caching);

    // Queues a sequence and returns its id. `max_total_tokens` is the most tokens it can hold in the KV
    // cache (prompt + max new tokens - 1); kFailedPrecondition when that can never fit the whole pool,
    // kInvalidArgument when the sample count can never fit max_num_seqs. Fair admission: the sequence goes
    // behind every waiting one whose `queue_rank` is no higher, ahead of those with a higher one (rank =
    // sequences its client request submitted before it), so a request of many prompts cannot hold the head
    // of the queue while other clients wait; equal ranks keep arrival order. Preempted sequences stay first.
    StatusOr<uint64_t> AddSequence(uint64_t request_id, std::vector<int32_t> prompt, int num_samples,
                                   int max_total_tokens, int queue_rank = 0);
    // The longest sequence (in tokens) the pool can hold.
    int64_t max_tokens_in_pool() const { return blocks_.num_blocks() * blocks_.block_size(); }

    SchedulerOutput Schedule();
    // Records that the forward pass of `out` wrote its chunks' KV.
    void CompleteStep(const SchedulerOutput& out);

    // Precondition: the sequence is running with all its tokens computed (it just produced logits).
    void AppendToken(uint64_t seq_id, int32_t token);
    // Forks `num_children` samples of a running sequence whose tokens are all computed; they share all
    // its blocks, join the running queue and take over reserved slots. Returns their ids.
    std::vector<uint64_t> Fork(uint64_t seq_id, int num_children);
    // Forgets a sequence (finished, cancelled or failed) and releases its blocks.
    void Finish(uint64_t seq_id);

    Sequence* Find(uint64_t seq_id);
    int num_running() const { return static_cast<int>(running_.size()); }
    int num_waiting() const { return static_cast<int>(waiting_.size()); }
    bool HasWork() const { return !running_.empty() || !waiting_.empty(); }
    int64_t num_preemptions() const { return num_preemptions_; }
    const BlockManager& block_manager() const { return blocks_; }
    const SchedulerConfig& config() const { return config_; }

    // Checks, between steps, every invariant the scheduler relies on: block reference counts equal the
    // number of block-table entries naming the block, no block twice in one table, table sizes match
    // computed tokens, waiting sequences own nothing, cached blocks hold the hash of the tokens of the
    // sequences sharing them, queue membership matches status, the max_num_seqs bound. Returns a
    // description of the first violation, or an empty string.
    std::string CheckInvariants() const;

  private:
    bool Reserve(Sequence* seq, int upto, SchedulerOutput* out);
    void Preempt(Sequence* seq, SchedulerOutput* out);
    void ReleaseBlocks(Sequence* seq);
    bool TryAdmit(Sequence* seq, int* budget, SchedulerOutput* out);
    void RemoveFrom(std::deque<Sequence*>& queue, Sequence* seq);

    SchedulerConfig config_;
    BlockManager blocks_;
    std::unordered_map<uint64_t, std::unique_ptr<Sequence>> seqs_;
    std::deque<Sequence*> waiting_;  // FCFS; preempted sequences return to the front
    std::deque<Sequence*> running_;  // admission order: the back is the most recently admitted
    uint64_t next_seq_id_ = 1;
    uint64_t next_arrival_ = 0;
    int64_t num_preemptions_ = 0;
};

}  // namespace uniattn
