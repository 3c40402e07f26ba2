#include "server/metrics.h"

#include <prometheus/text_serializer.h>

#include <algorithm>

namespace uniattn::server {
namespace {

using prometheus::Histogram;

// vLLM's buckets (vllm/engine/metrics.py), with 0.001, 0.002 and 0.005 added to inter-token latency
// because decode here can be sub-10 ms.
const Histogram::BucketBoundaries kTtftBuckets = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                                  0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                                  20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
const Histogram::BucketBoundaries kItlBuckets = {0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,  0.15, 0.2,  0.3,
                                                 0.4,   0.5,   0.75,  1.0,  2.5,   5.0,  7.5,   10.0, 20.0, 40.0, 80.0};
const Histogram::BucketBoundaries kLatencyBuckets = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                                                     5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                                                     60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
const Histogram::BucketBoundaries kIterationTokenBuckets = {1,   8,    16,   32,   64,   128,  256,
                                                            512, 1024, 2048, 4096, 8192, 16384};
const Histogram::BucketBoundaries kStepBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                                  0.025,  0.05,    0.1,    0.25,  0.5,    1.0,   2.5};

// 1, 2, 5, 10, 20, 50, ... up to `max` (vLLM's build_1_2_5_buckets).
Histogram::BucketBoundaries Buckets125(int max) {
    Histogram::BucketBoundaries out;
    for (double exp = 1;; exp *= 10) {
        for (double m : {1.0, 2.0, 5.0}) {
            if (m * exp > std::max(max, 1)) return out;
            out.push_back(m * exp);
        }
    }
}

class ObserverAdapter final : public EngineObserver {
  public:
    explicit ObserverAdapter(Metrics* m) : m_(m) {}
    void OnRequestFinished(const RequestTimings& t) override { m_->OnRequestFinished(t); }
    void OnStep(int p, int d, double a, double b, double c) override { m_->OnStep(p, d, a, b, c); }

  private:
    Metrics* m_;
};

void AddDelta(prometheus::Counter* c, int64_t now, int64_t before) {
    if (now > before) c->Increment(static_cast<double>(now - before));
}

}  // namespace

Metrics::Metrics(const std::string& model_name, int max_model_len)
    : registry_(std::make_shared<prometheus::Registry>()), labels_{{"model_name", model_name}} {
    auto gauge = [&](const char* name, const char* help) {
        return &prometheus::BuildGauge().Name(name).Help(help).Register(*registry_).Add(labels_);
    };
    auto counter = [&](const char* name, const char* help) {
        return &prometheus::BuildCounter().Name(name).Help(help).Register(*registry_).Add(labels_);
    };
    auto histogram = [&](const char* name, const char* help, const Histogram::BucketBoundaries& b) {
        return &prometheus::BuildHistogram().Name(name).Help(help).Register(*registry_).Add(labels_, b);
    };

    num_requests_running_ = gauge("uniattn:num_requests_running", "Number of requests in the running batch.");
    num_requests_waiting_ = gauge("uniattn:num_requests_waiting", "Number of requests waiting to be scheduled.");
    kv_cache_usage_perc_ = gauge("uniattn:kv_cache_usage_perc", "KV-cache usage: 1 means 100 percent of blocks used.");
    kv_cache_bytes_ = gauge("uniattn:kv_cache_bytes", "KV-cache bytes held by running sequences.");
    kv_cache_bytes_total_ = gauge("uniattn:kv_cache_bytes_total", "Size of the KV-cache pool in bytes.");
    kv_cache_blocks_used_ = gauge("uniattn:kv_cache_blocks_used", "KV blocks owned by running sequences.");
    kv_cache_blocks_total_ = gauge("uniattn:kv_cache_blocks_total", "Size of the KV-cache pool in blocks.");
    kv_cache_blocks_cached_ =
        gauge("uniattn:kv_cache_blocks_cached", "Free KV blocks still holding reusable prefix-cache content.");
    kv_cache_tokens_total_ = gauge("uniattn:kv_cache_tokens_total",
                                   "Size of the KV-cache pool in tokens (blocks x block size): what an fp8 KV cache or "
                                   "UniAttn's K-less reuse layers buy.");
    kv_bytes_per_token_ = gauge("uniattn:kv_bytes_per_token", "KV bytes per token with this model's UniAttn layout.");
    kv_bytes_per_token_dense_ = gauge("uniattn:kv_bytes_per_token_dense",
                                      "KV bytes per token of the same shape with every layer keeping K and V.");
    engine_seconds_since_last_step_ =
        gauge("uniattn:engine_seconds_since_last_step", "Seconds since the engine loop last went round.");

    prompt_tokens_total_ = counter("uniattn:prompt_tokens_total", "Number of prefill tokens processed.");
    generation_tokens_total_ = counter("uniattn:generation_tokens_total", "Number of generation tokens processed.");
    num_preemptions_total_ = counter("uniattn:num_preemptions_total", "Cumulative number of preemptions.");
    prefix_cache_queries_total_ = counter("uniattn:prefix_cache_queries_total", "Prefix-cache queries, in tokens.");
    prefix_cache_hits_total_ = counter("uniattn:prefix_cache_hits_total", "Prefix-cache hits, in tokens.");
    engine_steps_total_ = counter("uniattn:engine_steps_total", "Engine scheduler steps.");
    auto& success = prometheus::BuildCounter()
                        .Name("uniattn:request_success_total")
                        .Help("Count of finished requests, by finish reason.")
                        .Register(*registry_);
    auto with_reason = [&](const char* reason) {
        prometheus::Labels l = labels_;
        l["finished_reason"] = reason;
        return &success.Add(l);
    };
    success_stop_ = with_reason("stop");
    success_length_ = with_reason("length");
    success_abort_ = with_reason("abort");
    request_failure_total_ = counter("uniattn:request_failure_total", "Requests that ended with an engine error.");
    client_disconnects_total_ =
        counter("uniattn:client_disconnects_total", "Requests cancelled because their client went away.");
    http_responses_ = &prometheus::BuildCounter()
                           .Name("uniattn:http_responses_total")
                           .Help("HTTP responses, by status code.")
                           .Register(*registry_);

    ttft_ =
        histogram("uniattn:time_to_first_token_seconds", "Histogram of time to first token in seconds.", kTtftBuckets);
    itl_ =
        histogram("uniattn:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", kItlBuckets);
    e2e_ = histogram("uniattn:e2e_request_latency_seconds", "Histogram of end-to-end request latency in seconds.",
                     kLatencyBuckets);
    queue_time_ = histogram("uniattn:request_queue_time_seconds", "Histogram of time spent waiting in the queue.",
                            kLatencyBuckets);
    prefill_time_ = histogram("uniattn:request_prefill_time_seconds",
                              "Histogram of time from first scheduled to first token.", kLatencyBuckets);
    decode_time_ = histogram("uniattn:request_decode_time_seconds", "Histogram of time from first token to finish.",
                             kLatencyBuckets);
    prompt_tokens_ =
        histogram("uniattn:request_prompt_tokens", "Number of prefill tokens per request.", Buckets125(max_model_len));
    generation_tokens_ = histogram("uniattn:request_generation_tokens", "Number of generation tokens per request.",
                                   Buckets125(max_model_len));
    iteration_tokens_ =
        histogram("uniattn:iteration_tokens_total", "Histogram of tokens per engine step.", kIterationTokenBuckets);
    auto& step = prometheus::BuildHistogram()
                     .Name("uniattn:step_duration_seconds")
                     .Help("Engine step time by phase (schedule, forward, sample).")
                     .Register(*registry_);
    auto phase = [&](const char* p) {
        prometheus::Labels l = labels_;
        l["phase"] = p;
        return &step.Add(l, kStepBuckets);
    };
    step_schedule_ = phase("schedule");
    step_forward_ = phase("forward");
    step_sample_ = phase("sample");
}

std::shared_ptr<EngineObserver> Metrics::MakeObserver() { return std::make_shared<ObserverAdapter>(this); }

void Metrics::SetModelInfo(const ModelInfo& info) {
    block_size_ = info.block_size;
    kv_bytes_per_token_->Set(static_cast<double>(info.kv_bytes_per_token));
    kv_bytes_per_token_dense_->Set(static_cast<double>(info.kv_bytes_per_token_dense));
}

void Metrics::OnRequestFinished(const RequestTimings& t) {
    if (t.errored) {
        request_failure_total_->Increment();
    } else {
        switch (t.finish_reason) {
            case FinishReason::kStop:
                success_stop_->Increment();
                break;
            case FinishReason::kLength:
                success_length_->Increment();
                break;
            case FinishReason::kAbort:
                success_abort_->Increment();
                break;
        }
    }
    e2e_->Observe(t.e2e_s);
    queue_time_->Observe(t.queue_s);
    prompt_tokens_->Observe(t.prompt_tokens);
    generation_tokens_->Observe(t.generation_tokens);
    if (t.generation_tokens > 0) {
        ttft_->Observe(t.ttft_s);
        prefill_time_->Observe(t.prefill_s);
        decode_time_->Observe(t.decode_s);
    }
    for (double s : t.inter_token_s) itl_->Observe(s);
}

void Metrics::OnStep(int num_prefill_tokens, int num_decode_tokens, double schedule_s, double forward_s,
                     double sample_s) {
    iteration_tokens_->Observe(num_prefill_tokens + num_decode_tokens);
    step_schedule_->Observe(schedule_s);
    step_forward_->Observe(forward_s);
    step_sample_->Observe(sample_s);
}

void Metrics::CountHttpResponse(int status) {
    prometheus::Labels l = labels_;
    l["code"] = std::to_string(status);
    http_responses_->Add(l).Increment();
}

void Metrics::CountClientDisconnect() { client_disconnects_total_->Increment(); }

void Metrics::RefreshFromStats(const EngineStats& s) {
    num_requests_running_->Set(s.num_running);
    num_requests_waiting_->Set(s.num_waiting);
    kv_cache_usage_perc_->Set(s.num_blocks_total > 0
                                  ? static_cast<double>(s.num_blocks_used) / static_cast<double>(s.num_blocks_total)
                                  : 0.0);
    kv_cache_bytes_->Set(static_cast<double>(s.kv_bytes_used));
    kv_cache_bytes_total_->Set(static_cast<double>(s.kv_bytes_total));
    kv_cache_blocks_used_->Set(static_cast<double>(s.num_blocks_used));
    kv_cache_blocks_total_->Set(static_cast<double>(s.num_blocks_total));
    kv_cache_tokens_total_->Set(static_cast<double>(s.num_blocks_total) * block_size_);
    kv_cache_blocks_cached_->Set(static_cast<double>(s.num_blocks_cached));
    engine_seconds_since_last_step_->Set(s.seconds_since_last_step);
    AddDelta(prompt_tokens_total_, s.prompt_tokens, last_.prompt_tokens);
    AddDelta(generation_tokens_total_, s.generation_tokens, last_.generation_tokens);
    AddDelta(num_preemptions_total_, s.num_preemptions, last_.num_preemptions);
    AddDelta(prefix_cache_queries_total_, s.prefix_cache_queries, last_.prefix_cache_queries);
    AddDelta(prefix_cache_hits_total_, s.prefix_cache_hits, last_.prefix_cache_hits);
    AddDelta(engine_steps_total_, s.steps, last_.steps);
    last_ = s;
}

std::string Metrics::Render(const Engine* engine) {
    if (engine) {
        // One scrape at a time, so counter deltas are taken between consecutive snapshots.
        std::lock_guard<std::mutex> lock(stats_mu_);
        RefreshFromStats(engine->Stats());
    }
    return prometheus::TextSerializer().Serialize(registry_->Collect());
}

}  // namespace uniattn::server
