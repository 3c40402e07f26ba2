// libFuzzer target: uniattn::ModelConfig::FromJson (config.json) and what a valid config derives.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "uniattn/json_io.h"
#include "uniattn/model_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string text(reinterpret_cast<const char*>(data), size);
    auto config = uniattn::ModelConfig::FromJson(text, "fuzz/config.json");
    if (!config.ok()) return 0;
    const uniattn::ModelConfig& c = *config;
    // An accepted config must be usable: one kind per layer, anchors inside the model.
    if (static_cast<int>(c.layer_kinds.size()) != c.num_layers) std::abort();
    for (int l = 0; l < c.num_layers; ++l) {
        (void)c.HasKeys(l);
        const int a = c.anchor_of.at(l);
        if (a < -1 || a >= c.num_layers) std::abort();
    }
    if (c.num_kv_heads <= 0) std::abort();
    (void)c.num_rep();
    (void)c.num_reuse_layers();
    (void)c.KvBytesPerToken(2);
    (void)c.DenseKvBytesPerToken(4);
    // Round trip: its own JSON parses to the same config.
    auto again = uniattn::ModelConfig::FromJson(uniattn::DumpJson(c.ToJson()), "fuzz/config.json (dumped)");
    if (!again.ok() || uniattn::DumpJson(again->ToJson()) != uniattn::DumpJson(c.ToJson())) std::abort();
    return 0;
}
