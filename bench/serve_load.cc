#include "bench/serve_load.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <chrono>
#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

namespace uniattn::bench {
namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

Clock::duration ToDuration(double seconds) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

std::string HostHeader(const BaseUrl& u) {
    const std::string host = u.host.find(':') != std::string::npos ? "[" + u.host + "]" : u.host;
    return host + ":" + std::to_string(u.port);
}

std::string Truncate(std::string s, size_t n = 300) {
    if (s.size() > n) s.resize(n);
    return s;
}

// A cut connection is `io`; bytes that are not an HTTP response are `malformed`.
std::string ErrorKind(const beast::error_code& ec) {
    if (ec == beast::error::timeout) return "timeout";
    if (ec == http::error::partial_message || ec == http::error::end_of_stream) return "io";
    return ec.category() == http::make_error_code(http::error::bad_version).category() ? "malformed" : "io";
}

class LoadRun;

// One request: connect, write, then read the response as it arrives and time every content chunk. Owned by
// its pending handlers (shared_from_this); hands its RequestResult to the run exactly once.
class Call : public std::enable_shared_from_this<Call> {
  public:
    Call(LoadRun* run, net::io_context& ioc, size_t idx, http::request<http::string_body> req, RequestResult result,
         const LoadOptions& options)
        : run_(run),
          stream_(ioc),
          idx_(idx),
          req_(std::move(req)),
          result_(std::move(result)),
          stream_mode_(options.stream),
          endpoint_(options.endpoint),
          timeout_(ToDuration(options.timeout_s)) {}

    void Start(const tcp::resolver::results_type& endpoints) {
        start_ = Clock::now();
        stream_.expires_after(timeout_);  // one deadline for the whole request
        stream_.async_connect(endpoints, [self = shared_from_this()](beast::error_code ec, const tcp::endpoint&) {
            if (ec) return self->Fail(ec == beast::error::timeout ? "timeout" : "connect", ec.message());
            http::async_write(self->stream_, self->req_, [self](beast::error_code ec, size_t) {
                if (ec) return self->Fail(ErrorKind(ec), ec.message());
                self->ReadHeader();
            });
        });
    }

  private:
    void ReadHeader() {
        parser_.emplace();
        // Not boost::none: Boost 1.74's parser compares lengths against the optional, and none loses.
        parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
        http::async_read_header(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, size_t) {
            if (self->finished_) return;
            if (ec) return self->Fail(ErrorKind(ec), ec.message());
            self->status_ = self->parser_->get().result_int();
            self->ReadSome();
        });
    }

    void ReadSome() {
        if (parser_->is_done()) return Complete(Clock::now());
        auto& body = parser_->get().body();
        body.data = chunk_;
        body.size = sizeof(chunk_);
        http::async_read_some(stream_, buffer_, *parser_,
                              [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
    }

    void OnRead(beast::error_code ec) {
        if (finished_) return;
        const Clock::time_point now = Clock::now();
        const size_t got = sizeof(chunk_) - parser_->get().body().size;
        if (ec == http::error::need_buffer) ec = {};
        if (got > 0) OnBytes(std::string_view(chunk_, got), now);
        if (finished_) return;
        if (ec) return Fail(ErrorKind(ec), ec.message());
        ReadSome();
    }

    void OnBytes(std::string_view bytes, Clock::time_point now) {
        if (status_ != 200 || !stream_mode_) {
            body_.append(bytes);
            return;
        }
        events_.clear();
        sse_.Feed(bytes, &events_);
        for (const std::string& e : events_) {
            OnEvent(e, now);
            if (finished_) return;
        }
    }

    void OnEvent(const std::string& data, Clock::time_point now) {
        if (data == "[DONE]") {
            saw_done_ = true;
            return;
        }
        const json j = json::parse(data, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded() || !j.is_object()) return Fail("malformed", "not a JSON object: " + Truncate(data));
        if (j.contains("error")) return Fail("stream_error", Truncate(j["error"].dump()));
        ReadUsage(j);
        const auto choices = j.find("choices");
        if (choices == j.end() || !choices->is_array() || choices->empty()) return;
        const json& c0 = (*choices)[0];
        const json* content = nullptr;
        if (endpoint_ == ApiEndpoint::kCompletions) {
            if (auto t = c0.find("text"); t != c0.end()) content = &*t;
        } else if (auto d = c0.find("delta"); d != c0.end() && d->is_object()) {
            if (auto t = d->find("content"); t != d->end()) content = &*t;
        }
        if (content == nullptr || !content->is_string() || content->get_ref<const std::string&>().empty()) return;
        if (result_.content_chunks == 0) {
            result_.ttft_s = Seconds(start_, now);
        } else {
            result_.itl_s.push_back(Seconds(last_content_, now));
        }
        last_content_ = now;
        ++result_.content_chunks;
        OnContentChunk();
    }

    void ReadUsage(const json& j) {
        const auto usage = j.find("usage");
        if (usage == j.end() || !usage->is_object()) return;
        if (auto c = usage->find("completion_tokens"); c != usage->end() && c->is_number_integer()) {
            usage_output_tokens_ = c->get<int64_t>();
        }
        if (auto p = usage->find("prompt_tokens"); p != usage->end() && p->is_number_integer()) {
            result_.prompt_tokens = p->get<int64_t>();
        }
    }

    void Complete(Clock::time_point now) {
        if (status_ != 200) return Fail("http_" + std::to_string(status_), Truncate(body_));
        result_.e2e_s = Seconds(start_, now);
        if (stream_mode_) {
            if (!saw_done_ || sse_.pending() > 0) return Fail("malformed", "the stream ended without data: [DONE]");
            if (result_.content_chunks == 0) result_.ttft_s = result_.e2e_s;
            result_.output_tokens = usage_output_tokens_ >= 0 ? usage_output_tokens_ : result_.content_chunks;
        } else {
            const json j = json::parse(body_, nullptr, /*allow_exceptions=*/false);
            if (j.is_discarded() || !j.is_object()) return Fail("malformed", "not a JSON object: " + Truncate(body_));
            ReadUsage(j);
            result_.ttft_s = result_.e2e_s;
            result_.output_tokens = std::max<int64_t>(usage_output_tokens_, 0);
        }
        result_.ok = true;
        Finish();
    }

    void Fail(std::string kind, std::string detail) {
        if (finished_) return;
        result_.ok = false;
        result_.error = std::move(kind);
        result_.error_detail = std::move(detail);
        result_.e2e_s = Seconds(start_, Clock::now());
        Finish();
    }

    void Finish();
    void OnContentChunk();

    LoadRun* run_;
    beast::tcp_stream stream_;
    size_t idx_;
    http::request<http::string_body> req_;
    RequestResult result_;
    bool stream_mode_;
    ApiEndpoint endpoint_;
    Clock::duration timeout_;
    beast::flat_buffer buffer_;
    std::optional<http::response_parser<http::buffer_body>> parser_;
    char chunk_[16384];
    SseParser sse_;
    std::vector<std::string> events_;
    std::string body_;  // non-streaming or error responses
    Clock::time_point start_, last_content_;
    int status_ = 0;
    int64_t usage_output_tokens_ = -1;
    bool saw_done_ = false;
    bool finished_ = false;
};

// Admission, bookkeeping and progress for one run; everything runs on the io_context's single thread.
class LoadRun {
  public:
    LoadRun(const LoadOptions& options, tcp::resolver::results_type endpoints,
            const std::function<void(const LoadProgress&)>& progress)
        : options_(options),
          endpoints_(std::move(endpoints)),
          progress_(progress),
          schedule_(options.request_rate, options.seed),
          rng_(options.seed ^ 0x9E3779B97F4A7C15ull),
          arrival_timer_(ioc_),
          progress_timer_(ioc_),
          target_(options.url.prefix + (options.endpoint == ApiEndpoint::kChat ? "/chat/completions" : "/completions")),
          host_(HostHeader(options.url)) {}

    LoadResult Run() {
        start_ = Clock::now();
        end_ = start_;
        if (OpenLoop()) {
            ScheduleArrival();
        } else {
            TryStart();
        }
        if (progress_) ScheduleTick();
        ioc_.run();
        LoadResult out;
        out.requests = std::move(results_);
        out.duration_s = Seconds(start_, end_);
        if (progress_) progress_(Progress(/*final=*/true));
        return out;
    }

    void OnDone(size_t idx, RequestResult result) {
        if (!result.ok) ++num_errors_;
        results_[idx] = std::move(result);
        --num_in_flight_;
        ++num_done_;
        end_ = Clock::now();
        TryStart();
        MaybeStop();
    }
    void OnContentChunk() { ++num_chunks_; }

  private:
    // A finite rate: arrivals come from the Poisson schedule and wait for a slot. Otherwise every free slot
    // is filled at once (a closed loop when the concurrency is limited).
    bool OpenLoop() const { return options_.request_rate > 0 && !std::isinf(options_.request_rate); }
    bool PastDuration() const {
        return options_.duration_s > 0 && Seconds(start_, Clock::now()) >= options_.duration_s;
    }
    bool CountLeft() const { return options_.num_prompts == 0 || num_admitted_ < options_.num_prompts; }

    void ScheduleArrival() {
        if (options_.num_prompts > 0 && num_arrived_ >= options_.num_prompts) return StopArrivals();
        const double t = schedule_.Next();
        if (options_.duration_s > 0 && t >= options_.duration_s) return StopArrivals();
        arrival_timer_.expires_at(start_ + ToDuration(t));
        arrival_timer_.async_wait([this](beast::error_code ec) {
            if (ec) return;
            ++num_arrived_;
            ++num_waiting_;
            TryStart();
            ScheduleArrival();
        });
    }

    void StopArrivals() {
        arrivals_done_ = true;
        MaybeStop();
    }

    void TryStart() {
        if (PastDuration()) {
            num_waiting_ = 0;
            arrivals_done_ = true;
            arrival_timer_.cancel();
            return;
        }
        const int64_t limit = options_.concurrency > 0 ? options_.concurrency : INT64_MAX;
        while (num_in_flight_ < limit) {
            if (OpenLoop()) {
                if (num_waiting_ == 0) break;
                --num_waiting_;
            } else if (!CountLeft()) {
                arrivals_done_ = true;
                break;
            }
            StartOne();
        }
        if (!OpenLoop() && !CountLeft()) arrivals_done_ = true;
    }

    void StartOne() {
        const size_t idx = static_cast<size_t>(num_admitted_++);
        ++num_in_flight_;
        RequestResult r;
        r.start_s = Seconds(start_, Clock::now());
        r.input_len = SampleLength(options_.input_len, options_.range_ratio, rng_);
        r.max_tokens = SampleLength(options_.output_len, options_.range_ratio, rng_);
        const std::string prompt = options_.prompts.empty() ? RandomWordsPrompt(r.input_len, rng_)
                                                            : options_.prompts[idx % options_.prompts.size()];
        http::request<http::string_body> req{http::verb::post, target_, 11};
        req.set(http::field::host, host_);
        req.set(http::field::user_agent, "uniattn-bench-serve");
        req.set(http::field::content_type, "application/json");
        req.set(http::field::accept, options_.stream ? "text/event-stream" : "application/json");
        if (!options_.api_key.empty()) req.set(http::field::authorization, "Bearer " + options_.api_key);
        req.keep_alive(false);
        req.body() = RequestBody(options_, prompt, r.max_tokens);
        req.prepare_payload();
        results_.emplace_back();
        auto call = std::make_shared<Call>(this, ioc_, idx, std::move(req), std::move(r), options_);
        call->Start(endpoints_);
    }

    void MaybeStop() {
        if (!arrivals_done_ || num_waiting_ > 0 || num_in_flight_ > 0) return;
        arrival_timer_.cancel();
        progress_timer_.cancel();
    }

    LoadProgress Progress(bool final) {
        const Clock::time_point now = Clock::now();
        LoadProgress p;
        p.num_done = num_done_;
        p.num_total = options_.duration_s > 0 ? 0 : options_.num_prompts;
        p.num_errors = num_errors_;
        p.num_in_flight = num_in_flight_;
        p.elapsed_s = Seconds(start_, final ? end_ : now);
        const double dt = Seconds(last_tick_, now);
        p.chunks_per_s = final ? static_cast<double>(num_chunks_) / std::max(p.elapsed_s, 1e-9)
                               : static_cast<double>(num_chunks_ - last_tick_chunks_) / std::max(dt, 1e-9);
        p.final = final;
        last_tick_ = now;
        last_tick_chunks_ = num_chunks_;
        return p;
    }

    void ScheduleTick() {
        last_tick_ = Clock::now();
        ArmTick();
    }
    void ArmTick() {
        progress_timer_.expires_after(std::chrono::seconds(1));
        progress_timer_.async_wait([this](beast::error_code ec) {
            if (ec) return;
            progress_(Progress(/*final=*/false));
            ArmTick();
        });
    }

    const LoadOptions& options_;
    net::io_context ioc_{1};
    tcp::resolver::results_type endpoints_;
    std::function<void(const LoadProgress&)> progress_;
    ArrivalSchedule schedule_;
    Rng rng_;
    net::steady_timer arrival_timer_;
    net::steady_timer progress_timer_;
    std::string target_;
    std::string host_;
    std::vector<RequestResult> results_;
    Clock::time_point start_, end_, last_tick_;
    int64_t num_arrived_ = 0, num_waiting_ = 0, num_admitted_ = 0, num_in_flight_ = 0, num_done_ = 0;
    int64_t num_errors_ = 0, num_chunks_ = 0, last_tick_chunks_ = 0;
    bool arrivals_done_ = false;
};

void Call::Finish() {
    finished_ = true;
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
    run_->OnDone(idx_, std::move(result_));
}

void Call::OnContentChunk() { run_->OnContentChunk(); }

StatusOr<tcp::resolver::results_type> Resolve(net::io_context& ioc, const BaseUrl& url) {
    tcp::resolver resolver(ioc);
    beast::error_code ec;
    auto eps = resolver.resolve(url.host, std::to_string(url.port), ec);
    if (ec) return Unavailable("cannot resolve " + url.host + ": " + ec.message());
    return eps;
}

}  // namespace

std::string RequestBody(const LoadOptions& options, const std::string& prompt, int max_tokens) {
    json j = json::object();
    j["model"] = options.model;
    if (options.endpoint == ApiEndpoint::kChat) {
        j["messages"] = json::array({json{{"role", "user"}, {"content", prompt}}});
        j["max_completion_tokens"] = max_tokens;
    } else {
        j["prompt"] = prompt;
    }
    j["max_tokens"] = max_tokens;
    j["temperature"] = options.temperature;
    if (options.ignore_eos) j["ignore_eos"] = true;
    if (!options.banned_tokens.empty()) {
        json bias = json::object();
        for (int32_t id : options.banned_tokens) bias[std::to_string(id)] = -100;
        j["logit_bias"] = std::move(bias);
    }
    j["stream"] = options.stream;
    if (options.stream) j["stream_options"] = json{{"include_usage", true}};
    return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

StatusOr<LoadResult> RunLoad(const LoadOptions& options, const std::function<void(const LoadProgress&)>& progress) {
    if (options.model.empty()) return InvalidArgument("no model name");
    if (options.num_prompts < 0) return InvalidArgument("--num-prompts must be >= 0");
    if (options.num_prompts == 0 && options.duration_s <= 0) {
        return InvalidArgument("--num-prompts 0 (unlimited) needs --duration");
    }
    if (options.concurrency < 0) return InvalidArgument("--concurrency must be >= 0");
    if (options.input_len < 1 || options.output_len < 1) return InvalidArgument("lengths must be >= 1");
    if (options.range_ratio < 0 || options.range_ratio >= 1) return InvalidArgument("--range-ratio must be in [0, 1)");
    if (options.timeout_s <= 0) return InvalidArgument("--timeout must be > 0");
    net::io_context resolver_ioc;
    UA_ASSIGN_OR_RETURN(tcp::resolver::results_type eps, Resolve(resolver_ioc, options.url));
    LoadRun run(options, std::move(eps), progress);
    return run.Run();
}

StatusOr<std::string> DiscoverModel(const BaseUrl& url, const std::string& api_key, double timeout_s) {
    net::io_context ioc;
    UA_ASSIGN_OR_RETURN(tcp::resolver::results_type eps, Resolve(ioc, url));
    beast::tcp_stream stream(ioc);
    http::request<http::empty_body> req{http::verb::get, url.prefix + "/models", 11};
    req.set(http::field::host, HostHeader(url));
    req.set(http::field::user_agent, "uniattn-bench-serve");
    if (!api_key.empty()) req.set(http::field::authorization, "Bearer " + api_key);
    req.keep_alive(false);
    beast::flat_buffer buffer;
    http::response<http::string_body> res;
    beast::error_code result;
    stream.expires_after(ToDuration(timeout_s));
    stream.async_connect(eps, [&](beast::error_code ec, const tcp::endpoint&) {
        if (ec) {
            result = ec;
            return;
        }
        http::async_write(stream, req, [&](beast::error_code ec2, size_t) {
            if (ec2) {
                result = ec2;
                return;
            }
            http::async_read(stream, buffer, res, [&](beast::error_code ec3, size_t) { result = ec3; });
        });
    });
    ioc.run();
    const std::string where = "GET http://" + HostHeader(url) + url.prefix + "/models";
    if (result) return Unavailable(where + ": " + result.message());
    if (res.result_int() != 200) {
        return Unavailable(where + ": HTTP " + std::to_string(res.result_int()) + " " + Truncate(res.body()));
    }
    const json j = json::parse(res.body(), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.contains("data") || !j["data"].is_array() || j["data"].empty() ||
        !j["data"][0].contains("id") || !j["data"][0]["id"].is_string()) {
        return DataLoss(where + ": no models listed: " + Truncate(res.body()));
    }
    return j["data"][0]["id"].get<std::string>();
}

}  // namespace uniattn::bench
