// mma.sync, cp.async and fp8-widening helpers shared by the tensor-core kernels (attention.cu, gemm_rows.cu).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace uniattn::cuda {

// d += A·B for one m16n8k16 tile: a row-major A fragment, a column-major B fragment, fp32 accumulators.
template <typename T>
__device__ __forceinline__ void Mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if constexpr (std::is_same_v<T, __half>) {
        asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        static_assert(std::is_same_v<T, __nv_bfloat16>, "mma.sync on fp16 or bf16");
        asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// Two 16-bit elements as one 32-bit mma operand word: lo_elem in the low half.
template <typename T>
__device__ __forceinline__ uint32_t PackPair(T lo_elem, T hi_elem) {
    uint16_t a, b;
    memcpy(&a, &lo_elem, 2);
    memcpy(&b, &hi_elem, 2);
    return static_cast<uint32_t>(a) | (static_cast<uint32_t>(b) << 16);
}

// 32-bit word i (0-3) of a 16-byte vector.
__device__ __forceinline__ uint32_t Word(const uint4& v, int i) {
    return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w));
}

// Two fp8 e4m3 values (the low 16 bits of `two`) to an fp16 pair. cvt.rn.f16x2.e4m3x2 puts the low byte of its 16-bit
// source in the low half of the result (as cuda_fp8.h's __nv_cvt_fp8x2_to_halfraw2 reads it), so the byte at bits 0-7
// becomes the low half. The NaN codes 0x7F / 0xFF (never written: the KV writes saturate) become NaN here, unlike
// ToFloat.
__device__ __forceinline__ uint32_t E4m3x2ToHalf2(uint32_t two) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    uint32_t h2;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(h2) : "h"(static_cast<uint16_t>(two)));
    return h2;
#else
    const __half2_raw r = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two), __NV_E4M3);
    return static_cast<uint32_t>(r.x) | (static_cast<uint32_t>(r.y) << 16);
#endif
}

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16 bytes global -> shared, asynchronously; zero-filled when !valid (nothing is read then).
__device__ __forceinline__ void CpAsync16(void* dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SmemAddr(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

}  // namespace uniattn::cuda
