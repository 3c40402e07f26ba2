// Writes an FP8 checkpoint of a 16/32-bit model (uniattn-convert fp8; issue 18, docs/models.md "FP8"): every
// linear weight in e4m3 with one scale per output channel (scale = max|row| / 448), in the compressed-tensors
// layout vLLM and this engine load (F8_E4M3 `weight` + F32 `weight_scale` [rows, 1], quantization_config with
// quant_method "compressed-tensors", channel weights, dynamic per-token activations, lm_head ignored).
//
// Rounding: "rtn" rounds each weight to the nearest e4m3 value: the same bits engine.quantization=fp8 gives at
// load. "gptq" (Frantar et al., 2022, applied to e4m3 with the per-channel scales fixed) rounds the columns of
// each weight in order and spreads each rounding error over the columns not yet rounded, weighted by the
// inverse Gram matrix H = XᵀX of the layer's inputs on calibration tokens, which lowers ‖(W − Q)Xᵀ‖ (the
// layer's output error) for the same format. Inputs come from the original model: x̃ (q/k/v, v2_proj), the
// post-attention norm of the residual (gate/up), silu(gate)·up (down) and the attention output (o_proj). A CPU
// tool for small models: it holds the model in fp32 and every Gram matrix (ff² doubles per layer) in memory.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "uniattn/status.h"

namespace uniattn {

struct Fp8QuantizeOptions {
    std::string model_dir;
    std::string out_dir;
    std::string method = "gptq";  // "gptq" or "rtn"
    // gptq calibration: "" = sequences sampled from the model itself; otherwise a text file (documents split at
    // blank lines).
    std::string calib;
    int calib_samples = 32;  // sequences sampled when calib is ""
    int calib_len = 256;     // tokens per sampled sequence
    uint64_t seed = 1234;
    double damp = 0.01;     // added to H's diagonal, relative to its mean
    bool act_order = true;  // gptq: columns in order of decreasing input energy (RoundToFp8)
    int num_threads = 0;
    std::function<void(const std::string&)> progress;  // optional progress lines
};

struct Fp8QuantizeReport {
    int num_tensors = 0;       // linear weights written in fp8
    int64_t calib_tokens = 0;  // gptq only
    // Over the tensors with observed inputs: the mean of ‖(W − Q)Xᵀ‖² / ‖WXᵀ‖² on the calibration tokens, for
    // round-to-nearest and for the method used (equal for rtn).
    double rtn_output_error = 0;
    double output_error = 0;
    int num_measured = 0;
};

StatusOr<Fp8QuantizeReport> QuantizeFp8(const Fp8QuantizeOptions& options);

// The rounding itself, exposed for tests. w [rows, cols] row-major fp32, in place: on return each w[r, c] is
// e4m3(byte) · scale[r], with scale[r] = max|original row r| / 448 (1 for an all-zero row) written to `scale`
// and the bytes to `q` [rows · cols]. h [cols, cols] (row-major, double): the inputs' Gram matrix XᵀX, or empty
// for round-to-nearest. Columns whose inputs were always 0 (h[i, i] == 0) are rounded to nearest.
// act_order: round the columns in order of decreasing h[i, i] (inputs with the most energy first, GPTQ's
// "act order"); the result is in the original column order either way.
Status RoundToFp8(std::vector<float>& w, int64_t rows, int64_t cols, std::vector<double> h, double damp, bool act_order,
                  std::vector<float>& scale, std::vector<uint8_t>& q, int num_threads);

// ‖(W − Q)Xᵀ‖² = Σ_r (w_r − q_r) H (w_r − q_r)ᵀ and ‖WXᵀ‖² the same with q = 0, for two [rows, cols] matrices.
double OutputError(const std::vector<float>& w, const std::vector<float>& q, int64_t rows, int64_t cols,
                   const std::vector<double>& h);

}  // namespace uniattn
