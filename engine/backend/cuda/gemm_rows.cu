// GEMMs of 1-64 rows (decode batches) on mma.sync, written for the weight-bound regime: every weight byte is read
// from memory once, straight into the registers of the warp that multiplies it (no shared-memory staging of
// weights), with several loads in flight per lane; only the few activation rows are staged in shared memory.
// fp8 e4m3 weights are widened to the activations' 16-bit type in registers (exact), so an fp8 model reads half of
// fp16's bytes without rounding its activations to fp8 (weight-only fp8: the activations are rounded to 16 bits, as
// for 16-bit weights).
//
// Layout ("swap AB"): the mma's M dimension is the output channel, N the activation row. A warp owns 32 output
// channels (two m16 tiles) and every activation row (up to eight n8 tiles); a block of 4 warps owns 128 channels.
// The input dimension goes in rounds of 64: lane (g, t) of a warp (g = lane / 4, t = lane % 4) loads input elements
// [16t, 16t + 16) of the round for its channel rows g and g + 8 of each m-tile (32 bytes of a 16-bit row, 16 of an
// fp8 one; 64 or 128 contiguous bytes per channel row per round across the four lanes of one g). The mma's k index
// is a permutation of the input index, the same for A and B (a dot product does not care about the order of its
// terms): in k16 step s of a round, lane t's logical columns 2t, 2t + 1, 2t + 8, 2t + 9 are its input elements
// 4s .. 4s + 3. So a lane's B fragments of a round are 16 consecutive activations of one row: two 16-byte shared loads.
//
// The input dimension is also split over blocks (`splits` parts, so that matrices of few output tiles fill the
// device); each part's fp32 sums go to a scratch buffer and the last block of an output tile to finish adds them in
// split order (a counter per tile), so the result does not depend on which block finishes first. The split is a
// function of the matrix shape only, and every output element is its own mma accumulation in a fixed k order, so a
// row's result is the same in any batch of 1-64 rows.
//
// Fused inputs (RowGemmFused, up to kRowGemmFusedMaxRows rows): the activations come as fp32 rows and become the 16-bit
// values that the separate kernels (RmsNorm16, SiluMul16, SplitHiLo) would have written, while they are staged: the
// chunk's fp32 values go to shared memory by cp.async, and each lane turns its 16 values of a round into its B
// fragment (the norm: x · inv · w with 1/rms computed by the block in RowInvRms's exact order; silu(gate) · up; or x
// alone), rounded once to the 16-bit type. The same bits as the two launches (tested), without the second launch:
// at batch 1 a decode step runs 3 such small kernels a layer, about 4 us each plus the gap between launches.
#include <algorithm>
#include <tuple>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/mma.cuh"

namespace uniattn::cuda {
namespace {

constexpr int kRgWarps = 4;
constexpr int kRgThreads = 32 * kRgWarps;
constexpr int kRgWarpChannels = 32;                     // output channels per warp (two m16 tiles)
constexpr int kRgRound = 64;                            // input elements per round (4 lanes x 16)
constexpr int kRgChunk = 256;                           // input elements staged per chunk
constexpr int kRgRoundsPerChunk = kRgChunk / kRgRound;  // 4
// Staged 16-bit elements per activation row: 528 bytes (16 mod 128), so the two rows that a quarter-warp's
// 16-byte loads touch land in different banks.
constexpr int kRgRowStride = kRgChunk + 8;
// Staged fp32 elements per row for fused inputs: 1040 bytes (16 mod 128), for the same reason.
constexpr int kRgRowStrideF = kRgChunk + 4;
static_assert(kRowGemmTile == kRgWarps * kRgWarpChannels, "a block's output channels");

// The activation input of RowGemmKernel: 16-bit rows (staged as they are), or fp32 rows turned into 16-bit values as
// they are staged (kNT == 1 only).
enum RgIn : int { kIn16 = 0, kInF32 = 1, kInNorm = 2, kInSiluMul = 3 };
constexpr RgIn ToRgIn(RowGemmInputOp op) {
    return op == RowGemmInputOp::kNorm ? kInNorm : (op == RowGemmInputOp::kSiluMul ? kInSiluMul : kInF32);
}
// Fused inputs: x [rows, n_in] fp32 (row stride x_ld; kInSiluMul: [gate | up], up at column n_in); kInNorm: the norm
// weights (fp32 [n_in]), eps, and the row plan of the separate norm kernel (PlanRowVec: vthreads threads of `slots`
// 4-element slots), whose sum order the block reproduces.
struct RgFused {
    const float* x = nullptr;
    int64_t x_ld = 0;
    const float* norm_w = nullptr;
    float eps = 0.f;
    int vthreads = 0, slots = 0;
};

// 1/rms of rows 0 .. rows-1 of f.x (kInNorm), in RowInvRms's order: virtual thread v (of f.vthreads) sums the squares
// of its slots j (elements 4(v + j·vthreads) ..) by fused multiply-adds in slot order, virtual warps of 32 by the xor
// tree (WarpSum), then the virtual warps in order. Real warp w plays the virtual warps w, w + 4, ...; a lane's loads
// go out eight at a time. inv[r] for r >= rows is 0. part: [kRows][32] shared scratch.
template <int kRows>
__device__ void RowGemmInvRms(const RgFused& f, int rows, int64_t n_in, float (*part)[32], float* inv) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int vwarps = f.vthreads / 32;
    const int per_row = (vwarps - warp + kRgWarps - 1) / kRgWarps * f.slots;  // this warp's (vwarp, slot) items
    const int items = per_row * rows;
    const int64_t quads = n_in / 4;
    float ss = 0.f;
    for (int i0 = 0; i0 < items; i0 += 8) {
        float4 v[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const int it = i0 + k;
            v[k] = make_float4(0.f, 0.f, 0.f, 0.f);
            if (it < items) {
                const int r = it / per_row, vw = warp + (it % per_row) / f.slots * kRgWarps, j = it % f.slots;
                const int64_t q = static_cast<int64_t>(vw) * 32 + lane + static_cast<int64_t>(j) * f.vthreads;
                if (q < quads) v[k] = *reinterpret_cast<const float4*>(f.x + r * f.x_ld + 4 * q);
            }
        }
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const int it = i0 + k;
            if (it >= items) break;
            ss = __fmaf_rn(v[k].x, v[k].x, ss);
            ss = __fmaf_rn(v[k].y, v[k].y, ss);
            ss = __fmaf_rn(v[k].z, v[k].z, ss);
            ss = __fmaf_rn(v[k].w, v[k].w, ss);
            if (it % f.slots == f.slots - 1) {  // a virtual thread's last slot: its warp's sum
                const float sum = WarpSum(ss);
                if (lane == 0) part[it / per_row][warp + (it % per_row) / f.slots * kRgWarps] = sum;
                ss = 0.f;
            }
        }
    }
    __syncthreads();
    if (threadIdx.x < kRows) {
        float r_inv = 0.f;
        if (static_cast<int>(threadIdx.x) < rows) {
            float total = 0.f;
            for (int i = 0; i < vwarps; ++i) total = total + part[threadIdx.x][i];
            r_inv = 1.0f / sqrtf(total / static_cast<float>(n_in) + f.eps);
        }
        inv[threadIdx.x] = r_inv;
    }
}

// fp8 e4m3 pair (the low 16 bits) to a 16-bit pair of AT, exact: fp16 by cvt.rn.f16x2.e4m3x2; bf16 through fp32
// (E4m3BitsToFloat, integer operations) and one cvt.rn.bf16x2.f32 (every e4m3 value is a bf16 value).
template <typename AT>
__device__ __forceinline__ uint32_t WidenE4m3x2(uint32_t two) {
    if constexpr (std::is_same_v<AT, __half>) {
        return E4m3x2ToHalf2(two);
    } else {
        const __nv_bfloat162 p = __floats2bfloat162_rn(E4m3BitsToFloat(two), E4m3BitsToFloat(two >> 8));
        uint32_t r;
        memcpy(&r, &p, 4);
        return r;
    }
}

// One lane's weights of one round for one channel row: 16 input elements (two 16-byte words of a 16-bit row, one of
// an fp8 row).
template <typename WT>
struct RgRow {
    static constexpr int kWords = sizeof(WT) == 1 ? 1 : 2;
    uint4 w[kWords];
    __device__ __forceinline__ void Load(const WT* __restrict__ p) {
#pragma unroll
        for (int i = 0; i < kWords; ++i) w[i] = __ldg(reinterpret_cast<const uint4*>(p) + i);
    }
    // The 32-bit A-fragment word of elements (4s + 2h, 4s + 2h + 1): h = 0 for columns 2t, 2t + 1, h = 1 for 2t + 8, 2t
    // + 9.
    template <typename AT>
    __device__ __forceinline__ uint32_t Pair(int s, int h) const {
        if constexpr (sizeof(WT) == 1) {
            const uint32_t word = Word(w[0], s);
            return WidenE4m3x2<AT>(h == 0 ? word : word >> 16);
        } else {
            return Word(w[s / 2], (s % 2) * 2 + h);
        }
    }
};

// y [rows, n_out] (+)= x [rows, n_in] · w^T over input chunks [c_begin, c_end) of this block's split.
//   grid (ceil(n_out / 128), splits); dynamic shared memory: 2 x kNT·8 x kRgRowStride elements of AT.
// WT: the weights' element type (AT, or __nv_fp8_e4m3); AT: the activations' (__half, __nv_bfloat16);
// kNT: n8 tiles of activation rows (rows <= 8·kNT); kU: rounds of weights in flight per lane (divides 4); kIn: the
// activation input (x: 16-bit rows, dense; f: fp32 rows and what to apply to them, kNT == 1).
template <typename WT, typename AT, int kNT, int kU, int kIn>
__global__ __launch_bounds__(kRgThreads) void RowGemmKernel(const AT* __restrict__ x, RgFused f, int rows,
                                                            const WT* __restrict__ w, int64_t w_ld,
                                                            const float* __restrict__ w_scale, int64_t n_out,
                                                            int64_t n_in, float* __restrict__ y, int64_t y_ld,
                                                            bool accumulate, float* __restrict__ partial,
                                                            unsigned* __restrict__ counters) {
    static_assert(kRgRoundsPerChunk % kU == 0, "rounds in flight divide a chunk's rounds");
    static_assert(kIn == kIn16 || kNT == 1, "fused inputs: up to 8 rows");
    constexpr bool kF32In = kIn != kIn16;
    using ST = std::conditional_t<kF32In, float, AT>;  // the staged element type
    constexpr int kStride = kF32In ? kRgRowStrideF : kRgRowStride;
    constexpr int kRows = kNT * 8;
    extern __shared__ uint4 rg_smem[];
    ST* staged = reinterpret_cast<ST*>(rg_smem);  // [2][kRows][kStride]; kInSiluMul: then the up halves, the same
    ST* staged_up = staged + 2 * kRows * kStride;
    float* staged_nw = reinterpret_cast<float*>(staged) + 2 * kRows * kStride;  // kInNorm: [2][kRgChunk]
    __shared__ bool last_block;
    __shared__ float norm_part[kIn == kInNorm ? kRows : 1][32];
    __shared__ float norm_inv[kIn == kInNorm ? kRows : 1];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int splits = gridDim.y, split = blockIdx.y;
    const int64_t n_chunks = n_in / kRgChunk;
    const int64_t c_begin = n_chunks * split / splits, c_end = n_chunks * (split + 1) / splits;
    const int n_rounds = static_cast<int>(c_end - c_begin) * kRgRoundsPerChunk;
    const int64_t k_begin = c_begin * kRgChunk;

    // This lane's four channel rows (m-tile mt, half h: rows g and g + 8), clamped into the matrix (rows past
    // n_out load the last row and are never stored).
    const int64_t tile = static_cast<int64_t>(blockIdx.x) * kRowGemmTile + warp * kRgWarpChannels;
    const WT* wrow[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int64_t o = min(tile + mt * 16 + h * 8 + g, n_out - 1);
            wrow[mt][h] = w + o * w_ld + k_begin + t * 16;
        }
    }
    // Weights are never written during a step: the first rounds' loads go out before waiting for the previous
    // kernel (programmatic dependent launch).
    RgRow<WT> ring[kU][2][2];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
        if (u < n_rounds) {
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
                for (int h = 0; h < 2; ++h) ring[u][mt][h].Load(wrow[mt][h] + u * kRgRound);
            }
        }
    }
    PdlEnter();

    // Stages chunk c (of this split) into buffer c & 1: rows past `rows` are zero-filled.
    auto stage = [&](int c) {
        ST* buf = staged + (c & 1) * kRows * kStride;
        const int64_t k0 = k_begin + static_cast<int64_t>(c) * kRgChunk;
        constexpr int kPerPiece = 16 / static_cast<int>(sizeof(ST));  // elements per 16-byte piece
        constexpr int kRowPieces = kRgChunk / kPerPiece;
        constexpr int kPieces = kRows * kRowPieces;
#pragma unroll
        for (int p = threadIdx.x; p < kPieces; p += kRgThreads) {
            const int r = p / kRowPieces, piece = p % kRowPieces;
            const bool valid = r < rows;
            if constexpr (kF32In) {
                const float* src = f.x + (valid ? static_cast<int64_t>(r) * f.x_ld + k0 + piece * kPerPiece : 0);
                CpAsync16(buf + r * kStride + piece * kPerPiece, src, valid);
                if constexpr (kIn == kInSiluMul) {
                    CpAsync16(staged_up + (c & 1) * kRows * kStride + r * kStride + piece * kPerPiece,
                              valid ? src + n_in : f.x, valid);
                }
            } else {
                const AT* src = x + (valid ? static_cast<int64_t>(r) * n_in + k0 + piece * kPerPiece : 0);
                CpAsync16(buf + r * kStride + piece * kPerPiece, src, valid);
            }
        }
        if constexpr (kIn == kInNorm) {
            for (int p = threadIdx.x; p < kRgChunk / 4; p += kRgThreads) {
                CpAsync16(staged_nw + (c & 1) * kRgChunk + p * 4, f.norm_w + k0 + p * 4, true);
            }
        }
        CpAsyncCommit();
    };

    float acc[2][kNT][4];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int j = 0; j < kNT; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mt][j][e] = 0.f;
        }
    }

    const int my_chunks = static_cast<int>(c_end - c_begin);
    if (my_chunks > 0) stage(0);
    if constexpr (kIn == kInNorm) RowGemmInvRms<kRows>(f, rows, n_in, norm_part, norm_inv);  // read after a barrier
    for (int c = 0; c < my_chunks; ++c) {
        if (c + 1 < my_chunks) {
            stage(c + 1);
        } else {
            CpAsyncCommit();  // an empty group keeps the wait below at "all but the newest"
        }
        CpAsyncWait<1>();
        __syncthreads();
        const ST* buf = staged + (c & 1) * kRows * kStride;
#pragma unroll
        for (int r = 0; r < kRgRoundsPerChunk; ++r) {
            const int slot = r % kU;
            // A fragments of the round's four k16 steps, both m-tiles.
            uint32_t a[2][4][4];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
                for (int s = 0; s < 4; ++s) {
                    a[mt][s][0] = ring[slot][mt][0].template Pair<AT>(s, 0);
                    a[mt][s][1] = ring[slot][mt][1].template Pair<AT>(s, 0);
                    a[mt][s][2] = ring[slot][mt][0].template Pair<AT>(s, 1);
                    a[mt][s][3] = ring[slot][mt][1].template Pair<AT>(s, 1);
                }
            }
            // The slot is free again: the round kU ahead goes out now.
            const int next = c * kRgRoundsPerChunk + r + kU;
            if (next < n_rounds) {
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
                    for (int h = 0; h < 2; ++h)
                        ring[slot][mt][h].Load(wrow[mt][h] + static_cast<int64_t>(next) * kRgRound);
                }
            }
#pragma unroll
            for (int j = 0; j < kNT; ++j) {
                uint32_t b[8];
                if constexpr (kF32In) {
                    // 16 fp32 values of row g, the same expressions as the separate kernels, rounded once.
                    const int off = g * kStride + r * kRgRound + t * 16;
                    float e[16];
#pragma unroll
                    for (int q = 0; q < 4; ++q) {
                        const float4 v = *reinterpret_cast<const float4*>(buf + off + 4 * q);
                        e[4 * q] = v.x;
                        e[4 * q + 1] = v.y;
                        e[4 * q + 2] = v.z;
                        e[4 * q + 3] = v.w;
                    }
                    if constexpr (kIn == kInNorm) {
                        const float inv = norm_inv[g];
                        const float* nw = staged_nw + (c & 1) * kRgChunk + r * kRgRound + t * 16;
#pragma unroll
                        for (int q = 0; q < 4; ++q) {
                            const float4 wv = *reinterpret_cast<const float4*>(nw + 4 * q);
                            e[4 * q] = e[4 * q] * inv * wv.x;
                            e[4 * q + 1] = e[4 * q + 1] * inv * wv.y;
                            e[4 * q + 2] = e[4 * q + 2] * inv * wv.z;
                            e[4 * q + 3] = e[4 * q + 3] * inv * wv.w;
                        }
                    }
                    if constexpr (kIn == kInSiluMul) {
                        const float* up = staged_up + (c & 1) * kRows * kStride + off;
#pragma unroll
                        for (int q = 0; q < 4; ++q) {
                            const float4 u = *reinterpret_cast<const float4*>(up + 4 * q);
                            const float uu[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
                            for (int i = 0; i < 4; ++i) {
                                const float gv = e[4 * q + i];
                                e[4 * q + i] = gv / (1.0f + expf(-gv)) * uu[i];
                            }
                        }
                    }
#pragma unroll
                    for (int i = 0; i < 8; ++i) b[i] = PackPair(FromFloat<AT>(e[2 * i]), FromFloat<AT>(e[2 * i + 1]));
                } else {
                    const AT* xr = buf + (j * 8 + g) * kStride + r * kRgRound + t * 16;
                    const uint4 b0 = *reinterpret_cast<const uint4*>(xr);
                    const uint4 b1 = *reinterpret_cast<const uint4*>(xr + 8);
                    b[0] = b0.x, b[1] = b0.y, b[2] = b0.z, b[3] = b0.w;
                    b[4] = b1.x, b[5] = b1.y, b[6] = b1.z, b[7] = b1.w;
                }
#pragma unroll
                for (int s = 0; s < 4; ++s) {
#pragma unroll
                    for (int mt = 0; mt < 2; ++mt) Mma16816<AT>(acc[mt][j], a[mt][s], b[2 * s], b[2 * s + 1]);
                }
            }
        }
        __syncthreads();  // buffer c & 1 is staged again for chunk c + 2
    }

    // Accumulator e of (mt, j): channel tile + mt·16 + g (+8 for e >= 2), activation row j·8 + 2t (+1 for odd e).
    // Without a split each goes to y; with one, this part's sums go to partial [splits, rows, n_out] and the tile's
    // last block adds the parts in order.
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int j = 0; j < kNT; ++j) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int64_t o = tile + mt * 16 + g + (e >> 1) * 8;
                const int n = j * 8 + 2 * t + (e & 1);
                if (o >= n_out || n >= rows) continue;
                float v = acc[mt][j][e];
                if (splits > 1) {
                    partial[(static_cast<int64_t>(split) * rows + n) * n_out + o] = v;
                } else {
                    if constexpr (sizeof(WT) == 1) v *= w_scale[o];
                    float* dst = y + n * y_ld + o;
                    *dst = accumulate ? *dst + v : v;
                }
            }
        }
    }
    if (splits == 1) return;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last_block = atomicAdd(&counters[blockIdx.x], 1u) == static_cast<unsigned>(splits - 1);
    __syncthreads();
    if (!last_block) return;
    __threadfence();
    // Eight rows at a time, so that eight independent loads are in flight per thread (one row at a time made the
    // sum a chain of dependent L2 round trips: 64 rows took about 1 us per row on an H100).
    const int64_t o = static_cast<int64_t>(blockIdx.x) * kRowGemmTile + threadIdx.x;
    if (o < n_out) {
        const float scale = sizeof(WT) == 1 ? w_scale[o] : 1.0f;
        for (int n0 = 0; n0 < rows; n0 += 8) {
            float v[8];
#pragma unroll
            for (int k = 0; k < 8; ++k) v[k] = 0.f;
            for (int p = 0; p < splits; ++p) {
                const float* part = partial + (static_cast<int64_t>(p) * rows + n0) * n_out + o;
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    if (n0 + k < rows) v[k] += __ldcg(part + k * n_out);
                }
            }
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                if (n0 + k < rows) {
                    float* dst = y + (n0 + k) * y_ld + o;
                    const float s = sizeof(WT) == 1 ? v[k] * scale : v[k];
                    *dst = accumulate ? *dst + s : s;
                }
            }
        }
    }
    if (threadIdx.x == 0) counters[blockIdx.x] = 0;  // for the next launch (a later kernel waits for this one)
}

template <int kIn>
size_t RowGemmSmem(int n_tiles) {
    if constexpr (kIn == kIn16) return sizeof(uint16_t) * 2 * n_tiles * 8 * kRgRowStride;
    const size_t buf = sizeof(float) * 2 * n_tiles * 8 * kRgRowStrideF;
    return kIn == kInSiluMul ? 2 * buf : (kIn == kInNorm ? buf + sizeof(float) * 2 * kRgChunk : buf);
}

// Raises the kernel's dynamic shared-memory limit once per (device, instantiation).
template <typename WT, typename AT, int kNT, int kU, int kIn>
void PrepareRowGemm() {
    OptInSharedMemory(reinterpret_cast<const void*>(RowGemmKernel<WT, AT, kNT, kU, kIn>), RowGemmSmem<kIn>(kNT));
}

template <typename WT, typename AT, int kNT, int kIn = kIn16>
void LaunchRowGemm(const AT* x, const RgFused& f, int rows, const WT* w, int64_t w_ld, const float* w_scale,
                   int64_t n_out, int64_t n_in, float* y, int64_t y_ld, bool accumulate, int splits, float* partial,
                   unsigned* counters, Stream stream) {
    // 256 bytes of weights in flight per lane: four rounds of fp8, two of 16-bit.
    constexpr int kU = sizeof(WT) == 1 ? 4 : 2;
    PrepareRowGemm<WT, AT, kNT, kU, kIn>();
    const dim3 grid(static_cast<unsigned>(RowGemmTiles(n_out)), static_cast<unsigned>(splits));
    LaunchKernel(kIn == kIn16 ? "RowGemmKernel" : "RowGemmKernel (fused input)", RowGemmKernel<WT, AT, kNT, kU, kIn>,
                 grid, kRgThreads, RowGemmSmem<kIn>(kNT), stream, x, f, rows, w, w_ld, w_scale, n_out, n_in, y, y_ld,
                 accumulate, partial, counters);
}

// Launches the instantiation for the rows (n8 tiles of 1, 2, 4 or 8); fused inputs (f != nullptr) take one tile.
template <typename WT, typename AT>
void RowGemmTyped(const void* x, const RgFused* f, RgIn in, int rows, const void* w, int64_t w_ld, const float* w_scale,
                  int64_t n_out, int64_t n_in, float* y, int64_t y_ld, bool accumulate, int splits, float* partial,
                  unsigned* counters, Stream stream) {
    const auto* xa = static_cast<const AT*>(x);
    const auto* wt = static_cast<const WT*>(w);
    auto launch = [&](auto nt, auto kin) {
        LaunchRowGemm<WT, AT, decltype(nt)::value, decltype(kin)::value>(xa, f != nullptr ? *f : RgFused{}, rows, wt,
                                                                         w_ld, w_scale, n_out, n_in, y, y_ld,
                                                                         accumulate, splits, partial, counters, stream);
    };
    using One = std::integral_constant<int, 1>;
    if (f != nullptr) {
        UA_CHECK(rows <= 8);
        switch (in) {
            case kInNorm:
                launch(One{}, std::integral_constant<int, kInNorm>{});
                return;
            case kInSiluMul:
                launch(One{}, std::integral_constant<int, kInSiluMul>{});
                return;
            default:
                launch(One{}, std::integral_constant<int, kInF32>{});
                return;
        }
    }
    using In16 = std::integral_constant<int, kIn16>;
    const int n_tiles = (rows + 7) / 8;
    if (n_tiles <= 1) {
        launch(One{}, In16{});
    } else if (n_tiles <= 2) {
        launch(std::integral_constant<int, 2>{}, In16{});
    } else if (n_tiles <= 4) {
        launch(std::integral_constant<int, 4>{}, In16{});
    } else {
        launch(std::integral_constant<int, 8>{}, In16{});
    }
}

// Calls fn.template operator()<WT, AT>() for the weight and activation types.
template <typename Fn>
void DispatchRowGemm(DType x_dtype, DType w_dtype, Fn&& fn) {
    if (x_dtype == DType::kF16) {
        if (w_dtype == DType::kF8E4M3) {
            fn.template operator()<__nv_fp8_e4m3, __half>();
        } else {
            fn.template operator()<__half, __half>();
        }
    } else if (w_dtype == DType::kF8E4M3) {
        fn.template operator()<__nv_fp8_e4m3, __nv_bfloat16>();
    } else {
        fn.template operator()<__nv_bfloat16, __nv_bfloat16>();
    }
}

}  // namespace

int64_t RowGemmTiles(int64_t n_out) { return (n_out + kRowGemmTile - 1) / kRowGemmTile; }

int RowGemmSplits(int64_t n_out, int64_t n_in, int num_sms, int forced) {
    const int64_t chunks = n_in / kRgChunk;
    if (chunks <= 0) return 1;
    // About two blocks per SM (the 64-row kernel holds two per SM): 4096-channel matrices (32 tiles) split in 9,
    // the widest (gate_up, lm_head) not at all.
    const int64_t want =
        forced > 0 ? forced : (2 * static_cast<int64_t>(num_sms) + RowGemmTiles(n_out) - 1) / RowGemmTiles(n_out);
    return static_cast<int>(std::clamp<int64_t>(want, 1, std::min<int64_t>(chunks, kRowGemmMaxSplits)));
}

bool RowGemmSupports(int rows, DType x_dtype, const void* w, DType w_dtype, int64_t w_ld, int64_t n_in) {
    const bool x_ok = x_dtype == DType::kF16 || x_dtype == DType::kBF16;
    const bool w_ok = w_dtype == x_dtype || w_dtype == DType::kF8E4M3;
    return rows >= 1 && rows <= kRowGemmMaxRows && x_ok && w_ok && n_in > 0 && n_in % kRgChunk == 0 &&
           (w_ld * static_cast<int64_t>(DTypeBytes(w_dtype))) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
}

void RowGemm(const void* x, DType x_dtype, int rows, const void* w, DType w_dtype, int64_t w_ld, const float* w_scale,
             int64_t n_out, int64_t n_in, float* y, int64_t y_ld, bool accumulate, int splits, float* partial,
             unsigned* counters, Stream stream) {
    UA_CHECK(RowGemmSupports(rows, x_dtype, w, w_dtype, w_ld, n_in));
    UA_CHECK(splits >= 1 && splits <= kRowGemmMaxSplits);
    UA_CHECK(reinterpret_cast<uintptr_t>(x) % 16 == 0);
    UA_CHECK(w_dtype != DType::kF8E4M3 || w_scale != nullptr);
    if (n_out == 0) return;
    DispatchRowGemm(x_dtype, w_dtype, [&]<typename WT, typename AT>() {
        RowGemmTyped<WT, AT>(x, nullptr, kIn16, rows, w, w_ld, w_scale, n_out, n_in, y, y_ld, accumulate, splits,
                             partial, counters, stream);
    });
}

bool RowGemmFusedSupports(RowGemmInputOp op, int rows, const float* x, int64_t x_ld, int64_t n_in,
                          const float* norm_w) {
    const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 && x_ld % 4 == 0;
    if (rows < 1 || rows > kRowGemmFusedMaxRows || !aligned || n_in % kRgChunk != 0) return false;
    if (op != RowGemmInputOp::kNorm) return true;
    // The norm: at most kRowGemmFusedNormMaxRows rows (each block reads the whole rows for 1/rms), and the row plan
    // of the separate norm kernel, whose sum order the block reproduces.
    int threads = 0, slots = 0;
    return rows <= kRowGemmFusedNormMaxRows && norm_w != nullptr && reinterpret_cast<uintptr_t>(norm_w) % 16 == 0 &&
           RowNormPlan(x, x_ld, n_in, &threads, &slots);
}

void RowGemmFused(RowGemmInputOp op, const float* x, int64_t x_ld, const float* norm_w, float eps, DType x_dtype,
                  int rows, const void* w, DType w_dtype, int64_t w_ld, const float* w_scale, int64_t n_out,
                  int64_t n_in, float* y, int64_t y_ld, bool accumulate, int splits, float* partial, unsigned* counters,
                  Stream stream) {
    UA_CHECK(RowGemmSupports(rows, x_dtype, w, w_dtype, w_ld, n_in));
    UA_CHECK(RowGemmFusedSupports(op, rows, x, x_ld, n_in, norm_w));
    UA_CHECK(splits >= 1 && splits <= kRowGemmMaxSplits);
    UA_CHECK(w_dtype != DType::kF8E4M3 || w_scale != nullptr);
    if (n_out == 0) return;
    RgFused f;
    f.x = x;
    f.x_ld = x_ld;
    if (op == RowGemmInputOp::kNorm) {
        f.norm_w = norm_w;
        f.eps = eps;
        UA_CHECK(RowNormPlan(x, x_ld, n_in, &f.vthreads, &f.slots));
    }
    DispatchRowGemm(x_dtype, w_dtype, [&]<typename WT, typename AT>() {
        RowGemmTyped<WT, AT>(nullptr, &f, ToRgIn(op), rows, w, w_ld, w_scale, n_out, n_in, y, y_ld, accumulate, splits,
                             partial, counters, stream);
    });
}

}  // namespace uniattn::cuda
