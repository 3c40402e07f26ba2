// libFuzzer target: the server's OpenAI body -> GenerationRequest path (ParseOpenAiRequest, which parses
// the JSON, validates every field, renders chat messages and tokenizes), plus /tokenize and /detokenize.
// Tokenizer-free: a byte tokenizer (id = 3 + byte; tests/common/byte_tokenizer.h) stands in for
// SentencePiece, so the fuzzer needs no model files. Byte 0 of the input picks the endpoint, chat template
// and context length.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "server/openai_request.h"
#include "tests/common/byte_tokenizer.h"

using uniattn::testutil::ByteTokenizer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace uniattn::server;
    static const ByteTokenizer tok;
    if (size < 1) return 0;
    const uint8_t sel = data[0];
    std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);

    static const ChatTemplate kTemplates[] = {ChatTemplate::kPlain,  ChatTemplate::kLlama2,  ChatTemplate::kLlama3,
                                              ChatTemplate::kChatml, ChatTemplate::kMistral, ChatTemplate::kNone};
    ServedModel model;
    model.model_name = "m";
    model.tokenizer = &tok;
    model.limits.max_model_len = (sel & 0x40) ? 4096 : 64;
    model.limits.vocab_size = tok.vocab_size();
    model.chat_template = kTemplates[(sel >> 1) % 6];

    switch (sel >> 7) {
        case 0: {
            auto r = ParseOpenAiRequest((sel & 1) ? Endpoint::kChatCompletions : Endpoint::kCompletions, body, model);
            if (r.ok()) {
                const OpenAiRequest& req = r.value();
                // Accepted requests must be within what the engine is promised.
                if (req.prompts.empty()) std::abort();
                for (const auto& p : req.prompts) {
                    if (static_cast<int>(p.size()) > model.limits.max_model_len) std::abort();
                    for (int32_t id : p) {
                        if (id < 0 || id >= model.limits.vocab_size) std::abort();
                    }
                }
                if (req.params.n < 1) std::abort();
                (void)req.num_choices();
            } else {
                const ApiError& e = r.error();
                if (e.http_status < 400 || e.http_status >= 600) std::abort();
            }
            break;
        }
        default: {
            if (sel & 1) {
                (void)HandleDetokenize(body, model);
            } else {
                (void)HandleTokenize(body, model);
            }
            break;
        }
    }
    return 0;
}
