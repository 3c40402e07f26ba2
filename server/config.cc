#include "server/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <type_traits>

#include "server/chat_template.h"

namespace uniattn::server {
namespace {

// A scalar that was quoted in the YAML source is a string, even when it looks like a number.
bool IsQuoted(const YAML::Node& node) { return node.Tag() == "!"; }

std::string Describe(const YAML::Node& node) {
    switch (node.Type()) {
        case YAML::NodeType::Undefined:
            return "nothing";
        case YAML::NodeType::Null:
            return "null";
        case YAML::NodeType::Scalar:
            return "'" + node.Scalar() + "'";
        case YAML::NodeType::Sequence:
            return "a list";
        case YAML::NodeType::Map:
            return "a map";
    }
    return "?";
}

Status TypeError(const std::string& key, const char* expected, const YAML::Node& node) {
    return InvalidArgument(key + ": expected " + expected + ", got " + Describe(node));
}

StatusOr<int64_t> ReadInt(const std::string& key, const YAML::Node& node) {
    if (!node.IsScalar() || IsQuoted(node)) return TypeError(key, "an integer", node);
    const std::string& s = node.Scalar();
    errno = 0;
    char* end = nullptr;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno == ERANGE) return TypeError(key, "an integer", node);
    return static_cast<int64_t>(v);
}

StatusOr<double> ReadDouble(const std::string& key, const YAML::Node& node) {
    if (!node.IsScalar() || IsQuoted(node)) return TypeError(key, "a number", node);
    const std::string& s = node.Scalar();
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0' || !std::isfinite(v)) return TypeError(key, "a number", node);
    return v;
}

StatusOr<bool> ReadBool(const std::string& key, const YAML::Node& node) {
    if (!node.IsScalar() || IsQuoted(node)) return TypeError(key, "true or false", node);
    const std::string& s = node.Scalar();
    if (s == "true" || s == "True" || s == "yes" || s == "on") return true;
    if (s == "false" || s == "False" || s == "no" || s == "off") return false;
    return TypeError(key, "true or false", node);
}

StatusOr<std::string> ReadString(const std::string& key, const YAML::Node& node) {
    if (!node.IsScalar()) return TypeError(key, "a string", node);
    return node.Scalar();
}

StatusOr<std::vector<std::string>> ReadStringList(const std::string& key, const YAML::Node& node) {
    if (node.IsNull()) return std::vector<std::string>{};
    if (!node.IsSequence()) return TypeError(key, "a list of strings", node);
    std::vector<std::string> out;
    for (size_t i = 0; i < node.size(); ++i) {
        if (!node[i].IsScalar()) return TypeError(key + "[" + std::to_string(i) + "]", "a string", node[i]);
        out.push_back(node[i].Scalar());
    }
    return out;
}

Status OneOf(const std::string& key, const std::string& value, std::initializer_list<const char*> choices) {
    std::string list;
    for (const char* c : choices) {
        if (value == c) return Status::Ok();
        list += list.empty() ? "" : ", ";
        list += c;
    }
    return InvalidArgument(key + ": '" + value + "' is not one of " + list);
}

Status InRange(const std::string& key, double v, double lo, double hi, const char* what) {
    if (v < lo || v > hi) {
        std::ostringstream os;
        os << key << ": " << v << " is out of range (" << what << ")";
        return InvalidArgument(os.str());
    }
    return Status::Ok();
}

using Setter = std::function<Status(const std::string& key, const YAML::Node& node, ServerConfig& c)>;

struct Key {
    const char* name;
    Setter set;
};

Setter Int(int ServerConfig::*field, int64_t lo, int64_t hi, const char* what) {
    return [=](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
        UA_ASSIGN_OR_RETURN(int64_t v, ReadInt(key, node));
        UA_RETURN_IF_ERROR(
            InRange(key, static_cast<double>(v), static_cast<double>(lo), static_cast<double>(hi), what));
        c.*field = static_cast<int>(v);
        return Status::Ok();
    };
}

Setter EngineInt(int EngineConfig::*field, int64_t lo, int64_t hi, const char* what) {
    return [=](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
        UA_ASSIGN_OR_RETURN(int64_t v, ReadInt(key, node));
        UA_RETURN_IF_ERROR(
            InRange(key, static_cast<double>(v), static_cast<double>(lo), static_cast<double>(hi), what));
        c.engine.*field = static_cast<int>(v);
        return Status::Ok();
    };
}

Setter CudaInt(int CudaOptions::*field, int64_t lo, int64_t hi, const char* what) {
    return [=](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
        UA_ASSIGN_OR_RETURN(int64_t v, ReadInt(key, node));
        UA_RETURN_IF_ERROR(
            InRange(key, static_cast<double>(v), static_cast<double>(lo), static_cast<double>(hi), what));
        c.engine.cuda.*field = static_cast<int>(v);
        return Status::Ok();
    };
}

Setter CudaBool(bool CudaOptions::*field) {
    return [=](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
        UA_ASSIGN_OR_RETURN(c.engine.cuda.*field, ReadBool(key, node));
        return Status::Ok();
    };
}

Setter Seconds(double ServerConfig::*field, double lo, double hi, const char* what) {
    return [=](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
        UA_ASSIGN_OR_RETURN(double v, ReadDouble(key, node));
        UA_RETURN_IF_ERROR(InRange(key, v, lo, hi, what));
        c.*field = v;
        return Status::Ok();
    };
}

Setter Choice(std::string ServerConfig::*field, std::initializer_list<const char*> choices) {
    std::vector<const char*> list(choices);
    return [=](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
        UA_ASSIGN_OR_RETURN(std::string v, ReadString(key, node));
        for (const char* ch : list) {
            if (v == ch) {
                c.*field = v;
                return Status::Ok();
            }
        }
        std::string names;
        for (const char* ch : list) names += (names.empty() ? "" : ", ") + std::string(ch);
        return InvalidArgument(key + ": '" + v + "' is not one of " + names);
    };
}

Setter StringList(std::vector<std::string> ServerConfig::*field, bool allow_empty_items) {
    return [=](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
        UA_ASSIGN_OR_RETURN(std::vector<std::string> v, ReadStringList(key, node));
        if (!allow_empty_items) {
            for (const std::string& s : v) {
                if (s.empty()) return InvalidArgument(key + ": empty entries are not allowed");
            }
        }
        c.*field = std::move(v);
        return Status::Ok();
    };
}

// model.override_generation_config.*: a request default that replaces generation_config.json's; checked with the
// ranges a request may use.
template <class T>
Setter SamplingDefault(std::optional<T> SamplingDefaults::*field) {
    return [=](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
        SamplingDefaults d;
        if constexpr (std::is_same_v<T, int>) {
            UA_ASSIGN_OR_RETURN(int64_t v, ReadInt(key, node));
            if (v < INT32_MIN || v > INT32_MAX) return InvalidArgument(key + ": out of range");
            d.*field = static_cast<int>(v);
        } else {
            UA_ASSIGN_OR_RETURN(double v, ReadDouble(key, node));
            d.*field = static_cast<T>(v);
        }
        GenerationRequest probe;
        d.ApplyTo(probe);
        RequestLimits limits;
        limits.vocab_size = INT32_MAX;
        if (Status s = ValidateSampling(probe, limits); !s.ok()) return InvalidArgument(key + ": " + s.message());
        c.override_generation_config.Override(d);
        return Status::Ok();
    };
}

// engine.cuda.*: a table of its own (Keys() appends it; one initializer holding every key grows past what
// clang-format lays out sanely).
const std::vector<Key>& CudaKeys() {
    static const std::vector<Key> keys = {
        {"engine.cuda.device", CudaInt(&CudaOptions::device, 0, 1023, "a CUDA device ordinal")},
        {"engine.cuda.exact_activations", CudaBool(&CudaOptions::exact_activations)},
        {"engine.cuda.fp8_tensor_cores", CudaBool(&CudaOptions::fp8_tensor_cores)},
        {"engine.cuda.fp8_outer_scales", CudaBool(&CudaOptions::fp8_outer_scales)},
        {"engine.cuda.fp8_fast_accum", CudaBool(&CudaOptions::fp8_fast_accum)},
        {"engine.cuda.fp8_algo_candidates", CudaInt(&CudaOptions::fp8_algo_candidates, 1, 16, "1..16")},
        {"engine.cuda.fp8_split_k",
         [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
             UA_ASSIGN_OR_RETURN(int64_t v, ReadInt(key, node));
             if (v < 0 || v > 16 || (v & (v - 1)) != 0) {
                 return InvalidArgument(key + ": must be 0 (by shape), 1 (no split), 2, 4, 8 or 16, got " +
                                        std::to_string(v));
             }
             c.engine.cuda.fp8_split_k = static_cast<int>(v);
             return Status::Ok();
         }},
        {"engine.cuda.mma_gemm_max_rows",
         CudaInt(&CudaOptions::mma_gemm_max_rows, -1, 64, "-1 (by weight dtype) or 0..64")},
        {"engine.cuda.pdl", CudaBool(&CudaOptions::pdl)},
        {"engine.cuda.fuse_gemv_inputs", CudaBool(&CudaOptions::fuse_gemv_inputs)},
        {"engine.cuda.fuse_mma_gemm_inputs", CudaBool(&CudaOptions::fuse_mma_gemm_inputs)},
        {"engine.cuda.stage_gemv_input", CudaBool(&CudaOptions::stage_gemv_input)},
        {"engine.cuda.gemv_row_segs", CudaInt(&CudaOptions::gemv_row_segs, 0, 8, "0, 1, 2, 4 or 8")},
        {"engine.cuda.gemm_ksplit", CudaInt(&CudaOptions::gemm_ksplit, 0, 64, "0 = by shape, else 1..64")},
        {"engine.cuda.fuse_attention_combine", CudaBool(&CudaOptions::fuse_attention_combine)},
        {"engine.cuda.decode_heads_per_block", CudaInt(&CudaOptions::decode_heads_per_block, 0, 1, "0 or 1")},
        {"engine.cuda.tensor_core_attention", CudaBool(&CudaOptions::tensor_core_attention)},
        {"engine.cuda.fp8_prefill_tensor_cores", CudaBool(&CudaOptions::fp8_prefill_tensor_cores)},
        {"engine.cuda.staged_decode_attention", CudaBool(&CudaOptions::staged_decode_attention)},
        {"engine.cuda.sampling_blocks_per_row", CudaInt(&CudaOptions::sampling_blocks_per_row, 1, 64, "1..64")},
        {"engine.cuda.decode_min_chunk",
         [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
             UA_ASSIGN_OR_RETURN(int64_t v, ReadInt(key, node));
             if (v != 0 && (v < 64 || v > 2048 || v % 64 != 0)) {
                 return InvalidArgument(key +
                                        ": must be 0 (the default, 128) or a multiple of 64 from 64 to 2048, got " +
                                        std::to_string(v));
             }
             c.engine.cuda.decode_min_chunk = static_cast<int>(v);
             return Status::Ok();
         }},
    };
    return keys;
}

const std::vector<Key>& Keys() {
    static const std::vector<Key> keys = [] {
        std::vector<Key> all = {
            {"model.path",
             [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
                 UA_ASSIGN_OR_RETURN(c.engine.model_dir, ReadString(key, node));
                 if (c.engine.model_dir.empty()) return InvalidArgument(key + ": must name the model directory");
                 return Status::Ok();
             }},
            {"model.name",
             [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
                 if (node.IsNull()) {
                     c.engine.model_name.clear();
                     return Status::Ok();
                 }
                 UA_ASSIGN_OR_RETURN(c.engine.model_name, ReadString(key, node));
                 return Status::Ok();
             }},
            {"model.chat_template",
             [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
                 // auto, a built-in name, or a path to a Jinja file (read and parsed at start-up).
                 UA_ASSIGN_OR_RETURN(std::string v, ReadString(key, node));
                 const bool is_path =
                     v.find('/') != std::string::npos || (v.size() > 6 && v.compare(v.size() - 6, 6, ".jinja") == 0);
                 if (!is_path && v != "auto" && !ParseChatTemplateName(v).ok()) {
                     return InvalidArgument(
                         key + ": '" + v +
                         "' is not auto, plain, llama-2, llama-3, chatml, mistral, none or a path to "
                         "a .jinja file");
                 }
                 c.chat_template = v;
                 return Status::Ok();
             }},
            {"model.generation_config",
             [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
                 UA_ASSIGN_OR_RETURN(c.engine.generation_config, ReadString(key, node));
                 if (c.engine.generation_config.empty()) {
                     return InvalidArgument(key + ": must be auto, none or a directory holding generation_config.json");
                 }
                 return Status::Ok();
             }},
            {"model.override_generation_config.temperature", SamplingDefault(&SamplingDefaults::temperature)},
            {"model.override_generation_config.top_p", SamplingDefault(&SamplingDefaults::top_p)},
            {"model.override_generation_config.top_k", SamplingDefault(&SamplingDefaults::top_k)},
            {"model.override_generation_config.min_p", SamplingDefault(&SamplingDefaults::min_p)},
            {"model.override_generation_config.repetition_penalty",
             SamplingDefault(&SamplingDefaults::repetition_penalty)},
            {"model.max_model_len", EngineInt(&EngineConfig::max_model_len, 0, 1 << 24, "0 = the model's, else >= 1")},
            {"engine.backend",
             [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
                 UA_ASSIGN_OR_RETURN(std::string v, ReadString(key, node));
                 UA_RETURN_IF_ERROR(OneOf(key, v, {"cpu", "cuda"}));
                 c.engine.backend = v;
                 return Status::Ok();
             }},
            {"engine.dtype",
             [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
                 UA_ASSIGN_OR_RETURN(std::string v, ReadString(key, node));
                 UA_RETURN_IF_ERROR(OneOf(key, v, {"auto", "float32", "float16", "bfloat16"}));
                 c.engine.dtype = v;
                 return Status::Ok();
             }},
            {"engine.quantization",
             [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
                 UA_ASSIGN_OR_RETURN(std::string v, ReadString(key, node));
                 UA_RETURN_IF_ERROR(OneOf(key, v, {"none", "fp8"}));
                 c.engine.quantization = v;
                 return Status::Ok();
             }},
            {"engine.kv_cache_dtype",
             [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
                 UA_ASSIGN_OR_RETURN(std::string v, ReadString(key, node));
                 UA_RETURN_IF_ERROR(OneOf(key, v, {"auto", "fp8_e4m3", "fp8"}));
                 c.engine.kv_cache_dtype = v;
                 return Status::Ok();
             }},
            {"engine.tensor_parallel_size", EngineInt(&EngineConfig::tensor_parallel_size, 1, 64, "must be in 1..64")},
            {"engine.num_threads", EngineInt(&EngineConfig::num_threads, 0, 1024, "0 = all cores")},
            {"engine.block_size",
             [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
                 UA_ASSIGN_OR_RETURN(int64_t v, ReadInt(key, node));
                 if (v < 1 || v > 1024 || (v & (v - 1)) != 0) {
                     return InvalidArgument(key + ": " + std::to_string(v) + " is not a power of two in 1..1024");
                 }
                 c.engine.block_size = static_cast<int>(v);
                 return Status::Ok();
             }},
            {"engine.kv_cache_bytes",
             [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
                 if (!node.IsScalar()) return TypeError(key, "a byte size such as 268435456 or 256MiB", node);
                 auto v = ParseByteSize(node.Scalar());
                 if (!v.ok()) return InvalidArgument(key + ": " + v.status().message());
                 c.engine.kv_cache_bytes = *v;
                 return Status::Ok();
             }},
            {"engine.kv_cache_memory_fraction",
             [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
                 UA_ASSIGN_OR_RETURN(double v, ReadDouble(key, node));
                 if (!(v > 0 && v <= 1)) {
                     std::ostringstream os;
                     os << key << ": " << v << " is out of range (must be in (0, 1])";
                     return InvalidArgument(os.str());
                 }
                 c.engine.kv_cache_memory_fraction = v;
                 return Status::Ok();
             }},
            {"engine.max_num_seqs", EngineInt(&EngineConfig::max_num_seqs, 1, 1 << 16, "must be >= 1")},
            {"engine.max_num_batched_tokens",
             EngineInt(&EngineConfig::max_num_batched_tokens, 1, 1 << 24, "must be >= 1")},
            {"engine.enable_prefix_caching",
             [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
                 UA_ASSIGN_OR_RETURN(c.engine.enable_prefix_caching, ReadBool(key, node));
                 return Status::Ok();
             }},
            {"engine.max_queued_requests", EngineInt(&EngineConfig::max_queued_requests, 1, 1 << 24, "must be >= 1")},
            {"server.host",
             [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
                 UA_ASSIGN_OR_RETURN(c.host, ReadString(key, node));
                 if (c.host.empty()) return InvalidArgument(key + ": must not be empty");
                 return Status::Ok();
             }},
            {"server.http_port", Int(&ServerConfig::http_port, 0, 65535, "0 = ephemeral, else 1..65535")},
            {"server.grpc_port", Int(&ServerConfig::grpc_port, -1, 65535, "-1 = off, 0 = ephemeral, else 1..65535")},
            {"server.http_threads", Int(&ServerConfig::http_threads, 1, 256, "1..256")},
            {"server.prepare_threads", Int(&ServerConfig::prepare_threads, 1, 256, "1..256")},
            {"server.max_sequences_per_request",
             Int(&ServerConfig::max_sequences_per_request, 0, 1 << 16, "0 = engine.max_num_seqs, else >= 1")},
            {"server.api_keys", StringList(&ServerConfig::api_keys, false)},
            {"server.cors_allowed_origins", StringList(&ServerConfig::cors_allowed_origins, false)},
            {"server.max_body_bytes",
             [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
                 if (!node.IsScalar()) return TypeError(key, "a byte size such as 8MiB", node);
                 auto v = ParseByteSize(node.Scalar());
                 if (!v.ok()) return InvalidArgument(key + ": " + v.status().message());
                 if (*v < 1024)
                     return InvalidArgument(key + ": " + std::to_string(*v) + " is below the minimum of 1024");
                 c.max_body_bytes = *v;
                 return Status::Ok();
             }},
            {"server.request_timeout_s", Seconds(&ServerConfig::request_timeout_s, 0.1, 86400, "0.1..86400")},
            {"server.drain_timeout_s", Seconds(&ServerConfig::drain_timeout_s, 0, 86400, "0..86400")},
            {"server.ready_max_stall_s", Seconds(&ServerConfig::ready_max_stall_s, 0.1, 86400, "0.1..86400")},
            {"logging.level", Choice(&ServerConfig::log_level, {"trace", "debug", "info", "warn", "error", "off"})},
            {"logging.access_log",
             [](const std::string& key, const YAML::Node& node, ServerConfig& c) -> Status {
                 UA_ASSIGN_OR_RETURN(c.access_log, ReadBool(key, node));
                 return Status::Ok();
             }},
        };
        all.insert(all.end(), CudaKeys().begin(), CudaKeys().end());
        return all;
    }();
    return keys;
}

const Key* FindKey(std::string_view name) {
    for (const Key& k : Keys()) {
        if (name == k.name) return &k;
    }
    return nullptr;
}

size_t EditDistance(std::string_view a, std::string_view b) {
    std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        cur[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
        }
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

Status UnknownKey(std::string_view where, const std::string& key) {
    std::string msg = std::string(where) + ": unknown key '" + key + "'";
    const Key* best = nullptr;
    size_t best_d = 4;
    for (const Key& k : Keys()) {
        const size_t d = EditDistance(key, k.name);
        if (d < best_d) {
            best_d = d;
            best = &k;
        }
    }
    if (best) msg += " (did you mean '" + std::string(best->name) + "'?)";
    return InvalidArgument(msg);
}

bool IsSection(const std::string& prefix) {
    for (const Key& k : Keys()) {
        if (std::string_view(k.name).starts_with(prefix + ".")) return true;
    }
    return false;
}

// Walks a map; leaves are applied through the key table, sections recurse.
Status ApplyMap(std::string_view where, const std::string& prefix, const YAML::Node& map, ServerConfig& c) {
    for (const auto& item : map) {
        if (!item.first.IsScalar()) return InvalidArgument(std::string(where) + ": keys must be strings");
        const std::string key = prefix.empty() ? item.first.Scalar() : prefix + "." + item.first.Scalar();
        if (const Key* k = FindKey(key)) {
            UA_RETURN_IF_ERROR(k->set(key, item.second, c));
        } else if (IsSection(key)) {
            if (item.second.IsNull()) continue;
            if (!item.second.IsMap()) return TypeError(key, "a map", item.second);
            UA_RETURN_IF_ERROR(ApplyMap(where, key, item.second, c));
        } else {
            return UnknownKey(where, key);
        }
    }
    return Status::Ok();
}

Status Validate(const ServerConfig& c) {
    if (c.engine.model_dir.empty()) return InvalidArgument("model.path: no model directory given (use --model DIR)");
    if (c.grpc_port > 0 && c.grpc_port == c.http_port) {
        return InvalidArgument("server.grpc_port: " + std::to_string(c.grpc_port) + " is also server.http_port");
    }
    if (c.engine.backend == "cpu" && c.engine.dtype != "auto" && c.engine.dtype != "float32") {
        return InvalidArgument("engine.dtype: the cpu backend computes in float32; '" + c.engine.dtype +
                               "' needs engine.backend: cuda");
    }
    if (c.engine.max_num_batched_tokens < c.engine.max_num_seqs) {
        return InvalidArgument("engine.max_num_batched_tokens: " + std::to_string(c.engine.max_num_batched_tokens) +
                               " is below engine.max_num_seqs (" + std::to_string(c.engine.max_num_seqs) +
                               "): a step could not decode every running sequence");
    }
    if (c.engine.cuda.fp8_prefill_tensor_cores && !c.engine.cuda.tensor_core_attention) {
        return InvalidArgument(
            "engine.cuda.fp8_prefill_tensor_cores: needs engine.cuda.tensor_core_attention (it is false here)");
    }
    if (c.engine.cuda.staged_decode_attention && !c.engine.cuda.tensor_core_attention) {
        return InvalidArgument(
            "engine.cuda.staged_decode_attention: needs engine.cuda.tensor_core_attention (it is false here)");
    }
    return Status::Ok();
}

}  // namespace

StatusOr<ConfigOverride> ParseOverride(std::string_view text) {
    const size_t eq = text.find('=');
    if (eq == std::string_view::npos || eq == 0) {
        return InvalidArgument("--set " + std::string(text) + ": expected key=value");
    }
    return ConfigOverride{std::string(text.substr(0, eq)), std::string(text.substr(eq + 1))};
}

StatusOr<int64_t> ParseByteSize(std::string_view text) {
    std::string s(text);
    s.erase(std::remove_if(s.begin(), s.end(), [](unsigned char ch) { return std::isspace(ch); }), s.end());
    size_t i = 0;
    while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
    if (i == 0) return InvalidArgument("'" + std::string(text) + "' is not a byte size (e.g. 268435456, 256MiB)");
    const double number = std::strtod(s.substr(0, i).c_str(), nullptr);
    std::string unit = s.substr(i);
    std::transform(unit.begin(), unit.end(), unit.begin(), [](unsigned char ch) { return std::tolower(ch); });
    double mult = 0;
    if (unit.empty() || unit == "b") {
        mult = 1;
    } else if (unit == "k" || unit == "ki" || unit == "kib") {
        mult = 1024.0;
    } else if (unit == "m" || unit == "mi" || unit == "mib") {
        mult = 1024.0 * 1024;
    } else if (unit == "g" || unit == "gi" || unit == "gib") {
        mult = 1024.0 * 1024 * 1024;
    } else if (unit == "t" || unit == "ti" || unit == "tib") {
        mult = 1024.0 * 1024 * 1024 * 1024;
    } else if (unit == "kb") {
        mult = 1e3;
    } else if (unit == "mb") {
        mult = 1e6;
    } else if (unit == "gb") {
        mult = 1e9;
    } else if (unit == "tb") {
        mult = 1e12;
    } else {
        return InvalidArgument("'" + std::string(text) + "' has an unknown unit (use B, KiB, MiB, GiB, KB, MB, GB)");
    }
    const double bytes = number * mult;
    if (bytes > static_cast<double>(std::numeric_limits<int64_t>::max() / 2)) {
        return InvalidArgument("'" + std::string(text) + "' is too large");
    }
    if (unit.empty() && bytes != std::floor(bytes)) {
        return InvalidArgument("'" + std::string(text) + "' is not a whole number of bytes");
    }
    return static_cast<int64_t>(bytes);
}

StatusOr<ServerConfig> ParseConfig(std::string_view yaml_text, std::string_view what,
                                   const std::vector<ConfigOverride>& overrides) {
    ServerConfig c;
    c.engine.model_dir.clear();
    YAML::Node root;
    try {
        root = YAML::Load(std::string(yaml_text));
    } catch (const YAML::Exception& e) {
        return InvalidArgument(std::string(what) + ": invalid YAML: " + e.what());
    }
    try {
        if (root.IsMap()) {
            UA_RETURN_IF_ERROR(ApplyMap(what, "", root, c));
        } else if (!root.IsNull() && root.IsDefined()) {
            return InvalidArgument(std::string(what) + ": the top level must be a map of sections");
        }
        for (const ConfigOverride& o : overrides) {
            const Key* k = FindKey(o.key);
            if (!k) return UnknownKey("--set", o.key);
            YAML::Node value;
            try {
                value = YAML::Load(o.value);
            } catch (const YAML::Exception& e) {
                return InvalidArgument(o.key + ": invalid value '" + o.value + "': " + e.what());
            }
            UA_RETURN_IF_ERROR(k->set(o.key, value, c));
        }
    } catch (const YAML::Exception& e) {
        return InvalidArgument(std::string(what) + ": " + e.what());
    }
    UA_RETURN_IF_ERROR(Validate(c));
    return c;
}

StatusOr<ServerConfig> LoadConfig(const std::string& path, const std::vector<ConfigOverride>& overrides) {
    std::string text;
    if (!path.empty()) {
        FILE* f = std::fopen(path.c_str(), "rb");
        if (!f) return NotFound(path + ": cannot open the config file");
        char buf[4096];
        size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
        std::fclose(f);
    }
    return ParseConfig(text, path.empty() ? "defaults" : path, overrides);
}

std::vector<std::string> ConfigKeys() {
    std::vector<std::string> out;
    for (const Key& k : Keys()) out.emplace_back(k.name);
    return out;
}

std::string ConfigToYaml(const ServerConfig& c) {
    YAML::Emitter out;
    auto list = [&](const std::vector<std::string>& v, bool redact) {
        out << YAML::Flow << YAML::BeginSeq;
        for (const std::string& s : v) out << (redact ? std::string("<redacted>") : s);
        out << YAML::EndSeq;
    };
    out << YAML::BeginMap;
    out << YAML::Key << "model" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "path" << YAML::Value << c.engine.model_dir;
    out << YAML::Key << "name" << YAML::Value << c.engine.model_name;
    out << YAML::Key << "chat_template" << YAML::Value << c.chat_template;
    out << YAML::Key << "max_model_len" << YAML::Value << c.engine.max_model_len;
    out << YAML::Key << "generation_config" << YAML::Value << c.engine.generation_config;
    const SamplingDefaults& d = c.override_generation_config;
    out << YAML::Key << "override_generation_config" << YAML::Value << YAML::BeginMap;
    if (d.temperature) out << YAML::Key << "temperature" << YAML::Value << *d.temperature;
    if (d.top_p) out << YAML::Key << "top_p" << YAML::Value << *d.top_p;
    if (d.top_k) out << YAML::Key << "top_k" << YAML::Value << *d.top_k;
    if (d.min_p) out << YAML::Key << "min_p" << YAML::Value << *d.min_p;
    if (d.repetition_penalty) out << YAML::Key << "repetition_penalty" << YAML::Value << *d.repetition_penalty;
    out << YAML::EndMap;
    out << YAML::EndMap;
    out << YAML::Key << "engine" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "backend" << YAML::Value << c.engine.backend;
    out << YAML::Key << "dtype" << YAML::Value << c.engine.dtype;
    out << YAML::Key << "quantization" << YAML::Value << c.engine.quantization;
    out << YAML::Key << "kv_cache_dtype" << YAML::Value << c.engine.kv_cache_dtype;
    out << YAML::Key << "tensor_parallel_size" << YAML::Value << c.engine.tensor_parallel_size;
    out << YAML::Key << "num_threads" << YAML::Value << c.engine.num_threads;
    out << YAML::Key << "block_size" << YAML::Value << c.engine.block_size;
    out << YAML::Key << "kv_cache_bytes" << YAML::Value << c.engine.kv_cache_bytes;
    out << YAML::Key << "kv_cache_memory_fraction" << YAML::Value << c.engine.kv_cache_memory_fraction;
    out << YAML::Key << "max_num_seqs" << YAML::Value << c.engine.max_num_seqs;
    out << YAML::Key << "max_num_batched_tokens" << YAML::Value << c.engine.max_num_batched_tokens;
    out << YAML::Key << "enable_prefix_caching" << YAML::Value << c.engine.enable_prefix_caching;
    out << YAML::Key << "max_queued_requests" << YAML::Value << c.engine.max_queued_requests;
    const CudaOptions& cu = c.engine.cuda;
    out << YAML::Key << "cuda" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "device" << YAML::Value << cu.device;
    out << YAML::Key << "exact_activations" << YAML::Value << cu.exact_activations;
    out << YAML::Key << "fp8_tensor_cores" << YAML::Value << cu.fp8_tensor_cores;
    out << YAML::Key << "fp8_outer_scales" << YAML::Value << cu.fp8_outer_scales;
    out << YAML::Key << "fp8_fast_accum" << YAML::Value << cu.fp8_fast_accum;
    out << YAML::Key << "fp8_algo_candidates" << YAML::Value << cu.fp8_algo_candidates;
    out << YAML::Key << "fp8_split_k" << YAML::Value << cu.fp8_split_k;
    out << YAML::Key << "mma_gemm_max_rows" << YAML::Value << cu.mma_gemm_max_rows;
    out << YAML::Key << "pdl" << YAML::Value << cu.pdl;
    out << YAML::Key << "fuse_gemv_inputs" << YAML::Value << cu.fuse_gemv_inputs;
    out << YAML::Key << "fuse_mma_gemm_inputs" << YAML::Value << cu.fuse_mma_gemm_inputs;
    out << YAML::Key << "stage_gemv_input" << YAML::Value << cu.stage_gemv_input;
    out << YAML::Key << "gemv_row_segs" << YAML::Value << cu.gemv_row_segs;
    out << YAML::Key << "gemm_ksplit" << YAML::Value << cu.gemm_ksplit;
    out << YAML::Key << "fuse_attention_combine" << YAML::Value << cu.fuse_attention_combine;
    out << YAML::Key << "decode_heads_per_block" << YAML::Value << cu.decode_heads_per_block;
    out << YAML::Key << "tensor_core_attention" << YAML::Value << cu.tensor_core_attention;
    out << YAML::Key << "fp8_prefill_tensor_cores" << YAML::Value << cu.fp8_prefill_tensor_cores;
    out << YAML::Key << "staged_decode_attention" << YAML::Value << cu.staged_decode_attention;
    out << YAML::Key << "decode_min_chunk" << YAML::Value << cu.decode_min_chunk;
    out << YAML::Key << "sampling_blocks_per_row" << YAML::Value << cu.sampling_blocks_per_row;
    out << YAML::EndMap;
    out << YAML::EndMap;
    out << YAML::Key << "server" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "host" << YAML::Value << c.host;
    out << YAML::Key << "http_port" << YAML::Value << c.http_port;
    out << YAML::Key << "grpc_port" << YAML::Value << c.grpc_port;
    out << YAML::Key << "http_threads" << YAML::Value << c.http_threads;
    out << YAML::Key << "prepare_threads" << YAML::Value << c.prepare_threads;
    out << YAML::Key << "max_sequences_per_request" << YAML::Value << c.max_sequences_per_request;
    out << YAML::Key << "api_keys" << YAML::Value;
    list(c.api_keys, true);
    out << YAML::Key << "cors_allowed_origins" << YAML::Value;
    list(c.cors_allowed_origins, false);
    out << YAML::Key << "max_body_bytes" << YAML::Value << c.max_body_bytes;
    out << YAML::Key << "request_timeout_s" << YAML::Value << c.request_timeout_s;
    out << YAML::Key << "drain_timeout_s" << YAML::Value << c.drain_timeout_s;
    out << YAML::Key << "ready_max_stall_s" << YAML::Value << c.ready_max_stall_s;
    out << YAML::EndMap;
    out << YAML::Key << "logging" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "level" << YAML::Value << c.log_level;
    out << YAML::Key << "access_log" << YAML::Value << c.access_log;
    out << YAML::EndMap;
    out << YAML::EndMap;
    return std::string(out.c_str()) + "\n";
}

}  // namespace uniattn::server
