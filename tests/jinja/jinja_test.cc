// The Jinja renderer against Python's jinja2 (set up as transformers does: tests/jinja/render_reference.py),
// byte for byte: real chat templates (llama.cpp's collection under models/, fetched by
// scripts/fetch_testdata.sh), the templates quoted in llama.cpp's test-chat-template.cpp, a few published
// ones (tests/jinja/published_templates.json) and small snippets for the language's corners, each with the
// conversations in tests/jinja/conversations.json. Where jinja2 raises, we must fail too (raise_exception
// with the same message). Plus the limits and errors, which need no Python.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

#include "server/jinja/jinja.h"

namespace uniattn::jinja {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

const std::string kSourceDir = UNIATTN_SOURCE_DIR;
const std::string kScript = kSourceDir + "/tests/jinja/render_reference.py";

std::optional<std::string> ReadFile(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::string Python() {
    const char* env = std::getenv("UNIATTN_PYTHON");
    return env && *env ? env : "python3";
}

// Why the reference renderer cannot run here, or "" when it can.
std::string ReferenceUnavailable() {
    static const std::string why = [] {
        const std::string cmd = Python() +
                                " -c 'import jinja2, sys; sys.exit(0 if jinja2.__version__ >= \"3.1\" else 1)' "
                                ">/dev/null 2>&1";
        if (std::system(cmd.c_str()) != 0) {
            return Python() + " with jinja2 >= 3.1 is not available (set UNIATTN_PYTHON; Debian: python3-jinja2)";
        }
        return std::string();
    }();
    return why;
}

std::string TempPath(const std::string& name) {
    return (fs::path(testing::TempDir()) / (name + "." + std::to_string(getpid()))).string();
}

// The fixed clock both renderers use for strftime_now: 2024-07-26 09:05:03.
constexpr const char* kNowIso = "2024-07-26T09:05:03";
std::tm FixedNow() {
    std::tm tm{};
    tm.tm_year = 2024 - 1900;
    tm.tm_mon = 6;
    tm.tm_mday = 26;
    tm.tm_hour = 9;
    tm.tm_min = 5;
    tm.tm_sec = 3;
    tm.tm_wday = 5;  // a Friday
    tm.tm_yday = 207;
    tm.tm_isdst = -1;
    return tm;
}

struct Case {
    std::string label;
    std::string source;
    ojson context;
};

struct Outcome {
    bool ok = false;
    std::string output;
    std::string kind;  // for failures: raised, syntax, runtime, limit
    std::string error;
};

std::vector<Outcome> RunReference(const std::vector<Case>& cases) {
    ojson request;
    request["now"] = kNowIso;
    request["cases"] = ojson::array();
    for (const Case& c : cases) request["cases"].push_back({{"template", c.source}, {"context", c.context}});
    const std::string in_path = TempPath("jinja_cases.json");
    const std::string out_path = TempPath("jinja_results.json");
    {
        std::ofstream out(in_path, std::ios::binary);
        out << request.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    const std::string cmd = Python() + " " + kScript + " < " + in_path + " > " + out_path;
    const int rc = std::system(cmd.c_str());
    std::vector<Outcome> results;
    auto text = ReadFile(out_path);
    std::remove(in_path.c_str());
    std::remove(out_path.c_str());
    if (rc != 0 || !text) {
        ADD_FAILURE() << "the reference renderer failed: " << cmd;
        return results;
    }
    for (const auto& r : ojson::parse(*text)) {
        Outcome o;
        if (r.contains("output")) {
            o.ok = true;
            o.output = r["output"].get<std::string>();
        } else {
            o.kind = r["kind"].get<std::string>();
            o.error = r["error"].get<std::string>();
        }
        results.push_back(std::move(o));
    }
    return results;
}

Outcome RenderOurs(const Case& c) {
    Outcome o;
    Error error;
    auto tmpl = Template::Parse(c.source, &error);
    if (tmpl) {
        RenderOptions options;
        options.now = FixedNow;
        if (tmpl->Render(Value::FromJson(c.context), options, &o.output, &error)) {
            o.ok = true;
            return o;
        }
    }
    o.output.clear();
    switch (error.kind) {
        case Error::Kind::kSyntax:
            o.kind = "syntax";
            break;
        case Error::Kind::kRaised:
            o.kind = "raised";
            break;
        case Error::Kind::kRuntime:
            o.kind = "runtime";
            break;
        case Error::Kind::kLimitExceeded:
            o.kind = "limit";
            break;
    }
    o.error = error.kind == Error::Kind::kRaised ? error.message : error.ToString();
    return o;
}

bool IsUnsupported(const Outcome& ours) {
    return ours.kind == "syntax" || ours.error.find("not supported by this renderer") != std::string::npos;
}

enum class Verdict { kMatch, kBothFailed, kUnsupported, kMismatch };

// `detail` explains a mismatch or an unsupported construct.
Verdict Judge(const Outcome& ref, const Outcome& ours, std::string* detail) {
    if (ref.ok && ours.ok) {
        if (ref.output == ours.output) return Verdict::kMatch;
        size_t i = 0;
        while (i < ref.output.size() && i < ours.output.size() && ref.output[i] == ours.output[i]) ++i;
        *detail = "outputs differ at byte " + std::to_string(i) + ":\n  jinja2: " +
                  ojson(ref.output.substr(i > 40 ? i - 40 : 0, 120))
                      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
                  "\n  ours:   " +
                  ojson(ours.output.substr(i > 40 ? i - 40 : 0, 120))
                      .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        return Verdict::kMismatch;
    }
    if (ref.ok) {
        *detail = "jinja2 renders it, ours fails: " + ours.error;
        return IsUnsupported(ours) ? Verdict::kUnsupported : Verdict::kMismatch;
    }
    if (ours.ok) {
        *detail = "jinja2 fails (" + ref.kind + ": " + ref.error + "), ours renders " +
                  std::to_string(ours.output.size()) + " bytes";
        return Verdict::kMismatch;
    }
    if (ref.kind == "raised" && (ours.kind != "raised" || ours.error != ref.error)) {
        *detail = "jinja2 raises '" + ref.error + "', ours: " + ours.kind + ": " + ours.error;
        return Verdict::kMismatch;
    }
    return Verdict::kBothFailed;
}

ojson Conversations() {
    auto text = ReadFile(kSourceDir + "/tests/jinja/conversations.json");
    EXPECT_TRUE(text.has_value());
    return text ? ojson::parse(*text)["conversations"] : ojson::array();
}

std::vector<Case> CasesFor(const std::string& label, const std::string& source) {
    std::vector<Case> cases;
    for (const auto& conv : Conversations()) {
        Case c;
        c.label = label + " / " + conv["name"].get<std::string>();
        c.source = source;
        c.context["messages"] = conv["messages"];
        c.context["add_generation_prompt"] = conv["add_generation_prompt"];
        c.context["bos_token"] = "<s>";
        c.context["eos_token"] = "</s>";
        c.context["tools"] = conv.contains("tools") ? conv["tools"] : ojson(nullptr);
        if (conv.contains("kwargs")) {
            for (const auto& [k, v] : conv["kwargs"].items()) c.context[k] = v;
        }
        cases.push_back(std::move(c));
    }
    return cases;
}

struct Tally {
    int match = 0, both_failed = 0, unsupported = 0, mismatch = 0;
    std::string first_unsupported;
};

// Renders every case with both renderers. Mismatches always fail the test; an unsupported construct fails
// it only when `require_all` (the templates the server must get right).
std::map<std::string, Tally> Compare(const std::vector<Case>& cases, bool require_all,
                                     const std::function<std::string(const Case&)>& group_of) {
    std::map<std::string, Tally> tallies;
    const std::vector<Outcome> refs = RunReference(cases);
    if (refs.size() != cases.size()) return tallies;
    for (size_t i = 0; i < cases.size(); ++i) {
        const Outcome ours = RenderOurs(cases[i]);
        std::string detail;
        Tally& t = tallies[group_of(cases[i])];
        switch (Judge(refs[i], ours, &detail)) {
            case Verdict::kMatch:
                ++t.match;
                break;
            case Verdict::kBothFailed:
                ++t.both_failed;
                if (std::getenv("JINJA_TEST_VERBOSE")) {
                    std::printf("both fail: %s\n  jinja2: %s: %s\n  ours:   %s: %s\n", cases[i].label.c_str(),
                                refs[i].kind.c_str(), refs[i].error.c_str(), ours.kind.c_str(), ours.error.c_str());
                }
                break;
            case Verdict::kUnsupported:
                ++t.unsupported;
                if (t.first_unsupported.empty()) t.first_unsupported = detail;
                if (require_all) ADD_FAILURE() << cases[i].label << ": " << detail;
                break;
            case Verdict::kMismatch:
                ++t.mismatch;
                ADD_FAILURE() << cases[i].label << ": " << detail;
                break;
        }
    }
    return tallies;
}

std::string GroupOf(const Case& c) { return c.label.substr(0, c.label.find(" / ")); }

#define REQUIRE_REFERENCE()                                                                    \
    do {                                                                                       \
        if (const std::string why = ReferenceUnavailable(); !why.empty()) GTEST_SKIP() << why; \
    } while (0)

#define REQUIRE_TESTDATA(path)                                                                         \
    do {                                                                                               \
        if (!fs::exists(path)) GTEST_SKIP() << (path) << " is missing: run scripts/fetch_testdata.sh"; \
    } while (0)

std::map<std::string, std::string> LlamaCppQuotedTemplates() {
    std::map<std::string, std::string> out;
    const std::string path = TempPath("llama_cpp_templates.json");
    const std::string cmd = Python() + " " + kScript + " --extract-llama-cpp " + kSourceDir +
                            "/models/llama.cpp/test-chat-template.cpp > " + path;
    if (std::system(cmd.c_str()) != 0) {
        ADD_FAILURE() << "extracting the templates failed: " << cmd;
        return out;
    }
    auto text = ReadFile(path);
    std::remove(path.c_str());
    const ojson parsed = ojson::parse(*text);
    for (const auto& [name, tmpl] : parsed.items()) out[name] = tmpl.get<std::string>();
    return out;
}

// ---- the templates the server must render exactly ----

TEST(JinjaDifferential, KeyModelTemplates) {
    REQUIRE_REFERENCE();
    const std::string dir = kSourceDir + "/models/llama.cpp/templates/";
    REQUIRE_TESTDATA(dir);
    std::vector<Case> cases;
    for (const char* name :
         {"meta-llama-Llama-3.1-8B-Instruct", "meta-llama-Llama-3.2-3B-Instruct", "Qwen-Qwen2.5-7B-Instruct",
          "Qwen-Qwen3-0.6B", "HuggingFaceTB-SmolLM3-3B", "mistralai-Mistral-Nemo-Instruct-2407"}) {
        auto source = ReadFile(dir + name + ".jinja");
        ASSERT_TRUE(source.has_value()) << dir << name << ".jinja";
        for (Case& c : CasesFor(name, *source)) cases.push_back(std::move(c));
    }
    // Qwen3's tokenizer_config.json (the tokenizer test data).
    const std::string qwen3_config = kSourceDir + "/models/tokenizers/qwen3/tokenizer_config.json";
    REQUIRE_TESTDATA(qwen3_config);
    const ojson cfg = ojson::parse(*ReadFile(qwen3_config));
    ASSERT_TRUE(cfg.contains("chat_template"));
    for (Case& c : CasesFor("qwen3 tokenizer_config.json", cfg["chat_template"].get<std::string>())) {
        cases.push_back(std::move(c));
    }
    // Published templates (Llama-2, zephyr, SmolLM2's ChatML) and llama.cpp's quotes of Mistral v3 and v1.
    const ojson published = ojson::parse(*ReadFile(kSourceDir + "/tests/jinja/published_templates.json"));
    for (const auto& t : published["templates"]) {
        for (Case& c : CasesFor(t["name"].get<std::string>(), t["template"].get<std::string>())) {
            cases.push_back(std::move(c));
        }
    }
    const auto quoted = LlamaCppQuotedTemplates();
    for (const char* name : {"Mistral-Large-Instruct-2407 (mistralai 'v3' template; modified to have system prompt "
                             "at start)",
                             "mistralai/Mistral-7B-Instruct-v0.2 (mistralai 'v1' template with a system prompt)",
                             "teknium/OpenHermes-2.5-Mistral-7B"}) {
        auto it = quoted.find(name);
        ASSERT_NE(it, quoted.end()) << name;
        for (Case& c : CasesFor(name, it->second)) cases.push_back(std::move(c));
    }
    const auto tallies = Compare(cases, /*require_all=*/true, GroupOf);
    int matched = 0;
    for (const auto& [group, t] : tallies) {
        matched += t.match;
        std::printf("  %-60s %2d match, %2d both raise/fail\n", group.c_str(), t.match, t.both_failed);
        EXPECT_GT(t.match, 0) << group << ": no conversation rendered";
    }
    EXPECT_GT(matched, 100);
}

// ---- every template in the collection: no wrong text, unsupported constructs counted ----

TEST(JinjaDifferential, AllCollectedTemplates) {
    REQUIRE_REFERENCE();
    const std::string dir = kSourceDir + "/models/llama.cpp/templates";
    REQUIRE_TESTDATA(dir);
    std::vector<Case> cases;
    std::vector<fs::path> files;
    for (const auto& entry : fs::directory_iterator(dir)) {
        if (entry.path().extension() == ".jinja") files.push_back(entry.path());
    }
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) {
        for (Case& c : CasesFor(f.stem().string(), *ReadFile(f.string()))) cases.push_back(std::move(c));
    }
    for (const auto& [name, source] : LlamaCppQuotedTemplates()) {
        for (Case& c : CasesFor("test-chat-template.cpp: " + name, source)) cases.push_back(std::move(c));
    }
    const auto tallies = Compare(cases, /*require_all=*/false, GroupOf);
    int fully = 0, partly = 0, none = 0;
    for (const auto& [group, t] : tallies) {
        const char* status = t.mismatch ? "MISMATCH" : t.unsupported == 0 ? "ok" : t.match ? "partly" : "unsupported";
        if (!t.mismatch && t.unsupported == 0) ++fully;
        if (!t.mismatch && t.unsupported && t.match) ++partly;
        if (!t.mismatch && t.unsupported && !t.match) ++none;
        std::printf("  %-11s %-70.70s match %2d, both fail %2d, unsupported %2d%s%s\n", status, group.c_str(), t.match,
                    t.both_failed, t.unsupported, t.first_unsupported.empty() ? "" : "\n              ",
                    t.first_unsupported.substr(0, 200).c_str());
    }
    std::printf(
        "templates: %zu; identical to jinja2 for every conversation: %d; partly unsupported: %d; "
        "unsupported: %d\n",
        tallies.size(), fully, partly, none);
    EXPECT_GT(fully, 60);
}

// ---- the language's corners ----

struct Snippet {
    const char* source;
    const char* context;  // JSON
};

// Each is rendered by both; they must agree (text, or both failing; raise_exception with the same message).
const Snippet kSnippets[] = {
    // scoping
    {"{% for i in [1,2] %}{% if i == 2 %}[{{ x }}]{% endif %}{% set x = i %}{% endfor %}{{ x }}", R"({"x": "outer"})"},
    {"{% set x = 'a' %}{% macro m() %}{{ x }}{% endmacro %}{% set x = 'b' %}{{ m() }}", "{}"},
    {"{% for i in [1] %}{% macro m() %}{{ y }}{% endmacro %}{% set y = 'c' %}{{ m() }}{% endfor %}{{ y }}",
     R"({"y": "ctx"})"},
    {"{% set ns = namespace(a=1, b=[]) %}{% for i in [1,2] %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}{{ ns }}",
     "{}"},
    {"{% set ns = namespace() %}{% set ns.x = 5 %}{{ ns.x }}{{ ns.y is defined }}", "{}"},
    {"{% if true %}{% set z = 1 %}{% endif %}{{ z }}", "{}"},
    {"{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}[{{ a }}]", "{}"},
    {"{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t = 1, 'x' %}{{ t }}", "{}"},
    // undefined
    {"{{ foo }}|{{ foo is defined }}|{{ foo|length }}|{{ 'a' in foo }}|{{ foo is sequence }}|{{ foo is iterable }}",
     "{}"},
    {"{% for x in foo %}x{% else %}empty{% endfor %}", "{}"},
    {"{{ foo.bar }}", "{}"},
    {"{{ foo['bar'] }}", "{}"},
    {"{{ foo + 1 }}", "{}"},
    {"{{ x.y }}|{{ x.y is defined }}|{{ x['y'] }}", R"({"x": {}})"},
    {"{{ x.y.z }}", R"({"x": {}})"},
    {"{{ [1,2][5] }}|{{ none.x }}|{{ (1).x }}", "{}"},
    {"{{ messages[0].role }}", R"({"messages": []})"},
    {"{{ foo == bar }}{{ foo != none }}{{ foo ~ 'x' }}", "{}"},
    // literals and printing
    {"{{ (1,2) }}{{ (1,) }}{{ () }}{{ [1,'a',none,true,1.0] }}{{ {'a':1, 'b': [2]} }}", "{}"},
    {"{{ 1e20 }} {{ 1e-5 }} {{ 0.1+0.2 }} {{ 10/2 }} {{ 1.5e300*1e10 }} {{ 123456789.0*1e8 }} {{ 0.0001 }} {{ -0.0 }}",
     "{}"},
    {"{{ '\\d\\n\\u00e9\\x41\\101\\t|\\'\\\"' }}", "{}"},
    {"{{ 'a' 'b' \"c\" }}{{ 1_000 }}{{ 0x1F }}{{ 0o17 }}{{ 0b101 }}{{ 1_0.5 }}", "{}"},
    {"{{ 'it''s' }}{{ \"it's\" }}{{ ['it\\'s', \"q\\\"\", 'back\\\\slash', 'tab\\t', 'nl\\n'] }}", "{}"},
    {"{{ ['é', '😀', '\\x00', '\\x7f', '\\u200b'] }}", "{}"},
    {"{{ true }}{{ True }}{{ none }}{{ None }}{{ false }}", "{}"},
    // operators
    {"{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 // -2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ 2 ** 10 }} "
     "{{ 2 ** -1 }} {{ 2 ** 0.5 }} {{ 7 / 2 }} {{ 6 / 3 }}",
     "{}"},
    {"{{ true + 1 }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 'x' * 3 }} {{ 3 * 'x' }} {{ [1] * 2 }} {{ [1] + [2] }} "
     "{{ 'a' ~ 1 ~ none ~ true }} {{ -true }} {{ +2.5 }}",
     "{}"},
    {"{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'a' < 'b' }} {{ [1,2] < [1,3] }} {{ 1 in [1,2] }} {{ 'b' in 'abc' }} "
     "{{ 'k' in {'k': 1} }} {{ 3 not in [1] }} {{ not 0 }} {{ none or 'x' }} {{ '' and 1 }} {{ 0 or '' }}",
     "{}"},
    {"{{ 'a' + 1 }}", "{}"},
    {"{{ 1 < 'a' }}", "{}"},
    {"{{ 5 // 0 }}", "{}"},
    {"{{ 1 if false }}|{{ 'y' if true else 'n' }}|{{ 'a' if false else 'b' if false else 'c' }}", "{}"},
    {"{{ -1|abs }} {{ -2 ** 2 }} {{ 2 * 3 ~ 4 }} {{ (1 + 2) ~ 3 }} {{ x|length - 1 }}", R"({"x": [1, 2, 3]})"},
    {"{{ 1 + 2 ~ 3 }}", "{}"},
    // slicing and indexing
    {"{{ x[1:] }} {{ x[::-1] }} {{ x[-2:] }} {{ x[:-1] }} {{ x[1:3:2] }} {{ x[-1] }} {{ x[10:] }} {{ x.0 }}",
     R"({"x": [1, 2, 3, 4]})"},
    {"{{ s[1:3] }} {{ s[-1] }} {{ s[::-1] }} {{ s|length }} {{ s[0] }} {{ s[:-1] }}", R"({"s": "héllo😀"})"},
    {"{{ d.items is defined }}{{ d.items is callable }}", R"({"d": {"items": 1}})"},
    {"{{ d['items'] }} {{ d.get('items') }} {{ d.keys() }} {{ d.values() }}", R"({"d": {"items": 1, "b": 2}})"},
    // loops
    {"{% for a, b in [[1,2],[3,4]] %}{{ a }}{{ b }}{{ loop.index }}{{ loop.revindex }}{{ loop.first }}{{ loop.last }}"
     "{{ loop.length }}{{ loop.previtem }}{{ loop.nextitem }}{{ loop.cycle('x','y') }}{{ loop.index0 }}"
     "{{ loop.revindex0 }};{% endfor %}",
     "{}"},
    {"{% for x in [1,2,3,4] if x is odd %}{{ loop.index }}/{{ loop.length }}{{ x }} {% endfor %}", "{}"},
    {"{% for x in [1,2,3,4] %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}"
     "{% endfor %}",
     "{}"},
    {"{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}"
     "{% for c in 'ab' %}{{ c }}{% endfor %}",
     R"({"d": {"z": 1, "a": 2}})"},
    {"{% for x in [] %}x{% else %}none{% endfor %}{% for x in [1] if false %}x{% else %}filtered{% endfor %}", "{}"},
    {"{% for x in none %}{% endfor %}", "{}"},
    {"{% for a in [1,2] %}{% for b in [3,4] %}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{{ loop.index }}|"
     "{% endfor %}",
     "{}"},
    // blocks
    {"{% set x %}a{{ 1 }}b{% endset %}[{{ x }}]{{ x|length }}{% set y | upper %}up{% endset %}{{ y }}", "{}"},
    {"{% macro f(a, b='d') %}{{ a }}-{{ b }}-{{ varargs }}-{{ kwargs }}{% endmacro %}{{ f(1) }}|{{ f(1, 2, 3) }}|"
     "{{ f(a=5, c=6) }}",
     "{}"},
    {"{% macro f(a) %}{{ a }}{% endmacro %}{{ f(1, 2) }}", "{}"},
    {"{% macro f(a, b) %}[{{ a }}|{{ b }}]{% endmacro %}{{ f(1) }}{{ f(b=2) }}", "{}"},
    {"{% macro f(a) %}[{{ caller(a) }}]{% endmacro %}{% call(x) f(7) %}in{{ x }}{% endcall %}", "{}"},
    {"{% macro f() %}x{% endmacro %}{% call f() %}body{% endcall %}", "{}"},
    {"{% macro f() %}{{ kwargs.caller() }}{% endmacro %}{% call f() %}body{% endcall %}", "{}"},
    {"{% macro r(n) %}{% if n > 0 %}{{ n }}{{ r(n - 1) }}{% endif %}{% endmacro %}{{ r(5) }}", "{}"},
    {"{% filter upper %}abc{{ 'd' }}{% endfilter %}{% filter replace('a', 'b') | upper %}aaa{% endfilter %}", "{}"},
    {"{% raw %}{{ x }}{% endraw %}|{%- raw -%}  {% if %}  {%- endraw %}|", "{}"},
    {"{% generation %}{% set g = 1 %}gen{{ g }}{% endgeneration %}{{ g }}", "{}"},
    {"{% print 'a', 1 %}", "{}"},
    // whitespace control
    {"  {% if true %}\n  x\n  {% endif %}\n  {# c #}\nend\n {{ 'v' }}\n", "{}"},
    {"a\n  {#- c #}\nb {#+ d #}\n  {# e -#}\n  c", "{}"},
    {"x {%+ if true %}y{% endif +%}\nz  {{- 'w' -}}  q\n", "{}"},
    {"{% if true %}  \n{% endif %}|{{ 1 }}  {% if true %}x{% endif %}\n  {%- if true %}y{% endif %}", "{}"},
    {"a\r\nb\r{{ 1 }}\r\n", "{}"},
    {"line\n{% for x in [1, 2] %}\n    {{ x }}\n{% endfor %}\nend\n\n", "{}"},
    {"{{ {'a': {'b': 1}} }}{{ {'a': {'b': 1}}['a'] }}", "{}"},
    // markup
    {"{{ (x|safe) + '<a>' }}|{{ '<b>' + (x|safe) }}|{{ x|safe ~ '<c>' }}|{{ '<d>' ~ (x|safe) }}|{{ x|e }}|"
     "{{ (x|e) + x }}",
     R"({"x": "&'\""})"},
    {"{% macro m() %}<m>{% endmacro %}{{ m() + '<a>' }}|{{ m() ~ '<b>' }}|{{ m() | length }}", "{}"},
    {"{{ 'Use '|safe + name + ' now'|safe }}", R"({"name": "a'b\"<c>"})"},
    // filters
    {"{{ x|tojson }}|{{ x|tojson(indent=2) }}|{{ x|tojson(separators=(',', ':')) }}|{{ x|tojson(sort_keys=true) }}|"
     "{{ x|tojson(ensure_ascii=true) }}|{{ x|tojson(indent='\\t') }}|{{ x|tojson(indent=0) }}",
     R"({"x": {"b": [1, 2.5, null, true, "é\n\"\u0001\\ 😀 </script>"], "a": {}, "c": [], "d": 1e100, "e": -0.0}})"},
    {"{{ 'x'|default('d') }}{{ undefined_v|default('d') }}{{ ''|default('d', true) }}{{ none|default('d') }}"
     "{{ undefined_v|d }}",
     "{}"},
    {"{{ ' a b '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ 'héllo wörld'|upper }}|{{ 'ÀÉÎ ΣΑΣ'|lower }}|{{ 'hello "
     "wORLD'|capitalize }}|"
     "{{ 'hi there-you (ok) [x]'|title }}|{{ \"they're bill's\"|title }}",
     "{}"},
    {"{{ [3,1,2]|min }}{{ [3,1,2]|max }}{{ ['b','A','a']|sort }}{{ ['b','A','a']|sort(case_sensitive=true) }}"
     "{{ ['b','A','a']|unique|list }}{{ [3,1,2]|sort(reverse=true) }}{{ x|dictsort }}{{ x|dictsort(by='value') }}",
     R"({"x": {"b": 1, "A": 3, "a": 2}})"},
    {"{{ 'ab\ncd'|indent(2) }}|{{ 'ab\ncd'|indent(2, true) }}|{{ 'ab\n\ncd\n'|indent(2) }}|"
     "{{ 'ab\n\ncd'|indent(2, blank=true) }}|{{ 'x\ny'|indent('> ') }}",
     "{}"},
    {"{{ x|map(attribute='a')|list }}{{ x|map('string')|join(',') }}{{ x|map(attribute='z', default=0)|list }}"
     "{{ ['a','b']|map('upper')|list }}",
     R"({"x": [{"a": 1}, {"a": 2}]})"},
    {"{{ x|selectattr('a', 'equalto', 1)|list }}{{ x|selectattr('b')|list }}{{ x|rejectattr('b')|list }}"
     "{{ x|selectattr('b', 'defined')|list|length }}{{ [1,2,3,4]|select('odd')|list }}{{ [0,1,'',2]|select|list }}"
     "{{ [1,2,3]|reject('gt', 1)|list }}{{ x|selectattr('a', '==', 2)|list }}",
     R"({"x": [{"a": 1}, {"a": 2, "b": true}]})"},
    {"{{ 1.0|int }}{{ '3'|int }}{{ 'x'|int }}{{ '2.5'|int }}{{ '2.5'|float }}{{ 2.567|round(2) }}{{ 2.5|round }}"
     "{{ 3.5|round }}{{ 2|round }}{{ 2.7|round(0, 'floor') }}{{ -3|abs }}{{ 'a b c'|wordcount }}{{ '0x1A'|int(0, 16) "
     "}}",
     "{}"},
    {"{{ x|items|list }}{{ x|list }}{{ x|string }}{{ x|length }}{{ 'abc'|list }}{{ 'abc'|first }}{{ [1,2]|last }}"
     "{{ []|first is defined }}{{ [1,2,3]|sum }}{{ [1,2,3]|reverse|list }}{{ 'abc'|reverse }}",
     R"({"x": {"a": 1, "b": 2}})"},
    {"{{ 'a-b-c'|replace('-', '+') }}{{ 'aaa'|replace('a', 'b', 2) }}{{ [1, 'x', none]|join('|') }}"
     "{{ x|join(', ', attribute='n') }}{{ [[1,2],[3]]|batch(2)|list }}",
     R"({"x": [{"n": "p"}, {"n": "q"}]})"},
    {"{{ 5|items|list }}", "{}"},
    // tests
    {"{{ 'a' is lower }}{{ 'A' is upper }}{{ none is none }}{{ 3 is divisibleby 3 }}{{ none is sameas none }}"
     "{{ x is mapping }}{{ x is iterable }}{{ x is sequence }}{{ 1 is number }}{{ true is number }}"
     "{{ true is integer }}{{ 1 is integer }}{{ 1.0 is float }}{{ true is boolean }}{{ 0 is false }}{{ false is false "
     "}}"
     "{{ 'x' is string }}{{ 3 is odd }}{{ 4 is even }}{{ 1 is eq 1 }}{{ 2 is gt 1 }}{{ 2 is in [1,2] }}"
     "{{ none is not none }}{{ range is callable }}{{ x is not defined }}{{ 'upper' is filter }}{{ 'odd' is test }}",
     R"({"x": {"a": 1}})"},
    // string methods
    {"{{ 'a,b,,c'.split(',') }}{{ ' a  b '.split() }}{{ 'a b c'.split(' ', 1) }}{{ 'a b c'.rsplit(' ', 1) }}"
     "{{ 'a b  c '.rsplit(none, 1) }}{{ 'l1\nl2\r\nl3'.splitlines() }}{{ 'x'.split('x') }}",
     "{}"},
    {"{{ 'Hello World'.title() }}{{ 'hello WORLD'.capitalize() }}{{ 'hello'.upper() }}{{ 'HeLLo'.lower() }}"
     "{{ '  x  '.strip() }}|{{ '  x  '.lstrip() }}|{{ '  x  '.rstrip() }}|{{ 'xxhixx'.strip('x') }}|"
     "{{ '\\n\\nthink\\n'.strip('\\n') }}",
     "{}"},
    {"{{ 'abc'.startswith(('a','z')) }}{{ 'abc'.endswith('c') }}{{ 'a'.find('z') }}{{ 'aaa'.count('a') }}"
     "{{ 'héllo'.find('l') }}{{ 'a-b'.replace('-', '') }}{{ ','.join(['a','b']) }}{{ 'abc'.startswith('b', 1) }}"
     "{{ 'x=1'.partition('=') }}{{ 'ab'.zfill(4) }}{{ 'ab'.center(5, '*') }}{{ 'ab'.ljust(4) }}|{{ '12'.isdigit() }}",
     "{}"},
    {"{{ '{} and {:>5}|{:<4}|{:^6}|{:.2f}|{:5d}|{:+d}'.format(1, 'ab', 'x', 'mid', 3.14159, 42, 7) }}"
     "{{ '{0}{1}{0}'.format('a', 'b') }}{{ '{name}!'.format(name='n') }}{{ '{{}}'.format() }}{{ '{!r}'.format('q') }}",
     "{}"},
    {"{{ '{}'.format() }}", "{}"},
    {"{{ x.append(1) }}", R"({"x": []})"},
    {"{{ x.pop() }}", R"({"x": [1]})"},
    {"{{ d.update({'a': 1}) }}", R"({"d": {}})"},
    {"{{ x.index(2) }}{{ x.count(1) }}", R"({"x": [1, 2, 1]})"},
    // globals
    {"{{ range(3)|list }}{{ range(1,7,2)|list }}{{ range(5, 0, -2)|list }}{{ dict(a=1, b=none) }}"
     "{{ {'a':1}.get('b', 5) }}{{ {'a':1}.get('b') }}{{ namespace(x=1).x }}",
     "{}"},
    {"{{ range(100001)|length }}", "{}"},
    {"{{ strftime_now('%Y-%m-%d %d %b %Y %H:%M:%S %A %B %j %p') }}", "{}"},
    {"{{ raise_exception('custom: ' ~ 42) }}", "{}"},
    {"{% if x %}{{ raise_exception('never') }}{% endif %}ok", R"({"x": false})"},
    // errors the renderer must share
    {"{{ x|nonexistent_filter }}", "{}"},
    {"{{ x is nonexistent_test }}", "{}"},
    {"{% include 'other.jinja' %}", "{}"},
    {"{% for x in [1] %}{% endif %}", "{}"},
    {"{{ 'unterminated }}", "{}"},
    {"{% if %}x{% endif %}", "{}"},
    {"{{ a.b( }}", "{}"},
    {"{% macro f() %}{% break %}{% endmacro %}", "{}"},
    {"{{ 1 + }}", "{}"},
    {"{# unterminated comment", "{}"},
};

TEST(JinjaDifferential, LanguageSnippets) {
    REQUIRE_REFERENCE();
    std::vector<Case> cases;
    for (size_t i = 0; i < std::size(kSnippets); ++i) {
        Case c;
        c.label = "snippet " + std::to_string(i) + ": " + kSnippets[i].source;
        c.source = kSnippets[i].source;
        c.context = ojson::parse(kSnippets[i].context);
        cases.push_back(std::move(c));
    }
    const auto tallies = Compare(cases, /*require_all=*/true, [](const Case& c) { return c.label; });
    int matched = 0, both_failed = 0;
    for (const auto& [label, t] : tallies) {
        matched += t.match;
        both_failed += t.both_failed;
    }
    std::printf("snippets: %d identical, %d failing in both\n", matched, both_failed);
    EXPECT_EQ(matched + both_failed, static_cast<int>(std::size(kSnippets)));
}

// ---- without Python: errors and limits ----

std::string RenderOrError(const std::string& source, const ojson& context, const RenderOptions& options = {},
                          Error* error_out = nullptr) {
    Error error;
    auto tmpl = Template::Parse(source, &error);
    std::string out;
    if (tmpl && tmpl->Render(Value::FromJson(context), options, &out, &error)) return out;
    if (error_out) *error_out = error;
    return "ERROR: " + error.ToString();
}

TEST(Jinja, ParseErrorsNameLineAndColumn) {
    Error error;
    EXPECT_EQ(Template::Parse("line one\n{{ x }}\n  {% frobnicate %}", &error), nullptr);
    EXPECT_EQ(error.kind, Error::Kind::kSyntax);
    EXPECT_EQ(error.line, 3);
    EXPECT_EQ(error.column, 6);
    EXPECT_NE(error.message.find("frobnicate"), std::string::npos) << error.message;

    EXPECT_EQ(Template::Parse("{{ x | no_such_filter }}", &error), nullptr);
    EXPECT_EQ(error.line, 1);
    EXPECT_EQ(error.column, 8);
    EXPECT_NE(error.message.find("no_such_filter"), std::string::npos);

    EXPECT_EQ(Template::Parse("{% extends 'base.html' %}", &error), nullptr);
    EXPECT_NE(error.message.find("not supported"), std::string::npos) << error.message;

    EXPECT_EQ(Template::Parse("{% for x in y recursive %}{% endfor %}", &error), nullptr);
    EXPECT_NE(error.message.find("recursive"), std::string::npos) << error.message;

    EXPECT_EQ(Template::Parse("{% if x %}never closed", &error), nullptr);
    EXPECT_NE(error.message.find("endif"), std::string::npos) << error.message;
    EXPECT_EQ(error.ToString().rfind("line ", 0), 0u) << error.ToString();
}

TEST(Jinja, RaiseExceptionCarriesTheMessage) {
    Error error;
    RenderOrError("{{ raise_exception('Conversation roles must alternate') }}", ojson::object(), {}, &error);
    EXPECT_EQ(error.kind, Error::Kind::kRaised);
    EXPECT_EQ(error.message, "Conversation roles must alternate");
    EXPECT_EQ(error.ToString(), "Conversation roles must alternate");
}

TEST(Jinja, RuntimeErrorsAreErrorsWithAPosition) {
    Error error;
    RenderOrError("ok\n{{ 'a' + 1 }}", ojson::object(), {}, &error);
    EXPECT_EQ(error.kind, Error::Kind::kRuntime);
    EXPECT_EQ(error.line, 2);
    RenderOrError("{{ missing.attr }}", ojson::object(), {}, &error);
    EXPECT_EQ(error.kind, Error::Kind::kRuntime);
    EXPECT_NE(error.message.find("'missing' is undefined"), std::string::npos) << error.message;
}

TEST(Jinja, OutputLimit) {
    RenderOptions options;
    options.limits.max_output_bytes = 1000;
    Error error;
    RenderOrError("{% for i in range(100) %}{{ 'x' * 50 }}{% endfor %}", ojson::object(), options, &error);
    EXPECT_EQ(error.kind, Error::Kind::kLimitExceeded);
    RenderOrError("{{ 'x' * 100000000000 }}", ojson::object(), options, &error);
    EXPECT_EQ(error.kind, Error::Kind::kLimitExceeded);
    EXPECT_EQ(RenderOrError("{{ 'x' * 999 }}", ojson::object(), options).size(), 999u);
}

TEST(Jinja, IterationLimit) {
    RenderOptions options;
    options.limits.max_iterations = 10000;
    Error error;
    RenderOrError(
        "{% for i in range(100) %}{% for j in range(100) %}{% for k in range(100) %}{% endfor %}{% endfor %}"
        "{% endfor %}",
        ojson::object(), options, &error);
    EXPECT_EQ(error.kind, Error::Kind::kLimitExceeded);
    EXPECT_NE(error.message.find("iterations"), std::string::npos);
}

TEST(Jinja, RecursionLimit) {
    Error error;
    RenderOrError("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", ojson::object(), {}, &error);
    EXPECT_EQ(error.kind, Error::Kind::kLimitExceeded);
    // Deep nesting in the source is a parse error, not a stack overflow.
    EXPECT_EQ(Template::Parse("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}", &error), nullptr);
    EXPECT_NE(error.message.find("nests too deeply"), std::string::npos) << error.message;
    // So is building deeply nested values at run time.
    RenderOrError("{% set ns = namespace(x=[]) %}{% for i in range(1000) %}{% set ns.x = [ns.x] %}{% endfor %}",
                  ojson::object(), {}, &error);
    EXPECT_EQ(error.kind, Error::Kind::kLimitExceeded);
}

TEST(Jinja, StrftimeNowUsesTheInjectedClock) {
    RenderOptions options;
    options.now = FixedNow;
    EXPECT_EQ(RenderOrError("{{ strftime_now('%d %b %Y') }}", ojson::object(), options), "26 Jul 2024");
}

TEST(Jinja, DictsKeepInsertionOrder) {
    ojson ctx;
    ctx["d"] = ojson::object();
    ctx["d"]["zeta"] = 1;
    ctx["d"]["alpha"] = 2;
    EXPECT_EQ(RenderOrError("{{ d|tojson }} {% for k in d %}{{ k }} {% endfor %}", ctx),
              "{\"zeta\": 1, \"alpha\": 2} zeta alpha ");
}

TEST(Jinja, ATemplateRendersConcurrently) {
    Error error;
    auto tmpl = Template::Parse("{% for m in messages %}{{ m.content|upper }}{% endfor %}", &error);
    ASSERT_NE(tmpl, nullptr);
    std::vector<std::thread> threads;
    std::atomic<int> ok{0};
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            ojson ctx;
            ctx["messages"] = ojson::array({{{"content", "abc" + std::to_string(t)}}});
            for (int i = 0; i < 200; ++i) {
                std::string out;
                Error e;
                if (tmpl->Render(Value::FromJson(ctx), {}, &out, &e) && out == "ABC" + std::to_string(t)) ++ok;
            }
        });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(ok.load(), 800);
}

}  // namespace
}  // namespace uniattn::jinja
