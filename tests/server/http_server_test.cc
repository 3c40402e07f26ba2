// The HTTP front end against a scripted engine over real sockets on an ephemeral port.
#include "server/http_server.h"

#include <gtest/gtest.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <thread>

#include "tests/server/fake_engine.h"

namespace uniattn::server {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using nlohmann::json;
using namespace std::chrono_literals;

struct Response {
    int status = 0;
    std::string body;
    http::fields headers;
};

class HttpServerTest : public ::testing::Test {
  protected:
    void Start(testing::FakeEngineOptions options = {}, ServerConfig config = {}) {
        config.engine.model_dir = "/fake";
        config.max_body_bytes = 64 * 1024;
        if (config.cors_allowed_origins.empty()) config.cors_allowed_origins = {"http://example.com"};
        engine_ = std::make_unique<testing::FakeEngine>(options);
        state_ = std::make_unique<ServingState>(config);
        state_->SetEngine(engine_.get(), ChatTemplate::kPlain);
        server_ = std::make_unique<HttpServer>(*state_, ioc_);
        ASSERT_TRUE(server_->Start("127.0.0.1", 0).ok());
        thread_ = std::thread([this] { ioc_.run(); });
    }
    void TearDown() override {
        if (server_) server_->StopAccepting();
        if (state_) state_->StopPreparing();
        work_.reset();
        ioc_.stop();
        if (thread_.joinable()) thread_.join();
        // Stop the engine thread before the io_context goes: until then it may still post a wake-up into
        // it (a request's last event can be delivered before the Push that carried it has returned).
        engine_.reset();
    }

    tcp::socket Connect() {
        tcp::socket s(client_ioc_);
        s.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), static_cast<unsigned short>(server_->port())));
        return s;
    }
    static void Write(tcp::socket& s, const std::string& bytes) { net::write(s, net::buffer(bytes)); }
    static Response Read(tcp::socket& s, beast::flat_buffer& buf) {
        http::response_parser<http::string_body> parser;
        parser.body_limit(64 << 20);
        beast::error_code ec;
        http::read(s, buf, parser, ec);
        Response r;
        if (ec) return r;
        r.status = parser.get().result_int();
        r.body = parser.get().body();
        r.headers = parser.get().base();
        return r;
    }
    static std::string Request(const std::string& method, const std::string& target, const std::string& body,
                               const std::string& extra = "") {
        return method + " " + target + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra +
               "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    }
    Response Call(const std::string& method, const std::string& target, const std::string& body = "",
                  const std::string& extra = "") {
        auto s = Connect();
        Write(s, Request(method, target, body, extra));
        beast::flat_buffer buf;
        return Read(s, buf);
    }

    // Destroyed bottom-up, as in main.cc: the io_context (and the connections it still holds) before the
    // serving state and the engine they refer to.
    std::unique_ptr<testing::FakeEngine> engine_;
    std::unique_ptr<ServingState> state_;
    net::io_context ioc_;
    net::executor_work_guard<net::io_context::executor_type> work_ = net::make_work_guard(ioc_);
    net::io_context client_ioc_;
    std::unique_ptr<HttpServer> server_;
    std::thread thread_;
};

std::vector<json> SseChunks(const std::string& body, bool* done) {
    std::vector<json> out;
    *done = false;
    size_t pos = 0;
    while ((pos = body.find("data: ", pos)) != std::string::npos) {
        const size_t end = body.find("\n\n", pos);
        const std::string payload = body.substr(pos + 6, end - pos - 6);
        if (payload == "[DONE]") {
            *done = true;
        } else {
            out.push_back(json::parse(payload));
        }
        pos = end + 2;
    }
    return out;
}

TEST_F(HttpServerTest, HealthReadyModelsMetrics) {
    Start();
    EXPECT_EQ(Call("GET", "/health").status, 200);
    auto ready = Call("GET", "/ready");
    EXPECT_EQ(ready.status, 200);
    EXPECT_EQ(json::parse(ready.body)["status"], "ready");
    auto models = Call("GET", "/v1/models");
    ASSERT_EQ(models.status, 200);
    EXPECT_EQ(json::parse(models.body)["data"][0]["id"], "fake-model");
    EXPECT_EQ(Call("GET", "/v1/models/fake-model").status, 200);
    EXPECT_EQ(Call("GET", "/v1/models/other").status, 404);
    auto metrics = Call("GET", "/metrics");
    ASSERT_EQ(metrics.status, 200);
    EXPECT_NE(metrics.body.find("uniattn:num_requests_running{model_name=\"fake-model\"}"), std::string::npos);
    EXPECT_NE(metrics.body.find("uniattn:kv_bytes_per_token_dense{model_name=\"fake-model\"} 1500"), std::string::npos);
}

TEST_F(HttpServerTest, CompletionAndKeepAlive) {
    Start();
    auto s = Connect();
    beast::flat_buffer buf;
    for (int i = 0; i < 3; ++i) {
        Write(s, Request("POST", "/v1/completions", R"({"model":"fake-model","prompt":"hi","max_tokens":4})"));
        Response r = Read(s, buf);
        ASSERT_EQ(r.status, 200) << r.body;
        const json body = json::parse(r.body);
        EXPECT_EQ(body["choices"][0]["text"], "abcd");
        EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
        EXPECT_EQ(body["usage"]["prompt_tokens"], 3);
        EXPECT_EQ(body["usage"]["completion_tokens"], 4);
    }
}

TEST_F(HttpServerTest, ChatNonStream) {
    Start();
    auto r =
        Call("POST", "/v1/chat/completions", R"({"messages":[{"role":"user","content":"hi"}],"max_tokens":3,"n":2})");
    ASSERT_EQ(r.status, 200) << r.body;
    const json body = json::parse(r.body);
    EXPECT_EQ(body["object"], "chat.completion");
    ASSERT_EQ(body["choices"].size(), 2u);
    EXPECT_EQ(body["choices"][1]["message"]["content"], "abc");
    EXPECT_EQ(body["usage"]["completion_tokens"], 6);
}

TEST_F(HttpServerTest, StreamingSse) {
    Start();
    auto s = Connect();
    beast::flat_buffer buf;
    Write(s, Request("POST", "/v1/completions",
                     R"({"prompt":"hi","max_tokens":5,"stream":true,"stream_options":{"include_usage":true}})"));
    Response r = Read(s, buf);
    ASSERT_EQ(r.status, 200);
    EXPECT_EQ(r.headers[http::field::content_type], "text/event-stream");
    bool done = false;
    auto chunks = SseChunks(r.body, &done);
    EXPECT_TRUE(done);
    std::string text;
    for (const json& c : chunks) {
        if (!c["choices"].empty()) text += c["choices"][0]["text"].get<std::string>();
    }
    EXPECT_EQ(text, "abcde");
    EXPECT_EQ(chunks.back()["usage"]["completion_tokens"], 5);
    // The connection stays usable.
    Write(s, Request("GET", "/health", ""));
    EXPECT_EQ(Read(s, buf).status, 200);
}

TEST_F(HttpServerTest, MidStreamErrorThenDone) {
    testing::FakeEngineOptions o;
    o.fail_after_first_token = true;
    Start(o);
    auto r = Call("POST", "/v1/completions", R"({"prompt":"hi","max_tokens":5,"stream":true})");
    ASSERT_EQ(r.status, 200);
    bool done = false;
    auto chunks = SseChunks(r.body, &done);
    EXPECT_TRUE(done);
    ASSERT_FALSE(chunks.empty());
    EXPECT_EQ(chunks.back()["error"]["message"], "simulated engine failure");
    // Not streaming: the error is the response.
    auto ns = Call("POST", "/v1/completions", R"({"prompt":"hi","max_tokens":5})");
    EXPECT_EQ(ns.status, 500);
    EXPECT_EQ(json::parse(ns.body)["error"]["type"], "server_error");
}

TEST_F(HttpServerTest, ErrorsInOpenAiShape) {
    Start();
    auto bad_json = Call("POST", "/v1/completions", "{not json");
    EXPECT_EQ(bad_json.status, 400);
    EXPECT_TRUE(json::parse(bad_json.body)["error"].contains("message"));
    auto wrong_type = Call("POST", "/v1/completions", R"({"prompt":"a","max_tokens":"many"})");
    EXPECT_EQ(wrong_type.status, 400);
    EXPECT_EQ(json::parse(wrong_type.body)["error"]["param"], "max_tokens");
    auto route = Call("GET", "/v1/nothing");
    EXPECT_EQ(route.status, 404);
    EXPECT_EQ(json::parse(route.body)["error"]["code"], "not_found");
    EXPECT_EQ(Call("GET", "/v1/completions").status, 405);
    auto model = Call("POST", "/v1/completions", R"({"model":"nope","prompt":"a"})");
    EXPECT_EQ(model.status, 404);
    EXPECT_EQ(json::parse(model.body)["error"]["code"], "model_not_found");
    auto ctx = Call("POST", "/v1/completions", json({{"prompt", std::string(100, 'a')}}).dump());
    EXPECT_EQ(ctx.status, 400);
    EXPECT_EQ(json::parse(ctx.body)["error"]["code"], "context_length_exceeded");
    EXPECT_EQ(Call("GET", "/health").status, 200);
}

TEST_F(HttpServerTest, BodyTooLarge) {
    Start();
    // Declared too large: answered from the header alone.
    auto s = Connect();
    Write(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n{\"prompt\":");
    beast::flat_buffer buf;
    Response r = Read(s, buf);
    EXPECT_EQ(r.status, 413);
    EXPECT_EQ(json::parse(r.body)["error"]["code"], "body_too_large");
    // Actually sent, chunked, past the limit.
    auto s2 = Connect();
    std::string chunk(70000, 'a');
    std::ostringstream os;
    os << "POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
       << std::hex << chunk.size() << "\r\n"
       << chunk << "\r\n0\r\n\r\n";
    beast::error_code ec;
    net::write(s2, net::buffer(os.str()), ec);
    beast::flat_buffer buf2;
    EXPECT_EQ(Read(s2, buf2).status, 413);
    EXPECT_EQ(Call("GET", "/health").status, 200);
}

TEST_F(HttpServerTest, MalformedHttp) {
    Start();
    auto s = Connect();
    Write(s, "BLAH\r\n\r\n");
    beast::flat_buffer buf;
    EXPECT_EQ(Read(s, buf).status, 400);
    auto s2 = Connect();
    Write(s2, "GET / HTTP/1.1\r\nX-Big: " + std::string(20000, 'a') + "\r\n\r\n");
    beast::flat_buffer buf2;
    EXPECT_EQ(Read(s2, buf2).status, 431);
    EXPECT_EQ(Call("GET", "/health").status, 200);
}

TEST_F(HttpServerTest, ApiKeys) {
    ServerConfig c;
    c.api_keys = {"sk-one", "sk-two"};
    Start({}, c);
    EXPECT_EQ(Call("GET", "/v1/models").status, 401);
    auto wrong = Call("GET", "/v1/models", "", "Authorization: Bearer sk-three\r\n");
    EXPECT_EQ(wrong.status, 401);
    EXPECT_EQ(json::parse(wrong.body)["error"]["code"], "invalid_api_key");
    EXPECT_EQ(Call("GET", "/v1/models", "", "Authorization: Bearer sk-two\r\n").status, 200);
    EXPECT_EQ(Call("GET", "/v1/models", "", "Authorization: bearer sk-one\r\n").status, 200);
    EXPECT_EQ(Call("GET", "/health").status, 200);  // probes need no key
    EXPECT_EQ(Call("GET", "/v1/models").headers[http::field::www_authenticate], "Bearer");
    // Two keys are ambiguous whichever comes first: 400, never the first one's verdict.
    for (const char* twice : {"Authorization: Bearer sk-three\r\nAuthorization: Bearer sk-one\r\n",
                              "Authorization: Bearer sk-one\r\nAuthorization: Bearer sk-three\r\n",
                              "Authorization: Bearer sk-one\r\nAuthorization: Bearer sk-one\r\n"}) {
        auto r = Call("GET", "/v1/models", "", twice);
        EXPECT_EQ(r.status, 400) << twice;
        EXPECT_EQ(json::parse(r.body)["error"]["code"], "invalid_authorization");
    }
    EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
    EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
    EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
    EXPECT_FALSE(ConstantTimeEquals("", "a"));
}

TEST_F(HttpServerTest, Cors) {
    Start();
    auto pre = Call("OPTIONS", "/v1/completions", "",
                    "Origin: http://example.com\r\nAccess-Control-Request-Method: POST\r\n"
                    "Access-Control-Request-Headers: authorization, content-type\r\n");
    EXPECT_EQ(pre.status, 204);
    EXPECT_EQ(pre.headers[http::field::access_control_allow_origin], "http://example.com");
    EXPECT_EQ(pre.headers[http::field::access_control_allow_headers], "authorization, content-type");
    auto get = Call("GET", "/v1/models", "", "Origin: http://example.com\r\n");
    EXPECT_EQ(get.headers[http::field::access_control_allow_origin], "http://example.com");
    auto other = Call("GET", "/v1/models", "", "Origin: http://evil.com\r\n");
    EXPECT_EQ(other.headers.count(http::field::access_control_allow_origin), 0u);
}

TEST_F(HttpServerTest, DisconnectMidStreamCancels) {
    testing::FakeEngineOptions o;
    o.token_delay = 10ms;
    Start(o);
    {
        auto s = Connect();
        Write(s,
              Request("POST", "/v1/completions", R"({"prompt":"a","max_tokens":50,"ignore_eos":true,"stream":true})"));
        char buf[256];
        s.read_some(net::buffer(buf));  // headers and a first chunk
        s.close();
    }
    for (int i = 0; i < 200 && engine_->num_cancelled() == 0; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(engine_->num_cancelled(), 1);
    for (int i = 0; i < 200 && state_->jobs() > 0; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(state_->jobs(), 0);
}

TEST_F(HttpServerTest, DisconnectWhileWaitingNonStreamCancels) {
    testing::FakeEngineOptions o;
    o.token_delay = 10ms;
    Start(o);
    {
        auto s = Connect();
        Write(s, Request("POST", "/v1/completions", R"({"prompt":"a","max_tokens":50,"ignore_eos":true})"));
        std::this_thread::sleep_for(30ms);
        s.close();
    }
    for (int i = 0; i < 200 && engine_->num_cancelled() == 0; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(engine_->num_cancelled(), 1);
}

TEST_F(HttpServerTest, HalfClosedClientStillGetsTheAnswer) {
    testing::FakeEngineOptions o;
    o.token_delay = 5ms;
    Start(o);
    auto s = Connect();
    Write(s, Request("POST", "/v1/completions", R"({"prompt":"a","max_tokens":6})"));
    s.shutdown(tcp::socket::shutdown_send);
    beast::flat_buffer buf;
    Response r = Read(s, buf);  // Beast skips the interim 100 response
    if (r.status == 100) r = Read(s, buf);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(json::parse(r.body)["choices"][0]["text"], "abcdef");
    EXPECT_EQ(engine_->num_cancelled(), 0);
    // Then the server closes (it must not wait for a request that cannot come).
    timeval tv{2, 0};
    setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char byte;
    beast::error_code eof;
    s.read_some(net::buffer(&byte, 1), eof);
    EXPECT_EQ(eof, net::error::eof);
    // Incomplete request, then half-close: a 400, not a hang.
    auto s2 = Connect();
    Write(s2, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"pro");
    s2.shutdown(tcp::socket::shutdown_send);
    beast::flat_buffer buf2;
    EXPECT_EQ(Read(s2, buf2).status, 400);
    EXPECT_EQ(Call("GET", "/health").status, 200);
}

TEST_F(HttpServerTest, AnExceptionInAHandlerIs500AndTheServerKeepsServing) {
    testing::FakeEngineOptions o;
    o.throw_on_read = true;
    o.token_delay = 5ms;  // 40 tokens take 200 ms: the cancel lands long before the end
    Start(o);
    const Response r = Call("POST", "/v1/completions", R"({"prompt":"a","max_tokens":40})");
    EXPECT_EQ(r.status, 500);
    const json body = json::parse(r.body);
    EXPECT_EQ(body["error"]["type"], "server_error") << r.body;
    EXPECT_NE(body["error"]["message"].get<std::string>().find("internal error"), std::string::npos) << r.body;
    // A stream whose headers are out: the connection is closed, not left hanging.
    auto s = Connect();
    Write(s, Request("POST", "/v1/completions", R"({"prompt":"a","max_tokens":40,"stream":true})"));
    beast::flat_buffer buf;
    http::response_parser<http::string_body> parser;
    beast::error_code ec;
    http::read(s, buf, parser, ec);
    EXPECT_TRUE(ec) << "the stream should have been cut, got " << parser.get().body();
    // Both engine requests were cancelled and the server still answers.
    EXPECT_EQ(Call("GET", "/health").status, 200);
    for (int i = 0; i < 200 && engine_->num_cancelled() < 2; ++i) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(engine_->num_cancelled(), 2);
}

TEST_F(HttpServerTest, SlowClientAndPipelining) {
    Start();
    auto s = Connect();
    const std::string req = Request("POST", "/v1/completions", R"({"prompt":"hi","max_tokens":2})");
    for (size_t i = 0; i < req.size(); i += 7) {
        Write(s, req.substr(i, 7));
        std::this_thread::sleep_for(2ms);
    }
    beast::flat_buffer buf;
    EXPECT_EQ(Read(s, buf).status, 200);
    Write(s, req + Request("GET", "/health", "") + req);
    EXPECT_EQ(Read(s, buf).status, 200);
    EXPECT_EQ(Read(s, buf).status, 200);
    Response last = Read(s, buf);
    EXPECT_EQ(last.status, 200);
    EXPECT_EQ(json::parse(last.body)["choices"][0]["text"], "ab");
}

TEST_F(HttpServerTest, QueueFullIs429) {
    testing::FakeEngineOptions o;
    o.max_queued = 0;
    Start(o);
    auto r = Call("POST", "/v1/completions", R"({"prompt":"hi"})");
    EXPECT_EQ(r.status, 429);
    EXPECT_EQ(json::parse(r.body)["error"]["code"], "queue_full");
}

TEST_F(HttpServerTest, DrainingRefusesNewWork) {
    Start();
    state_->StartDraining();
    auto r = Call("POST", "/v1/completions", R"({"prompt":"hi"})");
    EXPECT_EQ(r.status, 503);
    EXPECT_EQ(json::parse(r.body)["error"]["code"], "draining");
    auto ready = Call("GET", "/ready");
    EXPECT_EQ(ready.status, 503);
    EXPECT_EQ(json::parse(ready.body)["status"], "draining");
    EXPECT_EQ(Call("GET", "/health").status, 200);
}

TEST_F(HttpServerTest, LoadingIs503) {
    ServerConfig config;
    config.engine.model_dir = "/fake";
    state_ = std::make_unique<ServingState>(config);
    server_ = std::make_unique<HttpServer>(*state_, ioc_);
    ASSERT_TRUE(server_->Start("127.0.0.1", 0).ok());
    thread_ = std::thread([this] { ioc_.run(); });
    EXPECT_EQ(Call("GET", "/health").status, 200);
    auto ready = Call("GET", "/ready");
    EXPECT_EQ(ready.status, 503);
    EXPECT_EQ(json::parse(ready.body)["status"], "loading");
    auto r = Call("POST", "/v1/completions", R"({"prompt":"hi"})");
    EXPECT_EQ(r.status, 503);
    EXPECT_EQ(json::parse(r.body)["error"]["code"], "loading");
    EXPECT_EQ(Call("GET", "/metrics").status, 200);
}

TEST_F(HttpServerTest, SlowlorisIsDisconnected) {
    ServerConfig c;
    c.request_timeout_s = 0.3;
    Start({}, c);
    auto s = Connect();
    Write(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le");
    char byte;
    beast::error_code ec;
    s.read_some(net::buffer(&byte, 1), ec);
    EXPECT_TRUE(ec == net::error::eof || ec == net::error::connection_reset) << ec.message();
    // An idle keep-alive connection is closed the same way; the server keeps serving.
    auto idle = Connect();
    idle.read_some(net::buffer(&byte, 1), ec);
    EXPECT_TRUE(ec == net::error::eof || ec == net::error::connection_reset) << ec.message();
    EXPECT_EQ(Call("GET", "/health").status, 200);
}

TEST_F(HttpServerTest, TokenizeDetokenize) {
    Start();
    auto t = Call("POST", "/tokenize", R"({"prompt":"ab"})");
    ASSERT_EQ(t.status, 200);
    EXPECT_EQ(json::parse(t.body)["tokens"], json({1, 100, 101}));
    auto d = Call("POST", "/detokenize", R"({"tokens":[100,101]})");
    ASSERT_EQ(d.status, 200);
    EXPECT_EQ(json::parse(d.body)["prompt"], "ab");
}

}  // namespace
}  // namespace uniattn::server
