// uniattn-throughput: offline throughput of the engine (continuous batching over the paged KV cache).
// For each concurrency level N it submits N greedy requests at once (fixed prompt and output lengths,
// ignore_eos, distinct random prompts so the prefix cache does not short-cut them) and reports output
// tokens per second over the wall time from the first submit to the last event.
//
//   uniattn-throughput --model DIR [--concurrency 1,8,32] [--prompt-len 32] [--output-len 128]
//                      [--kv-cache-bytes B] [--max-num-seqs N] [--max-num-batched-tokens N]
//                      [--block-size 16] [--threads N] [--no-prefix-caching] [--warmup 1]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tools/cli.h"
#include "uniattn/engine.h"

namespace uniattn {
namespace {

int Fail(const Status& s) {
    std::fprintf(stderr, "uniattn-throughput: %s\n", s.message().c_str());
    return 1;
}

struct RunResult {
    int64_t output_tokens = 0;
    double wall_s = 0;
    double mean_ttft_s = 0;
    double mean_itl_s = 0;
    int64_t preemptions = 0;
    int64_t steps = 0;
    double schedule_ms = 0, forward_ms = 0, sample_ms = 0;  // per step
};

class Timings : public EngineObserver {
  public:
    void OnRequestFinished(const RequestTimings& t) override {
        ttft_sum += t.ttft_s;
        for (double x : t.inter_token_s) itl_sum += x;
        itl_count += static_cast<int64_t>(t.inter_token_s.size());
        ++finished;
    }
    void OnStep(int, int, double schedule_s, double forward_s, double sample_s) override {
        schedule_sum += schedule_s;
        forward_sum += forward_s;
        sample_sum += sample_s;
        ++steps;
    }
    double ttft_sum = 0, itl_sum = 0, schedule_sum = 0, forward_sum = 0, sample_sum = 0;
    int64_t itl_count = 0, finished = 0, steps = 0;
};

StatusOr<RunResult> Run(Engine& engine, Timings& timings, int concurrency, int prompt_len, int output_len,
                        uint64_t seed) {
    const int vocab = engine.model_info().config.vocab_size;
    std::mt19937_64 rng(seed);
    std::vector<GenerationRequest> requests(concurrency);
    for (GenerationRequest& r : requests) {
        r.prompt_ids.push_back(engine.model_info().config.bos_token_id);
        while (static_cast<int>(r.prompt_ids.size()) < prompt_len) {
            r.prompt_ids.push_back(static_cast<int32_t>(3 + rng() % static_cast<uint64_t>(vocab - 3)));
        }
        r.max_tokens = output_len;
        r.temperature = 0;
        r.ignore_eos = true;
        r.detokenize = false;
    }
    const EngineStats before = engine.Stats();
    timings = Timings();
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<std::shared_ptr<RequestHandle>> handles;
    for (GenerationRequest& r : requests) {
        auto h = engine.Submit(std::move(r));
        if (!h.ok()) return h.status();
        handles.push_back(*h);
    }
    RunResult result;
    for (auto& h : handles) {
        RequestEvent e;
        while (!h->closed()) {
            if (!h->Next(&e, std::chrono::milliseconds(100))) continue;
            if (e.kind == RequestEvent::Kind::kToken) ++result.output_tokens;
            if (e.kind == RequestEvent::Kind::kError) return e.error;
        }
    }
    result.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    while (!engine.Idle()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const EngineStats after = engine.Stats();
    result.preemptions = after.num_preemptions - before.num_preemptions;
    result.steps = after.steps - before.steps;
    if (timings.finished > 0) result.mean_ttft_s = timings.ttft_sum / static_cast<double>(timings.finished);
    if (timings.itl_count > 0) result.mean_itl_s = timings.itl_sum / static_cast<double>(timings.itl_count);
    if (timings.steps > 0) {
        result.schedule_ms = timings.schedule_sum * 1e3 / static_cast<double>(timings.steps);
        result.forward_ms = timings.forward_sum * 1e3 / static_cast<double>(timings.steps);
        result.sample_ms = timings.sample_sum * 1e3 / static_cast<double>(timings.steps);
    }
    return result;
}

int Main(int argc, char** argv) {
    EngineConfig c;
    std::string concurrency = "1,8,32";
    int prompt_len = 32, output_len = 128, max_seqs = 0, warmup = 1;
    bool no_prefix_caching = false;
    c.backend = "cpu";
    c.num_threads = 0;
    c.block_size = 16;
    c.kv_cache_bytes = 0;
    c.max_num_batched_tokens = 512;
    CLI::App app{
        "Offline throughput of the engine: for each concurrency level N, N greedy requests at once; output "
        "tokens per second from the first submit to the last event.",
        "uniattn-throughput"};
    auto* model_opt = app.add_option("--model", c.model_dir, "model directory; required");
    app.add_option("--concurrency", concurrency, "comma-separated concurrency levels")->capture_default_str();
    app.add_option("--prompt-len", prompt_len, "prompt tokens per request")->capture_default_str();
    app.add_option("--output-len", output_len, "output tokens per request")->capture_default_str();
    app.add_option("--kv-cache-bytes", c.kv_cache_bytes, "KV cache bytes (0: the engine's default)")
        ->capture_default_str();
    auto* max_seqs_opt =
        app.add_option("--max-num-seqs", max_seqs, "sequences per step at most (default: the highest level)");
    app.add_option("--max-num-batched-tokens", c.max_num_batched_tokens, "tokens per step at most")
        ->capture_default_str();
    app.add_option("--block-size", c.block_size, "KV block size in tokens")->capture_default_str();
    app.add_option("--threads", c.num_threads, "CPU threads (0: all)")->capture_default_str();
    app.add_option("--warmup", warmup, "warm-up rounds before timing")->capture_default_str();
    app.add_option("--backend", c.backend, "backend to run on")->capture_default_str();
    app.add_flag("--no-prefix-caching", no_prefix_caching, "turn the prefix cache off");
    if (auto code = ParseCommandLine(app, argc, argv, "uniattn-throughput")) return *code;
    if (!model_opt->count()) {
        std::fprintf(stderr,
                     "usage: uniattn-throughput --model DIR [--concurrency 1,8,32] [--prompt-len 32] "
                     "[--output-len 128]\n"
                     "       [--kv-cache-bytes B] [--max-num-seqs N] [--max-num-batched-tokens N] [--block-size 16]\n"
                     "       [--threads N] [--no-prefix-caching] [--warmup 1] [--backend cpu]\n");
        return 2;
    }
    std::vector<int> levels;
    {
        std::stringstream ss(concurrency);
        std::string item;
        while (std::getline(ss, item, ',')) {
            const int n = std::atoi(item.c_str());
            if (n < 1) return Fail(InvalidArgument("--concurrency takes positive integers, e.g. 1,8,32"));
            levels.push_back(n);
        }
    }
    if (prompt_len < 1 || output_len < 1) return Fail(InvalidArgument("--prompt-len and --output-len must be >= 1"));
    c.max_num_seqs = max_seqs_opt->count() ? max_seqs : *std::max_element(levels.begin(), levels.end());
    c.enable_prefix_caching = !no_prefix_caching;
    c.max_queued_requests = 1 << 20;
    auto engine = Engine::Create(c);
    if (!engine.ok()) return Fail(engine.status());
    Engine& e = **engine;
    auto timings = std::make_shared<Timings>();
    e.SetObserver(timings);

    const ModelInfo& info = e.model_info();
    const EngineStats s0 = e.Stats();
    const int64_t seq_tokens = int64_t{prompt_len} + output_len;
    std::printf(
        "model %s: %d layers (%d reuse), KV %lld B/token (dense %lld), pool %lld blocks x %d = %lld tokens "
        "(%.1f MiB): %lld sequences of %lld tokens fit\n",
        info.name.c_str(), info.config.num_layers, info.config.num_reuse_layers(),
        static_cast<long long>(info.kv_bytes_per_token), static_cast<long long>(info.kv_bytes_per_token_dense),
        static_cast<long long>(s0.num_blocks_total), info.block_size,
        static_cast<long long>(s0.num_blocks_total * info.block_size), s0.kv_bytes_total / 1048576.0,
        static_cast<long long>(s0.num_blocks_total / ((seq_tokens - 1 + info.block_size - 1) / info.block_size)),
        static_cast<long long>(seq_tokens));
    for (int64_t i = 0; i < warmup; ++i) {
        auto w = Run(e, *timings, 1, prompt_len, 8, 999);
        if (!w.ok()) return Fail(w.status());
    }
    std::printf("%11s %9s %8s %12s %10s %9s %11s %6s %11s %10s %9s\n", "concurrency", "out_tok", "wall_s", "out_tok/s",
                "ttft_ms", "itl_ms", "preemptions", "steps", "sched_ms", "fwd_ms", "sample_ms");
    for (int n : levels) {
        auto r = Run(e, *timings, n, prompt_len, output_len, 1000 + n);
        if (!r.ok()) return Fail(r.status());
        std::printf("%11d %9lld %8.2f %12.1f %10.1f %9.2f %11lld %6lld %11.3f %10.2f %9.3f\n", n,
                    static_cast<long long>(r->output_tokens), r->wall_s, r->output_tokens / r->wall_s,
                    r->mean_ttft_s * 1e3, r->mean_itl_s * 1e3, static_cast<long long>(r->preemptions),
                    static_cast<long long>(r->steps), r->schedule_ms, r->forward_ms, r->sample_ms);
        std::fflush(stdout);
    }
    return 0;
}

}  // namespace
}  // namespace uniattn

int main(int argc, char** argv) { return uniattn::Main(argc, argv); }
