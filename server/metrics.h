// Prometheus metrics with vLLM's names under the `uniattn:` prefix (label model_name), plus UniAttn's own:
// KV bytes in use and per token (unified and dense) and step time by phase. Request histograms are fed by
// the engine's observer (engine thread; prometheus-cpp updates are short and lock-free or briefly locked);
// gauges and engine counters are refreshed from Engine::Stats() at each scrape.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <mutex>
#include <string>

#include "uniattn/engine.h"

namespace uniattn::server {

class Metrics {
  public:
    // `max_model_len` sizes the token-count histograms' buckets (1-2-5 up to it, as vLLM does).
    Metrics(const std::string& model_name, int max_model_len);

    // The observer to hand to Engine::SetObserver (it forwards here; Metrics must outlive the engine).
    std::shared_ptr<EngineObserver> MakeObserver();
    void SetModelInfo(const ModelInfo& info);

    // Refreshes gauges and counters from `engine` (may be null while loading) and serialises every family
    // in the Prometheus text format.
    std::string Render(const Engine* engine);

    // Observer callbacks (engine thread).
    void OnRequestFinished(const RequestTimings& t);
    void OnStep(int num_prefill_tokens, int num_decode_tokens, double schedule_s, double forward_s, double sample_s);

    // Server-side counts.
    void CountHttpResponse(int status);
    void CountClientDisconnect();

  private:
    void RefreshFromStats(const EngineStats& s);

    std::shared_ptr<prometheus::Registry> registry_;
    int block_size_ = 0;  // from SetModelInfo
    prometheus::Labels labels_;

    prometheus::Gauge* num_requests_running_;
    prometheus::Gauge* num_requests_waiting_;
    prometheus::Gauge* kv_cache_usage_perc_;
    prometheus::Gauge* kv_cache_bytes_;
    prometheus::Gauge* kv_cache_bytes_total_;
    prometheus::Gauge* kv_cache_blocks_used_;
    prometheus::Gauge* kv_cache_blocks_total_;
    prometheus::Gauge* kv_cache_blocks_cached_;
    prometheus::Gauge* kv_cache_tokens_total_;
    prometheus::Gauge* kv_bytes_per_token_;
    prometheus::Gauge* kv_bytes_per_token_dense_;
    prometheus::Gauge* engine_seconds_since_last_step_;

    prometheus::Counter* prompt_tokens_total_;
    prometheus::Counter* generation_tokens_total_;
    prometheus::Counter* num_preemptions_total_;
    prometheus::Counter* prefix_cache_queries_total_;
    prometheus::Counter* prefix_cache_hits_total_;
    prometheus::Counter* engine_steps_total_;
    prometheus::Counter* success_stop_;
    prometheus::Counter* success_length_;
    prometheus::Counter* success_abort_;
    prometheus::Counter* request_failure_total_;
    prometheus::Counter* client_disconnects_total_;
    prometheus::Family<prometheus::Counter>* http_responses_;

    prometheus::Histogram* ttft_;
    prometheus::Histogram* itl_;
    prometheus::Histogram* e2e_;
    prometheus::Histogram* queue_time_;
    prometheus::Histogram* prefill_time_;
    prometheus::Histogram* decode_time_;
    prometheus::Histogram* prompt_tokens_;
    prometheus::Histogram* generation_tokens_;
    prometheus::Histogram* iteration_tokens_;
    prometheus::Histogram* step_schedule_;
    prometheus::Histogram* step_forward_;
    prometheus::Histogram* step_sample_;

    std::mutex stats_mu_;  // the last Stats() snapshot, for counter deltas
    EngineStats last_;
};

}  // namespace uniattn::server
