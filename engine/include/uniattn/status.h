// Status values for everything a client or the environment can cause (bad request, corrupt file, KV
// exhausted), and fatal checks for broken invariants. No exceptions cross the engine boundary.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>
#include <utility>

namespace uniattn {

enum class StatusCode {
    kOk,
    kInvalidArgument,     // the caller asked for something malformed or impossible
    kNotFound,            // a file, tensor or id that does not exist
    kDataLoss,            // a file exists but is truncated or corrupt
    kResourceExhausted,   // out of KV blocks, queue full
    kFailedPrecondition,  // the request can never succeed in this configuration (e.g. too long)
    kUnimplemented,       // valid but not supported (dtype, architecture)
    kCancelled,           // the client went away or cancelled
    kUnavailable,         // draining or not ready
    kInternal,            // a bug: should never reach a client
};

const char* StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
  public:
    Status() = default;
    Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
    // `field` names the request field the error concerns ("temperature", "prompt"): front ends report it
    // (OpenAI's `param`) without reading the message.
    Status(StatusCode code, std::string message, std::string field)
        : code_(code), message_(std::move(message)), field_(std::move(field)) {}

    static Status Ok() { return {}; }
    bool ok() const { return code_ == StatusCode::kOk; }
    StatusCode code() const { return code_; }
    const std::string& message() const { return message_; }
    const std::string& field() const { return field_; }  // empty when the error concerns no one field
    std::string ToString() const;

  private:
    StatusCode code_ = StatusCode::kOk;
    std::string message_;
    std::string field_;
};

inline Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status DataLoss(std::string m) { return {StatusCode::kDataLoss, std::move(m)}; }
inline Status ResourceExhausted(std::string m) { return {StatusCode::kResourceExhausted, std::move(m)}; }
inline Status FailedPrecondition(std::string m) { return {StatusCode::kFailedPrecondition, std::move(m)}; }
inline Status Unimplemented(std::string m) { return {StatusCode::kUnimplemented, std::move(m)}; }
inline Status Cancelled(std::string m) { return {StatusCode::kCancelled, std::move(m)}; }
inline Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
inline Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

// A value or the Status explaining why there is none.
template <typename T>
class [[nodiscard]] StatusOr {
  public:
    StatusOr(T value) : value_(std::move(value)) {}         // NOLINT(google-explicit-constructor)
    StatusOr(Status status) : status_(std::move(status)) {  // NOLINT(google-explicit-constructor)
        if (status_.ok()) status_ = Internal("StatusOr built from an OK status without a value");
    }
    bool ok() const { return status_.ok(); }
    const Status& status() const { return status_; }
    T& value() & { return *value_; }
    const T& value() const& { return *value_; }
    T&& value() && { return std::move(*value_); }
    T* operator->() { return &*value_; }
    const T* operator->() const { return &*value_; }
    T& operator*() { return *value_; }

  private:
    Status status_;
    std::optional<T> value_;
};

[[noreturn]] void CheckFailed(const char* file, int line, const char* expr, const std::string& detail);

}  // namespace uniattn

#define UA_CONCAT_INNER(a, b) a##b
#define UA_CONCAT(a, b) UA_CONCAT_INNER(a, b)

#define UA_RETURN_IF_ERROR(expr)                 \
    do {                                         \
        ::uniattn::Status ua_status_ = (expr);   \
        if (!ua_status_.ok()) return ua_status_; \
    } while (0)

#define UA_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
    auto tmp = (expr);                           \
    if (!tmp.ok()) return tmp.status();          \
    lhs = std::move(tmp).value()

#define UA_ASSIGN_OR_RETURN(lhs, expr) UA_ASSIGN_OR_RETURN_IMPL(UA_CONCAT(ua_statusor_, __LINE__), lhs, expr)

// Fatal checks: for invariants only, never for input a client or a file can get wrong.
#define UA_CHECK(cond)                                                      \
    do {                                                                    \
        if (!(cond)) ::uniattn::CheckFailed(__FILE__, __LINE__, #cond, ""); \
    } while (0)

#define UA_CHECK_OP(a, b, op)                                                            \
    do {                                                                                 \
        const auto& ua_a_ = (a);                                                         \
        const auto& ua_b_ = (b);                                                         \
        if (!(ua_a_ op ua_b_)) {                                                         \
            std::ostringstream ua_os_;                                                   \
            ua_os_ << ua_a_ << " vs " << ua_b_;                                          \
            ::uniattn::CheckFailed(__FILE__, __LINE__, #a " " #op " " #b, ua_os_.str()); \
        }                                                                                \
    } while (0)
#define UA_CHECK_EQ(a, b) UA_CHECK_OP(a, b, ==)
#define UA_CHECK_NE(a, b) UA_CHECK_OP(a, b, !=)
#define UA_CHECK_LT(a, b) UA_CHECK_OP(a, b, <)
#define UA_CHECK_LE(a, b) UA_CHECK_OP(a, b, <=)
#define UA_CHECK_GE(a, b) UA_CHECK_OP(a, b, >=)
#define UA_CHECK_GT(a, b) UA_CHECK_OP(a, b, >)
