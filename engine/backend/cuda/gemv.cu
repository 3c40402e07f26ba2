// Matrix-vector products for decode steps of one or two rows: weight-bandwidth bound, 16-byte weight
// loads with several in flight per lane, fp32 x read directly (exact products, fp32 accumulation: no
// activation rounding). One warp streams one weight row: 72-93% of the copy bandwidth for Llama-2-7B shapes
// on an H200. (Blocks of 4 rows with the input dimension split over the block were measured at 44-56% and
// dropped; docs/gpu-notes.md.)
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
        if (lane == 0) {
            float* dst = y + r * y_ld + o;
            *dst = accumulate ? *dst + s : s;
        }
    }
}

template <typename WT, int kRows, int kXform>
void LaunchGemv(const GemvIn& in, const WT* w, int64_t w_ld, int64_t n_out, int64_t n_in, float* y, int64_t y_ld,
                bool accumulate, Stream stream) {
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
    UA_DISPATCH_DTYPE(
        w_dtype, T,
        GemvRows<T, kXform>(in, rows, static_cast<const T*>(w), w_ld, n_out, n_in, y, y_ld, accumulate, stream));
}

}  // namespace

void Gemv(const float* x, int64_t x_ld, int rows, const void* w, DType w_dtype, int64_t w_ld, int64_t n_out,
          int64_t n_in, float* y, int64_t y_ld, bool accumulate, Stream stream) {
    GemvDispatch<kPlain>(GemvIn{x, x_ld, nullptr, 0.f}, rows, w, w_dtype, w_ld, n_out, n_in, y, y_ld, accumulate,
                         stream);
}

void NormGemv(const float* x, int64_t x_ld, const float* norm_w, float eps, int rows, const void* w, DType w_dtype,
              int64_t w_ld, int64_t n_out, int64_t n_in, float* y, int64_t y_ld, bool accumulate, Stream stream) {
    GemvDispatch<kRmsNorm>(GemvIn{x, x_ld, norm_w, eps}, rows, w, w_dtype, w_ld, n_out, n_in, y, y_ld, accumulate,
                           stream);
}

void SiluMulGemv(const float* gate_up, int64_t gu_ld, int rows, const void* w, DType w_dtype, int64_t w_ld,
                 int64_t n_out, int64_t n_in, float* y, int64_t y_ld, bool accumulate, Stream stream) {
    GemvDispatch<kSiluMul>(GemvIn{gate_up, gu_ld, nullptr, 0.f}, rows, w, w_dtype, w_ld, n_out, n_in, y, y_ld,
                           accumulate, stream);
}

}  // namespace uniattn::cuda
