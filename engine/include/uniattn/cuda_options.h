// Settings of the CUDA backend that a deployment may set (engine.cuda.* in uniattn-serve's YAML, also
// --set): the device, and the kernel choices below. The CPU backend ignores them.
#pragma once

namespace uniattn {

struct CudaOptions {
    int device = 0;  // CUDA device ordinal
    // Tuning (the defaults are the fastest measured; benchmarks and tests compare the alternatives).
    // K split in this many parts (0: by shape) in cuBLAS GEMMs of 3..64 rows and the mma kernel (mma_gemm_max_rows)
    int gemm_ksplit = 0;
    // RmsNorm / SwiGLU fused into 1-2 row GEMVs: each block of a persistent grid stages the transformed
    // input in shared memory once (the first, per-warp design recomputed it per output row and was slower;
    // docs/gpu-notes.md). Saves the norm and SwiGLU kernels of every layer at batch 1-2.
    bool fuse_gemv_inputs = true;  // measured faster (docs/gpu-notes.md run 9)
    // The same for the mma GEMM kernel (mma_gemm_max_rows): the norm (1-2 rows), SwiGLU and the 16-bit rounding
    // (1-8 rows) applied to the fp32 rows as the kernel stages them, with the separate kernels' exact values (one
    // launch instead of two). Off until it has run on a GPU: written 2026-12-07 when no device machine came.
    bool fuse_mma_gemm_inputs = false;
    // Plain 1-2 row GEMVs through the same staged, persistent kernel (x read once per block).
    bool stage_gemv_input = false;
    // Staged GEMVs: warps sharing one output row (1, 2, 4, 8; 0 picks by shape: 2 at one input row when the
    // output rows outnumber the resident warps).
    int gemv_row_segs = 0;
    // Decode attention split over the context, batches of up to 4 sequences: the last split block of each
    // token merges the splits (a counter per token and head group) instead of a separate combine kernel.
    bool fuse_attention_combine = true;
    // GQA decode: 0 lets up to 4 query heads share one block's K/V reads; 1 gives every query head its
    // own block (K/V rows re-read per head, mostly from L2, with the lighter one-head kernel).
    int decode_heads_per_block = 0;
    // Attention over KV planes with head_dim 64 or 128 on tensor cores (mma.sync; QK^T and P·V split into 16-bit
    // high and low parts so the results keep fp32 accuracy): GQA decode (up to 8 query heads of a KV head per
    // block; fp16/bf16 planes, and fp8 e4m3 ones widened to fp16 in registers) and prefill of every head layout
    // (flash-attention tiles of 64 x 64; fp16/bf16 planes, and fp8 e4m3 ones with fp8_prefill_tensor_cores); false
    // keeps the CUDA-core kernels. MHA decode always uses the CUDA-core kernel (faster there). docs/gpu-notes.md has
    // the measurements.
    bool tensor_core_attention = true;
    // With tensor_core_attention: prefill over fp8 e4m3 KV planes on the tensor-core prefill kernel (the bytes staged
    // as stored and widened to fp16 in shared memory) instead of the CUDA-core one. Off until it has run on a GPU:
    // written 2026-12-07 when no device machine came.
    bool fp8_prefill_tensor_cores = false;
    // Decode attention: the fewest context tokens per split of the context (0: 128; else a multiple of 64 up
    // to 2048). Contexts are cut into about 16 splits of at least this many tokens; larger minimums give each
    // block more tiles to pipeline and fewer partial results to merge (faster at many sequences of short
    // contexts), smaller ones more blocks for one sequence (faster at batch 1). docs/gpu-notes.md has the
    // measurements.
    int decode_min_chunk = 0;
    // With tensor_core_attention: decode on a kernel that stages each split's K/V in shared memory by cp.async, in
    // 64-token tiles two deep (a 128-token split is requested whole when its block starts), instead of loading each
    // warp's fragments one 16-token tile ahead into registers. Aimed at many sequences of short contexts, where the
    // register kernel reaches about 40% of copy bandwidth. For GQA the same arithmetic, so the same results; MHA
    // (which otherwise stays on the CUDA-core kernel) runs on it too. Off until it has run on a GPU: written
    // 2026-12-08 when no device machine came.
    bool staged_decode_attention = false;
    // Device sampling (SampleRows): up to this many blocks share one row when the rows leave SMs idle (1-64; 1: one
    // block per row). One block takes about 1 ms for a temperature draw over a 128k vocabulary (five passes of
    // radix histograms); a row group splits each pass over its blocks and exchanges the histograms. The same tokens
    // either way. Off until it has run on a GPU: written 2026-12-08 when no device machine came.
    int sampling_blocks_per_row = 1;
    // GEMMs of 3..64 rows (decode batches): false rounds the activations to the weight dtype as prefill does
    // (one GEMM, as fp16 engines do); true runs them on [x_hi; x_lo] (fp32-accurate activations, twice the rows,
    // a split and a combine kernel): closer to the CPU oracle, 4-17% slower GEMMs at 16-64 rows
    // (docs/gpu-notes.md). 1-2 row GEMVs always read fp32 activations.
    bool exact_activations = false;
    // fp8 (e4m3) weights in GEMMs of 3 or more rows beyond mma_gemm_max_rows (larger decode batches, prefill): true
    // runs them on FP8 tensor cores (cuBLASLt, e4m3 x e4m3 with fp32 accumulation) on activations quantized to e4m3
    // per token (scale amax / 448), as fp8 serving engines do; false widens the weights to 16 bits in a workspace on
    // every call and keeps 16-bit activations (closer to the CPU oracle, slower than fp16). 1-2 row GEMVs (with
    // mma_gemm_max_rows 0) read fp32 activations and the e4m3 bytes.
    bool fp8_tensor_cores = true;
    // GEMMs (and GEMVs) of 1 to this many rows (at most 64; 0: none) on the backend's own mma.sync kernel
    // (gemm_rows.cu: every weight byte read once straight into registers, the input dimension split over blocks by
    // shape, 16-bit activations) instead of the GEMVs and cuBLAS / cuBLASLt. fp8 weights are widened to 16 bits in
    // registers there (weight-only fp8: no activation rounding to e4m3 at those rows). 16-bit weights with
    // exact_activations keep cuBLAS above 2 rows. -1 (the default): 16 for fp8 weights, none for 16-bit ones (H100,
    // docs/performance.md run 3: fp8 at 1-16 rows 18-40% faster per layer than the fp8 GEMVs and cuBLASLt; 16-bit
    // weights gain at 2 rows only).
    int mma_gemm_max_rows = -1;
    // FP8 GEMMs: let cuBLASLt apply the per-channel and per-token scales in its epilogue (outer-vector scaling,
    // the GEMM writes y) where it has an algorithm for it; false (or where it has none) writes the unscaled product
    // to a workspace and scales it in a second kernel.
    bool fp8_outer_scales = true;
    // FP8 GEMMs: cuBLASLt's fast accumulation (CUBLASLT_MATMUL_DESC_FAST_ACCUM: Hopper's FP8 tensor cores keep
    // their partial sums in reduced precision instead of promoting them to fp32 every few k-steps).
    bool fp8_fast_accum = false;
    // FP8 GEMMs: the number of cuBLASLt heuristic candidates timed on each shape's first call (the fastest is
    // kept; 1 takes the heuristic's first choice untimed). Shapes are planned outside graph capture.
    int fp8_algo_candidates = 1;
    // FP8 GEMMs: the input dimension split into this many parts (0: by shape; 1: never; 2, 4, 8, 16), one batched
    // cuBLASLt GEMM writing fp32 partial products that ScaleRowsCols adds in part order and scales. A matrix whose
    // input does not split into parts of a multiple of 16, or a split cuBLASLt has no algorithm for, runs as one
    // GEMM. By shape: doubled while the 128 x 128 output tiles times the parts fit one wave, at most 8 (the
    // 4096-row matrices of decode batches). Measured on an H100 (docs/performance.md runs 6-7): up to 6% per GEMM
    // at 64 rows; one GEMM is better from 128 rows up, where the rule does not split.
    int fp8_split_k = 0;
    // Programmatic dependent launch (sm_90): each kernel may be scheduled while the one before it drains,
    // waits for its results inside (griddepcontrol), and GEMVs start their first weight loads before that
    // wait. Kernels in recorded decode graphs keep the programmatic edges.
    bool pdl = true;
};

}  // namespace uniattn
