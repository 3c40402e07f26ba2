#include "scheduler/scheduler.h"

#include <algorithm>
#include <iterator>
#include <limits>

namespace uniattn {

namespace {

int CeilDiv(int a, int b) { return (a + b - 1) / b; }

}  // namespace

Scheduler::Scheduler(const SchedulerConfig& config, int64_t num_blocks, int block_size, bool enable_prefix_caching)
    : config_(config), blocks_(num_blocks, block_size, enable_prefix_caching) {
    UA_CHECK_GT(config.max_num_seqs, 0);
    UA_CHECK_GT(config.max_num_batched_tokens, 0);
}

StatusOr<uint64_t> Scheduler::AddSequence(uint64_t request_id, std::vector<int32_t> prompt, int num_samples,
                                          int max_total_tokens, int queue_rank) {
    if (prompt.empty()) return InvalidArgument("prompt_ids must not be empty");
    if (num_samples < 1 || num_samples > config_.max_num_seqs) {
        return InvalidArgument("n (" + std::to_string(num_samples) +
                               ") must be in [1, max_num_seqs = " + std::to_string(config_.max_num_seqs) + "]");
    }
    max_total_tokens = std::max<int>(max_total_tokens, static_cast<int>(prompt.size()));
    if (max_total_tokens > max_tokens_in_pool()) {
        return FailedPrecondition("the prompt has " + std::to_string(prompt.size()) + " tokens and may grow to " +
                                  std::to_string(max_total_tokens) + " tokens, but the KV cache holds at most " +
                                  std::to_string(max_tokens_in_pool()) + " tokens (" +
                                  std::to_string(blocks_.num_blocks()) + " blocks of " +
                                  std::to_string(blocks_.block_size()) + ")");
    }
    auto seq = std::make_unique<Sequence>();
    seq->seq_id = next_seq_id_++;
    seq->request_id = request_id;
    seq->arrival = next_arrival_++;
    seq->num_prompt_tokens = static_cast<int>(prompt.size());
    seq->tokens = std::move(prompt);
    seq->max_total_tokens = max_total_tokens;
    seq->num_pending_forks = num_samples - 1;
    seq->queue_rank = std::max(queue_rank, 0);
    auto pos = waiting_.end();
    while (pos != waiting_.begin() && (*std::prev(pos))->queue_rank > seq->queue_rank) --pos;
    waiting_.insert(pos, seq.get());
    const uint64_t id = seq->seq_id;
    seqs_.emplace(id, std::move(seq));
    return id;
}

Sequence* Scheduler::Find(uint64_t seq_id) {
    auto it = seqs_.find(seq_id);
    return it == seqs_.end() ? nullptr : it->second.get();
}

void Scheduler::RemoveFrom(std::deque<Sequence*>& queue, Sequence* seq) {
    auto it = std::find(queue.begin(), queue.end(), seq);
    UA_CHECK(it != queue.end());
    queue.erase(it);
}

void Scheduler::ReleaseBlocks(Sequence* seq) {
    // Tail first: the LRU then evicts a sequence's last blocks before the prefix others may share.
    for (auto it = seq->block_table.rbegin(); it != seq->block_table.rend(); ++it) blocks_.Release(*it);
    seq->block_table.clear();
}

bool Scheduler::Reserve(Sequence* seq, int upto, SchedulerOutput* out) {
    const int bs = blocks_.block_size();
    const int first = seq->num_computed_tokens / bs;
    const bool copy_on_write =
        first < static_cast<int>(seq->block_table.size()) && blocks_.ref_count(seq->block_table[first]) > 1;
    const int64_t needed = CeilDiv(upto, bs) - static_cast<int64_t>(seq->block_table.size()) + (copy_on_write ? 1 : 0);
    if (needed > blocks_.num_free()) return false;
    if (copy_on_write) {
        // The block is shared (a fork's partial prompt block) and this sequence is about to write into it.
        const int32_t src = seq->block_table[first];
        const int32_t dst = *blocks_.Allocate();
        out->block_copies.emplace_back(src, dst);
        blocks_.Release(src);
        seq->block_table[first] = dst;
    }
    while (static_cast<int>(seq->block_table.size()) < CeilDiv(upto, bs))
        seq->block_table.push_back(*blocks_.Allocate());
    return true;
}

void Scheduler::Preempt(Sequence* seq, SchedulerOutput* out) {
    // If it was already given a chunk this step, take the chunk (and any copy into its blocks) back.
    auto chunk =
        std::find_if(out->chunks.begin(), out->chunks.end(), [&](const ScheduledChunk& c) { return c.seq == seq; });
    if (chunk != out->chunks.end()) out->chunks.erase(chunk);
    std::erase_if(out->block_copies, [&](const std::pair<int32_t, int32_t>& c) {
        return std::find(seq->block_table.begin(), seq->block_table.end(), c.second) != seq->block_table.end();
    });
    RemoveFrom(running_, seq);
    ReleaseBlocks(seq);
    seq->num_computed_tokens = 0;
    seq->status = SequenceStatus::kWaiting;
    seq->in_prefill = true;
    ++seq->num_preemptions;
    ++num_preemptions_;
    seq->queue_rank = std::numeric_limits<int>::min();
    waiting_.push_front(seq);
    out->preempted.push_back(seq->seq_id);
}

bool Scheduler::TryAdmit(Sequence* seq, int* budget, SchedulerOutput* out) {
    int slots = 0;
    for (const Sequence* s : running_) slots += s->num_slots();
    if (slots + seq->num_slots() > config_.max_num_seqs) return false;
    const int bs = blocks_.block_size();
    // Never the block holding the last token: its logits are needed, and writing its KV again into a
    // shared block would race with the other holders.
    std::vector<int32_t> prefix = blocks_.FindPrefix(seq->tokens, seq->num_tokens() - 1);
    const int num_cached = static_cast<int>(prefix.size()) * bs;
    const int n = std::min(seq->num_tokens() - num_cached, *budget);
    const int64_t needed = CeilDiv(num_cached + n, bs) - static_cast<int64_t>(prefix.size());
    if (needed > blocks_.num_free() - blocks_.NumFreeAmong(prefix)) return false;

    blocks_.Acquire(prefix);
    blocks_.RecordLookup(seq->num_tokens(), num_cached);
    seq->block_table = std::move(prefix);
    for (int64_t i = 0; i < needed; ++i) seq->block_table.push_back(*blocks_.Allocate());
    seq->num_computed_tokens = num_cached;
    if (seq->num_cached_tokens < 0) seq->num_cached_tokens = std::min(num_cached, seq->num_prompt_tokens);
    seq->status = SequenceStatus::kRunning;
    seq->in_prefill = true;
    waiting_.pop_front();
    running_.push_back(seq);
    out->chunks.push_back({seq, num_cached, n, num_cached + n == seq->num_tokens(), true});
    *budget -= n;
    return true;
}

SchedulerOutput Scheduler::Schedule() {
    SchedulerOutput out;
    int budget = config_.max_num_batched_tokens;

    // Decodes first so that a long prefill never stalls them, then the running prefills, oldest first.
    std::vector<Sequence*> order;
    order.reserve(running_.size());
    for (Sequence* s : running_) {
        if (!s->in_prefill) order.push_back(s);
    }
    for (Sequence* s : running_) {
        if (s->in_prefill) order.push_back(s);
    }
    for (Sequence* seq : order) {
        if (budget == 0) break;
        if (seq->status != SequenceStatus::kRunning) continue;  // preempted earlier in this step
        const int remaining = seq->num_tokens() - seq->num_computed_tokens;
        if (remaining <= 0) continue;
        const int n = std::min(remaining, budget);
        bool ok = true;
        while (!Reserve(seq, seq->num_computed_tokens + n, &out)) {
            Sequence* victim = running_.back();
            const bool was_scheduled = std::any_of(out.chunks.begin(), out.chunks.end(),
                                                   [&](const ScheduledChunk& c) { return c.seq == victim; });
            if (was_scheduled) {
                for (const ScheduledChunk& c : out.chunks) {
                    if (c.seq == victim) budget += c.num_tokens;
                }
            }
            Preempt(victim, &out);
            if (victim == seq) {
                ok = false;
                break;
            }
        }
        if (!ok) continue;
        const int start = seq->num_computed_tokens;
        out.chunks.push_back({seq, start, n, start + n == seq->num_tokens(), seq->in_prefill});
        budget -= n;
    }

    // New admissions only when nothing had to be preempted: the freed blocks go to the preempted first.
    if (out.preempted.empty()) {
        while (!waiting_.empty() && budget > 0) {
            if (!TryAdmit(waiting_.front(), &budget, &out)) break;
        }
    }
    for (const ScheduledChunk& c : out.chunks) {
        (c.is_prefill ? out.num_prefill_tokens : out.num_decode_tokens) += c.num_tokens;
    }
    return out;
}

void Scheduler::CompleteStep(const SchedulerOutput& out) {
    const int bs = blocks_.block_size();
    for (const ScheduledChunk& c : out.chunks) {
        Sequence* seq = c.seq;
        UA_CHECK_EQ(seq->num_computed_tokens, c.start);
        seq->num_computed_tokens += c.num_tokens;
        const int num_full = seq->num_computed_tokens / bs;
        while (static_cast<int>(seq->block_hashes.size()) < num_full) {
            const int i = static_cast<int>(seq->block_hashes.size());
            const uint64_t parent = i == 0 ? BlockManager::kRootHash : seq->block_hashes[i - 1];
            seq->block_hashes.push_back(BlockManager::HashBlock(parent, seq->tokens.data() + i * bs, bs));
        }
        for (int i = c.start / bs; i < num_full; ++i) {
            const uint64_t parent = i == 0 ? BlockManager::kRootHash : seq->block_hashes[i - 1];
            blocks_.Register(seq->block_table[i], parent, seq->tokens.data() + i * bs);
        }
        if (seq->num_computed_tokens == seq->num_tokens()) seq->in_prefill = false;
    }
}

void Scheduler::AppendToken(uint64_t seq_id, int32_t token) {
    Sequence* seq = Find(seq_id);
    UA_CHECK(seq != nullptr);
    UA_CHECK(seq->status == SequenceStatus::kRunning);
    UA_CHECK_EQ(seq->num_computed_tokens, seq->num_tokens());
    seq->tokens.push_back(token);
}

std::vector<uint64_t> Scheduler::Fork(uint64_t seq_id, int num_children) {
    Sequence* parent = Find(seq_id);
    UA_CHECK(parent != nullptr);
    UA_CHECK(parent->status == SequenceStatus::kRunning);
    UA_CHECK_EQ(parent->num_computed_tokens, parent->num_tokens());
    UA_CHECK_LE(num_children, parent->num_pending_forks);
    std::vector<uint64_t> ids;
    for (int i = 0; i < num_children; ++i) {
        auto child = std::make_unique<Sequence>(*parent);
        child->seq_id = next_seq_id_++;
        child->num_pending_forks = 0;
        child->num_preemptions = 0;
        for (int32_t b : child->block_table) blocks_.AddRef(b);
        running_.push_back(child.get());
        ids.push_back(child->seq_id);
        seqs_.emplace(child->seq_id, std::move(child));
    }
    parent->num_pending_forks -= num_children;
    return ids;
}

void Scheduler::Finish(uint64_t seq_id) {
    auto it = seqs_.find(seq_id);
    UA_CHECK(it != seqs_.end());
    Sequence* seq = it->second.get();
    RemoveFrom(seq->status == SequenceStatus::kRunning ? running_ : waiting_, seq);
    ReleaseBlocks(seq);
    seqs_.erase(it);
}

std::string Scheduler::CheckInvariants() const {
    if (std::string e = blocks_.CheckConsistency(); !e.empty()) return e;
    const int bs = blocks_.block_size();
    std::vector<int64_t> holders(static_cast<size_t>(blocks_.num_blocks()), 0);
    size_t num_running = 0, num_waiting = 0;
    int slots = 0;
    for (const auto& [id, seq_ptr] : seqs_) {
        const Sequence& s = *seq_ptr;
        const std::string name = "sequence " + std::to_string(id);
        if (s.seq_id != id) return name + " is filed under the wrong id";
        const std::deque<Sequence*>& queue = s.status == SequenceStatus::kRunning ? running_ : waiting_;
        if (std::count(queue.begin(), queue.end(), seq_ptr.get()) != 1) return name + " is not in its queue once";
        if (s.status == SequenceStatus::kRunning) {
            ++num_running;
            slots += s.num_slots();
        } else {
            ++num_waiting;
            if (!s.block_table.empty()) return name + " is waiting but holds blocks";
            if (s.num_computed_tokens != 0) return name + " is waiting with computed tokens";
        }
        if (s.num_computed_tokens > s.num_tokens()) return name + " computed more tokens than it has";
        if (s.status == SequenceStatus::kRunning &&
            static_cast<int>(s.block_table.size()) != CeilDiv(s.num_computed_tokens, bs)) {
            return name + " has " + std::to_string(s.block_table.size()) + " blocks for " +
                   std::to_string(s.num_computed_tokens) + " computed tokens";
        }
        if (s.num_tokens() > s.max_total_tokens + 1) return name + " outgrew its declared max_total_tokens";
        std::vector<int32_t> sorted = s.block_table;
        std::sort(sorted.begin(), sorted.end());
        if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) return name + " holds a block twice";
        for (size_t i = 0; i < s.block_table.size(); ++i) {
            const int32_t b = s.block_table[i];
            if (b < 0 || b >= blocks_.num_blocks()) return name + " holds an out-of-range block";
            ++holders[b];
            if (auto h = blocks_.HashOf(b)) {
                // A registered block is full and its content is exactly this sequence's tokens there.
                if (i >= s.block_hashes.size() || s.block_hashes[i] != *h || (i + 1) * bs > s.tokens.size()) {
                    return name + " shares cached block " + std::to_string(b) + " at index " + std::to_string(i) +
                           " without holding its tokens";
                }
            }
        }
    }
    if (num_running != running_.size() || num_waiting != waiting_.size()) {
        return "queues hold sequences the scheduler does not know";
    }
    if (slots > config_.max_num_seqs) {
        return "running sequences and reserved fork slots (" + std::to_string(slots) + ") exceed max_num_seqs";
    }
    for (int64_t b = 0; b < blocks_.num_blocks(); ++b) {
        if (holders[b] != blocks_.ref_count(static_cast<int32_t>(b))) {
            return "block " + std::to_string(b) + " has reference count " +
                   std::to_string(blocks_.ref_count(static_cast<int32_t>(b))) + " but " + std::to_string(holders[b]) +
                   " holders";
        }
    }
    return {};
}

}  // namespace uniattn
