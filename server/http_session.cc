// HttpSession, connection and framing: reading a request (header, 100-continue, body, read errors),
// queueing and writing responses, keep-alive and pipelining, noticing a client that goes away while its
// request runs, closing.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <boost/asio/write.hpp>
#include <sstream>
#include <utility>

#include "server/http_route.h"
#include "server/http_session.h"

namespace uniattn::server {
namespace {

constexpr size_t kMaxPipelinedBytes = 64 * 1024;
constexpr auto kProbeInterval = std::chrono::milliseconds(100);
constexpr auto kLingerTime = std::chrono::seconds(2);
constexpr size_t kLingerMaxBytes = 64 << 20;

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

}  // namespace

std::chrono::steady_clock::duration HttpSession::RequestTimeout() const {
    return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(config().request_timeout_s));
}

void HttpSession::ReadHeader() {
    if (closed_) return;
    parser_.emplace();
    parser_->header_limit(kHttpHeaderLimit);
    parser_->body_limit(static_cast<uint64_t>(config().max_body_bytes));
    // After end-of-stream only buffered bytes can arrive: a request cut short there times out at once.
    stream_.expires_after(close_after_eof_buffer_ ? std::chrono::milliseconds(1) : RequestTimeout());
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) { self->OnHeader(ec); });
}

void HttpSession::OnHeader(beast::error_code ec) {
    if (ec) return OnReadError(ec);
    const auto& req = parser_->get();
    if (auto len = parser_->content_length(); len && *len > static_cast<uint64_t>(config().max_body_bytes)) {
        return RejectBodyTooLarge(req.version());
    }
    auto expect = req[http::field::expect];
    if (beast::iequals(expect, "100-continue") && req.version() >= 11) {
        auto msg = std::make_shared<std::string>("HTTP/1.1 100 Continue\r\n\r\n");
        net::async_write(stream_, net::buffer(*msg), [self = shared_from_this(), msg](beast::error_code ec, size_t) {
            if (ec) return self->HardClose();
            self->ReadBody();
        });
        return;
    }
    ReadBody();
}

void HttpSession::ReadBody() {
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->OnBody(ec); });
}

void HttpSession::OnBody(beast::error_code ec) {
    if (ec) return OnReadError(ec);
    stream_.expires_never();
    status_ = 0;
    try {
        Handle(parser_->release());
    } catch (const std::exception& e) {
        Failed("handling the request", e);
    }
}

void HttpSession::Failed(const char* what, const std::exception& e) noexcept {
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

void HttpSession::OnReadError(beast::error_code ec) {
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

void HttpSession::RejectBodyTooLarge(unsigned version) {
    linger_ = true;
    SendSimpleError(BodyTooLargeError(config().max_body_bytes), version, true);
}

void HttpSession::Send(http::status status, std::string body, const char* content_type) {
    http::response<http::string_body> res{status, version_};
    res.set(http::field::content_type, content_type);
    res.body() = std::move(body);
    QueueResponse(std::move(res));
}

void HttpSession::SendError(const ApiError& e) {
    http::response<http::string_body> res{static_cast<http::status>(e.http_status), version_};
    res.set(http::field::content_type, "application/json");
    if (e.http_status == 405) res.set(http::field::allow, "GET, POST, OPTIONS");
    if (e.http_status == 401) res.set(http::field::www_authenticate, "Bearer");
    res.body() = e.Body();
    QueueResponse(std::move(res));
}

void HttpSession::SendSimpleError(const ApiError& e, unsigned version, bool close) {
    version_ = version;
    close_after_ = close;
    started_ = std::chrono::steady_clock::now();
    req_ = {};
    SendError(e);
}

void HttpSession::QueueResponse(http::response<http::string_body> res) {
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

void HttpSession::Queue(std::string bytes) {
    if (!bytes.empty()) out_ += bytes;
}

void HttpSession::Flush() {
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

void HttpSession::OnWritten(beast::error_code ec) {
    writing_ = false;
    if (closed_) return;
    stream_.expires_never();
    if (ec) return ClientGone();
    Flush();
}

void HttpSession::AfterResponse() {
    response_complete_ = false;
    if (state_.metrics()) state_.metrics()->CountHttpResponse(status_);
    if (config().access_log) {
        const double ms =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started_).count();
        spdlog::info("{} {} {} {:.1f}ms", std::string(req_.method_string()), std::string(req_.target()), status_, ms);
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

void HttpSession::ReadAfterEof() {
    if (buffer_.size() == 0) return Close();
    close_after_eof_buffer_ = true;
    ReadHeader();
}

void HttpSession::StartWatch() {
    if (watching_ || peer_eof_ || closed_ || buffer_.size() >= kMaxPipelinedBytes) return;
    watching_ = true;
    stream_.socket().async_read_some(
        net::buffer(watch_buf_), [self = shared_from_this()](beast::error_code ec, size_t n) { self->OnWatch(ec, n); });
}

void HttpSession::OnWatch(beast::error_code ec, size_t n) {
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

void HttpSession::OnPeerEof() {
    if (!job_ || response_complete_) return;
    if (version_ < 11) return ClientGone();
    Queue(job_->request.stream ? Chunk(": ping\n\n") : std::string("HTTP/1.1 100 Continue\r\n\r\n"));
    Flush();
    ScheduleProbe();
}

void HttpSession::ScheduleProbe() {
    timer_.expires_after(kProbeInterval);
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
        if (ec || self->closed_ || !self->job_) return;
        if (PeerGone(self->stream_.socket())) return self->ClientGone();
        self->ScheduleProbe();
    });
}

void HttpSession::ClientGone() {
    if (job_) {
        if (state_.metrics()) state_.metrics()->CountClientDisconnect();
        spdlog::debug("client went away; cancelling {} engine request(s)", job_->handles.size());
        for (auto& h : job_->handles) h->Cancel();
        job_.reset();
    }
    HardClose();
}

void HttpSession::Close() {
    if (closed_) return;
    closed_ = true;
    job_.reset();
    timer_.cancel();
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.socket().close(ec);
}

void HttpSession::HardClose() {
    if (closed_) return;
    closed_ = true;
    job_.reset();
    timer_.cancel();
    beast::error_code ec;
    stream_.socket().close(ec);
}

void HttpSession::LingeringClose() {
    if (closed_) return;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    linger_deadline_ = std::chrono::steady_clock::now() + kLingerTime;
    DrainInput();
}

void HttpSession::DrainInput() {
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

}  // namespace uniattn::server
