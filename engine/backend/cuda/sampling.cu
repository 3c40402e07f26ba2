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
#include <climits>

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
    int top_id[kMaxTopLogprobs];
    float top_l[kMaxTopLogprobs];
};

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
__device__ void BlockArgMax(const RowCtx& c, Shared& sh) {
    float best = -INFINITY;
    int best_id = INT_MAX;
    for (int i = threadIdx.x; i < c.vocab; i += kThreads) {
        const float x = c.l[i];
        if (x > best || best_id == INT_MAX) {
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
}

struct Crossing {
    Bound at;                // the last element of the prefix
    unsigned long long cum;  // the prefix's measure
};

// The shortest prefix of the elements in play (those within `bound`, and passing min-p when use_min_p)
// whose measure reaches the goal's target, the target computed from the total measure T in play:
//   kCountAtLeast: count >= min(count, T);  kWeightAtLeastFraction: W >= ceil(frac · T);
//   kWeightAboveFraction: W > min(floor(frac · T), T - 1)   (products in double, as in the reference).
template <bool kByWeight>
__device__ Crossing FindCrossing(const RowCtx& c, const Bound& bound, bool use_min_p, Goal goal,
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
        for (int base = 0; base < c.vocab; base += kThreads) {
            const int i = base + static_cast<int>(threadIdx.x);
            int digit = kNoDigit;
            unsigned long long w = 0;
            if (i < c.vocab) {
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
    const int chunk = (c.vocab + kThreads - 1) / kThreads;
    const int begin = min(c.vocab, static_cast<int>(threadIdx.x) * chunk);
    const int end = min(c.vocab, begin + chunk);
    int mine = 0;
    for (int i = begin; i < end; ++i) {
        const float x = c.l[i];
        const uint32_t key = OrderKey(x);
        mine += key == prefix && in_play(x, key, i);
    }
    const int before = BlockExclusiveScan(mine, sh);
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
    Crossing out{{prefix, sh.tie_id}, sh.cum_before};
    __syncthreads();
    return out;
}

__global__ void __launch_bounds__(kThreads)
    SampleRowsKernel(const float* __restrict__ logits, int64_t ld, int vocab, const SampleRowParams* __restrict__ rows,
                     const LogitEdit* __restrict__ edits, float* work, SampleRowResult* __restrict__ results) {
    PdlEnter();
    __shared__ Shared sh;
    const SampleRowParams p = rows[blockIdx.x];
    const float* l = logits + static_cast<int64_t>(p.logits_row) * ld;
    if (p.num_edits > 0) {
        float* w = work + static_cast<int64_t>(blockIdx.x) * vocab;
        for (int i = threadIdx.x; i < vocab; i += kThreads) w[i] = l[i];
        __syncthreads();
        const float rp = p.repetition_penalty;
        for (int e = threadIdx.x; e < p.num_edits; e += kThreads) {
            const LogitEdit ed = edits[p.edit_start + e];
            if (ed.token_id < 0 || ed.token_id >= vocab) continue;
            float x = __fadd_rn(w[ed.token_id], ed.bias);
            if (ed.repeated != 0) x = x > 0 ? __fdiv_rn(x, rp) : __fmul_rn(x, rp);
            w[ed.token_id] = __fsub_rn(x, ed.subtract);
        }
        __syncthreads();
        l = w;
    }
    RowCtx c{l, vocab, 0.0f, 1.0f, 0.0f};
    BlockArgMax(c, sh);
    c.m = sh.m;
    const int num_top = min(min(p.num_top, kMaxTopLogprobs), vocab);
    float log_z = 0;
    if (p.want_logprob != 0 || num_top > 0) {
        float s = 0;
        for (int i = threadIdx.x; i < vocab; i += kThreads) s += expf(l[i] - c.m);
        log_z = c.m + logf(BlockSum(s, sh));
    }

    int token = sh.argmax;
    if (p.temperature != 0.0f) {
        c.inv_t = __fdiv_rn(1.0f, p.temperature);
        c.log_min_p = p.log_min_p;
        const bool min_p = p.use_min_p != 0;
        Bound bound{0u, INT_MAX};  // everything
        if (p.top_k > 0 && p.top_k < vocab) {
            bound = FindCrossing<false>(c, bound, false, Goal::kCountAtLeast, p.top_k, 0, sh).at;
        }
        if (p.top_p < 1.0f)
            bound = FindCrossing<true>(c, bound, min_p, Goal::kWeightAtLeastFraction, 0, p.top_p, sh).at;
        token = FindCrossing<true>(c, bound, min_p, Goal::kWeightAboveFraction, 0, p.u, sh).at.id;
        if (token < 0) token = sh.argmax;  // NaN logits only
    }

    if (num_top > 0) {
        const Bound last = FindCrossing<false>(c, Bound{0u, INT_MAX}, false, Goal::kCountAtLeast, num_top, 0, sh).at;
        if (threadIdx.x == 0) sh.num_gathered = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < vocab; i += kThreads) {
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
    }
    if (threadIdx.x == 0) {
        SampleRowResult& r = results[blockIdx.x];
        r.token = token;
        r.logprob = p.want_logprob != 0 ? l[token] - log_z : 0.0f;
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

void SampleRows(const float* logits, int64_t ld, int vocab, int num_rows, const SampleRowParams* rows,
                const LogitEdit* edits, float* work, SampleRowResult* results, Stream stream) {
    if (num_rows == 0) return;
    LaunchKernel("SampleRowsKernel", SampleRowsKernel, num_rows, kThreads, 0, stream, logits, ld, vocab, rows, edits,
                 work, results);
}

}  // namespace uniattn::cuda
