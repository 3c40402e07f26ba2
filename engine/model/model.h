// A loaded model: config, weights on a backend, tokenizer (when the directory has one).
#pragma once

#include <memory>
#include <string>

#include "backend/backend.h"
#include "model/weights.h"
#include "uniattn/model_config.h"
#include "uniattn/tokenizer.h"

namespace uniattn {

struct Model {
    std::string dir;
    ModelConfig config;
    ModelWeights weights;
    std::unique_ptr<Tokenizer> tokenizer;  // null when load_tokenizer was false

    // Reads DIR/config.json, the tokenizer (before any weight: a tokenizer problem fails fast) and the
    // safetensors weights. Every failure names the file (and the tensor) at fault.
    static StatusOr<std::unique_ptr<Model>> Load(const std::string& dir, Backend* backend, bool load_tokenizer = true,
                                                 const LoadOptions& options = {});
    static StatusOr<ModelConfig> LoadConfig(const std::string& dir);
};

}  // namespace uniattn
