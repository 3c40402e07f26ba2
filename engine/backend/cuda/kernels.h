// Host-side launchers of the CUDA backend's kernels. Raw device pointers, explicit sizes and row strides
// (ld, in elements); every launch goes to `stream` and is checked. Offsets are computed in 64 bits.
// Element types are named by DType: f32 `float`, f16 `__half`, bf16 `__nv_bfloat16`, f8_e4m3 `__nv_fp8_e4m3`.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/backend.h"
#include "uniattn/dtype.h"

namespace uniattn::cuda {

// The stream every launcher enqueues on, and whether its kernels use programmatic dependent launch
// (common.cuh: LaunchKernel, PdlEnter). Converts from a plain stream (pdl off).
struct Stream {
    Stream(cudaStream_t s, bool with_pdl = false) : stream(s), pdl(with_pdl) {}  // NOLINT: implicit by design
    operator cudaStream_t() const { return stream; }                             // NOLINT
    cudaStream_t stream;
    bool pdl;
};

// ---- elementwise.cu ----

// out[t, :] = float(table[tokens[t], :])       table [vocab, d] (ld table_ld), out [T, d] fp32
void Embedding(const int32_t* tokens, int num_tokens, const void* table, DType table_dtype, int64_t table_ld, int64_t d,
               float* out, int64_t out_ld, Stream stream);

// out[t] = x[t] / rms(x[t]) * w                 x, out [rows, d] fp32; w [d]
void RmsNorm(const float* x, int64_t x_ld, const void* w, DType w_dtype, float eps, float* out, int64_t out_ld,
             int64_t rows, int64_t d, Stream stream);

// Hugging Face half-split RoPE in place: pairs (i, i + head_dim/2) rotated by positions[t] · inv_freq[i]
// (angle and sincos in double, rounded to float).
//   x [rows, num_heads * head_dim] fp32; positions [rows]; inv_freq [head_dim / 2] fp64, device memory
void Rope(float* x, int64_t x_ld, int64_t rows, int num_heads, int head_dim, const int32_t* positions,
          const double* inv_freq, Stream stream);

// Per-head RMSNorm in place (Qwen3's q_norm / k_norm): every head_dim slice of every row is divided by its
// rms and scaled by w.        x [rows, num_heads * head_dim] fp32 (row stride x_ld); w [head_dim] of w_dtype
void HeadRmsNorm(float* x, int64_t x_ld, int64_t rows, int num_heads, int head_dim, const void* w, DType w_dtype,
                 float eps, Stream stream);

// x[t, :] += bias                               x [rows, cols] fp32 (row stride x_ld); bias [cols] of bias_dtype
void AddBias(float* x, int64_t x_ld, const void* bias, DType bias_dtype, int64_t rows, int64_t cols, Stream stream);

// plane[slot_mapping[t] * width + i] = src[t, i]      src [rows, width] fp32;
//   plane [num_blocks, block_size, num_kv_heads, head_dim] of plane_dtype, width = num_kv_heads * head_dim.
// f8_e4m3 planes: e4m3(src[t, i] / scale[i / head_dim]) (a division, round to nearest even, saturating: the CPU
// backend's bytes); scale [num_kv_heads] fp32, device memory (ignored, may be null, for other dtypes).
void WriteKv(const float* src, int64_t src_ld, int64_t rows, void* plane, DType plane_dtype, int64_t width,
             const int64_t* slot_mapping, const float* scale, int head_dim, Stream stream);

// Rope(q) in place; rotated k and plain v written to their planes (k itself is left unrotated).
//   q [rows, num_heads * head_dim], k and v [rows, num_kv_heads * head_dim] fp32; inv_freq as Rope;
//   k_scale / v_scale: the f8_e4m3 planes' per-head scales as WriteKv's
void RopeWriteKv(float* q, int64_t q_ld, const float* k, int64_t k_ld, const float* v, int64_t v_ld, int64_t rows,
                 int num_heads, int num_kv_heads, int head_dim, const int32_t* positions, const double* inv_freq,
                 void* k_plane, void* v_plane, DType plane_dtype, const float* k_scale, const float* v_scale,
                 const int64_t* slot_mapping, Stream stream);

// out[t, i] = silu(gate_up[t, i]) * gate_up[t, ff + i]     gate_up [rows, 2·ff], out [rows, ff] fp32
void SiluMul(const float* gate_up, int64_t gu_ld, float* out, int64_t out_ld, int64_t rows, int64_t ff, Stream stream);
// RmsNorm and SiluMul writing a GEMM's 16-bit input directly (out [rows, d] / [rows, ff], dense, out_dtype
// f16 or bf16): the fp32 results rounded once, the same values as the fp32 op followed by SplitHiLo.
void RmsNorm16(const float* x, int64_t x_ld, const void* w, DType w_dtype, float eps, void* out, DType out_dtype,
               int64_t rows, int64_t d, Stream stream);
// The row plan RmsNorm16 runs for rows of width d at x (row stride x_ld): one block of *threads threads, *slots
// 4-element slots a thread; false where it takes the scalar kernel (unaligned, odd widths, rows wider than 32768).
bool RowNormPlan(const float* x, int64_t x_ld, int64_t d, int* threads, int* slots);
void SiluMul16(const float* gate_up, int64_t gu_ld, void* out, DType out_dtype, int64_t rows, int64_t ff,
               Stream stream);

// x += y                                        x, y [rows, cols] fp32
void Add(float* x, int64_t x_ld, const float* y, int64_t y_ld, int64_t rows, int64_t cols, Stream stream);

// out[i, :] = x[rows[i], :]                     rows: device indices
void GatherRows(const float* x, int64_t x_ld, const int32_t* rows, int num_rows, int64_t cols, float* out,
                int64_t out_ld, Stream stream);

// Splits fp32 x into 16-bit parts for tensor-core GEMMs with fp32-accurate activations:
//   out [2·rows, cols] contiguous: rows [0, rows) = hi = dtype(x), rows [rows, 2·rows) = lo = dtype(x - hi).
// With with_lo false only the hi half [rows, cols] is written.
void SplitHiLo(const float* x, int64_t x_ld, int64_t rows, int64_t cols, void* out, DType dtype, bool with_lo,
               Stream stream);
// y[t, :] = (accumulate ? y[t, :] : 0) + Σ_p yy[p, t, :]       yy [parts, rows, cols] contiguous fp32
// (the hi and lo halves of each K split of a GEMM on SplitHiLo's output).
void CombineParts(const float* yy, int parts, int64_t rows, int64_t cols, float* y, int64_t y_ld, bool accumulate,
                  Stream stream);

// n values of dtype, uniform in [lo, hi), SplitMix64 of (seed, index) (the Backend default's stream).
void FillUniform(void* dst, DType dtype, int64_t n, float lo, float hi, uint64_t seed, Stream stream);

// ---- gemv.cu ----

// Matrix-vector products for few rows, reading fp32 x directly (exact products, fp32 accumulation):
//   y[t, o] = (accumulate ? y[t, o] : 0) + Σ_i x[t, i] · w[o, i]
//   x [rows, in] fp32, w [out, in] of w_dtype (f16/bf16, or f8_e4m3 with w_scale [out] fp32: w[o, i] stands for
//   e4m3(w[o, i]) · w_scale[o]), y [rows, out] fp32; rows <= kGemvMaxRows
constexpr int kGemvMaxRows = 2;
// staged: through the shared-memory staged kernel below (a persistent grid), else one warp per output row
// reading x from global memory. row_segs (staged kernel): warps sharing one output row, 1/2/4/8, 0 = by shape.
void Gemv(const float* x, int64_t x_ld, int rows, const void* w, DType w_dtype, int64_t w_ld, int64_t n_out,
          int64_t n_in, float* y, int64_t y_ld, bool accumulate, Stream stream, bool staged = false, int row_segs = 0,
          const float* w_scale = nullptr);
// Gemv of RmsNorm(x) with the norm fused in (no normalised copy of x is written): with 16-bit weights and
// in % 8 == 0 every block stages x·g in shared memory once (and the 1/rms of each row), then streams weight
// rows against it; otherwise the transform is applied in each warp's loads.
//   y[t, o] (+)= Σ_i x[t, i] g[i] w[o, i] / rms(x[t])       norm_w g [in] fp32
void NormGemv(const float* x, int64_t x_ld, const float* norm_w, float eps, int rows, const void* w, DType w_dtype,
              int64_t w_ld, int64_t n_out, int64_t n_in, float* y, int64_t y_ld, bool accumulate, Stream stream,
              int row_segs = 0, const float* w_scale = nullptr);
// Gemv of SwiGLU(gate_up) with the activation fused in (staged in shared memory as NormGemv):
//   y[t, o] (+)= Σ_i silu(gu[t, i]) gu[t, n_in + i] w[o, i]     gate_up [rows, 2·n_in]
void SiluMulGemv(const float* gate_up, int64_t gu_ld, int rows, const void* w, DType w_dtype, int64_t w_ld,
                 int64_t n_out, int64_t n_in, float* y, int64_t y_ld, bool accumulate, Stream stream, int row_segs = 0,
                 const float* w_scale = nullptr);
// out[r, c] = e4m3(w[r, c]) · scale[r] in out_dtype (f16/bf16): fp8 weights for the GEMMs of more rows than a
// GEMV takes (the values are exact in fp16 when they are normal there; bf16 rounds them).
void DequantFp8(const void* w, int64_t w_ld, const float* scale, int64_t rows, int64_t cols, void* out, DType out_dtype,
                Stream stream);
// Activations for FP8 tensor-core GEMMs, per token: scale[r] = max_c |x[r, c]| / 448 (1 for a zero row) and
// q[r, c] = e4m3(x[r, c] / scale[r]) (round to nearest even, saturating), q [rows, cols] dense.
void QuantizeRowsFp8(const float* x, int64_t x_ld, int64_t rows, int64_t cols, void* q, float* scale, Stream stream);
// RmsNorm / SiluMul followed by QuantizeRowsFp8 in one kernel (q [rows, d] / [rows, ff] dense, scale [rows]): the
// same bytes and scales, without the fp32 rows written and read back (FP8 tensor-core GEMMs of norm / SwiGLU inputs).
void RmsNormFp8(const float* x, int64_t x_ld, const void* w, DType w_dtype, float eps, void* q, float* scale,
                int64_t rows, int64_t d, Stream stream);
void SiluMulFp8(const float* gate_up, int64_t gu_ld, void* q, float* scale, int64_t rows, int64_t ff, Stream stream);
// y[r, c] = (accumulate ? y[r, c] : 0) + (Σ_p raw[p, r, c]) · row_scale[r] · col_scale[c]: an FP8 GEMM's fp32
// result (raw [parts, rows, cols] dense: the partial products of a K split, added in part order) with the per-token
// activation and per-channel weight scales.
void ScaleRowsCols(const float* raw, int parts, int64_t rows, int64_t cols, const float* row_scale,
                   const float* col_scale, float* y, int64_t y_ld, bool accumulate, Stream stream);

// ---- gemm_rows.cu ----

// GEMMs of up to kRowGemmMaxRows rows (decode batches) on mma.sync, weights read once (fp32 accumulation):
//   y[t, o] = (accumulate ? y[t, o] : 0) + s[o] · Σ_i x[t, i] · w[o, i]
//   x [rows, n_in] dense of x_dtype (f16/bf16); w [n_out, n_in] (row stride w_ld) of x_dtype, or f8_e4m3 with w_scale
//   [n_out] (s; 1 for 16-bit weights) widened to x_dtype in registers (exact); y [rows, n_out] fp32 (row stride y_ld).
// The input dimension is cut into `splits` parts (RowGemmSplits); with more than one, partial [splits, rows, n_out]
// fp32 is scratch and counters [RowGemmTiles(n_out)] must be zero before the first launch (each launch leaves them
// zero). A row's result depends only on that row and the shape (the same bits in any batch).
constexpr int kRowGemmMaxRows = 64;
constexpr int kRowGemmTile = 128;  // output channels per block
constexpr int kRowGemmMaxSplits = 16;
bool RowGemmSupports(int rows, DType x_dtype, const void* w, DType w_dtype, int64_t w_ld, int64_t n_in);
int64_t RowGemmTiles(int64_t n_out);
// The split of the input dimension for a matrix (`forced` > 0: that many parts, within 1..kRowGemmMaxSplits and
// the number of 256-element chunks).
int RowGemmSplits(int64_t n_out, int64_t n_in, int num_sms, int forced);
void RowGemm(const void* x, DType x_dtype, int rows, const void* w, DType w_dtype, int64_t w_ld, const float* w_scale,
             int64_t n_out, int64_t n_in, float* y, int64_t y_ld, bool accumulate, int splits, float* partial,
             unsigned* counters, Stream stream);
// RowGemm with fp32 activations and the op that turns them into the 16-bit GEMM input, applied as they are staged
// (no second launch): kNone, x rounded (SplitHiLo's hi part); kNorm, RMSNorm(x) · norm_w (fp32 [n_in]) as RmsNorm16
// writes it; kSiluMul, silu(gate) · up of x = [gate | up] rows (up at column n_in) as SiluMul16 writes it. The same
// 16-bit values as the separate kernel, hence the same result bits. x: 16-byte aligned, x_ld a multiple of 4.
enum class RowGemmInputOp { kNone, kNorm, kSiluMul };
constexpr int kRowGemmFusedMaxRows = 8;
constexpr int kRowGemmFusedNormMaxRows = 2;  // every block reads its rows whole for 1/rms
bool RowGemmFusedSupports(RowGemmInputOp op, int rows, const float* x, int64_t x_ld, int64_t n_in, const float* norm_w);
void RowGemmFused(RowGemmInputOp op, const float* x, int64_t x_ld, const float* norm_w, float eps, DType x_dtype,
                  int rows, const void* w, DType w_dtype, int64_t w_ld, const float* w_scale, int64_t n_out,
                  int64_t n_in, float* y, int64_t y_ld, bool accumulate, int splits, float* partial, unsigned* counters,
                  Stream stream);

// ---- attention.cu ----

// The paged-cache view of one step: the step's AttentionBatch (backend/backend.h), with max_query_len > 0
// (resolved when the batch leaves it unknown), plus the plane's shape and the launch options.
struct PagedBatch : AttentionBatch {
    int block_size = 0;
    int num_heads = 0;
    int num_kv_heads = 0;
    int head_dim = 0;
    int heads_per_block = 0;    // decode: query heads per block, 0 = up to kMaxRep (8 on tensor cores), 1 = one
    bool tensor_cores = false;  // head_dim 64/128: GQA decode (16-bit or fp8 planes) and prefill (16-bit) on mma.sync
    bool fp8_prefill_mma = false;  // with tensor_cores: prefill over fp8 planes on mma.sync too
    int decode_min_chunk = 0;      // decode: fewest context tokens per split (0: 128; a multiple of 64)
    bool staged_decode = false;    // with tensor_cores: decode (GQA and MHA) on DecodeStagedKernel (K/V by cp.async)
    // f8_e4m3 planes: [num_kv_heads] fp32 per-head scales, device memory; an element b
    // of KV head h reads as e4m3(b) · scale[h] (KvPlane::scale). Null for 16/32-bit planes.
    const float* k_scale = nullptr;
    const float* v_scale = nullptr;
};

// Scratch the attention launchers need, sized by AttentionWorkspaceFloats().
struct AttentionWorkspace {
    float* part_acc = nullptr;  // [num_tokens, num_heads, splits, head_dim]
    float* part_ml = nullptr;   // [num_tokens, num_heads, splits, 2]
    float* stats = nullptr;     // [num_tokens, num_heads, 2]: the final (max, sum) of each softmax row
    // [num_seqs, num_heads], zero before the first launch (the kernels leave them at zero): the last split
    // block of a decode token merges the splits. Null: a separate combine kernel merges them.
    unsigned* split_counters = nullptr;
};
// Elements of each workspace array for a batch (part_acc, part_ml, stats: floats; split_counters: unsigned).
void AttentionWorkspaceFloats(const PagedBatch& b, int64_t sizes[4]);

// Causal attention over the paged cache; a token at position pos attends to positions j with
// WindowStart(pos) <= j <= pos (b.sliding_window > 0: pos - sliding_window < j; else 0 <= j). Fills `probs`
// [num_tokens, num_heads, probs_ld] when non-null: the normalised probabilities in the window, 0 before it
// (positions past pos are not written). A token's result depends only on its own sequence (bit-identical
// alone or in any batch).
//   q [num_tokens, num_heads·hd] fp32, k/v planes of kv_dtype (f8_e4m3: with b.k_scale / b.v_scale),
//   out [num_tokens, num_heads·hd] fp32
void Attention(const float* q, int64_t q_ld, const void* k_plane, const void* v_plane, DType kv_dtype,
               const PagedBatch& b, float* out, int64_t out_ld, float* probs, int64_t probs_ld,
               const AttentionWorkspace& ws, Stream stream);

// UniAttn reuse layer: out[t, h] = Σ_j probs[t, h, j] · v[j, h / n_rep] over the token's window (probs are 0
// before it and are not read there).
void ReuseAttention(const float* probs, int64_t probs_ld, const void* v_plane, DType kv_dtype, const PagedBatch& b,
                    float* out, int64_t out_ld, const AttentionWorkspace& ws, Stream stream);

// ---- sampling.cu ----

// Blocks per row of a SampleRows launch: 1, or `parts` blocks sharing each row's passes over slices of `slice` ids
// (few rows leave most SMs idle with one block a row).
struct SampleSplit {
    int parts = 1;
    int slice = 0;
};
// Up to max_parts blocks per row while the launch keeps at most one block per SM (num_sms); parts 1 when max_parts
// < 2 or the rows leave fewer than two blocks each.
SampleSplit PlanSampleSplit(int vocab, int num_rows, int max_parts, int num_sms);
// Device scratch a split launch of num_rows rows exchanges through (0 for one block per row).
size_t SampleSplitScratchBytes(int num_rows, const SampleSplit& split);

// Token selection by the rule of sampling/row_select.h:
//   logits [*, vocab] fp32 (row stride ld); rows [num_rows], edits (indexed by rows[r].edit_start),
//   results [num_rows]: device memory. work [num_rows, vocab] fp32 scratch holds the processed copy of each
//   row that has edits (may be null when no row has any). The logits are not written. With split.parts >= 2:
//   scratch of SampleSplitScratchBytes and barriers [num_rows][2] (zeroed once when allocated; every launch
//   leaves the arrival counts at zero). The tokens do not depend on the split.
void SampleRows(const float* logits, int64_t ld, int vocab, int num_rows, const SampleRowParams* rows,
                const LogitEdit* edits, float* work, SampleRowResult* results, const SampleSplit& split, void* scratch,
                unsigned* barriers, Stream stream);

// Which head dimensions have a kernel (64, 128 specialised; others up to 128 through the generic one).
bool AttentionSupportsHeadDim(int head_dim);

}  // namespace uniattn::cuda
