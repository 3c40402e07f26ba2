#include "model/forward.h"

#include <algorithm>
#include <cstring>

#include "parallel/communicator.h"

namespace uniattn {

void ForwardInput::AddSequence(const std::vector<int32_t>& chunk, int start, const std::vector<int32_t>& blocks,
                               int block_size, bool want_last_logits) {
    if (query_start.empty()) query_start.push_back(0);
    for (size_t i = 0; i < chunk.size(); ++i) {
        const int pos = start + static_cast<int>(i);
        tokens.push_back(chunk[i]);
        positions.push_back(pos);
        slot_mapping.push_back(static_cast<int64_t>(blocks[pos / block_size]) * block_size + pos % block_size);
    }
    query_start.push_back(static_cast<int32_t>(tokens.size()));
    context_len.push_back(start + static_cast<int>(chunk.size()));
    pending_tables_.push_back(blocks);
    if (want_last_logits && !chunk.empty()) logits_rows.push_back(static_cast<int32_t>(tokens.size()) - 1);
}

void ForwardInput::Finish() {
    max_blocks_per_seq = 1;
    for (const auto& t : pending_tables_) max_blocks_per_seq = std::max<int>(max_blocks_per_seq, t.size());
    block_tables.assign(static_cast<size_t>(max_blocks_per_seq) * pending_tables_.size(), 0);
    for (size_t s = 0; s < pending_tables_.size(); ++s) {
        std::copy(pending_tables_[s].begin(), pending_tables_[s].end(), block_tables.begin() + s * max_blocks_per_seq);
    }
    pending_tables_.clear();
}

namespace {
enum Scratch : size_t { kX, kXn, kQkv, kAttn, kMlp, kGateUp, kLogitIn, kProbs, kPart, kNumScratch };
}

Status ModelRunner::Reserve(int num_tokens, int num_logits, int max_ctx, size_t meta_bytes) {
    const ModelConfig& c = model_->config;
    const int64_t q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;
    const int64_t kv_dim = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
    const int64_t probs = c.num_reuse_layers() > 0 ? static_cast<int64_t>(num_tokens) * c.num_heads * max_ctx : 1;
    if (num_tokens > cap_tokens_ || num_logits > cap_logits_ || probs > cap_probs_ || scratch_.empty()) {
        cap_tokens_ = std::max(num_tokens, cap_tokens_);
        cap_logits_ = std::max(num_logits, cap_logits_);
        cap_probs_ = std::max(probs, cap_probs_);
        const int64_t T = cap_tokens_;
        const int64_t widths[kNumScratch] = {
            T * c.hidden_size,
            T * c.hidden_size,
            T * std::max(q_dim + 2 * kv_dim, kv_dim + q_dim),
            T * q_dim,
            T * c.intermediate_size,
            T * 2 * static_cast<int64_t>(c.intermediate_size),
            static_cast<int64_t>(cap_logits_) * c.hidden_size,
            cap_probs_,
            comm_ != nullptr ? T * c.hidden_size : 1,  // tensor parallel: this rank's partial sums, all-reduced
        };
        scratch_.clear();
        ++generation_;
        for (int64_t n : widths) {
            UA_ASSIGN_OR_RETURN(std::unique_ptr<DeviceBuffer> b,
                                backend_->Alloc(sizeof(float) * std::max<int64_t>(n, 1)));
            scratch_.push_back(std::move(b));
        }
    }
    if (meta_bytes > cap_meta_) {
        UA_ASSIGN_OR_RETURN(meta_, backend_->Alloc(meta_bytes));
        cap_meta_ = meta_bytes;
        ++generation_;
    }
    return Status::Ok();
}

Status ModelRunner::Forward(const ForwardInput& in, KvCache& kv, float* host_logits) {
    const ModelConfig& c = model_->config;
    const ModelWeights& w = model_->weights;
    const int T = in.num_tokens();
    const int S = in.num_seqs();
    if (T == 0) return Status::Ok();
    UA_CHECK_EQ(static_cast<int>(in.positions.size()), T);
    UA_CHECK_EQ(static_cast<int>(in.slot_mapping.size()), T);
    UA_CHECK_EQ(static_cast<int>(in.query_start.size()), S + 1);
    int max_ctx = 0, max_query = 0;
    for (int32_t n : in.context_len) max_ctx = std::max(max_ctx, n);
    for (int s = 0; s < S; ++s) max_query = std::max(max_query, in.query_start[s + 1] - in.query_start[s]);
    const int num_logits = computes_logits_ ? static_cast<int>(in.logits_rows.size()) : 0;
    // Decode steps want every row in order: no gather then.
    bool all_rows = num_logits == T;
    for (int i = 0; all_rows && i < num_logits; ++i) all_rows = in.logits_rows[i] == i;

    // Decode-only steps run as recorded device graphs where the backend can record: the first step of a
    // shape runs eagerly (sizing every workspace), the second is recorded, later ones replay. A graph
    // freezes host-side sizes, so the context is rounded up to a bucket (it sets grid shapes and the row
    // stride of the probability buffer) and block tables are padded to that bucket.
    const bool graph_mode = use_graphs_ && !tap_ && comm_ == nullptr && T == S && all_rows && T <= kMaxGraphTokens &&
                            backend_->CanCapture();
    int shape_ctx = max_ctx;
    int table_width = in.max_blocks_per_seq;
    const std::vector<int32_t>* tables = &in.block_tables;
    std::vector<int32_t> padded;
    if (graph_mode) {
        shape_ctx = (max_ctx + kGraphContextBucket - 1) / kGraphContextBucket * kGraphContextBucket;
        table_width = std::max(table_width, (shape_ctx + kv.block_size() - 1) / kv.block_size());
        padded.assign(static_cast<size_t>(S) * table_width, 0);
        for (int s = 0; s < S; ++s) {
            std::copy(in.block_tables.begin() + static_cast<size_t>(s) * in.max_blocks_per_seq,
                      in.block_tables.begin() + static_cast<size_t>(s + 1) * in.max_blocks_per_seq,
                      padded.begin() + static_cast<size_t>(s) * table_width);
        }
        tables = &padded;
    }

    // Step metadata travels to the device in one buffer.
    const size_t meta_bytes = sizeof(int32_t) * (2 * T + S + 1 + S + tables->size()) + sizeof(int64_t) * T + 64;
    UA_RETURN_IF_ERROR(Reserve(T, num_logits, shape_ctx, meta_bytes));
    const int64_t logits_elems = static_cast<int64_t>(num_logits) * c.vocab_size;
    if (num_logits > 0 && (!logits_ || logits_->bytes() < sizeof(float) * logits_elems)) {
        UA_ASSIGN_OR_RETURN(logits_, backend_->Alloc(sizeof(float) * logits_elems));
        ++generation_;
    }
    if (generation_ != graphs_generation_) {  // buffers a graph names were reallocated
        graphs_.clear();
        seen_.clear();
        graphs_generation_ = generation_;
    }
    std::vector<char> host_meta(meta_bytes);
    size_t off = 0;
    auto pack = [&](const void* src, size_t bytes) {
        off = (off + 7) / 8 * 8;
        std::memcpy(host_meta.data() + off, src, bytes);
        const size_t at = off;
        off += bytes;
        return at;
    };
    const size_t o_slots = pack(in.slot_mapping.data(), sizeof(int64_t) * T);
    const size_t o_tokens = pack(in.tokens.data(), sizeof(int32_t) * T);
    const size_t o_pos = pack(in.positions.data(), sizeof(int32_t) * T);
    const size_t o_qs = pack(in.query_start.data(), sizeof(int32_t) * (S + 1));
    const size_t o_ctx = pack(in.context_len.data(), sizeof(int32_t) * S);
    const size_t o_bt = pack(tables->data(), sizeof(int32_t) * tables->size());
    backend_->CopyToDevice(meta_->data(), host_meta.data(), off);
    char* dev = static_cast<char*>(meta_->data());

    AttentionBatch batch;
    batch.num_seqs = S;
    batch.num_tokens = T;
    batch.query_start = reinterpret_cast<const int32_t*>(dev + o_qs);
    batch.context_len = reinterpret_cast<const int32_t*>(dev + o_ctx);
    batch.block_tables = reinterpret_cast<const int32_t*>(dev + o_bt);
    batch.max_blocks_per_seq = table_width;
    batch.positions = reinterpret_cast<const int32_t*>(dev + o_pos);
    batch.slot_mapping = reinterpret_cast<const int64_t*>(dev + o_slots);
    batch.max_context_len = shape_ctx;
    batch.max_query_len = max_query;
    batch.sliding_window = c.sliding_window;

    const int64_t d = c.hidden_size, hd = c.head_dim;
    const int64_t q_dim = c.num_heads * hd, kv_dim = c.num_kv_heads * hd, ff = c.intermediate_size;
    const Tensor x = MakeTensor(Scratch(kX), DType::kF32, T, d);
    const Tensor xn = MakeTensor(Scratch(kXn), DType::kF32, T, d);
    const Tensor attn = MakeTensor(Scratch(kAttn), DType::kF32, T, q_dim);
    const Tensor mlp = MakeTensor(Scratch(kMlp), DType::kF32, T, ff);
    const Tensor gate_up = MakeTensor(Scratch(kGateUp), DType::kF32, T, 2 * ff);
    float* probs = Scratch(kProbs);
    const auto eps = static_cast<float>(c.rms_norm_eps);
    // Tensor parallel (SetCommunicator): o_proj and down_proj are row-parallel, so each rank's product is a
    // partial sum: it goes to `part`, is summed over the ranks, then joins the residual. The compensation of a
    // reuse layer (its rows of Wc, this rank's slice of the hidden size) joins the same sum.
    const Tensor part = MakeTensor(comm_ ? Scratch(kPart) : nullptr, DType::kF32, T, d);
    Status comm_status;
    auto reduce_into_x = [&]() -> bool {
        if (Status s = comm_->AllReduceSum(part.f32(), static_cast<int64_t>(T) * d); !s.ok()) {
            comm_status = s;
            return false;
        }
        backend_->Add(x, part);
        return true;
    };

    // The device work of the step, from the embedding to the logits; false when a tap stopped it.
    auto run = [&]() -> bool {
        backend_->Embedding(reinterpret_cast<const int32_t*>(dev + o_tokens), T, w.embed, x);
        for (int l = 0; l < c.num_layers; ++l) {
            const LayerWeights& lw = w.layers[l];
            // x̃ = RmsNorm(x) feeds only the first projection (and the tap, which needs it written out).
            auto norm_matmul = [&](const Tensor& norm_w, const Tensor& wt, const Tensor& y) {
                if (tap_) {
                    backend_->RmsNorm(x, norm_w, eps, xn);
                    backend_->MatMul(xn, wt, y, false);
                } else {
                    backend_->NormMatMul(x, norm_w, eps, wt, y, xn, false);
                }
            };
            switch (c.layer_kinds[l]) {
                case LayerKind::kNormal:
                case LayerKind::kAnchor: {
                    const Tensor qkv = MakeTensor(Scratch(kQkv), DType::kF32, T, q_dim + 2 * kv_dim);
                    norm_matmul(lw.attn_norm, lw.w_qkv, qkv);
                    if (c.qkv_bias) backend_->AddBias(qkv, lw.b_qkv);
                    const Tensor q = qkv.Cols(0, q_dim), k = qkv.Cols(q_dim, kv_dim),
                                 v = qkv.Cols(q_dim + kv_dim, kv_dim);
                    if (c.qk_norm) {  // Qwen3: per-head RMSNorm of q and k before RoPE
                        backend_->HeadRmsNorm(q, c.num_heads, c.head_dim, lw.q_norm, eps);
                        backend_->HeadRmsNorm(k, c.num_kv_heads, c.head_dim, lw.k_norm, eps);
                    }
                    backend_->RopeWriteKv(q, k, v, kv.K(l), kv.V(l), c.num_heads, batch.positions, batch.slot_mapping,
                                          w.rope_inv_freq);
                    // An anchor keeps P only when reuse layers follow it (G = 1 makes anchors without any).
                    const bool keep_p = l + 1 < c.num_layers && c.anchor_of[l + 1] == l;
                    backend_->Attention(q, kv.K(l), kv.V(l), batch, c.num_heads, attn, keep_p ? probs : nullptr);
                    if (comm_) {
                        backend_->MatMul(attn, lw.w_o, part, false);
                        if (!reduce_into_x()) return false;
                    } else {
                        backend_->MatMul(attn, lw.w_o, x, true);
                    }
                    if (c.o_bias) backend_->AddBias(x, lw.b_o);
                    break;
                }
                case LayerKind::kReuse: {
                    // [v | c] = x̃ · [Wv; Wc]^T (+ [bv | 0]); this layer's V is cached before P_A · V so the current
                    // token's own value is included; h1 = x + Wo·a (+ bo) + c.
                    const Tensor vc = MakeTensor(Scratch(kQkv), DType::kF32, T, kv_dim + q_dim);
                    norm_matmul(lw.attn_norm, lw.w_vc, vc);
                    if (c.qkv_bias) backend_->AddBias(vc.Cols(0, kv_dim), lw.b_v);
                    backend_->WriteKv(vc.Cols(0, kv_dim), kv.V(l), batch.slot_mapping);
                    backend_->ReuseAttention(probs, kv.V(l), batch, c.num_heads, attn);
                    if (comm_) {
                        // This rank's q_dim columns of the compensation land at its slice of the hidden size.
                        backend_->MatMul(attn, lw.w_o, part, false);
                        backend_->Add(part.Cols(comm_->rank() * q_dim, q_dim), vc.Cols(kv_dim, q_dim));
                        if (!reduce_into_x()) return false;
                    } else {
                        backend_->Add(x, vc.Cols(kv_dim, q_dim));
                        backend_->MatMul(attn, lw.w_o, x, true);
                    }
                    if (c.o_bias) backend_->AddBias(x, lw.b_o);
                    break;
                }
            }
            if (tap_) {
                tap_xn_.resize(static_cast<size_t>(T) * d);
                tap_h1_.resize(static_cast<size_t>(T) * d);
                backend_->CopyToHost(tap_xn_.data(), xn.data, sizeof(float) * T * d);
                backend_->CopyToHost(tap_h1_.data(), x.data, sizeof(float) * T * d);
                tap_attn_.resize(static_cast<size_t>(T) * q_dim);
                backend_->CopyToHost(tap_attn_.data(), attn.data, sizeof(float) * T * q_dim);
                if (!tap_(l, tap_xn_.data(), tap_h1_.data(), tap_attn_.data(), T)) return false;
            }
            backend_->NormMatMul(x, lw.ffn_norm, eps, lw.w_gate_up, gate_up, xn, false);
            if (comm_) {
                backend_->SiluMulMatMul(gate_up, lw.w_down, part, mlp, false);
                if (!reduce_into_x()) return false;
            } else {
                backend_->SiluMulMatMul(gate_up, lw.w_down, x, mlp, true);
            }
        }
        if (num_logits == 0) return true;
        UA_CHECK(w.lm_head.data != nullptr);  // a tensor-parallel rank > 0 holds none
        const Tensor sel = all_rows ? x : MakeTensor(Scratch(kLogitIn), DType::kF32, num_logits, d);
        const Tensor sel_norm = MakeTensor(Scratch(kXn), DType::kF32, num_logits, d);
        if (!all_rows) backend_->GatherRows(x, in.logits_rows.data(), num_logits, sel);
        backend_->RmsNorm(sel, w.final_norm, eps, sel_norm);
        backend_->MatMul(sel_norm, w.lm_head, MakeTensor(logits_->data(), DType::kF32, num_logits, c.vocab_size),
                         false);
        return true;
    };

    if (graph_mode) {
        const GraphKey key{T, shape_ctx, table_width, num_logits, kv.id()};
        auto it = graphs_.find(key);
        if (it == graphs_.end() && seen_.count(key) > 0) {
            if (graphs_.size() >= kMaxGraphs) graphs_.clear();
            UA_CHECK(backend_->BeginCapture());
            run();
            it = graphs_.emplace(key, backend_->EndCapture()).first;
        }
        if (it != graphs_.end()) {
            backend_->Replay(*it->second);
        } else {
            seen_.insert(key);
            run();
        }
    } else if (!run()) {
        last_num_logits_ = 0;
        return comm_status;  // Ok when a tap stopped the pass
    }
    last_num_logits_ = num_logits;
    if (num_logits == 0 || host_logits == nullptr) return Status::Ok();
    backend_->CopyToHost(host_logits, logits_->data(), sizeof(float) * logits_elems);
    return Status::Ok();
}

void ModelRunner::SampleLogits(const SampleRowParams* rows, int num_rows, const LogitEdit* edits, int num_edits,
                               SampleRowResult* results) {
    if (num_rows == 0) return;
    UA_CHECK(logits_ != nullptr && last_num_logits_ > 0);
    const Tensor logits = MakeTensor(logits_->data(), DType::kF32, last_num_logits_, model_->config.vocab_size);
    backend_->SampleRows(logits, rows, num_rows, edits, num_edits, results);
}

Status ModelRunner::ReserveWorkspace(int max_tokens, int max_logits, int max_context) {
    const int64_t block_rows = static_cast<int64_t>(max_tokens) * (max_context / 16 + 2);  // tables, generously
    const size_t meta_bytes =
        sizeof(int32_t) * (4 * static_cast<size_t>(max_tokens) + 2 + block_rows) + sizeof(int64_t) * max_tokens + 64;
    UA_RETURN_IF_ERROR(Reserve(max_tokens, max_logits, max_context, meta_bytes));
    const size_t logits_bytes = sizeof(float) * static_cast<size_t>(max_logits) * model_->config.vocab_size;
    if (!logits_ || logits_->bytes() < logits_bytes) {
        UA_ASSIGN_OR_RETURN(logits_, backend_->Alloc(logits_bytes));
        ++generation_;
    }
    return Status::Ok();
}

}  // namespace uniattn
