#include "uniattn/generation_config.h"

#include <cmath>
#include <sstream>

#include "uniattn/json_io.h"
#include "util/file.h"

namespace uniattn {

void SamplingDefaults::ApplyTo(GenerationRequest& r) const {
    if (temperature) r.temperature = *temperature;
    if (top_p) r.top_p = *top_p;
    if (top_k) r.top_k = *top_k;
    if (min_p) r.min_p = *min_p;
    if (repetition_penalty) r.repetition_penalty = *repetition_penalty;
}

void SamplingDefaults::Override(const SamplingDefaults& over) {
    if (over.temperature) temperature = over.temperature;
    if (over.top_p) top_p = over.top_p;
    if (over.top_k) top_k = over.top_k;
    if (over.min_p) min_p = over.min_p;
    if (over.repetition_penalty) repetition_penalty = over.repetition_penalty;
}

std::string SamplingDefaults::ToString() const {
    std::ostringstream s;
    auto put = [&](const char* key, const auto& v) {
        if (v) s << (s.tellp() > 0 ? " " : "") << key << "=" << *v;
    };
    put("temperature", temperature);
    put("top_p", top_p);
    put("top_k", top_k);
    put("min_p", min_p);
    put("repetition_penalty", repetition_penalty);
    return s.tellp() > 0 ? s.str() : "none";
}

StatusOr<GenerationConfig> GenerationConfig::FromJson(const std::string& text, const std::string& path) {
    using nlohmann::json;
    UA_ASSIGN_OR_RETURN(json root, ParseJsonFile(text, path));
    if (!root.is_object()) return InvalidArgument(path + ": top level must be a JSON object");
    GenerationConfig g;
    if (const json* v = JsonFind(root, "eos_token_id"); v && !v->is_null()) {
        const json list = v->is_array() ? *v : json::array({*v});
        for (const json& e : list) {
            const std::optional<int64_t> id = JsonInt64(e);
            if (!id || *id < 0 || *id > INT32_MAX) {
                return InvalidArgument(path + ": \"eos_token_id\" must be a token id or a list of them");
            }
            g.eos_token_ids.push_back(static_cast<int32_t>(*id));
        }
    }
    auto number = [&](const char* key, std::optional<float>& out) -> Status {
        const json* v = JsonFind(root, key);
        if (v == nullptr || v->is_null()) return Status::Ok();
        if (!v->is_number() || !std::isfinite(v->get<double>())) {
            return InvalidArgument(path + ": \"" + key + "\" must be a number");
        }
        out = v->get<float>();
        return Status::Ok();
    };
    UA_RETURN_IF_ERROR(number("temperature", g.sampling.temperature));
    UA_RETURN_IF_ERROR(number("top_p", g.sampling.top_p));
    UA_RETURN_IF_ERROR(number("min_p", g.sampling.min_p));
    UA_RETURN_IF_ERROR(number("repetition_penalty", g.sampling.repetition_penalty));
    if (const json* v = JsonFind(root, "top_k"); v && !v->is_null()) {
        const std::optional<int64_t> k = JsonInt64(*v);
        if (!k || *k < INT32_MIN || *k > INT32_MAX) return InvalidArgument(path + ": \"top_k\" must be an integer");
        g.sampling.top_k = static_cast<int>(*k);
    }
    // The ranges a request may use; a default a request could not ask for is a broken file.
    GenerationRequest probe;
    g.sampling.ApplyTo(probe);
    RequestLimits limits;
    limits.vocab_size = INT32_MAX;
    if (Status s = ValidateSampling(probe, limits); !s.ok()) return InvalidArgument(path + ": " + s.message());
    return g;
}

StatusOr<GenerationConfig> GenerationConfig::LoadDir(const std::string& dir) {
    const std::string path = dir + "/generation_config.json";
    if (!FileExists(path)) return GenerationConfig{};
    UA_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
    return FromJson(text, path);
}

}  // namespace uniattn
