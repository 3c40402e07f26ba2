// Attention over the paged KV cache, and UniAttn's reuse-layer P·V (docs/uniattn.md §4, method 2: pass P).
//
// Decode (sequences with one query token): split-K over the context ("flash decoding"). A block owns one
// such sequence's token, one KV head and up to kMaxRep of the query heads that share it, and one chunk of
// the context: K and V rows are read once for all those heads. Lanes work in groups of kGroup, each group
// streaming its share of the chunk's cached tokens with several tokens' loads in flight, each lane on kElems
// consecutive elements of the head (16-byte loads for fp16 head_dim 128/64). Every lane group keeps its own
// online softmax per head, merged across groups and warps at the end of the chunk (the chunk's scores are
// never held in shared memory). A context of one split is written out normalised; otherwise each split emits
// an unnormalised partial output with its (max, sum), and the splits are merged in split order, by the last
// split block to finish (small batches) or by a separate combine kernel.
//
// Prefill (sequences with a multi-token chunk): flash-style tiles. A block owns kBq query tokens of one
// sequence and one query head, walks the cache in tiles of kBk tokens with an online softmax, and never
// materialises the score matrix. With tensor cores (16-bit or fp8 planes, head_dim 64/128) PrefillMmaKernel
// does the same on mma.sync with 64 x 64 tiles staged in shared memory; otherwise PrefillKernel on CUDA cores.
//
// fp8 e4m3 planes (PagedBatch::k_scale / v_scale): the CUDA-core kernels (DecodeStreamKernel, PrefillKernel)
// multiply each element read by its KV head's scale (Dequant). GQA decode with tensor cores (head_dim 64/128)
// runs DecodeMmaKernel on them: the e4m3 bytes are widened to fp16 in registers (exact) and the scales are
// applied once per block, K's to the scores and V's to the output. PrefillMmaKernel stages fp8 tiles as they are
// stored and widens them to fp16 in shared memory before its mma.sync reads them, with the scales applied the same
// way.
//
// Sliding window (Mistral): a token at pos attends to pos - W < j <= pos. Decode splits cut only the window
// (SplitsFor), so positions before it cost no block and no load; prefill tiles start at the window of the
// tile's first query row; masked columns inside a tile are skipped like the causal ones. The anchor's P is 0
// before the window (the normalise pass writes it), and reuse layers read P in the window only.
//
// Batch invariance: which kernel runs a token, how its context is cut into splits (SplitsFor) and the
// order of every sum depend only on the token's own sequence, so a sequence gets bit-identical results
// alone or in any batch.
//
// Probabilities for anchors: the kernels write raw scaled scores into `probs` and the final (max, sum)
// of each row into `stats`; a last pass normalises the rows in place.
#include <algorithm>
#include <cfloat>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"
#include "backend/cuda/mma.cuh"

namespace uniattn::cuda {
namespace {

constexpr int kDecodeThreads = 128;
constexpr int kDecodeWarps = kDecodeThreads / 32;
constexpr int kMaxRep = 4;         // query heads per decode block
constexpr int kMinChunk = 128;     // context tokens per decode split: at least (by default),
constexpr int kMaxChunk = 2048;    // at most (longer contexts get more splits instead),
constexpr int kTargetSplits = 16;  // and about this many splits per token in between
constexpr int kGenericMaxHeadDim = 128;
constexpr int kFusedMergeMaxSeqs = 4;  // decode sequences up to which the last split block merges
constexpr int kGenericElems = kGenericMaxHeadDim / 32;

constexpr int kBq = 32;               // prefill: query tokens per block
constexpr int kBk = 32;               // prefill: cached tokens per tile
constexpr int kPrefillThreads = 128;  // 4 threads per query row

// The fewest context tokens of a decode split for a batch (PagedBatch::decode_min_chunk, else kMinChunk).
__host__ __device__ __forceinline__ int MinChunk(const PagedBatch& b) {
    return b.decode_min_chunk > 0 ? b.decode_min_chunk : kMinChunk;
}

// Context tokens per split for a token that attends to n_ctx positions (a function of n_ctx and the
// backend's fixed minimum alone).
__host__ __device__ __forceinline__ int ChunkFor(int n_ctx, int min_chunk) {
    int chunk = (n_ctx + kTargetSplits - 1) / kTargetSplits;
    chunk = (chunk + 31) / 32 * 32;
    return chunk < min_chunk ? min_chunk : (chunk > kMaxChunk ? kMaxChunk : chunk);
}

// The first position a token at `pos` attends to: under a sliding window of `window` tokens (> 0) the
// positions pos - window < j <= pos, else the whole causal prefix.
__host__ __device__ __forceinline__ int WindowStart(int pos, int window) {
    return window > 0 && pos >= window ? pos - window + 1 : 0;
}

// How a decode token's attended positions [begin, begin + num_splits · chunk) ∩ [begin, pos] are cut into
// splits: only the window is split (positions before it get no split block at all), and the cut depends on
// the window's length alone, so it is the same for the token in any batch.
struct DecodeSplits {
    int begin, chunk, num_splits;
};
__device__ __forceinline__ DecodeSplits SplitsFor(int pos, const PagedBatch& b) {
    DecodeSplits d;
    d.begin = WindowStart(pos, b.sliding_window);
    const int n = pos + 1 - d.begin;
    d.chunk = ChunkFor(n, MinChunk(b));
    d.num_splits = (n + d.chunk - 1) / d.chunk;
    return d;
}

// Element offset of (position j of the sequence with block table `table`, kv head) in a plane.
__device__ __forceinline__ int64_t KvOffset(const int32_t* __restrict__ table, int j, int block_size, int num_kv_heads,
                                            int kv_head, int head_dim) {
    const int64_t slot = static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size;
    return (slot * num_kv_heads + kv_head) * static_cast<int64_t>(head_dim);
}

// Lane g of a group holds elements [g·kElems, (g+1)·kElems) (specialised head_dim) or g, g+32, ...
// (generic: kHd == 0, kGroup == 32).
template <int kHd, int kGroup>
struct LaneMap {
    static constexpr int kElems = kHd > 0 ? kHd / kGroup : kGenericElems;
    static_assert(kHd == 0 || kHd % kGroup == 0, "head_dim must split evenly over the group");
    static_assert(kHd > 0 || kGroup == 32, "the generic head_dim path uses whole warps");
    __device__ static __forceinline__ int Elem(int g, int i) { return kHd > 0 ? g * kElems + i : g + i * 32; }
    template <typename T>
    __device__ static __forceinline__ void Load(const T* __restrict__ row, int g, int hd, float (&out)[kElems]) {
        if constexpr (kHd > 0) {
            LoadFloats<T, kElems>(row + g * kElems, out);
        } else {
#pragma unroll
            for (int i = 0; i < kElems; ++i) out[i] = Elem(g, i) < hd ? ToFloat(row[Elem(g, i)]) : 0.f;
        }
    }
};

// fp8 e4m3 planes hold x / scale[kv head] (PagedBatch::k_scale, v_scale): every K or V element read from one is
// multiplied by its head's scale, the CPU backend's dequantized value bit for bit. 16/32-bit planes are read as
// they are (no multiply).
template <typename T>
inline constexpr bool kFp8Kv = std::is_same_v<T, __nv_fp8_e4m3>;
template <typename T>
__device__ __forceinline__ float KvScale(const float* __restrict__ scale, int kv_head) {
    return kFp8Kv<T> && scale != nullptr ? __ldg(scale + kv_head) : 1.0f;
}
template <typename T>
__device__ __forceinline__ float Dequant(float raw, float scale) {
    if constexpr (kFp8Kv<T>) {
        return raw * scale;
    } else {
        return raw;
    }
}

// Sum over the kGroup lanes of a group (consecutive lanes).
template <int kGroup>
__device__ __forceinline__ float GroupSum(float v) {
#pragma unroll
    for (int off = kGroup / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// One lane's slice of a K or V row, loaded raw (specialised head_dim) or element by element (generic).
template <typename T, int kHd, int kGroup>
struct RowFrag {
    using Map = LaneMap<kHd, kGroup>;
    static constexpr int kElems = Map::kElems;
    std::conditional_t<(kHd > 0), RawVec<T, kElems>, float[kElems]> v;

    __device__ __forceinline__ void Load(const T* __restrict__ row, int g, int hd) {
        if constexpr (kHd > 0) {
            v.Load(row + g * kElems);
        } else {
#pragma unroll
            for (int i = 0; i < kElems; ++i) v[i] = Map::Elem(g, i) < hd ? ToFloat(row[Map::Elem(g, i)]) : 0.f;
        }
    }
    __device__ __forceinline__ void Zero() {
        if constexpr (kHd > 0) {
            v.Zero();
        } else {
#pragma unroll
            for (int i = 0; i < kElems; ++i) v[i] = 0.f;
        }
    }
    __device__ __forceinline__ float At(int i) const {
        if constexpr (kHd > 0) {
            return v.At(i);
        } else {
            return v[i];
        }
    }
};

// Merges the splits of decode token t (sequence s) for query heads h0 .. h0+nh-1, in split order, into out
// (and the anchor's final (max, sum) into stats). One block; ml: shared scratch of [nh][2]. The separate
// CombineKernel and the fused last-block merge both run this, so their results are bit-identical.
template <bool kReuse>
__device__ void MergeSplits(const float* __restrict__ part_acc, const float* __restrict__ part_ml, int max_splits,
                            int num_splits, int s, int t, int h0, int nh, int hd, int num_heads,
                            float* __restrict__ out, int64_t out_ld, float* __restrict__ stats, float (*ml)[2]) {
    if (threadIdx.x < nh) {
        const int64_t part = (static_cast<int64_t>(s) * num_heads + h0 + threadIdx.x) * max_splits;
        float m = -FLT_MAX, l = 0.f;
        if constexpr (!kReuse) {
            for (int sp = 0; sp < num_splits; ++sp) m = fmaxf(m, __ldcg(part_ml + (part + sp) * 2));
            for (int sp = 0; sp < num_splits; ++sp) {
                l += __ldcg(part_ml + (part + sp) * 2 + 1) * expf(__ldcg(part_ml + (part + sp) * 2) - m);
            }
            if (stats != nullptr) {
                const int64_t row = static_cast<int64_t>(t) * num_heads + h0 + threadIdx.x;
                stats[row * 2] = m;
                stats[row * 2 + 1] = l;
            }
        }
        ml[threadIdx.x][0] = m;
        ml[threadIdx.x][1] = l;
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < nh * hd; idx += blockDim.x) {
        const int r = idx / hd, e = idx % hd;
        const int64_t part = (static_cast<int64_t>(s) * num_heads + h0 + r) * max_splits;
        float sum = 0.f;
        for (int sp = 0; sp < num_splits; ++sp) {
            const float a = __ldcg(part_acc + (part + sp) * hd + e);
            if constexpr (kReuse) {
                sum += a;
            } else {
                sum += a * expf(__ldcg(part_ml + (part + sp) * 2) - ml[r][0]);
            }
        }
        out[t * out_ld + static_cast<int64_t>(h0 + r) * hd + e] = kReuse ? sum : sum / ml[r][1];
    }
}

// What a decode block works on (grid (max_splits, Hkv · head_groups, num_seqs)): sequence s's token t, the
// query heads h0 .. h0+nh-1 of KV head kvh, context positions [start, end) of its split. ok is false for blocks
// with nothing to do (a sequence with several query tokens, a split past the token's own).
struct DecodeBlock {
    bool ok;
    int s, t, n_ctx, num_splits, split, kvh, h0, nh, start, end;
    const int32_t* table;
};
__device__ __forceinline__ DecodeBlock LocateDecodeBlock(const PagedBatch& b, int heads_per_block) {
    DecodeBlock d{};
    d.s = blockIdx.z;
    d.t = b.query_start[d.s];
    if (b.query_start[d.s + 1] - d.t != 1) return d;
    d.n_ctx = b.positions[d.t] + 1;
    const DecodeSplits sp = SplitsFor(d.n_ctx - 1, b);
    d.num_splits = sp.num_splits;
    d.split = blockIdx.x;
    if (d.split >= d.num_splits) return d;
    const int n_rep = b.num_heads / b.num_kv_heads;
    const int groups_per_kv = (n_rep + heads_per_block - 1) / heads_per_block;
    d.kvh = blockIdx.y / groups_per_kv;
    d.h0 = d.kvh * n_rep + (blockIdx.y % groups_per_kv) * heads_per_block;
    d.nh = min(heads_per_block, d.kvh * n_rep + n_rep - d.h0);
    d.start = sp.begin + d.split * sp.chunk;
    d.end = min(d.n_ctx, d.start + sp.chunk);
    d.table = b.block_tables + static_cast<int64_t>(d.s) * b.max_blocks_per_seq;
    d.ok = true;
    return d;
}

// The end of a decode block, after its warps left their partial outputs in shared memory (s_acc
// [kDecodeWarps][kRows][hd], s_ml [kDecodeWarps][kRows][2]: each warp's running max and sum per head): the
// warps are merged per head; a token of one split writes `out` (normalised) and `stats`, otherwise the block
// writes its split's part_acc / part_ml and, with `counters`, the last split block to finish merges them.
template <bool kReuse, int kRows>
__device__ __forceinline__ void FinishDecodeBlock(const float* s_acc, const float* s_ml, int nh, int hd, int s, int t,
                                                  int h0, int split, int num_splits, int max_splits,
                                                  const PagedBatch& b, float* __restrict__ out, int64_t out_ld,
                                                  float* __restrict__ part_acc, float* __restrict__ part_ml,
                                                  float* __restrict__ stats, unsigned* __restrict__ counters) {
    for (int idx = threadIdx.x; idx < nh * hd; idx += kDecodeThreads) {
        const int r = idx / hd, e = idx % hd;
        float mm = -FLT_MAX;
        if constexpr (!kReuse) {
#pragma unroll
            for (int w = 0; w < kDecodeWarps; ++w) mm = fmaxf(mm, s_ml[(w * kRows + r) * 2]);
        }
        float sum = 0.f, ll = 0.f;
#pragma unroll
        for (int w = 0; w < kDecodeWarps; ++w) {
            const float f = kReuse ? 1.0f : expf(s_ml[(w * kRows + r) * 2] - mm);
            sum += s_acc[(w * kRows + r) * hd + e] * f;
            if (!kReuse) ll += s_ml[(w * kRows + r) * 2 + 1] * f;
        }
        const int64_t row = static_cast<int64_t>(t) * b.num_heads + h0 + r;
        if (num_splits == 1) {
            out[t * out_ld + static_cast<int64_t>(h0 + r) * hd + e] = kReuse ? sum : sum / ll;
            if (!kReuse && e == 0 && stats != nullptr) {
                stats[row * 2] = mm;
                stats[row * 2 + 1] = ll;
            }
        } else {
            const int64_t part = (static_cast<int64_t>(s) * b.num_heads + h0 + r) * max_splits + split;
            part_acc[part * hd + e] = sum;
            if (!kReuse && e == 0) {
                part_ml[part * 2] = mm;
                part_ml[part * 2 + 1] = ll;
            }
        }
    }
    if (num_splits > 1 && counters != nullptr) {
        // The last of this token's split blocks (for these heads) to finish merges every split, in split order,
        // instead of a separate CombineKernel launch; it leaves the counter at zero for the next step.
        __shared__ bool last;
        __shared__ float merge_ml[kRows][2];
        unsigned* counter = counters + static_cast<int64_t>(s) * gridDim.y + blockIdx.y;
        __threadfence();  // this block's partials are visible to the block that merges
        __syncthreads();
        if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == static_cast<unsigned>(num_splits - 1);
        __syncthreads();
        if (!last) return;
        __threadfence();
        MergeSplits<kReuse>(part_acc, part_ml, max_splits, num_splits, s, t, h0, nh, hd, b.num_heads, out, out_ld,
                            stats, merge_ml);
        if (threadIdx.x == 0) *counter = 0;
    }
}

// The decode kernel. grid (max_splits, num_kv_heads · head_groups, num_seqs), kDecodeThreads threads; a block
// serves up to kRep query heads of one KV head (kRep = 1 when each block has a single head, as for MHA, which
// keeps registers low; kMaxRep otherwise). Blocks of sequences with more than one query token, and splits
// past the token's own, exit at once. Every lane group streams its share of the chunk's tokens, loading K and
// V of kU tokens at once (raw, few registers), and keeps its own online softmax state (max, sum,
// accumulator) per head; groups, then warps, merge at the end. kReuse: P·V with the anchor's probabilities
// (already normalised) loaded together with V; no K, no softmax. Outputs: a token with one split writes
// `out` (normalised) and `stats`; otherwise every split writes part_acc / part_ml, and with `counters` the
// last split block to finish merges them (MergeSplits), else CombineKernel does.
template <typename T, int kHd, int kGroup, int kRep, bool kReuse>
__global__ __launch_bounds__(kDecodeThreads) void DecodeStreamKernel(
    const float* __restrict__ q, int64_t q_ld,  // [T, Hq·hd]
    const T* __restrict__ k_plane,              // [num_blocks, block_size, Hkv, hd]
    const T* __restrict__ v_plane,              // [num_blocks, block_size, Hkv, hd]
    PagedBatch b, int heads_per_block, int max_splits, float* __restrict__ out,
    int64_t out_ld,                // [T, Hq·hd]
    float* __restrict__ part_acc,  // [num_seqs, Hq, max_splits, hd]
    float* __restrict__ part_ml,   // [num_seqs, Hq, max_splits, 2]
    float* __restrict__ stats,     // [T, Hq, 2]
    float* __restrict__ probs, int64_t probs_ld,
    unsigned* __restrict__ counters) {  // [num_seqs, gridDim.y] zeros, or null: CombineKernel merges
    PdlEnter();
    using Map = LaneMap<kHd, kGroup>;
    using Frag = RowFrag<T, kHd, kGroup>;
    constexpr int kElems = Map::kElems;
    constexpr int kTokPerWarp = 32 / kGroup;
    constexpr int kStride = kDecodeWarps * kTokPerWarp;
    // Tokens per group per iteration: kU K rows and kU V rows in flight (V only when reusing).
    constexpr int kU = kReuse ? 8 : (kRep == 1 ? 4 : 2);
    const DecodeBlock blk = LocateDecodeBlock(b, heads_per_block);
    if (!blk.ok) return;
    const int s = blk.s, t = blk.t, num_splits = blk.num_splits, split = blk.split, kvh = blk.kvh, h0 = blk.h0;
    const int nh = blk.nh, start = blk.start, end = blk.end;
    const int32_t* table = blk.table;
    const int hd = kHd > 0 ? kHd : b.head_dim;
    const float scale = 1.0f / sqrtf(static_cast<float>(hd));  // the CPU backend's rounding
    const float k_scale = KvScale<T>(b.k_scale, kvh), v_scale = KvScale<T>(b.v_scale, kvh);  // fp8 planes
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane % kGroup, tok = lane / kGroup;

    float qr[kRep][kElems];
    if constexpr (!kReuse) {
#pragma unroll
        for (int r = 0; r < kRep; ++r) {
#pragma unroll
            for (int i = 0; i < kElems; ++i) {
                const int e = Map::Elem(g, i);
                qr[r][i] = (r < nh && e < hd) ? q[t * q_ld + static_cast<int64_t>(h0 + r) * hd + e] : 0.f;
            }
        }
    }
    float m[kRep], l[kRep], acc[kRep][kElems];
#pragma unroll
    for (int r = 0; r < kRep; ++r) {
        m[r] = -FLT_MAX;
        l[r] = 0.f;
#pragma unroll
        for (int i = 0; i < kElems; ++i) acc[r][i] = 0.f;
    }
    for (int base = start + warp * kTokPerWarp; base < end; base += kStride * kU) {
        Frag kf[kU], vf[kU];
        float pv[kReuse ? kU : 1][kRep];  // reuse: the anchor's probabilities, loaded with the values
#pragma unroll
        for (int u = 0; u < kU; ++u) {
            const int j = base + u * kStride + tok;
            if (j < end) {
                const int64_t off = KvOffset(table, j, b.block_size, b.num_kv_heads, kvh, hd);
                if constexpr (!kReuse) kf[u].Load(k_plane + off, g, hd);
                vf[u].Load(v_plane + off, g, hd);
                if constexpr (kReuse) {
#pragma unroll
                    for (int r = 0; r < kRep; ++r) {
                        pv[u][r] = r < nh
                                       ? __ldg(probs + (static_cast<int64_t>(t) * b.num_heads + h0 + r) * probs_ld + j)
                                       : 0.f;
                    }
                }
            } else {
                if constexpr (!kReuse) kf[u].Zero();
                vf[u].Zero();
                if constexpr (kReuse) {
#pragma unroll
                    for (int r = 0; r < kRep; ++r) pv[u][r] = 0.f;
                }
            }
        }
#pragma unroll
        for (int u = 0; u < kU; ++u) {
            const int j = base + u * kStride + tok;
            const bool valid = j < end;
#pragma unroll
            for (int r = 0; r < kRep; ++r) {
                if (r >= nh) break;
                float p;
                if constexpr (!kReuse) {
                    float dot = 0.f;
#pragma unroll
                    for (int i = 0; i < kElems; ++i) dot += qr[r][i] * Dequant<T>(kf[u].At(i), k_scale);
                    dot = GroupSum<kGroup>(dot) * scale;
                    if (!valid) continue;
                    if (g == 0 && probs != nullptr) {
                        probs[(static_cast<int64_t>(t) * b.num_heads + h0 + r) * probs_ld + j] = dot;
                    }
                    const float m_new = fmaxf(m[r], dot);
                    const float corr = expf(m[r] - m_new);
                    p = expf(dot - m_new);
                    l[r] = l[r] * corr + p;
                    m[r] = m_new;
#pragma unroll
                    for (int i = 0; i < kElems; ++i) acc[r][i] *= corr;
                } else {
                    if (!valid) continue;
                    p = pv[kReuse ? u : 0][r];
                }
#pragma unroll
                for (int i = 0; i < kElems; ++i) acc[r][i] += p * Dequant<T>(vf[u].At(i), v_scale);
            }
        }
    }
    // Merge the token groups of the warp (lanes with the same g), then the warps.
#pragma unroll
    for (int off = kGroup; off < 32; off <<= 1) {
#pragma unroll
        for (int r = 0; r < kRep; ++r) {
            if constexpr (kReuse) {
#pragma unroll
                for (int i = 0; i < kElems; ++i) acc[r][i] += __shfl_xor_sync(0xffffffffu, acc[r][i], off);
            } else {
                const float mo = __shfl_xor_sync(0xffffffffu, m[r], off);
                const float lo = __shfl_xor_sync(0xffffffffu, l[r], off);
                const float mm = fmaxf(m[r], mo);
                const float a = expf(m[r] - mm), c = expf(mo - mm);
                l[r] = l[r] * a + lo * c;
#pragma unroll
                for (int i = 0; i < kElems; ++i) {
                    acc[r][i] = acc[r][i] * a + __shfl_xor_sync(0xffffffffu, acc[r][i], off) * c;
                }
                m[r] = mm;
            }
        }
    }
    extern __shared__ float smem[];
    float* s_acc = smem;                            // [kDecodeWarps][kRep][hd]
    float* s_ml = smem + kDecodeWarps * kRep * hd;  // [kDecodeWarps][kRep][2]
    if (tok == 0) {
#pragma unroll
        for (int r = 0; r < kRep; ++r) {
            if (r >= nh) break;
#pragma unroll
            for (int i = 0; i < kElems; ++i) {
                const int e = Map::Elem(g, i);
                if (e < hd) s_acc[(warp * kRep + r) * hd + e] = acc[r][i];
            }
            if (g == 0) {
                s_ml[(warp * kRep + r) * 2] = m[r];
                s_ml[(warp * kRep + r) * 2 + 1] = l[r];
            }
        }
    }
    __syncthreads();
    FinishDecodeBlock<kReuse, kRep>(s_acc, s_ml, nh, hd, s, t, h0, split, num_splits, max_splits, b, out, out_ld,
                                    part_acc, part_ml, stats, counters);
}

// ---- Decode on tensor cores (PagedBatch::tensor_cores, 16-bit or fp8 K/V planes, head_dim 64 or 128) ----
//
// The same work split as DecodeStreamKernel (a block: one decode token, one KV head, up to kMmaHeads of its
// query heads, one split of the context; the warps take turns over 16-token tiles), but QK^T and P·V run as
// mma.sync.m16n8k16 with fp32 accumulation. The m16 tile's rows 0-7 hold the 16-bit high parts of the block's
// query heads and rows 8-15 their low parts (x - hi, rounded again), so a row's result is the sum of its
// two halves and the scores and the P·V products keep fp32 accuracy (the CPU oracle's tolerance); the eight
// spare rows of a decode tile cost nothing, since the kernel is bound by the K/V bytes it reads.
//
// Every fragment comes straight from global memory in 16-byte loads, without shared-memory staging:
//  - QK^T: a lane (g = lane / 4, c = lane % 4) loads dims [32·ch + 8c, +8) of token g of an n8 tile; the k order
//    inside each k16 step is permuted the same way for the Q fragment (k 2c, 2c+1 -> dims 8c+4s, +1; k 2c+8,
//    2c+9 -> 8c+4s+2, +3 in step s of the chunk), which a dot product does not see.
//  - P·V: the k index is the token, so a B register needs two tokens' values of one dim. A lane loads dims
//    [64·hh + 8g, +8) of tokens 2c, 2c+1, 2c+8, 2c+9 and pairs them with byte permutes; output column n of
//    n8 tile nt is dim (nt / 8)·64 + 8n + nt % 8 (kMmaDim), undone when the block writes its result.
// fp8 e4m3 planes: the same 8 elements per load come in 8 bytes (a uint2), held raw while in flight and widened to
// fp16 (Widen16: the words a 16-bit plane's 16-byte load would hold) where the mma.sync reads them; the products run
// on f16 with the raw e4m3 values (Q and P split into f16 halves as for fp16 planes), the head's K scale joins
// 1/sqrt(head_dim) on the scores, and its V scale multiplies the block's output (before the splits' merge, which is
// linear in it; the probabilities never see it).
constexpr int kMmaHeads = 8;  // query heads per tensor-core decode block (the high rows of an m16 tile)
constexpr int kMmaTile = 16;  // cached tokens per warp step (two n8 tiles of scores, one k16 step of P·V)

__device__ __forceinline__ int KmmaDim(int nt, int n) { return (nt >> 3) * 64 + n * 8 + (nt & 7); }

// x0, x1 as two 16-bit pairs: hi = (T(x0), T(x1)) and lo = (T(x0 - hi0), T(x1 - hi1)).
template <typename T>
__device__ __forceinline__ void SplitPair(float x0, float x1, uint32_t& hi, uint32_t& lo) {
    const T h0 = FromFloat<T>(x0), h1 = FromFloat<T>(x1);
    hi = PackPair(h0, h1);
    lo = PackPair(FromFloat<T>(x0 - ToFloat(h0)), FromFloat<T>(x1 - ToFloat(h1)));
}

// The mma.sync element type for planes of P: 16-bit planes as stored, fp8 e4m3 widened to fp16 (every e4m3 value,
// subnormals included, is exact in fp16).
template <typename P>
using MmaType = std::conditional_t<kFp8Kv<P>, __half, P>;
// What DecodeMmaKernel loads of 8 consecutive elements: 16 bytes of a 16-bit plane, 8 of an fp8 one.
template <typename P>
using Raw8 = std::conditional_t<kFp8Kv<P>, uint2, uint4>;
// Planes DecodeMmaKernel reads: 16-bit and fp8 e4m3.
template <typename P>
inline constexpr bool kMmaKv = sizeof(P) == 2 || kFp8Kv<P>;

// 8 elements as loaded, in the layout of a 16-bit plane's 16-byte load: word w holds elements 2w (low half) and
// 2w + 1 (high half). 16-bit planes: as they are.
__device__ __forceinline__ uint4 Widen16(const uint4& v) { return v; }
// fp8 e4m3 (element i in byte i of the uint2) to fp16: byte pair (2w, 2w + 1) becomes word w (E4m3x2ToHalf2).
__device__ __forceinline__ uint4 Widen16(const uint2& v) {
    return make_uint4(E4m3x2ToHalf2(v.x), E4m3x2ToHalf2(v.x >> 16), E4m3x2ToHalf2(v.y), E4m3x2ToHalf2(v.y >> 16));
}

// Q's A fragments of the tensor-core decode kernels, [chunk][step][register], from the lane's query row qrow (row g of
// the tile: hi parts in row g, lo parts in row g + 8; zero past the block's heads); the k order inside each k16 step
// permuted as the K loads are (dims 8c + 4s .. of step s of chunk ch).
template <typename T, int kHd>
__device__ __forceinline__ void MmaDecodeQFragments(const float* qrow, bool row_ok, int c,
                                                    uint32_t (&qa)[kHd / 32][2][4]) {
#pragma unroll
    for (int ch = 0; ch < kHd / 32; ++ch) {
        float x[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) x[i] = row_ok ? qrow[ch * 32 + c * 8 + i] : 0.f;
#pragma unroll
        for (int st = 0; st < 2; ++st) {
            SplitPair<T>(x[st * 4], x[st * 4 + 1], qa[ch][st][0], qa[ch][st][1]);
            SplitPair<T>(x[st * 4 + 2], x[st * 4 + 3], qa[ch][st][2], qa[ch][st][3]);
        }
    }
}

// A warp's result for the cross-warp merge: row g's output (hi + lo rows, times the V scale of fp8 planes) in its
// dims' order, and its running max and sum.
template <bool kScaled, int kHd>
__device__ __forceinline__ void MmaDecodeWarpResult(const float (&o)[kHd / 8][4], float m, float l, float v_scale,
                                                    int warp, int g, int c, float* s_acc, float* s_ml) {
    float* acc = s_acc + (warp * kMmaHeads + g) * kHd;
#pragma unroll
    for (int nt = 0; nt < kHd / 8; ++nt) {
        if constexpr (kScaled) {
            acc[KmmaDim(nt, 2 * c)] = (o[nt][0] + o[nt][2]) * v_scale;
            acc[KmmaDim(nt, 2 * c + 1)] = (o[nt][1] + o[nt][3]) * v_scale;
        } else {
            acc[KmmaDim(nt, 2 * c)] = o[nt][0] + o[nt][2];
            acc[KmmaDim(nt, 2 * c + 1)] = o[nt][1] + o[nt][3];
        }
    }
    if (c == 0) {
        s_ml[(warp * kMmaHeads + g) * 2] = m;
        s_ml[(warp * kMmaHeads + g) * 2 + 1] = l;
    }
}

// One 16-token step of a warp in the tensor-core decode kernels (DecodeMmaKernel, DecodeStagedKernel): tokens
// j0 + 8·tile + 2c + i of query row g. QK^T: sc[tile][i] (high rows) and sc[tile][2 + i] (low rows); k_words(tile,
// ch) gives the K words of chunk ch as a 16-bit plane holds them.
template <typename T, int kChunks, typename KWords>
__device__ __forceinline__ void MmaDecodeScores(const uint32_t (&qa)[kChunks][2][4], KWords k_words,
                                                float (&sc)[2][4]) {
#pragma unroll
    for (int tile = 0; tile < 2; ++tile) {
        sc[tile][0] = sc[tile][1] = sc[tile][2] = sc[tile][3] = 0.f;
#pragma unroll
        for (int ch = 0; ch < kChunks; ++ch) {
            const uint4 kw = k_words(tile, ch);
            Mma16816<T>(sc[tile], qa[ch][0], kw.x, kw.y);
            Mma16816<T>(sc[tile], qa[ch][1], kw.z, kw.w);
        }
    }
}

// The online softmax over a step's scores (hi row + lo row, times scale; tokens past `end` out): the anchor's raw
// scores to probs, this step's p, the running max m and this lane's share of the sum l, and o rescaled.
template <int kNTiles>
__device__ __forceinline__ void MmaDecodeSoftmax(const float (&sc)[2][4], int j0, int c, int end, float scale,
                                                 bool row_ok, float* __restrict__ probs, int64_t prow, float& m,
                                                 float& l, float (&o)[kNTiles][4], float (&p)[2][2]) {
    float mx = -FLT_MAX;
#pragma unroll
    for (int tile = 0; tile < 2; ++tile) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int j = j0 + tile * 8 + 2 * c + i;
            const float v = (sc[tile][i] + sc[tile][2 + i]) * scale;  // hi row + lo row
            if (j < end) {
                if (row_ok && probs != nullptr) probs[prow + j] = v;
                p[tile][i] = v;
                mx = fmaxf(mx, v);
            } else {
                p[tile][i] = -FLT_MAX;
            }
        }
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m, mx);
    const float corr = expf(m - m_new);
    float sum = 0.f;
#pragma unroll
    for (int tile = 0; tile < 2; ++tile) {
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            p[tile][i] = p[tile][i] == -FLT_MAX ? 0.f : expf(p[tile][i] - m_new);
            sum += p[tile][i];
        }
    }
    l = l * corr + sum;
    m = m_new;
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) o[nt][i] *= corr;
    }
}

// P's A fragment of a step: tokens 2c, 2c+1 (tile 0) and 2c+8, 2c+9 (tile 1); hi rows, lo rows.
template <typename T>
__device__ __forceinline__ void MmaDecodePFragment(const float (&p)[2][2], uint32_t (&pa)[4]) {
    SplitPair<T>(p[0][0], p[0][1], pa[0], pa[1]);
    SplitPair<T>(p[1][0], p[1][1], pa[2], pa[3]);
}

// P·V of a step: o += P V, with V's words vw[i][hh] (tokens 2c + (i & 1) + 8·(i >> 1), dims 64·hh + 8g .., as a
// 16-bit plane holds them).
template <typename T, int kNTiles, int kHalves>
__device__ __forceinline__ void MmaDecodePv(const uint32_t (&pa)[4], const uint4 (&vw)[4][kHalves],
                                            float (&o)[kNTiles][4]) {
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) {
        const int hh = nt >> 3, w = (nt & 7) >> 1;
        const unsigned sel = (nt & 1) ? 0x7632u : 0x5410u;  // the high or low halves of two words
        const uint32_t b0 = __byte_perm(Word(vw[0][hh], w), Word(vw[1][hh], w), sel);
        const uint32_t b1 = __byte_perm(Word(vw[2][hh], w), Word(vw[3][hh], w), sel);
        Mma16816<T>(o[nt], pa, b0, b1);
    }
}

// grid and outputs as DecodeStreamKernel's; heads_per_block <= kMmaHeads. P: the planes' element type (fp16, bf16,
// fp8 e4m3), T: the mma's.
template <typename P, int kHd, bool kReuse>
__global__ __launch_bounds__(kDecodeThreads) void DecodeMmaKernel(
    const float* __restrict__ q, int64_t q_ld,  // [T, Hq·hd]
    const P* __restrict__ k_plane,              // [num_blocks, block_size, Hkv, hd]
    const P* __restrict__ v_plane,              // [num_blocks, block_size, Hkv, hd]
    PagedBatch b, int heads_per_block, int max_splits, float* __restrict__ out, int64_t out_ld,
    float* __restrict__ part_acc, float* __restrict__ part_ml, float* __restrict__ stats, float* __restrict__ probs,
    int64_t probs_ld, unsigned* __restrict__ counters) {
    PdlEnter();
    static_assert(kHd == 64 || kHd == 128, "specialised head dims only");
    using T = MmaType<P>;
    using Raw = Raw8<P>;
    constexpr int kChunks = kHd / 32;  // QK^T: 32-dim chunks, two k16 steps each
    constexpr int kNTiles = kHd / 8;   // P·V: n8 tiles of the output
    constexpr int kHalves = kHd / 64;  // P·V: 64-dim ranges of a lane's V loads
    const DecodeBlock blk = LocateDecodeBlock(b, heads_per_block);
    if (!blk.ok) return;
    const int s = blk.s, t = blk.t, num_splits = blk.num_splits, split = blk.split, kvh = blk.kvh, h0 = blk.h0;
    const int nh = blk.nh, start = blk.start, end = blk.end;
    const int32_t* table = blk.table;
    float scale = 1.0f / sqrtf(static_cast<float>(kHd));  // the CPU backend's rounding
    float v_scale = 1.0f;
    if constexpr (kFp8Kv<P>) {  // the scores and the output of raw e4m3 values, times the head's scales
        if constexpr (!kReuse) scale *= KvScale<P>(b.k_scale, kvh);
        v_scale = KvScale<P>(b.v_scale, kvh);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, c = lane & 3;
    const bool row_ok = g < nh;  // lane's row: query head h0 + g
    const int64_t prow = (static_cast<int64_t>(t) * b.num_heads + h0 + g) * probs_ld;

    // Q's A fragments, [chunk][step][register] (hi in rows g, lo in rows g + 8).
    uint32_t qa[kReuse ? 1 : kChunks][2][4];
    if constexpr (!kReuse)
        MmaDecodeQFragments<T, kHd>(q + t * q_ld + static_cast<int64_t>(h0 + g) * kHd, row_ok, c, qa);
    float o[kNTiles][4];
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;
    float m = -FLT_MAX, l = 0.f;  // row g's running max; this lane's share of its sum
    // K fragments of the tile at j0: token j0 + 8·tile + g, dims 32·ch + 8c ..; loaded one tile ahead (right
    // after the QK^T of the tile before, whose K registers are then free), so they arrive during its softmax
    // and P·V instead of stalling the next tile's QK^T.
    Raw kr[2][kChunks];  // unused by reuse layers
    auto load_k = [&](int j0) {
#pragma unroll
        for (int tile = 0; tile < 2; ++tile) {
            const int j = j0 + tile * 8 + g;
            if (j < end) {
                const P* row = k_plane + KvOffset(table, j, b.block_size, b.num_kv_heads, kvh, kHd) + c * 8;
#pragma unroll
                for (int ch = 0; ch < kChunks; ++ch) kr[tile][ch] = __ldg(reinterpret_cast<const Raw*>(row + ch * 32));
            } else {
#pragma unroll
                for (int ch = 0; ch < kChunks; ++ch) kr[tile][ch] = Raw{};
            }
        }
    };
    constexpr int kStride = kDecodeWarps * kMmaTile;
    if constexpr (!kReuse) {
        if (start + warp * kMmaTile < end) load_k(start + warp * kMmaTile);
    }
    for (int j0 = start + warp * kMmaTile; j0 < end; j0 += kStride) {
        Raw vr[4][kHalves];  // tokens j0 + 2c + {0, 1, 8, 9}, dims 64·hh + 8g ..
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int j = j0 + 2 * c + (i & 1) + (i >> 1) * 8;
            if (j < end) {  // V past the split must be 0, not stale: P is 0 there but 0 · NaN is not
                const P* row = v_plane + KvOffset(table, j, b.block_size, b.num_kv_heads, kvh, kHd) + g * 8;
#pragma unroll
                for (int hh = 0; hh < kHalves; ++hh) vr[i][hh] = __ldg(reinterpret_cast<const Raw*>(row + hh * 64));
            } else {
#pragma unroll
                for (int hh = 0; hh < kHalves; ++hh) vr[i][hh] = Raw{};
            }
        }
        float p[2][2];  // [tile][i]: token j0 + 8·tile + 2c + i of row g
        if constexpr (!kReuse) {
            float sc[2][4];
            MmaDecodeScores<T, kChunks>(
                qa, [&](int tile, int ch) { return Widen16(kr[tile][ch]); }, sc);
            if (j0 + kStride < end) load_k(j0 + kStride);  // the next tile's K, in flight from here
            MmaDecodeSoftmax<kNTiles>(sc, j0, c, end, scale, row_ok, probs, prow, m, l, o, p);
        } else {
#pragma unroll
            for (int tile = 0; tile < 2; ++tile) {
#pragma unroll
                for (int i = 0; i < 2; ++i) {
                    const int j = j0 + tile * 8 + 2 * c + i;
                    p[tile][i] = row_ok && j < end ? __ldg(probs + prow + j) : 0.f;
                }
            }
        }
        uint32_t pa[4];
        MmaDecodePFragment<T>(p, pa);
        if constexpr (kFp8Kv<P>) {
            uint4 vw[4][kHalves];  // each word converted once (two n8 tiles read it)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int hh = 0; hh < kHalves; ++hh) vw[i][hh] = Widen16(vr[i][hh]);
            }
            MmaDecodePv<T, kNTiles, kHalves>(pa, vw, o);
        } else {
            MmaDecodePv<T, kNTiles, kHalves>(pa, vr, o);
        }
    }
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    extern __shared__ float smem[];
    float* s_acc = smem;                                  // [kDecodeWarps][kMmaHeads][hd]
    float* s_ml = smem + kDecodeWarps * kMmaHeads * kHd;  // [kDecodeWarps][kMmaHeads][2]
    if (row_ok) MmaDecodeWarpResult<kFp8Kv<P>, kHd>(o, m, l, v_scale, warp, g, c, s_acc, s_ml);
    __syncthreads();
    FinishDecodeBlock<kReuse, kMmaHeads>(s_acc, s_ml, nh, kHd, s, t, h0, split, num_splits, max_splits, b, out, out_ld,
                                         part_acc, part_ml, stats, counters);
}

// ---- Decode on tensor cores with K/V staged in shared memory (PagedBatch::staged_decode) ----
//
// DecodeMmaKernel's work split and arithmetic, but the block brings its context in tiles of kSdTile tokens with
// cp.async into shared memory (two stages: tile i + 2 is requested as soon as tile i is used), and each warp reads
// its 16-token part of a tile from there in the same fragment layout. DecodeMmaKernel keeps at most one 16-token
// tile of K (and V) per warp in flight in registers: at short splits (128-token chunks, two tiles a warp) the
// latency of each load is paid in full, and its 204 registers allow 8 warps an SM. Here a 128-token split is
// requested whole when the block starts (64 KiB of 16-bit K and V), and the fragments cost no registers in flight.
// Rows are padded so the fragment reads hit distinct banks: a K row read by lanes (g, c) at byte g·sk + 16c (16-bit
// planes: 8 lanes of a quarter-warp need sk / 16 = 4 mod 8, so sk = row + 64) and a V row read at byte
// (2c + i)·sv + 16g (sv / 16 = 1 mod 8: row + 16); fp8 planes read 8 bytes a lane (half-warp phases: row + 32 and
// row + 16).
constexpr int kSdTile = 64;  // cached tokens per staged tile (each warp takes 16)

template <typename P, int kHd, bool kReuse>
struct StagedDecodeLayout {
    static constexpr int kRow = kHd * static_cast<int>(sizeof(P));        // bytes of a stored K or V row
    static constexpr int kSk = kRow + (sizeof(P) == 2 ? 64 : 32);         // staged K row stride, bytes
    static constexpr int kSv = kRow + 16;                                 // staged V row stride, bytes
    static constexpr int kKBytes = kReuse ? 0 : kSdTile * kSk;            // a stage's K rows (reuse layers: none)
    static constexpr int kStage = kKBytes + kSdTile * kSv;                // bytes per stage
    static constexpr int kChunks = kRow / 16;                             // 16-byte cp.async chunks per row
    static constexpr int kChunkElems = 16 / static_cast<int>(sizeof(P));  // elements per chunk
};

// Dynamic shared memory of DecodeStagedKernel: two stages, or the cross-warp merge if larger.
template <typename P, int kHd, bool kReuse>
size_t StagedDecodeSmem() {
    const size_t merge = sizeof(float) * kDecodeWarps * kMmaHeads * (kHd + 2);
    return std::max(static_cast<size_t>(2 * StagedDecodeLayout<P, kHd, kReuse>::kStage), merge);
}

// A fragment's 16 or 8 bytes from shared memory in one vector load (through a byte pointer the compiler splits an
// 8-byte read into two 4-byte ones, which halves the banks the fp8 layout spreads them over).
__device__ __forceinline__ void LoadShared(const unsigned char* p, uint4& r) {
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "r"(SmemAddr(p)));
}
__device__ __forceinline__ void LoadShared(const unsigned char* p, uint2& r) {
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];\n" : "=r"(r.x), "=r"(r.y) : "r"(SmemAddr(p)));
}

// grid and outputs as DecodeMmaKernel's.
template <typename P, int kHd, bool kReuse>
__global__ __launch_bounds__(kDecodeThreads, 3) void DecodeStagedKernel(
    const float* __restrict__ q, int64_t q_ld,  // [T, Hq·hd]
    const P* __restrict__ k_plane,              // [num_blocks, block_size, Hkv, hd]
    const P* __restrict__ v_plane,              // [num_blocks, block_size, Hkv, hd]
    PagedBatch b, int heads_per_block, int max_splits, float* __restrict__ out, int64_t out_ld,
    float* __restrict__ part_acc, float* __restrict__ part_ml, float* __restrict__ stats, float* __restrict__ probs,
    int64_t probs_ld, unsigned* __restrict__ counters) {
    PdlEnter();
    static_assert(kHd == 64 || kHd == 128, "specialised head dims only");
    using T = MmaType<P>;
    using Raw = Raw8<P>;
    using L = StagedDecodeLayout<P, kHd, kReuse>;
    constexpr int kChunks = kHd / 32;
    constexpr int kNTiles = kHd / 8;
    constexpr int kHalves = kHd / 64;
    extern __shared__ __align__(16) unsigned char sd_smem[];
    const DecodeBlock blk = LocateDecodeBlock(b, heads_per_block);
    if (!blk.ok) return;
    const int s = blk.s, t = blk.t, num_splits = blk.num_splits, split = blk.split, kvh = blk.kvh, h0 = blk.h0;
    const int nh = blk.nh, start = blk.start, end = blk.end;
    const int32_t* table = blk.table;
    float scale = 1.0f / sqrtf(static_cast<float>(kHd));  // the CPU backend's rounding
    float v_scale = 1.0f;
    if constexpr (kFp8Kv<P>) {
        if constexpr (!kReuse) scale *= KvScale<P>(b.k_scale, kvh);
        v_scale = KvScale<P>(b.v_scale, kvh);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, c = lane & 3;
    const bool row_ok = g < nh;
    const int64_t prow = (static_cast<int64_t>(t) * b.num_heads + h0 + g) * probs_ld;

    // Tile i of the split to stage i & 1: every thread issues its share of the 16-byte chunks of the tile's K
    // (anchors and normal layers) and V rows; rows past the split are zero-filled (V must be 0 there, not stale:
    // P is 0 but 0 · NaN is not).
    const int n_tiles = (end - start + kSdTile - 1) / kSdTile;
    auto load_tile = [&](int i) {
        unsigned char* sk = sd_smem + (i & 1) * L::kStage;
        unsigned char* sv = sk + L::kKBytes;
        const int base = start + i * kSdTile;
        for (int idx = threadIdx.x; idx < kSdTile * L::kChunks; idx += kDecodeThreads) {
            const int row = idx / L::kChunks, ch = idx % L::kChunks, j = base + row;
            const bool valid = j < end;
            const int64_t off =
                valid ? KvOffset(table, j, b.block_size, b.num_kv_heads, kvh, kHd) + ch * L::kChunkElems : 0;
            if constexpr (!kReuse) CpAsync16(sk + row * L::kSk + ch * 16, k_plane + off, valid);
            CpAsync16(sv + row * L::kSv + ch * 16, v_plane + off, valid);
        }
        CpAsyncCommit();
    };
    if (n_tiles > 0) load_tile(0);
    if (n_tiles > 1) load_tile(1);

    uint32_t qa[kReuse ? 1 : kChunks][2][4];
    if constexpr (!kReuse)
        MmaDecodeQFragments<T, kHd>(q + t * q_ld + static_cast<int64_t>(h0 + g) * kHd, row_ok, c, qa);
    float o[kNTiles][4];
#pragma unroll
    for (int nt = 0; nt < kNTiles; ++nt) o[nt][0] = o[nt][1] = o[nt][2] = o[nt][3] = 0.f;
    float m = -FLT_MAX, l = 0.f;

    for (int i = 0; i < n_tiles; ++i) {
        const int j0 = start + i * kSdTile + warp * kMmaTile;  // this warp's 16 tokens of tile i
        float pr[2][2];                                        // reuse layers: the anchor's P, read before the wait
        if constexpr (kReuse) {
#pragma unroll
            for (int tile = 0; tile < 2; ++tile) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int j = j0 + tile * 8 + 2 * c + e;
                    pr[tile][e] = row_ok && j < end ? __ldg(probs + prow + j) : 0.f;
                }
            }
        }
        if (i + 1 < n_tiles) {
            CpAsyncWait<1>();
        } else {
            CpAsyncWait<0>();
        }
        __syncthreads();  // tile i is in shared memory for every warp
        if (j0 < end) {
            const unsigned char* sk = sd_smem + (i & 1) * L::kStage + warp * kMmaTile * L::kSk;
            const unsigned char* sv = sd_smem + (i & 1) * L::kStage + L::kKBytes + warp * kMmaTile * L::kSv;
            float p[2][2];
            if constexpr (!kReuse) {
                float sc[2][4];
                MmaDecodeScores<T, kChunks>(
                    qa,
                    [&](int tile, int ch) {
                        Raw kr;
                        LoadShared(sk + (tile * 8 + g) * L::kSk + (c * 8 + ch * 32) * sizeof(P), kr);
                        return Widen16(kr);
                    },
                    sc);
                MmaDecodeSoftmax<kNTiles>(sc, j0, c, end, scale, row_ok, probs, prow, m, l, o, p);
            } else {
#pragma unroll
                for (int tile = 0; tile < 2; ++tile) {
#pragma unroll
                    for (int e = 0; e < 2; ++e) p[tile][e] = pr[tile][e];
                }
            }
            uint32_t pa[4];
            MmaDecodePFragment<T>(p, pa);
            // V's words of tokens 2c, 2c + 1, 2c + 8, 2c + 9, dims 64·hh + 8g .. (as DecodeMmaKernel loads them).
            uint4 vw[4][kHalves];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const unsigned char* vrow = sv + (2 * c + (e & 1) + (e >> 1) * 8) * L::kSv + g * 8 * sizeof(P);
#pragma unroll
                for (int hh = 0; hh < kHalves; ++hh) {
                    Raw vr;
                    LoadShared(vrow + hh * 64 * sizeof(P), vr);
                    vw[e][hh] = Widen16(vr);
                }
            }
            MmaDecodePv<T, kNTiles, kHalves>(pa, vw, o);
        }
        __syncthreads();  // every warp is done with stage i & 1
        if (i + 2 < n_tiles) load_tile(i + 2);
    }
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    // The stages are free (the last wait and barrier above): the cross-warp merge reuses the memory.
    float* s_acc = reinterpret_cast<float*>(sd_smem);      // [kDecodeWarps][kMmaHeads][hd]
    float* s_ml = s_acc + kDecodeWarps * kMmaHeads * kHd;  // [kDecodeWarps][kMmaHeads][2]
    if (row_ok) MmaDecodeWarpResult<kFp8Kv<P>, kHd>(o, m, l, v_scale, warp, g, c, s_acc, s_ml);
    __syncthreads();
    FinishDecodeBlock<kReuse, kMmaHeads>(s_acc, s_ml, nh, kHd, s, t, h0, split, num_splits, max_splits, b, out, out_ld,
                                         part_acc, part_ml, stats, counters);
}

// grid (num_seqs · num_heads): merges the splits of a decode token's row, in split order.
// kReuse: plain sums.
template <bool kReuse>
__global__ void CombineKernel(const float* __restrict__ part_acc, const float* __restrict__ part_ml, int max_splits,
                              PagedBatch b, float* __restrict__ out, int64_t out_ld, float* __restrict__ stats) {
    PdlEnter();
    __shared__ float ml[1][2];
    const int s = blockIdx.x / b.num_heads, h = blockIdx.x % b.num_heads;
    const int t = b.query_start[s];
    if (b.query_start[s + 1] - t != 1) return;
    const int num_splits = SplitsFor(b.positions[t], b).num_splits;
    if (num_splits == 1) return;  // written by the decode kernel
    MergeSplits<kReuse>(part_acc, part_ml, max_splits, num_splits, s, t, h, 1, b.head_dim, b.num_heads, out, out_ld,
                        stats, ml);
}

// grid (num_tokens · num_heads): probs[row, j] = exp(score - max) / sum in the window, 0 before it (the
// attention kernels wrote raw scores in the window only).
__global__ void NormalizeProbsKernel(float* __restrict__ probs, int64_t probs_ld, const float* __restrict__ stats,
                                     const int32_t* __restrict__ positions, int num_heads, int window) {
    PdlEnter();
    const int64_t row = blockIdx.x;
    const int pos = positions[row / num_heads];
    const int begin = WindowStart(pos, window);
    const float m = stats[row * 2], inv = 1.0f / stats[row * 2 + 1];
    float* p = probs + row * probs_ld;
    for (int j = threadIdx.x; j <= pos; j += blockDim.x) p[j] = j < begin ? 0.f : expf(p[j] - m) * inv;
}

// grid (query tiles, Hq, num_seqs), kPrefillThreads threads; sequences with one query token exit. Thread (r = tid / 4,
// sub = tid % 4) owns query row r of the tile, score columns sub + 4i and output elements sub + 4i. kReuse: P·V with P
// read from probs (normalised), no K, no softmax.
template <typename T, int kHd, bool kReuse>
__global__ __launch_bounds__(kPrefillThreads) void PrefillKernel(
    const float* __restrict__ q, int64_t q_ld,                           // [T, Hq·hd]
    const T* __restrict__ k_plane,                                       // [num_blocks, block_size, Hkv, hd]
    const T* __restrict__ v_plane,                                       // [num_blocks, block_size, Hkv, hd]
    PagedBatch b, float scale, float* __restrict__ out, int64_t out_ld,  // [T, Hq·hd]
    float* __restrict__ probs, int64_t probs_ld, float* __restrict__ stats) {
    PdlEnter();
    constexpr int kMaxHd = kHd > 0 ? kHd : kGenericMaxHeadDim;
    constexpr int kDims = kMaxHd / 4;
    constexpr int kCols = kBk / 4;
    const int hd = kHd > 0 ? kHd : b.head_dim;
    const int s = blockIdx.z, h = blockIdx.y;
    const int q0 = b.query_start[s], q1 = b.query_start[s + 1];
    const int t0 = q0 + blockIdx.x * kBq;
    if (t0 >= q1 || q1 - q0 == 1) return;  // single-token sequences go to the decode kernel
    const int nq = min(kBq, q1 - t0);
    const int kvh = h / (b.num_heads / b.num_kv_heads);
    const float k_scale = KvScale<T>(b.k_scale, kvh), v_scale = KvScale<T>(b.v_scale, kvh);  // fp8 planes
    const int32_t* table = b.block_tables + static_cast<int64_t>(s) * b.max_blocks_per_seq;
    const int ld = hd + 1;  // padded rows: no bank conflicts across the four column groups

    extern __shared__ float smem[];
    float* s_q = smem;             // [kBq][hd + 1]
    float* s_kv = s_q + kBq * ld;  // [kBk][hd + 1]: the K tile, then the V tile
    float* s_p = s_kv + kBk * ld;  // [kBq][kBk + 1]

    const int r = threadIdx.x / 4, sub = threadIdx.x % 4;
    const int pos_r = r < nq ? b.positions[t0 + r] : -1;
    const int lo_r = r < nq ? WindowStart(pos_r, b.sliding_window) : 0;  // row r attends to [lo_r, pos_r]
    const int max_pos = b.positions[t0 + nq - 1];                        // a chunk's positions are consecutive
    // Tiles before the first row's window hold nothing any row attends to (windows only move forward).
    const int first = WindowStart(b.positions[t0], b.sliding_window);
    if constexpr (!kReuse) {
        for (int idx = threadIdx.x; idx < kBq * hd; idx += kPrefillThreads) {
            const int rr = idx / hd, e = idx % hd;
            s_q[rr * ld + e] = rr < nq ? q[(t0 + rr) * q_ld + static_cast<int64_t>(h) * hd + e] : 0.f;
        }
    }
    float m = -FLT_MAX, l = 0.f;
    float acc[kDims];
#pragma unroll
    for (int i = 0; i < kDims; ++i) acc[i] = 0.f;
    const int64_t prow = (static_cast<int64_t>(t0 + r) * b.num_heads + h) * probs_ld;

    for (int kt = first; kt <= max_pos; kt += kBk) {
        __syncthreads();  // the previous tile's V and P are consumed
        if constexpr (!kReuse) {
            for (int idx = threadIdx.x; idx < kBk * hd; idx += kPrefillThreads) {
                const int c = idx / hd, e = idx % hd, j = kt + c;
                s_kv[c * ld + e] =
                    j <= max_pos
                        ? Dequant<T>(ToFloat(k_plane[KvOffset(table, j, b.block_size, b.num_kv_heads, kvh, hd) + e]),
                                     k_scale)
                        : 0.f;
            }
            __syncthreads();
            float sc[kCols];
            float tile_max = -FLT_MAX;
#pragma unroll
            for (int i = 0; i < kCols; ++i) {
                const int c = sub + 4 * i, j = kt + c;
                float dot = 0.f;
                for (int e = 0; e < hd; ++e) dot += s_q[r * ld + e] * s_kv[c * ld + e];
                dot *= scale;
                const bool valid = j <= pos_r && j >= lo_r;
                if (valid && probs != nullptr) probs[prow + j] = dot;
                sc[i] = valid ? dot : -FLT_MAX;
                tile_max = fmaxf(tile_max, sc[i]);
            }
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
            const float m_new = fmaxf(m, tile_max);
            const float corr = m == -FLT_MAX ? 0.f : expf(m - m_new);
            float tile_sum = 0.f;
#pragma unroll
            for (int i = 0; i < kCols; ++i) {
                const float p = sc[i] == -FLT_MAX ? 0.f : expf(sc[i] - m_new);
                s_p[r * (kBk + 1) + sub + 4 * i] = p;
                tile_sum += p;
            }
            tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, 1);
            tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, 2);
            l = l * corr + tile_sum;
            m = m_new;
#pragma unroll
            for (int i = 0; i < kDims; ++i) acc[i] *= corr;
            __syncthreads();  // K tile consumed
        } else {
#pragma unroll
            for (int i = 0; i < kCols; ++i) {
                const int c = sub + 4 * i, j = kt + c;
                s_p[r * (kBk + 1) + c] = j <= pos_r && j >= lo_r ? probs[prow + j] : 0.f;
            }
        }
        for (int idx = threadIdx.x; idx < kBk * hd; idx += kPrefillThreads) {
            const int c = idx / hd, e = idx % hd, j = kt + c;
            s_kv[c * ld + e] =
                j <= max_pos
                    ? Dequant<T>(ToFloat(v_plane[KvOffset(table, j, b.block_size, b.num_kv_heads, kvh, hd) + e]),
                                 v_scale)
                    : 0.f;
        }
        __syncthreads();
        for (int c = 0; c < kBk; ++c) {
            const float p = s_p[r * (kBk + 1) + c];
#pragma unroll
            for (int i = 0; i < kDims; ++i) {
                const int e = sub + 4 * i;
                if (kHd > 0 || e < hd) acc[i] += p * s_kv[c * ld + e];
            }
        }
    }
    if (r >= nq) return;
    const float inv = kReuse ? 1.0f : 1.0f / l;
#pragma unroll
    for (int i = 0; i < kDims; ++i) {
        const int e = sub + 4 * i;
        if (kHd > 0 || e < hd) out[(t0 + r) * out_ld + static_cast<int64_t>(h) * hd + e] = acc[i] * inv;
    }
    if (!kReuse && sub == 0 && stats != nullptr) {
        const int64_t row = static_cast<int64_t>(t0 + r) * b.num_heads + h;
        stats[row * 2] = m;
        stats[row * 2 + 1] = l;
    }
}

// ---- Prefill on tensor cores (PagedBatch::tensor_cores, 16-bit or fp8 K/V planes, head_dim 64 or 128) ----
//
// Flash-attention tiles on mma.sync.m16n8k16 with fp32 accumulation. A block owns kPmRows query tokens of one
// sequence and one query head (16 rows per warp) and walks the cached tokens in tiles of kPmTile, staged in
// shared memory by cp.async (two stages: the next tile loads while this one is used) and read into fragments
// with ldmatrix (K as stored for QK^T, V transposed for P·V). The activations stay fp32-accurate as in the
// decode kernel, here with two MMAs per product: Q (fp32) is split into a 16-bit high part and the rounded
// rest, both multiply the same K fragment into the same accumulator, and P likewise against V. That doubles
// the tensor-core work (still a small part of a prefill next to its GEMMs) and keeps the CPU oracle's
// tolerance. Online softmax per row in registers (each row's 64 scores of a tile live in the four lanes of a
// quad); the row sums stay per lane until the end. kReuse: P read from the anchor's probabilities
// (normalised), only V staged, no K, no softmax. Same outputs as PrefillKernel (raw scores into probs,
// (max, sum) into stats for anchors), and the same tiles for a sequence in any batch.
//
// fp8 e4m3 planes: cp.async stages each tile's bytes as stored (double-buffered, 8 KiB per plane at head_dim 128),
// and once a tile has landed the block widens it to fp16 (exact) into one 16-bit tile that the mma code reads as it
// reads a 16-bit plane's. The products run on the raw e4m3 values; the head's K scale joins 1/sqrt(head_dim) on the
// scores (so the probabilities see it as the CPU's dequantized keys give it), and its V scale multiplies the output.
constexpr int kPmWarps = 4;
constexpr int kPmRows = 16 * kPmWarps;  // query tokens per block
constexpr int kPmTile = 64;             // cached tokens per tile
constexpr int kPmThreads = 32 * kPmWarps;
constexpr int kPmPad = 8;  // 16-bit elements of padding per staged row: ldmatrix's 8 rows hit distinct banks

// Four 8x8 16-bit matrices from shared memory; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void LdMatrix4(uint32_t (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(SmemAddr(row)));
}
__device__ __forceinline__ void LdMatrix4T(uint32_t (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(SmemAddr(row)));
}

// grid (query tiles of kPmRows, Hq, num_seqs), kPmThreads threads; sequences with one query token exit. Lane
// (g = lane / 4, c = lane % 4) of warp w holds rows w·16 + g and w·16 + g + 8 of the block: score columns 2c,
// 2c + 1 of every n8 tile, output dims 2c, 2c + 1 of every n8 tile of the head.
// P: the planes' element type (fp16, bf16, fp8 e4m3); T: the mma's (fp8 widened to fp16).
template <typename P, int kHd, bool kReuse>
__global__ __launch_bounds__(kPmThreads) void PrefillMmaKernel(
    const float* __restrict__ q, int64_t q_ld,                           // [T, Hq·hd]
    const P* __restrict__ k_plane,                                       // [num_blocks, block_size, Hkv, hd]
    const P* __restrict__ v_plane,                                       // [num_blocks, block_size, Hkv, hd]
    PagedBatch b, float scale, float* __restrict__ out, int64_t out_ld,  // [T, Hq·hd]
    float* __restrict__ probs, int64_t probs_ld, float* __restrict__ stats) {
    PdlEnter();
    using T = MmaType<P>;
    constexpr bool kFp8 = kFp8Kv<P>;
    constexpr int kStages = kFp8 ? 1 : 2;  // 16-bit tiles in shared memory (fp8: the raw bytes are double-buffered)
    constexpr int kLd = kHd + kPmPad;      // staged row stride, elements
    constexpr int kChunks = kHd * static_cast<int>(sizeof(P)) / 16;  // 16-byte chunks per stored row
    constexpr int kKSteps = kHd / 16;                                // k16 steps of QK^T
    constexpr int kSTiles = kPmTile / 8;                             // n8 score tiles per tile
    constexpr int kOTiles = kHd / 8;                                 // n8 output tiles
    const int s = blockIdx.z, h = blockIdx.y;
    const int q0 = b.query_start[s], q1 = b.query_start[s + 1];
    if (q1 - q0 == 1) return;  // single-token sequences go to the decode kernel
    // Longest tiles first: the last query rows of a causal chunk attend to the most positions.
    const int t0 = q0 + (gridDim.x - 1 - blockIdx.x) * kPmRows;
    if (t0 >= q1) return;
    const int nq = min(kPmRows, q1 - t0);
    const int kvh = h / (b.num_heads / b.num_kv_heads);
    const int32_t* table = b.block_tables + static_cast<int64_t>(s) * b.max_blocks_per_seq;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, c = lane % 4;
    float v_scale = 1.0f;
    if constexpr (kFp8) {  // the scores and the output of raw e4m3 values, times the head's scales
        if constexpr (!kReuse) scale *= KvScale<P>(b.k_scale, kvh);
        v_scale = KvScale<P>(b.v_scale, kvh);
    }

    extern __shared__ __align__(16) unsigned char pm_smem[];
    T* s_k = reinterpret_cast<T*>(pm_smem);                 // [kStages][kPmTile][kLd] (anchors and normal layers)
    T* s_v = s_k + (kReuse ? 0 : kStages * kPmTile * kLd);  // [kStages][kPmTile][kLd]
    P* r_k = reinterpret_cast<P*>(s_v + kStages * kPmTile * kLd);  // fp8: [2][kPmTile][kHd] as stored
    P* r_v = r_k + (kReuse || !kFp8 ? 0 : 2 * kPmTile * kHd);      // fp8: [2][kPmTile][kHd]
    P* st_k = kFp8 ? r_k : reinterpret_cast<P*>(s_k);  // where cp.async puts a tile: row stride kFp8 ? kHd : kLd
    P* st_v = kFp8 ? r_v : reinterpret_cast<P*>(s_v);
    constexpr int kStLd = kFp8 ? kHd : kLd;

    // This lane's two rows (a: g, b: g + 8 of the warp's 16): the positions they attend to.
    const int ra = warp * 16 + g, rb = ra + 8;
    const int pos_a = ra < nq ? b.positions[t0 + ra] : -1, pos_b = rb < nq ? b.positions[t0 + rb] : -1;
    const int lo_a = ra < nq ? WindowStart(pos_a, b.sliding_window) : 0;
    const int lo_b = rb < nq ? WindowStart(pos_b, b.sliding_window) : 0;
    const int max_pos = b.positions[t0 + nq - 1];  // a chunk's positions are consecutive
    const int first = WindowStart(b.positions[t0], b.sliding_window);
    // The warp's rows attend to [warp_lo, warp_hi]; tiles outside it are skipped by this warp.
    const int warp_r0 = warp * 16;
    const int warp_hi = warp_r0 < nq ? b.positions[t0 + min(nq - 1, warp_r0 + 15)] : -1;
    const int warp_lo = warp_r0 < nq ? WindowStart(b.positions[t0 + warp_r0], b.sliding_window) : 0;

    // Q of the two rows as hi/lo fragments (A operand, row-major): k 2c, 2c+1 and 2c+8, 2c+9 of each k16 step.
    uint32_t qh[kReuse ? 1 : kKSteps][4], ql[kReuse ? 1 : kKSteps][4];
    if constexpr (!kReuse) {
        const float* qa = q + (t0 + ra) * q_ld + static_cast<int64_t>(h) * kHd;
        const float* qb = q + (t0 + rb) * q_ld + static_cast<int64_t>(h) * kHd;
#pragma unroll
        for (int ks = 0; ks < kKSteps; ++ks) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int e = ks * 16 + half * 8 + 2 * c;
                const float2 xa = pos_a >= 0 ? make_float2(qa[e], qa[e + 1]) : make_float2(0.f, 0.f);
                const float2 xb = pos_b >= 0 ? make_float2(qb[e], qb[e + 1]) : make_float2(0.f, 0.f);
                SplitPair<T>(xa.x, xa.y, qh[ks][2 * half], ql[ks][2 * half]);
                SplitPair<T>(xb.x, xb.y, qh[ks][2 * half + 1], ql[ks][2 * half + 1]);
            }
        }
    }

    float o[kOTiles][4];
#pragma unroll
    for (int i = 0; i < kOTiles; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m_a = -FLT_MAX, m_b = -FLT_MAX, l_a = 0.f, l_b = 0.f;  // l: this lane's share of the row sums
    const int64_t prow_a = (static_cast<int64_t>(t0 + ra) * b.num_heads + h) * probs_ld;
    const int64_t prow_b = (static_cast<int64_t>(t0 + rb) * b.num_heads + h) * probs_ld;

    const int n_tiles = (max_pos - first) / kPmTile + 1;
    constexpr int kChunkElems = 16 / static_cast<int>(sizeof(P));
    auto load_tile = [&](int i) {
        const int kt = first + i * kPmTile, stage = i & 1;
        for (int idx = threadIdx.x; idx < kPmTile * kChunks; idx += kPmThreads) {
            const int row = idx / kChunks, ch = idx % kChunks, j = kt + row;
            const bool valid = j <= max_pos;  // rows past it are zero-filled: P is 0 there but 0 · NaN is not
            const int64_t off =
                valid ? KvOffset(table, j, b.block_size, b.num_kv_heads, kvh, kHd) + ch * kChunkElems : 0;
            const int64_t dst = (stage * kPmTile + row) * kStLd + ch * kChunkElems;
            if constexpr (!kReuse) CpAsync16(st_k + dst, k_plane + off, valid);
            CpAsync16(st_v + dst, v_plane + off, valid);
        }
        CpAsyncCommit();
    };
    // fp8: the staged bytes of tile i to the fp16 tile (16 elements a step: one 16-byte load, two 16-byte stores).
    auto widen_tile = [&](int i) {
        if constexpr (kFp8) {
            const int stage = i & 1;
            for (int idx = threadIdx.x; idx < kPmTile * kChunks; idx += kPmThreads) {
                const int row = idx / kChunks, ch = idx % kChunks;
                auto widen = [&](const P* src, T* dst) {
                    const uint4 raw = *reinterpret_cast<const uint4*>(src + (stage * kPmTile + row) * kHd + ch * 16);
                    uint4* d = reinterpret_cast<uint4*>(dst + row * kLd + ch * 16);
                    d[0] = Widen16(make_uint2(raw.x, raw.y));
                    d[1] = Widen16(make_uint2(raw.z, raw.w));
                };
                if constexpr (!kReuse) widen(r_k, s_k);
                widen(r_v, s_v);
            }
        }
    };
    load_tile(0);
    for (int i = 0; i < n_tiles; ++i) {
        if (i + 1 < n_tiles) {
            load_tile(i + 1);
            CpAsyncWait<1>();
        } else {
            CpAsyncWait<0>();
        }
        __syncthreads();  // tile i is staged
        if constexpr (kFp8) {
            widen_tile(i);  // the fp16 tile's last readers (tile i - 1) finished at the loop's closing barrier
            __syncthreads();
        }
        const int kt = first + i * kPmTile;
        const T* tk = s_k + (kStages == 2 ? (i & 1) : 0) * kPmTile * kLd;
        const T* tv = s_v + (kStages == 2 ? (i & 1) : 0) * kPmTile * kLd;
        if (kt <= warp_hi && kt + kPmTile > warp_lo) {
            // P of this tile as A fragments (hi, lo) per k16 step of tokens.
            uint32_t ph[kPmTile / 16][4], pl[kPmTile / 16][4];
            if constexpr (!kReuse) {
                float sc[kSTiles][4];
#pragma unroll
                for (int nt = 0; nt < kSTiles; ++nt) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
                for (int ks = 0; ks < kKSteps; ++ks) {
#pragma unroll
                    for (int np = 0; np < kSTiles / 2; ++np) {
                        // Matrices: tokens 16np + [0,8) / [8,16) x dims 16ks + [0,8) / [8,16).
                        uint32_t kb[4];
                        const int tok = np * 16 + (lane / 16) * 8 + lane % 8;
                        LdMatrix4(kb, tk + tok * kLd + ks * 16 + ((lane / 8) % 2) * 8);
                        Mma16816<T>(sc[2 * np], qh[ks], kb[0], kb[1]);
                        Mma16816<T>(sc[2 * np], ql[ks], kb[0], kb[1]);
                        Mma16816<T>(sc[2 * np + 1], qh[ks], kb[2], kb[3]);
                        Mma16816<T>(sc[2 * np + 1], ql[ks], kb[2], kb[3]);
                    }
                }
                float tmax_a = -FLT_MAX, tmax_b = -FLT_MAX;
#pragma unroll
                for (int nt = 0; nt < kSTiles; ++nt) {
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        const int j = kt + nt * 8 + 2 * c + e;
                        const float sa = sc[nt][e] * scale, sb = sc[nt][2 + e] * scale;
                        const bool va = j <= pos_a && j >= lo_a, vb = j <= pos_b && j >= lo_b;
                        if (probs != nullptr) {
                            if (va) probs[prow_a + j] = sa;
                            if (vb) probs[prow_b + j] = sb;
                        }
                        sc[nt][e] = va ? sa : -FLT_MAX;
                        sc[nt][2 + e] = vb ? sb : -FLT_MAX;
                        tmax_a = fmaxf(tmax_a, sc[nt][e]);
                        tmax_b = fmaxf(tmax_b, sc[nt][2 + e]);
                    }
                }
#pragma unroll
                for (int off = 1; off <= 2; off <<= 1) {
                    tmax_a = fmaxf(tmax_a, __shfl_xor_sync(0xffffffffu, tmax_a, off));
                    tmax_b = fmaxf(tmax_b, __shfl_xor_sync(0xffffffffu, tmax_b, off));
                }
                const float mn_a = fmaxf(m_a, tmax_a), mn_b = fmaxf(m_b, tmax_b);
                const float corr_a = m_a == -FLT_MAX ? 0.f : expf(m_a - mn_a);
                const float corr_b = m_b == -FLT_MAX ? 0.f : expf(m_b - mn_b);
                m_a = mn_a;
                m_b = mn_b;
                float sum_a = 0.f, sum_b = 0.f;
#pragma unroll
                for (int nt = 0; nt < kSTiles; ++nt) {
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        sc[nt][e] = sc[nt][e] == -FLT_MAX ? 0.f : expf(sc[nt][e] - mn_a);
                        sc[nt][2 + e] = sc[nt][2 + e] == -FLT_MAX ? 0.f : expf(sc[nt][2 + e] - mn_b);
                        sum_a += sc[nt][e];
                        sum_b += sc[nt][2 + e];
                    }
                }
                l_a = l_a * corr_a + sum_a;
                l_b = l_b * corr_b + sum_b;
#pragma unroll
                for (int nd = 0; nd < kOTiles; ++nd) {
                    o[nd][0] *= corr_a;
                    o[nd][1] *= corr_a;
                    o[nd][2] *= corr_b;
                    o[nd][3] *= corr_b;
                }
#pragma unroll
                for (int kk = 0; kk < kPmTile / 16; ++kk) {
                    SplitPair<T>(sc[2 * kk][0], sc[2 * kk][1], ph[kk][0], pl[kk][0]);
                    SplitPair<T>(sc[2 * kk][2], sc[2 * kk][3], ph[kk][1], pl[kk][1]);
                    SplitPair<T>(sc[2 * kk + 1][0], sc[2 * kk + 1][1], ph[kk][2], pl[kk][2]);
                    SplitPair<T>(sc[2 * kk + 1][2], sc[2 * kk + 1][3], ph[kk][3], pl[kk][3]);
                }
            } else {
                // The anchor's normalised probabilities, 0 outside each row's window and past its position.
                auto p_at = [&](int64_t prow, int pos, int lo, int j) {
                    return j <= pos && j >= lo ? probs[prow + j] : 0.f;
                };
#pragma unroll
                for (int kk = 0; kk < kPmTile / 16; ++kk) {
#pragma unroll
                    for (int half = 0; half < 2; ++half) {
                        const int j = kt + kk * 16 + half * 8 + 2 * c;
                        SplitPair<T>(p_at(prow_a, pos_a, lo_a, j), p_at(prow_a, pos_a, lo_a, j + 1), ph[kk][2 * half],
                                     pl[kk][2 * half]);
                        SplitPair<T>(p_at(prow_b, pos_b, lo_b, j), p_at(prow_b, pos_b, lo_b, j + 1),
                                     ph[kk][2 * half + 1], pl[kk][2 * half + 1]);
                    }
                }
            }
#pragma unroll
            for (int kk = 0; kk < kPmTile / 16; ++kk) {
#pragma unroll
                for (int dp = 0; dp < kOTiles / 2; ++dp) {
                    // Matrices (transposed): tokens 16kk + [0,8) / [8,16) x dims 16dp + [0,8) / [8,16).
                    uint32_t vb[4];
                    const int tok = kk * 16 + ((lane / 8) % 2) * 8 + lane % 8;
                    LdMatrix4T(vb, tv + tok * kLd + dp * 16 + (lane / 16) * 8);
                    Mma16816<T>(o[2 * dp], ph[kk], vb[0], vb[1]);
                    Mma16816<T>(o[2 * dp], pl[kk], vb[0], vb[1]);
                    Mma16816<T>(o[2 * dp + 1], ph[kk], vb[2], vb[3]);
                    Mma16816<T>(o[2 * dp + 1], pl[kk], vb[2], vb[3]);
                }
            }
        }
        __syncthreads();  // tile i's stage is consumed before tile i + 2 loads into it (fp8: before i + 1 widens)
    }

    if constexpr (!kReuse) {
#pragma unroll
        for (int off = 1; off <= 2; off <<= 1) {
            l_a += __shfl_xor_sync(0xffffffffu, l_a, off);
            l_b += __shfl_xor_sync(0xffffffffu, l_b, off);
        }
    }
    const float inv_a = (kReuse ? 1.0f : 1.0f / l_a) * v_scale, inv_b = (kReuse ? 1.0f : 1.0f / l_b) * v_scale;
#pragma unroll
    for (int nd = 0; nd < kOTiles; ++nd) {
        const int e = nd * 8 + 2 * c;
        if (pos_a >= 0) {
            float* oa = out + (t0 + ra) * out_ld + static_cast<int64_t>(h) * kHd + e;
            oa[0] = o[nd][0] * inv_a;
            oa[1] = o[nd][1] * inv_a;
        }
        if (pos_b >= 0) {
            float* ob = out + (t0 + rb) * out_ld + static_cast<int64_t>(h) * kHd + e;
            ob[0] = o[nd][2] * inv_b;
            ob[1] = o[nd][3] * inv_b;
        }
    }
    if (!kReuse && c == 0 && stats != nullptr) {
        if (pos_a >= 0) {
            const int64_t row = static_cast<int64_t>(t0 + ra) * b.num_heads + h;
            stats[row * 2] = m_a;
            stats[row * 2 + 1] = l_a;
        }
        if (pos_b >= 0) {
            const int64_t row = static_cast<int64_t>(t0 + rb) * b.num_heads + h;
            stats[row * 2] = m_b;
            stats[row * 2 + 1] = l_b;
        }
    }
}

// How a decode launch is cut: query heads per block and the most splits of any token.
struct DecodePlan {
    int heads_per_block, head_groups, max_splits;
};

// The most positions any token of the batch attends to.
int MaxAttended(const PagedBatch& b) {
    return b.sliding_window > 0 ? std::min(b.max_context_len, b.sliding_window) : b.max_context_len;
}

// Whether a decode launch over planes of T (16-bit or fp8 e4m3) runs DecodeMmaKernel.
template <typename T>
bool DecodeOnTensorCores(const PagedBatch& b) {
    // MHA stays on the CUDA-core kernel with the register kernel: one real row of 16 lost to it (81% against 95% of
    // copy bandwidth at Llama-2-7B 16x4096, docs/gpu-notes.md); GQA gains (66% against 44% at Llama-3-8B 16x4096).
    // The staged kernel takes MHA too (its loads do not wait on the arithmetic; to be measured against the CUDA cores).
    return kMmaKv<T> && b.tensor_cores && (b.num_heads / b.num_kv_heads >= 2 || b.staged_decode) &&
           (b.head_dim == 64 || b.head_dim == 128);
}

DecodePlan PlanDecode(const PagedBatch& b, bool mma) {
    DecodePlan p;
    const int n_rep = b.num_heads / b.num_kv_heads;
    const int most = mma ? kMmaHeads : kMaxRep;
    p.head_groups = b.heads_per_block == 1 ? n_rep : (n_rep + most - 1) / most;
    p.heads_per_block = (n_rep + p.head_groups - 1) / p.head_groups;
    p.max_splits = std::max(kTargetSplits + 1, (MaxAttended(b) + kMaxChunk - 1) / kMaxChunk);
    return p;
}

// The decode kernels' cross-warp merge: [kDecodeWarps][heads][head_dim] partial outputs and (max, sum).
size_t DecodeSmem(int head_dim, bool mma) {
    return sizeof(float) * kDecodeWarps * (mma ? kMmaHeads : kMaxRep) * (head_dim + 2);
}

size_t PrefillSmem(int head_dim) {
    return sizeof(float) * (static_cast<size_t>(kBq + kBk) * (head_dim + 1) + static_cast<size_t>(kBq) * (kBk + 1));
}

template <typename T, bool kReuse>
void LaunchDecode(const float* q, int64_t q_ld, const T* k, const T* v, const PagedBatch& b, float* out, int64_t out_ld,
                  float* probs, int64_t probs_ld, const AttentionWorkspace& ws, Stream stream) {
    const bool mma = DecodeOnTensorCores<T>(b);
    const DecodePlan p = PlanDecode(b, mma);
    const dim3 grid(p.max_splits, b.num_kv_heads * p.head_groups, b.num_seqs);
    const size_t smem = DecodeSmem(b.head_dim, mma);
    // The last split block merges (no combine launch) only for few sequences: it saves a launch per layer at
    // batch 1, but at batch 16-32 the merges of many tokens pile up in the kernel's tail while a separate
    // combine kernel spreads them over the device (measured in docs/gpu-notes.md run 9). Both paths run
    // MergeSplits in split order, so the choice by batch size keeps results batch-invariant.
    unsigned* counters = b.num_seqs <= kFusedMergeMaxSeqs ? ws.split_counters : nullptr;
    auto launch = [&](auto kernel) {
        LaunchKernel(mma ? "DecodeMmaKernel" : "DecodeStreamKernel", kernel, grid, kDecodeThreads, smem, stream, q,
                     q_ld, k, v, b, p.heads_per_block, p.max_splits, out, out_ld, ws.part_acc, ws.part_ml, ws.stats,
                     probs, probs_ld, counters);
    };
    // Lane groups: 16-byte loads per lane where head_dim allows (fp8: 8 bytes, 8 elements a lane).
    constexpr int kG128 = sizeof(T) == 4 ? 32 : 16;
    constexpr int kG64 = sizeof(T) == 4 ? 16 : 8;
    const bool mha = p.heads_per_block == 1;
    if (mma) {
        if constexpr (kMmaKv<T>) {
            if (b.staged_decode) {
                auto staged = [&](auto kernel, size_t bytes) {
                    OptInSharedMemory(reinterpret_cast<const void*>(kernel), bytes);
                    LaunchKernel("DecodeStagedKernel", kernel, grid, kDecodeThreads, bytes, stream, q, q_ld, k, v, b,
                                 p.heads_per_block, p.max_splits, out, out_ld, ws.part_acc, ws.part_ml, ws.stats, probs,
                                 probs_ld, counters);
                };
                if (b.head_dim == 128) {
                    staged(DecodeStagedKernel<T, 128, kReuse>, StagedDecodeSmem<T, 128, kReuse>());
                } else {
                    staged(DecodeStagedKernel<T, 64, kReuse>, StagedDecodeSmem<T, 64, kReuse>());
                }
            } else {
                launch(b.head_dim == 128 ? DecodeMmaKernel<T, 128, kReuse> : DecodeMmaKernel<T, 64, kReuse>);
            }
        }
    } else if (b.head_dim == 128) {
        mha ? launch(DecodeStreamKernel<T, 128, kG128, 1, kReuse>)
            : launch(DecodeStreamKernel<T, 128, kG128, kMaxRep, kReuse>);
    } else if (b.head_dim == 64) {
        mha ? launch(DecodeStreamKernel<T, 64, kG64, 1, kReuse>)
            : launch(DecodeStreamKernel<T, 64, kG64, kMaxRep, kReuse>);
    } else {
        mha ? launch(DecodeStreamKernel<T, 0, 32, 1, kReuse>) : launch(DecodeStreamKernel<T, 0, 32, kMaxRep, kReuse>);
    }
    if (MaxAttended(b) > MinChunk(b) && counters == nullptr) {  // some token may have several splits
        LaunchKernel("CombineKernel", CombineKernel<kReuse>, b.num_seqs * b.num_heads, 128, 0, stream, ws.part_acc,
                     ws.part_ml, p.max_splits, b, out, out_ld, ws.stats);
    }
}

// Whether a prefill launch over planes of T runs PrefillMmaKernel (MHA and GQA alike: prefill is bound by
// arithmetic, which tensor cores do faster for any head layout): 16-bit planes, and fp8 e4m3 ones with
// PagedBatch::fp8_prefill_mma (CudaOptions::fp8_prefill_tensor_cores).
template <typename T>
bool PrefillOnTensorCores(const PagedBatch& b) {
    return kMmaKv<T> && b.tensor_cores && (!kFp8Kv<T> || b.fp8_prefill_mma) && (b.head_dim == 64 || b.head_dim == 128);
}

// 16-bit planes: two 16-bit tiles per plane; fp8: one 16-bit tile and two tiles of bytes as stored.
size_t PrefillMmaSmem(int head_dim, bool reuse, bool fp8) {
    const size_t tile16 = sizeof(uint16_t) * kPmTile * (head_dim + kPmPad);
    const size_t per_plane = fp8 ? tile16 + 2 * static_cast<size_t>(kPmTile) * head_dim : 2 * tile16;
    return per_plane * (reuse ? 1 : 2);
}

template <typename T, bool kReuse>
void LaunchPrefill(const float* q, int64_t q_ld, const T* k, const T* v, const PagedBatch& b, float* out,
                   int64_t out_ld, float* probs, int64_t probs_ld, float* stats, Stream stream) {
    const float scale = 1.0f / sqrtf(static_cast<float>(b.head_dim));  // the CPU backend's rounding
    if constexpr (kMmaKv<T>) {
        if (PrefillOnTensorCores<T>(b)) {
            const dim3 grid(CeilDiv(b.max_query_len, kPmRows), b.num_heads, b.num_seqs);
            const size_t smem = PrefillMmaSmem(b.head_dim, kReuse, kFp8Kv<T>);
            auto launch = [&](auto kernel) {
                OptInSharedMemory(reinterpret_cast<const void*>(kernel), smem);
                LaunchKernel("PrefillMmaKernel", kernel, grid, kPmThreads, smem, stream, q, q_ld, k, v, b, scale, out,
                             out_ld, probs, probs_ld, stats);
            };
            b.head_dim == 128 ? launch(PrefillMmaKernel<T, 128, kReuse>) : launch(PrefillMmaKernel<T, 64, kReuse>);
            return;
        }
    }
    const dim3 grid(CeilDiv(b.max_query_len, kBq), b.num_heads, b.num_seqs);
    const size_t smem = PrefillSmem(b.head_dim);
    auto launch = [&](auto kernel) {
        LaunchKernel("PrefillKernel", kernel, grid, kPrefillThreads, smem, stream, q, q_ld, k, v, b, scale, out, out_ld,
                     probs, probs_ld, stats);
    };
    if (b.head_dim == 128) {
        launch(PrefillKernel<T, 128, kReuse>);
    } else if (b.head_dim == 64) {
        launch(PrefillKernel<T, 64, kReuse>);
    } else {
        launch(PrefillKernel<T, 0, kReuse>);
    }
}

}  // namespace

bool AttentionSupportsHeadDim(int head_dim) { return head_dim > 0 && head_dim <= kGenericMaxHeadDim; }

void AttentionWorkspaceFloats(const PagedBatch& b, int64_t sizes[4]) {
    const DecodePlan p = PlanDecode(b, false);  // max_splits does not depend on the kernel
    const int64_t parts = static_cast<int64_t>(b.num_seqs) * b.num_heads * p.max_splits;
    sizes[0] = parts * b.head_dim;
    sizes[1] = parts * 2;
    sizes[2] = static_cast<int64_t>(b.num_tokens) * b.num_heads * 2;
    sizes[3] = static_cast<int64_t>(b.num_seqs) * b.num_heads;  // split counters (grid.y <= num_heads)
}

void Attention(const float* q, int64_t q_ld, const void* k_plane, const void* v_plane, DType kv_dtype,
               const PagedBatch& b, float* out, int64_t out_ld, float* probs, int64_t probs_ld,
               const AttentionWorkspace& ws, Stream stream) {
    if (b.num_tokens == 0) return;
    const bool all_decode = b.num_tokens == b.num_seqs;
    UA_CHECK(kv_dtype != DType::kF8E4M3 || (b.k_scale != nullptr && b.v_scale != nullptr));
    UA_DISPATCH_KV_DTYPE(kv_dtype, T, {
        const T* k = static_cast<const T*>(k_plane);
        const T* v = static_cast<const T*>(v_plane);
        LaunchDecode<T, false>(q, q_ld, k, v, b, out, out_ld, probs, probs_ld, ws, stream);
        if (!all_decode) LaunchPrefill<T, false>(q, q_ld, k, v, b, out, out_ld, probs, probs_ld, ws.stats, stream);
    });
    if (probs != nullptr) {
        LaunchKernel("NormalizeProbsKernel", NormalizeProbsKernel, b.num_tokens * b.num_heads, 256, 0, stream, probs,
                     probs_ld, ws.stats, b.positions, b.num_heads, b.sliding_window);
    }
}

void ReuseAttention(const float* probs, int64_t probs_ld, const void* v_plane, DType kv_dtype, const PagedBatch& b,
                    float* out, int64_t out_ld, const AttentionWorkspace& ws, Stream stream) {
    if (b.num_tokens == 0) return;
    const bool all_decode = b.num_tokens == b.num_seqs;
    float* p = const_cast<float*>(probs);  // read only on the reuse path
    UA_CHECK(kv_dtype != DType::kF8E4M3 || b.v_scale != nullptr);
    UA_DISPATCH_KV_DTYPE(kv_dtype, T, {
        const T* v = static_cast<const T*>(v_plane);
        LaunchDecode<T, true>(nullptr, 0, nullptr, v, b, out, out_ld, p, probs_ld, ws, stream);
        if (!all_decode) LaunchPrefill<T, true>(nullptr, 0, nullptr, v, b, out, out_ld, p, probs_ld, nullptr, stream);
    });
}

}  // namespace uniattn::cuda
