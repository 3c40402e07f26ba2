// The load generator behind `uniattn-bench serve`: sends OpenAI-compatible completion or chat requests over
// HTTP/1.1 (Boost.Beast) from one asio io_context on the calling thread (no thread per request), one TCP
// connection per request, and measures each one (bench/serve_stats.h: RequestResult).
//
// Arrivals: a Poisson process at `request_rate` (first request at 0; +inf sends all at once), admitted
// while fewer than `concurrency` requests are in flight (0 = no limit). With rate +inf and a concurrency
// limit that is a closed loop of `concurrency` clients. A request's time starts when it is admitted, not
// when it arrived (vLLM's benchmark_serving does the same).
#pragma once

#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "bench/serve_stats.h"
#include "uniattn/status.h"

namespace uniattn::bench {

enum class ApiEndpoint {
    kCompletions,  // POST {prefix}/completions, `prompt`, content in choices[0].text
    kChat,         // POST {prefix}/chat/completions, one user message, content in choices[0].delta.content
};

struct LoadOptions {
    BaseUrl url;
    ApiEndpoint endpoint = ApiEndpoint::kCompletions;
    std::string model;    // required here; the CLI asks GET /v1/models when the user gave none
    std::string api_key;  // sent as `Authorization: Bearer` when non-empty
    double request_rate = std::numeric_limits<double>::infinity();  // requests per second
    int concurrency = 0;                                            // max in flight; 0 = unlimited
    int64_t num_prompts = 100;  // 0 = unlimited (then duration_s must bound the run)
    double duration_s = 0;      // > 0: no request is admitted after this many seconds; in-flight ones finish
    uint64_t seed = 0;
    int input_len = 128;               // words per random prompt
    int output_len = 128;              // max_tokens
    double range_ratio = 0;            // both lengths uniform in [len * (1 - r), len * (1 + r)]
    std::vector<std::string> prompts;  // used in order (cycling) instead of random words when non-empty
    bool stream = true;
    bool ignore_eos = true;  // so that every request produces max_tokens (servers that ignore it stop early)
    double temperature = 0;
    double timeout_s = 600;  // per request, connect to last byte
    // Token ids sent with logit_bias -100 (never sampled): e.g. the byte tokens of a random-weight model, whose
    // outputs are otherwise not valid UTF-8 (llama.cpp's server answers those with an error event).
    std::vector<int32_t> banned_tokens;
};

struct LoadProgress {
    int64_t num_done = 0;
    int64_t num_total = 0;  // 0 = unknown (a duration-bound run)
    int64_t num_errors = 0;
    int64_t num_in_flight = 0;
    double elapsed_s = 0;
    double chunks_per_s = 0;  // content chunks (streaming: ~tokens) over the last interval
    bool final = false;
};

struct LoadResult {
    std::vector<RequestResult> requests;  // in admission order
    double duration_s = 0;                // first admission to last completion
};

// Runs the load; blocks until every admitted request has finished. `progress` (optional) is called about
// once per second and once at the end, on the calling thread. Errors of single requests are results, not a
// failed Status; a Status means the run could not start (unresolvable host, invalid options).
StatusOr<LoadResult> RunLoad(const LoadOptions& options, const std::function<void(const LoadProgress&)>& progress = {});

// GET {prefix}/models and the first model's id.
StatusOr<std::string> DiscoverModel(const BaseUrl& url, const std::string& api_key, double timeout_s);

// The JSON body of one request (exposed for tests).
std::string RequestBody(const LoadOptions& options, const std::string& prompt, int max_tokens);

}  // namespace uniattn::bench
