#include "server/http_route.h"

#include <boost/asio/error.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/http/error.hpp>

namespace uniattn::server {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;

struct RouteEntry {
    const char* path;
    http::verb method;
    HttpRoute route;
    bool needs_auth;
    bool needs_model;
};

constexpr RouteEntry kRoutes[] = {
    {"/health", http::verb::get, HttpRoute::kHealth, false, false},
    {"/ready", http::verb::get, HttpRoute::kReady, false, false},
    {"/metrics", http::verb::get, HttpRoute::kMetrics, false, false},
    {"/v1/models", http::verb::get, HttpRoute::kModels, true, true},
    {"/v1/completions", http::verb::post, HttpRoute::kCompletions, true, true},
    {"/v1/chat/completions", http::verb::post, HttpRoute::kChatCompletions, true, true},
    {"/tokenize", http::verb::post, HttpRoute::kTokenize, true, true},
    {"/detokenize", http::verb::post, HttpRoute::kDetokenize, true, true},
};

constexpr std::string_view kModelPrefix = "/v1/models/";

}  // namespace

ApiResult<HttpRouteMatch> MatchHttpRoute(http::verb method, std::string_view method_string, std::string_view target) {
    if (method == http::verb::options) return HttpRouteMatch{HttpRoute::kPreflight, false, false, {}};
    const std::string path(target.substr(0, target.find('?')));
    bool path_known = false;
    for (const RouteEntry& r : kRoutes) {
        if (path != r.path) continue;
        path_known = true;
        if (method == r.method) return HttpRouteMatch{r.route, r.needs_auth, r.needs_model, {}};
    }
    const bool model_path = path.size() > kModelPrefix.size() && path.rfind(kModelPrefix, 0) == 0;
    if (model_path && method == http::verb::get) {
        return HttpRouteMatch{HttpRoute::kModel, true, true, path.substr(kModelPrefix.size())};
    }
    if (path_known || model_path) {
        return ApiError{405,
                        "invalid_request_error",
                        "method " + std::string(method_string) + " is not allowed on " + path,
                        {},
                        "method_not_allowed"};
    }
    return ApiError::NotFound("no route for " + std::string(method_string) + " " + path, {}, "not_found");
}

ApiError BodyTooLargeError(int64_t max_body_bytes) {
    return ApiError{413,
                    "invalid_request_error",
                    "the request body is larger than the limit of " + std::to_string(max_body_bytes) +
                        " bytes (server.max_body_bytes)",
                    {},
                    "body_too_large"};
}

HttpReadFailure ClassifyHttpReadError(beast::error_code ec, int64_t max_body_bytes) {
    using Action = HttpReadFailure::Action;
    if (ec == http::error::end_of_stream || ec == boost::asio::error::eof) return {Action::kClose, {}};
    // A client too slow to send its request (or an idle keep-alive connection): Beast's stream has already
    // closed the socket, as nginx does on client_header_timeout.
    if (ec == beast::error::timeout) return {Action::kHardClose, {}};
    if (ec == http::error::body_limit) return {Action::kAnswer, BodyTooLargeError(max_body_bytes)};
    if (ec == http::error::header_limit) {
        return {Action::kAnswer, ApiError{431, "invalid_request_error", "request header fields too large", {}, {}}};
    }
    if (ec == http::error::partial_message) {
        return {Action::kAnswer, ApiError::BadRequest("the connection ended before the request was complete")};
    }
    if (ec.category() == http::make_error_code(http::error::bad_target).category()) {
        return {Action::kAnswer, ApiError::BadRequest("malformed HTTP request: " + ec.message())};
    }
    return {Action::kHardClose, {}};
}

}  // namespace uniattn::server
