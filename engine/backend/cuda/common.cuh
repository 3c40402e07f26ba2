// Device helpers shared by the CUDA kernels: element conversions, vector loads, warp reductions, and the
// one dtype dispatch helper (a runtime DType becomes a template type over an explicit list).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"
#include "uniattn/dtype.h"

namespace uniattn::cuda {

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }
// Raw e4m3, unscaled, without the conversion unit (static_cast<float> takes two conversions, e4m3 -> f16 -> f32,
// at 16 results per SM per clock: the fp8 GEMV's limit, half the card's bandwidth): the byte's exponent and
// mantissa bits put at fp32's bits 26-20 are exactly value · 2^-120, for normal and subnormal e4m3 alike (those
// become fp32 subnormals), and the product with 2^120 is exact. Needs denormals kept (no -ftz, as this build
// compiles). The NaN codes 0x7F / 0xFF read as ±480, never stored by a saturating encoder.
__device__ __forceinline__ float E4m3BitsToFloat(uint32_t b) {  // b: the code in bits 0-7 (higher bits ignored)
    return __uint_as_float(((b & 0x80u) << 24) | ((b & 0x7Fu) << 20)) * 0x1p120f;
}
__device__ __forceinline__ float ToFloat(__nv_fp8_e4m3 x) { return E4m3BitsToFloat(x.__x); }

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
    return x;
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float x) {
    return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __nv_fp8_e4m3 FromFloat<__nv_fp8_e4m3>(float x) {
    return __nv_fp8_e4m3(x);  // round to nearest even, saturating to ±448
}

// N consecutive elements at p, converted to fp32. Uses the widest access the byte count allows; the
// caller guarantees p is aligned to that width (element offsets that are multiples of N).
template <typename T, int N>
__device__ __forceinline__ void LoadFloats(const T* __restrict__ p, float (&out)[N]) {
    constexpr int kBytes = N * static_cast<int>(sizeof(T));
    if constexpr (kBytes % 16 == 0) {
        constexpr int kPer = 16 / sizeof(T);
#pragma unroll
        for (int c = 0; c < N / kPer; ++c) {
            const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p) + c);
            const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
            for (int i = 0; i < kPer; ++i) out[c * kPer + i] = ToFloat(e[i]);
        }
    } else if constexpr (kBytes % 8 == 0) {
        constexpr int kPer = 8 / sizeof(T);
#pragma unroll
        for (int c = 0; c < N / kPer; ++c) {
            const uint2 raw = __ldg(reinterpret_cast<const uint2*>(p) + c);
            const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
            for (int i = 0; i < kPer; ++i) out[c * kPer + i] = ToFloat(e[i]);
        }
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) out[i] = ToFloat(p[i]);
    }
}

// N consecutive elements held raw (16-, 8- or element-wide words) so that many loads can be in flight
// in few registers; At(i) converts element i.
template <typename T, int N>
struct RawVec {
    static constexpr int kBytes = N * static_cast<int>(sizeof(T));
    using Word = std::conditional_t<kBytes % 16 == 0, uint4, std::conditional_t<kBytes % 8 == 0, uint2, T>>;
    static constexpr int kWords = kBytes / static_cast<int>(sizeof(Word));
    Word w[kWords];

    __device__ __forceinline__ void Load(const T* __restrict__ p) {
#pragma unroll
        for (int i = 0; i < kWords; ++i) w[i] = __ldg(reinterpret_cast<const Word*>(p) + i);
    }
    __device__ __forceinline__ void Zero() {
#pragma unroll
        for (int i = 0; i < kWords; ++i) w[i] = Word{};
    }
    __device__ __forceinline__ float At(int i) const { return ToFloat(reinterpret_cast<const T*>(w)[i]); }
};

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}
__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
    return v;
}

inline unsigned CeilDiv(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

// Programmatic dependent launch (sm_90). Every kernel of this backend starts with PdlEnter() (or, when it
// has work that needs none of the previous kernel's results, does that work first and then calls it):
// wait until the kernel launched before it on the stream has finished and its writes are visible, then
// let the kernel after it start launching. When the kernel was launched without the PDL attribute both
// are no-ops, so a kernel is correct either way; nothing of the previous kernel's output may be read,
// and no global memory written, before PdlWait().
__device__ __forceinline__ void PdlWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void PdlLaunchDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void PdlEnter() {
    PdlWait();
    PdlLaunchDependents();
}

// Raises `kernel`'s dynamic shared-memory limit to at least `bytes` on the current device (above 48 KiB a kernel must
// opt in), once per (device, kernel) and size: later calls only look it up. Outside graph capture: the engine runs
// every shape eagerly before it records it.
inline void OptInSharedMemory(const void* kernel, size_t bytes) {
    if (bytes <= 48 * 1024) return;
    static std::mutex mu;
    static std::map<std::pair<int, const void*>, size_t> raised;
    int device = 0;
    UA_CUDA_CHECK(cudaGetDevice(&device));
    std::lock_guard<std::mutex> lock(mu);
    size_t& at = raised[{device, kernel}];
    if (bytes <= at) return;
    UA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
    at = bytes;
}

// Launches kernel<<<grid, block, smem, stream>>>(args...), with the programmatic-serialization attribute
// when stream.pdl (the kernel may then start while its predecessor drains; it must use PdlEnter), and checks
// the launch (a failure names the kernel).
template <typename... Params, typename... Args>
void LaunchKernel(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Stream stream,
                  Args&&... args) {
    cudaLaunchConfig_t config{};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream.stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    config.attrs = attr;
    config.numAttrs = stream.pdl ? 1 : 0;
    const cudaError_t err = cudaLaunchKernelEx(&config, kernel, static_cast<Params>(std::forward<Args>(args))...);
    if (err != cudaSuccess) {
        char what[256];
        std::snprintf(what, sizeof(what), "%s: %s", name, cudaGetErrorString(err));
        CudaFailed("cudaLaunchKernelEx", __FILE__, __LINE__, what);
    }
}

}  // namespace uniattn::cuda

// Runs the statements with `T` bound to the element type of `dtype`: f32, f16 and bf16 (the kernels that take
// f8_e4m3 handle it before dispatching, or through UA_DISPATCH_KV_DTYPE).
#define UA_DISPATCH_DTYPE(dtype, T, ...) \
    switch (dtype) {                     \
        case ::uniattn::DType::kF32: {   \
            using T = float;             \
            __VA_ARGS__;                 \
            break;                       \
        }                                \
        case ::uniattn::DType::kF16: {   \
            using T = __half;            \
            __VA_ARGS__;                 \
            break;                       \
        }                                \
        case ::uniattn::DType::kBF16: {  \
            using T = __nv_bfloat16;     \
            __VA_ARGS__;                 \
            break;                       \
        }                                \
    }

// UA_DISPATCH_DTYPE and f8_e4m3 (`T` = __nv_fp8_e4m3): the KV-cache kernels (attention, KV writes), whose fp8
// planes come with per-head scales.
#define UA_DISPATCH_KV_DTYPE(dtype, T, ...)      \
    if ((dtype) == ::uniattn::DType::kF8E4M3) {  \
        using T = __nv_fp8_e4m3;                 \
        __VA_ARGS__;                             \
    } else {                                     \
        UA_DISPATCH_DTYPE(dtype, T, __VA_ARGS__) \
    }
