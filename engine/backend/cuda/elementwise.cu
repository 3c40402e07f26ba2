// Row-wise and elementwise kernels: embedding, RMSNorm (per row and per head), RoPE (alone and fused with the
// paged-cache write), KV writes, bias add, SwiGLU, residual add, row gather, fp32 -> 16-bit activation
// splitting, random fill.
#include <cmath>
#include <type_traits>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace uniattn::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void EmbeddingKernel(const int32_t* __restrict__ tokens, const T* __restrict__ table, int64_t table_ld,
                                int64_t d, float* __restrict__ out, int64_t out_ld) {
    PdlEnter();
    const int64_t t = blockIdx.x;
    const T* row = table + static_cast<int64_t>(tokens[t]) * table_ld;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) out[t * out_ld + i] = ToFloat(row[i]);
}

// 1 / rms(xr[0, d)) for one block of kThreads threads (partial: kThreads / 32 floats of shared memory, free again
// on return). The one sum order of RmsNormKernel and QuantizedInputKernel (the scalar kernels, for rows the register
// kernels below do not take: PlanRowVec), so their values agree bit for bit. The
// loop is unrolled so that a thread's loads are in flight together (the sum keeps its order): one block per row
// makes a 4096-wide row 16 loads per thread, which one at a time took about 15 us (ncu, H100, 2026-12-07).
__device__ __forceinline__ float BlockInvRms(const float* __restrict__ xr, int64_t d, float eps, float* partial) {
    float ss = 0.f;
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
    ss = WarpSum(ss);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = ss;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < kThreads / 32; ++i) total += partial[i];
    __syncthreads();
    return 1.0f / sqrtf(total / static_cast<float>(d) + eps);
}

// O: float, or the 16-bit type a GEMM reads (the fp32 result rounded once: the same values as RmsNorm + SplitHiLo).
template <typename T, typename O = float>
__global__ void RmsNormKernel(const float* __restrict__ x, int64_t x_ld, const T* __restrict__ w, float eps,
                              O* __restrict__ out, int64_t out_ld, int64_t d) {
    PdlEnter();
    __shared__ float partial[kThreads / 32];
    const int64_t r = blockIdx.x;
    const float* xr = x + r * x_ld;
    const float inv = BlockInvRms(xr, d, eps, partial);
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x)
        out[r * out_ld + i] = FromFloat<O>(xr[i] * inv * ToFloat(w[i]));
}

// cos/sin of pos · inv_freq[i] for i < head_dim/2: the angle and its sincos in double, then rounded (as the
// CPU backend), so both backends rotate by the same floats.   inv_freq [head_dim / 2] fp64 (rope scaling applied)
__device__ void RopeTable(int pos, int head_dim, const double* __restrict__ inv_freq, float* cos_s, float* sin_s) {
    const int half = head_dim / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double s, c;
        sincos(static_cast<double>(pos) * inv_freq[i], &s, &c);
        cos_s[i] = static_cast<float>(c);
        sin_s[i] = static_cast<float>(s);
    }
}

// One block per row.  x [rows, num_heads * head_dim]
__global__ void RopeKernel(float* __restrict__ x, int64_t x_ld, int num_heads, int head_dim,
                           const int32_t* __restrict__ positions, const double* __restrict__ inv_freq) {
    PdlEnter();
    extern __shared__ float table[];  // cos [half], sin [half]
    const int half = head_dim / 2;
    const int64_t t = blockIdx.x;
    RopeTable(positions[t], head_dim, inv_freq, table, table + half);
    __syncthreads();
    float* row = x + t * x_ld;
    for (int idx = threadIdx.x; idx < num_heads * half; idx += blockDim.x) {
        const int h = idx / half, i = idx % half;
        float* v = row + static_cast<int64_t>(h) * head_dim;
        const float a = v[i], b = v[i + half], c = table[i], s = table[half + i];
        v[i] = a * c - b * s;
        v[i + half] = b * c + a * s;
    }
}

// A K/V value of KV head h as a plane of T stores it: fp8 e4m3 planes hold e4m3(x / scale[h]) (an IEEE division,
// round to nearest even, saturating: the CPU backend's FloatToFp8E4M3(x / scale[h]) bit for bit); other planes x
// rounded to T.
template <typename T>
__device__ __forceinline__ T ToKv(float x, const float* __restrict__ scale, int h) {
    if constexpr (std::is_same_v<T, __nv_fp8_e4m3>) {
        return FromFloat<T>(__fdiv_rn(x, scale[h]));
    } else {
        return FromFloat<T>(x);
    }
}

template <typename T>
__global__ void WriteKvKernel(const float* __restrict__ src, int64_t src_ld, T* __restrict__ plane, int64_t width,
                              const int64_t* __restrict__ slot_mapping, const float* __restrict__ scale, int head_dim) {
    PdlEnter();
    const int64_t t = blockIdx.x;
    T* dst = plane + slot_mapping[t] * width;
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
        dst[i] = ToKv<T>(src[t * src_ld + i], scale, static_cast<int>(i / head_dim));
    }
}

// One block per token: rotate q in place, write rotated k and v into the planes.
template <typename T>
__global__ void RopeWriteKvKernel(float* __restrict__ q, int64_t q_ld, const float* __restrict__ k, int64_t k_ld,
                                  const float* __restrict__ v, int64_t v_ld, int num_heads, int num_kv_heads,
                                  int head_dim, const int32_t* __restrict__ positions,
                                  const double* __restrict__ inv_freq, T* __restrict__ k_plane, T* __restrict__ v_plane,
                                  const float* __restrict__ k_scale, const float* __restrict__ v_scale,
                                  const int64_t* __restrict__ slot_mapping) {
    PdlEnter();
    extern __shared__ float table[];
    const int half = head_dim / 2;
    const int64_t t = blockIdx.x;
    RopeTable(positions[t], head_dim, inv_freq, table, table + half);
    __syncthreads();
    const int64_t width = static_cast<int64_t>(num_kv_heads) * head_dim;
    const int64_t slot = slot_mapping[t];
    float* qr = q + t * q_ld;
    for (int idx = threadIdx.x; idx < num_heads * half; idx += blockDim.x) {
        const int h = idx / half, i = idx % half;
        float* e = qr + static_cast<int64_t>(h) * head_dim;
        const float a = e[i], b = e[i + half], c = table[i], s = table[half + i];
        e[i] = a * c - b * s;
        e[i + half] = b * c + a * s;
    }
    const float* kr = k + t * k_ld;
    T* kd = k_plane + slot * width;
    for (int idx = threadIdx.x; idx < num_kv_heads * half; idx += blockDim.x) {
        const int h = idx / half, i = idx % half;
        const int64_t o = static_cast<int64_t>(h) * head_dim;
        const float a = kr[o + i], b = kr[o + i + half], c = table[i], s = table[half + i];
        kd[o + i] = ToKv<T>(a * c - b * s, k_scale, h);
        kd[o + i + half] = ToKv<T>(b * c + a * s, k_scale, h);
    }
    const float* vr = v + t * v_ld;
    T* vd = v_plane + slot * width;
    for (int64_t i = threadIdx.x; i < width; i += blockDim.x)
        vd[i] = ToKv<T>(vr[i], v_scale, static_cast<int>(i / head_dim));
}

// One warp per (row, head): RMSNorm of the head's head_dim slice, in place, scaled by w (Qwen3's q/k norm).
//   x [rows, num_heads * head_dim] fp32 (row stride x_ld); w [head_dim]
template <typename T>
__global__ void HeadRmsNormKernel(float* __restrict__ x, int64_t x_ld, int64_t rows, int num_heads, int head_dim,
                                  const T* __restrict__ w, float eps) {
    PdlEnter();
    const int64_t item = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
    if (item >= rows * num_heads) return;  // the whole warp leaves together
    const int lane = threadIdx.x & 31;
    float* v = x + (item / num_heads) * x_ld + (item % num_heads) * static_cast<int64_t>(head_dim);
    float ss = 0.f;
    for (int i = lane; i < head_dim; i += 32) ss += v[i] * v[i];
    ss = WarpSum(ss);
    const float inv = 1.0f / sqrtf(ss / static_cast<float>(head_dim) + eps);
    for (int i = lane; i < head_dim; i += 32) v[i] = v[i] * inv * ToFloat(w[i]);
}

// x[r, c] += bias[c]                            x [rows, cols] fp32; bias [cols]
template <typename T>
__global__ void AddBiasKernel(float* __restrict__ x, int64_t x_ld, const T* __restrict__ bias, int64_t rows,
                              int64_t cols) {
    PdlEnter();
    const int64_t n = rows * cols;
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t r = idx / cols, c = idx % cols;
        x[r * x_ld + c] += ToFloat(bias[c]);
    }
}

// O as RmsNormKernel's.
template <typename O = float>
__global__ void SiluMulKernel(const float* __restrict__ gate_up, int64_t gu_ld, O* __restrict__ out, int64_t out_ld,
                              int64_t rows, int64_t ff) {
    PdlEnter();
    const int64_t n = rows * ff;
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t t = idx / ff, i = idx % ff;
        const float g = gate_up[t * gu_ld + i], u = gate_up[t * gu_ld + ff + i];
        out[t * out_ld + i] = FromFloat<O>(g / (1.0f + expf(-g)) * u);
    }
}

__global__ void AddKernel(float* __restrict__ x, int64_t x_ld, const float* __restrict__ y, int64_t y_ld, int64_t rows,
                          int64_t cols) {
    PdlEnter();
    const int64_t n = rows * cols;
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t r = idx / cols, c = idx % cols;
        x[r * x_ld + c] += y[r * y_ld + c];
    }
}

__global__ void GatherRowsKernel(const float* __restrict__ x, int64_t x_ld, const int32_t* __restrict__ rows,
                                 int64_t cols, float* __restrict__ out, int64_t out_ld) {
    PdlEnter();
    const int64_t i = blockIdx.x;
    const float* src = x + static_cast<int64_t>(rows[i]) * x_ld;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) out[i * out_ld + c] = src[c];
}

template <typename T>
__global__ void SplitHiLoKernel(const float* __restrict__ x, int64_t x_ld, int64_t rows, int64_t cols,
                                T* __restrict__ out, bool with_lo) {
    PdlEnter();
    const int64_t n = rows * cols;
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t r = idx / cols, c = idx % cols;
        const float v = x[r * x_ld + c];
        const T hi = FromFloat<T>(v);
        out[idx] = hi;
        if (with_lo) out[n + idx] = FromFloat<T>(v - ToFloat(hi));
    }
}

template <typename T>
__global__ void DequantFp8Kernel(const __nv_fp8_e4m3* __restrict__ w, int64_t w_ld, const float* __restrict__ scale,
                                 int64_t rows, int64_t cols, T* __restrict__ out) {
    PdlEnter();
    const int64_t n = rows * cols;
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t r = idx / cols, c = idx % cols;
        out[idx] = FromFloat<T>(ToFloat(w[r * w_ld + c]) * scale[r]);
    }
}

// An FP8 GEMM's input, one block per row: the row's fp32 values v (kOp 0: RmsNorm(x) · w, computed exactly as
// RmsNormKernel does, the same expressions and sum order; 1: silu(gate) · up of a [gate | up] row as SiluMulKernel;
// 2: x itself), then scale[r] = amax_r / 448 (1 for an all-zero row) and q[r, c] = e4m3(v / scale[r]) rounded to
// nearest even and saturated (the CPU's FloatToFp8E4M3 gives the same bytes: the same IEEE max, division and
// rounding). The values are recomputed for the second pass, never written out, so kOp 0 and 1 give the bytes of
// the fp32 kernel followed by kOp 2 (QuantizeRowsFp8).   q [rows, d] dense; w: kOp 0's norm weight, else unused
template <int kOp, typename T>
__global__ void QuantizedInputKernel(const float* __restrict__ x, int64_t x_ld, const T* __restrict__ w, float eps,
                                     int64_t d, __nv_fp8_e4m3* __restrict__ q, float* __restrict__ scale) {
    PdlEnter();
    __shared__ float partial[kThreads / 32];
    const int64_t r = blockIdx.x;
    const float* xr = x + r * x_ld;
    float inv = 1.0f;
    if constexpr (kOp == 0) inv = BlockInvRms(xr, d, eps, partial);
    auto value = [&](int64_t i) {
        if constexpr (kOp == 0) {
            return xr[i] * inv * ToFloat(w[i]);
        } else if constexpr (kOp == 2) {
            return xr[i];
        } else {
            const float g = xr[i], u = xr[d + i];
            return g / (1.0f + expf(-g)) * u;
        }
    };
    float m = 0.f;
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) m = fmaxf(m, fabsf(value(i)));
    m = WarpMax(m);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = m;
    __syncthreads();
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < kThreads / 32; ++i) amax = fmaxf(amax, partial[i]);
    const float s = amax > 0.f ? amax / 448.f : 1.f;
    if (threadIdx.x == 0) scale[r] = s;
    __nv_fp8_e4m3* qr = q + r * d;
#pragma unroll 4
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) qr[i] = __nv_fp8_e4m3(value(i) / s);
}

// ---- Rows held in registers (RmsNorm, FP8 GEMM inputs): one block per row, 4 consecutive elements per slot ----
// Thread t of a block of n threads holds elements 4(t + j·n) .. 4(t + j·n) + 3 of its row for j < kK, read once with
// 16-byte loads; every pass (sum of squares, amax, output) works on the registers. One block per row with one load
// per thread for rows up to 4096 wide (1024 threads): the scalar kernels above read a 4096-wide row 16 loads a
// thread, twice or three times over, and took 11-16 us per launch for a few rows and 37 us at 512 rows (ncu,
// H100, 2026-12-07). Sums and maxima go thread (slots in order), warp (xor tree), block (warps in order), so a
// row's result is the same in any batch and the norm's 1/rms is one value for RmsNormVecKernel and
// QuantizedInputVecKernel (their bit-equality, as BlockInvRms gives the scalar kernels).
constexpr int kRowVecThreadsMax = 1024;
constexpr int kRowVecSlotsMax = 8;

template <int kK>
struct RowSlots {
    float4 v[kK];
};

// Element offset of slot j of this thread.
__device__ __forceinline__ int64_t RowSlot(int j) { return 4 * (static_cast<int64_t>(threadIdx.x) + j * blockDim.x); }

template <int kK>
__device__ __forceinline__ RowSlots<kK> LoadRowSlots(const float* __restrict__ xr, int64_t d) {
    RowSlots<kK> r;
#pragma unroll
    for (int j = 0; j < kK; ++j) {
        const int64_t i = RowSlot(j);
        r.v[j] = i < d ? *reinterpret_cast<const float4*>(xr + i) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    return r;
}

// Sum (kMax false) or maximum (true) over the block, warps in order (partial: 32 floats of shared memory, free again
// on return).
template <bool kMax>
__device__ __forceinline__ float RowReduce(float v, float* partial) {
    v = kMax ? WarpMax(v) : WarpSum(v);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
    __syncthreads();
    float total = 0.f;
    const int warps = static_cast<int>(blockDim.x >> 5);
    for (int i = 0; i < warps; ++i) total = kMax ? fmaxf(total, partial[i]) : total + partial[i];
    __syncthreads();
    return total;
}

template <int kK>
__device__ __forceinline__ float RowInvRms(const RowSlots<kK>& r, int64_t d, float eps, float* partial) {
    // Explicit fused multiply-adds: left to the compiler, the contraction of this sum may differ between the kernels
    // that inline it (one ulp of 1/rms apart in some rows: seen on an H100), and the two must agree bit for bit.
    float ss = 0.f;
#pragma unroll
    for (int j = 0; j < kK; ++j) {
        ss = __fmaf_rn(r.v[j].x, r.v[j].x, ss);
        ss = __fmaf_rn(r.v[j].y, r.v[j].y, ss);
        ss = __fmaf_rn(r.v[j].z, r.v[j].z, ss);
        ss = __fmaf_rn(r.v[j].w, r.v[j].w, ss);
    }
    return 1.0f / sqrtf(RowReduce<false>(ss, partial) / static_cast<float>(d) + eps);
}

// The norm of slot j in place: x · inv · w.
template <int kK, typename T>
__device__ __forceinline__ void NormSlots(RowSlots<kK>& r, int64_t d, float inv, const T* __restrict__ w) {
#pragma unroll
    for (int j = 0; j < kK; ++j) {
        const int64_t i = RowSlot(j);
        if (i >= d) continue;
        float4& v = r.v[j];
        v.x = v.x * inv * ToFloat(w[i]);
        v.y = v.y * inv * ToFloat(w[i + 1]);
        v.z = v.z * inv * ToFloat(w[i + 2]);
        v.w = v.w * inv * ToFloat(w[i + 3]);
    }
}

// RmsNormKernel on registers: the same expression per element, RowInvRms's sum order.   grid rows, block n threads
template <typename T, typename O, int kK>
__global__ void __launch_bounds__(kRowVecThreadsMax)
    RmsNormVecKernel(const float* __restrict__ x, int64_t x_ld, const T* __restrict__ w, float eps, O* __restrict__ out,
                     int64_t out_ld, int64_t d) {
    PdlEnter();
    __shared__ float partial[32];
    const int64_t r = blockIdx.x;
    RowSlots<kK> s = LoadRowSlots<kK>(x + r * x_ld, d);
    NormSlots(s, d, RowInvRms(s, d, eps, partial), w);
    O* o = out + r * out_ld;
#pragma unroll
    for (int j = 0; j < kK; ++j) {
        const int64_t i = RowSlot(j);
        if (i >= d) continue;
        o[i] = FromFloat<O>(s.v[j].x);
        o[i + 1] = FromFloat<O>(s.v[j].y);
        o[i + 2] = FromFloat<O>(s.v[j].z);
        o[i + 3] = FromFloat<O>(s.v[j].w);
    }
}

// QuantizedInputKernel on registers (kOp 0: RmsNorm(x) · w as RmsNormVecKernel; 1: silu(gate) · up of a [gate | up]
// row; 2: x), the same scale and bytes: scale[r] = amax_r / 448 (1 for an all-zero row), q = e4m3(v / scale[r]).
template <int kOp, typename T, int kK>
__global__ void __launch_bounds__(kRowVecThreadsMax)
    QuantizedInputVecKernel(const float* __restrict__ x, int64_t x_ld, const T* __restrict__ w, float eps, int64_t d,
                            __nv_fp8_e4m3* __restrict__ q, float* __restrict__ scale) {
    PdlEnter();
    __shared__ float partial[32];
    const int64_t r = blockIdx.x;
    const float* xr = x + r * x_ld;
    RowSlots<kK> s = LoadRowSlots<kK>(xr, d);
    if constexpr (kOp == 0) NormSlots(s, d, RowInvRms(s, d, eps, partial), w);
    if constexpr (kOp == 1) {
        const RowSlots<kK> u = LoadRowSlots<kK>(xr + d, d);
        auto silu_mul = [](float g, float up) { return g / (1.0f + expf(-g)) * up; };
#pragma unroll
        for (int j = 0; j < kK; ++j) {
            s.v[j] = make_float4(silu_mul(s.v[j].x, u.v[j].x), silu_mul(s.v[j].y, u.v[j].y),
                                 silu_mul(s.v[j].z, u.v[j].z), silu_mul(s.v[j].w, u.v[j].w));
        }
    }
    float m = 0.f;  // slots past d hold zeros
#pragma unroll
    for (int j = 0; j < kK; ++j)
        m = fmaxf(m, fmaxf(fmaxf(fabsf(s.v[j].x), fabsf(s.v[j].y)), fmaxf(fabsf(s.v[j].z), fabsf(s.v[j].w))));
    const float amax = RowReduce<true>(m, partial);
    const float sc = amax > 0.f ? amax / 448.f : 1.f;
    if (threadIdx.x == 0) scale[r] = sc;
    __nv_fp8_e4m3* qr = q + r * d;
#pragma unroll
    for (int j = 0; j < kK; ++j) {
        const int64_t i = RowSlot(j);
        if (i >= d) continue;
        const uint32_t b0 = __nv_fp8_e4m3(s.v[j].x / sc).__x, b1 = __nv_fp8_e4m3(s.v[j].y / sc).__x,
                       b2 = __nv_fp8_e4m3(s.v[j].z / sc).__x, b3 = __nv_fp8_e4m3(s.v[j].w / sc).__x;
        *reinterpret_cast<uint32_t*>(qr + i) = b0 | (b1 << 8) | (b2 << 16) | (b3 << 24);
    }
}

// ScaleRowsColsKernel four columns a thread, no index division.   grid (ceil(cols / 4 / 256), rows), 256 threads;
// cols and y_ld multiples of 4, y 16-byte aligned
__global__ void ScaleRowsColsVecKernel(const float* __restrict__ raw, int parts, int64_t rows, int64_t cols,
                                       const float* __restrict__ row_scale, const float* __restrict__ col_scale,
                                       float* __restrict__ y, int64_t y_ld, bool accumulate) {
    PdlEnter();
    const int64_t r = blockIdx.y, c = 4 * (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x);
    if (c >= cols) return;
    const int64_t n = rows * cols, idx = r * cols + c;
    float4 sum = *reinterpret_cast<const float4*>(raw + idx);
    for (int p = 1; p < parts; ++p) {
        const float4 v = *reinterpret_cast<const float4*>(raw + p * n + idx);
        sum.x += v.x;
        sum.y += v.y;
        sum.z += v.z;
        sum.w += v.w;
    }
    const float rs = row_scale[r];
    const float* cs = col_scale + c;
    float4 out = make_float4(sum.x * rs * cs[0], sum.y * rs * cs[1], sum.z * rs * cs[2], sum.w * rs * cs[3]);
    float4* dst = reinterpret_cast<float4*>(y + r * y_ld + c);
    if (accumulate) {
        const float4 old = *dst;
        out = make_float4(old.x + out.x, old.y + out.y, old.z + out.z, old.w + out.w);
    }
    *dst = out;
}

// y[r, c] = (accumulate ? y[r, c] : 0) + (Σ_p raw[p, r, c]) · row_scale[r] · col_scale[c]
//     raw [parts, rows, cols] dense fp32
__global__ void ScaleRowsColsKernel(const float* __restrict__ raw, int parts, int64_t rows, int64_t cols,
                                    const float* __restrict__ row_scale, const float* __restrict__ col_scale,
                                    float* __restrict__ y, int64_t y_ld, bool accumulate) {
    PdlEnter();
    const int64_t n = rows * cols;
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t r = idx / cols, c = idx % cols;
        float sum = raw[idx];
        for (int p = 1; p < parts; ++p) sum += raw[p * n + idx];
        const float v = sum * row_scale[r] * col_scale[c];
        float* dst = y + r * y_ld + c;
        *dst = accumulate ? *dst + v : v;
    }
}

__global__ void CombinePartsKernel(const float* __restrict__ yy, int parts, int64_t rows, int64_t cols,
                                   float* __restrict__ y, int64_t y_ld, bool accumulate) {
    PdlEnter();
    const int64_t n = rows * cols;
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < n;
         idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t r = idx / cols, c = idx % cols;
        float* dst = y + r * y_ld + c;
        float sum = 0.f;
        for (int p = 0; p < parts; ++p) sum += yy[p * n + idx];
        *dst = accumulate ? *dst + sum : sum;
    }
}

template <typename T>
__global__ void FillUniformKernel(T* __restrict__ dst, int64_t n, float lo, float hi, uint64_t seed) {
    PdlEnter();
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        uint64_t z = seed + (static_cast<uint64_t>(i) + 1) * 0x9E3779B97F4A7C15ULL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        z ^= z >> 31;
        const float u = static_cast<float>(z >> 40) * 0x1.0p-24f;
        dst[i] = FromFloat<T>(lo + u * (hi - lo));
    }
}

// Grid for a grid-stride loop over n elements: enough blocks to fill the device, never zero.
unsigned StrideGrid(int64_t n) {
    const int64_t blocks = (n + kThreads - 1) / kThreads;
    return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65536 ? 65536 : blocks));
}

// Block size and slots per thread of the register row kernels for rows of d elements at x (row stride x_ld); 0
// slots: the scalar kernels (d or x_ld not a multiple of 4, x not 16-byte aligned, or wider than 1024 x 4 x 8).
struct RowVecPlan {
    unsigned threads = 0;
    int slots = 0;
};
RowVecPlan PlanRowVec(const float* x, int64_t x_ld, int64_t d) {
    if (d <= 0 || d % 4 != 0 || x_ld % 4 != 0 || reinterpret_cast<uintptr_t>(x) % 16 != 0) return {};
    const int64_t quads = d / 4;
    if (quads <= kRowVecThreadsMax) return {static_cast<unsigned>((quads + 31) / 32 * 32), 1};
    int k = 2;
    while (k < kRowVecSlotsMax && quads > int64_t{k} * kRowVecThreadsMax) k *= 2;
    if (quads > int64_t{k} * kRowVecThreadsMax) return {};
    return {kRowVecThreadsMax, k};
}

// Calls f(std::integral_constant<int, K>{}) for a plan of K slots a thread; false (nothing called) for none.
template <typename F>
bool WithRowSlots(int slots, F&& f) {
    switch (slots) {
        case 1:
            f(std::integral_constant<int, 1>{});
            return true;
        case 2:
            f(std::integral_constant<int, 2>{});
            return true;
        case 4:
            f(std::integral_constant<int, 4>{});
            return true;
        case 8:
            f(std::integral_constant<int, 8>{});
            return true;
        default:
            return false;
    }
}

template <typename T, typename O>
void LaunchRmsNorm(const float* x, int64_t x_ld, const T* w, float eps, O* out, int64_t out_ld, int64_t rows, int64_t d,
                   Stream stream) {
    const RowVecPlan p = PlanRowVec(x, x_ld, d);
    const auto grid = static_cast<unsigned>(rows);
    const bool vec = WithRowSlots(p.slots, [&](auto k) {
        LaunchKernel("RmsNormVecKernel", RmsNormVecKernel<T, O, decltype(k)::value>, grid, p.threads, 0, stream, x,
                     x_ld, w, eps, out, out_ld, d);
    });
    if (!vec) {
        LaunchKernel("RmsNormKernel", RmsNormKernel<T, O>, grid, kThreads, 0, stream, x, x_ld, w, eps, out, out_ld, d);
    }
}

// kOp 1 reads [gate | up] rows: both halves are d wide, so the plan of one half holds for the other.
template <int kOp, typename T>
void LaunchQuantizedInput(const float* x, int64_t x_ld, const T* w, float eps, int64_t d, void* q, float* scale,
                          int64_t rows, Stream stream) {
    const RowVecPlan p = PlanRowVec(x, x_ld, d);
    const auto grid = static_cast<unsigned>(rows);
    auto* qb = static_cast<__nv_fp8_e4m3*>(q);
    const bool vec = WithRowSlots(p.slots, [&](auto k) {
        LaunchKernel("QuantizedInputVecKernel", QuantizedInputVecKernel<kOp, T, decltype(k)::value>, grid, p.threads, 0,
                     stream, x, x_ld, w, eps, d, qb, scale);
    });
    if (!vec) {
        LaunchKernel("QuantizedInputKernel", QuantizedInputKernel<kOp, T>, grid, kThreads, 0, stream, x, x_ld, w, eps,
                     d, qb, scale);
    }
}

}  // namespace

bool RowNormPlan(const float* x, int64_t x_ld, int64_t d, int* threads, int* slots) {
    const RowVecPlan p = PlanRowVec(x, x_ld, d);
    *threads = static_cast<int>(p.threads);
    *slots = p.slots;
    return p.slots > 0;
}

void Embedding(const int32_t* tokens, int num_tokens, const void* table, DType table_dtype, int64_t table_ld, int64_t d,
               float* out, int64_t out_ld, Stream stream) {
    if (num_tokens == 0) return;
    UA_DISPATCH_DTYPE(table_dtype, T,
                      LaunchKernel("EmbeddingKernel", EmbeddingKernel<T>, num_tokens, kThreads, 0, stream, tokens,
                                   static_cast<const T*>(table), table_ld, d, out, out_ld));
}

void RmsNorm(const float* x, int64_t x_ld, const void* w, DType w_dtype, float eps, float* out, int64_t out_ld,
             int64_t rows, int64_t d, Stream stream) {
    if (rows == 0) return;
    UA_DISPATCH_DTYPE(w_dtype, T, LaunchRmsNorm(x, x_ld, static_cast<const T*>(w), eps, out, out_ld, rows, d, stream));
}

void Rope(float* x, int64_t x_ld, int64_t rows, int num_heads, int head_dim, const int32_t* positions,
          const double* inv_freq, Stream stream) {
    if (rows == 0) return;
    const size_t smem = sizeof(float) * head_dim;
    LaunchKernel("RopeKernel", RopeKernel, static_cast<unsigned>(rows), 128, smem, stream, x, x_ld, num_heads, head_dim,
                 positions, inv_freq);
}

void WriteKv(const float* src, int64_t src_ld, int64_t rows, void* plane, DType plane_dtype, int64_t width,
             const int64_t* slot_mapping, const float* scale, int head_dim, Stream stream) {
    if (rows == 0) return;
    UA_CHECK(plane_dtype != DType::kF8E4M3 || (scale != nullptr && head_dim > 0));
    UA_DISPATCH_KV_DTYPE(plane_dtype, T,
                         LaunchKernel("WriteKvKernel", WriteKvKernel<T>, static_cast<unsigned>(rows), 128, 0, stream,
                                      src, src_ld, static_cast<T*>(plane), width, slot_mapping, scale, head_dim));
}

void RopeWriteKv(float* q, int64_t q_ld, const float* k, int64_t k_ld, const float* v, int64_t v_ld, int64_t rows,
                 int num_heads, int num_kv_heads, int head_dim, const int32_t* positions, const double* inv_freq,
                 void* k_plane, void* v_plane, DType plane_dtype, const float* k_scale, const float* v_scale,
                 const int64_t* slot_mapping, Stream stream) {
    if (rows == 0) return;
    UA_CHECK(plane_dtype != DType::kF8E4M3 || (k_scale != nullptr && v_scale != nullptr));
    const size_t smem = sizeof(float) * head_dim;
    UA_DISPATCH_KV_DTYPE(
        plane_dtype, T,
        LaunchKernel("RopeWriteKvKernel", RopeWriteKvKernel<T>, static_cast<unsigned>(rows), 256, smem, stream, q, q_ld,
                     k, k_ld, v, v_ld, num_heads, num_kv_heads, head_dim, positions, inv_freq, static_cast<T*>(k_plane),
                     static_cast<T*>(v_plane), k_scale, v_scale, slot_mapping));
}

void HeadRmsNorm(float* x, int64_t x_ld, int64_t rows, int num_heads, int head_dim, const void* w, DType w_dtype,
                 float eps, Stream stream) {
    if (rows * num_heads == 0) return;
    constexpr int kWarps = kThreads / 32;
    UA_DISPATCH_DTYPE(
        w_dtype, T,
        LaunchKernel("HeadRmsNormKernel", HeadRmsNormKernel<T>, CeilDiv(rows * num_heads, kWarps), kThreads, 0, stream,
                     x, x_ld, rows, num_heads, head_dim, static_cast<const T*>(w), eps));
}

void AddBias(float* x, int64_t x_ld, const void* bias, DType bias_dtype, int64_t rows, int64_t cols, Stream stream) {
    if (rows * cols == 0) return;
    UA_DISPATCH_DTYPE(bias_dtype, T,
                      LaunchKernel("AddBiasKernel", AddBiasKernel<T>, StrideGrid(rows * cols), kThreads, 0, stream, x,
                                   x_ld, static_cast<const T*>(bias), rows, cols));
}

void SiluMul(const float* gate_up, int64_t gu_ld, float* out, int64_t out_ld, int64_t rows, int64_t ff, Stream stream) {
    if (rows * ff == 0) return;
    LaunchKernel("SiluMulKernel", SiluMulKernel<float>, StrideGrid(rows * ff), kThreads, 0, stream, gate_up, gu_ld, out,
                 out_ld, rows, ff);
}

void RmsNorm16(const float* x, int64_t x_ld, const void* w, DType w_dtype, float eps, void* out, DType out_dtype,
               int64_t rows, int64_t d, Stream stream) {
    if (rows == 0) return;
    UA_DISPATCH_DTYPE(w_dtype, T,
                      UA_DISPATCH_DTYPE(
                          out_dtype, O, if constexpr (sizeof(O) == 2) {
                              LaunchRmsNorm(x, x_ld, static_cast<const T*>(w), eps, static_cast<O*>(out), d, rows, d,
                                            stream);
                          }));
}

void SiluMul16(const float* gate_up, int64_t gu_ld, void* out, DType out_dtype, int64_t rows, int64_t ff,
               Stream stream) {
    if (rows * ff == 0) return;
    UA_DISPATCH_DTYPE(
        out_dtype, O, if constexpr (sizeof(O) == 2) {
            LaunchKernel("SiluMulKernel", SiluMulKernel<O>, StrideGrid(rows * ff), kThreads, 0, stream, gate_up, gu_ld,
                         static_cast<O*>(out), ff, rows, ff);
        });
}

void Add(float* x, int64_t x_ld, const float* y, int64_t y_ld, int64_t rows, int64_t cols, Stream stream) {
    if (rows * cols == 0) return;
    LaunchKernel("AddKernel", AddKernel, StrideGrid(rows * cols), kThreads, 0, stream, x, x_ld, y, y_ld, rows, cols);
}

void GatherRows(const float* x, int64_t x_ld, const int32_t* rows, int num_rows, int64_t cols, float* out,
                int64_t out_ld, Stream stream) {
    if (num_rows == 0) return;
    LaunchKernel("GatherRowsKernel", GatherRowsKernel, num_rows, kThreads, 0, stream, x, x_ld, rows, cols, out, out_ld);
}

void SplitHiLo(const float* x, int64_t x_ld, int64_t rows, int64_t cols, void* out, DType dtype, bool with_lo,
               Stream stream) {
    if (rows * cols == 0) return;
    UA_DISPATCH_DTYPE(dtype, T,
                      LaunchKernel("SplitHiLoKernel", SplitHiLoKernel<T>, StrideGrid(rows * cols), kThreads, 0, stream,
                                   x, x_ld, rows, cols, static_cast<T*>(out), with_lo));
}

void DequantFp8(const void* w, int64_t w_ld, const float* scale, int64_t rows, int64_t cols, void* out, DType out_dtype,
                Stream stream) {
    if (rows * cols == 0) return;
    const auto* wp = static_cast<const __nv_fp8_e4m3*>(w);
    switch (out_dtype) {
        case DType::kF16:
            LaunchKernel("DequantFp8Kernel", DequantFp8Kernel<__half>, StrideGrid(rows * cols), kThreads, 0, stream, wp,
                         w_ld, scale, rows, cols, static_cast<__half*>(out));
            return;
        case DType::kBF16:
            LaunchKernel("DequantFp8Kernel", DequantFp8Kernel<__nv_bfloat16>, StrideGrid(rows * cols), kThreads, 0,
                         stream, wp, w_ld, scale, rows, cols, static_cast<__nv_bfloat16*>(out));
            return;
        case DType::kF32:
        case DType::kF8E4M3:
            break;
    }
    UA_CHECK(false);
}

void QuantizeRowsFp8(const float* x, int64_t x_ld, int64_t rows, int64_t cols, void* q, float* scale, Stream stream) {
    if (rows == 0) return;
    LaunchQuantizedInput<2>(x, x_ld, static_cast<const float*>(nullptr), 0.0f, cols, q, scale, rows, stream);
}

void RmsNormFp8(const float* x, int64_t x_ld, const void* w, DType w_dtype, float eps, void* q, float* scale,
                int64_t rows, int64_t d, Stream stream) {
    if (rows == 0) return;
    UA_DISPATCH_DTYPE(w_dtype, T,
                      LaunchQuantizedInput<0>(x, x_ld, static_cast<const T*>(w), eps, d, q, scale, rows, stream));
}

void SiluMulFp8(const float* gate_up, int64_t gu_ld, void* q, float* scale, int64_t rows, int64_t ff, Stream stream) {
    if (rows == 0) return;
    LaunchQuantizedInput<1>(gate_up, gu_ld, static_cast<const float*>(nullptr), 0.0f, ff, q, scale, rows, stream);
}

void ScaleRowsCols(const float* raw, int parts, int64_t rows, int64_t cols, const float* row_scale,
                   const float* col_scale, float* y, int64_t y_ld, bool accumulate, Stream stream) {
    if (rows * cols == 0) return;
    if (cols % 4 == 0 && y_ld % 4 == 0 && reinterpret_cast<uintptr_t>(y) % 16 == 0 &&
        reinterpret_cast<uintptr_t>(raw) % 16 == 0) {
        const dim3 grid(CeilDiv(cols / 4, kThreads), static_cast<unsigned>(rows));
        LaunchKernel("ScaleRowsColsVecKernel", ScaleRowsColsVecKernel, grid, kThreads, 0, stream, raw, parts, rows,
                     cols, row_scale, col_scale, y, y_ld, accumulate);
        return;
    }
    LaunchKernel("ScaleRowsColsKernel", ScaleRowsColsKernel, StrideGrid(rows * cols), kThreads, 0, stream, raw, parts,
                 rows, cols, row_scale, col_scale, y, y_ld, accumulate);
}

void CombineParts(const float* yy, int parts, int64_t rows, int64_t cols, float* y, int64_t y_ld, bool accumulate,
                  Stream stream) {
    if (rows * cols == 0) return;
    LaunchKernel("CombinePartsKernel", CombinePartsKernel, StrideGrid(rows * cols), kThreads, 0, stream, yy, parts,
                 rows, cols, y, y_ld, accumulate);
}

void FillUniform(void* dst, DType dtype, int64_t n, float lo, float hi, uint64_t seed, Stream stream) {
    if (n == 0) return;
    if (dtype == DType::kF8E4M3) {  // raw e4m3 values (benchmark weights; their scales are separate)
        LaunchKernel("FillUniformKernel", FillUniformKernel<__nv_fp8_e4m3>, StrideGrid(n), kThreads, 0, stream,
                     static_cast<__nv_fp8_e4m3*>(dst), n, lo, hi, seed);
        return;
    }
    UA_DISPATCH_DTYPE(dtype, T,
                      LaunchKernel("FillUniformKernel", FillUniformKernel<T>, StrideGrid(n), kThreads, 0, stream,
                                   static_cast<T*>(dst), n, lo, hi, seed));
}

}  // namespace uniattn::cuda
