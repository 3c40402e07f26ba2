// Matrix-vector products for decode steps of one or two rows: weight-bandwidth bound, 16-byte weight
// loads with several in flight per lane, fp32 x read directly (exact products, fp32 accumulation: no
// activation rounding). One warp streams one weight row, the fastest layout measured for Llama-2-7B shapes
// (blocks of 4 rows with the input dimension split over the block were slower and dropped; measured in
// docs/gpu-notes.md). GemvStagedKernel below serves the RmsNorm- and SwiGLU-fused GEMVs: the transformed
// input staged in shared memory once per block of a persistent grid (gpu-notes run 9).
#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace uniattn::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kUnroll = 4;

// The GEMV's input row i of activation row r, after an optional transform fused into the load:
//   kPlain:   x[r, i]
//   kRmsNorm: x[r, i] · g[i]  (the 1/rms scale is applied to the dot product at the end)
//   kSiluMul: silu(x[r, i]) · x[r, n_in + i]  (x is a fused [gate | up] row)
enum GemvXform { kPlain, kRmsNorm, kSiluMul };

struct GemvIn {
    const float* x;
    int64_t x_ld;
    const float* g;  // kRmsNorm: the norm weight [in]
    float eps;
    bool staged;           // kPlain: use GemvStagedKernel too (the transforms always do when the shapes allow)
    int row_segs;          // GemvStagedKernel: warps per output row, 1, 2, 4 or 8 (0: by shape)
    const float* w_scale;  // fp8 weights: the scale of each output row; else null
};

template <int kXform>
__device__ __forceinline__ float4 XLoad4(const GemvIn& in, int r, int64_t i, int64_t n_in, float& ss) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(in.x + r * in.x_ld + i));
    if constexpr (kXform == kRmsNorm) {
        ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
        const float4 g = __ldg(reinterpret_cast<const float4*>(in.g + i));
        return make_float4(a.x * g.x, a.y * g.y, a.z * g.z, a.w * g.w);
    } else if constexpr (kXform == kSiluMul) {
        const float4 u = __ldg(reinterpret_cast<const float4*>(in.x + r * in.x_ld + n_in + i));
        return make_float4(a.x / (1.0f + expf(-a.x)) * u.x, a.y / (1.0f + expf(-a.y)) * u.y,
                           a.z / (1.0f + expf(-a.z)) * u.z, a.w / (1.0f + expf(-a.w)) * u.w);
    } else {
        return a;
    }
}

template <int kXform>
__device__ __forceinline__ float XLoad1(const GemvIn& in, int r, int64_t i, int64_t n_in, float& ss) {
    const float a = in.x[r * in.x_ld + i];
    if constexpr (kXform == kRmsNorm) {
        ss += a * a;
        return a * in.g[i];
    } else if constexpr (kXform == kSiluMul) {
        return a / (1.0f + expf(-a)) * in.x[r * in.x_ld + n_in + i];
    } else {
        return a;
    }
}

// One warp per output o.  x [kRows, in] fp32 (or [kRows, 2·in] for kSiluMul), w [out, in], y [kRows, out]
// kVector: w rows and x rows are 16-byte aligned (checked by the launcher).
template <typename WT, int kRows, bool kVector, int kXform>
__global__ __launch_bounds__(kWarpsPerBlock * 32) void GemvKernel(GemvIn in, const WT* __restrict__ w, int64_t w_ld,
                                                                  int64_t n_out, int64_t n_in, float* __restrict__ y,
                                                                  int64_t y_ld, bool accumulate) {
    const int lane = threadIdx.x & 31;
    const int64_t o = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
    if (o >= n_out) return;
    const WT* wr = w + o * w_ld;
    // Weights are never written during a step, so this warp's first loop iteration of them can be on its way
    // to L2 before the previous kernel has finished (with PDL the block may be resident while it drains).
    if constexpr (kVector) {
        const int64_t first = min(n_in, static_cast<int64_t>(kUnroll * 32 * (16 / sizeof(WT))));
        for (int64_t i = lane * (16 / sizeof(WT)); i < first; i += 32 * (16 / sizeof(WT))) {
            asm volatile("prefetch.global.L2 [%0];" ::"l"(wr + i));
        }
    }
    PdlEnter();
    float acc[kRows], ss[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = ss[r] = 0.f;
    int64_t done = 0;
    if constexpr (kVector) {
        constexpr int kVec = 16 / sizeof(WT);  // weights per 16-byte load
        const int64_t n_vec = n_in / kVec;
        int64_t i = lane;
        // Main loop: kUnroll independent 16-byte weight loads per lane before any arithmetic.
        for (; i + (kUnroll - 1) * 32 < n_vec; i += kUnroll * 32) {
            float wf[kUnroll][kVec];
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) LoadFloats<WT, kVec>(wr + (i + u * 32) * kVec, wf[u]);
#pragma unroll
            for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
                for (int r = 0; r < kRows; ++r) {
#pragma unroll
                    for (int c = 0; c < kVec / 4; ++c) {
                        const float4 xx = XLoad4<kXform>(in, r, (i + u * 32) * kVec + 4 * c, n_in, ss[r]);
                        acc[r] += xx.x * wf[u][4 * c] + xx.y * wf[u][4 * c + 1] + xx.z * wf[u][4 * c + 2] +
                                  xx.w * wf[u][4 * c + 3];
                    }
                }
            }
        }
        for (; i < n_vec; i += 32) {
            float wf[kVec];
            LoadFloats<WT, kVec>(wr + i * kVec, wf);
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
#pragma unroll
                for (int c = 0; c < kVec; ++c) acc[r] += XLoad1<kXform>(in, r, i * kVec + c, n_in, ss[r]) * wf[c];
            }
        }
        done = n_vec * kVec;
    }
    for (int64_t i = done + lane; i < n_in; i += 32) {
        const float wv = ToFloat(wr[i]);
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r] += XLoad1<kXform>(in, r, i, n_in, ss[r]) * wv;
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        float s = WarpSum(acc[r]);
        if constexpr (kXform == kRmsNorm) s *= 1.0f / sqrtf(WarpSum(ss[r]) / static_cast<float>(n_in) + in.eps);
        if constexpr (sizeof(WT) == 1) s *= in.w_scale[o];
        if (lane == 0) {
            float* dst = y + r * y_ld + o;
            *dst = accumulate ? *dst + s : s;
        }
    }
}

// The staged variant: each block first writes its input rows, transformed, into shared memory (one pass over
// x with all 256 threads: the RMS of each row by a block reduction, silu(gate)·up, or a plain copy), then its
// warps stream weight rows against that copy. The grid is persistent (at most as many blocks as are resident
// at once, warps stepping over the output rows), so the input is read and transformed once per block rather
// than once per output row (the cause of the per-warp fusion's slowness). Shared layout per input row: for
// every 8-element chunk c, elements 0-3 at [c·4, c·4+4) of the first half and 4-7 in the second half, so the
// two float4 reads of a lane that holds one 16-byte fp16 weight load are conflict-free across the warp.
// Needs 16-bit weights (16-byte loads of 8) or fp8 ones (8-byte loads of 8), n_in % 8 == 0 and rows aligned to
// one load (the launcher checks).
constexpr int kStagedThreads = kWarpsPerBlock * 32;

template <typename WT, int kRows, int kXform>
__global__ __launch_bounds__(kStagedThreads) void GemvStagedKernel(GemvIn in, const WT* __restrict__ w, int64_t w_ld,
                                                                   int64_t n_out, int64_t n_in, float* __restrict__ y,
                                                                   int64_t y_ld, bool accumulate, int segs) {
    static_assert(sizeof(WT) == 2 || sizeof(WT) == 1, "16-bit or fp8 weights");
    extern __shared__ float4 staged4[];
    float* staged = reinterpret_cast<float*>(staged4);  // [kRows][n_in], chunk-split layout above
    __shared__ float red[kRows][kWarpsPerBlock];
    __shared__ float scale[kRows];
    __shared__ float seg_sum[2][kWarpsPerBlock][kRows];  // segment partial sums, double-buffered by iteration
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t half = n_in / 2;
    // `segs` warps share one output row, each over a contiguous segment of its 8-element chunks (more work
    // units than warps, so the last wave of rows does not leave most of the device idle); the segment sums
    // meet in shared memory in a fixed order.
    const int rows_per_block = kWarpsPerBlock / segs, row_in_block = warp / segs, seg = warp % segs;
    const int64_t n_chunks = n_in / 8, seg_chunks = (n_chunks + segs - 1) / segs;
    const int64_t c_begin = seg * seg_chunks, c_end = min(n_chunks, c_begin + seg_chunks);
    const int64_t base_step = static_cast<int64_t>(gridDim.x) * rows_per_block;
    int64_t base = static_cast<int64_t>(blockIdx.x) * rows_per_block;
    if (base + row_in_block < n_out) {  // weights are never written during a step: start the first ones now
        const WT* wr = w + (base + row_in_block) * w_ld;
        const int64_t first = min(c_end, c_begin + kUnroll * 32);
        for (int64_t c = c_begin + lane; c < first; c += 32) asm volatile("prefetch.global.L2 [%0];" ::"l"(wr + c * 8));
    }
    PdlWait();
    // Stage the inputs: thread t handles 4 elements at a time (half a chunk).
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        float ss = 0.f;
        // kStageLoads float4 loads of x (and g or up) per thread are issued before any is used: the staging
        // is on the critical path of the step, and one dependent load per iteration made the 11008-wide
        // SwiGLU input's staging slow enough to lose to the plain GEMV (docs/gpu-notes.md run 9).
        constexpr int kStageLoads = 4;
        for (int64_t i0 = threadIdx.x * 4; i0 < n_in; i0 += kStagedThreads * 4 * kStageLoads) {
            float4 a[kStageLoads], b[kStageLoads];
#pragma unroll
            for (int k = 0; k < kStageLoads; ++k) {
                const int64_t i = i0 + k * kStagedThreads * 4;
                if (i < n_in) {
                    a[k] = *reinterpret_cast<const float4*>(in.x + r * in.x_ld + i);
                    if constexpr (kXform == kRmsNorm) b[k] = *reinterpret_cast<const float4*>(in.g + i);
                    if constexpr (kXform == kSiluMul) {
                        b[k] = *reinterpret_cast<const float4*>(in.x + r * in.x_ld + n_in + i);
                    }
                }
            }
#pragma unroll
            for (int k = 0; k < kStageLoads; ++k) {
                const int64_t i = i0 + k * kStagedThreads * 4;
                if (i >= n_in) break;
                float4 v = a[k];
                if constexpr (kXform == kRmsNorm) {
                    ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
                    v = make_float4(v.x * b[k].x, v.y * b[k].y, v.z * b[k].z, v.w * b[k].w);
                } else if constexpr (kXform == kSiluMul) {
                    v = make_float4(v.x / (1.0f + expf(-v.x)) * b[k].x, v.y / (1.0f + expf(-v.y)) * b[k].y,
                                    v.z / (1.0f + expf(-v.z)) * b[k].z, v.w / (1.0f + expf(-v.w)) * b[k].w);
                }
                const int64_t chunk = i / 8, second = (i / 4) & 1;
                *reinterpret_cast<float4*>(staged + r * n_in + second * half + chunk * 4) = v;
            }
        }
        if constexpr (kXform == kRmsNorm) {
            ss = WarpSum(ss);
            if (lane == 0) red[r][warp] = ss;
        }
    }
    __syncthreads();
    if constexpr (kXform == kRmsNorm) {
        if (threadIdx.x < kRows) {
            float t = 0.f;
#pragma unroll
            for (int k = 0; k < kWarpsPerBlock; ++k) t += red[threadIdx.x][k];
            scale[threadIdx.x] = 1.0f / sqrtf(t / static_cast<float>(n_in) + in.eps);
        }
        __syncthreads();
    }
    PdlLaunchDependents();
    // The loop runs the same number of times in every warp of the block (base is per block), so the
    // barrier inside it is uniform; rows past n_out compute nothing.
    for (int parity = 0; base < n_out; base += base_step, parity ^= 1) {
        const int64_t o = base + row_in_block;
        float acc[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r] = 0.f;
        if (o < n_out) {
            const WT* wr = w + o * w_ld;
            // kLoads loads of 8 weights per lane in flight before any arithmetic (the last round predicated, so
            // a row's tail is not a chain of one dependent load each). fp8 with 8 loads of 8 bytes (the bytes of
            // fp16's 4 x 16) made the batch-1 step 2x slower on an H100 (9.46 ms against 4.74, 2026-12-07): 4 for
            // both.
            constexpr int kLoads = kUnroll;
            for (int64_t c = c_begin + lane; c < c_end; c += kLoads * 32) {
                float wf[kLoads][8];
#pragma unroll
                for (int u = 0; u < kLoads; ++u) {
                    if (c + u * 32 < c_end) LoadFloats<WT, 8>(wr + (c + u * 32) * 8, wf[u]);
                }
#pragma unroll
                for (int u = 0; u < kLoads; ++u) {
                    if (c + u * 32 >= c_end) break;
#pragma unroll
                    for (int r = 0; r < kRows; ++r) {
                        const float4 x0 = *reinterpret_cast<const float4*>(staged + r * n_in + (c + u * 32) * 4);
                        const float4 x1 = *reinterpret_cast<const float4*>(staged + r * n_in + half + (c + u * 32) * 4);
                        acc[r] += x0.x * wf[u][0] + x0.y * wf[u][1] + x0.z * wf[u][2] + x0.w * wf[u][3] +
                                  x1.x * wf[u][4] + x1.y * wf[u][5] + x1.z * wf[u][6] + x1.w * wf[u][7];
                    }
                }
            }
#pragma unroll
            for (int r = 0; r < kRows; ++r) acc[r] = WarpSum(acc[r]);
        }
        if (segs > 1) {
            if (lane == 0) {
#pragma unroll
                for (int r = 0; r < kRows; ++r) seg_sum[parity][warp][r] = acc[r];
            }
            // One barrier per row: the buffer of the other parity was last read before every warp got here.
            __syncthreads();
            if (seg == 0) {
#pragma unroll
                for (int r = 0; r < kRows; ++r) {
                    float t = 0.f;
                    for (int k = 0; k < segs; ++k) t += seg_sum[parity][warp + k][r];
                    acc[r] = t;
                }
            }
        }
        if (seg == 0 && lane == 0 && o < n_out) {
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
                float s = acc[r];
                if constexpr (kXform == kRmsNorm) s *= scale[r];
                if constexpr (sizeof(WT) == 1) s *= in.w_scale[o];
                float* dst = y + r * y_ld + o;
                *dst = accumulate ? *dst + s : s;
            }
        }
    }
}

// Blocks of GemvStagedKernel resident at once on the device for this shared-memory size (0 if none fit).
// Cached per (device, size): launches inside recorded graphs and eager prefill steps pay it once.
template <typename WT, int kRows, int kXform>
int StagedResidentBlocks(size_t smem) {
    static std::mutex mu;
    static std::map<std::pair<int, size_t>, int> cache;
    static std::map<int, size_t> opted_in;  // per device: the largest dynamic shared memory allowed so far
    auto kernel = GemvStagedKernel<WT, kRows, kXform>;
    int device = 0, sms = 0, per_sm = 0, max_optin = 0;
    UA_CUDA_CHECK(cudaGetDevice(&device));
    std::lock_guard<std::mutex> lock(mu);
    if (auto it = cache.find({device, smem}); it != cache.end()) return it->second;
    UA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    UA_CUDA_CHECK(cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (smem + sizeof(float) * kRows * (kWarpsPerBlock + 1) <= static_cast<size_t>(max_optin)) {
        // Only ever raised: a launch with a larger size cached before must keep working.
        if (smem > opted_in[device]) {
            UA_CUDA_CHECK(
                cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
            opted_in[device] = smem;
        }
        UA_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kStagedThreads, smem));
    }
    return cache[{device, smem}] = per_sm * sms;
}

// Launches the staged kernel when the shapes allow it; false leaves the work to the caller.
template <typename WT, int kRows, int kXform>
bool LaunchStaged(const GemvIn& in, const WT* w, int64_t w_ld, int64_t n_out, int64_t n_in, float* y, int64_t y_ld,
                  bool accumulate, Stream stream) {
    if constexpr (sizeof(WT) != 2 && sizeof(WT) != 1) {
        return false;
    } else {
        const bool ok = n_in % 8 == 0 && reinterpret_cast<uintptr_t>(w) % (8 * sizeof(WT)) == 0 && w_ld % 8 == 0 &&
                        reinterpret_cast<uintptr_t>(in.x) % 16 == 0 && (kRows == 1 || in.x_ld % 4 == 0) &&
                        (kXform != kRmsNorm || reinterpret_cast<uintptr_t>(in.g) % 16 == 0);
        if (!ok) return false;
        const size_t smem = sizeof(float) * kRows * static_cast<size_t>(n_in);
        const int resident = StagedResidentBlocks<WT, kRows, kXform>(smem);
        if (resident == 0) return false;
        // Warps per output row: 2 for one input row when the output rows outnumber the resident warps
        // (qkv, gate_up, lm_head of Llama-2-7B: a faster batch-1 step, measured in docs/gpu-notes.md run 9),
        // else 1 (4096-row matrices fit one wave; at two input rows 2 segments made the step slower);
        // in.row_segs > 0 forces a count.
        int segs = in.row_segs;
        if (segs <= 0) {
            segs = kRows == 1 && n_out > static_cast<int64_t>(resident) * kWarpsPerBlock && n_in >= 1024 ? 2 : 1;
        }
        const int rows_per_block = kWarpsPerBlock / segs;
        const unsigned grid = std::min<unsigned>(CeilDiv(n_out, rows_per_block), static_cast<unsigned>(resident));
        LaunchKernel("GemvStagedKernel", GemvStagedKernel<WT, kRows, kXform>, grid, kStagedThreads, smem, stream, in, w,
                     w_ld, n_out, n_in, y, y_ld, accumulate, segs);
        return true;
    }
}

template <typename WT, int kRows, int kXform>
void LaunchGemv(const GemvIn& in, const WT* w, int64_t w_ld, int64_t n_out, int64_t n_in, float* y, int64_t y_ld,
                bool accumulate, Stream stream) {
    if ((in.staged || kXform != kPlain) &&
        LaunchStaged<WT, kRows, kXform>(in, w, w_ld, n_out, n_in, y, y_ld, accumulate, stream)) {
        return;
    }
    constexpr int kVec = 16 / sizeof(WT);
    const bool vector = reinterpret_cast<uintptr_t>(w) % 16 == 0 && w_ld % kVec == 0 &&
                        reinterpret_cast<uintptr_t>(in.x) % 16 == 0 && (kRows == 1 || in.x_ld % 4 == 0) &&
                        (kXform != kRmsNorm || reinterpret_cast<uintptr_t>(in.g) % 16 == 0) &&
                        (kXform != kSiluMul || n_in % 4 == 0);
    const unsigned grid = CeilDiv(n_out, kWarpsPerBlock);
    if (vector) {
        LaunchKernel("GemvKernel", GemvKernel<WT, kRows, true, kXform>, grid, kWarpsPerBlock * 32, 0, stream, in, w,
                     w_ld, n_out, n_in, y, y_ld, accumulate);
    } else {
        LaunchKernel("GemvKernel", GemvKernel<WT, kRows, false, kXform>, grid, kWarpsPerBlock * 32, 0, stream, in, w,
                     w_ld, n_out, n_in, y, y_ld, accumulate);
    }
}

template <typename WT, int kXform>
void GemvRows(const GemvIn& in, int rows, const WT* w, int64_t w_ld, int64_t n_out, int64_t n_in, float* y,
              int64_t y_ld, bool accumulate, Stream stream) {
    static_assert(kGemvMaxRows == 2, "one instantiation per row count");
    if (rows == 1) {
        LaunchGemv<WT, 1, kXform>(in, w, w_ld, n_out, n_in, y, y_ld, accumulate, stream);
    } else {
        LaunchGemv<WT, 2, kXform>(in, w, w_ld, n_out, n_in, y, y_ld, accumulate, stream);
    }
}

template <int kXform>
void GemvDispatch(const GemvIn& in, int rows, const void* w, DType w_dtype, int64_t w_ld, int64_t n_out, int64_t n_in,
                  float* y, int64_t y_ld, bool accumulate, Stream stream) {
    if (rows == 0 || n_out == 0) return;
    if (w_dtype == DType::kF8E4M3) {
        UA_CHECK(in.w_scale != nullptr);
        GemvRows<__nv_fp8_e4m3, kXform>(in, rows, static_cast<const __nv_fp8_e4m3*>(w), w_ld, n_out, n_in, y, y_ld,
                                        accumulate, stream);
        return;
    }
    UA_DISPATCH_DTYPE(
        w_dtype, T,
        GemvRows<T, kXform>(in, rows, static_cast<const T*>(w), w_ld, n_out, n_in, y, y_ld, accumulate, stream));
}

}  // namespace

void Gemv(const float* x, int64_t x_ld, int rows, const void* w, DType w_dtype, int64_t w_ld, int64_t n_out,
          int64_t n_in, float* y, int64_t y_ld, bool accumulate, Stream stream, bool staged, int row_segs,
          const float* w_scale) {
    GemvDispatch<kPlain>(GemvIn{x, x_ld, nullptr, 0.f, staged, row_segs, w_scale}, rows, w, w_dtype, w_ld, n_out, n_in,
                         y, y_ld, accumulate, stream);
}

void NormGemv(const float* x, int64_t x_ld, const float* norm_w, float eps, int rows, const void* w, DType w_dtype,
              int64_t w_ld, int64_t n_out, int64_t n_in, float* y, int64_t y_ld, bool accumulate, Stream stream,
              int row_segs, const float* w_scale) {
    GemvDispatch<kRmsNorm>(GemvIn{x, x_ld, norm_w, eps, true, row_segs, w_scale}, rows, w, w_dtype, w_ld, n_out, n_in,
                           y, y_ld, accumulate, stream);
}

void SiluMulGemv(const float* gate_up, int64_t gu_ld, int rows, const void* w, DType w_dtype, int64_t w_ld,
                 int64_t n_out, int64_t n_in, float* y, int64_t y_ld, bool accumulate, Stream stream, int row_segs,
                 const float* w_scale) {
    GemvDispatch<kSiluMul>(GemvIn{gate_up, gu_ld, nullptr, 0.f, true, row_segs, w_scale}, rows, w, w_dtype, w_ld, n_out,
                           n_in, y, y_ld, accumulate, stream);
}

}  // namespace uniattn::cuda
