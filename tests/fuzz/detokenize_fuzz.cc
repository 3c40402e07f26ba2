// libFuzzer target: the stories15M SentencePiece tokenizer's Decode and the streaming
// IncrementalDetokenizer on arbitrary id sequences (any int32, in range or not). Checks the detokenizer's
// contract: the concatenated pieces equal decoding the whole sequence.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "uniattn/model_config.h"
#include "uniattn/tokenizer.h"

namespace {

const uniattn::Tokenizer* Tok() {
    static std::unique_ptr<uniattn::Tokenizer> tok = [] {
        const char* env = std::getenv("UNIATTN_FUZZ_MODEL_DIR");
        const std::string dir = env && *env ? env : UNIATTN_SOURCE_DIR "/models/stories15M";
        uniattn::ModelConfig config;
        config.vocab_size = 32000;
        auto t = uniattn::Tokenizer::Load(dir, config);
        if (!t.ok()) {
            std::fprintf(stderr, "fuzz_detokenize: cannot load the tokenizer from %s: %s\n", dir.c_str(),
                         t.status().ToString().c_str());
            std::abort();
        }
        return std::move(*t);
    }();
    return tok.get();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const uniattn::Tokenizer* tok = Tok();
    if (size < 1) return 0;
    // Byte 0: how many ids are context (the prompt). Then 2-byte ids (mostly in the vocabulary, where
    // the interesting pieces are); an id whose top bit is set becomes a raw 4-byte int32 (out of range).
    const size_t n_context = data[0] % 8;
    std::vector<int32_t> ids;
    size_t i = 1;
    while (i + 2 <= size) {
        uint16_t v = static_cast<uint16_t>(data[i] | (data[i + 1] << 8));
        i += 2;
        if ((v & 0x8000) && i + 4 <= size) {
            int32_t raw;
            std::memcpy(&raw, data + i, 4);
            i += 4;
            ids.push_back(raw);
        } else {
            ids.push_back(static_cast<int32_t>(v % 32000));
        }
    }
    const std::string whole = tok->Decode(ids);
    for (int32_t id : ids) (void)tok->IdToPiece(id);

    const size_t nc = std::min(n_context, ids.size());
    std::vector<int32_t> context(ids.begin(), ids.begin() + nc);
    uniattn::IncrementalDetokenizer detok(tok, context);
    std::string streamed;
    for (size_t k = nc; k < ids.size(); ++k) streamed += detok.Push(ids[k]);
    streamed += detok.Flush();
    if (nc == 0 && streamed != whole) {
        std::fprintf(stderr, "streamed %zu bytes != decoded %zu bytes\n", streamed.size(), whole.size());
        std::abort();
    }
    return 0;
}
