// What a checkpoint's generation_config.json says about generating with it: the ids that end a reply and the
// sampling it was tuned for. The engine stops on every eos id (config.json's, generation_config.json's and the
// tokenizer's); front ends fill the sampling fields a request leaves unset from SamplingDefaults, as vLLM does
// with `--generation-config auto`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "uniattn/request.h"
#include "uniattn/status.h"

namespace uniattn {

// Request defaults; an unset field keeps GenerationRequest's own default.
struct SamplingDefaults {
    std::optional<float> temperature;
    std::optional<float> top_p;
    std::optional<int> top_k;
    std::optional<float> min_p;
    std::optional<float> repetition_penalty;

    bool empty() const { return !temperature && !top_p && !top_k && !min_p && !repetition_penalty; }
    // Writes the set fields into `r` (before the request's own fields are read over them).
    void ApplyTo(GenerationRequest& r) const;
    // Fields set in `over` replace this object's.
    void Override(const SamplingDefaults& over);
    // "temperature=0.6 top_p=0.9" (set fields only; "none" when empty), for the start-up log.
    std::string ToString() const;
};

struct GenerationConfig {
    std::vector<int32_t> eos_token_ids;  // eos_token_id, an int or a list
    SamplingDefaults sampling;

    // Parses generation_config.json text; `path` names the file in messages. Values must be in the ranges a
    // request may use (ValidateSampling); unknown keys are ignored (max_length, do_sample, pad_token_id, ...:
    // they do not change what the server computes).
    static StatusOr<GenerationConfig> FromJson(const std::string& text, const std::string& path);
    // DIR/generation_config.json; an absent file is an empty config.
    static StatusOr<GenerationConfig> LoadDir(const std::string& dir);
};

}  // namespace uniattn
