// A byte-level tokenizer for tests and fuzz targets that must not need model files: ids 0 <unk>, 1 <s>,
// 2 </s>, 3 + byte. Pieces read like SentencePiece's: printable bytes as themselves, space as U+2581,
// other bytes as <0xXX>.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "uniattn/tokenizer.h"

namespace uniattn::testutil {

class ByteTokenizer final : public Tokenizer {
  public:
    ByteTokenizer() {
        bos_id_ = 1;
        eos_id_ = 2;
        add_bos_ = true;
    }
    std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override {
        std::vector<int32_t> ids;
        if (add_bos) ids.push_back(bos_id_);
        for (unsigned char c : text) ids.push_back(3 + c);
        return ids;
    }
    using Tokenizer::Decode;
    std::string Decode(const std::vector<int32_t>& ids, bool /*skip_special_tokens*/) const override {
        std::string s;
        for (int32_t id : ids) {
            if (id >= 3 && id < 259) s += static_cast<char>(id - 3);
        }
        return s;
    }
    std::string IdToPiece(int32_t id) const override {
        if (id == 0) return "<unk>";
        if (id == 1) return "<s>";
        if (id == 2) return "</s>";
        const int b = id - 3;
        if (b == ' ') return "\xE2\x96\x81";
        if (b >= 32 && b < 127) return std::string(1, static_cast<char>(b));
        char buf[8];
        std::snprintf(buf, sizeof buf, "<0x%02X>", b);
        return buf;
    }
    int vocab_size() const override { return 259; }
    int max_token_bytes() const override { return 1; }
};

}  // namespace uniattn::testutil
