// The SentencePiece tokenizer on the pinned default model (stories15M: the Llama-2 tokenizer), against
// ids produced by Debian's spm_encode, and the incremental detokenizer used for streaming.
#include "uniattn/tokenizer.h"

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/test_models.h"
#include "model/model.h"
#include "util/file.h"

namespace uniattn {
namespace {

// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF, no truncated sequences.
bool IsValidUtf8(const std::string& s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const size_t n = s.size();
    for (size_t i = 0; i < n;) {
        const unsigned char c = p[i];
        int len;
        uint32_t cp;
        if (c < 0x80) {
            ++i;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07;
        } else {
            return false;
        }
        if (i + len > n) return false;
        for (int k = 1; k < len; ++k) {
            if ((p[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return false;
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += len;
    }
    return true;
}

TEST(Utf8ValidatorTest, AcceptsAndRejects) {
    EXPECT_TRUE(IsValidUtf8("plain"));
    EXPECT_TRUE(IsValidUtf8("caf\xC3\xA9 \xE6\x97\xA5 \xF0\x9F\x98\x80"));
    EXPECT_FALSE(IsValidUtf8("\xF0\x9F\x98"));      // truncated emoji
    EXPECT_FALSE(IsValidUtf8("\x9F"));              // lone continuation byte
    EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong '/'
    EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate U+D800
    EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // U+110000
}

struct EncodeCase {
    const char* text;
    std::vector<int32_t> ids;  // without BOS
};

// Single-line cases: `printf '%s' TEXT | spm_encode --model=models/stories15M/tokenizer.model
// --output_format=id` (Debian sentencepiece 0.1.97).
const std::vector<EncodeCase>& SingleLineCases() {
    static const auto* cases = new std::vector<EncodeCase>{
        {"Once upon a time", {9038, 2501, 263, 931}},
        {"caf\u00e9 na\u00efve r\u00e9sum\u00e9", {274, 28059, 1055, 30085, 345, 6896, 398, 29948}},
        {"\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",  // 日本語のテキスト
         {29871, 30325, 30346, 30968, 30199, 30572, 30454, 30255, 30279}},
        {"\u00dcn\u00efc\u00f6d\u00e9 \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \u0420\u0443\u0441\u0441\u043a"
         "\u0438\u0439",
         {7189, 29876, 30085, 29883, 9289, 29948, 29871, 30311, 30142, 30142, 30183, 30133, 30136, 30173, 30216, 29006,
          2542}},
        // Emoji are not pieces: byte fallback, <0xF0> <0x9F> <0x98> <0x80> for U+1F600.
        {"Hello \U0001F600 world \U0001F389", {15043, 29871, 243, 162, 155, 131, 3186, 29871, 243, 162, 145, 140}},
        {"\U0001F999\U0001F9E0", {29871, 243, 162, 169, 156, 243, 162, 170, 163}},
        {"na\u00efve \u65e5\u672c \U0001F600\tend",
         {1055, 30085, 345, 29871, 30325, 30346, 29871, 243, 162, 155, 131, 12, 355}},
        {" leading space", {29871, 8236, 2913}},
        {"  two leading", {259, 1023, 8236}},
        {"a    b", {263, 1678, 289}},  // whitespace runs are kept: the Llama tokenizer does not collapse them
        {"x ", {921, 29871}},
        {"   ", {268}},
        {"tab\there", {4434, 12, 4150}},
        {"\t\ttwo tabs\t", {29871, 12, 12, 10184, 18859, 12}},
        {"Lily said, \"Wow!\" and smiled.", {365, 2354, 1497, 29892, 376, 29956, 340, 3850, 322, 25156, 29889}},
        {"", {}},
    };
    return *cases;
}

// spm_encode reads one sentence per line, so it cannot encode text that contains '\n'. These ids come
// from the same Debian libsentencepiece 0.1.97 through SentencePieceProcessor::Encode on the whole string
// (a ten-line program), which agrees with spm_encode on every single-line case above. The text after a
// newline gets no dummy-prefix space ("line" is 1220 here, "▁line" 1196), so these are not the
// concatenation of per-line spm_encode output.
const std::vector<EncodeCase>& MultiLineCases() {
    static const auto* cases = new std::vector<EncodeCase>{
        {"line one\nline two", {1196, 697, 13, 1220, 1023}},
        {"a\n\nb\n", {263, 13, 13, 29890, 13}},
        {"\n leading newline", {29871, 13, 8236, 25899}},
        {"mixed \t\n  tabs\t\tand\r\nCRLF",
         {12849, 29871, 12, 13, 29871, 18859, 12, 12, 392, 30004, 13, 29907, 2241, 29943}},
        {"The cat \U0001F408 sat.\n  Next line, indented.\n",
         {450, 6635, 29871, 243, 162, 147, 139, 3290, 29889, 13, 29871, 8084, 1196, 29892, 1399, 14927, 29889, 13}},
    };
    return *cases;
}

std::vector<EncodeCase> AllCases() {
    std::vector<EncodeCase> all = SingleLineCases();
    all.insert(all.end(), MultiLineCases().begin(), MultiLineCases().end());
    return all;
}

class TokenizerTest : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        const std::string dir = testutil::DefaultModelDir();
        if (!FileExists(dir + "/config.json") || !FileExists(dir + "/tokenizer.model")) return;
        auto config = Model::LoadConfig(dir);
        if (!config.ok()) return;
        auto tok = Tokenizer::Load(dir, *config);
        if (tok.ok()) tokenizer_ = std::move(tok).value().release();
    }
    static void TearDownTestSuite() {
        delete tokenizer_;
        tokenizer_ = nullptr;
    }
    void SetUp() override {
        ASSERT_NE(tokenizer_, nullptr) << testutil::DefaultModelDir() << ": " << testutil::kMissingDefaultModel;
    }
    const Tokenizer& tok() const { return *tokenizer_; }

    // Streams `ids` through an IncrementalDetokenizer one token at a time after `context`; checks every
    // piece is valid UTF-8 and returns the concatenation of the pieces and Flush().
    std::string Stream(const std::vector<int32_t>& context, const std::vector<int32_t>& ids) const {
        IncrementalDetokenizer detok(tokenizer_, context);
        std::string text;
        for (size_t i = 0; i < ids.size(); ++i) {
            const std::string piece = detok.Push(ids[i]);
            EXPECT_TRUE(IsValidUtf8(piece))
                << "piece after token #" << i << " (id " << ids[i] << ") is not valid UTF-8";
            text += piece;
        }
        const std::string tail = detok.Flush();
        EXPECT_TRUE(IsValidUtf8(tail)) << "Flush() is not valid UTF-8";
        return text + tail;
    }

    static Tokenizer* tokenizer_;
};

Tokenizer* TokenizerTest::tokenizer_ = nullptr;

TEST_F(TokenizerTest, SpecialIdsAndVocab) {
    EXPECT_EQ(tok().vocab_size(), 32000);
    EXPECT_EQ(tok().bos_id(), 1);
    EXPECT_EQ(tok().eos_id(), 2);
    EXPECT_TRUE(tok().add_bos());
    EXPECT_EQ(tok().IdToPiece(9038), "\u2581Once");
    EXPECT_EQ(tok().IdToPiece(243), "<0xF0>");
    EXPECT_EQ(tok().IdToPiece(-1), "");
    EXPECT_EQ(tok().IdToPiece(32000), "");
}

TEST_F(TokenizerTest, EncodeWithBos) {
    EXPECT_EQ(tok().Encode("Once upon a time", true), (std::vector<int32_t>{1, 9038, 2501, 263, 931}));
    EXPECT_EQ(tok().Encode("", true), (std::vector<int32_t>{1}));
}

TEST_F(TokenizerTest, EncodeMatchesSpmEncode) {
    for (const EncodeCase& c : AllCases()) {
        EXPECT_EQ(tok().Encode(c.text, false), c.ids) << "text: \"" << c.text << "\"";
    }
}

// Every case here round-trips exactly: the Llama tokenizer's normaliser is the identity (no NFKC, no
// whitespace collapsing, spm_decode agrees), the dummy-prefix space added by Encode is removed by Decode,
// and characters outside the vocabulary come back through byte fallback.
TEST_F(TokenizerTest, DecodeInvertsEncode) {
    for (const EncodeCase& c : AllCases()) {
        EXPECT_EQ(tok().Decode(c.ids), c.text) << "ids of \"" << c.text << "\"";
        EXPECT_EQ(tok().Decode(tok().Encode(c.text, false)), c.text);
        EXPECT_EQ(tok().Decode(tok().Encode(c.text, true)), c.text) << "BOS must decode to nothing";
    }
}

// Where decode(encode(s)) != s: U+2581 ("▁") is SentencePiece's own space marker, so it cannot survive a
// round trip and comes back as a space (spm_decode does the same). Control tokens decode to nothing.
TEST_F(TokenizerTest, RoundTripExceptions) {
    EXPECT_EQ(tok().Encode("a\u2581b", false), (std::vector<int32_t>{263, 289}));
    EXPECT_EQ(tok().Decode(tok().Encode("a\u2581b", false)), "a b");
    EXPECT_EQ(tok().Decode({1, 9038, 2, 2501}), "Once upon");
}

// Control and unknown pieces' text in the input becomes their ids (Hugging Face's default, which the chat
// path relies on); the text between them is encoded as it would be alone, dummy-prefix space included.
TEST_F(TokenizerTest, SpecialTokenTextBecomesItsId) {
    auto concat = [](std::vector<std::vector<int32_t>> parts) {
        std::vector<int32_t> all;
        for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
        return all;
    };
    EXPECT_EQ(tok().Encode("Once upon</s>a time", false),
              concat({tok().Encode("Once upon", false), {2}, tok().Encode("a time", false)}));
    EXPECT_EQ(tok().Encode("<s>Once</s>", true), (std::vector<int32_t>{1, 1, 9038, 2}));
    EXPECT_EQ(tok().Encode("x<unk>y", false), concat({tok().Encode("x", false), {0}, tok().Encode("y", false)}));
    // Not a special text: `printf "<s" | spm_encode --output_format=id` (which itself never splits specials:
    // "<s>Once</s>" is 529 29879 29958 26222 829 29879 29958 there).
    EXPECT_EQ(tok().Encode("<s", false), (std::vector<int32_t>{529, 29879}));
    EXPECT_EQ(tok().TokenId("</s>"), std::optional<int32_t>(2));
    EXPECT_EQ(tok().TokenId("<s>"), std::optional<int32_t>(1));
    EXPECT_EQ(tok().TokenId("Once"), std::nullopt);
    EXPECT_TRUE(tok().IsSpecial(1));
    EXPECT_TRUE(tok().IsSpecial(2));
    EXPECT_TRUE(tok().IsSpecial(0));  // <unk>
    EXPECT_FALSE(tok().IsSpecial(9038));
    EXPECT_EQ(tok().eos_ids(), std::vector<int32_t>{2});
}

// Decode skips special tokens by default. Kept, they read as their text and every ordinary piece keeps its
// space: only the text's very first space is dropped, so "<s>" is followed by " Once", as Hugging Face's Llama
// decoder (Replace ▁, Fuse, Strip one leading space) gives.
TEST_F(TokenizerTest, DecodeKeepsSpecialTokensWhenAsked) {
    EXPECT_EQ(tok().Decode({1, 9038, 2, 2501}), "Once upon");
    EXPECT_EQ(tok().Decode({1, 9038, 2, 2501}, /*skip_special_tokens=*/false), "<s> Once</s> upon");
    EXPECT_EQ(tok().Decode({9038, 2, 2501}, false), "Once</s> upon");
    EXPECT_EQ(tok().Decode(tok().Encode("Once upon</s>", false), false), "Once upon</s>");
}

TEST_F(TokenizerTest, TokenBytes) {
    EXPECT_EQ(tok().TokenBytes(9038), " Once");  // ▁Once
    EXPECT_EQ(tok().TokenBytes(243), "\xF0");    // <0xF0>
    EXPECT_EQ(tok().TokenBytes(2), "</s>");
    EXPECT_EQ(tok().TokenBytes(-1), "");
    EXPECT_EQ(tok().TokenBytes(32000), "");
}

TEST_F(TokenizerTest, IncrementalDetokenizerMatchesDecode) {
    for (const EncodeCase& c : AllCases()) {
        SCOPED_TRACE(std::string("text: \"") + c.text + "\"");
        EXPECT_EQ(Stream({}, c.ids), tok().Decode(c.ids));
        EXPECT_EQ(Stream({tok().bos_id()}, c.ids), tok().Decode(c.ids));
    }
}

// With a prompt as context only the continuation's text is emitted, spaces between words included.
TEST_F(TokenizerTest, IncrementalDetokenizerAfterPrompt) {
    const std::vector<int32_t> prompt = tok().Encode("Once upon a time", true);
    for (const EncodeCase& c : AllCases()) {
        SCOPED_TRACE(std::string("text: \"") + c.text + "\"");
        std::vector<int32_t> all = prompt;
        all.insert(all.end(), c.ids.begin(), c.ids.end());
        const std::string prompt_text = tok().Decode(prompt);
        const std::string full = tok().Decode(all);
        ASSERT_EQ(full.compare(0, prompt_text.size(), prompt_text), 0);
        EXPECT_EQ(Stream(prompt, c.ids), full.substr(prompt_text.size()));
    }
}

// An emoji in byte-fallback tokens is held back until its last byte arrives, then emitted whole.
TEST_F(TokenizerTest, IncrementalDetokenizerHoldsPartialCharacters) {
    const std::vector<int32_t> prompt = tok().Encode("Hi", true);
    IncrementalDetokenizer detok(&tok(), prompt);
    EXPECT_EQ(detok.Push(29871), " ");  // "▁"
    EXPECT_EQ(detok.Push(243), "");     // <0xF0>
    EXPECT_EQ(detok.Push(162), "");     // <0x9F>
    EXPECT_EQ(detok.Push(169), "");     // <0xA6>
    EXPECT_EQ(detok.Push(156), "\U0001F999");
    EXPECT_EQ(detok.Flush(), "");
}

// A stream that ends inside a character: Flush() returns what Decode gives (U+FFFD), still valid UTF-8.
TEST_F(TokenizerTest, IncrementalDetokenizerFlushesIncompleteTail) {
    const std::vector<int32_t> ids = {3186, 243, 162};
    EXPECT_EQ(Stream({}, ids), tok().Decode(ids));
    EXPECT_TRUE(IsValidUtf8(tok().Decode(ids)));
}

// Random mixes of word pieces and byte-fallback tokens (including invalid byte orders, as a sampling
// model can produce): the streamed text always equals Decode and every piece is valid UTF-8.
TEST_F(TokenizerTest, IncrementalDetokenizerRandomStreams) {
    testutil::Rng rng(7);
    const std::vector<int32_t> byte_ids = {243, 162, 155, 131, 169, 156, 198, 138, 230, 154, 174, 13, 12};
    for (int trial = 0; trial < 200; ++trial) {
        std::vector<int32_t> ids;
        const int n = 1 + rng.Int(24);
        for (int i = 0; i < n; ++i) {
            const int kind = rng.Int(4);
            if (kind == 0) {
                ids.push_back(3 + rng.Int(256));  // any byte token <0x00>..<0xFF>
            } else if (kind == 1) {
                ids.push_back(byte_ids[rng.Int(static_cast<int>(byte_ids.size()))]);
            } else {
                ids.push_back(259 + rng.Int(32000 - 259));
            }
        }
        SCOPED_TRACE("trial " + std::to_string(trial));
        EXPECT_EQ(Stream({}, ids), tok().Decode(ids));
    }
}

}  // namespace
}  // namespace uniattn
