// HttpSession, generation: /v1/completions and /v1/chat/completions submitted to the engine, then
// answered from the requests' events: SSE chunks over chunked transfer encoding as they come (stream:
// true), or one JSON body once every choice has finished.
#include <random>
#include <sstream>

#include "server/http_session.h"

namespace uniattn::server {
namespace {

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

}  // namespace

using nlohmann::json;

void HttpSession::StartGeneration(Endpoint endpoint) {
    if (state_.draining()) {
        return SendError(ApiError::Unavailable("the server is shutting down and admits no new requests", "draining"));
    }
    Offload<ApiResult<OpenAiRequest>>(
        "preparing the request",
        [&state = state_, endpoint, body = TakeBody()] { return ParseOpenAiRequest(endpoint, body, state.model()); },
        [this, endpoint](ApiResult<OpenAiRequest> parsed) { SubmitGeneration(endpoint, std::move(parsed)); });
}

void HttpSession::SubmitGeneration(Endpoint endpoint, ApiResult<OpenAiRequest> parsed) {
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

void HttpSession::StartStream() {
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

std::string HttpSession::Chunk(const std::string& data) const {
    if (data.empty() || !chunked_) return data;
    std::ostringstream os;
    os << std::hex << data.size() << "\r\n" << data << "\r\n";
    return os.str();
}

void HttpSession::Pump() {
    try {
        PumpEvents();
    } catch (const std::exception& e) {
        Failed("streaming the answer", e);
    }
}

void HttpSession::PumpEvents() {
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

}  // namespace uniattn::server
