#include "uniattn/model_config.h"

#include <cmath>
#include <numbers>

#include "uniattn/json_io.h"

namespace uniattn {

int ModelConfig::num_reuse_layers() const {
    int n = 0;
    for (LayerKind k : layer_kinds) n += k == LayerKind::kReuse ? 1 : 0;
    return n;
}

Status ModelConfig::DeriveLayerKinds() {
    layer_kinds.assign(num_layers, LayerKind::kNormal);
    anchor_of.assign(num_layers, -1);
    if (!has_grouping) return Status::Ok();
    const int g = grouping_idx, b = grouping_begin_idx, e = grouping_end_idx;
    if (g < 1) return InvalidArgument("grouping_idx (G) must be >= 1, got " + std::to_string(g));
    if (b < 0) return InvalidArgument("grouping_begin_idx (B) must be >= 0, got " + std::to_string(b));
    if (b > e) {
        return InvalidArgument("grouping_begin_idx (B=" + std::to_string(b) +
                               ") is greater than grouping_end_idx (E=" + std::to_string(e) + ")");
    }
    if (e > num_layers + 1) {
        return InvalidArgument("grouping_end_idx (E=" + std::to_string(e) + ") exceeds num_hidden_layers + 1 (" +
                               std::to_string(num_layers + 1) + ")");
    }
    int anchor = -1;
    for (int l = 0; l < num_layers; ++l) {
        if (l < b || l >= e) continue;
        if ((l - b) % g == 0) {
            layer_kinds[l] = LayerKind::kAnchor;
            anchor = l;
        } else {
            layer_kinds[l] = LayerKind::kReuse;
            anchor_of[l] = anchor;
        }
    }
    return Status::Ok();
}

int64_t ModelConfig::KvBytesPerToken(int dtype_bytes) const {
    const int64_t n_reuse = num_reuse_layers();
    return static_cast<int64_t>(dtype_bytes) * num_kv_heads * head_dim * (2 * (num_layers - n_reuse) + n_reuse);
}

int64_t ModelConfig::DenseKvBytesPerToken(int dtype_bytes) const {
    return static_cast<int64_t>(dtype_bytes) * num_kv_heads * head_dim * 2 * num_layers;
}

std::vector<double> ModelConfig::RopeInvFreq() const {
    const int half = head_dim / 2;
    double base = rope_theta;
    if (rope_scaling.type == RopeType::kDynamic && head_dim > 2) {
        const double f = rope_scaling.factor;
        const double max_len_over_l = f;  // max_len = L · factor, so max_len / L = factor whatever L is
        base *= std::pow(f * max_len_over_l - (f - 1), static_cast<double>(head_dim) / (head_dim - 2));
    }
    std::vector<double> inv(half);
    for (int i = 0; i < half; ++i) inv[i] = 1.0 / std::pow(base, static_cast<double>(2 * i) / head_dim);
    switch (rope_scaling.type) {
        case RopeType::kDefault:
        case RopeType::kDynamic:
            break;
        case RopeType::kLinear:
            for (double& f : inv) f /= rope_scaling.factor;
            break;
        case RopeType::kLlama3: {
            const RopeScaling& r = rope_scaling;
            const double l = r.original_max_position_embeddings;
            const double low_wavelen = l / r.low_freq_factor, high_wavelen = l / r.high_freq_factor;
            for (double& f : inv) {
                const double wavelen = 2 * std::numbers::pi / f;
                if (wavelen < high_wavelen) continue;
                if (wavelen > low_wavelen) {
                    f /= r.factor;
                } else {
                    const double s = (l / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
                    f = (1 - s) * f / r.factor + s * f;
                }
            }
            break;
        }
    }
    return inv;
}

namespace {

using nlohmann::json;

Status GetInt(const json& root, const std::string& path, const char* key, bool required, int& out) {
    const json* v = JsonFind(root, key);
    if (v == nullptr || v->is_null()) {
        if (required) return InvalidArgument(path + ": missing required key \"" + key + "\"");
        return Status::Ok();
    }
    const std::optional<int64_t> x = JsonInt64(*v);
    if (!x) return InvalidArgument(path + ": \"" + key + "\" must be an integer");
    if (*x < INT32_MIN || *x > INT32_MAX) return InvalidArgument(path + ": \"" + key + "\" is out of range");
    out = static_cast<int>(*x);
    return Status::Ok();
}

Status GetDouble(const json& root, const std::string& path, const char* key, double& out) {
    const json* v = JsonFind(root, key);
    if (v == nullptr || v->is_null()) return Status::Ok();
    if (!v->is_number()) return InvalidArgument(path + ": \"" + key + "\" must be a number");
    // ParseJsonFile refuses 1e400 ("must be a finite number", found by fuzz_model_config), as it could not be
    // written back as JSON; an integer beyond double range cannot occur (uint64 at most).
    const double x = v->get<double>();
    if (!std::isfinite(x)) return InvalidArgument(path + ": \"" + key + "\" must be a finite number");
    out = x;
    return Status::Ok();
}

// bos/eos ids may be an int or a list (Llama 3 lists several eos ids); we keep the first.
Status GetTokenId(const json& root, const std::string& path, const char* key, int& out) {
    const json* v = JsonFind(root, key);
    if (v == nullptr || v->is_null()) return Status::Ok();
    if (v->is_array() && !v->empty()) v = &(*v)[0];
    const std::optional<int64_t> id = JsonInt64(*v);
    if (!id) return InvalidArgument(path + ": \"" + key + "\" must be an integer token id");
    out = static_cast<int>(*id);
    return Status::Ok();
}

}  // namespace

StatusOr<ModelConfig> ModelConfig::FromJson(const std::string& text, const std::string& path) {
    UA_ASSIGN_OR_RETURN(json root, ParseJsonFile(text, path));
    if (!root.is_object()) return InvalidArgument(path + ": top level must be a JSON object");
    ModelConfig c;
    if (const json* arch = JsonFind(root, "architectures"); arch && arch->is_array() && !arch->empty()) {
        if (!(*arch)[0].is_string()) return InvalidArgument(path + ": \"architectures\" must list strings");
        c.architecture = (*arch)[0].get<std::string>();
    }
    if (c.architecture != "LlamaForCausalLM" && c.architecture != "MistralForCausalLM") {
        return Unimplemented(path + ": architecture \"" + c.architecture +
                             "\" is not supported (LlamaForCausalLM, MistralForCausalLM)");
    }
    UA_RETURN_IF_ERROR(GetInt(root, path, "vocab_size", true, c.vocab_size));
    UA_RETURN_IF_ERROR(GetInt(root, path, "hidden_size", true, c.hidden_size));
    UA_RETURN_IF_ERROR(GetInt(root, path, "intermediate_size", true, c.intermediate_size));
    UA_RETURN_IF_ERROR(GetInt(root, path, "num_hidden_layers", true, c.num_layers));
    UA_RETURN_IF_ERROR(GetInt(root, path, "num_attention_heads", true, c.num_heads));
    c.num_kv_heads = c.num_heads;
    UA_RETURN_IF_ERROR(GetInt(root, path, "num_key_value_heads", false, c.num_kv_heads));
    UA_RETURN_IF_ERROR(GetInt(root, path, "max_position_embeddings", false, c.max_position_embeddings));
    UA_RETURN_IF_ERROR(GetDouble(root, path, "rope_theta", c.rope_theta));
    UA_RETURN_IF_ERROR(GetDouble(root, path, "rms_norm_eps", c.rms_norm_eps));
    UA_RETURN_IF_ERROR(GetTokenId(root, path, "bos_token_id", c.bos_token_id));
    UA_RETURN_IF_ERROR(GetTokenId(root, path, "eos_token_id", c.eos_token_id));
    if (const json* t = JsonFind(root, "tie_word_embeddings"); t && !t->is_null()) {
        if (!t->is_boolean()) return InvalidArgument(path + ": \"tie_word_embeddings\" must be a boolean");
        c.tie_word_embeddings = t->get<bool>();
    }
    if (const json* t = JsonFind(root, "torch_dtype"); t && t->is_string()) c.torch_dtype = t->get<std::string>();
    if (const json* rs = JsonFind(root, "rope_scaling"); rs && !rs->is_null()) {
        return Unimplemented(path + ": \"rope_scaling\" is not supported yet");
    }
    // transformers 5 writes {"rope_parameters": {"rope_theta": ..., "rope_type": "default"}} instead of a
    // top-level rope_theta; a scaled RoPE (llama3, yarn, linear, dynamic) is refused like rope_scaling.
    if (const json* rp = JsonFind(root, "rope_parameters"); rp && !rp->is_null()) {
        if (!rp->is_object()) return InvalidArgument(path + ": \"rope_parameters\" must be an object");
        if (const json* type = JsonFind(*rp, "rope_type"); type && !type->is_null()) {
            if (!type->is_string()) return InvalidArgument(path + ": \"rope_parameters.rope_type\" must be a string");
            if (*type != "default") {
                return Unimplemented(path + ": rope_type \"" + type->get<std::string>() + "\" is not supported yet");
            }
        }
        if (JsonFind(root, "rope_theta") == nullptr) {
            UA_RETURN_IF_ERROR(GetDouble(*rp, path + " rope_parameters", "rope_theta", c.rope_theta));
        }
    }
    if (JsonFind(root, "torch_dtype") == nullptr) {  // transformers 5 names it "dtype"
        if (const json* t = JsonFind(root, "dtype"); t && t->is_string()) c.torch_dtype = t->get<std::string>();
    }

    auto positive = [&](const char* key, int v) -> Status {
        if (v <= 0) return InvalidArgument(path + ": \"" + key + "\" must be positive, got " + std::to_string(v));
        return Status::Ok();
    };
    UA_RETURN_IF_ERROR(positive("vocab_size", c.vocab_size));
    UA_RETURN_IF_ERROR(positive("hidden_size", c.hidden_size));
    UA_RETURN_IF_ERROR(positive("intermediate_size", c.intermediate_size));
    UA_RETURN_IF_ERROR(positive("num_hidden_layers", c.num_layers));
    UA_RETURN_IF_ERROR(positive("num_attention_heads", c.num_heads));
    UA_RETURN_IF_ERROR(positive("num_key_value_heads", c.num_kv_heads));
    UA_RETURN_IF_ERROR(positive("max_position_embeddings", c.max_position_embeddings));
    // Upper bounds far above any published checkpoint (the largest have ~126 layers, 128 heads, 16k hidden,
    // 53k intermediate, 262k vocab, 1M positions). They keep a hostile or corrupt config.json from sizing
    // multi-gigabyte host vectors (layer kinds) or overflowing byte counts before the weights are opened.
    auto at_most = [&](const char* key, int v, int limit) -> Status {
        if (v > limit) {
            return InvalidArgument(path + ": \"" + key + "\" is " + std::to_string(v) + ", more than the supported " +
                                   std::to_string(limit));
        }
        return Status::Ok();
    };
    UA_RETURN_IF_ERROR(at_most("vocab_size", c.vocab_size, 1 << 24));
    UA_RETURN_IF_ERROR(at_most("hidden_size", c.hidden_size, 1 << 20));
    UA_RETURN_IF_ERROR(at_most("intermediate_size", c.intermediate_size, 1 << 22));
    UA_RETURN_IF_ERROR(at_most("num_hidden_layers", c.num_layers, 4096));
    UA_RETURN_IF_ERROR(at_most("num_attention_heads", c.num_heads, 4096));
    UA_RETURN_IF_ERROR(at_most("max_position_embeddings", c.max_position_embeddings, 1 << 24));
    if (c.hidden_size % c.num_heads != 0) {
        return InvalidArgument(path + ": hidden_size " + std::to_string(c.hidden_size) +
                               " is not divisible by num_attention_heads " + std::to_string(c.num_heads));
    }
    c.head_dim = c.hidden_size / c.num_heads;
    UA_RETURN_IF_ERROR(GetInt(root, path, "head_dim", false, c.head_dim));
    UA_RETURN_IF_ERROR(positive("head_dim", c.head_dim));
    UA_RETURN_IF_ERROR(at_most("head_dim", c.head_dim, 1 << 16));
    if (c.num_heads % c.num_kv_heads != 0) {
        return InvalidArgument(path + ": num_attention_heads " + std::to_string(c.num_heads) +
                               " is not a multiple of num_key_value_heads " + std::to_string(c.num_kv_heads));
    }
    if (c.rope_theta <= 0 || c.rms_norm_eps <= 0) {
        return InvalidArgument(path + ": rope_theta and rms_norm_eps must be positive");
    }

    const bool has_g = JsonFind(root, "grouping_idx") != nullptr;
    const bool has_b = JsonFind(root, "grouping_begin_idx") != nullptr;
    const bool has_e = JsonFind(root, "grouping_end_idx") != nullptr;
    if (has_g || has_b || has_e) {
        if (!(has_g && has_b && has_e)) {
            return InvalidArgument(path +
                                   ": UniAttn needs all three of grouping_idx, grouping_begin_idx, grouping_end_idx");
        }
        c.has_grouping = true;
        UA_RETURN_IF_ERROR(GetInt(root, path, "grouping_idx", true, c.grouping_idx));
        UA_RETURN_IF_ERROR(GetInt(root, path, "grouping_begin_idx", true, c.grouping_begin_idx));
        UA_RETURN_IF_ERROR(GetInt(root, path, "grouping_end_idx", true, c.grouping_end_idx));
    }
    Status s = c.DeriveLayerKinds();
    if (!s.ok()) return InvalidArgument(path + ": " + s.message());
    return c;
}

OrderedJson ModelConfig::ToJson() const {
    OrderedJson j = {{"architectures", OrderedJson::array({architecture})},
                     {"model_type", architecture == "MistralForCausalLM" ? "mistral" : "llama"},
                     {"vocab_size", vocab_size},
                     {"hidden_size", hidden_size},
                     {"intermediate_size", intermediate_size},
                     {"num_hidden_layers", num_layers},
                     {"num_attention_heads", num_heads},
                     {"num_key_value_heads", num_kv_heads},
                     {"head_dim", head_dim},
                     {"max_position_embeddings", max_position_embeddings},
                     {"rope_theta", rope_theta},
                     {"rms_norm_eps", rms_norm_eps},
                     {"tie_word_embeddings", tie_word_embeddings},
                     {"bos_token_id", bos_token_id},
                     {"eos_token_id", eos_token_id},
                     {"hidden_act", "silu"},
                     {"attention_bias", false},
                     {"mlp_bias", false},
                     {"torch_dtype", torch_dtype}};
    if (has_grouping) {
        j["grouping_idx"] = grouping_idx;
        j["grouping_begin_idx"] = grouping_begin_idx;
        j["grouping_end_idx"] = grouping_end_idx;
    }
    return j;
}

}  // namespace uniattn
