#include "uniattn/status.h"

namespace uniattn {

const char* StatusCodeName(StatusCode code) {
    switch (code) {
        case StatusCode::kOk:
            return "OK";
        case StatusCode::kInvalidArgument:
            return "INVALID_ARGUMENT";
        case StatusCode::kNotFound:
            return "NOT_FOUND";
        case StatusCode::kDataLoss:
            return "DATA_LOSS";
        case StatusCode::kResourceExhausted:
            return "RESOURCE_EXHAUSTED";
        case StatusCode::kFailedPrecondition:
            return "FAILED_PRECONDITION";
        case StatusCode::kUnimplemented:
            return "UNIMPLEMENTED";
        case StatusCode::kCancelled:
            return "CANCELLED";
        case StatusCode::kUnavailable:
            return "UNAVAILABLE";
        case StatusCode::kInternal:
            return "INTERNAL";
    }
    return "UNKNOWN";
}

std::string Status::ToString() const {
    if (ok()) return "OK";
    return std::string(StatusCodeName(code_)) + ": " + message_;
}

void CheckFailed(const char* file, int line, const char* expr, const std::string& detail) {
    std::fprintf(stderr, "FATAL %s:%d: check failed: %s%s%s\n", file, line, expr, detail.empty() ? "" : " (",
                 detail.empty() ? "" : (detail + ")").c_str());
    std::fflush(stderr);
    std::abort();
}

}  // namespace uniattn
