#include "backend/backend.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <vector>

#include "sampling/row_select.h"

namespace uniattn {

Tensor MakeTensor(void* data, DType dtype, int64_t rows, int64_t cols) { return Tensor{data, dtype, rows, cols, cols}; }

Tensor Tensor::Cols(int64_t col, int64_t n) const {
    Tensor t = *this;
    t.data = static_cast<char*>(data) + col * DTypeBytes(dtype);
    t.cols = n;
    return t;
}

Tensor Tensor::Rows(int64_t row, int64_t n) const {
    Tensor t = *this;
    t.data = static_cast<char*>(data) + row * ld * DTypeBytes(dtype);
    if (scale != nullptr) t.scale = scale + row;
    t.rows = n;
    return t;
}

void Backend::CopyOnDevice(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }

namespace {

// Backend::MakeUploader's default: one ordinary host buffer per producer thread; Submit copies with
// CopyToDevice (serialised: backends are driven by one thread at a time) and frees the buffer at once, as
// CopyToDevice returns once the source may be reused.
class CopyingUploader final : public Uploader {
  public:
    CopyingUploader(Backend* backend, size_t chunk_bytes, int num_buffers)
        : backend_(backend), chunk_bytes_(chunk_bytes), buffers_(static_cast<size_t>(std::max(num_buffers, 1))) {
        for (size_t i = 0; i < buffers_.size(); ++i) free_.push_back(static_cast<int>(i));
    }
    size_t chunk_bytes() const override { return chunk_bytes_; }
    UploadChunk Stage(void* dst, size_t bytes) override {
        UA_CHECK(bytes <= chunk_bytes_);
        std::unique_lock<std::mutex> lock(mu_);
        free_cv_.wait(lock, [&] { return !free_.empty(); });
        const int slot = free_.back();
        free_.pop_back();
        std::vector<char>& buf = buffers_[static_cast<size_t>(slot)];
        lock.unlock();
        if (buf.size() < chunk_bytes_) buf.resize(chunk_bytes_);
        return UploadChunk{buf.data(), dst, bytes, slot};
    }
    void Submit(const UploadChunk& chunk) override {
        std::lock_guard<std::mutex> lock(mu_);
        backend_->CopyToDevice(chunk.dst, chunk.host, chunk.bytes);
        free_.push_back(chunk.slot);
        free_cv_.notify_one();
    }
    void Finish() override {}

  private:
    Backend* backend_;
    size_t chunk_bytes_;
    std::vector<std::vector<char>> buffers_;
    std::mutex mu_;
    std::condition_variable free_cv_;
    std::vector<int> free_;  // guarded by mu_
};

}  // namespace

std::unique_ptr<Uploader> Backend::MakeUploader(size_t chunk_bytes, int num_threads) {
    return std::make_unique<CopyingUploader>(this, chunk_bytes, num_threads);
}

namespace {
// SplitMix64 of (seed, index): the same stream the CUDA backend's FillUniform kernel computes.
inline uint64_t Mix(uint64_t seed, uint64_t index) {
    uint64_t z = seed + (index + 1) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
}  // namespace

void Backend::FillUniform(void* dst, DType dtype, int64_t n, float lo, float hi, uint64_t seed) {
    constexpr int64_t kChunk = 1 << 20;
    std::vector<float> f(static_cast<size_t>(std::min(n, kChunk)));
    std::vector<uint16_t> h(dtype == DType::kF32 ? 0 : f.size());
    const int elem = DTypeBytes(dtype);
    for (int64_t at = 0; at < n; at += kChunk) {
        const int64_t m = std::min(kChunk, n - at);
        for (int64_t i = 0; i < m; ++i) {
            const float u = static_cast<float>(Mix(seed, static_cast<uint64_t>(at + i)) >> 40) * 0x1.0p-24f;
            f[i] = lo + u * (hi - lo);
        }
        void* out = static_cast<char*>(dst) + at * elem;
        switch (dtype) {
            case DType::kF32:
                CopyToDevice(out, f.data(), sizeof(float) * m);
                break;
            case DType::kF16:
            case DType::kBF16:
                for (int64_t i = 0; i < m; ++i) h[i] = dtype == DType::kF16 ? FloatToHalf(f[i]) : FloatToBF16(f[i]);
                CopyToDevice(out, h.data(), sizeof(uint16_t) * m);
                break;
            case DType::kF8E4M3:  // raw e4m3 values (unscaled)
                ConvertDType(f.data(), DType::kF32, h.data(), DType::kF8E4M3, m);
                CopyToDevice(out, h.data(), static_cast<size_t>(m));
                break;
        }
    }
}

void Backend::RopeWriteKv(const Tensor& q, const Tensor& k, const Tensor& v, const KvPlane& k_plane,
                          const KvPlane& v_plane, int num_heads, const int32_t* positions, const int64_t* slot_mapping,
                          const double* inv_freq) {
    Rope(q, num_heads, k_plane.head_dim, positions, inv_freq);
    Rope(k, k_plane.num_kv_heads, k_plane.head_dim, positions, inv_freq);
    WriteKv(k, k_plane, slot_mapping);
    WriteKv(v, v_plane, slot_mapping);
}

void Backend::NormMatMul(const Tensor& x, const Tensor& norm_w, float eps, const Tensor& w, const Tensor& y,
                         const Tensor& xn, bool accumulate) {
    RmsNorm(x, norm_w, eps, xn);
    MatMul(xn, w, y, accumulate);
}

void Backend::SiluMulMatMul(const Tensor& gate_up, const Tensor& w, const Tensor& y, const Tensor& mlp,
                            bool accumulate) {
    SiluMul(gate_up, mlp);
    MatMul(mlp, w, y, accumulate);
}

#ifdef UNIATTN_HAVE_CUDA
// backend/cuda/cuda_backend.cc: the CUDA backend on `device` with `dtype` weights and KV, or why not.
StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const CudaOptions& cuda, DType dtype);
#endif

bool HasBackend(const std::string& name) {
    if (name == "cpu") return true;
#ifdef UNIATTN_HAVE_CUDA
    if (name == "cuda") return true;
#endif
    return false;
}

StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& name, int num_threads, DType device_dtype,
                                               const CudaOptions& cuda) {
    if (name == "cpu") return MakeCpuBackend(num_threads);
#ifdef UNIATTN_HAVE_CUDA
    if (name == "cuda") return MakeCudaBackend(cuda, device_dtype);
#else
    (void)device_dtype;
    (void)cuda;
#endif
    return InvalidArgument("backend \"" + name + "\" is not available in this build (have: cpu" +
#ifdef UNIATTN_HAVE_CUDA
                           std::string(", cuda") +
#else
                           std::string() +
#endif
                           ")");
}

void Backend::SampleRows(const Tensor& logits, const SampleRowParams* host_rows, int num_rows,
                         const LogitEdit* host_edits, int num_edits, SampleRowResult* host_results) {
    UA_CHECK(logits.dtype == DType::kF32);
    const int vocab = static_cast<int>(logits.cols);
    for (int r = 0; r < num_rows; ++r) {
        const SampleRowParams& p = host_rows[r];
        UA_CHECK(p.logits_row >= 0 && p.logits_row < logits.rows);
        UA_CHECK(p.edit_start >= 0 && p.num_edits >= 0 && p.edit_start + p.num_edits <= num_edits);
    }
    // Copies first (a backend is driven by one thread), then the rows in parallel on the CPU's threads.
    // The buffer only grows, so steady-state steps touch no new pages.
    const size_t need = static_cast<size_t>(num_rows) * vocab;
    if (sample_rows_.size() < need) sample_rows_.resize(need);
    float* rows = sample_rows_.data();
    for (int r = 0; r < num_rows; ++r) {
        CopyToHost(rows + static_cast<size_t>(r) * vocab, logits.Rows(host_rows[r].logits_row, 1).data,
                   sizeof(float) * vocab);
    }
#pragma omp parallel for schedule(dynamic) if (num_rows > 1)
    for (int r = 0; r < num_rows; ++r) {
        const SampleRowParams& p = host_rows[r];
        float* row = rows + static_cast<size_t>(r) * vocab;
        ApplyLogitEdits(row, vocab, host_edits + p.edit_start, p.num_edits, p.repetition_penalty);
        thread_local SelectScratch scratch;  // the pool's threads persist: candidates keep their capacity
        host_results[r] = SelectToken(row, vocab, p, &scratch);
    }
}

}  // namespace uniattn
