// One forward pass over a batch of sequences, against the backend interface. Written once for every
// backend; the UniAttn layer kinds are handled here (docs/uniattn.md §2, §4 method 2: the anchor hands its
// probabilities P to the reuse layers of its superblock).
#pragma once

#include <compare>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "backend/backend.h"
#include "kv/kv_cache.h"
#include "model/model.h"

namespace uniattn {

// Host-side description of one step. Sequence s contributes tokens [query_start[s], query_start[s+1])
// at consecutive positions ending at context_len[s] - 1; their K/V land at slot_mapping.
struct ForwardInput {
    std::vector<int32_t> tokens;        // [T]
    std::vector<int32_t> positions;     // [T]
    std::vector<int64_t> slot_mapping;  // [T]
    std::vector<int32_t> query_start;   // [S + 1]
    std::vector<int32_t> context_len;   // [S]
    std::vector<int32_t> block_tables;  // [S, max_blocks_per_seq], row-major
    int max_blocks_per_seq = 0;
    std::vector<int32_t> logits_rows;  // tokens whose next-token logits are wanted

    int num_seqs() const { return static_cast<int>(context_len.size()); }
    int num_tokens() const { return static_cast<int>(tokens.size()); }
    // Appends one sequence's chunk: `chunk` tokens starting at position `start`, cached through `blocks`.
    void AddSequence(const std::vector<int32_t>& chunk, int start, const std::vector<int32_t>& blocks, int block_size,
                     bool want_last_logits);
    // Pads block table rows to a common width; call after the last AddSequence.
    void Finish();

  private:
    std::vector<std::vector<int32_t>> pending_tables_;
};

// Observes each layer's attention block, for calibration (docs/uniattn.md §6, uniattn-convert fp8): `xn` is the
// normalised layer input x̃ and `h1` the post-attention residual x + Attn(x), both [num_tokens, hidden], and
// `attn` the attention output o_proj reads, [num_tokens, num_heads · head_dim], all in host memory. Return false
// to stop the pass after this layer (no logits are produced then).
class Communicator;

using LayerTap = std::function<bool(int layer, const float* xn, const float* h1, const float* attn, int num_tokens)>;

class ModelRunner {
  public:
    ModelRunner(const Model* model, Backend* backend) : model_(model), backend_(backend) {}

    // Installs (or clears, with nullptr) a tap; taps cost three device-to-host copies per layer.
    void SetLayerTap(LayerTap tap) { tap_ = std::move(tap); }
    // Tensor parallelism (parallel/tensor_parallel.h): this runner is rank comm->rank() of comm->size(), its model
    // one shard (ShardModel); o_proj and down_proj outputs are all-reduced through `comm` before they join the
    // residual. Every rank must run the same Forward calls. Null: the whole model on one backend.
    void SetCommunicator(Communicator* comm) { comm_ = comm; }
    // False: Forward stops after the last layer (no final norm, no lm_head, no logits), as the tensor-parallel
    // ranks other than 0 do: every rank's logits would be the same.
    void SetComputesLogits(bool computes) { computes_logits_ = computes; }
    // Decode-only steps replay recorded device graphs when the backend can record them (default on).
    void SetUseGraphs(bool use) { use_graphs_ = use; }

    // Runs the step and writes logits [logits_rows.size(), vocab] to host_logits (host memory); with
    // host_logits null they stay on the device for SampleLogits.
    Status Forward(const ForwardInput& in, KvCache& kv, float* host_logits);
    // Selects tokens from the last Forward's logits on the backend (Backend::SampleRows); rows name logits
    // rows by their index in that step's logits_rows. Only parameters and results cross to the host.
    void SampleLogits(const SampleRowParams* rows, int num_rows, const LogitEdit* edits, int num_edits,
                      SampleRowResult* results);
    // Allocates the step workspaces for up to `max_tokens` tokens, `max_logits` logits rows and contexts of
    // `max_context` tokens now, so that free device memory measured afterwards (KV pool sizing) leaves room
    // for them. Optional: Forward grows them on demand.
    Status ReserveWorkspace(int max_tokens, int max_logits, int max_context);

  private:
    // A recorded decode step is valid for one batch size, context bucket, table width and KV cache, as long
    // as no buffer it names is reallocated (generation_).
    struct GraphKey {
        int num_tokens, context_bucket, table_width, num_logits;
        uint64_t kv_id;
        auto operator<=>(const GraphKey&) const = default;
    };
    static constexpr int kGraphContextBucket = 256;
    static constexpr int kMaxGraphTokens = 256;
    static constexpr size_t kMaxGraphs = 64;

    Status Reserve(int num_tokens, int num_logits, int max_ctx, size_t meta_bytes);
    float* Scratch(size_t index) { return static_cast<float*>(scratch_[index]->data()); }

    const Model* model_;
    Backend* backend_;
    LayerTap tap_;
    Communicator* comm_ = nullptr;
    std::vector<float> tap_xn_, tap_h1_, tap_attn_;
    std::vector<std::unique_ptr<DeviceBuffer>> scratch_;
    std::unique_ptr<DeviceBuffer> meta_;
    std::unique_ptr<DeviceBuffer> logits_;
    int cap_tokens_ = 0, cap_logits_ = 0;
    int last_num_logits_ = 0;
    int64_t cap_probs_ = 0;
    size_t cap_meta_ = 0;
    bool use_graphs_ = true;
    bool computes_logits_ = true;
    uint64_t generation_ = 0, graphs_generation_ = 0;
    std::map<GraphKey, std::unique_ptr<DeviceGraph>> graphs_;
    std::set<GraphKey> seen_;
};

}  // namespace uniattn
