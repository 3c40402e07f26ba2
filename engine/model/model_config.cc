#include "uniattn/model_config.h"

#include <algorithm>
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

// What a family's config.json can say, and what its checkpoints hold: the one place that knows the families.
struct Family {
    const char* architecture;
    const char* model_type;
    bool qkv_bias_always;     // q/k/v biases whatever the keys say (Qwen2)
    bool attention_bias_key;  // "attention_bias": true gives q/k/v and o biases (Llama, Qwen3)
    bool qk_norm;             // q_norm/k_norm over head_dim before RoPE (Qwen3)
    bool window_key;          // "sliding_window" is a real window for every layer (Mistral)
    bool window_switch;       // "use_sliding_window" turns a window on (Qwen2, Qwen3): refused when true
    int default_head_dim;     // head_dim when the key is absent; 0: hidden_size / num_attention_heads
    int default_window;       // sliding_window when the key is absent (transformers' config class default)
};

constexpr Family kFamilies[] = {
    {"LlamaForCausalLM", "llama", false, true, false, false, false, 0, 0},
    {"MistralForCausalLM", "mistral", false, false, false, true, false, 0, 4096},
    {"Qwen2ForCausalLM", "qwen2", true, false, false, false, true, 0, 0},
    {"Qwen3ForCausalLM", "qwen3", false, true, true, false, true, 128, 0},
};

const Family* FindFamily(const std::string& architecture) {
    for (const Family& f : kFamilies) {
        if (architecture == f.architecture) return &f;
    }
    return nullptr;
}

const Family* FamilyOfModelType(const std::string& model_type) {
    for (const Family& f : kFamilies) {
        if (model_type == f.model_type) return &f;
    }
    return nullptr;
}

std::string SupportedArchitectures() {
    std::string s;
    for (const Family& f : kFamilies) s += (s.empty() ? "" : ", ") + std::string(f.architecture);
    return s;
}

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

Status GetBool(const json& root, const std::string& path, const char* key, bool& out) {
    const json* v = JsonFind(root, key);
    if (v == nullptr || v->is_null()) return Status::Ok();
    if (!v->is_boolean()) return InvalidArgument(path + ": \"" + key + "\" must be a boolean");
    out = v->get<bool>();
    return Status::Ok();
}

// bos/eos ids may be an int or a list (Llama 3 lists several eos ids): every id is kept.
Status GetTokenIds(const json& root, const std::string& path, const char* key, std::vector<int32_t>& out) {
    const json* v = JsonFind(root, key);
    if (v == nullptr || v->is_null()) return Status::Ok();
    std::vector<int32_t> ids;
    const bool list = v->is_array();
    if (list && v->empty()) return InvalidArgument(path + ": \"" + key + "\" must not be an empty list");
    for (size_t i = 0; i < (list ? v->size() : 1); ++i) {
        const std::optional<int64_t> id = JsonInt64(list ? (*v)[i] : *v);
        if (!id || *id < 0 || *id > INT32_MAX) {
            return InvalidArgument(path + ": \"" + key + "\" must be an integer token id or a list of them");
        }
        ids.push_back(static_cast<int32_t>(*id));
    }
    out = std::move(ids);
    return Status::Ok();
}

std::string Quoted(const json& v) { return DumpJson(v); }

// A key that changes the math and is not implemented: refused by name, with its value.
Status Refuse(const std::string& path, const std::string& key, const json& value, const std::string& why) {
    return Unimplemented(path + ": \"" + key + "\": " + Quoted(value) + " is not supported (" + why + ")");
}

const char* RopeTypeName(RopeType t) {
    switch (t) {
        case RopeType::kDefault:
            return "default";
        case RopeType::kLinear:
            return "linear";
        case RopeType::kDynamic:
            return "dynamic";
        case RopeType::kLlama3:
            return "llama3";
    }
    return "default";
}

// rope_scaling (transformers 4) or rope_parameters (transformers 5, which also carries rope_theta there):
// `what` names the key in messages. Every member is either understood or refused by name.
Status ParseRopeScaling(const json& rs, const std::string& path, const std::string& what, ModelConfig& c) {
    if (!rs.is_object()) return InvalidArgument(path + ": \"" + what + "\" must be an object");
    const std::string where = path + " " + what;
    std::string type = "default";
    for (const char* key : {"rope_type", "type"}) {  // "type" is the older spelling
        if (const json* t = JsonFind(rs, key); t && !t->is_null()) {
            if (!t->is_string()) return InvalidArgument(path + ": \"" + what + "." + key + "\" must be a string");
            type = t->get<std::string>();
            break;
        }
    }
    RopeScaling r;
    if (type == "default") {
        r.type = RopeType::kDefault;
    } else if (type == "linear") {
        r.type = RopeType::kLinear;
    } else if (type == "dynamic") {
        r.type = RopeType::kDynamic;
    } else if (type == "llama3") {
        r.type = RopeType::kLlama3;
    } else {
        return Unimplemented(path + ": \"" + what + "\" rope_type \"" + type +
                             "\" is not supported (default, linear, dynamic, llama3)");
    }
    // The members each type reads; anything else in the object would change the rotation and is refused.
    std::vector<std::string> known = {"rope_type", "type", "rope_theta"};
    if (r.type != RopeType::kDefault) known.push_back("factor");
    if (r.type == RopeType::kDynamic || r.type == RopeType::kLlama3)
        known.push_back("original_max_position_embeddings");
    if (r.type == RopeType::kLlama3) {
        known.push_back("low_freq_factor");
        known.push_back("high_freq_factor");
    }
    for (const auto& [key, value] : rs.items()) {
        if (std::find(known.begin(), known.end(), key) != known.end()) continue;
        if (key == "partial_rotary_factor" && value.is_number() && value.get<double>() == 1.0) continue;
        return Unimplemented(path + ": \"" + what + "." + key + "\" (" + Quoted(value) +
                             ") is not supported with rope_type \"" + type + "\"");
    }
    auto need = [&](const char* key) -> Status {
        const json* v = JsonFind(rs, key);
        if (v == nullptr || v->is_null()) {
            return InvalidArgument(path + ": \"" + what + "\" rope_type \"" + type + "\" needs \"" + key + "\"");
        }
        return Status::Ok();
    };
    if (r.type != RopeType::kDefault) {
        UA_RETURN_IF_ERROR(need("factor"));
        UA_RETURN_IF_ERROR(GetDouble(rs, where, "factor", r.factor));
        if (!(r.factor >= 1.0)) {
            return InvalidArgument(path + ": \"" + what + ".factor\" must be >= 1, got " + DumpJson(json(r.factor)));
        }
    }
    if (r.type == RopeType::kLlama3) {
        for (const char* key : {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
            UA_RETURN_IF_ERROR(need(key));
        }
        UA_RETURN_IF_ERROR(GetDouble(rs, where, "low_freq_factor", r.low_freq_factor));
        UA_RETURN_IF_ERROR(GetDouble(rs, where, "high_freq_factor", r.high_freq_factor));
        if (!(r.low_freq_factor > 0 && r.high_freq_factor > r.low_freq_factor)) {
            return InvalidArgument(path + ": \"" + what +
                                   "\" needs 0 < low_freq_factor < high_freq_factor for rope_type \"llama3\"");
        }
    }
    if (r.type == RopeType::kDynamic || r.type == RopeType::kLlama3) {
        UA_RETURN_IF_ERROR(
            GetInt(rs, where, "original_max_position_embeddings", false, r.original_max_position_embeddings));
        if (r.original_max_position_embeddings < 0 ||
            (r.type == RopeType::kLlama3 && r.original_max_position_embeddings == 0)) {
            return InvalidArgument(path + ": \"" + what + ".original_max_position_embeddings\" must be positive");
        }
    }
    c.rope_scaling = r;
    return Status::Ok();
}

// quantization_config: FP8 checkpoints (QuantizationConfig); every other method or number format is refused by name,
// so that a quantized checkpoint never loads as something else.
Status ParseQuantization(const json& q, const std::string& path, QuantizationConfig& out) {
    const std::string where = path + ": quantization_config";
    if (!q.is_object()) return InvalidArgument(where + " must be an object");
    const json* m = JsonFind(q, "quant_method");
    if (m == nullptr || !m->is_string()) return InvalidArgument(where + " needs a \"quant_method\" string");
    const std::string method = m->get<std::string>();
    auto strings = [&](const char* key, std::vector<std::string>& list) -> Status {
        const json* v = JsonFind(q, key);
        if (v == nullptr || v->is_null()) return Status::Ok();
        if (!v->is_array()) return InvalidArgument(where + ": \"" + key + "\" must be a list of module names");
        for (const json& e : *v) {
            if (!e.is_string()) return InvalidArgument(where + ": \"" + key + "\" must be a list of module names");
            list.push_back(e.get<std::string>());
        }
        return Status::Ok();
    };
    auto block = [&](const json* v, const char* key) -> Status {
        if (v == nullptr || v->is_null()) return Status::Ok();
        const bool ok = v->is_array() && v->size() == 2 && (*v)[0].is_number_integer() && (*v)[1].is_number_integer() &&
                        (*v)[0].get<int64_t>() > 0 && (*v)[1].get<int64_t>() > 0 && (*v)[0].get<int64_t>() <= 65536 &&
                        (*v)[1].get<int64_t>() <= 65536;
        if (!ok) return InvalidArgument(where + ": \"" + key + "\" must be two positive integers [rows, cols]");
        out.block_rows = (*v)[0].get<int>();
        out.block_cols = (*v)[1].get<int>();
        return Status::Ok();
    };
    if (method == "fp8") {
        if (const json* a = JsonFind(q, "activation_scheme"); a && !a->is_null()) {
            if (*a != "static" && *a != "dynamic") {
                return InvalidArgument(where + ": activation_scheme must be \"static\" or \"dynamic\"");
            }
            out.static_activations = *a == "static";
        }
        if (const json* f = JsonFind(q, "fmt"); f && !f->is_null() && *f != "e4m3") {
            return Unimplemented(where + ": fmt " + f->dump() + " is not supported (fp8 e4m3 only)");
        }
        UA_RETURN_IF_ERROR(strings("ignored_layers", out.ignored));
        UA_RETURN_IF_ERROR(block(JsonFind(q, "weight_block_size"), "weight_block_size"));
    } else if (method == "compressed-tensors") {
        if (const json* f = JsonFind(q, "format"); f && !f->is_null()) {
            if (*f != "float-quantized" && *f != "naive-quantized") {
                return Unimplemented(where + ": compressed-tensors format " + f->dump() +
                                     " is not supported (fp8: float-quantized or naive-quantized)");
            }
        }
        const json* groups = JsonFind(q, "config_groups");
        if (groups == nullptr || !groups->is_object() || groups->empty()) {
            return InvalidArgument(where + ": compressed-tensors needs \"config_groups\"");
        }
        for (const auto& [name, g] : groups->items()) {
            const std::string gw = where + ".config_groups." + name;
            const json* w = g.is_object() ? JsonFind(g, "weights") : nullptr;
            if (w == nullptr || !w->is_object()) return InvalidArgument(gw + " needs \"weights\"");
            const json* bits = JsonFind(*w, "num_bits");
            const json* type = JsonFind(*w, "type");
            if (bits == nullptr || *bits != 8 || type == nullptr || *type != "float") {
                return Unimplemented(gw + ".weights: " + (bits ? bits->dump() : "?") + "-bit " +
                                     (type ? type->dump() : "?") +
                                     " weights are not supported (compressed-tensors: 8-bit float, FP8, only)");
            }
            const json* strategy = JsonFind(*w, "strategy");
            const std::string st = strategy && strategy->is_string() ? strategy->get<std::string>() : "tensor";
            if (st == "block") {
                UA_RETURN_IF_ERROR(block(JsonFind(*w, "block_structure"), "block_structure"));
            } else if (st != "tensor" && st != "channel") {
                return Unimplemented(gw + ".weights: strategy \"" + st +
                                     "\" is not supported (tensor, channel or block)");
            }
            if (const json* a = JsonFind(g, "input_activations"); a && a->is_object()) {
                const json* dyn = JsonFind(*a, "dynamic");
                out.static_activations = !(dyn && dyn->is_boolean() && dyn->get<bool>());
            }
        }
        UA_RETURN_IF_ERROR(strings("ignore", out.ignored));
    } else {
        return Unimplemented(where + ": quant_method \"" + method +
                             "\" is not supported (FP8 checkpoints: \"fp8\" or \"compressed-tensors\"; a 16-bit "
                             "checkpoint can be quantized at load with engine.quantization=fp8)");
    }
    out.method = method;
    return Status::Ok();
}

}  // namespace

StatusOr<ModelConfig> ModelConfig::FromJson(const std::string& text, const std::string& path) {
    UA_ASSIGN_OR_RETURN(json root, ParseJsonFile(text, path));
    if (!root.is_object()) return InvalidArgument(path + ": top level must be a JSON object");
    ModelConfig c;
    std::string model_type;
    if (const json* mt = JsonFind(root, "model_type"); mt && !mt->is_null()) {
        if (!mt->is_string()) return InvalidArgument(path + ": \"model_type\" must be a string");
        model_type = mt->get<std::string>();
    }
    const Family* family = nullptr;
    if (const json* arch = JsonFind(root, "architectures"); arch && arch->is_array() && !arch->empty()) {
        if (!(*arch)[0].is_string()) return InvalidArgument(path + ": \"architectures\" must list strings");
        c.architecture = (*arch)[0].get<std::string>();
        family = FindFamily(c.architecture);
    } else if (!model_type.empty()) {  // no architectures: the model_type names the family
        family = FamilyOfModelType(model_type);
        if (family) c.architecture = family->architecture;
    } else {
        family = FindFamily(c.architecture);
    }
    if (family == nullptr) {
        return Unimplemented(
            path + ": architecture \"" +
            (model_type.empty() || JsonFind(root, "architectures") ? c.architecture : "model_type " + model_type) +
            "\" is not supported (" + SupportedArchitectures() + ")");
    }
    if (!model_type.empty() && model_type != family->model_type) {
        return InvalidArgument(path + ": \"model_type\" \"" + model_type + "\" does not match architecture \"" +
                               c.architecture + "\" (model_type \"" + family->model_type + "\")");
    }
    c.model_type = family->model_type;

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
    std::vector<int32_t> bos = {c.bos_token_id};
    UA_RETURN_IF_ERROR(GetTokenIds(root, path, "bos_token_id", bos));
    c.bos_token_id = bos[0];
    UA_RETURN_IF_ERROR(GetTokenIds(root, path, "eos_token_id", c.eos_token_ids));
    c.eos_token_id = c.eos_token_ids[0];
    UA_RETURN_IF_ERROR(GetBool(root, path, "tie_word_embeddings", c.tie_word_embeddings));
    if (const json* t = JsonFind(root, "torch_dtype"); t && t->is_string()) c.torch_dtype = t->get<std::string>();
    if (JsonFind(root, "torch_dtype") == nullptr) {  // transformers 5 names it "dtype"
        if (const json* t = JsonFind(root, "dtype"); t && t->is_string()) c.torch_dtype = t->get<std::string>();
    }

    // RoPE: rope_scaling (transformers 4), or rope_parameters (transformers 5: also holds rope_theta).
    if (const json* rs = JsonFind(root, "rope_scaling"); rs && !rs->is_null()) {
        UA_RETURN_IF_ERROR(ParseRopeScaling(*rs, path, "rope_scaling", c));
    }
    if (const json* rp = JsonFind(root, "rope_parameters"); rp && !rp->is_null()) {
        if (!rp->is_object()) return InvalidArgument(path + ": \"rope_parameters\" must be an object");
        const json* rs = JsonFind(root, "rope_scaling");
        if (rs == nullptr || rs->is_null()) UA_RETURN_IF_ERROR(ParseRopeScaling(*rp, path, "rope_parameters", c));
        if (JsonFind(root, "rope_theta") == nullptr) {
            UA_RETURN_IF_ERROR(GetDouble(*rp, path + " rope_parameters", "rope_theta", c.rope_theta));
        }
    }

    // Keys that change the math: implemented by the family table, refused by name, or harmless at the value given.
    if (const json* v = JsonFind(root, "hidden_act"); v && !v->is_null() && *v != "silu") {
        return Refuse(path, "hidden_act", *v, "only silu (SwiGLU) is implemented");
    }
    if (const json* v = JsonFind(root, "partial_rotary_factor");
        v && !v->is_null() && !(v->is_number() && v->get<double>() == 1.0)) {
        return Refuse(path, "partial_rotary_factor", *v, "RoPE rotates the whole head");
    }
    for (const char* key : {"attn_logit_softcapping", "final_logit_softcapping"}) {
        if (const json* v = JsonFind(root, key); v && !v->is_null()) {
            return Refuse(path, key, *v, "logit soft-capping is not implemented");
        }
    }
    bool flag = false;
    UA_RETURN_IF_ERROR(GetBool(root, path, "mlp_bias", flag));
    if (flag) return Refuse(path, "mlp_bias", true, "MLP biases are not implemented");
    flag = false;
    UA_RETURN_IF_ERROR(GetBool(root, path, "use_qk_norm", flag));
    if (flag && !family->qk_norm) return Refuse(path, "use_qk_norm", true, "q/k norm is Qwen3ForCausalLM's only");

    bool attention_bias = false;
    UA_RETURN_IF_ERROR(GetBool(root, path, "attention_bias", attention_bias));
    if (attention_bias && !family->attention_bias_key && !family->qkv_bias_always) {
        // transformers' Mistral ignores the key (no biases), vLLM's reads it: ambiguous, so refused.
        return Refuse(path, "attention_bias", true, c.architecture + " has no attention biases");
    }
    c.qkv_bias = family->qkv_bias_always || (family->attention_bias_key && attention_bias);
    c.o_bias = family->attention_bias_key && attention_bias;
    c.qk_norm = family->qk_norm;

    if (family->window_switch) {
        bool use_window = false;
        UA_RETURN_IF_ERROR(GetBool(root, path, "use_sliding_window", use_window));
        if (use_window) {
            return Refuse(path, "use_sliding_window", true,
                          c.architecture + "'s per-layer sliding window (max_window_layers) is not implemented");
        }
        // sliding_window and max_window_layers only matter when use_sliding_window is true.
    } else if (family->window_key) {
        c.sliding_window = family->default_window;
        if (const json* v = JsonFind(root, "sliding_window"); v != nullptr) {
            if (v->is_null()) {
                c.sliding_window = 0;
            } else {
                UA_RETURN_IF_ERROR(GetInt(root, path, "sliding_window", false, c.sliding_window));
                if (c.sliding_window <= 0) {
                    return InvalidArgument(path + ": \"sliding_window\" must be positive or null, got " +
                                           std::to_string(c.sliding_window));
                }
            }
        }
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
    if (family->default_head_dim > 0) {
        c.head_dim = family->default_head_dim;
    } else {
        if (c.hidden_size % c.num_heads != 0 && JsonFind(root, "head_dim") == nullptr) {
            return InvalidArgument(path + ": hidden_size " + std::to_string(c.hidden_size) +
                                   " is not divisible by num_attention_heads " + std::to_string(c.num_heads));
        }
        c.head_dim = c.hidden_size / c.num_heads;
    }
    UA_RETURN_IF_ERROR(GetInt(root, path, "head_dim", false, c.head_dim));
    UA_RETURN_IF_ERROR(positive("head_dim", c.head_dim));
    UA_RETURN_IF_ERROR(at_most("head_dim", c.head_dim, 1 << 16));
    if (c.head_dim % 2 != 0) {
        return InvalidArgument(path + ": \"head_dim\" must be even for RoPE, got " + std::to_string(c.head_dim));
    }
    if (c.num_heads % c.num_kv_heads != 0) {
        return InvalidArgument(path + ": num_attention_heads " + std::to_string(c.num_heads) +
                               " is not a multiple of num_key_value_heads " + std::to_string(c.num_kv_heads));
    }
    if (c.rope_theta <= 0 || c.rms_norm_eps <= 0) {
        return InvalidArgument(path + ": rope_theta and rms_norm_eps must be positive");
    }
    if (c.rope_scaling.type == RopeType::kDynamic && c.head_dim <= 2) {
        return InvalidArgument(path + ": rope_type \"dynamic\" needs head_dim > 2");
    }

    if (const json* q = JsonFind(root, "quantization_config"); q && !q->is_null()) {
        UA_RETURN_IF_ERROR(ParseQuantization(*q, path, c.quantization));
    }

    // layer_types (transformers >= 4.53): every layer must attend the way the family table says.
    if (const json* lt = JsonFind(root, "layer_types"); lt && !lt->is_null()) {
        if (!lt->is_array()) return InvalidArgument(path + ": \"layer_types\" must be a list");
        if (static_cast<int>(lt->size()) != c.num_layers) {
            return InvalidArgument(path + ": \"layer_types\" lists " + std::to_string(lt->size()) +
                                   " layers, num_hidden_layers is " + std::to_string(c.num_layers));
        }
        const std::string want = c.sliding_window > 0 ? "sliding_attention" : "full_attention";
        for (size_t i = 0; i < lt->size(); ++i) {
            if ((*lt)[i] != want) {
                return Refuse(path, "layer_types[" + std::to_string(i) + "]", (*lt)[i],
                              "every layer of this model attends as \"" + want + "\"");
            }
        }
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
    const Family* family = FindFamily(architecture);
    OrderedJson eos = eos_token_ids.size() == 1 ? OrderedJson(eos_token_ids[0]) : OrderedJson(eos_token_ids);
    if (eos_token_ids.empty()) eos = eos_token_id;
    OrderedJson j = {{"architectures", OrderedJson::array({architecture})},
                     {"model_type", family ? family->model_type : model_type.c_str()},
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
                     {"eos_token_id", eos},
                     {"hidden_act", "silu"},
                     {"torch_dtype", torch_dtype}};
    if (rope_scaling.type == RopeType::kDefault) {
        j["rope_scaling"] = nullptr;
    } else {
        OrderedJson rs = {{"rope_type", RopeTypeName(rope_scaling.type)}, {"factor", rope_scaling.factor}};
        if (rope_scaling.type == RopeType::kLlama3) {
            rs["low_freq_factor"] = rope_scaling.low_freq_factor;
            rs["high_freq_factor"] = rope_scaling.high_freq_factor;
        }
        if (rope_scaling.original_max_position_embeddings > 0) {
            rs["original_max_position_embeddings"] = rope_scaling.original_max_position_embeddings;
        }
        j["rope_scaling"] = std::move(rs);
    }
    if (family == nullptr || family->attention_bias_key) j["attention_bias"] = qkv_bias;
    if (family == nullptr || std::string(family->model_type) == "llama") j["mlp_bias"] = false;
    if (family && family->window_key) {
        j["sliding_window"] = sliding_window > 0 ? OrderedJson(sliding_window) : OrderedJson(nullptr);
    }
    if (family && family->window_switch) {
        j["use_sliding_window"] = false;
        j["sliding_window"] = nullptr;
    }
    if (has_grouping) {
        j["grouping_idx"] = grouping_idx;
        j["grouping_begin_idx"] = grouping_begin_idx;
        j["grouping_end_idx"] = grouping_end_idx;
    }
    return j;
}

}  // namespace uniattn
