// Token selection on the device: the rule of sampling/row_select.h, one block per row, no sort.
//
// Every filter of the rule keeps a prefix of the order (logit descending, ties to the lower id), so each
// is found as a crossing: the first position of the order at which a running measure (a count, or the
// integer weights W) reaches a target. A crossing is a radix select over the order-preserving 32-bit key
// of the logit: four passes of 8 bits, each a 256-bin histogram of (count, weight) over the elements still
// in play, walked from the top bin down. The last pass also keeps each bin's lowest and highest id, which
// settles the tie when the crossing is the first or the last of a run of equal logits (or has no ties);
// otherwise one more pass over the ties in id order picks it. Weights are integers, so histogram sums do
// not depend on the order the atomics land in: the result is deterministic and equals the CPU reference's
// exact sums.
//
// Passes over the row: 1 (max) + 1 (sum-exp, when logprobs are wanted) + 4 (5 inside a run of ties) per
// crossing: top-k (count), top-p (weight), the draw (weight), top logprobs (count). Rows with logits
// processors first copy their row to a work buffer and edit it there; the logits themselves are never
// written.
//
// Few rows (batch 1 to a few dozen) leave most SMs idle, and one block needs about 1 ms for the passes over a
// 128k vocabulary. So a launch may give each row several blocks (a row group): each block takes a slice of the
// row, builds its histogram (or max, sum, tie count) over the slice, and the group exchanges them through global
// memory behind a barrier of its own (RowBarrier); every block then merges all parts in part order and walks the
// same bins, so the group stays in step without a second barrier. Integer sums, minima and maxima merge the same
// in any order, so the tokens are those of one block; the fp32 sum of log Z adds the parts in part order. The host
// keeps every block of the launch resident at once (at most one block per SM), which the barrier needs.
#include <algorithm>
#include <climits>
#include <string>

#include "backend/cuda/common.cuh"
#include "backend/cuda/kernels.h"

namespace uniattn::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kNoDigit = 256;

// Larger key = larger float; -0 and +0 share a key (they tie, as in the reference's float compare).
__device__ __forceinline__ uint32_t OrderKey(float x) {
    uint32_t b = __float_as_uint(x);
    if (b == 0x80000000u) b = 0;
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// g = (l - m) · inv_t and W = nearbyint(expf(g) · 2^40), rounded exactly as the reference rounds them.
__device__ __forceinline__ float ScaledLogit(float l, float m, float inv_t) {
    return __fmul_rn(__fsub_rn(l, m), inv_t);
}
__device__ __forceinline__ unsigned long long Weight(float g) { return __float2ull_rn(__fmul_rn(expf(g), 0x1.0p40f)); }

// Elements at or before (key, id) in the order.
struct Bound {
    uint32_t key;
    int32_t id;
};
__device__ __forceinline__ bool InBound(const Bound& b, uint32_t key, int32_t id) {
    return key > b.key || (key == b.key && id <= b.id);
}

struct RowCtx {
    const float* l;  // [vocab], processed
    int vocab;
    float m, inv_t, log_min_p;
};

enum class Goal { kCountAtLeast, kWeightAtLeastFraction, kWeightAboveFraction };

struct Shared {
    unsigned int hist_c[256];
    unsigned long long hist_w[256];
    int bin_lo[256], bin_hi[256];  // last pass: lowest and highest id in each bin
    int warp_i[kWarps];
    float warp_f[kWarps];
    unsigned long long total, target, cum_before, bin_c, bin_w, rank;
    uint32_t prefix;
    int tie_id;
    float m;
    int argmax;
    float log_z;
    int num_gathered;
    int block_total;  // row groups: the block's count of ties in its slice
    int top_id[kMaxTopLogprobs];
    float top_l[kMaxTopLogprobs];
};

// What the blocks of a row group exchange in one round: a histogram, a (value, id) or count pair, or the top
// logprobs gathered in a slice.
union Exchange {
    struct {
        unsigned c[256];
        unsigned long long w[256];
        int lo[256], hi[256];
    } hist;
    struct {
        float f;
        int i;
    } pair;
    struct {
        int count;
        int id[kMaxTopLogprobs];
        float l[kMaxTopLogprobs];
    } top;
};

// A block's exchange slots. Round r uses x[r & 1]: a block writes round r + 2 only after the barrier of round
// r + 1, which no block passes before every block has read round r.
struct SplitSlot {
    Exchange x[2];
};

// The blocks that share one row and this block's part of it: the slice [lo, hi) of the row.
struct RowGroup {
    int part = 0, parts = 1, lo = 0, hi = 0;
    SplitSlot* slots = nullptr;   // the group's, [parts]
    unsigned* barrier = nullptr;  // the group's: [0] arrivals (0 between rounds), [1] generation
    int round = 0;
};

__device__ __forceinline__ unsigned long long GlobalTimerNs() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// Every block of the group reaches this point before any goes on; the writes before it are visible after it
// (read them with ld.cg: L1 is not coherent across SMs). The launch is cooperative, so every block is resident; a
// wait of 20 s means a group that can never meet (a bug), and traps rather than hang the device.
__device__ void RowBarrier(const RowGroup& g) {
    __syncthreads();
    if (threadIdx.x == 0) {
        volatile unsigned* gen = g.barrier + 1;
        const unsigned seen = *gen;
        __threadfence();  // the block's writes (ordered by __syncthreads) and the read of gen before arriving
        if (atomicAdd(g.barrier, 1u) == static_cast<unsigned>(g.parts - 1)) {
            atomicExch(g.barrier, 0u);  // reset for the next round before releasing it
            __threadfence();
            atomicAdd(const_cast<unsigned*>(gen), 1u);
        } else {
            const unsigned long long t0 = GlobalTimerNs();
            while (*gen == seen) {
                __nanosleep(20);
                if (GlobalTimerNs() - t0 > 20000000000ull) __trap();
            }
        }
        __threadfence();
    }
    __syncthreads();
}

// This block's slot of the current round, and part q's.
__device__ __forceinline__ Exchange& MySlot(const RowGroup& g) { return g.slots[g.part].x[g.round & 1]; }
__device__ __forceinline__ const Exchange& PartSlot(const RowGroup& g, int q) { return g.slots[q].x[g.round & 1]; }

__device__ float BlockSum(float v, Shared& sh) {
    v = WarpSum(v);
    if ((threadIdx.x & 31) == 0) sh.warp_f[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = WarpSum(threadIdx.x < kWarps ? sh.warp_f[threadIdx.x] : 0.0f);
        if (threadIdx.x == 0) sh.warp_f[0] = v;
    }
    __syncthreads();
    v = sh.warp_f[0];
    __syncthreads();
    return v;
}

// Exclusive prefix sum of one int per thread, in thread order.
__device__ int BlockExclusiveScan(int v, Shared& sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int incl = v;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const int n = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += n;
    }
    if (lane == 31) sh.warp_i[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        int t = lane < kWarps ? sh.warp_i[lane] : 0;
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
            const int n = __shfl_up_sync(0xffffffffu, t, off);
            if (lane >= off) t += n;
        }
        if (lane < kWarps) sh.warp_i[lane] = t;  // inclusive over warps
    }
    __syncthreads();
    const int out = incl - v + (warp > 0 ? sh.warp_i[warp - 1] : 0);
    __syncthreads();
    return out;
}

// Max logit and its lowest id, broadcast to every thread through sh.m / sh.argmax.
template <bool kSplit>
__device__ void BlockArgMax(const RowCtx& c, RowGroup& g, Shared& sh) {
    float best = -INFINITY;
    int best_id = INT_MAX;
    for (int i = g.lo + static_cast<int>(threadIdx.x); i < g.hi; i += kThreads) {
        const float x = c.l[i];
        if (x > best || (best_id == INT_MAX && !isnan(x))) {  // NaN never wins here (the rule for l[0] is below)
            best = x;
            best_id = i;
        }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float ob = __shfl_xor_sync(0xffffffffu, best, off);
        const int oi = __shfl_xor_sync(0xffffffffu, best_id, off);
        if (ob > best || (ob == best && oi < best_id)) {
            best = ob;
            best_id = oi;
        }
    }
    if ((threadIdx.x & 31) == 0) {
        sh.warp_f[threadIdx.x >> 5] = best;
        sh.warp_i[threadIdx.x >> 5] = best_id;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < kWarps; ++w) {
            if (sh.warp_f[w] > best || (sh.warp_f[w] == best && sh.warp_i[w] < best_id)) {
                best = sh.warp_f[w];
                best_id = sh.warp_i[w];
            }
        }
        sh.m = best;
        sh.argmax = best_id;
    }
    __syncthreads();
    if constexpr (kSplit) {  // the parts' maxima in part order, ties to the lower id (the lower part)
        if (threadIdx.x == 0) {
            MySlot(g).pair.f = sh.m;
            MySlot(g).pair.i = sh.argmax;
        }
        RowBarrier(g);
        if (threadIdx.x == 0) {
            best = __ldcg(&PartSlot(g, 0).pair.f);
            best_id = __ldcg(&PartSlot(g, 0).pair.i);
            for (int q = 1; q < g.parts; ++q) {
                const float f = __ldcg(&PartSlot(g, q).pair.f);
                const int i = __ldcg(&PartSlot(g, q).pair.i);
                if (f > best || (f == best && i < best_id)) {
                    best = f;
                    best_id = i;
                }
            }
            sh.m = best;
            sh.argmax = best_id;
        }
        ++g.round;
        __syncthreads();
    }
    // The reference starts from l[0] and takes only larger logits: a NaN there wins (and is the max), NaN
    // elsewhere never does. In a row group l[0] is part 0's, written before the barrier above: read past L1.
    if (threadIdx.x == 0) {
        const float x0 = kSplit ? __ldcg(c.l) : c.l[0];
        if (isnan(x0) || sh.argmax == INT_MAX) {  // INT_MAX: every element NaN
            sh.m = x0;
            sh.argmax = 0;
        }
    }
    __syncthreads();
}

// A row group's sum of the blocks' values v (each block's own, the same in all its threads), in part order.
__device__ float MergeSum(float v, RowGroup& g) {
    if (threadIdx.x == 0) MySlot(g).pair.f = v;
    RowBarrier(g);
    float sum = 0.0f;
    for (int q = 0; q < g.parts; ++q) sum += __ldcg(&PartSlot(g, q).pair.f);
    ++g.round;
    return sum;
}

// A row group's histograms (after each block has built its own in sh, and a __syncthreads): the sums of every
// part's counts and weights, and with ids the lowest and highest ids, in sh.
__device__ void MergeHistograms(RowGroup& g, Shared& sh, bool ids) {
    Exchange& mine = MySlot(g);
    for (int b = threadIdx.x; b < 256; b += kThreads) {
        mine.hist.c[b] = sh.hist_c[b];
        mine.hist.w[b] = sh.hist_w[b];
        if (ids) {
            mine.hist.lo[b] = sh.bin_lo[b];
            mine.hist.hi[b] = sh.bin_hi[b];
        }
    }
    RowBarrier(g);
    for (int b = threadIdx.x; b < 256; b += kThreads) {
        unsigned cnt = 0;
        unsigned long long w = 0;
        int lo = INT_MAX, hi = -1;
        for (int q = 0; q < g.parts; ++q) {
            const Exchange& x = PartSlot(g, q);
            cnt += __ldcg(&x.hist.c[b]);
            w += __ldcg(&x.hist.w[b]);
            if (ids) {
                lo = min(lo, __ldcg(&x.hist.lo[b]));
                hi = max(hi, __ldcg(&x.hist.hi[b]));
            }
        }
        sh.hist_c[b] = cnt;
        sh.hist_w[b] = w;
        if (ids) {
            sh.bin_lo[b] = lo;
            sh.bin_hi[b] = hi;
        }
    }
    ++g.round;
    __syncthreads();
}

struct Crossing {
    Bound at;                // the last element of the prefix
    unsigned long long cum;  // the prefix's measure
};

// The shortest prefix of the elements in play (those within `bound`, and passing min-p when use_min_p)
// whose measure reaches the goal's target, the target computed from the total measure T in play:
//   kCountAtLeast: count >= min(count, T);  kWeightAtLeastFraction: W >= ceil(frac · T);
//   kWeightAboveFraction: W > min(floor(frac · T), T - 1)   (products in double, as in the reference).
template <bool kByWeight, bool kSplit>
__device__ Crossing FindCrossing(const RowCtx& c, RowGroup& g, const Bound& bound, bool use_min_p, Goal goal,
                                 unsigned long long count, float frac, Shared& sh) {
    const int lane = threadIdx.x & 31;
    uint32_t prefix = 0;
    auto in_play = [&](float x, uint32_t key, int i) {
        return InBound(bound, key, i) && (!use_min_p || ScaledLogit(x, c.m, c.inv_t) >= c.log_min_p);
    };
    for (int pass = 0; pass < 4; ++pass) {
        const int shift = 24 - 8 * pass;
        for (int b = threadIdx.x; b < 256; b += kThreads) {
            sh.hist_c[b] = 0;
            sh.hist_w[b] = 0;
            sh.bin_lo[b] = INT_MAX;
            sh.bin_hi[b] = -1;
        }
        __syncthreads();
        for (int base = g.lo; base < g.hi; base += kThreads) {
            const int i = base + static_cast<int>(threadIdx.x);
            int digit = kNoDigit;
            unsigned long long w = 0;
            if (i < g.hi) {
                const float x = c.l[i];
                const uint32_t key = OrderKey(x);
                if ((pass == 0 || (key >> (shift + 8)) == (prefix >> (shift + 8))) && in_play(x, key, i)) {
                    digit = static_cast<int>((key >> shift) & 255u);
                    if (kByWeight) w = Weight(ScaledLogit(x, c.m, c.inv_t));
                }
            }
            // Lanes with the same digit add once: the first pass puts most of a row in a few bins. Every lane
            // takes part in its group's reductions (lanes out of play form a group of their own).
            const unsigned group = __match_any_sync(0xffffffffu, digit);
            const bool leader = digit != kNoDigit && lane == __ffs(group) - 1;
            if (kByWeight) {
                // W <= 2^40: 20-bit halves summed over <= 32 lanes fit 32 bits.
                const unsigned hi = __reduce_add_sync(group, static_cast<unsigned>(w >> 20));
                const unsigned lo = __reduce_add_sync(group, static_cast<unsigned>(w & 0xFFFFFu));
                if (leader) atomicAdd(&sh.hist_w[digit], (static_cast<unsigned long long>(hi) << 20) + lo);
            }
            if (leader) atomicAdd(&sh.hist_c[digit], static_cast<unsigned>(__popc(group)));
            if (pass == 3) {  // the first and last tie of the key in id order, without a scan
                const int lo = __reduce_min_sync(group, i);
                const int hi = __reduce_max_sync(group, i);
                if (leader) {
                    atomicMin(&sh.bin_lo[digit], lo);
                    atomicMax(&sh.bin_hi[digit], hi);
                }
            }
        }
        __syncthreads();
        if constexpr (kSplit) MergeHistograms(g, sh, pass == 3);
        // Warp 0 walks the bins from the top: lane L sums bins 255 - 8L down to 248 - 8L, a scan over the
        // lanes finds the lane where the running measure crosses the target, and that lane finds the bin.
        if (threadIdx.x < 32) {
            auto measure = [&](int b) -> unsigned long long { return kByWeight ? sh.hist_w[b] : sh.hist_c[b]; };
            const int top = 255 - 8 * lane;
            unsigned long long part = 0;
#pragma unroll
            for (int j = 0; j < 8; ++j) part += measure(top - j);
            unsigned long long incl = part;
#pragma unroll
            for (int off = 1; off < 32; off <<= 1) {
                const unsigned long long n = __shfl_up_sync(0xffffffffu, incl, off);
                if (lane >= off) incl += n;
            }
            const unsigned long long total = __shfl_sync(0xffffffffu, incl, 31);
            unsigned long long target = 0, base = 0;
            if (pass == 0) {
                switch (goal) {
                    case Goal::kCountAtLeast:
                        target = count < total ? count : total;
                        break;
                    case Goal::kWeightAtLeastFraction:
                        target = static_cast<unsigned long long>(
                            ceil(static_cast<double>(frac) * static_cast<double>(total)));
                        if (target > total) target = total;
                        break;
                    case Goal::kWeightAboveFraction:
                        target = static_cast<unsigned long long>(
                            floor(static_cast<double>(frac) * static_cast<double>(total)));
                        if (target >= total) target = total > 0 ? total - 1 : 0;
                        break;
                }
            } else {
                target = sh.target;
                base = sh.cum_before;
            }
            const bool strict = goal == Goal::kWeightAboveFraction;
            const unsigned crossing = __ballot_sync(0xffffffffu, strict ? base + incl > target : base + incl >= target);
            __syncwarp();  // every lane has read sh.target and sh.cum_before before lane `at` writes them
            const int at = crossing != 0 ? __ffs(crossing) - 1 : -1;
            if (lane == (at >= 0 ? at : 0)) {
                int chosen = -1, last = -1;
                unsigned long long cum = base + incl - part, cum_last = cum;
                if (at < 0) {  // unreachable target (nothing in play): the lowest non-empty bin, if any
                    cum = base;
                    for (int b = 255; b >= 0; --b) {
                        if (sh.hist_c[b] == 0) continue;
                        last = b;
                        cum_last = cum;
                        cum += measure(b);
                    }
                } else {
                    for (int j = 0; j < 8; ++j) {
                        const int b = top - j;
                        const unsigned long long mb = measure(b);
                        if (sh.hist_c[b] == 0) continue;
                        if (strict ? cum + mb > target : cum + mb >= target) {
                            chosen = b;
                            break;
                        }
                        cum += mb;
                    }
                }
                if (chosen < 0) {
                    chosen = last < 0 ? 0 : last;
                    cum = cum_last;
                }
                if (pass == 0) {
                    sh.total = total;
                    sh.target = target;
                }
                sh.prefix = prefix | (static_cast<uint32_t>(chosen) << shift);
                sh.cum_before = cum;
                sh.bin_c = sh.hist_c[chosen];
                sh.bin_w = sh.hist_w[chosen];
            }
        }
        __syncthreads();
        prefix = sh.prefix;
    }
    // The key is found; `rank` says which of its ties (in id order) completes the prefix.
    if (threadIdx.x == 0) {
        const unsigned long long ties = sh.bin_c;
        const unsigned long long each = kByWeight ? (ties > 0 ? sh.bin_w / ties : 0) : 1;
        const unsigned long long need = sh.target > sh.cum_before ? sh.target - sh.cum_before : 0;
        unsigned long long rank = ties;
        if (each > 0) rank = goal == Goal::kWeightAboveFraction ? need / each + 1 : (need + each - 1) / each;
        if (rank < 1) rank = 1;
        if (rank > ties) rank = ties;
        sh.rank = rank;
        sh.cum_before += rank * each;
        const int bin = static_cast<int>(prefix & 255u);
        sh.tie_id = rank == 1 ? sh.bin_lo[bin] : (rank == ties ? sh.bin_hi[bin] : -1);
    }
    __syncthreads();
    const int rank = static_cast<int>(sh.rank);
    if (sh.tie_id >= 0) {  // the first or the last tie (a key without ties is both): no scan
        Crossing out{{prefix, sh.tie_id}, sh.cum_before};
        __syncthreads();
        return out;
    }
    // Otherwise the ties in play are counted in id order: per thread over a run of the slice, a scan over the
    // block, and in a row group the counts of the parts before this one.
    const int chunk = (g.hi - g.lo + kThreads - 1) / kThreads;
    const int begin = min(g.hi, g.lo + static_cast<int>(threadIdx.x) * chunk);
    const int end = min(g.hi, begin + chunk);
    int mine = 0;
    for (int i = begin; i < end; ++i) {
        const float x = c.l[i];
        const uint32_t key = OrderKey(x);
        mine += key == prefix && in_play(x, key, i);
    }
    int before = BlockExclusiveScan(mine, sh);
    if constexpr (kSplit) {
        if (threadIdx.x == kThreads - 1) MySlot(g).pair.i = before + mine;
        RowBarrier(g);
        for (int q = 0; q < g.part; ++q) before += __ldcg(&PartSlot(g, q).pair.i);
        ++g.round;
    }
    if (before < rank && rank <= before + mine) {
        int seen = before;
        for (int i = begin; i < end; ++i) {
            const float x = c.l[i];
            const uint32_t key = OrderKey(x);
            if (key == prefix && in_play(x, key, i) && ++seen == rank) {
                sh.tie_id = i;
                break;
            }
        }
    }
    __syncthreads();
    if constexpr (kSplit) {  // one block of the group found it; the others hold -1
        if (threadIdx.x == 0) MySlot(g).pair.i = sh.tie_id;
        RowBarrier(g);
        if (threadIdx.x == 0) {
            int id = -1;
            for (int q = 0; q < g.parts; ++q) id = max(id, __ldcg(&PartSlot(g, q).pair.i));
            sh.tie_id = id;
        }
        ++g.round;
        __syncthreads();
    }
    Crossing out{{prefix, sh.tie_id}, sh.cum_before};
    __syncthreads();
    return out;
}

// kSplit: `parts` blocks per row (block b: row b / parts, part b % parts, the slice of `slice` ids at
// part · slice), exchanging through slots [rows · parts] and barriers [rows][2]; else one block per row.
template <bool kSplit>
__global__ void __launch_bounds__(kThreads)
    SampleRowsKernel(const float* __restrict__ logits, int64_t ld, int vocab, const SampleRowParams* __restrict__ rows,
                     const LogitEdit* __restrict__ edits, float* work, SampleRowResult* __restrict__ results, int parts,
                     int slice, SplitSlot* slots, unsigned* barriers) {
    PdlEnter();
    __shared__ Shared sh;
    const int row = kSplit ? static_cast<int>(blockIdx.x) / parts : static_cast<int>(blockIdx.x);
    RowGroup g;
    g.hi = vocab;
    if constexpr (kSplit) {
        g.part = static_cast<int>(blockIdx.x) % parts;
        g.parts = parts;
        g.lo = g.part * slice;
        g.hi = min(vocab, g.lo + slice);
        g.slots = slots + static_cast<int64_t>(row) * parts;
        g.barrier = barriers + 2 * row;
    }
    const SampleRowParams p = rows[row];
    const float* l = logits + static_cast<int64_t>(p.logits_row) * ld;
    if (p.num_edits > 0) {  // each block edits its own slice: the passes read nothing else before a barrier
        float* w = work + static_cast<int64_t>(row) * vocab;
        for (int i = g.lo + static_cast<int>(threadIdx.x); i < g.hi; i += kThreads) w[i] = l[i];
        __syncthreads();
        const float rp = p.repetition_penalty;
        for (int e = threadIdx.x; e < p.num_edits; e += kThreads) {
            const LogitEdit ed = edits[p.edit_start + e];
            if (ed.token_id < g.lo || ed.token_id >= g.hi) continue;
            float x = __fadd_rn(w[ed.token_id], ed.bias);
            if (ed.repeated != 0) x = x > 0 ? __fdiv_rn(x, rp) : __fmul_rn(x, rp);
            w[ed.token_id] = __fsub_rn(x, ed.subtract);
        }
        __syncthreads();
        l = w;
    }
    RowCtx c{l, vocab, 0.0f, 1.0f, 0.0f};
    BlockArgMax<kSplit>(c, g, sh);
    c.m = sh.m;
    const int num_top = min(min(p.num_top, kMaxTopLogprobs), vocab);
    float log_z = 0;
    if (p.want_logprob != 0 || num_top > 0) {
        float s = 0;
        for (int i = g.lo + static_cast<int>(threadIdx.x); i < g.hi; i += kThreads) s += expf(l[i] - c.m);
        s = BlockSum(s, sh);
        if constexpr (kSplit) s = MergeSum(s, g);
        log_z = c.m + logf(s);
    }

    int token = sh.argmax;
    if (p.temperature != 0.0f) {
        c.inv_t = __fdiv_rn(1.0f, p.temperature);
        c.log_min_p = p.log_min_p;
        const bool min_p = p.use_min_p != 0;
        Bound bound{0u, INT_MAX};  // everything
        if (p.top_k > 0 && p.top_k < vocab) {
            bound = FindCrossing<false, kSplit>(c, g, bound, false, Goal::kCountAtLeast, p.top_k, 0, sh).at;
        }
        if (p.top_p < 1.0f)
            bound = FindCrossing<true, kSplit>(c, g, bound, min_p, Goal::kWeightAtLeastFraction, 0, p.top_p, sh).at;
        token = FindCrossing<true, kSplit>(c, g, bound, min_p, Goal::kWeightAboveFraction, 0, p.u, sh).at.id;
        if (token < 0) token = sh.argmax;  // NaN logits only
    }

    if (num_top > 0) {
        const Bound last =
            FindCrossing<false, kSplit>(c, g, Bound{0u, INT_MAX}, false, Goal::kCountAtLeast, num_top, 0, sh).at;
        if (threadIdx.x == 0) sh.num_gathered = 0;
        __syncthreads();
        for (int i = g.lo + static_cast<int>(threadIdx.x); i < g.hi; i += kThreads) {
            const float x = l[i];
            if (InBound(last, OrderKey(x), i)) {
                const int slot = atomicAdd(&sh.num_gathered, 1);
                if (slot < kMaxTopLogprobs) {
                    sh.top_id[slot] = i;
                    sh.top_l[slot] = x;
                }
            }
        }
        __syncthreads();
        if constexpr (kSplit) {  // part 0 collects the parts' finds in part order (the sort below orders them)
            Exchange& mine = MySlot(g);
            const int n = min(sh.num_gathered, kMaxTopLogprobs);
            for (int k = threadIdx.x; k < n; k += kThreads) {
                mine.top.id[k] = sh.top_id[k];
                mine.top.l[k] = sh.top_l[k];
            }
            if (threadIdx.x == 0) mine.top.count = n;
            RowBarrier(g);
            if (g.part == 0 && threadIdx.x == 0) {
                int n_all = 0;
                for (int q = 0; q < g.parts; ++q) {
                    const Exchange& x = PartSlot(g, q);
                    const int m = __ldcg(&x.top.count);
                    for (int k = 0; k < m && n_all < kMaxTopLogprobs; ++k, ++n_all) {
                        sh.top_id[n_all] = __ldcg(&x.top.id[k]);
                        sh.top_l[n_all] = __ldcg(&x.top.l[k]);
                    }
                }
            }
            ++g.round;
            __syncthreads();
        }
    }
    if (g.part == 0 && threadIdx.x == 0) {
        SampleRowResult& r = results[row];
        r.token = token;
        // A row group's processed row was written by the block that owns the token's slice: read past L1.
        r.logprob = p.want_logprob != 0 ? (kSplit ? __ldcg(l + token) : l[token]) - log_z : 0.0f;
        r.num_top = num_top;
        if (num_top > 0) {
            // Insertion sort of the gathered few into the order.
            for (int a = 1; a < num_top; ++a) {
                const int id = sh.top_id[a];
                const float x = sh.top_l[a];
                int b = a - 1;
                while (b >= 0 && (OrderKey(sh.top_l[b]) < OrderKey(x) ||
                                  (OrderKey(sh.top_l[b]) == OrderKey(x) && sh.top_id[b] > id))) {
                    sh.top_id[b + 1] = sh.top_id[b];
                    sh.top_l[b + 1] = sh.top_l[b];
                    --b;
                }
                sh.top_id[b + 1] = id;
                sh.top_l[b + 1] = x;
            }
            for (int a = 0; a < num_top; ++a) {
                r.top_ids[a] = sh.top_id[a];
                r.top_logprobs[a] = sh.top_l[a] - log_z;
            }
        }
    }
}

}  // namespace

SampleSplit PlanSampleSplit(int vocab, int num_rows, int max_parts, int num_sms) {
    SampleSplit s;
    if (max_parts < 2 || num_rows < 1 || vocab < 1) return s;
    // At most one block per SM in all (the barrier needs every block of a group resident at once; a block of
    // 1024 threads fits any SM), and slices of whole 128-id runs.
    int parts = std::min(max_parts, num_sms / num_rows);
    if (parts < 2) return s;
    const int slice = static_cast<int>(CeilDiv(CeilDiv(vocab, parts), 128)) * 128;
    parts = static_cast<int>(CeilDiv(vocab, slice));
    if (parts < 2) return s;
    s.parts = parts;
    s.slice = slice;
    return s;
}

size_t SampleSplitScratchBytes(int num_rows, const SampleSplit& split) {
    return split.parts < 2 ? 0 : sizeof(SplitSlot) * static_cast<size_t>(num_rows) * split.parts;
}

void SampleRows(const float* logits, int64_t ld, int vocab, int num_rows, const SampleRowParams* rows,
                const LogitEdit* edits, float* work, SampleRowResult* results, const SampleSplit& split, void* scratch,
                unsigned* barriers, Stream stream) {
    if (num_rows == 0) return;
    if (split.parts >= 2) {
        UA_CHECK(scratch != nullptr && barriers != nullptr && split.slice > 0);
        // Cooperative: the driver starts every block at once or refuses the launch (the row barrier needs the whole
        // group resident; an SM shared with other work could otherwise hold back a part while the rest spin).
        // Without programmatic dependent launch: the kernel's PdlEnter is then a no-op.
        cudaLaunchConfig_t config{};
        config.gridDim = dim3(static_cast<unsigned>(num_rows * split.parts));
        config.blockDim = dim3(kThreads);
        config.stream = stream.stream;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeCooperative;
        attr[0].val.cooperative = 1;
        config.attrs = attr;
        config.numAttrs = 1;
        const cudaError_t err =
            cudaLaunchKernelEx(&config, SampleRowsKernel<true>, logits, ld, vocab, rows, edits, work, results,
                               split.parts, split.slice, static_cast<SplitSlot*>(scratch), barriers);
        if (err == cudaSuccess) return;
        if (err != cudaErrorCooperativeLaunchTooLarge) {
            CudaFailed("cudaLaunchKernelEx", __FILE__, __LINE__,
                       (std::string("SampleRowsKernel<split>: ") + cudaGetErrorString(err)).c_str());
        }
        cudaGetLastError();  // the card cannot hold the groups at once (shared SMs): one block per row instead
    }
    LaunchKernel("SampleRowsKernel", SampleRowsKernel<false>, num_rows, kThreads, 0, stream, logits, ld, vocab, rows,
                 edits, work, results, 1, vocab, static_cast<SplitSlot*>(nullptr), static_cast<unsigned*>(nullptr));
}

}  // namespace uniattn::cuda
