// GEMMs of 3..32 activation rows (decode batches) with 16-bit weights, on tensor cores, fp32-accurate:
// each 8-element piece of an fp32 activation row is split in registers into hi = dtype(x) and
// lo = dtype(x - hi), and W·hi + W·lo accumulate in fp32 (mma.sync m16n8k16), so the result matches the
// cuBLAS path on [x_hi; x_lo] (and the CPU oracle) without the split and combine kernels or a second pass.
//
// Layout of the work: a block owns 32 output rows (two m16 tiles) and its 8 warps split K into contiguous
// runs of 32- or 64-element chunks. Per chunk a lane loads 16 or 32 contiguous bytes of two weight rows
// per tile (rows g and g + 8 of the tile, g = lane / 4, tig = lane % 4, k = 4·kS·tig ..) and the same k of
// its activation row(s). Because a dot product may sum its k in any order, the 4 k a lane holds for mma
// step s are assigned to the fragment positions {2·tig, 2·tig+1, 2·tig+8, 2·tig+9} of that k16 step, the
// same for A (weights) and B (activations): every load is a 16-byte vector load, no shared-memory staging.
// Partial sums of the 8 warps are added in shared memory and written once (y += when accumulating).
#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace uniattn::cuda {
namespace {

constexpr int kSkWarps = 8;
constexpr int kSkRowsPerBlock = 32;  // two m16 tiles
constexpr int kSkMinChunk = 32;      // k per warp step: 16 · kS, kS = 2 or 4 k16 mma steps

template <typename WT>
__device__ __forceinline__ uint32_t PackPair(float a, float b);
template <>
__device__ __forceinline__ uint32_t PackPair<__half>(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t PackPair<__nv_bfloat16>(float a, float b) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<const uint32_t*>(&h);
}
template <typename WT>
__device__ __forceinline__ float Rounded(float x) {
    return ToFloat(FromFloat<WT>(x));
}

template <typename WT>
__device__ __forceinline__ void Mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    if constexpr (std::is_same_v<WT, __half>) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
            "{%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
}

// kNt: n8 tiles of activation rows (rows <= 8·kNt); each has a hi and a lo accumulator per m16 tile.
// kS: k16 mma steps per chunk (chunk = 16·kS k; a lane loads 4·kS contiguous weights of each of its rows).
template <typename WT, int kNt, int kS>
__global__ __launch_bounds__(kSkWarps * 32) void SkinnyGemmKernel(const float* __restrict__ x, int64_t x_ld, int rows,
                                                                  const WT* __restrict__ w, int64_t w_ld, int64_t n_in,
                                                                  float* __restrict__ y, int64_t y_ld,
                                                                  bool accumulate) {
    __shared__ float part[kSkWarps][kSkRowsPerBlock][8 * kNt];
    const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
    const int g = lane / 4, tig = lane % 4;
    const int64_t o0 = static_cast<int64_t>(blockIdx.x) * kSkRowsPerBlock;

    float acc[2][kNt][2][4];  // [m tile][n tile][hi, lo][fragment]
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int n = 0; n < kNt; ++n)
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[m][n][h][i] = 0.f;

    const WT* wrow[2][2];
#pragma unroll
    for (int m = 0; m < 2; ++m) {
        wrow[m][0] = w + (o0 + m * 16 + g) * w_ld + 4 * kS * tig;
        wrow[m][1] = w + (o0 + m * 16 + g + 8) * w_ld + 4 * kS * tig;
    }
    const float* xrow[kNt];
    bool xvalid[kNt];
#pragma unroll
    for (int n = 0; n < kNt; ++n) {
        const int r = n * 8 + g;
        xvalid[n] = r < rows;
        xrow[n] = x + static_cast<int64_t>(xvalid[n] ? r : 0) * x_ld + 4 * kS * tig;
    }

    // Each warp streams a contiguous run of chunks, so every weight row is read front to back in
    // 16·kS-element pieces (scattered 64-byte pieces, chunk c to warp c % 8, measured slower).
    const int64_t num_chunks = n_in / (16 * kS);
    const int64_t c_begin = num_chunks * warp / kSkWarps, c_end = num_chunks * (warp + 1) / kSkWarps;
#pragma unroll 2
    for (int64_t c = c_begin; c < c_end; ++c) {
        const int64_t k0 = c * 16 * kS;
        uint4 wv[2][2][kS / 2];
#pragma unroll
        for (int m = 0; m < 2; ++m)
#pragma unroll
            for (int q = 0; q < kS / 2; ++q) {
                wv[m][0][q] = __ldg(reinterpret_cast<const uint4*>(wrow[m][0] + k0) + q);
                wv[m][1][q] = __ldg(reinterpret_cast<const uint4*>(wrow[m][1] + k0) + q);
            }
#pragma unroll
        for (int n = 0; n < kNt; ++n) {
            float xv[4 * kS];
#pragma unroll
            for (int q = 0; q < kS; ++q) {
                const float4 p = xvalid[n] ? __ldg(reinterpret_cast<const float4*>(xrow[n] + k0) + q)
                                           : make_float4(0.f, 0.f, 0.f, 0.f);
                xv[4 * q] = p.x, xv[4 * q + 1] = p.y, xv[4 * q + 2] = p.z, xv[4 * q + 3] = p.w;
            }
            float lo[4 * kS];
#pragma unroll
            for (int i = 0; i < 4 * kS; ++i) lo[i] = xv[i] - Rounded<WT>(xv[i]);
#pragma unroll
            for (int s = 0; s < kS; ++s) {  // k16 step s takes this lane's k 4s .. 4s + 3
                const uint32_t bh0 = PackPair<WT>(xv[4 * s], xv[4 * s + 1]);
                const uint32_t bh1 = PackPair<WT>(xv[4 * s + 2], xv[4 * s + 3]);
                const uint32_t bl0 = PackPair<WT>(lo[4 * s], lo[4 * s + 1]);
                const uint32_t bl1 = PackPair<WT>(lo[4 * s + 2], lo[4 * s + 3]);
#pragma unroll
                for (int m = 0; m < 2; ++m) {
                    const uint32_t* r0 = reinterpret_cast<const uint32_t*>(&wv[m][0][0]);
                    const uint32_t* r8 = reinterpret_cast<const uint32_t*>(&wv[m][1][0]);
                    const uint32_t a[4] = {r0[2 * s], r8[2 * s], r0[2 * s + 1], r8[2 * s + 1]};
                    Mma<WT>(acc[m][n][0], a, bh0, bh1);
                    Mma<WT>(acc[m][n][1], a, bl0, bl1);
                }
            }
        }
    }

    // Fragment (m, n): c0, c1 = (output row m·16 + g, activation rows n·8 + 2·tig, +1); c2, c3 = row + 8.
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int n = 0; n < kNt; ++n) {
            part[warp][m * 16 + g][n * 8 + 2 * tig] = acc[m][n][0][0] + acc[m][n][1][0];
            part[warp][m * 16 + g][n * 8 + 2 * tig + 1] = acc[m][n][0][1] + acc[m][n][1][1];
            part[warp][m * 16 + g + 8][n * 8 + 2 * tig] = acc[m][n][0][2] + acc[m][n][1][2];
            part[warp][m * 16 + g + 8][n * 8 + 2 * tig + 1] = acc[m][n][0][3] + acc[m][n][1][3];
        }
    __syncthreads();
    // Output (r, o0 + j): consecutive threads take consecutive j (coalesced stores along the output row).
    for (int idx = static_cast<int>(threadIdx.x); idx < rows * kSkRowsPerBlock; idx += kSkWarps * 32) {
        const int r = idx / kSkRowsPerBlock, j = idx % kSkRowsPerBlock;
        float s = 0.f;
#pragma unroll
        for (int v = 0; v < kSkWarps; ++v) s += part[v][j][r];
        float* dst = y + static_cast<int64_t>(r) * y_ld + o0 + j;
        *dst = accumulate ? *dst + s : s;
    }
}

template <typename WT, int kNt>
void LaunchSkinny(const float* x, int64_t x_ld, int rows, const WT* w, int64_t w_ld, int64_t n_out, int64_t n_in,
                  float* y, int64_t y_ld, bool accumulate, cudaStream_t stream) {
    const dim3 grid(static_cast<unsigned>(n_out / kSkRowsPerBlock));
    if (n_in % 64 == 0) {
        SkinnyGemmKernel<WT, kNt, 4>
            <<<grid, kSkWarps * 32, 0, stream>>>(x, x_ld, rows, w, w_ld, n_in, y, y_ld, accumulate);
    } else {
        SkinnyGemmKernel<WT, kNt, 2>
            <<<grid, kSkWarps * 32, 0, stream>>>(x, x_ld, rows, w, w_ld, n_in, y, y_ld, accumulate);
    }
    UA_CUDA_CHECK_LAUNCH(SkinnyGemmKernel);
}

template <typename WT>
void SkinnyRows(const float* x, int64_t x_ld, int rows, const WT* w, int64_t w_ld, int64_t n_out, int64_t n_in,
                float* y, int64_t y_ld, bool accumulate, cudaStream_t stream) {
    if (rows <= 8) {
        LaunchSkinny<WT, 1>(x, x_ld, rows, w, w_ld, n_out, n_in, y, y_ld, accumulate, stream);
    } else if (rows <= 16) {
        LaunchSkinny<WT, 2>(x, x_ld, rows, w, w_ld, n_out, n_in, y, y_ld, accumulate, stream);
    } else {
        LaunchSkinny<WT, 4>(x, x_ld, rows, w, w_ld, n_out, n_in, y, y_ld, accumulate, stream);
    }
}

}  // namespace

bool SkinnyGemmFits(const float* x, int64_t x_ld, int rows, const void* w, DType w_dtype, int64_t w_ld, int64_t n_out,
                    int64_t n_in) {
    const auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
    return (w_dtype == DType::kF16 || w_dtype == DType::kBF16) && rows >= 1 && rows <= kSkinnyMaxRows &&
           n_out % kSkRowsPerBlock == 0 && n_in % kSkMinChunk == 0 && w_ld % 8 == 0 && x_ld % 4 == 0 && aligned16(w) &&
           aligned16(x) && n_out / kSkRowsPerBlock <= INT32_MAX;
}

void SkinnyGemm(const float* x, int64_t x_ld, int rows, const void* w, DType w_dtype, int64_t w_ld, int64_t n_out,
                int64_t n_in, float* y, int64_t y_ld, bool accumulate, cudaStream_t stream) {
    if (w_dtype == DType::kF16) {
        SkinnyRows(x, x_ld, rows, static_cast<const __half*>(w), w_ld, n_out, n_in, y, y_ld, accumulate, stream);
    } else {
        SkinnyRows(x, x_ld, rows, static_cast<const __nv_bfloat16*>(w), w_ld, n_out, n_in, y, y_ld, accumulate, stream);
    }
}

}  // namespace uniattn::cuda
