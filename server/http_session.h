// One HTTP/1.1 connection of the OpenAI-compatible front end (Boost.Beast), on its own strand. The class is
// one state machine; its code is split by what each part does:
//   http_session.cc  connection and framing: reading requests, queueing and writing responses, noticing a
//                    client that goes away (watch and probes), closing (lingering after a 413)
//   http_handlers.cc routes and handlers: dispatch, API keys, CORS, /health, /ready, /metrics, /v1/models,
//                    /tokenize, /detokenize, and handing parsing/tokenizing to the preparation pool
//   http_stream.cc   generation: submitting a parsed request to the engine and answering from its events,
//                    as SSE over chunked framing (stream: true) or as one JSON body
// Internal to server/ (http_server.cc creates sessions); see server/README.md for routes and limits.
#pragma once

#include <array>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "server/api_error.h"
#include "server/openai_request.h"
#include "server/openai_response.h"
#include "server/serving.h"

namespace uniattn::server {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

// One engine request per prompt, the responder that turns their events into OpenAI output, and the hub that
// brings the engine's notifications to the session's strand.
struct Job {
    explicit Job(ServingState& s) : state(s) { state.JobStarted(); }
    ~Job() {
        if (hub) hub->Detach();
        for (auto& h : handles) {
            if (!h->closed()) h->Cancel();
        }
        state.JobFinished();
    }
    ServingState& state;
    OpenAiRequest request;
    std::vector<std::shared_ptr<RequestHandle>> handles;
    std::unique_ptr<OpenAiResponder> responder;
    std::shared_ptr<NotifyHub> hub;
};

class HttpSession : public std::enable_shared_from_this<HttpSession> {
  public:
    HttpSession(tcp::socket&& socket, ServingState& state)
        : stream_(std::move(socket)), state_(state), timer_(stream_.get_executor()) {}

    void Run() {
        net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->ReadHeader(); });
    }

  private:
    const ServerConfig& config() const { return state_.config(); }
    std::chrono::steady_clock::duration RequestTimeout() const;

    // ---- reading a request ----

    void ReadHeader();
    void OnHeader(beast::error_code ec);
    void ReadBody();
    void OnBody(beast::error_code ec);

    // A handler threw (a bug, or an allocation failure): this connection answers 500 when it has sent
    // nothing of the response yet, else it is closed; its engine requests are cancelled. The process and
    // every other connection keep serving.
    void Failed(const char* what, const std::exception& e) noexcept;
    void OnReadError(beast::error_code ec);
    void RejectBodyTooLarge(unsigned version);

    // ---- routing ----

    void Handle(http::request<http::string_body> req);
    bool Authorize();
    bool RequireModel();
    bool CorsAllowed(std::string* allow_origin) const;

    template <typename Fields>
    void AddCommonHeaders(Fields& f) const {
        f.set(http::field::server, "uniattn-serve");
        std::string allow;
        if (CorsAllowed(&allow)) {
            f.set(http::field::access_control_allow_origin, allow);
            if (allow != "*") f.set(http::field::vary, "Origin");
        }
    }

    void Preflight();

    // ---- simple endpoints ----

    void HandleHealth();
    void HandleReady();
    void HandleMetrics();
    nlohmann::json ModelCard() const;
    void HandleModels() {
        SendJson(http::status::ok, {{"object", "list"}, {"data", nlohmann::json::array({ModelCard()})}});
    }

    void HandleModel(const std::string& id);
    void HandleTokenize();

    // The request body, moved out: work offloaded to the preparation pool owns its copy of the text.
    std::string TakeBody();

    // Runs `work` (parsing a body, tokenizing) on the preparation pool, then `done(result)` back on this
    // connection's strand. The connection reads nothing meanwhile; an exception on either side is Failed().
    template <typename Result, typename Work, typename Done>
    void Offload(const char* what, Work work, Done done) {
        auto self = shared_from_this();
        net::post(state_.prepare_executor(), [self, what, work = std::move(work), done = std::move(done)]() mutable {
            std::optional<Result> result;
            std::string error;
            try {
                result.emplace(work());
            } catch (const std::exception& e) {
                error = e.what();
            }
            net::post(self->stream_.get_executor(), [self, what, result = std::move(result), error = std::move(error),
                                                     done = std::move(done)]() mutable {
                if (self->closed_) return;
                if (!result) return self->Failed(what, std::runtime_error(error));
                try {
                    done(std::move(*result));
                } catch (const std::exception& e) {
                    self->Failed(what, e);
                }
            });
        });
    }

    void HandleDetokenize();

    // ---- responses ----

    void Send(http::status status, std::string body, const char* content_type);
    void SendJson(http::status status, const nlohmann::json& body) { Send(status, DumpJson(body), "application/json"); }

    void SendError(const ApiError& e);

    // For errors found before a request was parsed: no keep-alive.
    void SendSimpleError(const ApiError& e, unsigned version, bool close);
    void QueueResponse(http::response<http::string_body> res);
    void Queue(std::string bytes);
    void Flush();
    void OnWritten(beast::error_code ec);
    void AfterResponse();

    // The client half-closed: answer what it already sent (pipelined requests in the buffer), then close.
    // Asio does not retry a read on a socket whose end-of-stream it has already reported (edge-triggered
    // epoll gives no new event), so never read the socket again.
    void ReadAfterEof();

    // ---- generation ----

    void StartGeneration(Endpoint endpoint);
    void SubmitGeneration(Endpoint endpoint, ApiResult<OpenAiRequest> parsed);
    void StartStream();
    std::string Chunk(const std::string& data) const;
    void Pump();
    void PumpEvents();

    // While a request runs, read the socket to notice a client that goes away. Data that arrives is a
    // pipelined next request: keep it for the parser.
    void StartWatch();
    void OnWatch(beast::error_code ec, size_t n);

    // The client shut down its sending side. It may still be reading (a half-close) or it may be gone:
    // write something harmless (an SSE comment, or an interim 100 response) and see whether the peer
    // answers with a reset.
    void OnPeerEof();
    void ScheduleProbe();

    // The client went away mid-request: cancel it so the engine frees its blocks at the next step.
    void ClientGone();

    // ---- closing ----

    void Close();
    void HardClose();

    // After answering 413, read and drop what the client is still sending for a moment, so that our close
    // does not reset the connection before the client has read the answer.
    void LingeringClose();
    void DrainInput();
    beast::tcp_stream stream_;
    ServingState& state_;
    net::steady_timer timer_;
    beast::flat_buffer buffer_;
    std::optional<http::request_parser<http::string_body>> parser_;
    http::request<http::string_body> req_;
    std::chrono::steady_clock::time_point started_;
    unsigned version_ = 11;
    std::string origin_;
    int status_ = 0;
    size_t body_bytes_ = 0;  // of the request being answered, for ReleaseMemoryAfter

    std::string out_;        // bytes queued for the socket
    std::string write_buf_;  // bytes being written
    bool writing_ = false;
    bool response_complete_ = false;  // the whole response is in out_/write_buf_
    bool close_after_ = false;
    bool chunked_ = false;
    bool closed_ = false;
    bool linger_ = false;
    size_t lingered_ = 0;
    std::chrono::steady_clock::time_point linger_deadline_;
    std::unique_ptr<Job> job_;
    std::array<char, 4096> watch_buf_{};
    bool watching_ = false;
    bool resume_after_watch_ = false;
    bool peer_eof_ = false;
    bool close_after_eof_buffer_ = false;
};

}  // namespace uniattn::server
