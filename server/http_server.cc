#include "server/http_server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <array>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "server/http_route.h"
#include "server/openai_response.h"

namespace uniattn::server {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using nlohmann::json;

constexpr size_t kMaxPipelinedBytes = 64 * 1024;
constexpr auto kProbeInterval = std::chrono::milliseconds(100);
constexpr auto kLingerTime = std::chrono::seconds(2);
constexpr size_t kLingerMaxBytes = 64 << 20;

std::string RandomId(const char* prefix) {
    thread_local std::mt19937_64 rng{std::random_device{}()};
    static constexpr char kHex[] = "0123456789abcdef";
    std::string id = prefix;
    for (int i = 0; i < 24; ++i) id += kHex[rng() & 15];
    return id;
}

int64_t NowSeconds() {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// After our probe write, a peer that closed its socket answers with RST: the socket is then CLOSED or
// carries a pending error. A peer that only half-closed keeps the connection in CLOSE_WAIT.
bool PeerGone(tcp::socket& socket) {
    const int fd = socket.native_handle();
    tcp_info info{};
    socklen_t len = sizeof info;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) == 0 && info.tcpi_state == TCP_CLOSE) return true;
    int err = 0;
    len = sizeof err;
    return getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err != 0;
}

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

class Session : public std::enable_shared_from_this<Session> {
  public:
    Session(tcp::socket&& socket, ServingState& state)
        : stream_(std::move(socket)), state_(state), timer_(stream_.get_executor()) {}

    void Run() {
        net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->ReadHeader(); });
    }

  private:
    const ServerConfig& config() const { return state_.config(); }
    std::chrono::steady_clock::duration RequestTimeout() const {
        return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
            std::chrono::duration<double>(config().request_timeout_s));
    }

    // ---- reading a request ----

    void ReadHeader() {
        if (closed_) return;
        parser_.emplace();
        parser_->header_limit(kHttpHeaderLimit);
        parser_->body_limit(static_cast<uint64_t>(config().max_body_bytes));
        // After end-of-stream only buffered bytes can arrive: a request cut short there times out at once.
        stream_.expires_after(close_after_eof_buffer_ ? std::chrono::milliseconds(1) : RequestTimeout());
        http::async_read_header(stream_, buffer_, *parser_,
                                [self = shared_from_this()](beast::error_code ec, size_t) { self->OnHeader(ec); });
    }

    void OnHeader(beast::error_code ec) {
        if (ec) return OnReadError(ec);
        const auto& req = parser_->get();
        if (auto len = parser_->content_length(); len && *len > static_cast<uint64_t>(config().max_body_bytes)) {
            return RejectBodyTooLarge(req.version());
        }
        auto expect = req[http::field::expect];
        if (beast::iequals(expect, "100-continue") && req.version() >= 11) {
            auto msg = std::make_shared<std::string>("HTTP/1.1 100 Continue\r\n\r\n");
            net::async_write(stream_, net::buffer(*msg),
                             [self = shared_from_this(), msg](beast::error_code ec, size_t) {
                                 if (ec) return self->HardClose();
                                 self->ReadBody();
                             });
            return;
        }
        ReadBody();
    }

    void ReadBody() {
        http::async_read(stream_, buffer_, *parser_,
                         [self = shared_from_this()](beast::error_code ec, size_t) { self->OnBody(ec); });
    }

    void OnBody(beast::error_code ec) {
        if (ec) return OnReadError(ec);
        stream_.expires_never();
        status_ = 0;
        try {
            Handle(parser_->release());
        } catch (const std::exception& e) {
            Failed("handling the request", e);
        }
    }

    // A handler threw (a bug, or an allocation failure): this connection answers 500 when it has sent
    // nothing of the response yet, else it is closed; its engine requests are cancelled. The process and
    // every other connection keep serving.
    void Failed(const char* what, const std::exception& e) noexcept {
        spdlog::error("http: exception while {} {}: {}", what, std::string(req_.target()), e.what());
        try {
            if (job_) {
                for (auto& h : job_->handles) h->Cancel();
                job_.reset();
            }
            if (closed_) return;
            if (status_ == 0 && !writing_ && out_.empty()) {
                close_after_ = true;
                return SendError(ApiError::Internal(std::string("internal error while ") + what));
            }
        } catch (...) {
        }
        HardClose();
    }

    void OnReadError(beast::error_code ec) {
        spdlog::debug("http read: {}", ec.message());
        if (closed_ || ec == net::error::operation_aborted) return;
        const unsigned version = parser_ && parser_->got_some() ? parser_->get().version() : 11;
        const HttpReadFailure failure = ClassifyHttpReadError(ec, config().max_body_bytes);
        switch (failure.action) {
            case HttpReadFailure::Action::kClose:
                return Close();
            case HttpReadFailure::Action::kHardClose:
                return HardClose();
            case HttpReadFailure::Action::kAnswer:
                if (failure.error.http_status == 413) return RejectBodyTooLarge(version);
                return SendSimpleError(failure.error, version, true);
        }
    }

    void RejectBodyTooLarge(unsigned version) {
        linger_ = true;
        SendSimpleError(BodyTooLargeError(config().max_body_bytes), version, true);
    }

    // ---- routing ----

    void Handle(http::request<http::string_body> req) {
        req_ = std::move(req);
        started_ = std::chrono::steady_clock::now();
        version_ = req_.version();
        close_after_ = !req_.keep_alive();
        origin_ = std::string(req_[http::field::origin]);

        auto match = MatchHttpRoute(req_.method(), req_.method_string(), req_.target());
        if (!match.ok()) return SendError(match.error());
        const HttpRouteMatch& m = match.value();
        if (m.needs_auth && !Authorize()) return;
        if (m.needs_model && !RequireModel()) return;
        switch (m.route) {
            case HttpRoute::kPreflight:
                return Preflight();
            case HttpRoute::kHealth:
                return HandleHealth();
            case HttpRoute::kReady:
                return HandleReady();
            case HttpRoute::kMetrics:
                return HandleMetrics();
            case HttpRoute::kModels:
                return HandleModels();
            case HttpRoute::kModel:
                return HandleModel(m.model_id);
            case HttpRoute::kCompletions:
                return StartGeneration(Endpoint::kCompletions);
            case HttpRoute::kChatCompletions:
                return StartGeneration(Endpoint::kChatCompletions);
            case HttpRoute::kTokenize:
                return HandleTokenize();
            case HttpRoute::kDetokenize:
                return HandleDetokenize();
        }
    }

    bool Authorize() {
        // Two keys are ambiguous (which one did the client mean?): refuse rather than pick one.
        if (req_.count(http::field::authorization) > 1) {
            SendError(ApiError::BadRequest("more than one Authorization header", {}, "invalid_authorization"));
            return false;
        }
        if (state_.Authorized(std::string_view(req_[http::field::authorization]))) return true;
        const bool missing = req_[http::field::authorization].empty();
        SendError(
            ApiError::Unauthorized(missing ? "missing API key: send Authorization: Bearer <key>" : "invalid API key"));
        return false;
    }

    bool RequireModel() {
        if (state_.engine()) return true;
        SendError(ApiError::Unavailable("the model is still loading", "loading"));
        return false;
    }

    bool CorsAllowed(std::string* allow_origin) const {
        if (origin_.empty() || config().cors_allowed_origins.empty()) return false;
        for (const std::string& o : config().cors_allowed_origins) {
            if (o == "*") {
                *allow_origin = "*";
                return true;
            }
            if (o == origin_) {
                *allow_origin = origin_;
                return true;
            }
        }
        return false;
    }

    template <typename Fields>
    void AddCommonHeaders(Fields& f) const {
        f.set(http::field::server, "uniattn-serve");
        std::string allow;
        if (CorsAllowed(&allow)) {
            f.set(http::field::access_control_allow_origin, allow);
            if (allow != "*") f.set(http::field::vary, "Origin");
        }
    }

    void Preflight() {
        http::response<http::string_body> res{http::status::no_content, version_};
        AddCommonHeaders(res);
        std::string allow;
        if (CorsAllowed(&allow)) {
            res.set(http::field::access_control_allow_methods, "GET, POST, OPTIONS");
            auto requested = req_[http::field::access_control_request_headers];
            res.set(http::field::access_control_allow_headers,
                    requested.empty() ? std::string("Authorization, Content-Type") : std::string(requested));
            res.set(http::field::access_control_max_age, "600");
        }
        res.set(http::field::allow, "GET, POST, OPTIONS");
        QueueResponse(std::move(res));
    }

    // ---- simple endpoints ----

    void HandleHealth() {
        if (state_.GetReadiness() == ServingState::Readiness::kStalled) {
            return SendJson(http::status::service_unavailable,
                            {{"status", "stalled"}, {"message", "the engine loop has not run for too long"}});
        }
        SendJson(http::status::ok, {{"status", "ok"}});
    }

    void HandleReady() {
        const auto r = state_.GetReadiness();
        SendJson(r == ServingState::Readiness::kReady ? http::status::ok : http::status::service_unavailable,
                 {{"status", ServingState::ReadinessName(r)}});
    }

    void HandleMetrics() {
        std::string body = state_.metrics() ? state_.metrics()->Render(state_.engine()) : std::string();
        Send(http::status::ok, std::move(body), "text/plain; version=0.0.4; charset=utf-8");
    }

    json ModelCard() const {
        const Engine* e = state_.engine();
        const ModelInfo& info = e->model_info();
        return {{"id", info.name},
                {"object", "model"},
                {"created", state_.start_time()},
                {"owned_by", "uniattn"},
                {"root", info.dir},
                {"parent", nullptr},
                {"max_model_len", info.max_model_len},
                {"kv_bytes_per_token", info.kv_bytes_per_token},
                {"kv_bytes_per_token_dense", info.kv_bytes_per_token_dense}};
    }

    void HandleModels() { SendJson(http::status::ok, {{"object", "list"}, {"data", json::array({ModelCard()})}}); }

    void HandleModel(const std::string& id) {
        if (id != state_.model().model_name) {
            return SendError(ApiError::NotFound("The model `" + id + "` does not exist.", "model", "model_not_found"));
        }
        SendJson(http::status::ok, ModelCard());
    }

    void HandleTokenize() {
        // A long text is millions of ids: the JSON is written off the I/O thread too.
        using Answer = std::pair<std::optional<ApiError>, std::string>;
        Offload<Answer>(
            "tokenizing",
            [&state = state_, body = TakeBody()] {
                auto r = server::HandleTokenize(body, state.model());
                return r.ok() ? Answer{std::nullopt, DumpJson(r.value())} : Answer{r.error(), {}};
            },
            [this](Answer a) {
                if (a.first) return SendError(*a.first);
                Send(http::status::ok, std::move(a.second), "application/json");
            });
    }

    // The request body, moved out: work offloaded to the preparation pool owns its copy of the text.
    std::string TakeBody() {
        body_bytes_ = req_.body().size();
        return std::move(req_.body());
    }

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

    void HandleDetokenize() {
        auto r = server::HandleDetokenize(req_.body(), state_.model());
        if (!r.ok()) return SendError(r.error());
        SendJson(http::status::ok, r.value());
    }

    // ---- responses ----

    void Send(http::status status, std::string body, const char* content_type) {
        http::response<http::string_body> res{status, version_};
        res.set(http::field::content_type, content_type);
        res.body() = std::move(body);
        QueueResponse(std::move(res));
    }

    void SendJson(http::status status, const json& body) { Send(status, DumpJson(body), "application/json"); }

    void SendError(const ApiError& e) {
        http::response<http::string_body> res{static_cast<http::status>(e.http_status), version_};
        res.set(http::field::content_type, "application/json");
        if (e.http_status == 405) res.set(http::field::allow, "GET, POST, OPTIONS");
        if (e.http_status == 401) res.set(http::field::www_authenticate, "Bearer");
        res.body() = e.Body();
        QueueResponse(std::move(res));
    }

    // For errors found before a request was parsed: no keep-alive.
    void SendSimpleError(const ApiError& e, unsigned version, bool close) {
        version_ = version;
        close_after_ = close;
        started_ = std::chrono::steady_clock::now();
        req_ = {};
        SendError(e);
    }

    void QueueResponse(http::response<http::string_body> res) {
        status_ = res.result_int();
        AddCommonHeaders(res);
        if (state_.draining()) close_after_ = true;  // let clients reconnect to another replica
        res.keep_alive(!close_after_);
        res.prepare_payload();
        std::ostringstream os;
        os << res;
        Queue(os.str());
        response_complete_ = true;
        Flush();
    }

    void Queue(std::string bytes) {
        if (!bytes.empty()) out_ += bytes;
    }

    void Flush() {
        if (writing_ || closed_) return;
        if (out_.empty()) {
            if (response_complete_) AfterResponse();
            return;
        }
        writing_ = true;
        write_buf_ = std::move(out_);
        out_.clear();
        stream_.expires_after(RequestTimeout());
        net::async_write(stream_, net::buffer(write_buf_),
                         [self = shared_from_this()](beast::error_code ec, size_t) { self->OnWritten(ec); });
    }

    void OnWritten(beast::error_code ec) {
        writing_ = false;
        if (closed_) return;
        stream_.expires_never();
        if (ec) return ClientGone();
        Flush();
    }

    void AfterResponse() {
        response_complete_ = false;
        if (state_.metrics()) state_.metrics()->CountHttpResponse(status_);
        if (config().access_log) {
            const double ms =
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started_).count();
            spdlog::info("{} {} {} {:.1f}ms", std::string(req_.method_string()), std::string(req_.target()), status_,
                         ms);
        }
        job_.reset();
        timer_.cancel();
        state_.ReleaseMemoryAfter(std::exchange(body_bytes_, 0));
        if (linger_) return LingeringClose();
        if (close_after_) return Close();
        if (peer_eof_) return ReadAfterEof();
        if (watching_) {
            // The disconnect watch holds the socket's read side: stop it, then read the next request.
            resume_after_watch_ = true;
            beast::error_code ignored;
            stream_.socket().cancel(ignored);
            return;
        }
        ReadHeader();
    }

    // The client half-closed: answer what it already sent (pipelined requests in the buffer), then close.
    // Asio does not retry a read on a socket whose end-of-stream it has already reported (edge-triggered
    // epoll gives no new event), so never read the socket again.
    void ReadAfterEof() {
        if (buffer_.size() == 0) return Close();
        close_after_eof_buffer_ = true;
        ReadHeader();
    }

    // ---- generation ----

    void StartGeneration(Endpoint endpoint) {
        if (state_.draining()) {
            return SendError(
                ApiError::Unavailable("the server is shutting down and admits no new requests", "draining"));
        }
        Offload<ApiResult<OpenAiRequest>>(
            "preparing the request",
            [&state = state_, endpoint, body = TakeBody()] {
                return ParseOpenAiRequest(endpoint, body, state.model());
            },
            [this, endpoint](ApiResult<OpenAiRequest> parsed) { SubmitGeneration(endpoint, std::move(parsed)); });
    }

    void SubmitGeneration(Endpoint endpoint, ApiResult<OpenAiRequest> parsed) {
        if (!parsed.ok()) return SendError(parsed.error());
        auto job = std::make_unique<Job>(state_);
        job->request = std::move(parsed.value());
        const char* prompt_param = endpoint == Endpoint::kChatCompletions ? "messages" : "prompt";
        for (size_t p = 0; p < job->request.prompts.size(); ++p) {
            GenerationRequest g = job->request.params;
            g.prompt_ids = job->request.prompts[p];
            g.num_earlier_sequences = static_cast<int>(p) * g.n;
            auto h = state_.Submit(std::move(g));
            if (!h.ok()) {
                ApiError e = ApiErrorFromStatus(h.status(), prompt_param);
                if (e.http_status == 503) e.code = state_.engine() ? "draining" : "loading";
                return SendError(e);  // `job` cancels whatever was submitted
            }
            job->handles.push_back(std::move(h).value());
        }
        job->responder = std::make_unique<OpenAiResponder>(
            job->request, *state_.model().tokenizer,
            RandomId(endpoint == Endpoint::kChatCompletions ? "chatcmpl-" : "cmpl-"), NowSeconds());
        job->hub = std::make_shared<NotifyHub>([weak = weak_from_this(), ex = stream_.get_executor()] {
            net::post(ex, [weak] {
                if (auto self = weak.lock()) self->Pump();
            });
        });
        job_ = std::move(job);
        if (job_->request.stream) StartStream();
        for (auto& h : job_->handles) h->SetNotify([hub = job_->hub] { hub->Notify(); });
        StartWatch();
        Pump();
    }

    void StartStream() {
        status_ = 200;
        chunked_ = version_ >= 11;
        if (!chunked_) close_after_ = true;
        if (state_.draining()) close_after_ = true;
        http::response<http::empty_body> res{http::status::ok, version_};
        res.set(http::field::content_type, "text/event-stream");
        res.set(http::field::cache_control, "no-cache");
        res.set("X-Accel-Buffering", "no");
        AddCommonHeaders(res);
        if (chunked_) res.chunked(true);
        res.keep_alive(!close_after_);
        std::ostringstream os;
        os << res.base();
        Queue(os.str());
        Queue(Chunk(job_->responder->StreamStart()));
        Flush();
    }

    std::string Chunk(const std::string& data) const {
        if (data.empty() || !chunked_) return data;
        std::ostringstream os;
        os << std::hex << data.size() << "\r\n" << data << "\r\n";
        return os.str();
    }

    void Pump() {
        try {
            PumpEvents();
        } catch (const std::exception& e) {
            Failed("streaming the answer", e);
        }
    }

    void PumpEvents() {
        if (!job_ || closed_ || response_complete_) return;
        Job& job = *job_;
        job.hub->Consumed();
        OpenAiResponder& responder = *job.responder;
        std::string out;
        RequestEvent event;
        for (size_t p = 0; p < job.handles.size() && !responder.error(); ++p) {
            while (!responder.error() && job.handles[p]->TryNext(&event)) {
                out += responder.OnEvent(static_cast<int>(p), event);
            }
        }
        if (!responder.done()) {
            bool all_closed = true;
            for (auto& h : job.handles) all_closed &= h->closed();
            if (all_closed) {
                RequestEvent e;
                e.kind = RequestEvent::Kind::kError;
                e.error = Internal("the engine ended the request without finishing every sample");
                out += responder.OnEvent(0, e);
            }
        }
        if (responder.error()) {
            for (auto& h : job.handles) h->Cancel();
        }
        if (job.request.stream) {
            Queue(Chunk(out));
            if (responder.done()) {
                Queue(Chunk(responder.StreamEnd()));
                if (chunked_) Queue("0\r\n\r\n");
                response_complete_ = true;
            }
            Flush();
            return;
        }
        if (!responder.done()) return;
        if (responder.error()) return SendError(*responder.error());
        SendJson(http::status::ok, responder.Body());
    }

    // While a request runs, read the socket to notice a client that goes away. Data that arrives is a
    // pipelined next request: keep it for the parser.
    void StartWatch() {
        if (watching_ || peer_eof_ || closed_ || buffer_.size() >= kMaxPipelinedBytes) return;
        watching_ = true;
        stream_.socket().async_read_some(
            net::buffer(watch_buf_),
            [self = shared_from_this()](beast::error_code ec, size_t n) { self->OnWatch(ec, n); });
    }

    void OnWatch(beast::error_code ec, size_t n) {
        watching_ = false;
        if (n > 0) {
            auto dst = buffer_.prepare(n);
            net::buffer_copy(dst, net::buffer(watch_buf_.data(), n));
            buffer_.commit(n);
        }
        if (closed_) return;
        if (ec == net::error::eof) peer_eof_ = true;
        if (resume_after_watch_) {
            resume_after_watch_ = false;
            if (peer_eof_) return ReadAfterEof();
            if (!ec || ec == net::error::operation_aborted) return ReadHeader();
            return HardClose();
        }
        if (!job_) return;
        if (!ec) return StartWatch();
        if (ec == net::error::operation_aborted) return;
        if (ec == net::error::eof) return OnPeerEof();
        ClientGone();
    }

    // The client shut down its sending side. It may still be reading (a half-close) or it may be gone:
    // write something harmless (an SSE comment, or an interim 100 response) and see whether the peer
    // answers with a reset.
    void OnPeerEof() {
        if (!job_ || response_complete_) return;
        if (version_ < 11) return ClientGone();
        Queue(job_->request.stream ? Chunk(": ping\n\n") : std::string("HTTP/1.1 100 Continue\r\n\r\n"));
        Flush();
        ScheduleProbe();
    }

    void ScheduleProbe() {
        timer_.expires_after(kProbeInterval);
        timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
            if (ec || self->closed_ || !self->job_) return;
            if (PeerGone(self->stream_.socket())) return self->ClientGone();
            self->ScheduleProbe();
        });
    }

    // The client went away mid-request: cancel it so the engine frees its blocks at the next step.
    void ClientGone() {
        if (job_) {
            if (state_.metrics()) state_.metrics()->CountClientDisconnect();
            spdlog::debug("client went away; cancelling {} engine request(s)", job_->handles.size());
            for (auto& h : job_->handles) h->Cancel();
            job_.reset();
        }
        HardClose();
    }

    // ---- closing ----

    void Close() {
        if (closed_) return;
        closed_ = true;
        job_.reset();
        timer_.cancel();
        beast::error_code ec;
        stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
        stream_.socket().close(ec);
    }

    void HardClose() {
        if (closed_) return;
        closed_ = true;
        job_.reset();
        timer_.cancel();
        beast::error_code ec;
        stream_.socket().close(ec);
    }

    // After answering 413, read and drop what the client is still sending for a moment, so that our close
    // does not reset the connection before the client has read the answer.
    void LingeringClose() {
        if (closed_) return;
        beast::error_code ec;
        stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
        linger_deadline_ = std::chrono::steady_clock::now() + kLingerTime;
        DrainInput();
    }

    void DrainInput() {
        if (closed_) return;
        const auto left = linger_deadline_ - std::chrono::steady_clock::now();
        if (left <= std::chrono::steady_clock::duration::zero() || lingered_ > kLingerMaxBytes) return HardClose();
        stream_.expires_after(left);
        stream_.async_read_some(net::buffer(watch_buf_), [self = shared_from_this()](beast::error_code ec, size_t n) {
            self->lingered_ += n;
            if (ec) return self->HardClose();
            self->DrainInput();
        });
    }

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

}  // namespace

class HttpServer::Impl : public std::enable_shared_from_this<HttpServer::Impl> {
  public:
    Impl(ServingState& state, net::io_context& ioc) : state_(state), ioc_(ioc), acceptor_(ioc), retry_(ioc) {}

    Status Start(const std::string& host, int port) {
        beast::error_code ec;
        const auto address = net::ip::make_address(host, ec);
        if (ec) return InvalidArgument("server.host: '" + host + "' is not an IP address");
        const tcp::endpoint endpoint(address, static_cast<unsigned short>(port));
        acceptor_.open(endpoint.protocol(), ec);
        if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
        if (!ec) acceptor_.bind(endpoint, ec);
        if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
        if (ec) {
            return Unavailable("cannot listen for HTTP on " + host + ":" + std::to_string(port) + ": " + ec.message());
        }
        port_ = acceptor_.local_endpoint().port();
        Accept();
        return Status::Ok();
    }

    void Accept() {
        acceptor_.async_accept(net::make_strand(ioc_),
                               [self = shared_from_this()](beast::error_code ec, tcp::socket socket) {
                                   if (ec == net::error::operation_aborted || !self->acceptor_.is_open()) return;
                                   if (ec) {
                                       // Out of file descriptors and the like: back off instead of spinning.
                                       spdlog::warn("accept failed: {}", ec.message());
                                       self->retry_.expires_after(std::chrono::milliseconds(100));
                                       self->retry_.async_wait([self](beast::error_code) { self->Accept(); });
                                       return;
                                   }
                                   beast::error_code ignored;
                                   socket.set_option(tcp::no_delay(true), ignored);
                                   std::make_shared<Session>(std::move(socket), self->state_)->Run();
                                   self->Accept();
                               });
    }

    void Stop() {
        net::post(ioc_, [self = shared_from_this()] {
            beast::error_code ec;
            self->acceptor_.close(ec);
            self->retry_.cancel();
        });
    }

    int port() const { return port_; }

  private:
    ServingState& state_;
    net::io_context& ioc_;
    tcp::acceptor acceptor_;
    net::steady_timer retry_;
    int port_ = 0;
};

HttpServer::HttpServer(ServingState& state, net::io_context& ioc) : impl_(std::make_shared<Impl>(state, ioc)) {}
HttpServer::~HttpServer() = default;
Status HttpServer::Start(const std::string& host, int port) { return impl_->Start(host, port); }
int HttpServer::port() const { return impl_->port(); }
void HttpServer::StopAccepting() { impl_->Stop(); }

}  // namespace uniattn::server
