#include "engine_setup.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "model/model.h"
#include "util/file.h"

namespace uniattn {

StatusOr<DType> ResolveDeviceDType(const EngineConfig& config) {
    auto Bad = [](const std::string& why) { return Status(StatusCode::kInvalidArgument, "dtype " + why, "dtype"); };
    DType device_dtype = DType::kF16;
    if (config.dtype == "float32") {
        device_dtype = DType::kF32;
    } else if (config.dtype == "bfloat16") {
        device_dtype = DType::kBF16;
    } else if (config.dtype == "auto") {
        if (config.backend != "cpu") {
            UA_ASSIGN_OR_RETURN(ModelConfig mc, Model::LoadConfig(config.model_dir));
            if (mc.torch_dtype == "bfloat16") device_dtype = DType::kBF16;
        }
    } else if (config.dtype != "float16") {
        return Bad("\"" + config.dtype + "\" is not one of auto, float16, bfloat16, float32");
    }
    if (config.backend == "cpu" && config.dtype != "auto" && config.dtype != "float32") {
        return Bad("\"" + config.dtype + "\": the cpu backend computes in float32 (use auto or float32)");
    }
    return device_dtype;
}

StatusOr<Fp8Choice> ResolveFp8(const EngineConfig& config) {
    Fp8Choice c;
    if (config.quantization == "fp8") {
        c.weights = true;
    } else if (config.quantization != "none" && !config.quantization.empty()) {
        return Status(StatusCode::kInvalidArgument,
                      "quantization \"" + config.quantization + "\" is not one of none, fp8", "quantization");
    }
    if (config.kv_cache_dtype == "fp8_e4m3" || config.kv_cache_dtype == "fp8") {
        c.kv = true;
    } else if (config.kv_cache_dtype == "fp8_e5m2") {
        return Unimplemented("kv_cache_dtype fp8_e5m2 is not supported (fp8_e4m3 is)");
    } else if (config.kv_cache_dtype != "auto" && !config.kv_cache_dtype.empty()) {
        return Status(StatusCode::kInvalidArgument,
                      "kv_cache_dtype \"" + config.kv_cache_dtype + "\" is not one of auto, fp8_e4m3, fp8",
                      "kv_cache_dtype");
    }
    return c;
}

StatusOr<KvScales> FindKvScales(const Model& model, Backend* backend) {
    const ModelConfig& c = model.config;
    const ModelWeights& w = model.weights;
    KvScales s;
    const char* source = "checkpoint k_scale / v_scale";
    if (!w.kv_k_scale.empty()) {
        s.k.resize(static_cast<size_t>(c.num_layers));
        s.v.resize(static_cast<size_t>(c.num_layers));
        for (int l = 0; l < c.num_layers; ++l) {
            if (c.HasKeys(l)) s.k[l].assign(static_cast<size_t>(c.num_kv_heads), w.kv_k_scale[l]);
            s.v[l].assign(static_cast<size_t>(c.num_kv_heads), w.kv_v_scale[l]);
        }
    } else {
        source = "measured at load on the built-in passage";
        UA_ASSIGN_OR_RETURN(s, CalibrateKvScales(model, backend, KvCalibrationSequences(model)));
    }
    float lo = INFINITY, hi = 0;
    for (const auto* planes : {&s.k, &s.v}) {
        for (const auto& layer : *planes) {
            for (float x : layer) {
                lo = std::min(lo, x);
                hi = std::max(hi, x);
            }
        }
    }
    std::fprintf(stderr, "uniattn: fp8 e4m3 KV cache, scales per layer and KV head %s (%.3g to %.3g)\n", source, lo,
                 hi);
    return s;
}

StatusOr<int64_t> KvPoolBytes(const EngineConfig& config, Backend* backend, ModelRunner* runner, int max_model_len) {
    int64_t bytes = config.kv_cache_bytes;
    if (bytes == 0) {
        if (config.backend == "cpu") {
            const int64_t ram = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE);
            bytes = static_cast<int64_t>(static_cast<double>(ram) * config.kv_cache_memory_fraction);
        } else {
            // The weights are loaded; the step workspaces for the largest step are taken now, so the pool is
            // a fraction of what is left after them. Backend workspaces (attention partials, GEMM splits,
            // sampling scratch) and recorded graphs grow later, inside the remaining (1 - fraction).
            UA_RETURN_IF_ERROR(runner->ReserveWorkspace(config.max_num_batched_tokens,
                                                        std::min(config.max_num_seqs, config.max_num_batched_tokens),
                                                        max_model_len));
            const size_t free_bytes = backend->FreeDeviceBytes();
            if (free_bytes == 0) {
                return Unimplemented("backend " + backend->Name() +
                                     " cannot report free device memory; set kv_cache_bytes");
            }
            bytes = static_cast<int64_t>(static_cast<double>(free_bytes) * config.kv_cache_memory_fraction);
            std::fprintf(stderr, "uniattn: KV pool %.1f MiB = %.3f x %.1f MiB free device memory (%s)\n",
                         static_cast<double>(bytes) / (1 << 20), config.kv_cache_memory_fraction,
                         static_cast<double>(free_bytes) / (1 << 20), backend->Description().c_str());
        }
    }
    return bytes;
}

StatusOr<GenerationConfig> LoadGenerationConfig(const EngineConfig& config) {
    const std::string& where = config.generation_config;
    if (where == "none") return GenerationConfig{};
    if (where == "auto" || where.empty()) return GenerationConfig::LoadDir(config.model_dir);
    if (!IsDirectory(where)) {
        return InvalidArgument("generation_config: " + where + " is not a directory (auto, none or a directory)");
    }
    if (!FileExists(where + "/generation_config.json")) {
        return NotFound("generation_config: " + where + "/generation_config.json does not exist");
    }
    return GenerationConfig::LoadDir(where);
}

std::vector<int32_t> EosTokenIds(const Tokenizer& tokenizer, const ModelConfig& config,
                                 const GenerationConfig& generation) {
    std::vector<int32_t> ids;
    auto add = [&](int32_t id) {
        if (id >= 0 && id < config.vocab_size && std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
    };
    add(tokenizer.eos_id());
    for (int32_t id : tokenizer.eos_ids()) add(id);
    for (int32_t id : config.eos_token_ids) add(id);
    add(config.eos_token_id);
    for (int32_t id : generation.eos_token_ids) add(id);
    return ids;
}

}  // namespace uniattn
