#include "server/metrics.h"

#include <gtest/gtest.h>

#include "tests/server/fake_engine.h"

namespace uniattn::server {
namespace {

TEST(MetricsTest, NamesBucketsAndCounters) {
    Metrics m("m", 256);
    ModelInfo info;
    info.kv_bytes_per_token = 100;
    info.kv_bytes_per_token_dense = 200;
    m.SetModelInfo(info);
    RequestTimings t;
    t.finish_reason = FinishReason::kLength;
    t.generation_tokens = 3;
    t.prompt_tokens = 5;
    t.ttft_s = 0.01;
    t.e2e_s = 0.02;
    t.inter_token_s = {0.0015, 0.004};
    m.OnRequestFinished(t);
    m.OnStep(5, 1, 0.0001, 0.002, 0.0001);
    const std::string text = m.Render(nullptr);
    for (const char* name : {"uniattn:num_requests_running",
                             "uniattn:num_requests_waiting",
                             "uniattn:kv_cache_usage_perc",
                             "uniattn:prompt_tokens_total",
                             "uniattn:generation_tokens_total",
                             "uniattn:request_success_total",
                             "uniattn:num_preemptions_total",
                             "uniattn:prefix_cache_queries_total",
                             "uniattn:prefix_cache_hits_total",
                             "uniattn:time_to_first_token_seconds_bucket",
                             "uniattn:inter_token_latency_seconds_bucket",
                             "uniattn:e2e_request_latency_seconds_bucket",
                             "uniattn:request_queue_time_seconds_bucket",
                             "uniattn:request_prefill_time_seconds_bucket",
                             "uniattn:request_decode_time_seconds_bucket",
                             "uniattn:request_prompt_tokens_bucket",
                             "uniattn:request_generation_tokens_bucket",
                             "uniattn:iteration_tokens_total_bucket",
                             "uniattn:kv_cache_bytes",
                             "uniattn:kv_cache_blocks_used",
                             "uniattn:kv_cache_blocks_total",
                             "uniattn:kv_bytes_per_token",
                             "uniattn:kv_bytes_per_token_dense",
                             "uniattn:step_duration_seconds_bucket"}) {
        EXPECT_NE(text.find(name), std::string::npos) << name;
    }
    EXPECT_NE(text.find("uniattn:request_success_total{finished_reason=\"length\",model_name=\"m\"} 1"),
              std::string::npos)
        << text;
    EXPECT_NE(text.find("uniattn:request_success_total{finished_reason=\"abort\",model_name=\"m\"} 0"),
              std::string::npos);
    EXPECT_NE(text.find("uniattn:inter_token_latency_seconds_bucket{model_name=\"m\",le=\"0.002\"} 1"),
              std::string::npos);
    EXPECT_NE(text.find("uniattn:inter_token_latency_seconds_bucket{model_name=\"m\",le=\"0.005\"} 2"),
              std::string::npos);
    EXPECT_NE(text.find("uniattn:step_duration_seconds_count{model_name=\"m\",phase=\"forward\"} 1"),
              std::string::npos);
}

TEST(MetricsTest, CountersFollowEngineStats) {
    testing::FakeEngine engine;
    Metrics m("fake-model", 64);
    auto h = engine.Submit({.prompt_ids = {1, 2, 3}, .max_tokens = 4, .ignore_eos = true});
    ASSERT_TRUE(h.ok());
    RequestEvent e;
    while ((*h)->Next(&e, std::chrono::milliseconds(1000))) {
    }
    std::string text = m.Render(&engine);
    EXPECT_NE(text.find("uniattn:prompt_tokens_total{model_name=\"fake-model\"} 3"), std::string::npos) << text;
    EXPECT_NE(text.find("uniattn:generation_tokens_total{model_name=\"fake-model\"} 4"), std::string::npos);
    text = m.Render(&engine);  // a second scrape adds nothing
    EXPECT_NE(text.find("uniattn:generation_tokens_total{model_name=\"fake-model\"} 4"), std::string::npos);
}

}  // namespace
}  // namespace uniattn::server
