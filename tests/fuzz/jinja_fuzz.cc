// libFuzzer target: the Jinja chat-template renderer (server/jinja). The input is template text; it is
// parsed and, when it parses, rendered with a small conversation under tight limits. Every outcome must be
// a value or an Error (never a crash, a hang or unbounded memory), and an Error must carry a message.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "server/jinja/jinja.h"

namespace {

const uniattn::jinja::Value& Context() {
    static const uniattn::jinja::Value context = uniattn::jinja::Value::FromJson(nlohmann::ordered_json::parse(R"({
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi \"there\" 😀\n"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call12345", "type": "function", "function": {"name": "f", "arguments": {"x": 1.5, "y": [true, null]}}}]},
            {"role": "tool", "tool_call_id": "call12345", "content": "42"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>", "enable_thinking": false})"));
    return context;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view source(reinterpret_cast<const char*>(data), size);
    uniattn::jinja::Error error;
    auto tmpl = uniattn::jinja::Template::Parse(source, &error);
    if (!tmpl) {
        if (error.message.empty()) std::abort();
        return 0;
    }
    uniattn::jinja::RenderOptions options;
    options.limits.max_output_bytes = 1 << 16;
    options.limits.max_iterations = 20000;
    options.limits.max_call_depth = 32;
    options.now = [] {
        std::tm tm{};
        tm.tm_year = 124;
        tm.tm_mday = 1;
        return tm;
    };
    std::string out;
    if (!tmpl->Render(Context(), options, &out, &error)) {
        if (error.message.empty() && error.kind != uniattn::jinja::Error::Kind::kRaised) std::abort();
        return 0;
    }
    if (static_cast<int64_t>(out.size()) > options.limits.max_output_bytes) std::abort();
    return 0;
}
