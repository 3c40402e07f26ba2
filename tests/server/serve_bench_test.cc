// `uniattn-bench serve` (bench/serve_*.h): the pure parts, and the load generator end to end against the
// real HTTP server over loopback with a scripted engine.
#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "bench/serve_bench.h"
#include "bench/serve_load.h"
#include "bench/serve_stats.h"
#include "server/http_server.h"
#include "tests/server/fake_engine.h"

namespace uniattn::bench {
namespace {

using nlohmann::json;

TEST(ServeStats, PercentileInterpolatesLikeNumpy) {
    EXPECT_EQ(Percentile({}, 50), 0);
    EXPECT_EQ(Percentile({7}, 99), 7);
    // numpy.percentile([1, 2, 3, 4], q) with the default linear method.
    const std::vector<double> v = {4, 1, 3, 2};
    EXPECT_DOUBLE_EQ(Percentile(v, 0), 1);
    EXPECT_DOUBLE_EQ(Percentile(v, 50), 2.5);
    EXPECT_DOUBLE_EQ(Percentile(v, 90), 3.7);
    EXPECT_DOUBLE_EQ(Percentile(v, 99), 3.97);
    EXPECT_DOUBLE_EQ(Percentile(v, 100), 4);
    std::vector<double> hundred;
    for (int i = 1; i <= 101; ++i) hundred.push_back(i);
    EXPECT_DOUBLE_EQ(Percentile(hundred, 90), 91);
    const Summary s = Summarize(v);
    EXPECT_EQ(s.count, 4);
    EXPECT_DOUBLE_EQ(s.mean, 2.5);
    EXPECT_DOUBLE_EQ(s.min, 1);
    EXPECT_DOUBLE_EQ(s.max, 4);
}

TEST(ServeStats, PoissonScheduleHasTheRequestedRate) {
    const double rate = 20;
    ArrivalSchedule a(rate, 42);
    EXPECT_EQ(a.Next(), 0);  // the first request goes at once
    const int n = 20000;
    std::vector<double> gaps;
    double prev = 0;
    for (int i = 0; i < n; ++i) {
        const double t = a.Next();
        ASSERT_GE(t, prev);
        gaps.push_back(t - prev);
        prev = t;
    }
    const Summary s = Summarize(gaps);
    // Exp(rate): mean 1/rate, median ln2/rate, p90 ln10/rate. 20000 samples: the mean's standard error
    // is 0.7%, so 3% bounds are ~4 sigma (and the seed is fixed).
    EXPECT_NEAR(s.mean * rate, 1.0, 0.03);
    EXPECT_NEAR(s.p50 * rate, std::log(2.0), 0.03);
    EXPECT_NEAR(s.p90 * rate, std::log(10.0), 0.08);
    double var = 0;
    for (double g : gaps) var += (g - s.mean) * (g - s.mean);
    EXPECT_NEAR(std::sqrt(var / n) * rate, 1.0, 0.04);  // Exp: standard deviation = mean

    // Same seed, same schedule; another seed, another one.
    ArrivalSchedule b(rate, 42), c(rate, 43);
    b.Next();
    c.Next();
    const double tb = b.Next();
    EXPECT_EQ(tb, gaps[0]);
    EXPECT_NE(c.Next(), tb);

    ArrivalSchedule burst(std::numeric_limits<double>::infinity(), 1);
    for (int i = 0; i < 10; ++i) EXPECT_EQ(burst.Next(), 0);
}

TEST(ServeStats, LengthSamplingStaysInRangeAndCoversIt) {
    Rng rng(7);
    for (int i = 0; i < 100; ++i) EXPECT_EQ(SampleLength(128, 0, rng), 128);
    std::vector<int> seen(200, 0);
    for (int i = 0; i < 20000; ++i) {
        const int len = SampleLength(100, 0.5, rng);
        ASSERT_GE(len, 50);
        ASSERT_LE(len, 150);
        ++seen[len];
    }
    for (int len = 50; len <= 150; ++len) EXPECT_GT(seen[len], 0) << len;  // ~198 expected each
    for (int i = 0; i < 1000; ++i) EXPECT_GE(SampleLength(1, 0.9, rng), 1);
}

TEST(ServeStats, RandomPromptsHaveTheRequestedWordCount) {
    Rng a(3), b(3);
    const std::string p = RandomWordsPrompt(16, a);
    EXPECT_EQ(std::count(p.begin(), p.end(), ' '), 15);
    EXPECT_EQ(p, RandomWordsPrompt(16, b));
    EXPECT_NE(p, RandomWordsPrompt(16, b));
    EXPECT_EQ(RandomWordsPrompt(0, a), "");
}

TEST(ServeStats, SseParserAcrossChunkBoundaries) {
    const std::string stream =
        "data: {\"a\":1}\n\n"
        ": ping\n\n"
        "event: message\r\ndata: {\"b\":2}\r\n\r\n"
        "data: line1\ndata: line2\n\n"
        "id: 5\nretry: 10\n\n"
        "data:nospace\r\rdata: [DONE]\n\n";
    const std::vector<std::string> want = {"{\"a\":1}", "{\"b\":2}", "line1\nline2", "nospace", "[DONE]"};
    // Every split point, and byte by byte.
    for (size_t split = 0; split <= stream.size(); ++split) {
        SseParser p;
        std::vector<std::string> got;
        p.Feed(std::string_view(stream).substr(0, split), &got);
        p.Feed(std::string_view(stream).substr(split), &got);
        ASSERT_EQ(got, want) << "split at " << split;
        EXPECT_EQ(p.pending(), 0u);
    }
    SseParser p;
    std::vector<std::string> got;
    for (char c : stream) p.Feed(std::string_view(&c, 1), &got);
    EXPECT_EQ(got, want);

    SseParser truncated;
    got.clear();
    truncated.Feed("data: {\"a\":1}\n\ndata: {\"b\"", &got);
    EXPECT_EQ(got.size(), 1u);
    EXPECT_GT(truncated.pending(), 0u);
}

TEST(ServeStats, ParseBaseUrl) {
    BaseUrl u;
    std::string err;
    ASSERT_TRUE(ParseBaseUrl("http://127.0.0.1:8000", &u, &err)) << err;
    EXPECT_EQ(u.host, "127.0.0.1");
    EXPECT_EQ(u.port, 8000);
    EXPECT_EQ(u.prefix, "/v1");
    ASSERT_TRUE(ParseBaseUrl("http://localhost/openai/v1/", &u, &err)) << err;
    EXPECT_EQ(u.host, "localhost");
    EXPECT_EQ(u.port, 80);
    EXPECT_EQ(u.prefix, "/openai/v1");
    ASSERT_TRUE(ParseBaseUrl("http://[::1]:9000", &u, &err)) << err;
    EXPECT_EQ(u.host, "::1");
    EXPECT_EQ(u.port, 9000);
    EXPECT_FALSE(ParseBaseUrl("https://example.com", &u, &err));
    EXPECT_FALSE(ParseBaseUrl("http://host:99999", &u, &err));
    EXPECT_FALSE(ParseBaseUrl("http://host:", &u, &err));
    EXPECT_FALSE(ParseBaseUrl("http://:80", &u, &err));
}

TEST(ServeStats, ReportFromResults) {
    std::vector<RequestResult> rs(4);
    for (int i = 0; i < 3; ++i) {
        rs[i].ok = true;
        rs[i].ttft_s = 0.010 * (i + 1);
        rs[i].e2e_s = rs[i].ttft_s + 0.090;
        rs[i].output_tokens = 10;
        rs[i].prompt_tokens = 5;
        rs[i].itl_s = std::vector<double>(9, 0.010);
    }
    rs[3].error = "http_429";
    const Report r = BuildReport(rs, 2.0);
    EXPECT_EQ(r.num_requests, 4);
    EXPECT_EQ(r.num_ok, 3);
    EXPECT_EQ(r.errors.at("http_429"), 1);
    EXPECT_EQ(r.output_tokens, 30);
    EXPECT_EQ(r.input_tokens, 15);
    EXPECT_DOUBLE_EQ(r.request_throughput, 1.5);
    EXPECT_DOUBLE_EQ(r.output_throughput, 15);
    EXPECT_DOUBLE_EQ(r.total_throughput, 22.5);
    EXPECT_DOUBLE_EQ(r.ttft_ms.mean, 20);
    EXPECT_NEAR(r.tpot_ms.mean, 10, 1e-9);  // 90 ms over 9 tokens after the first
    EXPECT_EQ(r.itl_ms.count, 27);
    EXPECT_NEAR(r.e2e_ms.p50, 110, 1e-9);
}

TEST(ServeStats, RequestBodies) {
    LoadOptions o;
    o.model = "m";
    json c = json::parse(RequestBody(o, "hello", 7));
    EXPECT_EQ(c["prompt"], "hello");
    EXPECT_EQ(c["max_tokens"], 7);
    EXPECT_EQ(c["ignore_eos"], true);
    EXPECT_EQ(c["stream"], true);
    EXPECT_EQ(c["stream_options"]["include_usage"], true);
    o.endpoint = ApiEndpoint::kChat;
    o.stream = false;
    o.ignore_eos = false;
    json h = json::parse(RequestBody(o, "hi", 3));
    EXPECT_EQ(h["messages"][0]["role"], "user");
    EXPECT_EQ(h["messages"][0]["content"], "hi");
    EXPECT_EQ(h["max_completion_tokens"], 3);
    EXPECT_FALSE(h.contains("ignore_eos"));
    EXPECT_FALSE(h.contains("stream_options"));
}

// ---- end to end: the real HttpServer (server/http_server.h) on port 0 with the scripted engine ----

class ServeLoadTest : public ::testing::Test {
  protected:
    void Start(server::testing::FakeEngineOptions options = {}, server::ServerConfig config = {}) {
        options.max_model_len = 256;
        options.max_queued = 1024;
        config.engine.model_dir = "/fake";
        engine_ = std::make_unique<server::testing::FakeEngine>(options);
        state_ = std::make_unique<server::ServingState>(config);
        state_->SetEngine(engine_.get(), server::ChatTemplate::kPlain);
        server_ = std::make_unique<server::HttpServer>(*state_, ioc_);
        ASSERT_TRUE(server_->Start("127.0.0.1", 0).ok());
        thread_ = std::thread([this] { ioc_.run(); });
    }
    void TearDown() override {
        if (server_) server_->StopAccepting();
        work_.reset();
        ioc_.stop();
        if (thread_.joinable()) thread_.join();
        // The engine thread reports to the serving state's metrics: stop it before the state goes.
        engine_.reset();
    }
    LoadOptions Options() const {
        LoadOptions o;
        o.url.host = "127.0.0.1";
        o.url.port = static_cast<uint16_t>(server_->port());
        o.model = "fake-model";
        o.num_prompts = 24;
        o.input_len = 6;
        o.output_len = 8;
        o.seed = 1;
        o.timeout_s = 30;
        return o;
    }

    std::unique_ptr<server::testing::FakeEngine> engine_;
    std::unique_ptr<server::ServingState> state_;
    boost::asio::io_context ioc_;
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_ = boost::asio::make_work_guard(ioc_);
    std::unique_ptr<server::HttpServer> server_;
    std::thread thread_;
};

void ExpectAllOk(const LoadResult& r, int64_t n, int64_t output_tokens) {
    ASSERT_EQ(static_cast<int64_t>(r.requests.size()), n);
    for (const RequestResult& q : r.requests) {
        ASSERT_TRUE(q.ok) << q.error << ": " << q.error_detail;
        EXPECT_EQ(q.output_tokens, output_tokens);
        EXPECT_GT(q.ttft_s, 0);
        EXPECT_GE(q.e2e_s, q.ttft_s);
        EXPECT_GT(q.prompt_tokens, 0);
    }
    EXPECT_GT(r.duration_s, 0);
}

TEST_F(ServeLoadTest, ClosedLoopStreamingCompletions) {
    Start();
    const LoadOptions o = Options();
    std::vector<LoadProgress> progress;
    auto r = RunLoad(o, [&](const LoadProgress& p) { progress.push_back(p); });
    ASSERT_TRUE(r.ok()) << r.status().message();
    ExpectAllOk(*r, 24, 8);
    for (const RequestResult& q : r->requests) {
        EXPECT_EQ(q.content_chunks, 8);  // the fake engine streams one byte-token per chunk
        EXPECT_EQ(q.itl_s.size(), 7u);
        // "<s>" plus 6 words of 2..6 bytes and 5 spaces, one token per byte.
        EXPECT_GE(q.prompt_tokens, 1 + 6 * 1 + 5);
        EXPECT_LE(q.prompt_tokens, 1 + 6 * 6 + 5);
    }
    EXPECT_EQ(engine_->num_submitted(), 24);
    ASSERT_FALSE(progress.empty());
    EXPECT_TRUE(progress.back().final);
    EXPECT_EQ(progress.back().num_done, 24);
    EXPECT_EQ(progress.back().num_errors, 0);

    const Report rep = BuildReport(r->requests, r->duration_s);
    EXPECT_EQ(rep.num_ok, 24);
    EXPECT_EQ(rep.output_tokens, 24 * 8);
    EXPECT_GT(rep.output_throughput, 0);
    EXPECT_GT(rep.ttft_ms.p50, 0);
    EXPECT_GT(rep.tpot_ms.count, 0);
    EXPECT_EQ(rep.itl_ms.count, 24 * 7);
    const std::string table = FormatReport(o, rep, "fake");
    EXPECT_NE(table.find("Successful requests:"), std::string::npos);
    const json j = ReportJson(o, rep, *r);
    EXPECT_EQ(j["completed"], 24);
    EXPECT_EQ(j["total_output_tokens"], 24 * 8);
}

TEST_F(ServeLoadTest, PoissonChatWithLengthRangeAndConcurrencyLimit) {
    server::testing::FakeEngineOptions fe;
    fe.token_delay = std::chrono::milliseconds(1);
    Start(fe);
    LoadOptions o = Options();
    o.endpoint = ApiEndpoint::kChat;
    o.request_rate = 200;
    o.concurrency = 4;
    o.range_ratio = 0.5;
    auto r = RunLoad(o);
    ASSERT_TRUE(r.ok()) << r.status().message();
    ASSERT_EQ(r->requests.size(), 24u);
    int64_t total = 0;
    for (const RequestResult& q : r->requests) {
        ASSERT_TRUE(q.ok) << q.error << ": " << q.error_detail;
        EXPECT_GE(q.max_tokens, 4);
        EXPECT_LE(q.max_tokens, 12);
        EXPECT_EQ(q.output_tokens, q.max_tokens);  // ignore_eos: every request runs to max_tokens
        EXPECT_EQ(q.content_chunks, q.max_tokens);
        EXPECT_GT(q.ttft_s, 0);
        total += q.output_tokens;
    }
    EXPECT_EQ(BuildReport(r->requests, r->duration_s).output_tokens, total);
    // Arrivals are spread out: the last request was admitted after the first.
    EXPECT_GT(r->requests.back().start_s, r->requests.front().start_s);
}

TEST_F(ServeLoadTest, HundredsOfStreamsInFlightAtOnce) {
    server::testing::FakeEngineOptions fe;
    fe.token_delay = std::chrono::milliseconds(1);
    Start(fe);
    LoadOptions o = Options();
    o.num_prompts = 300;  // rate inf, no concurrency limit: all admitted at once
    o.output_len = 2;
    o.input_len = 2;
    auto r = RunLoad(o);
    ASSERT_TRUE(r.ok()) << r.status().message();
    ExpectAllOk(*r, 300, 2);
    // Every request was admitted before the first one finished: 300 connections open together.
    double last_start = 0, first_end = 1e9;
    for (const RequestResult& q : r->requests) {
        last_start = std::max(last_start, q.start_s);
        first_end = std::min(first_end, q.start_s + q.e2e_s);
    }
    EXPECT_LT(last_start, first_end);
    EXPECT_EQ(engine_->num_submitted(), 300);
}

TEST_F(ServeLoadTest, CommandLineWithPromptsFileAndJson) {
    Start();
    const std::string dir = ::testing::TempDir();
    const std::string prompts = dir + "/serve_bench_prompts.txt", out = dir + "/serve_bench_out.json";
    {
        std::ofstream f(prompts);
        f << "once upon a time\r\n\nthe cat sat\n";
    }
    const std::string url = "http://127.0.0.1:" + std::to_string(server_->port());
    std::vector<std::string> args = {"serve", "--base-url",    url, "--endpoint",   "chat", "--concurrency",
                                     "2",     "--num-prompts", "4", "--output-len", "5",    "--prompts-file",
                                     prompts, "--json",        out, "--label",      "fake"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    ASSERT_EQ(ServeBenchMain(static_cast<int>(argv.size()), argv.data()), 0);
    std::ifstream in(out);
    const json j = json::parse(in);
    EXPECT_EQ(j["model"], "fake-model");  // from GET /v1/models
    EXPECT_EQ(j["completed"], 4);
    EXPECT_EQ(j["total_output_tokens"], 20);
    EXPECT_EQ(j["endpoint"], "chat");
    EXPECT_EQ(j["label"], "fake");
    EXPECT_EQ(j["args"].size(), args.size());
    EXPECT_EQ(j["args"][1], "--base-url");
    EXPECT_FALSE(j["date"].get<std::string>().empty());
    EXPECT_EQ(j["requests"]["output_tokens"].size(), 4u);
    // Two prompts, used in order: the plain chat template sends each message's content as the prompt.
    const std::vector<int64_t> in_tok = j["requests"]["input_tokens"];
    EXPECT_EQ(in_tok[0], in_tok[2]);
    EXPECT_EQ(in_tok[1], in_tok[3]);
    EXPECT_NE(in_tok[0], in_tok[1]);

    std::vector<std::string> bad = {"serve", "--request-rate", "-1"};
    std::vector<char*> bad_argv;
    for (std::string& a : bad) bad_argv.push_back(a.data());
    EXPECT_EQ(ServeBenchMain(static_cast<int>(bad_argv.size()), bad_argv.data()), 2);
}

TEST_F(ServeLoadTest, NonStreamingUsesUsage) {
    Start();
    LoadOptions o = Options();
    o.stream = false;
    o.num_prompts = 5;
    auto r = RunLoad(o);
    ASSERT_TRUE(r.ok()) << r.status().message();
    ExpectAllOk(*r, 5, 8);
    for (const RequestResult& q : r->requests) EXPECT_EQ(q.ttft_s, q.e2e_s);
}

TEST_F(ServeLoadTest, ErrorsAreCountedByKind) {
    server::ServerConfig config;
    config.api_keys = {"sk-right"};
    Start({}, config);
    LoadOptions o = Options();
    o.num_prompts = 6;
    o.api_key = "sk-wrong";
    auto r = RunLoad(o);
    ASSERT_TRUE(r.ok()) << r.status().message();
    const Report rep = BuildReport(r->requests, r->duration_s);
    EXPECT_EQ(rep.num_ok, 0);
    EXPECT_EQ(rep.errors.at("http_401"), 6);
    EXPECT_NE(r->requests[0].error_detail.find("invalid_api_key"), std::string::npos);

    o.api_key = "sk-right";
    auto ok = RunLoad(o);
    ASSERT_TRUE(ok.ok());
    ExpectAllOk(*ok, 6, 8);

    auto model = DiscoverModel(o.url, "sk-right", 10);
    ASSERT_TRUE(model.ok()) << model.status().message();
    EXPECT_EQ(*model, "fake-model");
}

TEST_F(ServeLoadTest, ConnectionRefusedIsAConnectError) {
    // A port that was just bound and released: nothing listens there.
    boost::asio::io_context ioc;
    boost::asio::ip::tcp::acceptor a(ioc, {boost::asio::ip::make_address("127.0.0.1"), 0});
    const uint16_t port = a.local_endpoint().port();
    a.close();
    LoadOptions o;
    o.url.host = "127.0.0.1";
    o.url.port = port;
    o.model = "m";
    o.num_prompts = 3;
    auto r = RunLoad(o);
    ASSERT_TRUE(r.ok()) << r.status().message();
    const Report rep = BuildReport(r->requests, r->duration_s);
    EXPECT_EQ(rep.errors.at("connect"), 3);
    EXPECT_FALSE(DiscoverModel(o.url, "", 5).ok());
}

TEST_F(ServeLoadTest, DurationBoundsAnUnlimitedRun) {
    server::testing::FakeEngineOptions fe;
    fe.token_delay = std::chrono::milliseconds(2);
    Start(fe);
    LoadOptions o = Options();
    o.num_prompts = 0;
    o.duration_s = 0.3;
    o.concurrency = 2;
    auto r = RunLoad(o);
    ASSERT_TRUE(r.ok()) << r.status().message();
    ASSERT_GE(r->requests.size(), 2u);
    for (const RequestResult& q : r->requests) {
        ASSERT_TRUE(q.ok) << q.error;
        EXPECT_LT(q.start_s, 0.3 + 1e-9);
    }
    o.duration_s = 0;
    EXPECT_FALSE(RunLoad(o).ok());  // unlimited without a duration
}

// A server that answers every request with the same raw bytes and closes: broken peers.
class CannedServer {
  public:
    explicit CannedServer(std::string response)
        : response_(std::move(response)), acceptor_(ioc_, {boost::asio::ip::make_address("127.0.0.1"), 0}) {
        thread_ = std::thread([this] {
            for (;;) {
                boost::asio::ip::tcp::socket s(ioc_);
                boost::system::error_code ec;
                acceptor_.accept(s, ec);
                if (ec || stop_) return;
                boost::beast::flat_buffer buf;
                boost::beast::http::request<boost::beast::http::string_body> req;
                boost::beast::http::read(s, buf, req, ec);  // the whole request: closing unread data resets
                boost::asio::write(s, boost::asio::buffer(response_), ec);
                s.shutdown(boost::asio::ip::tcp::socket::shutdown_send, ec);
                char drain[256];
                while (!ec) s.read_some(boost::asio::buffer(drain), ec);  // until the client closes
            }
        });
    }
    ~CannedServer() {
        stop_ = true;
        boost::asio::io_context ioc;
        boost::asio::ip::tcp::socket wake(ioc);
        boost::system::error_code ec;
        wake.connect(acceptor_.local_endpoint(), ec);
        thread_.join();
    }
    LoadOptions Options() const {
        LoadOptions o;
        o.url.host = "127.0.0.1";
        o.url.port = acceptor_.local_endpoint().port();
        o.model = "m";
        o.num_prompts = 2;
        o.concurrency = 1;
        o.timeout_s = 10;
        return o;
    }

  private:
    std::string response_;
    boost::asio::io_context ioc_;
    boost::asio::ip::tcp::acceptor acceptor_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

std::map<std::string, int64_t> ErrorsFrom(const std::string& response) {
    CannedServer server(response);
    auto r = RunLoad(server.Options());
    EXPECT_TRUE(r.ok());
    if (!r.ok()) return {};
    return BuildReport(r->requests, r->duration_s).errors;
}

TEST(ServeLoadBrokenPeer, MalformedStreamsAndCutConnections) {
    const std::string sse = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";
    const std::string chunk = "data: {\"choices\":[{\"index\":0,\"text\":\"a\"}]}\n\n";
    // A well-formed stream up to [DONE]: no errors.
    EXPECT_TRUE(ErrorsFrom(sse + chunk + chunk + "data: [DONE]\n\n").empty());
    // A chunk that is not JSON.
    EXPECT_EQ(ErrorsFrom(sse + chunk + "data: {not json\n\n").at("malformed"), 2);
    // The connection closes before data: [DONE].
    EXPECT_EQ(ErrorsFrom(sse + chunk).at("malformed"), 2);
    // An error event mid-stream.
    EXPECT_EQ(
        ErrorsFrom(sse + chunk + "data: {\"error\":{\"message\":\"boom\"}}\n\ndata: [DONE]\n\n").at("stream_error"), 2);
    // Fewer body bytes than Content-Length promised.
    EXPECT_EQ(ErrorsFrom("HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + chunk).at("io"), 2);
    // Not HTTP at all.
    EXPECT_EQ(ErrorsFrom("SSH-2.0-OpenSSH_9.2\r\n").at("malformed"), 2);
    // A status other than 200.
    EXPECT_EQ(ErrorsFrom("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy").at("http_503"), 2);
}

TEST(ServeLoadBrokenPeer, SilentServerTimesOut) {
    // Accepts (the kernel's backlog does) but never answers.
    boost::asio::io_context ioc;
    boost::asio::ip::tcp::acceptor a(ioc, {boost::asio::ip::make_address("127.0.0.1"), 0});
    LoadOptions o;
    o.url.host = "127.0.0.1";
    o.url.port = a.local_endpoint().port();
    o.model = "m";
    o.num_prompts = 2;
    o.timeout_s = 0.2;
    auto r = RunLoad(o);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(BuildReport(r->requests, r->duration_s).errors.at("timeout"), 2);
}

}  // namespace
}  // namespace uniattn::bench
