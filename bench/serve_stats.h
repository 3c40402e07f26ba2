// The pure parts of `uniattn-bench serve` (bench/serve_bench.h): statistics, the arrival schedule, length
// sampling, prompt building and an incremental Server-Sent-Events parser. No I/O, no Boost: unit-tested in
// tests/server/serve_bench_test.cc. Not thread-safe; each object belongs to one thread.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace uniattn::bench {

// The p-th percentile (0..100) of `values` with linear interpolation between closest ranks (numpy's
// default, which vLLM's benchmark_serving uses). Empty input gives 0. `values` need not be sorted.
double Percentile(std::vector<double> values, double p);

// mean, p50, p90, p99 (and min/max) of one metric, in the unit of the input.
struct Summary {
    int64_t count = 0;
    double mean = 0, p50 = 0, p90 = 0, p99 = 0, min = 0, max = 0;
};
Summary Summarize(const std::vector<double>& values);

// Deterministic across standard libraries (std::*_distribution is not): a 64-bit Mersenne twister read
// through our own transforms.
class Rng {
  public:
    explicit Rng(uint64_t seed) : engine_(seed) {}
    double Uniform();                            // [0, 1)
    int64_t UniformInt(int64_t lo, int64_t hi);  // [lo, hi], lo <= hi
    double Exponential(double rate);             // mean 1 / rate

  private:
    std::mt19937_64 engine_;
};

// Request arrival times in seconds since the start: the first at 0, then gaps drawn from Exp(rate) (a
// Poisson process of `rate` requests per second). rate = +inf (or <= 0) sends everything at 0.
class ArrivalSchedule {
  public:
    ArrivalSchedule(double rate, uint64_t seed) : rate_(rate), rng_(seed) {}
    double Next();

  private:
    double rate_;
    Rng rng_;
    double t_ = 0;
    bool first_ = true;
};

// A length uniform in [floor(len * (1 - ratio)), ceil(len * (1 + ratio))], at least 1. ratio 0 = fixed.
int SampleLength(int len, double range_ratio, Rng& rng);

// A prompt of `num_words` words drawn from a small built-in vocabulary of common English words, each one
// SentencePiece token in the Llama tokenizers (so roughly `num_words` tokens plus BOS there; other
// tokenizers differ: the report gives the server-counted prompt tokens).
std::string RandomWordsPrompt(int num_words, Rng& rng);

// Incremental SSE parser (the WHATWG event-stream rules that OpenAI-compatible servers use): feed bytes as
// they arrive, split anywhere; each complete event's data (its `data:` lines joined by '\n') is appended
// to `events`. Comments (`: ping`) and other fields are skipped; "\n", "\r\n" and "\r" all end lines.
class SseParser {
  public:
    void Feed(std::string_view bytes, std::vector<std::string>* events);
    // Bytes of an unfinished line or event still buffered (non-zero at the end of a stream = truncated).
    size_t pending() const { return line_.size() + data_.size(); }

  private:
    void Line(std::string_view line, std::vector<std::string>* events);
    std::string line_;
    std::string data_;
    bool last_was_cr_ = false;
};

// `http://host[:port][/prefix]` (plain HTTP only). Without a path the prefix is "/v1".
struct BaseUrl {
    std::string host;
    uint16_t port = 80;
    std::string prefix = "/v1";
};
bool ParseBaseUrl(std::string_view url, BaseUrl* out, std::string* error);

// What one request measured. Times in seconds; `start_s` from the start of the run, the others from the
// request's own start (just before it connects).
struct RequestResult {
    bool ok = false;
    std::string error;         // the kind when !ok: connect, timeout, io, http_<status>, malformed, stream_error
    std::string error_detail;  // the first bytes of an error body or the exception text
    int input_len = 0;         // words (or the prompts-file line) sent
    int max_tokens = 0;
    double start_s = 0;
    double ttft_s = 0;  // first content chunk (stream), or the whole response (no stream)
    double e2e_s = 0;
    std::vector<double> itl_s;   // every gap between consecutive content chunks
    int64_t prompt_tokens = -1;  // from `usage`; -1 when the server gave none
    int64_t output_tokens = 0;   // `usage.completion_tokens` when given, else content chunks
    int64_t content_chunks = 0;
};

// The figures users compare (vLLM's benchmark_serving names): throughput over the whole run and latency
// distributions in milliseconds over the successful requests.
struct Report {
    int64_t num_requests = 0;
    int64_t num_ok = 0;
    std::map<std::string, int64_t> errors;  // kind -> count
    double duration_s = 0;
    int64_t input_tokens = 0;  // server-counted, over requests whose usage said so
    int64_t output_tokens = 0;
    bool input_tokens_known = false;
    double request_throughput = 0;  // successful requests / s
    double output_throughput = 0;   // output tokens / s
    double total_throughput = 0;    // (input + output) tokens / s
    Summary ttft_ms, tpot_ms, itl_ms, e2e_ms;
    Summary output_len;  // output tokens per request
};
Report BuildReport(const std::vector<RequestResult>& results, double duration_s);

}  // namespace uniattn::bench
