// The one op-level interface every backend implements. The layer loop (model/forward.cc) is written
// once against it; only the registry (backend.cc) knows which backends were compiled in.
//
// Conventions: tensors are row-major 2-D views [rows, cols] with a row stride `ld` in elements.
// Activations are fp32 on every backend; weights (WeightDType) and the KV cache (KvDType) are in the
// backend's chosen dtypes, and ops read whatever dtype a Tensor or KvPlane says. All pointers are
// device pointers of the backend (host pointers on the CPU backend) unless named host_*.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sampling/sample_row.h"
#include "uniattn/cuda_options.h"
#include "uniattn/dtype.h"
#include "uniattn/status.h"

namespace uniattn {

struct Tensor {
    void* data = nullptr;
    DType dtype = DType::kF32;
    int64_t rows = 0;
    int64_t cols = 0;
    int64_t ld = 0;  // row stride in elements (>= cols)
    // kF8E4M3 weights (Backend::HoldsFp8Weights): row r stands for e4m3(data[r, :]) · scale[r]; [rows] fp32 in
    // backend memory. Null otherwise.
    const float* scale = nullptr;
    // A linear weight whose rows hold fp8 values with a scale per row (kF8E4M3 above, or on a backend that keeps
    // 16/32-bit values, the values those bytes stand for): the CPU backend's fp8 activation emulation keys on it.
    bool fp8_rows = false;

    float* f32() const { return static_cast<float*>(data); }
    // Columns [col, col + n) of every row, same stride.
    Tensor Cols(int64_t col, int64_t n) const;
    // Rows [row, row + n) (with their scales).
    Tensor Rows(int64_t row, int64_t n) const;
};

Tensor MakeTensor(void* data, DType dtype, int64_t rows, int64_t cols);

// One plane of the paged KV cache (K or V of one layer):
//   base  // [num_blocks, block_size, num_kv_heads, head_dim], in `dtype` (Backend::SupportsKvDType)
struct KvPlane {
    void* base = nullptr;
    DType dtype = DType::kF32;
    int64_t num_blocks = 0;
    int block_size = 0;
    int num_kv_heads = 0;
    int head_dim = 0;
    // kF8E4M3 planes only: [num_kv_heads] fp32 per-head scales in backend memory; a value x of head h is stored
    // as FloatToFp8E4M3(x / scale[h]) (saturating at ±448) and read as Fp8E4M3ToFloat(b) * scale[h]. Ignored for
    // other dtypes.
    const float* scale = nullptr;
};

// Step metadata shared by every attention call of one forward pass. Tokens of a sequence are
// contiguous; sequence s owns tokens [query_start[s], query_start[s + 1]).
struct AttentionBatch {
    int num_seqs = 0;
    int num_tokens = 0;
    const int32_t* query_start = nullptr;   // [num_seqs + 1]
    const int32_t* context_len = nullptr;   // [num_seqs]: tokens in the cache once this step's are written
    const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
    int max_blocks_per_seq = 0;
    const int32_t* positions = nullptr;     // [num_tokens]
    const int64_t* slot_mapping = nullptr;  // [num_tokens]: block_id * block_size + offset
    int max_context_len = 0;                // max over context_len: the row length of probability buffers
    int max_query_len = 0;                  // host-side max over query lengths; 0: unknown (backends assume the worst)
    // > 0: a token at position p attends only to positions j with p - sliding_window < j <= p (Mistral's
    // sliding window); 0: the whole causal prefix. Anchors' probability rows are 0 outside the window.
    int sliding_window = 0;
};

// Owned device memory.
class DeviceBuffer {
  public:
    virtual ~DeviceBuffer() = default;
    virtual void* data() = 0;
    virtual size_t bytes() const = 0;
};

// One piece of an upload (Backend::MakeUploader): `bytes` at host memory `host`, bound for backend memory `dst`.
struct UploadChunk {
    void* host = nullptr;
    void* dst = nullptr;
    size_t bytes = 0;
    int slot = -1;  // the uploader's staging buffer; -1: none
};

// Host-to-backend uploads of many chunks that several host threads prepare at once (checkpoint loading): a
// thread takes staging memory for one chunk's destination (Stage), fills it, and hands it back (Submit); the
// backend copies submitted chunks while threads fill others. Stage and Submit may be called from any number
// of threads at once; Finish from one thread once they are done. While an uploader has chunks in flight the
// backend must run nothing else (the uploader enqueues on the backend's stream from those threads).
class Uploader {
  public:
    virtual ~Uploader() = default;
    // The most bytes one chunk may have.
    virtual size_t chunk_bytes() const = 0;
    // Host memory for `bytes` (<= chunk_bytes()) that Submit copies to `dst`; its contents are unspecified.
    // Blocks while every staging buffer is in flight.
    virtual UploadChunk Stage(void* dst, size_t bytes) = 0;
    // Enqueues the copy of a filled chunk from Stage; its host memory must not be touched afterwards.
    virtual void Submit(const UploadChunk& chunk) = 0;
    // Returns when every submitted chunk is in backend memory. The destructor waits too.
    virtual void Finish() = 0;
};

// A recorded sequence of ops a backend can replay (CUDA graphs); see Backend::BeginCapture.
class DeviceGraph {
  public:
    virtual ~DeviceGraph() = default;
};

class Backend {
  public:
    virtual ~Backend() = default;
    virtual std::string Name() const = 0;
    // The device in words, for benchmark reports ("cuda: NVIDIA H100 ..."); the name by default.
    virtual std::string Description() const { return Name(); }
    // Free device memory in bytes, for sizing the KV pool; 0 when the backend cannot tell (host memory).
    virtual size_t FreeDeviceBytes() const { return 0; }
    // The dtype weights are stored in on this backend (norm weights stay fp32 on every backend).
    virtual DType WeightDType() const = 0;
    // Whether MatMul (and the fused NormMatMul / SiluMulMatMul) take kF8E4M3 weights with per-row scales
    // (Tensor::scale): then LoadWeights stores fp8 linear weights as e4m3 bytes (1 byte per weight); otherwise
    // as the values they stand for in WeightDType().
    virtual bool HoldsFp8Weights() const { return false; }
    // Makes the calling thread ready to run this backend's ops (CUDA: its device is the thread's current device);
    // tensor-parallel rank threads call it once before their first op. Default: nothing.
    virtual void BindThread() {}
    // The stream this backend's ops are enqueued on (CUDA: a cudaStream_t), for collectives that must run in
    // order with them (NCCL); null where ops run synchronously (CPU).
    virtual void* NativeStream() { return nullptr; }
    // The dtype of the KV cache planes KvCache allocates on this backend by default.
    virtual DType KvDType() const { return DType::kF32; }
    // Whether WriteKv, Attention and ReuseAttention accept KV planes of `dtype` (KvCache::Create refuses the
    // others). K and V planes may differ in dtype. The default: KvDType() only.
    virtual bool SupportsKvDType(DType dtype) const { return dtype == KvDType(); }

    virtual StatusOr<std::unique_ptr<DeviceBuffer>> Alloc(size_t bytes) = 0;
    virtual void CopyToDevice(void* dst, const void* host_src, size_t bytes) = 0;
    virtual void CopyToHost(void* host_dst, const void* src, size_t bytes) = 0;
    virtual void Fill(void* dst, int value, size_t bytes) = 0;
    virtual void Synchronize() = 0;
    // Staged uploads (see Uploader) of chunks of up to chunk_bytes, for up to num_threads producer threads.
    // The default stages in ordinary host memory and submits with CopyToDevice, one at a time; host-memory
    // backends hand out the destination itself (no copy); CUDA stages in pinned memory and copies
    // asynchronously. The uploader must not outlive the backend.
    virtual std::unique_ptr<Uploader> MakeUploader(size_t chunk_bytes, int num_threads);
    // dst = src, both backend memory. The default is memcpy (host-memory backends).
    virtual void CopyOnDevice(void* dst, const void* src, size_t bytes);
    // n values of `dtype`, uniform in [lo, hi), a pure function of (seed, index): for benchmarks with
    // random weights of real shapes. The default generates on the host and copies.
    virtual void FillUniform(void* dst, DType dtype, int64_t n, float lo, float hi, uint64_t seed);

    // out[t, :] = table[tokens[t], :]                     table [vocab, d], out [T, d]
    virtual void Embedding(const int32_t* tokens, int num_tokens, const Tensor& table, const Tensor& out) = 0;
    // out[t] = x[t] / rms(x[t]) * w                       x, out [T, d]; w [d]
    virtual void RmsNorm(const Tensor& x, const Tensor& w, float eps, const Tensor& out) = 0;
    // y = x · w^T (+ y when accumulate)                   x [T, in], w [out, in], y [T, out]
    virtual void MatMul(const Tensor& x, const Tensor& w, const Tensor& y, bool accumulate) = 0;
    // Rotates x in place, Hugging Face half-split convention: pairs (i, i + head_dim/2), angle
    // positions[t] * inv_freq[i] (in double, cos/sin rounded to float).
    //   x [T, num_heads * head_dim]; inv_freq [head_dim / 2] fp64, backend memory (the model's frequencies
    //   with its rope_scaling applied, computed once at load: ModelConfig::RopeInvFreq)
    virtual void Rope(const Tensor& x, int num_heads, int head_dim, const int32_t* positions,
                      const double* inv_freq) = 0;
    // Writes src rows into the plane at slot_mapping[t].  src [T, num_kv_heads * head_dim]
    virtual void WriteKv(const Tensor& src, const KvPlane& plane, const int64_t* slot_mapping) = 0;
    // The attention prologue of a normal/anchor layer, fused where a backend can: Rope(q), Rope(k),
    // WriteKv(k, k_plane), WriteKv(v, v_plane). q is rotated in place; k's contents afterwards are
    // unspecified (rotated or not). The default runs the four ops in that order.
    //   q [T, Hq * hd], k and v [T, Hkv * hd]
    virtual void RopeWriteKv(const Tensor& q, const Tensor& k, const Tensor& v, const KvPlane& k_plane,
                             const KvPlane& v_plane, int num_heads, const int32_t* positions,
                             const int64_t* slot_mapping, const double* inv_freq);
    // x[t, :] += bias[0, :]                                 x [T, n] fp32; bias [1, n] fp32
    virtual void AddBias(const Tensor& x, const Tensor& bias) = 0;
    // Qwen3's q_norm / k_norm: RMSNorm over each head_dim slice of every row, in place, scaled by w.
    //   x [T, num_heads * head_dim] fp32 (any row stride ld); w [1, head_dim] fp32
    virtual void HeadRmsNorm(const Tensor& x, int num_heads, int head_dim, const Tensor& w, float eps) = 0;
    // Causal attention of each token over its sequence's cache, positions <= its own (and, with
    // batch.sliding_window > 0, > pos - sliding_window).
    //   q [T, Hq * hd], out [T, Hq * hd]
    //   probs (optional, anchors): [T, Hq, batch.max_context_len] fp32, row t·Hq+h holds P for j <= pos
    //   (0 for j <= pos - sliding_window under a window)
    virtual void Attention(const Tensor& q, const KvPlane& k, const KvPlane& v, const AttentionBatch& batch,
                           int num_heads, const Tensor& out, float* probs) = 0;
    // UniAttn reuse layer: out[t, h] = Σ_j probs[t, h, j] · v[j, h / n_rep]   (docs/uniattn.md §2, §4 method 2)
    // over j <= pos, and j > pos - batch.sliding_window under a window (entries outside are not read).
    virtual void ReuseAttention(const float* probs, const KvPlane& v, const AttentionBatch& batch, int num_heads,
                                const Tensor& out) = 0;
    // out[t, i] = silu(gate_up[t, i]) * gate_up[t, ff + i]     gate_up [T, 2·ff], out [T, ff]
    virtual void SiluMul(const Tensor& gate_up, const Tensor& out) = 0;
    // Fusions a backend may implement in one pass (the defaults run the two ops):
    // y = RmsNorm(x, norm_w, eps) · w^T (+ y); xn receives the normalised rows unless fused (then its
    // contents are unspecified).       x, xn [T, in]; norm_w [1, in] fp32; w [out, in]; y [T, out]
    virtual void NormMatMul(const Tensor& x, const Tensor& norm_w, float eps, const Tensor& w, const Tensor& y,
                            const Tensor& xn, bool accumulate);
    // y = SiluMul(gate_up) · w^T (+ y); mlp [T, ff] is scratch, contents unspecified afterwards.
    virtual void SiluMulMatMul(const Tensor& gate_up, const Tensor& w, const Tensor& y, const Tensor& mlp,
                               bool accumulate);
    // x += y                                               x, y [T, d]
    virtual void Add(const Tensor& x, const Tensor& y) = 0;
    // out[i, :] = x[rows[i], :]                            rows are host indices
    virtual void GatherRows(const Tensor& x, const int32_t* host_rows, int num_rows, const Tensor& out) = 0;

    // Picks one token per row of `logits` [rows, vocab] (fp32, backend memory) by the rule of
    // sampling/row_select.h: host_rows [num_rows] and host_edits [num_edits] are host memory, and so is
    // host_results [num_rows], filled when the call returns (it waits for the device). Only parameters,
    // edits and results cross between host and device. The default copies each named row to the host and
    // runs the reference there (the CPU backend's op).
    virtual void SampleRows(const Tensor& logits, const SampleRowParams* host_rows, int num_rows,
                            const LogitEdit* host_edits, int num_edits, SampleRowResult* host_results);

    // Recording: between BeginCapture (true when the backend can record) and EndCapture, ops are recorded
    // into a graph instead of run; Replay runs the graph again with whatever the buffers it names hold
    // then. While recording, no op may copy to or from host memory, and buffers must not be allocated or
    // freed. Host-side arguments (sizes, grid shapes) are frozen into the graph. The default cannot record.
    virtual bool CanCapture() const { return false; }
    virtual bool BeginCapture() { return false; }
    virtual std::unique_ptr<DeviceGraph> EndCapture() { return nullptr; }
    virtual void Replay(DeviceGraph& graph) { (void)graph; }

  private:
    // The default SampleRows' host copy of the rows, kept between steps: a fresh [rows, vocab] buffer per step
    // (33 MB at 256 rows of a 32000 vocab) cost a page fault per 4 KiB, more than the sampling itself.
    std::vector<float> sample_rows_;
};

// fp8_activations: MatMul of 3+ rows by an fp8_rows weight (both dimensions multiples of 16) first rounds each
// activation row to e4m3 with the scale amax/448 (the values the CUDA backend's FP8 tensor-core GEMMs multiply, bit for
// bit), so quality and the CUDA oracle can include per-token activation quantization; off, activations stay fp32.
std::unique_ptr<Backend> MakeCpuBackend(int num_threads, bool fp8_activations = false);
// Which backends this build has: "cpu" always, "cuda" when compiled in.
bool HasBackend(const std::string& name);
// device_dtype: the weight and KV dtype of a device backend (CUDA: kF16, kBF16 or kF32); the CPU backend
// computes in float32 whatever is asked (callers refuse other dtypes for it: engine.cc).
// `cuda`: the CUDA backend's device and tuning (ignored by the CPU backend).
StatusOr<std::unique_ptr<Backend>> MakeBackend(const std::string& name, int num_threads,
                                               DType device_dtype = DType::kF16, const CudaOptions& cuda = {});

}  // namespace uniattn
