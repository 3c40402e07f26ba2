#include "parallel/tensor_parallel.h"

#include <cstring>

namespace uniattn {

StatusOr<ModelConfig> ShardConfig(const ModelConfig& full, int size) {
    if (size < 1) return InvalidArgument("tensor_parallel_size must be >= 1");
    ModelConfig c = full;
    if (size == 1) return c;
    auto bad = [&](const std::string& what, int n) {
        return InvalidArgument("tensor_parallel_size " + std::to_string(size) + " does not divide " + what + " (" +
                               std::to_string(n) + ")");
    };
    if (full.num_heads % size != 0) return bad("num_attention_heads", full.num_heads);
    if (full.intermediate_size % size != 0) return bad("intermediate_size", full.intermediate_size);
    if (full.num_kv_heads % size != 0 && size % full.num_kv_heads != 0) {
        return InvalidArgument("tensor_parallel_size " + std::to_string(size) +
                               " neither divides nor is a multiple of " + "num_key_value_heads (" +
                               std::to_string(full.num_kv_heads) + ")");
    }
    if (full.num_reuse_layers() > 0 && full.hidden_size % size != 0) return bad("hidden_size", full.hidden_size);
    c.num_heads = full.num_heads / size;
    c.num_kv_heads = full.num_kv_heads % size == 0 ? full.num_kv_heads / size : 1;
    c.intermediate_size = full.intermediate_size / size;
    return c;
}

int FirstKvHead(const ModelConfig& full, int rank, int size) {
    if (full.num_kv_heads % size == 0) return rank * (full.num_kv_heads / size);
    const int n_rep = full.num_heads / full.num_kv_heads;  // query heads per KV head
    return rank * (full.num_heads / size) / n_rep;
}

namespace {

// Host fp32 rows [r0, r0 + n) of a host tensor.
void AppendRows(const Tensor& t, int64_t r0, int64_t n, std::vector<float>& out) {
    for (int64_t r = r0; r < r0 + n; ++r) {
        const float* row = t.f32() + r * t.ld;
        out.insert(out.end(), row, row + t.cols);
    }
}

// Host fp32 columns [c0, c0 + n) of every row of a host tensor.
std::vector<float> Columns(const Tensor& t, int64_t c0, int64_t n) {
    std::vector<float> out;
    out.reserve(static_cast<size_t>(t.rows * n));
    for (int64_t r = 0; r < t.rows; ++r) {
        const float* row = t.f32() + r * t.ld + c0;
        out.insert(out.end(), row, row + n);
    }
    return out;
}

}  // namespace

StatusOr<std::unique_ptr<Model>> ShardModel(const Model& full, int rank, int size, Backend* backend,
                                            bool with_lm_head) {
    const ModelConfig& f = full.config;
    UA_ASSIGN_OR_RETURN(ModelConfig c, ShardConfig(f, size));
    if (rank < 0 || rank >= size)
        return InvalidArgument("rank " + std::to_string(rank) + " of " + std::to_string(size));
    const ModelWeights& fw = full.weights;
    if (fw.embed.dtype != DType::kF32) return InvalidArgument("ShardModel needs the full model on the cpu backend");
    auto model = std::make_unique<Model>();
    model->dir = full.dir;
    model->config = c;
    ModelWeights& w = model->weights;
    const int64_t hd = f.head_dim, d = f.hidden_size;
    const int64_t fq = static_cast<int64_t>(f.num_heads) * hd, fkv = static_cast<int64_t>(f.num_kv_heads) * hd;
    const int64_t q = static_cast<int64_t>(c.num_heads) * hd, kvd = static_cast<int64_t>(c.num_kv_heads) * hd;
    const int64_t q0 = rank * q, kv0 = FirstKvHead(f, rank, size) * hd;
    const int64_t ff = c.intermediate_size, ff0 = rank * ff;

    // Uploads host fp32 values as a [rows, cols] tensor of `dtype` on the backend.
    auto upload = [&](const std::vector<float>& host, int64_t rows, int64_t cols, DType dtype) -> StatusOr<Tensor> {
        UA_CHECK_EQ(static_cast<int64_t>(host.size()), rows * cols);
        const size_t bytes = static_cast<size_t>(rows * cols) * DTypeBytes(dtype);
        UA_ASSIGN_OR_RETURN(std::unique_ptr<DeviceBuffer> buf, backend->Alloc(std::max<size_t>(bytes, 4)));
        std::vector<uint8_t> staged(bytes);
        ConvertDType(host.data(), DType::kF32, staged.data(), dtype, rows * cols);
        if (bytes > 0) backend->CopyToDevice(buf->data(), staged.data(), bytes);
        Tensor t = MakeTensor(buf->data(), dtype, rows, cols);
        w.bytes += static_cast<int64_t>(bytes);
        w.buffers.push_back(std::move(buf));
        return t;
    };
    const DType wt = backend->WeightDType();
    auto whole = [&](const Tensor& t, DType dtype) -> StatusOr<Tensor> {
        if (t.data == nullptr) return Tensor{};
        std::vector<float> v;
        AppendRows(t, 0, t.rows, v);
        return upload(v, t.rows, t.cols, dtype);
    };
    UA_ASSIGN_OR_RETURN(w.embed, whole(fw.embed, wt));
    UA_ASSIGN_OR_RETURN(w.final_norm, whole(fw.final_norm, DType::kF32));
    if (fw.lm_head.data == fw.embed.data) {
        w.lm_head = w.embed;
    } else if (with_lm_head) {
        UA_ASSIGN_OR_RETURN(w.lm_head, whole(fw.lm_head, wt));
    }
    w.layers.resize(f.num_layers);
    for (int l = 0; l < f.num_layers; ++l) {
        const LayerWeights& a = fw.layers[l];
        LayerWeights& b = w.layers[l];
        UA_ASSIGN_OR_RETURN(b.attn_norm, whole(a.attn_norm, DType::kF32));
        UA_ASSIGN_OR_RETURN(b.ffn_norm, whole(a.ffn_norm, DType::kF32));
        UA_ASSIGN_OR_RETURN(b.q_norm, whole(a.q_norm, DType::kF32));
        UA_ASSIGN_OR_RETURN(b.k_norm, whole(a.k_norm, DType::kF32));
        UA_ASSIGN_OR_RETURN(b.b_o, whole(a.b_o, DType::kF32));
        if (f.HasKeys(l)) {
            // [Wq; Wk; Wv] rows: this rank's query heads, then its KV heads' K and V rows.
            std::vector<float> rows;
            AppendRows(a.w_qkv, q0, q, rows);
            AppendRows(a.w_qkv, fq + kv0, kvd, rows);
            AppendRows(a.w_qkv, fq + fkv + kv0, kvd, rows);
            UA_ASSIGN_OR_RETURN(b.w_qkv, upload(rows, q + 2 * kvd, d, wt));
            if (a.b_qkv.data != nullptr) {
                std::vector<float> bias;
                const float* src = a.b_qkv.f32();
                bias.insert(bias.end(), src + q0, src + q0 + q);
                bias.insert(bias.end(), src + fq + kv0, src + fq + kv0 + kvd);
                bias.insert(bias.end(), src + fq + fkv + kv0, src + fq + fkv + kv0 + kvd);
                UA_ASSIGN_OR_RETURN(b.b_qkv, upload(bias, 1, q + 2 * kvd, DType::kF32));
            }
        } else {
            // [Wv; Wc] rows: this rank's KV heads' V rows, then its slice of the hidden size of Wc (q wide: a
            // UniAttn model has Hq·hd == d, so d / size == q).
            std::vector<float> rows;
            AppendRows(a.w_vc, kv0, kvd, rows);
            AppendRows(a.w_vc, fkv + rank * q, q, rows);
            UA_ASSIGN_OR_RETURN(b.w_vc, upload(rows, kvd + q, d, wt));
            if (a.b_v.data != nullptr) {
                const float* src = a.b_v.f32();
                UA_ASSIGN_OR_RETURN(b.b_v, upload(std::vector<float>(src + kv0, src + kv0 + kvd), 1, kvd, DType::kF32));
            }
        }
        UA_ASSIGN_OR_RETURN(b.w_o, upload(Columns(a.w_o, q0, q), d, q, wt));
        std::vector<float> gu;
        AppendRows(a.w_gate_up, ff0, ff, gu);
        AppendRows(a.w_gate_up, f.intermediate_size + ff0, ff, gu);
        UA_ASSIGN_OR_RETURN(b.w_gate_up, upload(gu, 2 * ff, d, wt));
        UA_ASSIGN_OR_RETURN(b.w_down, upload(Columns(a.w_down, ff0, ff), d, ff, wt));
    }
    // RoPE frequencies: the same table as the full model's.
    const std::vector<double> inv_freq = c.RopeInvFreq();
    UA_ASSIGN_OR_RETURN(std::unique_ptr<DeviceBuffer> rb,
                        backend->Alloc(std::max<size_t>(sizeof(double) * inv_freq.size(), sizeof(double))));
    backend->CopyToDevice(rb->data(), inv_freq.data(), sizeof(double) * inv_freq.size());
    w.rope_inv_freq = static_cast<const double*>(rb->data());
    w.buffers.push_back(std::move(rb));
    backend->Synchronize();
    return model;
}

StatusOr<std::unique_ptr<TensorParallelGroup>> TensorParallelGroup::Create(
    const Model& full, std::vector<std::unique_ptr<Backend>> backends, std::unique_ptr<CommunicatorGroup> comms) {
    const int n = static_cast<int>(backends.size());
    if (n < 1 || comms == nullptr || comms->size() != n)
        return InvalidArgument("one backend and communicator per rank");
    std::unique_ptr<TensorParallelGroup> g(new TensorParallelGroup());
    g->ranks_.resize(n);
    g->results_.resize(n);
    g->full_config_ = full.config;
    for (int r = 0; r < n; ++r) {
        Rank& rk = g->ranks_[r];
        rk.backend = std::move(backends[r]);
        rk.backend->BindThread();  // CUDA: allocations go to this rank's device
        UA_ASSIGN_OR_RETURN(rk.model, ShardModel(full, r, n, rk.backend.get(), /*with_lm_head=*/r == 0));
        rk.runner = std::make_unique<ModelRunner>(rk.model.get(), rk.backend.get());
        rk.runner->SetCommunicator(comms->rank(r));
        rk.runner->SetComputesLogits(r == 0);  // the engine reads rank 0's logits alone
    }
    g->comms_ = std::move(comms);
    g->ranks_[0].backend->BindThread();  // the calling (engine) thread runs rank 0
    for (int r = 1; r < n; ++r) g->threads_.emplace_back([gp = g.get(), r] { gp->Work(r); });
    return g;
}

TensorParallelGroup::~TensorParallelGroup() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stopping_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
}

Status TensorParallelGroup::CreateKv(int block_size, int64_t num_blocks, DType dtype, const KvScales* scales) {
    for (Rank& rk : ranks_) {
        // Per-rank scales: the KV heads this rank holds (scales of the full model, by head).
        KvScales local;
        const KvScales* use = nullptr;
        if (scales != nullptr) {
            const int r = static_cast<int>(&rk - ranks_.data());
            const ModelConfig& lc = rk.model->config;
            const int h0 = FirstKvHead(full_config_, r, size());
            local.k.resize(scales->k.size());
            local.v.resize(scales->v.size());
            for (size_t l = 0; l < scales->v.size(); ++l) {
                if (!scales->k[l].empty()) {
                    local.k[l].assign(scales->k[l].begin() + h0, scales->k[l].begin() + h0 + lc.num_kv_heads);
                }
                local.v[l].assign(scales->v[l].begin() + h0, scales->v[l].begin() + h0 + lc.num_kv_heads);
            }
            use = &local;
        }
        rk.backend->BindThread();
        UA_ASSIGN_OR_RETURN(rk.kv,
                            KvCache::Create(rk.backend.get(), rk.model->config, block_size, num_blocks, dtype, use));
    }
    ranks_[0].backend->BindThread();
    return Status::Ok();
}

void TensorParallelGroup::Work(int r) {
    ranks_[r].backend->BindThread();
    uint64_t seen = 0;
    for (;;) {
        const ForwardInput* in = nullptr;
        {
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [&] { return stopping_ || job_id_ != seen; });
            if (stopping_) return;
            seen = job_id_;
            in = job_;
        }
        Status s = ranks_[r].runner->Forward(*in, *ranks_[r].kv, nullptr);
        if (!s.ok()) comms_->Abort();
        {
            std::lock_guard<std::mutex> lock(mu_);
            results_[r] = std::move(s);
            if (--pending_ == 0) cv_.notify_all();
        }
    }
}

Status TensorParallelGroup::Forward(const ForwardInput& in, float* host_logits) {
    {
        std::lock_guard<std::mutex> lock(mu_);
        job_ = &in;
        ++job_id_;
        pending_ = size() - 1;
    }
    cv_.notify_all();
    ranks_[0].backend->BindThread();
    Status s0 = ranks_[0].runner->Forward(in, *ranks_[0].kv, host_logits);
    if (!s0.ok()) comms_->Abort();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return pending_ == 0; });
    job_ = nullptr;
    Status first = s0;
    for (int r = 1; r < size() && first.ok(); ++r) first = results_[r];
    // Every rank has returned: an aborted group is usable again for the next step (the engine fails this
    // step's requests and keeps serving).
    if (!first.ok()) UA_RETURN_IF_ERROR(comms_->Reset());
    return first;
}

void TensorParallelGroup::CopyBlocks(const std::vector<std::pair<int32_t, int32_t>>& copies) {
    for (Rank& rk : ranks_) {
        rk.backend->BindThread();
        rk.kv->CopyBlocks(rk.backend.get(), copies);
    }
    ranks_[0].backend->BindThread();
}

}  // namespace uniattn
