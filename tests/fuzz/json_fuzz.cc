// libFuzzer target: uniattn::ParseJsonBounded (uniattn/json_io.h: nlohmann-json with the depth bound and
// error mapping the engine's files and the server's bodies share) and a DumpJson round trip.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "uniattn/json_io.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    nlohmann::json doc;
    if (auto error = uniattn::ParseJsonBounded(text, uniattn::kMaxJsonFileDepth, doc)) {
        if (error->detail.empty() || !doc.is_null()) std::abort();
        return 0;
    }
    // What it writes it must read back, to the same value and the same text.
    const std::string dumped = uniattn::DumpJson(doc);
    nlohmann::json again;
    if (uniattn::ParseJsonBounded(dumped, uniattn::kMaxJsonFileDepth, again) || again != doc ||
        uniattn::DumpJson(again) != dumped) {
        std::abort();
    }
    (void)uniattn::DumpJson(doc, 2);
    // The engine's file reader on the same text agrees.
    if (!uniattn::ParseJsonFile(text, "fuzz").ok()) std::abort();
    for (const auto& [key, value] : doc.items()) {
        if (value.is_number()) (void)uniattn::JsonInt64(value);
    }
    return 0;
}
