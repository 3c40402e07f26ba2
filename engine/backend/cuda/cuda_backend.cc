// The CUDA backend (see cuda_backend.h): owns the device, one stream, one cuBLAS handle and grow-only
// workspaces; every op enqueues on the stream and returns. CopyToHost and Synchronize wait.
#include "backend/cuda/cuda_backend.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"

namespace uniattn {
namespace {

// RAII owners of the CUDA handles.
class CudaStream {
  public:
    CudaStream() { UA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking)); }
    ~CudaStream() { cudaStreamDestroy(stream_); }
    CudaStream(const CudaStream&) = delete;
    CudaStream& operator=(const CudaStream&) = delete;
    cudaStream_t get() const { return stream_; }

  private:
    cudaStream_t stream_ = nullptr;
};

class CublasHandle {
  public:
    explicit CublasHandle(cudaStream_t stream) {
        UA_CUBLAS_CHECK(cublasCreate(&handle_));
        UA_CUBLAS_CHECK(cublasSetStream(handle_, stream));
    }
    ~CublasHandle() { cublasDestroy(handle_); }
    CublasHandle(const CublasHandle&) = delete;
    CublasHandle& operator=(const CublasHandle&) = delete;
    cublasHandle_t get() const { return handle_; }

  private:
    cublasHandle_t handle_ = nullptr;
};

class CublasLtHandle {
  public:
    CublasLtHandle() { UA_CUBLAS_CHECK(cublasLtCreate(&handle_)); }
    ~CublasLtHandle() { cublasLtDestroy(handle_); }
    CublasLtHandle(const CublasLtHandle&) = delete;
    CublasLtHandle& operator=(const CublasLtHandle&) = delete;
    cublasLtHandle_t get() const { return handle_; }

  private:
    cublasLtHandle_t handle_ = nullptr;
};

// One FP8 GEMM shape's cuBLASLt descriptors and chosen algorithm (ok == false: the library has none for it).
struct Fp8GemmPlan {
    bool ok = false;
    bool outer = false;  // the GEMM applies the per-channel and per-token scales (CUBLASLT_MATMUL_DESC_*_SCALE_MODE)
    int splits = 1;      // K split in this many parts: a batched GEMM of fp32 partial products (never outer)
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
    size_t workspace_bytes = 0;
    Fp8GemmPlan() = default;
    Fp8GemmPlan(const Fp8GemmPlan&) = delete;
    Fp8GemmPlan& operator=(const Fp8GemmPlan&) = delete;
    ~Fp8GemmPlan() { Reset(); }
    void Reset() {
        if (d != nullptr) cublasLtMatrixLayoutDestroy(d);
        if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
        if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
        if (op != nullptr) cublasLtMatmulDescDestroy(op);
        op = nullptr;
        a = b = d = nullptr;
    }
};

class CudaBuffer final : public DeviceBuffer {
  public:
    CudaBuffer(void* data, size_t bytes) : data_(data), bytes_(bytes) {}
    ~CudaBuffer() override {
        if (data_ != nullptr) cudaFree(data_);
    }
    CudaBuffer(const CudaBuffer&) = delete;
    CudaBuffer& operator=(const CudaBuffer&) = delete;
    void* data() override { return data_; }
    size_t bytes() const override { return bytes_; }

  private:
    void* data_;
    size_t bytes_;
};

class CudaGraph final : public DeviceGraph {
  public:
    explicit CudaGraph(cudaGraphExec_t exec) : exec_(exec) {}
    ~CudaGraph() override { cudaGraphExecDestroy(exec_); }
    CudaGraph(const CudaGraph&) = delete;
    CudaGraph& operator=(const CudaGraph&) = delete;
    cudaGraphExec_t exec() const { return exec_; }

  private:
    cudaGraphExec_t exec_;
};

// Backend::MakeUploader on CUDA: `num_slots` pinned staging buffers of chunk_bytes each (one cudaHostAlloc),
// so the copies run at DMA speed and asynchronously. A slot's copy is followed by an event on the backend's
// stream; Submit puts the slot at the back of the free queue and Stage takes the front one, waiting for its
// event first, so a buffer is refilled only once its previous copy has finished. Producer threads are not
// the thread that made the backend, hence the cudaSetDevice before each runtime call they make.
class PinnedUploader final : public Uploader {
  public:
    PinnedUploader(int device, cudaStream_t stream, char* pinned, size_t chunk_bytes, int num_slots)
        : device_(device), stream_(stream), pinned_(pinned), chunk_bytes_(chunk_bytes) {
        slots_.resize(static_cast<size_t>(num_slots));
        for (int i = 0; i < num_slots; ++i) {
            UA_CUDA_CHECK(cudaEventCreateWithFlags(&slots_[i].done, cudaEventDisableTiming));
            free_.push_back(i);
        }
    }
    ~PinnedUploader() override {
        Finish();
        for (Slot& s : slots_) cudaEventDestroy(s.done);
        cudaFreeHost(pinned_);
    }
    PinnedUploader(const PinnedUploader&) = delete;
    PinnedUploader& operator=(const PinnedUploader&) = delete;

    size_t chunk_bytes() const override { return chunk_bytes_; }

    UploadChunk Stage(void* dst, size_t bytes) override {
        UA_CHECK(bytes <= chunk_bytes_);
        std::unique_lock<std::mutex> lock(mu_);
        free_cv_.wait(lock, [&] { return !free_.empty(); });
        const int slot = free_.front();
        free_.pop_front();
        const bool in_flight = slots_[slot].in_flight;
        lock.unlock();
        if (in_flight) {
            UA_CUDA_CHECK(cudaSetDevice(device_));
            UA_CUDA_CHECK(cudaEventSynchronize(slots_[slot].done));
        }
        return UploadChunk{pinned_ + static_cast<size_t>(slot) * chunk_bytes_, dst, bytes, slot};
    }

    void Submit(const UploadChunk& chunk) override {
        std::lock_guard<std::mutex> lock(mu_);
        Slot& s = slots_[chunk.slot];
        if (chunk.bytes > 0) {
            UA_CUDA_CHECK(cudaSetDevice(device_));
            UA_CUDA_CHECK(cudaMemcpyAsync(chunk.dst, chunk.host, chunk.bytes, cudaMemcpyHostToDevice, stream_));
            UA_CUDA_CHECK(cudaEventRecord(s.done, stream_));
            s.in_flight = true;
        }
        free_.push_back(chunk.slot);
        free_cv_.notify_one();
    }

    void Finish() override {
        UA_CUDA_CHECK(cudaSetDevice(device_));
        UA_CUDA_CHECK(cudaStreamSynchronize(stream_));
    }

  private:
    struct Slot {
        cudaEvent_t done = nullptr;
        bool in_flight = false;  // guarded by mu_: a copy was enqueued (done may still be pending)
    };
    int device_;
    cudaStream_t stream_;
    char* pinned_;  // [num_slots, chunk_bytes], owned
    size_t chunk_bytes_;
    std::vector<Slot> slots_;
    std::mutex mu_;
    std::condition_variable free_cv_;
    std::deque<int> free_;  // guarded by mu_; front: the slot submitted longest ago
};

cudaDataType_t CudaType(DType dtype) {
    switch (dtype) {
        case DType::kF32:
            return CUDA_R_32F;
        case DType::kF16:
            return CUDA_R_16F;
        case DType::kBF16:
            return CUDA_R_16BF;
        case DType::kF8E4M3:
            return CUDA_R_8F_E4M3;
    }
    return CUDA_R_32F;
}

class CudaBackend final : public Backend {
  public:
    CudaBackend(const CudaBackendOptions& options, const cudaDeviceProp& props)
        : options_(options), num_sms_(props.multiProcessorCount), cublas_(stream_.get()) {
        description_ = std::string("cuda: ") + props.name + ", " + std::to_string(props.multiProcessorCount) +
                       " SMs, " + std::to_string(props.totalGlobalMem >> 20) + " MiB, compute capability " +
                       std::to_string(props.major) + "." + std::to_string(props.minor);
    }

    ~CudaBackend() override {
        cudaStreamSynchronize(stream_.get());
        cudaFree(cublas_workspace_);
        for (void* p : workspace_) {
            if (p != nullptr) cudaFree(p);
        }
        for (void* p : retired_) cudaFree(p);
    }

    std::string Name() const override { return "cuda"; }
    std::string Description() const override { return description_; }
    size_t FreeDeviceBytes() const override {
        size_t free_bytes = 0, total = 0;
        UA_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total));
        return free_bytes;
    }
    DType WeightDType() const override { return options_.weight_dtype; }
    // e4m3 weights with per-row scales: GEMVs read the bytes (1 byte per weight), larger GEMMs run on FP8 tensor
    // cores (activations quantized per token) or, with fp8_tensor_cores off, widen them to 16 bits.
    bool HoldsFp8Weights() const override { return true; }
    void BindThread() override { UA_CUDA_CHECK(cudaSetDevice(options_.device)); }
    void* NativeStream() override { return stream_.get(); }
    DType KvDType() const override { return options_.kv_dtype; }
    // The default dtype, and fp8 e4m3 with per-head scales (CUDA-core attention kernels; KvPlane::scale).
    bool SupportsKvDType(DType dtype) const override { return dtype == options_.kv_dtype || dtype == DType::kF8E4M3; }

    StatusOr<std::unique_ptr<DeviceBuffer>> Alloc(size_t bytes) override {
        void* p = nullptr;
        const cudaError_t err = cudaMalloc(&p, std::max<size_t>(bytes, 1));
        if (err != cudaSuccess) {
            cudaGetLastError();  // clear the sticky-free allocation error
            return ResourceExhausted("cannot allocate " + std::to_string(bytes) +
                                     " bytes of device memory: " + cudaGetErrorString(err));
        }
        return std::unique_ptr<DeviceBuffer>(std::make_unique<CudaBuffer>(p, bytes));
    }
    void CopyToDevice(void* dst, const void* src, size_t bytes) override {
        if (bytes == 0) return;
        // Pageable source: the call returns once the source has been staged, so the caller may reuse it.
        UA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_.get()));
    }
    std::unique_ptr<Uploader> MakeUploader(size_t chunk_bytes, int num_threads) override {
        // One slot per producer and two more, so that every thread can fill a buffer while two copy.
        const int num_slots = std::max(num_threads, 1) + 2;
        void* pinned = nullptr;
        if (cudaHostAlloc(&pinned, chunk_bytes * static_cast<size_t>(num_slots), cudaHostAllocDefault) != cudaSuccess) {
            cudaGetLastError();  // no pinned memory to spare: stage in pageable memory instead (slower)
            return Backend::MakeUploader(chunk_bytes, num_threads);
        }
        return std::make_unique<PinnedUploader>(options_.device, stream_.get(), static_cast<char*>(pinned), chunk_bytes,
                                                num_slots);
    }
    void CopyToHost(void* dst, const void* src, size_t bytes) override {
        if (bytes == 0) return;
        UA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_.get()));
        UA_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    }
    void CopyOnDevice(void* dst, const void* src, size_t bytes) override {
        if (bytes == 0) return;
        UA_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_.get()));
    }
    void Fill(void* dst, int value, size_t bytes) override {
        if (bytes == 0) return;
        UA_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, stream_.get()));
    }
    void Synchronize() override { UA_CUDA_CHECK(cudaStreamSynchronize(stream_.get())); }
    void FillUniform(void* dst, DType dtype, int64_t n, float lo, float hi, uint64_t seed) override {
        cuda::FillUniform(dst, dtype, n, lo, hi, seed, KStream());
    }

    void Embedding(const int32_t* tokens, int num_tokens, const Tensor& table, const Tensor& out) override {
        UA_CHECK(out.dtype == DType::kF32);
        cuda::Embedding(tokens, num_tokens, table.data, table.dtype, table.ld, out.cols, out.f32(), out.ld, KStream());
    }

    void RmsNorm(const Tensor& x, const Tensor& w, float eps, const Tensor& out) override {
        UA_CHECK(x.dtype == DType::kF32 && out.dtype == DType::kF32);
        cuda::RmsNorm(x.f32(), x.ld, w.data, w.dtype, eps, out.f32(), out.ld, x.rows, x.cols, KStream());
    }

    void MatMul(const Tensor& x, const Tensor& w, const Tensor& y, bool accumulate) override {
        UA_CHECK(x.dtype == DType::kF32 && y.dtype == DType::kF32);
        UA_CHECK_EQ(w.cols, x.cols);
        const int64_t rows = x.rows, in = x.cols, out = w.rows;
        if (rows == 0 || out == 0) return;
        const float one = 1.0f, zero = 0.0f;
        const float* beta = accumulate ? &one : &zero;
        cublasHandle_t h = cublas_.get();
        switch (w.dtype) {
            case DType::kF32:
                // Row-major y = x·w^T is column-major y^T = w^T(op T)·x^T.
                UA_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(rows),
                                             static_cast<int>(in), &one, w.data, CUDA_R_32F, static_cast<int>(w.ld),
                                             x.data, CUDA_R_32F, static_cast<int>(x.ld), beta, y.data, CUDA_R_32F,
                                             static_cast<int>(y.ld), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
                return;
            case DType::kF16:
            case DType::kBF16:
                break;
            case DType::kF8E4M3:
                UA_CHECK(w.scale != nullptr);
                break;
        }
        if (UsesRowGemm(rows, w)) {
            if (FusedRowGemm(cuda::RowGemmInputOp::kNone, x.f32(), x.ld, nullptr, 0.f, rows, w, y, accumulate)) return;
            void* x16 = Workspace(kWsX16, static_cast<size_t>(rows * in) * 2);
            cuda::SplitHiLo(x.f32(), x.ld, rows, in, x16, ActivationDType(w), false, KStream());
            Gemm16(x16, rows, w, y, accumulate);
            return;
        }
        if (rows <= cuda::kGemvMaxRows) {
            cuda::Gemv(x.f32(), x.ld, static_cast<int>(rows), w.data, w.dtype, w.ld, out, in, y.f32(), y.ld, accumulate,
                       KStream(), options_.stage_gemv_input, options_.gemv_row_segs, w.scale);
            return;
        }
        if (w.dtype == DType::kF8E4M3 && options_.fp8_tensor_cores && Fp8Gemm(x, w, y, accumulate)) return;
        if (w.dtype == DType::kF8E4M3) {
            // More rows than a GEMV takes (without FP8 tensor cores): the weights widened to the 16-bit dtype once per
            // call, then the 16-bit path (prefill and batched decode read the weights 3x more than fp16 would: FP8
            // tensor-core GEMMs are the next step, issue 18).
            const DType wide = options_.weight_dtype == DType::kBF16 ? DType::kBF16 : DType::kF16;
            void* w16 = Workspace(kWsW16, static_cast<size_t>(w.rows * w.cols) * DTypeBytes(wide));
            cuda::DequantFp8(w.data, w.ld, w.scale, w.rows, w.cols, w16, wide, KStream());
            MatMul(x, MakeTensor(w16, wide, w.rows, w.cols), y, accumulate);
            return;
        }
        const cudaDataType_t wt = CudaType(w.dtype);
        const size_t elem = DTypeBytes(w.dtype);
        if (rows <= kSplitMaxRows && options_.exact_activations) {
            // Decode-sized batches are weight-bound: run the GEMM on [x_hi; x_lo] (twice the rows, the
            // same weight bytes) and add the halves, so activations keep fp32 accuracy. Few output tiles
            // cannot fill the device, so K is split into `ks` batched GEMMs whose parts are summed too.
            const int ks = KSplit(in, out);
            const int64_t kc = in / ks;
            void* x2 = Workspace(kWsX16, static_cast<size_t>(2 * rows * in) * elem);
            float* y2 = static_cast<float*>(Workspace(kWsY2, sizeof(float) * static_cast<size_t>(ks * 2 * rows * out)));
            cuda::SplitHiLo(x.f32(), x.ld, rows, in, x2, w.dtype, true, KStream());
            UA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
                h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(2 * rows), static_cast<int>(kc),
                &one, w.data, wt, static_cast<int>(w.ld), kc, x2, wt, static_cast<int>(in), kc, &zero, y2, CUDA_R_32F,
                static_cast<int>(out), 2 * rows * out, ks, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            cuda::CombineParts(y2, 2 * ks, rows, out, y.f32(), y.ld, accumulate, KStream());
            return;
        }
        // Prefill-sized (or 16-bit activations): activations rounded to the weight dtype (fp32 accumulation).
        void* x1 = Workspace(kWsX16, static_cast<size_t>(rows * in) * elem);
        cuda::SplitHiLo(x.f32(), x.ld, rows, in, x1, w.dtype, false, KStream());
        Gemm16(x1, rows, w, y, accumulate);
    }

    // y (+)= x · w^T for e4m3 w (a scale per row) on FP8 tensor cores: x quantized to e4m3 per token
    // (QuantizeRowsFp8), then one cuBLASLt GEMM e4m3 x e4m3 with fp32 accumulation (TN). Where the library
    // applies both scale vectors itself (outer-vector scaling) the GEMM writes or accumulates y directly;
    // otherwise it writes the unscaled fp32 product to a workspace and ScaleRowsCols applies the scales.
    // False (nothing run) where cuBLASLt cannot take the shape: FP8 needs K and the leading dimensions to be
    // multiples of 16.
    bool Fp8Gemm(const Tensor& x, const Tensor& w, const Tensor& y, bool accumulate) {
        if (!Fp8GemmTakes(x.rows, w, y)) return false;
        auto* xq = Workspace(kWsX16, static_cast<size_t>(x.rows * x.cols));
        auto* xs = static_cast<float*>(Workspace(kWsXScale, sizeof(float) * static_cast<size_t>(x.rows)));
        cuda::QuantizeRowsFp8(x.f32(), x.ld, x.rows, x.cols, xq, xs, KStream());
        return Fp8GemmOn(xq, xs, x.rows, w, y, accumulate);
    }
    // Whether an FP8 tensor-core GEMM may run for this shape (false: cuBLASLt's FP8 rules, or a plan made before
    // that failed).
    bool Fp8GemmTakes(int64_t rows, const Tensor& w, const Tensor& y) const {
        const int64_t in = w.cols, out = w.rows;
        if (in % 16 != 0 || w.ld % 16 != 0 || out % 16 != 0) return false;
        const auto known = fp8_plans_.find(std::make_tuple(rows, out, in, w.ld, y.ld));
        return known == fp8_plans_.end() || known->second->ok;
    }
    // Whether the norm / SwiGLU input of a GEMM on w of `rows` rows is quantized by the fused kernels
    // (RmsNormFp8, SiluMulFp8) for an FP8 tensor-core GEMM.
    bool FusesFp8Input(int64_t rows, const Tensor& w, const Tensor& y) const {
        return w.dtype == DType::kF8E4M3 && w.scale != nullptr && options_.fp8_tensor_cores &&
               rows > cuda::kGemvMaxRows && !UsesRowGemm(rows, w) && Fp8GemmTakes(rows, w, y);
    }
    // The GEMM on activations already quantized: xq [rows, w.cols] e4m3 with per-row scales xs. False (nothing run)
    // where cuBLASLt has no plan for the shape.
    bool Fp8GemmOn(void* xq, float* xs, int64_t rows, const Tensor& w, const Tensor& y, bool accumulate) {
        const int64_t in = w.cols, out = w.rows;
        Fp8GemmPlan& plan = Fp8Plan(rows, out, in, w.ld, y.ld, w, xq, xs);
        if (!plan.ok) return false;
        void* lt_ws = plan.workspace_bytes > 0 ? Workspace(kWsLt, plan.workspace_bytes) : nullptr;
        const float one = 1.0f, zero = 0.0f;
        if (plan.outer) {
            SetFp8Scales(plan, w.scale, xs);
            UA_CUBLAS_CHECK(cublasLtMatmul(cublas_lt_.get(), plan.op, &one, w.data, plan.a, xq, plan.b,
                                           accumulate ? &one : &zero, y.data, plan.d, y.data, plan.d, &plan.algo, lt_ws,
                                           plan.workspace_bytes, stream_.get()));
            return true;
        }
        auto* raw =
            static_cast<float*>(Workspace(kWsY2, sizeof(float) * static_cast<size_t>(plan.splits * rows * out)));
        UA_CUBLAS_CHECK(cublasLtMatmul(cublas_lt_.get(), plan.op, &one, w.data, plan.a, xq, plan.b, &zero, raw, plan.d,
                                       raw, plan.d, &plan.algo, lt_ws, plan.workspace_bytes, stream_.get()));
        cuda::ScaleRowsCols(raw, plan.splits, rows, out, xs, w.scale, y.f32(), y.ld, accumulate, KStream());
        return true;
    }

    void SetFp8Scales(const Fp8GemmPlan& plan, const void* a_scale, const void* b_scale) {
        UA_CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale, sizeof(a_scale)));
        UA_CUBLAS_CHECK(
            cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale, sizeof(b_scale)));
    }

    // The plan of one FP8 GEMM shape, made on first use (outside graph capture: the decode graphs record
    // shapes that ran before) and kept. Column-major, as cuBLASLt sees row-major data: D [out, rows] =
    // A^T · B with A the weight [in, out] (ld w_ld) and B the activations [in, rows]. Outer-vector scales
    // (A's per output channel, B's per token) where the heuristic has an algorithm for them (D = y, ld y_ld),
    // else scalar (D a dense workspace). With a K split (Fp8Splits) the GEMM is batched over the parts: part j reads
    // the inputs [j·kc, (j+1)·kc) of the weight and the activations (batch stride kc) and writes its fp32 product
    // [out, rows] to the workspace, which ScaleRowsCols adds in part order and scales; a split the library has no
    // algorithm for falls back to one GEMM. With fp8_algo_candidates > 1 the heuristic's first candidates run on
    // this call's operands (w, the quantized xq and its scales xs; the output to a scratch buffer) and the
    // fastest is kept (not during graph capture, which the decode graphs do only for shapes that ran before).
    Fp8GemmPlan& Fp8Plan(int64_t rows, int64_t out, int64_t in, int64_t w_ld, int64_t y_ld, const Tensor& w,
                         const void* xq, const float* xs) {
        auto& slot = fp8_plans_[std::make_tuple(rows, out, in, w_ld, y_ld)];
        if (slot) return *slot;
        slot = std::make_unique<Fp8GemmPlan>();
        Fp8GemmPlan& p = *slot;
        cublasLtMatmulPreference_t pref = nullptr;
        UA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
        const size_t max_ws = kCublasWorkspaceBytes;
        UA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_ws,
                                                             sizeof(max_ws)));
        const int want = std::clamp(options_.fp8_algo_candidates, 1, 16);
        cublasStatus_t st = CUBLAS_STATUS_NOT_SUPPORTED;
        struct Try {
            int splits;
            bool outer;
        };
        std::vector<Try> tries;
        if (const int ks = Fp8Splits(rows, out, in); ks > 1) tries.push_back({ks, false});
        if (options_.fp8_outer_scales) tries.push_back({1, true});
        tries.push_back({1, false});
        for (const auto [splits, outer] : tries) {
            p.Reset();
            const int64_t kc = in / splits;
            UA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
            const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
            UA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
            UA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
            const int8_t fast = options_.fp8_fast_accum ? 1 : 0;
            UA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, sizeof(fast)));
            if (outer) {
                const cublasLtMatmulMatrixScale_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
                UA_CUBLAS_CHECK(
                    cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(mode)));
                UA_CUBLAS_CHECK(
                    cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode)));
            }
            UA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8F_E4M3, kc, out, w_ld));
            UA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8F_E4M3, kc, rows, in));
            const int64_t d_ld = outer ? y_ld : out;
            UA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.d, CUDA_R_32F, out, rows, d_ld));
            if (splits > 1) {
                const int32_t count = splits;
                const int64_t d_stride = rows * out;
                for (auto [layout, stride] : {std::pair{p.a, kc}, std::pair{p.b, kc}, std::pair{p.d, d_stride}}) {
                    UA_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count,
                                                                     sizeof(count)));
                    UA_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(
                        layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
                }
            }
            std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<size_t>(want));
            int found = 0;
            st = cublasLtMatmulAlgoGetHeuristic(cublas_lt_.get(), p.op, p.a, p.b, p.d, p.d, pref, want, results.data(),
                                                &found);
            if (st != CUBLAS_STATUS_SUCCESS || found == 0) continue;
            int best = 0;
            if (found > 1 && !capturing_) {  // timing synchronizes; a shape first seen in a capture takes the first
                if (outer) SetFp8Scales(p, w.scale, xs);
                float* scratch =
                    static_cast<float*>(Workspace(kWsY2, sizeof(float) * static_cast<size_t>(splits * rows * d_ld)));
                best = FastestFp8Algo(p, results.data(), found, w.data, xq, scratch);
            }
            p.ok = true;
            p.outer = outer;
            p.splits = splits;
            p.algo = results[static_cast<size_t>(best)].algo;
            p.workspace_bytes = results[static_cast<size_t>(best)].workspaceSize;
            break;
        }
        cublasLtMatmulPreferenceDestroy(pref);
        if (!p.ok) p.Reset();
        if (!p.ok && !fp8_fallback_logged_) {  // once: decode batch sizes would repeat it per shape
            fp8_fallback_logged_ = true;
            // FP8 tensor cores need compute capability 8.9 (Ada) or 9.0 (Hopper) and later.
            std::fprintf(
                stderr,
                "uniattn: cuBLASLt has no FP8 GEMM for %lld x %lld x %lld on %s (status %d): fp8 weights "
                "widened to 16 bits there and for any such shape (FP8 tensor cores need compute capability 8.9 "
                "or later)\n",
                static_cast<long long>(rows), static_cast<long long>(out), static_cast<long long>(in),
                description_.c_str(), static_cast<int>(st));
        } else if (p.ok && !fp8_path_logged_) {
            fp8_path_logged_ = true;
            std::fprintf(stderr, "uniattn: FP8 tensor-core GEMMs (cuBLASLt), %s\n",
                         p.outer                     ? "scales applied by the GEMM (outer-vector scaling)"
                         : options_.fp8_outer_scales ? "scales applied after the GEMM (the library has no "
                                                       "outer-vector scaling here)"
                                                     : "scales applied after the GEMM (fp8_outer_scales off)");
        }
        return p;
    }

    // The index of the fastest of n candidate algorithms for plan p (median of 5 timed runs after one warm-up
    // each; a candidate that fails to run is skipped), its output written to scratch.
    int FastestFp8Algo(const Fp8GemmPlan& p, const cublasLtMatmulHeuristicResult_t* cand, int n, const void* w,
                       const void* xq, float* scratch) {
        cudaEvent_t t0 = nullptr, t1 = nullptr;
        UA_CUDA_CHECK(cudaEventCreate(&t0));
        UA_CUDA_CHECK(cudaEventCreate(&t1));
        const float one = 1.0f, zero = 0.0f;
        int best = -1;
        float best_ms = 0.f;
        for (int i = 0; i < n; ++i) {
            void* ws = cand[i].workspaceSize > 0 ? Workspace(kWsLt, cand[i].workspaceSize) : nullptr;
            auto run = [&] {
                return cublasLtMatmul(cublas_lt_.get(), p.op, &one, w, p.a, xq, p.b, &zero, scratch, p.d, scratch, p.d,
                                      &cand[i].algo, ws, cand[i].workspaceSize, stream_.get());
            };
            if (run() != CUBLAS_STATUS_SUCCESS) continue;
            float ms[5];
            for (float& m : ms) {
                UA_CUDA_CHECK(cudaEventRecord(t0, stream_.get()));
                UA_CUBLAS_CHECK(run());
                UA_CUDA_CHECK(cudaEventRecord(t1, stream_.get()));
                UA_CUDA_CHECK(cudaEventSynchronize(t1));
                UA_CUDA_CHECK(cudaEventElapsedTime(&m, t0, t1));
            }
            std::sort(ms, ms + 5);
            if (best < 0 || ms[2] < best_ms) {
                best = i;
                best_ms = ms[2];
            }
        }
        cudaEventDestroy(t0);
        cudaEventDestroy(t1);
        return std::max(best, 0);
    }

    // Whether MatMul of `rows` rows by w runs one GEMM on activations rounded to w's 16-bit dtype.
    bool RoundsActivations(int64_t rows, const Tensor& w) const {
        return (w.dtype != DType::kF32 && w.dtype != DType::kF8E4M3 && rows > cuda::kGemvMaxRows &&
                (rows > kSplitMaxRows || !options_.exact_activations)) ||
               UsesRowGemm(rows, w);
    }
    // The 16-bit type a GEMM on w rounds its activations to: w's own, or for fp8 weights the model's 16-bit type.
    DType ActivationDType(const Tensor& w) const {
        if (w.dtype != DType::kF8E4M3) return w.dtype;
        return options_.weight_dtype == DType::kBF16 ? DType::kBF16 : DType::kF16;
    }
    // Whether a GEMM of `rows` rows on w runs RowGemmKernel (CudaOptions::mma_gemm_max_rows).
    bool UsesRowGemm(int64_t rows, const Tensor& w) const {
        const int max_rows = options_.mma_gemm_max_rows >= 0 ? options_.mma_gemm_max_rows
                                                             : (w.dtype == DType::kF8E4M3 ? kFp8MmaRows : 0);
        if (rows < 1 || rows > std::min<int64_t>(max_rows, cuda::kRowGemmMaxRows)) return false;
        if (w.dtype == DType::kF8E4M3) {
            if (w.scale == nullptr) return false;
        } else if (w.dtype != DType::kF16 && w.dtype != DType::kBF16) {
            return false;
        } else if (options_.exact_activations && rows > cuda::kGemvMaxRows) {
            return false;
        }
        return cuda::RowGemmSupports(static_cast<int>(rows), ActivationDType(w), w.data, w.dtype, w.ld, w.cols);
    }

    // A RowGemm launch's input split and its scratch (partial sums, per-tile counters) when split.
    struct RowGemmPlan {
        int splits = 1;
        float* partial = nullptr;
        unsigned* counters = nullptr;
    };
    RowGemmPlan PlanRowGemm(int64_t rows, const Tensor& w) {
        RowGemmPlan p;
        p.splits = cuda::RowGemmSplits(w.rows, w.cols, num_sms_, options_.gemm_ksplit);
        if (p.splits > 1) {
            p.partial = static_cast<float*>(
                Workspace(kWsRowGemm, sizeof(float) * static_cast<size_t>(p.splits * rows * w.rows)));
            p.counters = static_cast<unsigned*>(
                Workspace(kWsRowGemmCounters, sizeof(unsigned) * static_cast<size_t>(cuda::RowGemmTiles(w.rows))));
        }
        return p;
    }

    // y (+)= op(x) · w^T on RowGemmKernel with the input op applied as the fp32 rows are staged (no separate
    // norm / SiluMul / rounding launch; the same bits): CudaOptions::fuse_mma_gemm_inputs, a GEMM that runs
    // RowGemmKernel, up to cuda::kRowGemmFusedMaxRows rows. False (nothing launched) where that does not hold.
    bool FusedRowGemm(cuda::RowGemmInputOp op, const float* x, int64_t x_ld, const float* norm_w, float eps,
                      int64_t rows, const Tensor& w, const Tensor& y, bool accumulate) {
        if (!options_.fuse_mma_gemm_inputs || rows < 1 || w.rows == 0 || !UsesRowGemm(rows, w) ||
            !cuda::RowGemmFusedSupports(op, static_cast<int>(rows), x, x_ld, w.cols, norm_w)) {
            return false;
        }
        const RowGemmPlan p = PlanRowGemm(rows, w);
        cuda::RowGemmFused(op, x, x_ld, norm_w, eps, ActivationDType(w), static_cast<int>(rows), w.data, w.dtype, w.ld,
                           w.scale, w.rows, w.cols, y.f32(), y.ld, accumulate, p.splits, p.partial, p.counters,
                           KStream());
        return true;
    }

    // y (+)= x16 · w^T, x16 [rows, w.cols] dense in ActivationDType(w); fp32 accumulation and output.
    void Gemm16(const void* x16, int64_t rows, const Tensor& w, const Tensor& y, bool accumulate) {
        if (UsesRowGemm(rows, w)) {
            const RowGemmPlan p = PlanRowGemm(rows, w);
            cuda::RowGemm(x16, ActivationDType(w), static_cast<int>(rows), w.data, w.dtype, w.ld, w.scale, w.rows,
                          w.cols, y.f32(), y.ld, accumulate, p.splits, p.partial, p.counters, KStream());
            return;
        }
        UA_CHECK(w.dtype == DType::kF16 || w.dtype == DType::kBF16);
        const float one = 1.0f, zero = 0.0f;
        const cudaDataType_t wt = CudaType(w.dtype);
        UA_CUBLAS_CHECK(cublasGemmEx(cublas_.get(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(w.rows),
                                     static_cast<int>(rows), static_cast<int>(w.cols), &one, w.data, wt,
                                     static_cast<int>(w.ld), x16, wt, static_cast<int>(w.cols),
                                     accumulate ? &one : &zero, y.data, CUDA_R_32F, static_cast<int>(y.ld),
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }

    void NormMatMul(const Tensor& x, const Tensor& norm_w, float eps, const Tensor& w, const Tensor& y,
                    const Tensor& xn, bool accumulate) override {
        if (options_.fuse_gemv_inputs && x.rows <= cuda::kGemvMaxRows && w.dtype != DType::kF32 &&
            norm_w.dtype == DType::kF32 && !UsesRowGemm(x.rows, w)) {
            UA_CHECK_EQ(w.cols, x.cols);
            cuda::NormGemv(x.f32(), x.ld, norm_w.f32(), eps, static_cast<int>(x.rows), w.data, w.dtype, w.ld, w.rows,
                           w.cols, y.f32(), y.ld, accumulate, KStream(), options_.gemv_row_segs, w.scale);
            return;
        }
        if (FusesFp8Input(x.rows, w, y) && w.rows > 0) {
            UA_CHECK(x.dtype == DType::kF32 && y.dtype == DType::kF32);
            UA_CHECK_EQ(w.cols, x.cols);
            auto* xq = Workspace(kWsX16, static_cast<size_t>(x.rows * x.cols));
            auto* xs = static_cast<float*>(Workspace(kWsXScale, sizeof(float) * static_cast<size_t>(x.rows)));
            cuda::RmsNormFp8(x.f32(), x.ld, norm_w.data, norm_w.dtype, eps, xq, xs, x.rows, x.cols, KStream());
            if (Fp8GemmOn(xq, xs, x.rows, w, y, accumulate)) return;
            // No FP8 GEMM for the shape after all: the two-op path below (MatMul widens the weights).
        }
        if (RoundsActivations(x.rows, w) && x.rows > 0 && w.rows > 0) {
            // The norm writes the GEMM's 16-bit input itself (no fp32 copy, no conversion pass): same values.
            UA_CHECK(x.dtype == DType::kF32 && y.dtype == DType::kF32);
            UA_CHECK_EQ(w.cols, x.cols);
            if (norm_w.dtype == DType::kF32 &&
                FusedRowGemm(cuda::RowGemmInputOp::kNorm, x.f32(), x.ld, norm_w.f32(), eps, x.rows, w, y, accumulate)) {
                return;
            }
            void* x16 = Workspace(kWsX16, static_cast<size_t>(x.rows * x.cols) * 2);
            cuda::RmsNorm16(x.f32(), x.ld, norm_w.data, norm_w.dtype, eps, x16, ActivationDType(w), x.rows, x.cols,
                            KStream());
            Gemm16(x16, x.rows, w, y, accumulate);
            return;
        }
        Backend::NormMatMul(x, norm_w, eps, w, y, xn, accumulate);
    }

    void SiluMulMatMul(const Tensor& gate_up, const Tensor& w, const Tensor& y, const Tensor& mlp,
                       bool accumulate) override {
        if (options_.fuse_gemv_inputs && gate_up.rows <= cuda::kGemvMaxRows && w.dtype != DType::kF32 &&
            !UsesRowGemm(gate_up.rows, w)) {
            UA_CHECK_EQ(w.cols * 2, gate_up.cols);
            cuda::SiluMulGemv(gate_up.f32(), gate_up.ld, static_cast<int>(gate_up.rows), w.data, w.dtype, w.ld, w.rows,
                              w.cols, y.f32(), y.ld, accumulate, KStream(), options_.gemv_row_segs, w.scale);
            return;
        }
        if (FusesFp8Input(gate_up.rows, w, y) && w.rows > 0) {
            UA_CHECK(gate_up.dtype == DType::kF32 && y.dtype == DType::kF32);
            UA_CHECK_EQ(w.cols * 2, gate_up.cols);
            auto* xq = Workspace(kWsX16, static_cast<size_t>(gate_up.rows * w.cols));
            auto* xs = static_cast<float*>(Workspace(kWsXScale, sizeof(float) * static_cast<size_t>(gate_up.rows)));
            cuda::SiluMulFp8(gate_up.f32(), gate_up.ld, xq, xs, gate_up.rows, w.cols, KStream());
            if (Fp8GemmOn(xq, xs, gate_up.rows, w, y, accumulate)) return;
        }
        if (RoundsActivations(gate_up.rows, w) && gate_up.rows > 0 && w.rows > 0) {
            UA_CHECK(gate_up.dtype == DType::kF32 && y.dtype == DType::kF32);
            UA_CHECK_EQ(w.cols * 2, gate_up.cols);
            if (FusedRowGemm(cuda::RowGemmInputOp::kSiluMul, gate_up.f32(), gate_up.ld, nullptr, 0.f, gate_up.rows, w,
                             y, accumulate)) {
                return;
            }
            void* x16 = Workspace(kWsX16, static_cast<size_t>(gate_up.rows * w.cols) * 2);
            cuda::SiluMul16(gate_up.f32(), gate_up.ld, x16, ActivationDType(w), gate_up.rows, w.cols, KStream());
            Gemm16(x16, gate_up.rows, w, y, accumulate);
            return;
        }
        Backend::SiluMulMatMul(gate_up, w, y, mlp, accumulate);
    }

    void Rope(const Tensor& x, int num_heads, int head_dim, const int32_t* positions, const double* inv_freq) override {
        UA_CHECK(x.dtype == DType::kF32);
        cuda::Rope(x.f32(), x.ld, x.rows, num_heads, head_dim, positions, inv_freq, KStream());
    }

    void AddBias(const Tensor& x, const Tensor& bias) override {
        UA_CHECK(x.dtype == DType::kF32);
        UA_CHECK_EQ(bias.cols, x.cols);
        cuda::AddBias(x.f32(), x.ld, bias.data, bias.dtype, x.rows, x.cols, KStream());
    }

    void HeadRmsNorm(const Tensor& x, int num_heads, int head_dim, const Tensor& w, float eps) override {
        UA_CHECK(x.dtype == DType::kF32);
        UA_CHECK_EQ(x.cols, static_cast<int64_t>(num_heads) * head_dim);
        UA_CHECK_EQ(w.cols, static_cast<int64_t>(head_dim));
        cuda::HeadRmsNorm(x.f32(), x.ld, x.rows, num_heads, head_dim, w.data, w.dtype, eps, KStream());
    }

    void WriteKv(const Tensor& src, const KvPlane& plane, const int64_t* slot_mapping) override {
        UA_CHECK(src.dtype == DType::kF32);
        cuda::WriteKv(src.f32(), src.ld, src.rows, plane.base, plane.dtype,
                      static_cast<int64_t>(plane.num_kv_heads) * plane.head_dim, slot_mapping, plane.scale,
                      plane.head_dim, KStream());
    }

    void RopeWriteKv(const Tensor& q, const Tensor& k, const Tensor& v, const KvPlane& k_plane, const KvPlane& v_plane,
                     int num_heads, const int32_t* positions, const int64_t* slot_mapping,
                     const double* inv_freq) override {
        UA_CHECK(q.dtype == DType::kF32 && k.dtype == DType::kF32 && v.dtype == DType::kF32);
        UA_CHECK(k_plane.dtype == v_plane.dtype);
        cuda::RopeWriteKv(q.f32(), q.ld, k.f32(), k.ld, v.f32(), v.ld, q.rows, num_heads, k_plane.num_kv_heads,
                          k_plane.head_dim, positions, inv_freq, k_plane.base, v_plane.base, k_plane.dtype,
                          k_plane.scale, v_plane.scale, slot_mapping, KStream());
    }

    void Attention(const Tensor& q, const KvPlane& k, const KvPlane& v, const AttentionBatch& batch, int num_heads,
                   const Tensor& out, float* probs) override {
        UA_CHECK(k.dtype == v.dtype);
        const cuda::PagedBatch b = Paged(batch, v, num_heads, &k);
        const cuda::AttentionWorkspace ws = AttnWorkspace(b);
        cuda::Attention(q.f32(), q.ld, k.base, v.base, k.dtype, b, out.f32(), out.ld, probs, batch.max_context_len, ws,
                        KStream());
    }

    void ReuseAttention(const float* probs, const KvPlane& v, const AttentionBatch& batch, int num_heads,
                        const Tensor& out) override {
        const cuda::PagedBatch b = Paged(batch, v, num_heads);
        const cuda::AttentionWorkspace ws = AttnWorkspace(b);
        cuda::ReuseAttention(probs, batch.max_context_len, v.base, v.dtype, b, out.f32(), out.ld, ws, KStream());
    }

    void SiluMul(const Tensor& gate_up, const Tensor& out) override {
        cuda::SiluMul(gate_up.f32(), gate_up.ld, out.f32(), out.ld, out.rows, out.cols, KStream());
    }

    void Add(const Tensor& x, const Tensor& y) override {
        cuda::Add(x.f32(), x.ld, y.f32(), y.ld, x.rows, x.cols, KStream());
    }

    void GatherRows(const Tensor& x, const int32_t* host_rows, int num_rows, const Tensor& out) override {
        if (num_rows == 0) return;
        auto* rows = static_cast<int32_t*>(Workspace(kWsGather, sizeof(int32_t) * num_rows));
        CopyToDevice(rows, host_rows, sizeof(int32_t) * num_rows);
        cuda::GatherRows(x.f32(), x.ld, rows, num_rows, x.cols, out.f32(), out.ld, KStream());
    }

    void SampleRows(const Tensor& logits, const SampleRowParams* host_rows, int num_rows, const LogitEdit* host_edits,
                    int num_edits, SampleRowResult* host_results) override {
        if (num_rows == 0) return;
        UA_CHECK(logits.dtype == DType::kF32);
        bool any_edits = false;
        for (int r = 0; r < num_rows; ++r) {
            const SampleRowParams& p = host_rows[r];
            UA_CHECK(p.logits_row >= 0 && p.logits_row < logits.rows);
            UA_CHECK(p.edit_start >= 0 && p.num_edits >= 0 && p.edit_start + p.num_edits <= num_edits);
            any_edits = any_edits || p.num_edits > 0;
        }
        // Parameters and edits go over in one copy; only the results come back.
        const size_t rows_bytes = sizeof(SampleRowParams) * num_rows;
        const size_t edits_bytes = sizeof(LogitEdit) * num_edits;
        sample_staging_.resize(rows_bytes + edits_bytes);
        std::memcpy(sample_staging_.data(), host_rows, rows_bytes);
        if (edits_bytes > 0) std::memcpy(sample_staging_.data() + rows_bytes, host_edits, edits_bytes);
        char* in = static_cast<char*>(Workspace(kWsSampleIn, sample_staging_.size()));
        CopyToDevice(in, sample_staging_.data(), sample_staging_.size());
        const int vocab = static_cast<int>(logits.cols);
        float* work =
            any_edits ? static_cast<float*>(Workspace(kWsSampleWork, sizeof(float) * num_rows * vocab)) : nullptr;
        auto* out = static_cast<SampleRowResult*>(Workspace(kWsSampleOut, sizeof(SampleRowResult) * num_rows));
        const cuda::SampleSplit split =
            cuda::PlanSampleSplit(vocab, num_rows, options_.sampling_blocks_per_row, num_sms_);
        void* scratch = nullptr;
        unsigned* barriers = nullptr;
        if (split.parts >= 2) {
            scratch = Workspace(kWsSampleSplit, cuda::SampleSplitScratchBytes(num_rows, split));
            barriers = static_cast<unsigned*>(Workspace(kWsSampleBarriers, sizeof(unsigned) * 2 * num_rows));
        }
        cuda::SampleRows(logits.f32(), logits.ld, vocab, num_rows, reinterpret_cast<const SampleRowParams*>(in),
                         reinterpret_cast<const LogitEdit*>(in + rows_bytes), work, out, split, scratch, barriers,
                         KStream());
        CopyToHost(host_results, out, sizeof(SampleRowResult) * num_rows);
    }

    bool CanCapture() const override { return true; }
    bool BeginCapture() override {
        UA_CUDA_CHECK(cudaStreamBeginCapture(stream_.get(), cudaStreamCaptureModeThreadLocal));
        capturing_ = true;
        return true;
    }
    std::unique_ptr<DeviceGraph> EndCapture() override {
        cudaGraph_t graph = nullptr;
        UA_CUDA_CHECK(cudaStreamEndCapture(stream_.get(), &graph));
        capturing_ = false;
        cudaGraphExec_t exec = nullptr;
        UA_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
        UA_CUDA_CHECK(cudaGraphDestroy(graph));
        return std::make_unique<CudaGraph>(exec);
    }
    void Replay(DeviceGraph& graph) override {
        UA_CUDA_CHECK(cudaGraphLaunch(static_cast<CudaGraph&>(graph).exec(), stream_.get()));
    }

  private:
    // The stream the kernels enqueue on, with programmatic dependent launch when the options ask for it.
    cuda::Stream KStream() const { return cuda::Stream(stream_.get(), options_.pdl); }

    static constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;

    // Rows up to which MatMul with 16-bit weights splits activations into hi/lo halves (exact fp32 inputs).
    static constexpr int64_t kSplitMaxRows = 64;
    static constexpr int kFp8MmaRows = 16;  // CudaOptions::mma_gemm_max_rows -1: fp8 weights up to this many rows

    // K parts of an FP8 GEMM of `rows` x `out` x `in` (CudaOptions::fp8_split_k): by shape, doubled while the
    // 128 x 128 output tiles times the parts still fit one wave (a block per SM), each part a multiple of 128
    // inputs, at most 8 (on an H100's 132 SMs: 4 for the 4096-row matrices at up to 128 rows, 2 for 6144 rows and
    // for 4096 at 129-256, none for the MLP's up projection or prefill).
    int Fp8Splits(int64_t rows, int64_t out, int64_t in) const {
        if (options_.fp8_split_k > 0) {
            const int ks = options_.fp8_split_k;
            return in % ks == 0 && (in / ks) % 16 == 0 ? ks : 1;
        }
        const int64_t tiles = ((out + 127) / 128) * ((rows + 127) / 128);
        int ks = 1;
        while (ks < 8 && tiles * ks * 2 <= num_sms_ && in % (2 * ks * 128) == 0) ks *= 2;
        return ks;
    }

    // K splits for a weight-bound GEMM of `out` rows: enough 128-row output tiles for two per SM, each
    // split a multiple of 64 inputs.
    int KSplit(int64_t in, int64_t out) const {
        if (options_.gemm_ksplit > 0) {
            return in % options_.gemm_ksplit == 0 && (in / options_.gemm_ksplit) % 8 == 0 ? options_.gemm_ksplit : 1;
        }
        // Measured on an H200 (docs/gpu-notes.md): splitting helps only matrices of few output tiles
        // (4096 rows: 32 tiles) and hurts the large ones.
        const int64_t tiles = (out + 127) / 128;
        int ks = 1;
        while (ks < 4 && tiles * ks * 2 < num_sms_ && in % (2 * ks * 64) == 0) ks *= 2;
        return ks;
    }

    enum WorkspaceSlot {
        kWsGather,
        kWsX16,
        kWsW16,              // fp8 weights widened for GEMMs of more than kGemvMaxRows rows (fp8_tensor_cores off)
        kWsXScale,           // per-token scales of activations quantized to e4m3 (Fp8Gemm)
        kWsLt,               // cuBLASLt's workspace for FP8 GEMMs
        kWsRowGemm,          // RowGemm's per-split partial sums
        kWsRowGemmCounters,  // RowGemm's per-tile counters (zeroed once, left zeroed by every launch)
        kWsY2,
        kWsPartAcc,
        kWsPartMl,
        kWsStats,
        kWsSplitCounters,
        kWsSampleIn,
        kWsSampleWork,
        kWsSampleOut,
        kWsSampleSplit,     // SampleRows' exchange slots when several blocks share a row
        kWsSampleBarriers,  // and their barriers (zeroed once, left with zero arrivals by every launch)
        kNumWorkspaces
    };

    // A grow-only device buffer per slot.
    void* Workspace(WorkspaceSlot slot, size_t bytes) {
        bytes = std::max<size_t>(bytes, 256);
        if (bytes > workspace_bytes_[slot]) {
            UA_CHECK(!capturing_);  // the caller runs the same shapes once before recording them
            // Recorded graphs may still name the old buffer: it lives as long as the backend.
            if (workspace_[slot] != nullptr) retired_.push_back(workspace_[slot]);
            const size_t grown = std::max(bytes, workspace_bytes_[slot] * 3 / 2);
            UA_CUDA_CHECK(cudaMalloc(&workspace_[slot], grown));
            workspace_bytes_[slot] = grown;
            // The attention kernels expect zeroed counters and leave them zeroed.
            if (slot == kWsSplitCounters || slot == kWsRowGemmCounters || slot == kWsSampleBarriers)
                UA_CUDA_CHECK(cudaMemsetAsync(workspace_[slot], 0, grown, stream_.get()));
        }
        return workspace_[slot];
    }

    // The kernels' view of a step over V plane `plane` (and K plane `k`, null for reuse layers): fp8 planes bring
    // their per-head scales (tensor cores: GQA decode only; their prefill stays on the CUDA-core kernel).
    cuda::PagedBatch Paged(const AttentionBatch& a, const KvPlane& plane, int num_heads,
                           const KvPlane* k = nullptr) const {
        UA_CHECK(cuda::AttentionSupportsHeadDim(plane.head_dim));
        UA_CHECK_EQ(num_heads % plane.num_kv_heads, 0);
        cuda::PagedBatch b;
        static_cast<AttentionBatch&>(b) = a;
        if (b.max_query_len <= 0) b.max_query_len = a.num_tokens - a.num_seqs + 1;
        b.block_size = plane.block_size;
        b.num_heads = num_heads;
        b.num_kv_heads = plane.num_kv_heads;
        b.head_dim = plane.head_dim;
        b.heads_per_block = options_.decode_heads_per_block;
        b.tensor_cores = options_.tensor_core_attention;
        b.fp8_prefill_mma = options_.fp8_prefill_tensor_cores;
        b.staged_decode = options_.staged_decode_attention;
        b.decode_min_chunk = options_.decode_min_chunk;
        if (plane.dtype == DType::kF8E4M3) {
            UA_CHECK(plane.scale != nullptr && (k == nullptr || k->scale != nullptr));
            b.v_scale = plane.scale;
            if (k != nullptr) b.k_scale = k->scale;
        }
        return b;
    }

    cuda::AttentionWorkspace AttnWorkspace(const cuda::PagedBatch& b) {
        int64_t sizes[4];
        cuda::AttentionWorkspaceFloats(b, sizes);
        cuda::AttentionWorkspace ws;
        ws.part_acc = static_cast<float*>(Workspace(kWsPartAcc, sizeof(float) * sizes[0]));
        ws.part_ml = static_cast<float*>(Workspace(kWsPartMl, sizeof(float) * sizes[1]));
        ws.stats = static_cast<float*>(Workspace(kWsStats, sizeof(float) * sizes[2]));
        if (options_.fuse_attention_combine) {
            ws.split_counters = static_cast<unsigned*>(Workspace(kWsSplitCounters, sizeof(unsigned) * sizes[3]));
        }
        return ws;
    }

    CudaBackendOptions options_;
    int num_sms_;
    bool capturing_ = false;
    void* cublas_workspace_ = nullptr;
    std::string description_;
    CudaStream stream_;
    CublasHandle cublas_;
    CublasLtHandle cublas_lt_;
    std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t>, std::unique_ptr<Fp8GemmPlan>> fp8_plans_;
    bool fp8_path_logged_ = false, fp8_fallback_logged_ = false;
    void* workspace_[kNumWorkspaces] = {};
    size_t workspace_bytes_[kNumWorkspaces] = {};
    std::vector<void*> retired_;
    std::vector<char> sample_staging_;
};

}  // namespace

StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options) {
    // The staged GEMV splits its 8 warps evenly among the rows of a block: another count would overlap rows.
    if (const int segs = options.gemv_row_segs; segs != 0 && segs != 1 && segs != 2 && segs != 4 && segs != 8) {
        return InvalidArgument("gemv_row_segs " + std::to_string(segs) + ": expected 0 (by shape), 1, 2, 4 or 8");
    }
    if (const int mc = options.decode_min_chunk; mc != 0 && (mc < 64 || mc > 2048 || mc % 64 != 0)) {
        return InvalidArgument("decode_min_chunk " + std::to_string(mc) +
                               ": expected 0 (the default, 128) or a multiple of 64 from 64 to 2048");
    }
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        cudaGetLastError();
        return Unavailable(std::string("no CUDA device: ") +
                           (err != cudaSuccess ? cudaGetErrorString(err) : "cudaGetDeviceCount returned 0"));
    }
    if (options.device < 0 || options.device >= count) {
        return InvalidArgument("CUDA device " + std::to_string(options.device) + " does not exist (have " +
                               std::to_string(count) + ")");
    }
    UA_CUDA_CHECK(cudaSetDevice(options.device));
    cudaDeviceProp props{};
    UA_CUDA_CHECK(cudaGetDeviceProperties(&props, options.device));
    return std::unique_ptr<Backend>(std::make_unique<CudaBackend>(options, props));
}

StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const CudaOptions& cuda, DType dtype) {
    CudaBackendOptions options;
    static_cast<CudaOptions&>(options) = cuda;
    options.weight_dtype = options.kv_dtype = dtype;
    return CreateCudaBackend(options);
}

}  // namespace uniattn
