// SPDX-License-Identifier: Apache-2.0
// Status and Result<T>: the error currency of gnomon. Exceptions never cross a public API.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace gnomon {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,    // bad input: config, payload, rule file
  kNotFound,
  kAlreadyExists,
  kFailedPrecondition,
  kUnavailable,        // retryable: peer down, connection lost
  kResourceExhausted,  // retryable: queue full, limit hit
  kDeadlineExceeded,
  kScriptError,        // a rule raised an error
  kInternal,
  kCancelled,
};

std::string_view StatusCodeName(StatusCode code);

// A success or an error code with a message. Cheap to copy when ok.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // Retryable errors are retried with backoff; others dead-letter.
  bool IsRetryable() const {
    return code_ == StatusCode::kUnavailable || code_ == StatusCode::kResourceExhausted;
  }

  // Returns a copy whose message is prefixed with `context: `.
  Status WithContext(std::string_view context) const;

  std::string ToString() const;

  void IgnoreError() const {}

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

Status InvalidArgument(std::string message);
Status NotFound(std::string message);
Status Unavailable(std::string message);
Status Internal(std::string message);
Status ResourceExhausted(std::string message);
Status FailedPrecondition(std::string message);

// A value or an error (std::expected-shaped).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return ok(); }

  // REQUIRES: ok().
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace gnomon

#define GNOMON_CONCAT_INNER(a, b) a##b
#define GNOMON_CONCAT(a, b) GNOMON_CONCAT_INNER(a, b)

#define GNOMON_RETURN_IF_ERROR(expr)        \
  do {                                      \
    ::gnomon::Status _st = (expr);          \
    if (!_st.ok()) {                        \
      return _st;                           \
    }                                       \
  } while (0)

#define GNOMON_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) {                                   \
    return tmp.status();                             \
  }                                                  \
  lhs = std::move(tmp).value()

#define GNOMON_ASSIGN_OR_RETURN(lhs, expr) \
  GNOMON_ASSIGN_OR_RETURN_IMPL(GNOMON_CONCAT(_res_, __LINE__), lhs, expr)

// Fatal invariant checks; never for input, config, scripts or the network.
#define GNOMON_CHECK(cond)                                          \
  do {                                                              \
    if (!(cond)) {                                                  \
      ::gnomon::internal::CheckFailed(#cond, __FILE__, __LINE__);   \
    }                                                               \
  } while (0)
#ifdef NDEBUG
#define GNOMON_DCHECK(cond) \
  do {                      \
  } while (0)
#else
#define GNOMON_DCHECK(cond) GNOMON_CHECK(cond)
#endif

namespace gnomon::internal {
[[noreturn]] void CheckFailed(const char* cond, const char* file, int line);
}
