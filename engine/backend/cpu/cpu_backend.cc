// The CPU backend: fp32 everywhere, the oracle for every other backend. Clear before clever: the only
// tuning is BLAS for matrix products with several rows, an OpenMP-parallel dot-product loop for
// matrix-vector work, and OpenMP over (token, head) in attention. KV planes may also be fp8 e4m3 with
// per-head scales (KvPlane::scale): attention then dequantizes the blocks the step reads into fp32 copies
// and runs the fp32 code on those, so its result is bit for bit that of fp32 planes holding the
// dequantized values (a separate fp8 loop would be vectorised differently by the compiler and sum in
// another order).
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/backend.h"

#ifdef UNIATTN_HAVE_BLAS
#include <cblas.h>
extern "C" void openblas_set_num_threads(int num_threads);
#endif

namespace uniattn {
namespace {

class HostBuffer final : public DeviceBuffer {
  public:
    explicit HostBuffer(size_t bytes) : bytes_(bytes) {
        if (bytes >= kHugePage) {
            // Weights and KV planes: 2 MiB-aligned and marked for transparent huge pages, so first touch costs
            // one fault per 2 MiB instead of per 4 KiB (13 us a fault on some VMs: 0.3 GB/s) and reads miss
            // the TLB less. madvise is advice: without THP the buffer works as before.
            const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
            data_ = std::aligned_alloc(kHugePage, rounded);
            if (data_ != nullptr) ::madvise(data_, rounded, MADV_HUGEPAGE);
        } else {
            // 64-byte alignment for vector loads; aligned_alloc needs a multiple of the alignment.
            data_ = std::aligned_alloc(64, std::max<size_t>(64, (bytes + 63) / 64 * 64));
        }
    }
    ~HostBuffer() override { std::free(data_); }
    void* data() override { return data_; }
    size_t bytes() const override { return bytes_; }
    bool ok() const { return data_ != nullptr; }

  private:
    static constexpr size_t kHugePage = size_t{2} << 20;
    void* data_ = nullptr;
    size_t bytes_ = 0;
};

// Backend memory is host memory: a chunk is staged in its destination, and Submit has nothing to copy.
class InPlaceUploader final : public Uploader {
  public:
    explicit InPlaceUploader(size_t chunk_bytes) : chunk_bytes_(chunk_bytes) {}
    size_t chunk_bytes() const override { return chunk_bytes_; }
    UploadChunk Stage(void* dst, size_t bytes) override { return UploadChunk{dst, dst, bytes, -1}; }
    void Submit(const UploadChunk&) override {}
    void Finish() override {}

  private:
    size_t chunk_bytes_;
};

inline float Dot(const float* __restrict a, const float* __restrict b, int64_t n) {
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
    return s;
}

// Element offset of (slot, kv_head) in a plane; 64-bit throughout.
inline int64_t PlaneOffset(const KvPlane& p, int64_t slot, int kv_head) {
    return (slot * p.num_kv_heads + kv_head) * static_cast<int64_t>(p.head_dim);
}

// Every fp8 e4m3 code as float (Fp8E4M3ToFloat), built once.
const float* Fp8Table() {
    static const std::array<float, 256> table = [] {
        std::array<float, 256> t{};
        for (int b = 0; b < 256; ++b) t[b] = Fp8E4M3ToFloat(static_cast<uint8_t>(b));
        return t;
    }();
    return table.data();
}

class CpuBackend final : public Backend {
  public:
    CpuBackend(int num_threads, bool fp8_activations)
        : num_threads_(num_threads > 0 ? num_threads : omp_get_max_threads()), fp8_activations_(fp8_activations) {
#ifdef UNIATTN_HAVE_BLAS
        openblas_set_num_threads(num_threads_);
#endif
    }

    std::string Name() const override { return "cpu"; }
    DType WeightDType() const override { return DType::kF32; }
    bool SupportsKvDType(DType dtype) const override {
        switch (dtype) {
            case DType::kF32:
            case DType::kF8E4M3:
                return true;
            case DType::kF16:
            case DType::kBF16:
                return false;
        }
        return false;
    }

    StatusOr<std::unique_ptr<DeviceBuffer>> Alloc(size_t bytes) override {
        auto buf = std::make_unique<HostBuffer>(bytes);
        if (!buf->ok()) return ResourceExhausted("cannot allocate " + std::to_string(bytes) + " bytes of host memory");
        return std::unique_ptr<DeviceBuffer>(std::move(buf));
    }
    void CopyToDevice(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
    std::unique_ptr<Uploader> MakeUploader(size_t chunk_bytes, int) override {
        return std::make_unique<InPlaceUploader>(chunk_bytes);
    }
    void CopyToHost(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
    void Fill(void* dst, int value, size_t bytes) override { std::memset(dst, value, bytes); }
    void Synchronize() override {}

    void Embedding(const int32_t* tokens, int num_tokens, const Tensor& table, const Tensor& out) override {
        for (int t = 0; t < num_tokens; ++t) {
            std::memcpy(out.f32() + t * out.ld, table.f32() + static_cast<int64_t>(tokens[t]) * table.ld,
                        sizeof(float) * out.cols);
        }
    }

    void RmsNorm(const Tensor& x, const Tensor& w, float eps, const Tensor& out) override {
        const int64_t d = x.cols;
        for (int64_t t = 0; t < x.rows; ++t) {
            const float* xr = x.f32() + t * x.ld;
            float* o = out.f32() + t * out.ld;
            const float ms = Dot(xr, xr, d) / static_cast<float>(d);
            const float inv = 1.0f / std::sqrt(ms + eps);
            for (int64_t i = 0; i < d; ++i) o[i] = xr[i] * inv * w.f32()[i];
        }
    }

    void MatMul(const Tensor& x, const Tensor& w, const Tensor& y, bool accumulate) override {
        if (fp8_activations_ && w.fp8_rows && x.rows > 2 && x.cols % 16 == 0 && w.rows % 16 == 0) {
            // Per token, as the CUDA backend's FP8 GEMMs: s = amax / 448 (1 for a zero row), x -> e4m3(x / s) · s.
            // Those need both dimensions to be multiples of 16 (cuBLASLt's FP8 rule); other shapes keep fp32
            // activations there too (their weights widened).
            const int64_t T = x.rows, in = x.cols;
            fp8_x_.resize(static_cast<size_t>(T * in));
            for (int64_t t = 0; t < T; ++t) {
                const float* xr = x.f32() + t * x.ld;
                float amax = 0.f;
                for (int64_t i = 0; i < in; ++i) amax = std::max(amax, std::fabs(xr[i]));
                const float s = amax > 0.f ? amax / kFp8E4M3Max : 1.f;
                float* q = fp8_x_.data() + t * in;
                for (int64_t i = 0; i < in; ++i) q[i] = Fp8E4M3ToFloat(FloatToFp8E4M3(xr[i] / s)) * s;
            }
            Tensor xq = MakeTensor(fp8_x_.data(), DType::kF32, T, in);
            MatMulF32(xq, w, y, accumulate);
            return;
        }
        MatMulF32(x, w, y, accumulate);
    }

    void MatMulF32(const Tensor& x, const Tensor& w, const Tensor& y, bool accumulate) {
        const int64_t T = x.rows, in = x.cols, out = w.rows;
#ifdef UNIATTN_HAVE_BLAS
        if (T >= kBlasMinRows) {
            // OpenMP OpenBLAS sizes its team from the calling thread's omp_get_max_threads(), a per-thread
            // setting: the openblas_set_num_threads in the constructor ran on the thread that built the
            // engine, not on the engine thread that calls this. Without this, engine.num_threads=1 still
            // ran every GEMM on all cores.
            if (omp_get_max_threads() != num_threads_) omp_set_num_threads(num_threads_);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(T), static_cast<int>(out),
                        static_cast<int>(in), 1.0f, x.f32(), static_cast<int>(x.ld), w.f32(), static_cast<int>(w.ld),
                        accumulate ? 1.0f : 0.0f, y.f32(), static_cast<int>(y.ld));
            return;
        }
#endif
        // Few rows: every weight row is read once and dotted with each x row.
#pragma omp parallel for schedule(static) num_threads(num_threads_)
        for (int64_t o = 0; o < out; ++o) {
            const float* wr = w.f32() + o * w.ld;
            for (int64_t t = 0; t < T; ++t) {
                const float s = Dot(x.f32() + t * x.ld, wr, in);
                float& dst = y.f32()[t * y.ld + o];
                dst = accumulate ? dst + s : s;
            }
        }
    }

    void Rope(const Tensor& x, int num_heads, int head_dim, const int32_t* positions, const double* inv_freq) override {
        const int half = head_dim / 2;
        for (int64_t t = 0; t < x.rows; ++t) {
            for (int i = 0; i < half; ++i) {
                // Angles in double then rounded, as transformers computes cos/sin in fp32 of an fp32 product;
                // the difference is far below the fp32 oracle's tolerance.
                const double ang = positions[t] * inv_freq[i];
                const float c = static_cast<float>(std::cos(ang)), s = static_cast<float>(std::sin(ang));
                for (int h = 0; h < num_heads; ++h) {
                    float* v = x.f32() + t * x.ld + static_cast<int64_t>(h) * head_dim;
                    const float a = v[i], b = v[i + half];
                    v[i] = a * c - b * s;
                    v[i + half] = b * c + a * s;
                }
            }
        }
    }

    void AddBias(const Tensor& x, const Tensor& bias) override {
        UA_CHECK_EQ(bias.cols, x.cols);
        const float* b = bias.f32();
        for (int64_t t = 0; t < x.rows; ++t) {
            float* r = x.f32() + t * x.ld;
            for (int64_t i = 0; i < x.cols; ++i) r[i] += b[i];
        }
    }

    void HeadRmsNorm(const Tensor& x, int num_heads, int head_dim, const Tensor& w, float eps) override {
        UA_CHECK_EQ(w.cols, head_dim);
        for (int64_t t = 0; t < x.rows; ++t) {
            for (int h = 0; h < num_heads; ++h) {
                float* v = x.f32() + t * x.ld + static_cast<int64_t>(h) * head_dim;
                const float ms = Dot(v, v, head_dim) / static_cast<float>(head_dim);
                const float inv = 1.0f / std::sqrt(ms + eps);
                for (int i = 0; i < head_dim; ++i) v[i] = v[i] * inv * w.f32()[i];
            }
        }
    }

    void WriteKv(const Tensor& src, const KvPlane& plane, const int64_t* slot_mapping) override {
        CheckPlane(plane);
        const int64_t width = static_cast<int64_t>(plane.num_kv_heads) * plane.head_dim;
        if (plane.dtype == DType::kF8E4M3) {
            for (int64_t t = 0; t < src.rows; ++t) {
                uint8_t* dst = static_cast<uint8_t*>(plane.base) + slot_mapping[t] * width;
                const float* row = src.f32() + t * src.ld;
                for (int64_t e = 0; e < width; ++e) dst[e] = FloatToFp8E4M3(row[e] / plane.scale[e / plane.head_dim]);
            }
            return;
        }
        for (int64_t t = 0; t < src.rows; ++t) {
            std::memcpy(static_cast<float*>(plane.base) + slot_mapping[t] * width, src.f32() + t * src.ld,
                        sizeof(float) * width);
        }
    }

    void Attention(const Tensor& q, const KvPlane& k, const KvPlane& v, const AttentionBatch& b, int num_heads,
                   const Tensor& out, float* probs) override {
        CheckPlane(k);
        CheckPlane(v);
        if (k.dtype == DType::kF32 && v.dtype == DType::kF32) {
            AttentionF32(q, k, v, b, num_heads, out, probs);
        } else {
            const AttentionBatch copies = CopyBlocksRead(b, k.num_blocks, k.block_size);
            AttentionF32(q, Fp32Blocks(k, k_copy_), Fp32Blocks(v, v_copy_), copies, num_heads, out, probs);
        }
    }

    void ReuseAttention(const float* probs, const KvPlane& v, const AttentionBatch& b, int num_heads,
                        const Tensor& out) override {
        CheckPlane(v);
        if (v.dtype == DType::kF32) {
            ReuseAttentionF32(probs, v, b, num_heads, out);
        } else {
            const AttentionBatch copies = CopyBlocksRead(b, v.num_blocks, v.block_size);
            ReuseAttentionF32(probs, Fp32Blocks(v, v_copy_), copies, num_heads, out);
        }
    }

    void SiluMul(const Tensor& gate_up, const Tensor& out) override {
        const int64_t ff = out.cols;
        for (int64_t t = 0; t < out.rows; ++t) {
            const float* g = gate_up.f32() + t * gate_up.ld;
            const float* u = g + ff;
            float* o = out.f32() + t * out.ld;
            for (int64_t i = 0; i < ff; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
        }
    }

    void Add(const Tensor& x, const Tensor& y) override {
        for (int64_t t = 0; t < x.rows; ++t) {
            float* a = x.f32() + t * x.ld;
            const float* c = y.f32() + t * y.ld;
            for (int64_t i = 0; i < x.cols; ++i) a[i] += c[i];
        }
    }

    void GatherRows(const Tensor& x, const int32_t* rows, int num_rows, const Tensor& out) override {
        for (int i = 0; i < num_rows; ++i) {
            std::memcpy(out.f32() + i * out.ld, x.f32() + static_cast<int64_t>(rows[i]) * x.ld, sizeof(float) * x.cols);
        }
    }

  private:
    static constexpr int64_t kBlasMinRows = 4;

    void AttentionF32(const Tensor& q, const KvPlane& k, const KvPlane& v, const AttentionBatch& b, int num_heads,
                      const Tensor& out, float* probs) {
        const int hd = k.head_dim;
        const int n_rep = num_heads / k.num_kv_heads;
        const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
        const int64_t work = static_cast<int64_t>(b.num_tokens) * num_heads;
        std::vector<int> seq_of(b.num_tokens);
        for (int s = 0; s < b.num_seqs; ++s) {
            for (int t = b.query_start[s]; t < b.query_start[s + 1]; ++t) seq_of[t] = s;
        }
#pragma omp parallel num_threads(num_threads_)
        {
            std::vector<float> local(probs ? 0 : b.max_context_len);
#pragma omp for schedule(dynamic, 4)
            for (int64_t w = 0; w < work; ++w) {
                const int t = static_cast<int>(w / num_heads), h = static_cast<int>(w % num_heads);
                const int s = seq_of[t];
                const int kvh = h / n_rep;
                const int n_ctx = b.positions[t] + 1;  // causal: positions 0..pos
                const int first = WindowStart(b, b.positions[t]);
                float* p = probs ? probs + (static_cast<int64_t>(t) * num_heads + h) * b.max_context_len : local.data();
                const float* qv = q.f32() + t * q.ld + static_cast<int64_t>(h) * hd;
                const int32_t* table = b.block_tables + static_cast<int64_t>(s) * b.max_blocks_per_seq;
                float mx = -INFINITY;
                std::fill(p, p + first, 0.f);
                for (int j = first; j < n_ctx; ++j) {
                    const int64_t slot =
                        static_cast<int64_t>(table[j / k.block_size]) * k.block_size + j % k.block_size;
                    p[j] = Dot(qv, static_cast<const float*>(k.base) + PlaneOffset(k, slot, kvh), hd) * scale;
                    mx = std::max(mx, p[j]);
                }
                float sum = 0.f;
                for (int j = first; j < n_ctx; ++j) {
                    p[j] = std::exp(p[j] - mx);
                    sum += p[j];
                }
                const float inv = 1.0f / sum;
                for (int j = first; j < n_ctx; ++j) p[j] *= inv;
                WeightedV(p, first, n_ctx, table, v, kvh, out.f32() + t * out.ld + static_cast<int64_t>(h) * hd);
            }
        }
    }

    void ReuseAttentionF32(const float* probs, const KvPlane& v, const AttentionBatch& b, int num_heads,
                           const Tensor& out) {
        const int n_rep = num_heads / v.num_kv_heads;
        const int64_t work = static_cast<int64_t>(b.num_tokens) * num_heads;
        std::vector<int> seq_of(b.num_tokens);
        for (int s = 0; s < b.num_seqs; ++s) {
            for (int t = b.query_start[s]; t < b.query_start[s + 1]; ++t) seq_of[t] = s;
        }
#pragma omp parallel for schedule(dynamic, 4) num_threads(num_threads_)
        for (int64_t w = 0; w < work; ++w) {
            const int t = static_cast<int>(w / num_heads), h = static_cast<int>(w % num_heads);
            const int32_t* table = b.block_tables + static_cast<int64_t>(seq_of[t]) * b.max_blocks_per_seq;
            const float* p = probs + (static_cast<int64_t>(t) * num_heads + h) * b.max_context_len;
            WeightedV(p, WindowStart(b, b.positions[t]), b.positions[t] + 1, table, v, h / n_rep,
                      out.f32() + t * out.ld + static_cast<int64_t>(h) * v.head_dim);
        }
    }

    // The first position a token at `pos` attends to: pos - sliding_window + 1 under a window, else 0.
    static int WindowStart(const AttentionBatch& b, int pos) {
        return b.sliding_window > 0 ? std::max(0, pos - b.sliding_window + 1) : 0;
    }

    // out[0:hd] = Σ_{first <= j < n_ctx} p[j] · v[slot(j), kvh]
    static void WeightedV(const float* p, int first, int n_ctx, const int32_t* table, const KvPlane& v, int kvh,
                          float* out) {
        const int hd = v.head_dim;
        std::fill(out, out + hd, 0.f);
        for (int j = first; j < n_ctx; ++j) {
            const int64_t slot = static_cast<int64_t>(table[j / v.block_size]) * v.block_size + j % v.block_size;
            const float* vr = static_cast<const float*>(v.base) + PlaneOffset(v, slot, kvh);
            const float pj = p[j];
#pragma omp simd
            for (int i = 0; i < hd; ++i) out[i] += pj * vr[i];
        }
    }

    // A plane this backend reads and writes: fp32, or fp8 e4m3 with its scales.
    void CheckPlane(const KvPlane& p) const {
        UA_CHECK(SupportsKvDType(p.dtype));
        UA_CHECK(p.dtype != DType::kF8E4M3 || p.scale != nullptr);
    }

    // Numbers the blocks batch `b` reads (positions up to each token's own) 0, 1, ... in copy_source_ and
    // returns `b` with block tables into those copies (copy_tables_). Host memory throughout: this is the CPU
    // backend. num_blocks: the planes' pool size.
    AttentionBatch CopyBlocksRead(const AttentionBatch& b, int64_t num_blocks, int block_size) {
        block_copy_.resize(static_cast<size_t>(num_blocks), -1);
        copy_source_.clear();
        copy_tables_.assign(static_cast<size_t>(b.num_seqs) * b.max_blocks_per_seq, 0);
        for (int s = 0; s < b.num_seqs; ++s) {
            int n_ctx = 0;
            for (int t = b.query_start[s]; t < b.query_start[s + 1]; ++t) n_ctx = std::max(n_ctx, b.positions[t] + 1);
            const size_t row = static_cast<size_t>(s) * b.max_blocks_per_seq;
            for (int i = 0; i < (n_ctx + block_size - 1) / block_size; ++i) {
                int32_t& copy = block_copy_[b.block_tables[row + i]];
                if (copy < 0) {
                    copy = static_cast<int32_t>(copy_source_.size());
                    copy_source_.push_back(b.block_tables[row + i]);
                }
                copy_tables_[row + i] = copy;
            }
        }
        for (int32_t block : copy_source_) block_copy_[block] = -1;
        AttentionBatch copies = b;
        copies.block_tables = copy_tables_.data();
        return copies;
    }

    // An fp32 plane in `buffer` holding blocks copy_source_ of `p`, dequantized when fp8 (value ·
    // scale[head], as the fp8 format defines).
    KvPlane Fp32Blocks(const KvPlane& p, std::unique_ptr<HostBuffer>& buffer) {
        const int64_t block_elems = static_cast<int64_t>(p.block_size) * p.num_kv_heads * p.head_dim;
        const auto num_copies = static_cast<int64_t>(copy_source_.size());
        const size_t bytes = sizeof(float) * static_cast<size_t>(std::max<int64_t>(1, num_copies * block_elems));
        if (!buffer || buffer->bytes() < bytes) {
            buffer = std::make_unique<HostBuffer>(bytes);
            UA_CHECK(buffer->ok());
        }
        float* dst = static_cast<float*>(buffer->data());
        const float* table = Fp8Table();
#pragma omp parallel for schedule(static) num_threads(num_threads_)
        for (int64_t c = 0; c < num_copies; ++c) {
            const int64_t from = static_cast<int64_t>(copy_source_[c]) * block_elems;
            float* d = dst + c * block_elems;
            if (p.dtype == DType::kF32) {
                std::memcpy(d, static_cast<const float*>(p.base) + from, sizeof(float) * block_elems);
                continue;
            }
            const uint8_t* src = static_cast<const uint8_t*>(p.base) + from;
            for (int64_t e = 0; e < block_elems; ++e) d[e] = table[src[e]] * p.scale[e / p.head_dim % p.num_kv_heads];
        }
        return KvPlane{dst, DType::kF32, std::max<int64_t>(1, num_copies), p.block_size, p.num_kv_heads, p.head_dim};
    }

    int num_threads_;
    bool fp8_activations_;
    std::vector<float> fp8_x_;  // activations rounded to e4m3 (fp8_activations_)
    // fp8 attention's scratch (CopyBlocksRead, Fp32Blocks), kept between calls: block_copy_[block] is -1
    // between calls.
    std::vector<int32_t> block_copy_, copy_source_, copy_tables_;
    std::unique_ptr<HostBuffer> k_copy_, v_copy_;
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend(int num_threads, bool fp8_activations) {
    return std::make_unique<CpuBackend>(num_threads, fp8_activations);
}

}  // namespace uniattn
