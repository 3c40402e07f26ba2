// The tokenizer.json tokenizer (engine/model/hf_tokenizer.cc) against three references:
//   - llama.cpp's golden tokenizations (models/llama.cpp/vocab/ggml-vocab-{llama-bpe,qwen2}.gguf.{inp,out},
//     written by its tests/test-tokenizer-0 generator from the Hugging Face tokenizers, without BOS), with the
//     real Llama-3.1 and Qwen3 tokenizer files (models/tokenizers/, scripts/fetch_testdata.sh);
//   - Hugging Face's JavaScript tokenizers (@huggingface/tokenizers, tests/integration/package.json) run by node
//     on a corpus written here, encoding and decoding, for those two and for a small Mistral/TinyLlama-style
//     Metaspace + byte-fallback tokenizer.json written by the test;
//   - the round trip decode(encode(x)) == x and the streaming detokenizer against Decode.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "engine/test_models.h"
#include "uniattn/json_io.h"
#include "uniattn/tokenizer.h"
#include "util/file.h"

#ifdef UNIATTN_HAVE_HF_TOKENIZER

namespace uniattn {
namespace {

using nlohmann::json;

const std::string kSource = UNIATTN_SOURCE_DIR;
const std::string kLlamaDir = kSource + "/models/tokenizers/llama-3.1";
const std::string kQwenDir = kSource + "/models/tokenizers/qwen3";
const std::string kVocabDir = kSource + "/models/llama.cpp/vocab";
constexpr char kMissingTestData[] = "test data missing: run scripts/fetch_testdata.sh";

std::unique_ptr<Tokenizer> LoadOrNull(const std::string& dir) {
    auto tok = Tokenizer::Load(dir, ModelConfig{});
    EXPECT_TRUE(tok.ok()) << tok.status().ToString();
    return tok.ok() ? std::move(tok).value() : nullptr;
}

std::string Show(const std::string& s) {
    std::string out;
    for (unsigned char c : s) {
        if (c == '\n') {
            out += "\\n";
        } else if (c == '\r') {
            out += "\\r";
        } else if (c == '\t') {
            out += "\\t";
        } else {
            out += static_cast<char>(c);
        }
    }
    return out.size() > 120 ? out.substr(0, 120) + "..." : out;
}

// ---------------------------------------------------------------------------------------------------------------
// llama.cpp's golden files: inputs separated by "\n__ggml_vocab_test__\n" (one after the last input too), and
// one line of space-separated ids per input.

struct GoldenCase {
    std::string text;
    std::vector<int32_t> ids;
};

std::vector<GoldenCase> ReadGolden(const std::string& stem) {
    auto inp = ReadFile(stem + ".inp");
    auto outp = ReadFile(stem + ".out");
    if (!inp.ok() || !outp.ok()) return {};
    static constexpr std::string_view kSep = "\n__ggml_vocab_test__\n";
    std::vector<std::string> texts;
    const std::string& all = inp.value();
    for (size_t pos = 0; pos < all.size();) {
        const size_t at = all.find(kSep, pos);
        if (at == std::string::npos) break;
        texts.push_back(all.substr(pos, at - pos));
        pos = at + kSep.size();
    }
    std::vector<std::vector<int32_t>> ids;
    std::istringstream lines(outp.value());
    for (std::string line; std::getline(lines, line);) {
        std::istringstream words(line);
        std::vector<int32_t> v;
        for (long long id; words >> id;) v.push_back(static_cast<int32_t>(id));
        ids.push_back(std::move(v));
    }
    std::vector<GoldenCase> cases;
    EXPECT_EQ(texts.size(), ids.size()) << stem;
    for (size_t i = 0; i < std::min(texts.size(), ids.size()); ++i) cases.push_back({texts[i], ids[i]});
    return cases;
}

void ExpectGolden(const std::string& tokenizer_dir, const std::string& stem) {
    if (!FileExists(tokenizer_dir + "/tokenizer.json") || !FileExists(stem + ".inp")) GTEST_SKIP() << kMissingTestData;
    auto tok = LoadOrNull(tokenizer_dir);
    ASSERT_NE(tok, nullptr);
    const std::vector<GoldenCase> cases = ReadGolden(stem);
    ASSERT_GT(cases.size(), 40u);
    for (const GoldenCase& c : cases) {
        EXPECT_EQ(tok->Encode(c.text, false), c.ids) << "text: \"" << Show(c.text) << "\"";
        // The golden ids decode back to the input (these tokenizers keep every byte; Qwen's NFC leaves these
        // inputs as they are).
        EXPECT_EQ(tok->Decode(c.ids, false), c.text) << "text: \"" << Show(c.text) << "\"";
    }
}

TEST(HfTokenizerGoldenTest, Llama3MatchesLlamaCppLlamaBpe) {
    ExpectGolden(kLlamaDir, kVocabDir + "/ggml-vocab-llama-bpe.gguf");
}

TEST(HfTokenizerGoldenTest, Qwen3MatchesLlamaCppQwen2) { ExpectGolden(kQwenDir, kVocabDir + "/ggml-vocab-qwen2.gguf"); }

// ---------------------------------------------------------------------------------------------------------------
// The node reference.

struct Reference {
    std::vector<std::vector<int32_t>> plain, special;
    std::vector<std::string> decoded, decoded_special;
};

// Runs tests/engine/hf_tokenize.mjs; nullopt (with the reason in *why) when node or the package is missing.
std::optional<Reference> RunReference(const std::string& tokenizer_dir, const std::vector<std::string>& texts,
                                      const std::vector<std::vector<int32_t>>& to_decode, std::string* why) {
    const std::string integration = kSource + "/tests/integration";
    if (!FileExists(integration + "/node_modules/@huggingface/tokenizers/package.json")) {
        *why = "@huggingface/tokenizers is not installed: run tests/integration/install.sh (npm ci)";
        return std::nullopt;
    }
    if (std::system("node --version >/dev/null 2>&1") != 0) {
        *why = "node is not installed";
        return std::nullopt;
    }
    testutil::TempDir tmp;
    const std::string request = tmp.path() + "/request.json";
    json req = {{"texts", texts}, {"decode", to_decode}};
    EXPECT_TRUE(WriteFile(request, DumpJson(req)).ok());
    const std::string cmd = "node '" + kSource + "/tests/engine/hf_tokenize.mjs' '" + integration + "' '" +
                            tokenizer_dir + "' '" + request + "'";
    FILE* pipe = popen(cmd.c_str(), "r");
    if (pipe == nullptr) {
        *why = "popen failed";
        return std::nullopt;
    }
    std::string out;
    char buf[65536];
    for (size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) out.append(buf, n);
    const int rc = pclose(pipe);
    EXPECT_EQ(rc, 0) << cmd;
    json j;
    const auto error = ParseJsonBounded(out, 64, j);
    EXPECT_FALSE(error.has_value()) << "node printed: " << out.substr(0, 400);
    if (rc != 0 || error) {
        *why = "the reference failed";
        return std::nullopt;
    }
    Reference r;
    r.plain = j["plain"].get<std::vector<std::vector<int32_t>>>();
    r.special = j["special"].get<std::vector<std::vector<int32_t>>>();
    r.decoded = j["decoded"].get<std::vector<std::string>>();
    r.decoded_special = j["decoded_special"].get<std::vector<std::string>>();
    return r;
}

std::string LongText() {
    std::string s;
    for (int i = 0; i < 40; ++i) {
        s += "Paragraph " + std::to_string(i) +
             ": The quick brown fox jumps over the lazy dog; it's 3.14159 o'clock, isn't it?\n"
             "\tIndented line with  double  spaces, URL https://example.com/a?b=c&d=42 and code `x += 1;`\r\n";
    }
    return s;
}

// Text with special-token text in it is marked, so that the round trip keeps specials.
struct CorpusCase {
    std::string text;
    bool has_special = false;
};

std::vector<CorpusCase> Corpus(const std::vector<std::string>& specials) {
    std::vector<CorpusCase> c = {
        {"Hello world"},
        {""},
        {" "},
        {"   leading spaces"},
        {"trailing spaces   "},
        {"a    b\t\tc \t d"},
        {"tabs\tand\ttabs\t"},
        {"line one\r\nline two\r\n\r\nline four\n\n\n"},
        {"I'M here, we'Ll see; THEY'RE fine, it's OK, we'VE done, he'D go, I'm"},
        {"1234567 89 0.5 3,141,592 1e10 007"},
        {"emoji \U0001F600\U0001F389 family \U0001F468\u200D\U0001F469\u200D\U0001F467 flag \U0001F1EF\U0001F1F5 "
         "llama \U0001F999"},
        {"\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3002\u4e2d\u6587\u5b57\u7b26\uff0c\ud55c\uad6d\uc5b4 "
         "\u0440\u0443\u0441\u0441\u043a\u0438\u0439 \u0627\u0644\u0639\u0631\u0628\u064a\u0629"},
        {"caf\u00e9 na\u00efve \u00c5ngstr\u00f6m"},
        {"    def f(x):\n        return x ** 2  # comment\n"},
        {"\u00a0non-breaking\u3000ideographic\u2003em space"},
        {"mixed CASE Words AND acronyms: NASA, HTTP/2, x86_64"},
        {"!!!??? ... --- ___ *** ((( )))"},
        {"\xE2\x96\x81 lower one eighth block and \xC4\xA0 G-dot"},
        {LongText()},
    };
    for (const std::string& s : specials) {
        c.push_back({s + "user\nHi there" + s + "\n", true});
        c.push_back({"before" + s + "after " + s + s + " end", true});
    }
    return c;
}

void ExpectMatchesReference(const std::string& dir, const std::vector<CorpusCase>& corpus,
                            const std::map<std::string, std::string>& normalized = {}) {
    auto tok = LoadOrNull(dir);
    ASSERT_NE(tok, nullptr);
    std::vector<std::string> texts;
    std::vector<std::vector<int32_t>> ours_plain, ours_special;
    for (const CorpusCase& c : corpus) {
        texts.push_back(c.text);
        ours_plain.push_back(tok->Encode(c.text, false));
        ours_special.push_back(tok->Encode(c.text, true));
    }
    std::string why;
    const std::optional<Reference> ref = RunReference(dir, texts, ours_special, &why);
    if (!ref) GTEST_SKIP() << "no node reference: " << why;
    ASSERT_EQ(ref->plain.size(), texts.size());
    for (size_t i = 0; i < texts.size(); ++i) {
        SCOPED_TRACE("text: \"" + Show(texts[i]) + "\"");
        EXPECT_EQ(ours_plain[i], ref->plain[i]) << "add_special_tokens=false";
        EXPECT_EQ(ours_special[i], ref->special[i]) << "add_special_tokens=true";
        EXPECT_EQ(tok->Decode(ours_special[i]), ref->decoded[i]) << "skip_special_tokens=true";
        EXPECT_EQ(tok->Decode(ours_special[i], false), ref->decoded_special[i]) << "skip_special_tokens=false";
        // Round trip: the text comes back (its normalized form where the normalizer changes it).
        const auto n = normalized.find(texts[i]);
        const std::string expected = n == normalized.end() ? texts[i] : n->second;
        EXPECT_EQ(tok->Decode(ours_plain[i], /*skip_special_tokens=*/!corpus[i].has_special), expected);
    }
}

TEST(HfTokenizerReferenceTest, Llama3MatchesTokenizersJs) {
    if (!FileExists(kLlamaDir + "/tokenizer.json")) GTEST_SKIP() << kMissingTestData;
    ExpectMatchesReference(kLlamaDir, Corpus({"<|eot_id|>", "<|start_header_id|>", "<|begin_of_text|>"}));
}

TEST(HfTokenizerReferenceTest, Qwen3MatchesTokenizersJs) {
    if (!FileExists(kQwenDir + "/tokenizer.json")) GTEST_SKIP() << kMissingTestData;
    std::vector<CorpusCase> corpus = Corpus({"<|im_start|>", "<|im_end|>", "<think>", "<|endoftext|>"});
    // NFC: combining sequences compose (e + U+0301 -> U+00E9, A + U+030A -> U+00C5, Hangul jamo -> syllable).
    const std::string decomposed = "cafe\u0301 A\u030Angstro\u0308m \u1100\u1161\u11A8";
    const std::string composed = "caf\u00e9 \u00c5ngstr\u00f6m \uac01";
    corpus.push_back({decomposed});
    ExpectMatchesReference(kQwenDir, corpus, {{decomposed, composed}});
    auto tok = LoadOrNull(kQwenDir);
    ASSERT_NE(tok, nullptr);
    EXPECT_EQ(tok->Encode(decomposed, false), tok->Encode(composed, false));
}

// ---------------------------------------------------------------------------------------------------------------
// A small Mistral/TinyLlama-style tokenizer.json: SentencePiece-converted BPE with <0x00>..<0xFF> byte fallback,
// ▁ word starts, and [INST] / [/INST] as added special tokens. `metaspace_pre_tokenizer`: the newer layout
// (Metaspace pre-tokenizer, prepend_scheme "first"); otherwise the legacy one (Prepend + Replace normalizer).

json TinyTokenizerJson(bool metaspace_pre_tokenizer) {
    const std::string sp = "\xE2\x96\x81";  // ▁
    json vocab = json::object();
    int32_t next = 0;
    for (const char* s : {"<unk>", "<s>", "</s>"}) vocab[s] = next++;
    for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        vocab[name] = next++;
    }
    std::vector<std::string> base = {sp};
    for (char c = 'a'; c <= 'z'; ++c) base.push_back(std::string(1, c));
    for (char c = 'A'; c <= 'Z'; ++c) base.push_back(std::string(1, c));
    for (char c = '0'; c <= '9'; ++c) base.push_back(std::string(1, c));
    for (const char* p : {".", ",", "!", "?", "'", "[", "]", "/", ":", "-", "\xC3\xA9"}) base.push_back(p);  // é
    for (const std::string& s : base) vocab[s] = next++;
    // Merges build whole words left to right: ("▁", "t") -> "▁t", ("▁t", "h") -> "▁th", ...
    json merges = json::array();
    const std::vector<std::string> words = {sp + "the",   sp + "quick", sp + "brown",       sp + "fox",   sp + "jumps",
                                            sp + "over",  sp + "lazy",  sp + "dog",         sp + "hello", sp + "world",
                                            sp + "Hello", sp + "is",    sp + "it",          "ing",        "er",
                                            sp + sp,      sp + sp + sp, sp + "caf\xC3\xA9", "12",         "123"};
    for (const std::string& w : words) {
        std::vector<std::string> chars;
        for (size_t i = 0; i < w.size();) {
            const size_t len = static_cast<unsigned char>(w[i]) < 0x80   ? 1
                               : static_cast<unsigned char>(w[i]) < 0xE0 ? 2
                                                                         : 3;
            chars.push_back(w.substr(i, len));
            i += len;
        }
        std::string left = chars[0];
        for (size_t i = 1; i < chars.size(); ++i) {
            const std::string merged = left + chars[i];
            if (!vocab.contains(merged)) {
                merges.push_back(json::array({left, chars[i]}));
                vocab[merged] = next++;
            }
            left = merged;
        }
    }
    auto added = [](int id, const char* content, bool special) {
        return json{{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
                    {"rstrip", false}, {"normalized", false}, {"special", special}};
    };
    const int inst = next++;
    const int inst_end = next++;
    json tok = {
        {"version", "1.0"},
        {"truncation", nullptr},
        {"padding", nullptr},
        {"added_tokens",
         {added(0, "<unk>", true), added(1, "<s>", true), added(2, "</s>", true), added(inst, "[INST]", true),
          added(inst_end, "[/INST]", true)}},
        {"post_processor",
         {{"type", "TemplateProcessing"},
          {"single",
           {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
          {"pair", json::array()},
          {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
        {"decoder",
         {{"type", "Sequence"},
          {"decoders",
           {{{"type", "Replace"}, {"pattern", {{"String", sp}}}, {"content", " "}},
            {{"type", "ByteFallback"}},
            {{"type", "Fuse"}},
            {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
        {"model",
         {{"type", "BPE"},
          {"dropout", nullptr},
          {"unk_token", "<unk>"},
          {"continuing_subword_prefix", nullptr},
          {"end_of_word_suffix", nullptr},
          {"fuse_unk", true},
          {"byte_fallback", true},
          {"ignore_merges", false},
          {"vocab", vocab},
          {"merges", merges}}},
    };
    if (metaspace_pre_tokenizer) {
        tok["normalizer"] = nullptr;
        tok["pre_tokenizer"] = {
            {"type", "Metaspace"}, {"replacement", sp}, {"prepend_scheme", "first"}, {"split", false}};
    } else {
        tok["normalizer"] = {{"type", "Sequence"},
                             {"normalizers",
                              {{{"type", "Prepend"}, {"prepend", sp}},
                               {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", sp}}}}};
        tok["pre_tokenizer"] = nullptr;
    }
    return tok;
}

json TinyConfigJson() {
    return {{"add_bos_token", true},
            {"add_eos_token", false},
            {"bos_token", "<s>"},
            {"eos_token", "</s>"},
            {"unk_token", "<unk>"},
            {"pad_token", nullptr},
            {"model_max_length", 2048},
            {"clean_up_tokenization_spaces", false},
            {"tokenizer_class", "LlamaTokenizer"}};
}

class TinyMetaspaceTest : public ::testing::TestWithParam<bool> {
  protected:
    void SetUp() override {
        ASSERT_TRUE(WriteFile(tmp_.path() + "/tokenizer.json", DumpJson(TinyTokenizerJson(GetParam()))).ok());
        ASSERT_TRUE(WriteFile(tmp_.path() + "/tokenizer_config.json", DumpJson(TinyConfigJson())).ok());
    }
    testutil::TempDir tmp_;
};

TEST_P(TinyMetaspaceTest, MatchesTokenizersJs) {
    std::vector<CorpusCase> corpus = {
        {"Hello world"},
        {"the quick brown fox jumps over the lazy dog"},
        {"  two leading spaces and   three inside"},
        {"caf\u00e9 and \u65e5\u672c \U0001F600 fall back to bytes"},
        {"ZEBRA 12345 ok?"},
        {"[INST] hello [/INST] it is"},
        {"before[INST]after</s>end<s>"},
        {"tab\there\nnew line"},
        {""},
    };
    auto tok = LoadOrNull(tmp_.path());
    ASSERT_NE(tok, nullptr);
    std::vector<std::string> texts;
    std::vector<std::vector<int32_t>> ours_plain, ours_special;
    for (const CorpusCase& c : corpus) {
        texts.push_back(c.text);
        ours_plain.push_back(tok->Encode(c.text, false));
        ours_special.push_back(tok->Encode(c.text, true));
    }
    std::string why;
    const std::optional<Reference> ref = RunReference(tmp_.path(), texts, ours_special, &why);
    if (!ref) GTEST_SKIP() << "no node reference: " << why;
    for (size_t i = 0; i < texts.size(); ++i) {
        SCOPED_TRACE("text: \"" + Show(texts[i]) + "\"");
        EXPECT_EQ(ours_plain[i], ref->plain[i]);
        EXPECT_EQ(ours_special[i], ref->special[i]);
        EXPECT_EQ(tok->Decode(ours_special[i]), ref->decoded[i]);
        EXPECT_EQ(tok->Decode(ours_special[i], false), ref->decoded_special[i]);
    }
}

TEST_P(TinyMetaspaceTest, BytesSpecialsAndRoundTrip) {
    auto tok = LoadOrNull(tmp_.path());
    ASSERT_NE(tok, nullptr);
    EXPECT_TRUE(tok->add_bos());
    EXPECT_EQ(tok->bos_id(), 1);
    EXPECT_EQ(tok->eos_id(), 2);
    EXPECT_EQ(tok->eos_ids(), std::vector<int32_t>{2});
    // U+1F600 is not in the vocabulary: four byte tokens <0xF0> <0x9F> <0x98> <0x80> (ids 3 + byte).
    const std::vector<int32_t> ids = tok->Encode("\U0001F600", false);
    ASSERT_GE(ids.size(), 4u);
    const std::vector<int32_t> tail(ids.end() - 4, ids.end());
    EXPECT_EQ(tail, (std::vector<int32_t>{3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80}));
    EXPECT_EQ(tok->TokenBytes(3 + 0xF0), "\xF0");
    EXPECT_EQ(tok->IdToPiece(3 + 0xF0), "<0xF0>");
    const std::optional<int32_t> inst = tok->TokenId("[INST]");
    ASSERT_TRUE(inst.has_value());
    EXPECT_TRUE(tok->IsSpecial(*inst));
    EXPECT_EQ(tok->TokenBytes(*inst), "[INST]");
    const std::optional<int32_t> hello =
        tok->Encode("Hello", false).size() == 1 ? std::optional<int32_t>(tok->Encode("Hello", false)[0]) : std::nullopt;
    ASSERT_TRUE(hello.has_value());
    EXPECT_EQ(tok->TokenBytes(*hello), " Hello");  // in the middle of a text the ▁ is a space
    EXPECT_EQ(tok->Decode({*hello}), "Hello");     // at the start the decoder strips it
    EXPECT_FALSE(tok->IsSpecial(*hello));
    // Byte fallback covers every input and nothing shrinks text: the longest spelling bounds bytes per token
    // ("▁▁▁", 9 bytes of normalized text).
    EXPECT_EQ(tok->max_token_bytes(), 9);
    for (const std::string text : {"Hello world", "  two leading", "caf\u00e9 \U0001F600 \u65e5", "a\tb\nc"}) {
        const std::vector<int32_t> ids = tok->Encode(text, true);
        // With the Metaspace pre-tokenizer a text that starts with a space gets no ▁ prepended, and the
        // decoder's Strip still drops one leading space (Hugging Face does the same; the reference test agrees).
        const bool loses_space = GetParam() && text[0] == ' ';
        EXPECT_EQ(tok->Decode(ids), loses_space ? text.substr(1) : text) << Show(text);
        EXPECT_GE(ids.size() * 9, text.size());
    }
}

INSTANTIATE_TEST_SUITE_P(Layouts, TinyMetaspaceTest, ::testing::Bool(), [](const ::testing::TestParamInfo<bool>& p) {
    return p.param ? "MetaspacePreTokenizer" : "PrependReplaceNormalizer";
});

// ---------------------------------------------------------------------------------------------------------------
// Properties of the real tokenizers.

class RealTokenizerTest : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        if (FileExists(kLlamaDir + "/tokenizer.json")) llama_ = LoadOrNull(kLlamaDir).release();
        if (FileExists(kQwenDir + "/tokenizer.json")) qwen_ = LoadOrNull(kQwenDir).release();
    }
    static void TearDownTestSuite() {
        delete llama_;
        delete qwen_;
        llama_ = qwen_ = nullptr;
    }
    void SetUp() override {
        if (!FileExists(kLlamaDir + "/tokenizer.json") || !FileExists(kQwenDir + "/tokenizer.json")) {
            GTEST_SKIP() << kMissingTestData;
        }
        ASSERT_NE(llama_, nullptr);
        ASSERT_NE(qwen_, nullptr);
    }
    static Tokenizer* llama_;
    static Tokenizer* qwen_;
};

Tokenizer* RealTokenizerTest::llama_ = nullptr;
Tokenizer* RealTokenizerTest::qwen_ = nullptr;

TEST_F(RealTokenizerTest, SpecialTokensAndIds) {
    EXPECT_EQ(llama_->vocab_size(), 128256);
    EXPECT_EQ(llama_->bos_id(), 128000);
    EXPECT_EQ(llama_->eos_id(), 128009);  // tokenizer_config.json eos_token <|eot_id|>
    EXPECT_EQ(llama_->eos_ids(), std::vector<int32_t>{128009});
    EXPECT_TRUE(llama_->add_bos());
    EXPECT_EQ(llama_->Encode("Hello", true), (std::vector<int32_t>{128000, 9906}));
    EXPECT_EQ(llama_->TokenId("<|eot_id|>"), std::optional<int32_t>(128009));
    EXPECT_EQ(llama_->TokenId("<|begin_of_text|>"), std::optional<int32_t>(128000));
    EXPECT_EQ(llama_->TokenId("Hello"), std::nullopt);  // a plain vocabulary entry
    EXPECT_TRUE(llama_->IsSpecial(128009));
    EXPECT_FALSE(llama_->IsSpecial(9906));
    EXPECT_EQ(llama_->IdToPiece(1917), "\xC4\xA0world");  // Ġworld
    EXPECT_EQ(llama_->TokenBytes(1917), " world");
    EXPECT_EQ(llama_->TokenBytes(128009), "<|eot_id|>");
    EXPECT_EQ(llama_->TokenBytes(-1), "");
    EXPECT_EQ(llama_->TokenBytes(128256), "");

    EXPECT_EQ(llama_->model_max_length(), 0);  // 1e30 in the file: transformers' "no limit"
    EXPECT_EQ(qwen_->model_max_length(), 131072);
    EXPECT_EQ(qwen_->bos_id(), ModelConfig{}.bos_token_id);  // bos_token null: config.json's id stands
    EXPECT_EQ(qwen_->eos_id(), 151645);                      // <|im_end|>
    EXPECT_FALSE(qwen_->add_bos());
    EXPECT_EQ(qwen_->Encode("Hello", true), qwen_->Encode("Hello", false));
    EXPECT_EQ(qwen_->TokenId("<|im_start|>"), std::optional<int32_t>(151644));
    EXPECT_TRUE(qwen_->IsSpecial(151644));
    // <think> is an added token but not special: split out of text, kept by Decode.
    const std::optional<int32_t> think = qwen_->TokenId("<think>");
    ASSERT_TRUE(think.has_value());
    EXPECT_FALSE(qwen_->IsSpecial(*think));
    EXPECT_EQ(qwen_->Encode("<think>", false), std::vector<int32_t>{*think});
    EXPECT_EQ(qwen_->Decode({*think}), "<think>");
}

// Each token's bytes, concatenated, are the text's bytes, even where a character spans tokens.
TEST_F(RealTokenizerTest, TokenBytesConcatenateToTheText) {
    for (Tokenizer* tok : {llama_, qwen_}) {
        for (const std::string text : {"Hello world", "\U0001F999\U0001F9E0 \u65e5\u672c\u8a9e", "  \t\r\n x"}) {
            std::string bytes;
            for (int32_t id : tok->Encode(text, false)) bytes += tok->TokenBytes(id);
            EXPECT_EQ(bytes, text);
        }
    }
    // A byte of a character alone: 0xF0, the first byte of every 4-byte character.
    const std::vector<int32_t> ids = llama_->Encode("\U0001F999", false);
    ASSERT_GT(ids.size(), 1u) << "the llama emoji should span tokens";
    EXPECT_EQ(static_cast<unsigned char>(llama_->TokenBytes(ids[0])[0]), 0xF0);
}

// Bytes that are not UTF-8 are replaced by U+FFFD before encoding (one per maximal invalid subsequence).
TEST_F(RealTokenizerTest, InvalidUtf8BecomesReplacementCharacters) {
    EXPECT_EQ(ReplaceInvalidUtf8("a\xFF"
                                 "b"),
              "a\uFFFD"
              "b");
    EXPECT_EQ(ReplaceInvalidUtf8("\xF0\x9F\x98"), "\uFFFD");              // a cut 4-byte sequence: one
    EXPECT_EQ(ReplaceInvalidUtf8("\xC0\xAF"), "\uFFFD\uFFFD");            // overlong: two
    EXPECT_EQ(ReplaceInvalidUtf8("\xED\xA0\x80"), "\uFFFD\uFFFD\uFFFD");  // a surrogate: three
    EXPECT_EQ(ReplaceInvalidUtf8("ok \u00e9"), "ok \u00e9");
    for (Tokenizer* tok : {llama_, qwen_}) {
        EXPECT_EQ(tok->Encode("a\xFF"
                              "b\xF0\x9F\x98 c",
                              false),
                  tok->Encode("a\uFFFD"
                              "b\uFFFD c",
                              false));
        EXPECT_EQ(tok->Decode(tok->Encode("x\x80y", false)), "x\uFFFDy");
    }
    // Decoding a lone byte token gives U+FFFD, so the result is always UTF-8.
    const std::vector<int32_t> ids = llama_->Encode("\U0001F999", false);
    EXPECT_EQ(llama_->Decode({ids[0]}), "\uFFFD");
}

// tokenizer.json's bound on bytes per token: Llama-3 (byte-level BPE, no normalizer) has one; Qwen3's NFC can
// shrink text (e + U+0301 -> é), so it has none.
TEST_F(RealTokenizerTest, MaxTokenBytes) {
    const int bound = llama_->max_token_bytes();
    EXPECT_GE(bound, 16);
    EXPECT_LE(bound, 256);
    for (const CorpusCase& c : Corpus({"<|eot_id|>"})) {
        const auto ids = llama_->Encode(c.text, true);
        EXPECT_GE(static_cast<int64_t>(ids.size()) * bound, static_cast<int64_t>(c.text.size()));
    }
    EXPECT_EQ(qwen_->max_token_bytes(), 0);
}

// The streaming detokenizer's pieces add up to Decode, and each is valid UTF-8 (a character split across
// byte-level tokens is held back until complete).
TEST_F(RealTokenizerTest, IncrementalDetokenizerMatchesDecode) {
    for (Tokenizer* tok : {llama_, qwen_}) {
        for (const CorpusCase& c : Corpus({"<|eot_id|>", "<|im_end|>"})) {
            SCOPED_TRACE("text: \"" + Show(c.text) + "\"");
            const std::vector<int32_t> ids = tok->Encode(c.text, true);
            for (const std::vector<int32_t>& context : {std::vector<int32_t>{}, tok->Encode("Prompt: ", true)}) {
                IncrementalDetokenizer detok(tok, context);
                std::string streamed;
                for (int32_t id : ids) {
                    const std::string piece = detok.Push(id);
                    EXPECT_EQ(ReplaceInvalidUtf8(piece), piece);
                    streamed += piece;
                }
                streamed += detok.Flush();
                EXPECT_EQ(streamed, tok->Decode(ids));
            }
        }
    }
    // The llama emoji spans tokens: nothing comes out until its last byte.
    const std::vector<int32_t> ids = llama_->Encode("\U0001F999", false);
    IncrementalDetokenizer detok(llama_, {});
    for (size_t i = 0; i + 1 < ids.size(); ++i) EXPECT_EQ(detok.Push(ids[i]), "");
    EXPECT_EQ(detok.Push(ids.back()), "\U0001F999");
}

// Not asserted: how fast a long prompt encodes (a 100k-token prompt must be practical).
TEST_F(RealTokenizerTest, EncodeSpeed) {
    std::string text;
    const std::string unit = LongText() + "\u65e5\u672c\u8a9e \U0001F600 caf\u00e9 1234567890\n";
    while (text.size() < (1u << 20)) text += unit;
    for (Tokenizer* tok : {llama_, qwen_}) {
        const auto t0 = std::chrono::steady_clock::now();
        const size_t n = tok->Encode(text, false).size();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("[ speed    ] %s: %zu bytes -> %zu tokens in %.3f s (%.0f tokens/s)\n",
                    tok == llama_ ? "Llama-3.1" : "Qwen3", text.size(), n, s, static_cast<double>(n) / s);
        EXPECT_GT(n, text.size() / 8);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Errors name the file and what is wrong.

TEST(HfTokenizerErrorsTest, MissingFilesNameBoth) {
    testutil::TempDir tmp;
    auto tok = Tokenizer::Load(tmp.path(), ModelConfig{});
    ASSERT_FALSE(tok.ok());
    EXPECT_EQ(tok.status().code(), StatusCode::kNotFound);
    EXPECT_NE(tok.status().message().find("tokenizer.json"), std::string::npos) << tok.status().message();
    EXPECT_NE(tok.status().message().find("tokenizer.model"), std::string::npos) << tok.status().message();
}

Status LoadWith(const std::string& dir, const std::string& tokenizer_json) {
    EXPECT_TRUE(WriteFile(dir + "/tokenizer.json", tokenizer_json).ok());
    auto tok = Tokenizer::Load(dir, ModelConfig{});
    return tok.ok() ? Status::Ok() : tok.status();
}

TEST(HfTokenizerErrorsTest, UnsupportedAndBrokenFilesAreNamed) {
    testutil::TempDir tmp;
    const std::string path = tmp.path() + "/tokenizer.json";
    json base = TinyTokenizerJson(false);
    ASSERT_TRUE(LoadWith(tmp.path(), DumpJson(base)).ok());

    auto expect = [&](const json& doc, StatusCode code, const std::string& word) {
        const Status st = LoadWith(tmp.path(), DumpJson(doc));
        EXPECT_EQ(st.code(), code) << st.ToString();
        EXPECT_NE(st.message().find(path), std::string::npos) << st.message();
        EXPECT_NE(st.message().find(word), std::string::npos) << st.message();
    };
    json j = base;
    j["model"]["type"] = "WordPiece";
    expect(j, StatusCode::kUnimplemented, "WordPiece");
    j = base;
    j["normalizer"] = {{"type", "Lowercase"}};
    expect(j, StatusCode::kUnimplemented, "Lowercase");
    j = base;
    j["pre_tokenizer"] = {{"type", "Whitespace"}};
    expect(j, StatusCode::kUnimplemented, "Whitespace");
    j = base;
    j["decoder"] = {{"type", "WordPiece"}, {"prefix", "##"}};
    expect(j, StatusCode::kUnimplemented, "WordPiece");
    j = base;
    j["post_processor"] = {{"type", "BertProcessing"}};
    expect(j, StatusCode::kUnimplemented, "BertProcessing");
    j = base;
    j["model"]["continuing_subword_prefix"] = "##";
    expect(j, StatusCode::kUnimplemented, "continuing_subword_prefix");
    j = base;
    j["model"]["merges"].push_back(json::array({"zz", "top"}));
    expect(j, StatusCode::kDataLoss, "model.merges");

    const Status bad = LoadWith(tmp.path(), "{\"model\": ");
    EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument) << bad.ToString();  // ParseJsonFile's code for bad JSON
    EXPECT_NE(bad.message().find(path), std::string::npos) << bad.message();

    ASSERT_TRUE(WriteFile(tmp.path() + "/tokenizer_config.json", "{\"eos_token\": \"<nope>\"}").ok());
    const Status cfg = LoadWith(tmp.path(), DumpJson(base));
    EXPECT_NE(cfg.message().find("tokenizer_config.json"), std::string::npos) << cfg.message();
    EXPECT_NE(cfg.message().find("eos_token"), std::string::npos) << cfg.message();
}

}  // namespace
}  // namespace uniattn

#else

TEST(HfTokenizerTest, NotBuilt) { GTEST_SKIP() << "this build reads no tokenizer.json (UNIATTN_HF_TOKENIZER off)"; }

#endif  // UNIATTN_HAVE_HF_TOKENIZER
