#include "uniattn/model_config.h"

#include <cmath>

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

namespace {

Status GetInt(const Json& root, const std::string& path, const char* key, bool required, int& out) {
    const Json* v = root.Find(key);
    if (v == nullptr || v->is_null()) {
        if (required) return InvalidArgument(path + ": missing required key \"" + key + "\"");
        return Status::Ok();
    }
    if (!v->is_integer()) return InvalidArgument(path + ": \"" + key + "\" must be an integer");
    int64_t x = v->int_value();
    if (x < INT32_MIN || x > INT32_MAX) return InvalidArgument(path + ": \"" + key + "\" is out of range");
    out = static_cast<int>(x);
    return Status::Ok();
}

Status GetDouble(const Json& root, const std::string& path, const char* key, double& out) {
    const Json* v = root.Find(key);
    if (v == nullptr || v->is_null()) return Status::Ok();
    if (!v->is_number()) return InvalidArgument(path + ": \"" + key + "\" must be a number");
    const double x = v->number_value();
    // 1e400 parses to infinity: refused, as it could not be written back as JSON (found by fuzz_model_config).
    if (!std::isfinite(x)) return InvalidArgument(path + ": \"" + key + "\" must be a finite number");
    out = x;
    return Status::Ok();
}

// bos/eos ids may be an int or a list (Llama 3 lists several eos ids); we keep the first.
Status GetTokenId(const Json& root, const std::string& path, const char* key, int& out) {
    const Json* v = root.Find(key);
    if (v == nullptr || v->is_null()) return Status::Ok();
    if (v->is_array() && !v->array().empty()) v = &v->array()[0];
    if (!v->is_integer()) return InvalidArgument(path + ": \"" + key + "\" must be an integer token id");
    out = static_cast<int>(v->int_value());
    return Status::Ok();
}

}  // namespace

StatusOr<ModelConfig> ModelConfig::FromJson(const std::string& text, const std::string& path) {
    UA_ASSIGN_OR_RETURN(Json root, ParseJson(text, path));
    if (!root.is_object()) return InvalidArgument(path + ": top level must be a JSON object");
    ModelConfig c;
    if (const Json* arch = root.Find("architectures"); arch && arch->is_array() && !arch->array().empty()) {
        if (!arch->array()[0].is_string()) return InvalidArgument(path + ": \"architectures\" must list strings");
        c.architecture = arch->array()[0].string_value();
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
    if (const Json* t = root.Find("tie_word_embeddings"); t && !t->is_null()) {
        if (!t->is_bool()) return InvalidArgument(path + ": \"tie_word_embeddings\" must be a boolean");
        c.tie_word_embeddings = t->bool_value();
    }
    if (const Json* t = root.Find("torch_dtype"); t && t->is_string()) c.torch_dtype = t->string_value();
    if (const Json* rs = root.Find("rope_scaling"); rs && !rs->is_null()) {
        return Unimplemented(path + ": \"rope_scaling\" is not supported yet");
    }
    // transformers 5 writes {"rope_parameters": {"rope_theta": ..., "rope_type": "default"}} instead of a
    // top-level rope_theta; a scaled RoPE (llama3, yarn, linear, dynamic) is refused like rope_scaling.
    if (const Json* rp = root.Find("rope_parameters"); rp && !rp->is_null()) {
        if (!rp->is_object()) return InvalidArgument(path + ": \"rope_parameters\" must be an object");
        if (const Json* type = rp->Find("rope_type"); type && !type->is_null()) {
            if (!type->is_string()) return InvalidArgument(path + ": \"rope_parameters.rope_type\" must be a string");
            if (type->string_value() != "default") {
                return Unimplemented(path + ": rope_type \"" + type->string_value() + "\" is not supported yet");
            }
        }
        if (root.Find("rope_theta") == nullptr) {
            UA_RETURN_IF_ERROR(GetDouble(*rp, path + " rope_parameters", "rope_theta", c.rope_theta));
        }
    }
    if (root.Find("torch_dtype") == nullptr) {  // transformers 5 names it "dtype"
        if (const Json* t = root.Find("dtype"); t && t->is_string()) c.torch_dtype = t->string_value();
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

    const bool has_g = root.Find("grouping_idx") != nullptr;
    const bool has_b = root.Find("grouping_begin_idx") != nullptr;
    const bool has_e = root.Find("grouping_end_idx") != nullptr;
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

Json ModelConfig::ToJson() const {
    Json j = Json::Object();
    Json arch = Json::Array();
    arch.Push(Json::String(architecture));
    j.Set("architectures", std::move(arch));
    j.Set("model_type", Json::String(architecture == "MistralForCausalLM" ? "mistral" : "llama"));
    j.Set("vocab_size", Json::Int(vocab_size));
    j.Set("hidden_size", Json::Int(hidden_size));
    j.Set("intermediate_size", Json::Int(intermediate_size));
    j.Set("num_hidden_layers", Json::Int(num_layers));
    j.Set("num_attention_heads", Json::Int(num_heads));
    j.Set("num_key_value_heads", Json::Int(num_kv_heads));
    j.Set("head_dim", Json::Int(head_dim));
    j.Set("max_position_embeddings", Json::Int(max_position_embeddings));
    j.Set("rope_theta", Json::Number(rope_theta));
    j.Set("rms_norm_eps", Json::Number(rms_norm_eps));
    j.Set("tie_word_embeddings", Json::Bool(tie_word_embeddings));
    j.Set("bos_token_id", Json::Int(bos_token_id));
    j.Set("eos_token_id", Json::Int(eos_token_id));
    j.Set("hidden_act", Json::String("silu"));
    j.Set("attention_bias", Json::Bool(false));
    j.Set("mlp_bias", Json::Bool(false));
    j.Set("torch_dtype", Json::String(torch_dtype));
    if (has_grouping) {
        j.Set("grouping_idx", Json::Int(grouping_idx));
        j.Set("grouping_begin_idx", Json::Int(grouping_begin_idx));
        j.Set("grouping_end_idx", Json::Int(grouping_end_idx));
    }
    return j;
}

}  // namespace uniattn
