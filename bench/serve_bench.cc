#include "bench/serve_bench.h"

#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>

namespace uniattn::bench {
namespace {

using nlohmann::json;

std::string UtcNow() {
    char date[32];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
    return date;
}

std::string Target(const LoadOptions& o) {
    return "http://" + o.url.host + ":" + std::to_string(o.url.port) + o.url.prefix +
           (o.endpoint == ApiEndpoint::kChat ? "/chat/completions" : "/completions");
}

std::string LoadText(const LoadOptions& o) {
    char buf[160];
    std::snprintf(buf, sizeof(buf), "rate %s req/s, concurrency %s, %s, input %d words, output %d tokens%s",
                  std::isinf(o.request_rate) ? "inf" : std::to_string(o.request_rate).c_str(),
                  o.concurrency > 0 ? std::to_string(o.concurrency).c_str() : "unlimited",
                  o.stream ? "stream" : "no stream", o.input_len, o.output_len,
                  o.range_ratio > 0 ? (" (range ratio " + std::to_string(o.range_ratio) + ")").c_str() : "");
    return buf;
}

json SummaryJson(const Summary& s) {
    return json{{"count", s.count}, {"mean", s.mean}, {"p50", s.p50}, {"p90", s.p90},
                {"p99", s.p99},     {"min", s.min},   {"max", s.max}};
}

// Raises the open-file limit to its hard maximum: every in-flight request holds a socket.
void RaiseFileLimit() {
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
}

bool ParseRate(const std::string& s, double* rate) {
    if (s == "inf" || s == "infinity") {
        *rate = std::numeric_limits<double>::infinity();
        return true;
    }
    char* end = nullptr;
    const double v = std::strtod(s.c_str(), &end);
    if (end == s.c_str() || *end != '\0' || !(v > 0)) return false;
    *rate = v;
    return true;
}

void PrintProgress(const LoadProgress& p, bool tty) {
    char line[200];
    const std::string total = p.num_total > 0 ? "/" + std::to_string(p.num_total) : "";
    std::snprintf(line, sizeof(line), "serve: %lld%s done, %lld errors, %lld in flight, %.1f tok/s%s, %.1f s",
                  static_cast<long long>(p.num_done), total.c_str(), static_cast<long long>(p.num_errors),
                  static_cast<long long>(p.num_in_flight), p.chunks_per_s, p.final ? " (mean)" : "", p.elapsed_s);
    if (tty) {
        std::fprintf(stderr, "\r\033[K%s%s", line, p.final ? "\n" : "");
    } else {
        std::fprintf(stderr, "%s\n", line);
    }
    std::fflush(stderr);
}

}  // namespace

std::string FormatReport(const LoadOptions& options, const Report& r, const std::string& label) {
    std::string out;
    char buf[256];
    auto kv = [&](const char* key, const std::string& value) {
        std::snprintf(buf, sizeof(buf), "%-34s %s\n", key, value.c_str());
        out += buf;
    };
    auto num = [](double v, int digits) {
        char b[64];
        std::snprintf(b, sizeof(b), "%.*f", digits, v);
        return std::string(b);
    };
    out += "================ serving benchmark ================\n";
    if (!label.empty()) kv("Label:", label);
    kv("Target:", Target(options));
    kv("Model:", options.model);
    kv("Load:", LoadText(options));
    kv("Successful requests:", std::to_string(r.num_ok));
    kv("Failed requests:", std::to_string(r.num_requests - r.num_ok));
    for (const auto& [kind, count] : r.errors) kv(("  " + kind + ":").c_str(), std::to_string(count));
    kv("Duration (s):", num(r.duration_s, 2));
    kv("Total input tokens:", r.input_tokens_known ? std::to_string(r.input_tokens) : "unknown (no usage)");
    kv("Total output tokens:", std::to_string(r.output_tokens));
    kv("Request throughput (req/s):", num(r.request_throughput, 2));
    kv("Output token throughput (tok/s):", num(r.output_throughput, 1));
    kv("Total token throughput (tok/s):", num(r.total_throughput, 1));
    std::snprintf(buf, sizeof(buf), "%-10s %10s %10s %10s %10s %10s\n", "(ms)", "mean", "p50", "p90", "p99", "max");
    out += buf;
    auto row = [&](const char* name, const Summary& s) {
        if (s.count == 0) {
            std::snprintf(buf, sizeof(buf), "%-10s %10s\n", name, "-");
        } else {
            std::snprintf(buf, sizeof(buf), "%-10s %10.2f %10.2f %10.2f %10.2f %10.2f\n", name, s.mean, s.p50, s.p90,
                          s.p99, s.max);
        }
        out += buf;
    };
    row("TTFT", r.ttft_ms);
    row("TPOT", r.tpot_ms);
    row("ITL", r.itl_ms);
    row("E2E", r.e2e_ms);
    out += "===================================================\n";
    return out;
}

json ReportJson(const LoadOptions& o, const Report& r, const LoadResult& result) {
    json errors = json::object();
    for (const auto& [kind, count] : r.errors) errors[kind] = count;
    json examples = json::object();
    for (const RequestResult& q : result.requests) {
        if (!q.ok && !examples.contains(q.error)) examples[q.error] = q.error_detail;
    }
    json j;
    j["target"] = Target(o);
    j["model"] = o.model;
    j["endpoint"] = o.endpoint == ApiEndpoint::kChat ? "chat" : "completions";
    j["request_rate"] = std::isinf(o.request_rate) ? json("inf") : json(o.request_rate);
    j["concurrency"] = o.concurrency;
    j["num_prompts"] = o.num_prompts;
    j["duration_limit_s"] = o.duration_s;
    j["input_len"] = o.input_len;
    j["output_len"] = o.output_len;
    j["range_ratio"] = o.range_ratio;
    j["stream"] = o.stream;
    j["ignore_eos"] = o.ignore_eos;
    j["banned_tokens"] = o.banned_tokens.size();
    j["seed"] = o.seed;
    j["num_requests"] = r.num_requests;
    j["completed"] = r.num_ok;
    j["failed"] = r.num_requests - r.num_ok;
    j["errors"] = errors;
    j["error_examples"] = examples;
    j["duration_s"] = r.duration_s;
    j["total_input_tokens"] = r.input_tokens_known ? json(r.input_tokens) : json(nullptr);
    j["total_output_tokens"] = r.output_tokens;
    j["request_throughput"] = r.request_throughput;
    j["output_throughput"] = r.output_throughput;
    j["total_token_throughput"] = r.total_throughput;
    j["ttft_ms"] = SummaryJson(r.ttft_ms);
    j["tpot_ms"] = SummaryJson(r.tpot_ms);
    j["itl_ms"] = SummaryJson(r.itl_ms);
    j["e2e_ms"] = SummaryJson(r.e2e_ms);
    j["output_tokens_per_request"] = SummaryJson(r.output_len);
    // Per request, in admission order (vLLM's JSON keeps the same lists): seconds, tokens, error kind or "".
    json start = json::array(), ttft = json::array(), e2e = json::array(), in_tok = json::array(),
         out_tok = json::array(), err = json::array();
    for (const RequestResult& q : result.requests) {
        start.push_back(q.start_s);
        ttft.push_back(q.ok ? json(q.ttft_s) : json(nullptr));
        e2e.push_back(q.e2e_s);
        in_tok.push_back(q.prompt_tokens >= 0 ? json(q.prompt_tokens) : json(nullptr));
        out_tok.push_back(q.output_tokens);
        err.push_back(q.ok ? "" : q.error);
    }
    j["requests"] = json{{"start_s", start},       {"ttft_s", ttft},           {"e2e_s", e2e},
                         {"input_tokens", in_tok}, {"output_tokens", out_tok}, {"error", err}};
    return j;
}

int ServeBenchMain(int argc, char** argv) {
    CLI::App app{
        "uniattn-bench serve: load generator for OpenAI-compatible servers (Poisson arrivals or fixed concurrency; "
        "TTFT, TPOT, ITL, E2E at p50/p90/p99; throughput; errors by kind)"};
    app.name("uniattn-bench serve");
    LoadOptions o;
    std::string base_url = "http://127.0.0.1:8000", endpoint = "completions", rate = "inf", prompts_file, json_path,
                label;
    bool no_stream = false, no_ignore_eos = false, progress = false;
    if (const char* key = std::getenv("OPENAI_API_KEY")) o.api_key = key;
    app.add_option("--base-url", base_url, "http://host:port[/prefix]; the prefix defaults to /v1")
        ->capture_default_str();
    app.add_option("--endpoint", endpoint, "completions or chat")
        ->check(CLI::IsMember({"completions", "chat"}))
        ->capture_default_str();
    app.add_option("--model", o.model, "model name to send (default: the first of GET /v1/models)");
    app.add_option("--api-key", o.api_key, "Bearer key (default: $OPENAI_API_KEY)");
    app.add_option("--request-rate", rate, "Poisson arrivals per second, or inf (all at once)")->capture_default_str();
    app.add_option("--concurrency", o.concurrency, "max requests in flight (0 = unlimited)")->capture_default_str();
    app.add_option("--num-prompts", o.num_prompts, "requests to send (0 = unlimited, needs --duration)")
        ->capture_default_str();
    app.add_option("--duration", o.duration_s, "stop admitting requests after this many seconds (0 = off)")
        ->capture_default_str();
    app.add_option("--seed", o.seed, "seed for arrivals, lengths and prompts")->capture_default_str();
    app.add_option("--input-len", o.input_len, "words per random prompt")->capture_default_str();
    app.add_option("--output-len", o.output_len, "max_tokens per request")->capture_default_str();
    app.add_option("--range-ratio", o.range_ratio, "lengths uniform in [len*(1-r), len*(1+r)]")->capture_default_str();
    app.add_option("--prompts-file", prompts_file, "prompts, one per line, used in order (instead of random words)");
    app.add_option("--temperature", o.temperature, "sampling temperature")->capture_default_str();
    app.add_option("--timeout", o.timeout_s, "seconds per request, connect to last byte")->capture_default_str();
    app.add_flag("--no-stream", no_stream, "non-streaming requests (TTFT = E2E, no ITL/TPOT)");
    app.add_flag("--no-ignore-eos", no_ignore_eos, "do not send ignore_eos: true");
    std::string ban;
    app.add_option("--ban-tokens", ban,
                   "token id ranges sent with logit_bias -100, e.g. 3-258 (Llama-2's byte tokens)");
    app.add_option("--json", json_path, "write the results and the exact arguments as JSON to this file");
    app.add_option("--label", label, "a name for this run in the table and the JSON (e.g. the server's)");
    app.add_flag("--progress", progress, "progress line on stderr even when it is not a terminal");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : 2;
    }
    if (!ParseRate(rate, &o.request_rate)) {
        std::fprintf(stderr, "uniattn-bench serve: --request-rate: expected a positive number or inf, got %s\n",
                     rate.c_str());
        return 2;
    }
    std::string error;
    if (!ParseBaseUrl(base_url, &o.url, &error)) {
        std::fprintf(stderr, "uniattn-bench serve: %s\n", error.c_str());
        return 2;
    }
    o.endpoint = endpoint == "chat" ? ApiEndpoint::kChat : ApiEndpoint::kCompletions;
    o.stream = !no_stream;
    o.ignore_eos = !no_ignore_eos;
    for (size_t at = 0; at < ban.size();) {  // "A-B,C,..."
        size_t comma = ban.find(',', at);
        if (comma == std::string::npos) comma = ban.size();
        const std::string item = ban.substr(at, comma - at);
        const size_t dash = item.find('-');
        char* end = nullptr;
        const long lo = std::strtol(item.c_str(), &end, 10);
        const long hi = dash == std::string::npos ? lo : std::strtol(item.c_str() + dash + 1, &end, 10);
        if (item.empty() || *end != '\0' || lo < 0 || hi < lo || hi - lo > 1000000) {
            std::fprintf(stderr, "uniattn-bench serve: --ban-tokens: '%s' is not an id or a range A-B\n", item.c_str());
            return 2;
        }
        for (long id = lo; id <= hi; ++id) o.banned_tokens.push_back(static_cast<int32_t>(id));
        at = comma + 1;
    }
    if (!prompts_file.empty()) {
        std::ifstream in(prompts_file);
        if (!in) {
            std::fprintf(stderr, "uniattn-bench serve: cannot open %s\n", prompts_file.c_str());
            return 2;
        }
        for (std::string line; std::getline(in, line);) {
            if (!line.empty() && line.back() == '\r') line.pop_back();
            if (!line.empty()) o.prompts.push_back(line);
        }
        if (o.prompts.empty()) {
            std::fprintf(stderr, "uniattn-bench serve: %s holds no prompts\n", prompts_file.c_str());
            return 2;
        }
    }
    if (o.model.empty()) {
        auto model = DiscoverModel(o.url, o.api_key, 30);
        if (!model.ok()) {
            std::fprintf(stderr, "uniattn-bench serve: %s (pass --model to skip the lookup)\n",
                         model.status().message().c_str());
            return 2;
        }
        o.model = *model;
    }
    RaiseFileLimit();
    const bool tty = isatty(STDERR_FILENO) != 0;
    std::function<void(const LoadProgress&)> on_progress;
    if (tty || progress) on_progress = [tty](const LoadProgress& p) { PrintProgress(p, tty); };
    const std::string date = UtcNow();
    auto result = RunLoad(o, on_progress);
    if (!result.ok()) {
        std::fprintf(stderr, "uniattn-bench serve: %s\n", result.status().message().c_str());
        return 2;
    }
    const Report report = BuildReport(result->requests, result->duration_s);
    std::fputs(FormatReport(o, report, label).c_str(), stdout);
    std::fflush(stdout);
    if (!json_path.empty()) {
        json j = ReportJson(o, report, *result);
        json args = json::array();
        for (int i = 0; i < argc; ++i) args.push_back(argv[i]);
        j["args"] = args;
        j["command"] = "uniattn-bench";
        j["date"] = date;
        j["label"] = label;
        std::ofstream out(json_path);
        out << j.dump(2) << "\n";
        if (!out) {
            std::fprintf(stderr, "uniattn-bench serve: cannot write %s\n", json_path.c_str());
            return 2;
        }
    }
    return report.num_ok > 0 ? 0 : 1;
}

}  // namespace uniattn::bench
