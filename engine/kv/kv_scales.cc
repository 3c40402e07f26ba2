#include "kv/kv_scales.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <string>

#include "kv/kv_cache.h"
#include "model/forward.h"
#include "model/model.h"

namespace uniattn {

KvScales UniformKvScales(const ModelConfig& config, float k, float v) {
    KvScales s;
    s.k.resize(config.num_layers);
    s.v.resize(config.num_layers);
    for (int l = 0; l < config.num_layers; ++l) {
        if (config.HasKeys(l)) s.k[l].assign(config.num_kv_heads, k);
        s.v[l].assign(config.num_kv_heads, v);
    }
    return s;
}

Status CheckKvScales(const ModelConfig& config, const KvScales& scales) {
    const auto n = static_cast<size_t>(config.num_layers);
    if (scales.k.size() != n || scales.v.size() != n) {
        return InvalidArgument("KV scales cover " + std::to_string(scales.k.size()) + " (K) and " +
                               std::to_string(scales.v.size()) + " (V) layers; the model has " + std::to_string(n));
    }
    auto check = [&](const std::vector<float>& heads, int layer, const char* plane, size_t want) -> Status {
        const std::string where = std::string(plane) + " scales of layer " + std::to_string(layer);
        if (heads.size() != want) {
            return InvalidArgument(where + ": " + std::to_string(heads.size()) + " values, want " +
                                   std::to_string(want) + (want == 0 ? " (a reuse layer has no K plane)" : ""));
        }
        for (size_t h = 0; h < heads.size(); ++h) {
            if (!std::isfinite(heads[h]) || heads[h] <= 0.0f) {
                return InvalidArgument(where + ", head " + std::to_string(h) + ": " + std::to_string(heads[h]) +
                                       " is not a finite positive scale");
            }
        }
        return Status::Ok();
    };
    const auto heads = static_cast<size_t>(config.num_kv_heads);
    for (int l = 0; l < config.num_layers; ++l) {
        UA_RETURN_IF_ERROR(check(scales.k[l], l, "K", config.HasKeys(l) ? heads : 0));
        UA_RETURN_IF_ERROR(check(scales.v[l], l, "V", heads));
    }
    return Status::Ok();
}

namespace {

constexpr int kCalibrationTokens = 256;
constexpr size_t kMaxTextSequences = 4;
constexpr int kRandomSequences = 2;
constexpr uint64_t kRandomSeed = 0x6B76'6361'6C69'6272ULL;

// Plain prose on everyday topics with numbers and punctuation, so that the scales see the K/V of ordinary
// text rather than of random ids. Changing it changes every calibrated scale.
constexpr char kCalibrationText[] =
    "Most mornings begin in the kitchen. The kettle takes about 3 minutes to boil, which is just long "
    "enough to slice two pieces of bread, find the butter and wonder, again, why the jar of jam is always "
    "at the back of the shelf. Breakfast is simple: toast, an apple, and a cup of tea with a little milk. "
    "On Saturdays there are pancakes, made from 200 grams of flour, 2 eggs and 300 millilitres of milk; "
    "the first one is always a little burnt.\n\n"
    "The bus to the city leaves at 7:45 from the corner of Elm Street and Park Road. It is usually late "
    "by five or ten minutes, so people wait under the shelter, read the news on their phones, and "
    "complain politely about the weather. In winter the temperature can fall to -5 degrees, and in July "
    "it sometimes climbs above 30. \"Bring an umbrella,\" my grandmother used to say, \"even when the sky is "
    "blue.\"\n\n"
    "At the market, prices change with the seasons. Strawberries cost $4.50 a box in June but almost "
    "twice as much in December. A loaf of bread is $3, a dozen eggs about $5, and a bunch of flowers from "
    "the stall near the fountain is worth every cent. The woman who sells cheese knows every customer by "
    "name, and she always asks about their children, their dogs, or their gardens.\n\n"
    "Gardening teaches patience. Tomatoes planted in April will not ripen until August, and the beans "
    "need a tall frame to climb. Last year the garden produced 12 kilograms of potatoes, 40 carrots and "
    "more zucchini than anyone could eat. Neighbours received bags of vegetables whether they wanted them "
    "or not.\n\n"
    "Evenings are for reading, cooking and long walks. The path along the river is 6 kilometres long; at "
    "an easy pace the walk takes a little over an hour. Ducks gather near the old bridge, which was built "
    "in 1887 and repaired in 1952. Children throw bread to them, although a sign asks them not to.\n\n"
    "Health, people say, depends on small habits: sleeping 7 or 8 hours, drinking enough water, and "
    "walking instead of driving when the distance is short. A doctor once explained that a 30-minute "
    "walk, five days a week, does more good than an expensive gym membership that is never used.\n\n"
    "On Sunday the family calls, one by one. Someone has a new job; someone else is learning to play the "
    "piano; the youngest has lost a tooth. The conversations are short, cheerful and full of questions. "
    "Then the week starts again, and the kettle is switched on at 6:30.";

// SplitMix64: a fixed stream on every platform (<random>'s distributions are not).
uint64_t SplitMix64(uint64_t& state) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// Folds the first `num_tokens` positions of a plane (slots 0.., blocks in order) into per-head maxima of |x|.
Status AccumulateAmax(Backend* backend, const KvPlane& plane, int num_tokens, int layer, const char* name,
                      std::vector<float>& amax) {
    const int64_t n = static_cast<int64_t>(num_tokens) * plane.num_kv_heads * plane.head_dim;
    std::vector<char> raw(static_cast<size_t>(n) * DTypeBytes(plane.dtype));
    std::vector<float> values(static_cast<size_t>(n));
    backend->CopyToHost(raw.data(), plane.base, raw.size());
    ConvertDType(raw.data(), plane.dtype, values.data(), DType::kF32, n);
    for (int64_t i = 0; i < n; ++i) {
        const float a = std::abs(values[i]);
        const int h = static_cast<int>(i / plane.head_dim % plane.num_kv_heads);
        if (!std::isfinite(a)) {
            return FailedPrecondition(std::string("KV scale calibration: a ") + name + " value of layer " +
                                      std::to_string(layer) + ", head " + std::to_string(h) + " is not finite");
        }
        amax[h] = std::max(amax[h], a);
    }
    return Status::Ok();
}

}  // namespace

StatusOr<KvScales> CalibrateKvScales(const Model& model, Backend* backend,
                                     const std::vector<std::vector<int32_t>>& sequences) {
    const ModelConfig& c = model.config;
    int max_len = 0;
    for (size_t s = 0; s < sequences.size(); ++s) {
        const int len = static_cast<int>(sequences[s].size());
        if (len > c.max_position_embeddings) {
            return InvalidArgument("KV scale calibration: sequence " + std::to_string(s) + " has " +
                                   std::to_string(len) + " tokens, more than max_position_embeddings " +
                                   std::to_string(c.max_position_embeddings));
        }
        for (int32_t t : sequences[s]) {
            if (t < 0 || t >= c.vocab_size) {
                return InvalidArgument("KV scale calibration: token id " + std::to_string(t) +
                                       " is outside the vocabulary");
            }
        }
        max_len = std::max(max_len, len);
    }
    if (max_len == 0) return InvalidArgument("KV scale calibration needs at least one token");

    // One sequence at a time through the same blocks, in order: position p is slot p.
    constexpr int kBlockSize = 16;
    const int num_blocks = (max_len + kBlockSize - 1) / kBlockSize;
    std::vector<int32_t> blocks(num_blocks);
    std::iota(blocks.begin(), blocks.end(), 0);
    UA_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> kv, KvCache::Create(backend, c, kBlockSize, num_blocks));
    ModelRunner runner(&model, backend);
    runner.SetUseGraphs(false);

    const auto heads = static_cast<size_t>(c.num_kv_heads);
    std::vector<std::vector<float>> amax_k(c.num_layers), amax_v(c.num_layers, std::vector<float>(heads, 0.0f));
    for (int l = 0; l < c.num_layers; ++l) {
        if (c.HasKeys(l)) amax_k[l].assign(heads, 0.0f);
    }
    for (const std::vector<int32_t>& seq : sequences) {
        if (seq.empty()) continue;
        ForwardInput in;
        in.AddSequence(seq, 0, blocks, kBlockSize, false);
        in.Finish();
        UA_RETURN_IF_ERROR(runner.Forward(in, *kv, nullptr));
        backend->Synchronize();
        const int n = static_cast<int>(seq.size());
        for (int l = 0; l < c.num_layers; ++l) {
            if (c.HasKeys(l)) UA_RETURN_IF_ERROR(AccumulateAmax(backend, kv->K(l), n, l, "K", amax_k[l]));
            UA_RETURN_IF_ERROR(AccumulateAmax(backend, kv->V(l), n, l, "V", amax_v[l]));
        }
    }

    constexpr float kDivisor = kFp8E4M3Max / kKvScaleHeadroom;
    auto to_scales = [&](std::vector<std::vector<float>>& amax) {
        for (std::vector<float>& layer : amax) {
            for (float& a : layer) a = a > 0.0f ? a / kDivisor : 1.0f;
        }
    };
    KvScales scales;
    scales.k = std::move(amax_k);
    scales.v = std::move(amax_v);
    to_scales(scales.k);
    to_scales(scales.v);
    return scales;
}

std::vector<std::vector<int32_t>> KvCalibrationSequences(const Model& model) {
    const ModelConfig& c = model.config;
    const int len = std::min(kCalibrationTokens, c.max_position_embeddings);
    std::vector<std::vector<int32_t>> out;
    if (len <= 0 || c.vocab_size <= 0) return out;
    std::vector<int32_t> ids;
    if (model.tokenizer != nullptr) ids = model.tokenizer->Encode(kCalibrationText, model.tokenizer->add_bos());
    if (!ids.empty()) {
        for (size_t at = 0; at < ids.size() && out.size() < kMaxTextSequences; at += len) {
            out.emplace_back(ids.begin() + at, ids.begin() + std::min(ids.size(), at + len));
        }
        return out;
    }
    uint64_t state = kRandomSeed;
    for (int s = 0; s < kRandomSequences; ++s) {
        std::vector<int32_t>& seq = out.emplace_back(len);
        for (int32_t& t : seq) t = static_cast<int32_t>(SplitMix64(state) % static_cast<uint64_t>(c.vocab_size));
    }
    return out;
}

}  // namespace uniattn
