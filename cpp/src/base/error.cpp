#include "mpool/base/error.h"

namespace mpool {

const char* error_code_name(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::kModelNotFound: return "model_not_found";
    case ErrorCode::kModelError: return "model_error";
    case ErrorCode::kTimeout: return "timeout";
    case ErrorCode::kShuttingDown: return "shutting_down";
    case ErrorCode::kMemoryExhausted: return "memory_exhausted";
    case ErrorCode::kSpawnFailed: return "spawn_failed";
    case ErrorCode::kOverloaded: return "overloaded";
    case ErrorCode::kCancelled: return "cancelled";
    case ErrorCode::kInvalidInput: return "invalid_input";
    case ErrorCode::kInternal: return "internal";
  }
  return "internal";
}

}  // namespace mpool
