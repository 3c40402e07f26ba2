// A tokenizer for fuzz targets that must not need model files: id = 3 + byte, ids 0..2 are <unk>, <s>, </s>.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "uniattn/tokenizer.h"

namespace uniattn::fuzz {

class ByteTokenizer final : public Tokenizer {
  public:
    std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override {
        std::vector<int32_t> ids;
        if (add_bos) ids.push_back(bos_id_);
        for (unsigned char c : text) ids.push_back(3 + c);
        return ids;
    }
    std::string Decode(const std::vector<int32_t>& ids) const override {
        std::string s;
        for (int32_t id : ids) {
            if (id >= 3 && id < 259) s += static_cast<char>(id - 3);
        }
        return s;
    }
    std::string IdToPiece(int32_t id) const override {
        if (id < 3 || id >= 259) return "<unk>";
        char buf[8];
        std::snprintf(buf, sizeof buf, "<0x%02X>", id - 3);
        return buf;
    }
    int vocab_size() const override { return 259; }
};

}  // namespace uniattn::fuzz
