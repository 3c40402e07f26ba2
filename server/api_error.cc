#include "server/api_error.h"

#include <grpcpp/support/status_code_enum.h>

namespace uniattn::server {

nlohmann::json ApiError::ToJson() const {
    nlohmann::json e = {{"message", message}, {"type", type}};
    e["param"] = param.empty() ? nlohmann::json(nullptr) : nlohmann::json(param);
    e["code"] = code.empty() ? nlohmann::json(nullptr) : nlohmann::json(code);
    return {{"error", e}};
}

std::string ApiError::Body() const { return DumpJson(ToJson()); }

ApiError ApiError::BadRequest(std::string message, std::string param, std::string code) {
    return {400, "invalid_request_error", std::move(message), std::move(param), std::move(code)};
}

ApiError ApiError::NotFound(std::string message, std::string param, std::string code) {
    return {404, "invalid_request_error", std::move(message), std::move(param), std::move(code)};
}

ApiError ApiError::Unauthorized(std::string message) {
    return {401, "authentication_error", std::move(message), {}, "invalid_api_key"};
}

ApiError ApiError::Unavailable(std::string message, std::string code) {
    return {503, "service_unavailable_error", std::move(message), {}, std::move(code)};
}

ApiError ApiError::Internal(std::string message) { return {500, "server_error", std::move(message), {}, {}}; }

std::string ParamOf(const Status& status, std::string_view prompt_param) {
    return status.field() == "prompt_ids" ? std::string(prompt_param) : status.field();
}

ApiError ApiErrorFromStatus(const Status& status, std::string_view prompt_param) {
    const std::string& m = status.message();
    const std::string param = ParamOf(status, prompt_param);
    switch (status.code()) {
        case StatusCode::kOk:
            return ApiError::Internal("internal error: an OK status was reported as an error");
        case StatusCode::kInvalidArgument:
            return ApiError::BadRequest(m, param);
        case StatusCode::kFailedPrecondition:
            // The engine's only precondition failure a client can cause: the request can never fit.
            return ApiError::BadRequest(m, param, "context_length_exceeded");
        case StatusCode::kNotFound:
            return ApiError::NotFound(m, param);
        case StatusCode::kResourceExhausted:
            return {429, "rate_limit_error", m, {}, "queue_full"};
        case StatusCode::kUnavailable:
            return ApiError::Unavailable(m, "unavailable");
        case StatusCode::kCancelled:
            // Only seen when a request was cancelled by someone other than its client (e.g. shutdown).
            return ApiError::Unavailable(m, "cancelled");
        case StatusCode::kUnimplemented:
            return ApiError::BadRequest(m, param, "unsupported");
        case StatusCode::kDataLoss:
        case StatusCode::kInternal:
            return ApiError::Internal(m);
    }
    return ApiError::Internal(m);
}

int GrpcCodeFromStatus(const Status& status) {
    switch (status.code()) {
        case StatusCode::kOk:
            return grpc::StatusCode::OK;
        case StatusCode::kInvalidArgument:
        case StatusCode::kFailedPrecondition:
            return grpc::StatusCode::INVALID_ARGUMENT;
        case StatusCode::kNotFound:
            return grpc::StatusCode::NOT_FOUND;
        case StatusCode::kResourceExhausted:
            return grpc::StatusCode::RESOURCE_EXHAUSTED;
        case StatusCode::kUnavailable:
            return grpc::StatusCode::UNAVAILABLE;
        case StatusCode::kCancelled:
            return grpc::StatusCode::CANCELLED;
        case StatusCode::kUnimplemented:
            return grpc::StatusCode::UNIMPLEMENTED;
        case StatusCode::kDataLoss:
            return grpc::StatusCode::DATA_LOSS;
        case StatusCode::kInternal:
            return grpc::StatusCode::INTERNAL;
    }
    return grpc::StatusCode::INTERNAL;
}

}  // namespace uniattn::server
