// libFuzzer target: uniattn::ParseJson (the engine's own JSON reader) and a Dump round trip.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "uniattn/json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    auto parsed = uniattn::ParseJson(text, "fuzz");
    if (!parsed.ok()) return 0;
    const uniattn::Json& doc = *parsed;
    // What it writes it must read back, to the same text.
    const std::string dumped = doc.Dump();
    auto again = uniattn::ParseJson(dumped, "fuzz (dumped)");
    if (!again.ok() || again->Dump() != dumped) std::abort();
    (void)doc.DumpPretty();
    if (doc.is_number()) {
        (void)doc.number_value();
        if (doc.is_integer()) (void)doc.int_value();
    }
    for (const auto& [key, value] : doc.members()) {
        if (value.is_number()) {
            (void)value.number_value();
            if (value.is_integer()) (void)value.int_value();
        }
    }
    return 0;
}
