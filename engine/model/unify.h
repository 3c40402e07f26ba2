// Turns a standard Llama checkpoint into a UniAttn one (docs/uniattn.md §5, §6): writes the grouping keys and a
// v2_proj (Wc) tensor for exactly the reuse layers, with Wc calibrated in closed form, sequentially,
// layer by layer: least squares of the normalised input x̃ onto the gap between the original model's
// post-attention residual and the unified model's (earlier compensations active, this layer's off),
// with a small ridge term.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "uniattn/status.h"

namespace uniattn {

struct UnifyOptions {
    std::string model_dir;
    std::string out_dir;
    int group = 1;  // G
    int begin = 0;  // B
    int end = 0;    // E (exclusive)
    // "" = calibrate on sequences sampled from the original model; "none" = zero compensation (the
    // unification-only ablation); otherwise a text file (documents split at blank lines).
    std::string calib;
    bool drop_unused_qk = false;  // omit reuse layers' q_proj/k_proj, their biases and q/k norms (never read)
    int calib_samples = 64;       // sequences sampled when calib is ""
    int calib_len = 0;            // tokens per sampled sequence (0 = context length, at most 2048)
    uint64_t seed = 1234;
    double ridge = 1e-3;  // relative to the mean diagonal of X^T X
    int num_threads = 0;
    std::function<void(const std::string&)> progress;  // optional progress lines
};

// Per reuse layer: relative residual ||O1 - O2 - X·W|| / ||O1 - O2|| on the calibration tokens.
struct UnifyReport {
    std::vector<int> reuse_layers;
    std::vector<double> residual_before;  // 1.0 by definition (zero compensation)
    std::vector<double> residual_after;
    int64_t calib_tokens = 0;
};

StatusOr<UnifyReport> Unify(const UnifyOptions& options);

struct Model;
class Backend;
// n sequences sampled from the model itself, starting from BOS (temperature 1, sample i seeded seed + i), all
// decoded together as one batch over a shared paged cache, each until EOS or `len` tokens (0: the context
// length, at most 2048). Sequences shorter than 2 tokens are dropped. Deterministic for a given seed and n.
StatusOr<std::vector<std::vector<int32_t>>> SampleFromModel(const Model& model, Backend* backend, int n, int len,
                                                            uint64_t seed,
                                                            const std::function<void(const std::string&)>& progress);

}  // namespace uniattn
