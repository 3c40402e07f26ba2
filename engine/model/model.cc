#include "model/model.h"

#include "util/file.h"

namespace uniattn {

StatusOr<ModelConfig> Model::LoadConfig(const std::string& dir) {
    if (!IsDirectory(dir)) return NotFound(dir + ": model directory does not exist");
    const std::string path = dir + "/config.json";
    UA_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
    return ModelConfig::FromJson(text, path);
}

StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir, Backend* backend, bool load_tokenizer,
                                             const LoadOptions& options) {
    auto model = std::make_unique<Model>();
    model->dir = dir;
    UA_ASSIGN_OR_RETURN(model->config, LoadConfig(dir));
    // The small files first: a missing or unsupported tokenizer is reported before gigabytes of weights load.
    if (load_tokenizer) {
        UA_ASSIGN_OR_RETURN(model->tokenizer, Tokenizer::Load(dir, model->config));
        if (model->tokenizer->vocab_size() > model->config.vocab_size) {
            const char* file = FileExists(dir + "/tokenizer.json") ? "/tokenizer.json" : "/tokenizer.model";
            return InvalidArgument(dir + file + ": " + std::to_string(model->tokenizer->vocab_size()) +
                                   " tokens but config.json vocab_size is " + std::to_string(model->config.vocab_size));
        }
    }
    UA_ASSIGN_OR_RETURN(TensorSet tensors, TensorSet::OpenDir(dir));
    auto weights = LoadWeights(tensors, model->config, backend, options);
    if (!weights.ok()) {
        return Status(weights.status().code(), dir + ": " + weights.status().message());
    }
    model->weights = std::move(weights).value();
    return model;
}

}  // namespace uniattn
