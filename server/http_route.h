// What the HTTP front end does with a request once Beast has parsed it (which route, or which error), and
// with a request Beast could not read. Pure functions over the parsed request: no sockets, no engine, so
// the HTTP fuzz target (tests/fuzz/http_request_fuzz.cc) drives the server's own routing.
#pragma once

#include <boost/beast/core/error.hpp>
#include <boost/beast/http/verb.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "server/api_error.h"

namespace uniattn::server {

// Request headers larger than this get 431.
inline constexpr size_t kHttpHeaderLimit = 16 * 1024;

enum class HttpRoute {
    kPreflight,  // OPTIONS on any path (CORS)
    kHealth,
    kReady,
    kMetrics,
    kModels,
    kModel,  // GET /v1/models/{id}
    kCompletions,
    kChatCompletions,
    kTokenize,
    kDetokenize,
};

struct HttpRouteMatch {
    HttpRoute route = HttpRoute::kHealth;
    bool needs_auth = false;   // an API key is checked first
    bool needs_model = false;  // 503 `loading` until the model is loaded
    std::string model_id;      // kModel only
};

// The route for `method` on `target` (the query string is ignored), or 404 `not_found` / 405
// `method_not_allowed` in OpenAI's shape. `method_string` is the request's method as sent (for messages).
ApiResult<HttpRouteMatch> MatchHttpRoute(boost::beast::http::verb method, std::string_view method_string,
                                         std::string_view target);

// What to do when reading a request failed with `ec`.
struct HttpReadFailure {
    enum class Action {
        kClose,      // the peer ended the connection between requests: close quietly
        kHardClose,  // a timeout or a transport error: drop the connection without answering
        kAnswer,     // answer `error` and close (413 also lingers to read what the client still sends)
    };
    Action action = Action::kHardClose;
    ApiError error;
};
HttpReadFailure ClassifyHttpReadError(boost::beast::error_code ec, int64_t max_body_bytes);

// 413 in OpenAI's shape for a body over `max_body_bytes`.
ApiError BodyTooLargeError(int64_t max_body_bytes);

}  // namespace uniattn::server
