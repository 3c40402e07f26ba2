// Errors as clients see them: OpenAI's JSON shape over HTTP, status codes over gRPC. Every engine Status
// reaches a client through the two mapping functions here.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "uniattn/json_io.h"
#include "uniattn/status.h"

namespace uniattn::server {

// {"error": {"message", "type", "param", "code"}} with an HTTP status.
struct ApiError {
    int http_status = 400;
    std::string type = "invalid_request_error";
    std::string message;
    std::string param;  // empty -> null
    std::string code;   // empty -> null

    nlohmann::json ToJson() const;
    std::string Body() const;  // ToJson() serialised

    static ApiError BadRequest(std::string message, std::string param = {}, std::string code = {});
    static ApiError NotFound(std::string message, std::string param = {}, std::string code = {});
    static ApiError Unauthorized(std::string message);
    static ApiError Unavailable(std::string message, std::string code);
    static ApiError Internal(std::string message);
};

// The request field an error concerns, as the client named it: Status::field(), where the engine's
// "prompt_ids" is the API's prompt field (`prompt_param`: "prompt", or "messages" for chat).
std::string ParamOf(const Status& status, std::string_view prompt_param = "prompt");

// The one mapping from engine/server Status to an HTTP error; `param` is ParamOf(status, prompt_param).
ApiError ApiErrorFromStatus(const Status& status, std::string_view prompt_param = "prompt");

// The one mapping from Status to a gRPC status code (as its integer value, grpc::StatusCode).
int GrpcCodeFromStatus(const Status& status);

// A value or the ApiError explaining why there is none.
template <typename T>
class ApiResult {
  public:
    ApiResult(T value) : v_(std::move(value)) {}         // NOLINT(google-explicit-constructor)
    ApiResult(ApiError error) : v_(std::move(error)) {}  // NOLINT(google-explicit-constructor)
    bool ok() const { return v_.index() == 0; }
    T& value() { return std::get<0>(v_); }
    const T& value() const { return std::get<0>(v_); }
    const ApiError& error() const { return std::get<1>(v_); }

  private:
    std::variant<T, ApiError> v_;
};

// Serialises JSON for the wire: invalid UTF-8 (a byte-fallback token piece) is replaced, never thrown on
// (the engine's DumpJson, uniattn/json_io.h).
using uniattn::DumpJson;

}  // namespace uniattn::server
