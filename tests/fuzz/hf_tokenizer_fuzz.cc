// libFuzzer target: the tokenizer.json encoder on arbitrary bytes, with the Llama-3.1 tokenizer
// (models/tokenizers/llama-3.1, scripts/fetch_testdata.sh; UNIATTN_FUZZ_TOKENIZER_DIR overrides). Its
// byte-level BPE has no normalizer, so every input comes back: Decode(Encode(x), keep specials) equals x with
// invalid UTF-8 replaced by U+FFFD, and the streaming detokenizer's pieces add up to Decode.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "uniattn/model_config.h"
#include "uniattn/tokenizer.h"

namespace {

const uniattn::Tokenizer* Tok() {
    static std::unique_ptr<uniattn::Tokenizer> tok = [] {
        const char* env = std::getenv("UNIATTN_FUZZ_TOKENIZER_DIR");
        const std::string dir = env && *env ? env : UNIATTN_SOURCE_DIR "/models/tokenizers/llama-3.1";
        auto t = uniattn::Tokenizer::Load(dir, uniattn::ModelConfig{});
        if (!t.ok()) {
            std::fprintf(stderr, "fuzz_hf_tokenizer: cannot load the tokenizer from %s: %s\n", dir.c_str(),
                         t.status().ToString().c_str());
            std::abort();
        }
        return std::move(t).value();
    }();
    return tok.get();
}

}  // namespace

// Loading the real tokenizer takes seconds under the sanitizers: done before the first input, outside
// libFuzzer's per-input timeout.
extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
    (void)Tok();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const uniattn::Tokenizer* tok = Tok();
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    const std::vector<int32_t> ids = tok->Encode(text, /*add_special_tokens=*/false);
    const std::string expected = uniattn::ReplaceInvalidUtf8(text);
    const std::string back = tok->Decode(ids, /*skip_special_tokens=*/false);
    if (back != expected) {
        std::fprintf(stderr, "decode(encode(x)) != x: %zu bytes back, %zu expected\n", back.size(), expected.size());
        std::abort();
    }
    std::string bytes;
    for (int32_t id : ids) bytes += tok->TokenBytes(id);
    if (bytes != expected) {
        std::fprintf(stderr, "the tokens' bytes do not add up to the text\n");
        std::abort();
    }
    uniattn::IncrementalDetokenizer detok(tok, {});
    std::string streamed;
    for (int32_t id : ids) streamed += detok.Push(id);
    streamed += detok.Flush();
    if (streamed != tok->Decode(ids)) {
        std::fprintf(stderr, "streamed text != Decode\n");
        std::abort();
    }
    return 0;
}
