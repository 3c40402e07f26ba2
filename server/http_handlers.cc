// HttpSession, routes and handlers: dispatch by route, API keys, CORS, the probes and metrics, the model
// list, /tokenize and /detokenize, and the hand-off of parsing and tokenizing to the preparation pool.
#include <utility>

#include "server/http_route.h"
#include "server/http_session.h"

namespace uniattn::server {

using nlohmann::json;

void HttpSession::Handle(http::request<http::string_body> req) {
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

bool HttpSession::Authorize() {
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

bool HttpSession::RequireModel() {
    if (state_.engine()) return true;
    SendError(ApiError::Unavailable("the model is still loading", "loading"));
    return false;
}

bool HttpSession::CorsAllowed(std::string* allow_origin) const {
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

void HttpSession::Preflight() {
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

void HttpSession::HandleHealth() {
    if (state_.GetReadiness() == ServingState::Readiness::kStalled) {
        return SendJson(http::status::service_unavailable,
                        {{"status", "stalled"}, {"message", "the engine loop has not run for too long"}});
    }
    SendJson(http::status::ok, {{"status", "ok"}});
}

void HttpSession::HandleReady() {
    const auto r = state_.GetReadiness();
    SendJson(r == ServingState::Readiness::kReady ? http::status::ok : http::status::service_unavailable,
             {{"status", ServingState::ReadinessName(r)}});
}

void HttpSession::HandleMetrics() {
    std::string body = state_.metrics() ? state_.metrics()->Render(state_.engine()) : std::string();
    Send(http::status::ok, std::move(body), "text/plain; version=0.0.4; charset=utf-8");
}

json HttpSession::ModelCard() const {
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

void HttpSession::HandleModel(const std::string& id) {
    if (id != state_.model().model_name) {
        return SendError(ApiError::NotFound("The model `" + id + "` does not exist.", "model", "model_not_found"));
    }
    SendJson(http::status::ok, ModelCard());
}

void HttpSession::HandleTokenize() {
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

std::string HttpSession::TakeBody() {
    body_bytes_ = req_.body().size();
    return std::move(req_.body());
}

void HttpSession::HandleDetokenize() {
    auto r = server::HandleDetokenize(req_.body(), state_.model());
    if (!r.ok()) return SendError(r.error());
    SendJson(http::status::ok, r.value());
}

}  // namespace uniattn::server
