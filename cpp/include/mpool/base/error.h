#pragma once
// The one error family of mpool. Every failure that reaches a caller is an
// mpool::Error with a code; the bindings map each code once to a Python class.
#include <stdexcept>
#include <string>

namespace mpool {

/// What went wrong, as the Python hierarchy under mpool.PoolError names it.
enum class ErrorCode {
  kModelNotFound,
  kModelError,
  kTimeout,
  kShuttingDown,
  kMemoryExhausted,
  kSpawnFailed,
  kOverloaded,
  kCancelled,
  kInvalidInput,
  kInternal,
};

/// Stable lowercase name of a code ("timeout", "invalid_input", ...).
const char* error_code_name(ErrorCode code) noexcept;

/// Base of every error mpool throws; what() carries the full message.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  /// The error's code.
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

/// An Error held as plain data. Copies of std::runtime_error share their message
/// through a reference count that ThreadSanitizer cannot see (libstdc++ is not
/// instrumented), so results that cross threads keep this instead.
struct ErrorInfo {
  ErrorCode code;
  std::string message;
  /// Captures an Error.
  static ErrorInfo of(const Error& e) { return {e.code(), e.what()}; }
  /// A fresh Error to throw.
  Error error() const { return Error(code, message); }
};

/// Throws Error(code, message) when cond is false.
inline void check(bool cond, ErrorCode code, const std::string& message) {
  if (!cond) throw Error(code, message);
}

}  // namespace mpool
