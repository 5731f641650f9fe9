#pragma once
// Failure points compiled into the library for tests (mpool.testing.inject in
// Python). Off by default: a disarmed point costs one relaxed atomic load. An
// armed fault fires a given number of times, optionally only for one model key.
#include <atomic>
#include <optional>
#include <string>

namespace mpool::core::faults {

/// The kinds of failure the pool can be made to suffer.
enum class Fault {
  kLoaderThrows,       ///< the model's loader throws
  kForwardThrows,      ///< a job's model call throws
  kOutOfMemory,        ///< the allocator runs out of memory inside a job (raised by the capability layer)
  kReplicaDies,        ///< the replica thread dies in the middle of a job
  kThreadCreateFails,  ///< std::thread cannot be created for a new replica
  kSlowLoad,           ///< the loader takes `seconds` longer
  kConsumerStalls,     ///< a stream's consumer stops reading for `seconds` before its next chunk
  kClockJump,          ///< the pool's clock jumps `seconds` forward (fires at once when armed)
  kCancelAtLayer,      ///< a forward pass's request is cancelled at a layer boundary (nn::stop_point)
};
inline constexpr int kFaultKinds = 9;

/// "loader_throws", "forward_throws", ... (the names Python uses).
const char* fault_name(Fault fault) noexcept;
/// The fault called `name`; nullopt if none is.
std::optional<Fault> fault_from_name(const std::string& name) noexcept;

/// Arms `fault` to fire `count` times (for `key` only, when not empty); `seconds`
/// parametrizes the slow and stalling kinds. kClockJump jumps right away.
void arm(Fault fault, int count, const std::string& key = {}, double seconds = 0);
/// Disarms every fault.
void disarm_all() noexcept;
/// Times `fault` has fired since the process started.
long fired(Fault fault) noexcept;

namespace detail {
extern std::atomic<int> armed_count;  // faults with shots left, all kinds
bool take(Fault fault, const std::string* key, double* seconds) noexcept;
}  // namespace detail

/// True (and one shot used) if `fault` is armed for `key` (or for any key when
/// `key` is null: the caller does not know it). `seconds` receives its parameter.
inline bool fire(Fault fault, const std::string* key = nullptr, double* seconds = nullptr) noexcept {
  if (detail::armed_count.load(std::memory_order_relaxed) == 0) return false;
  return detail::take(fault, key, seconds);
}

/// The model key of the job running on this thread (replica threads), or null.
const std::string* current_model() noexcept;
/// Sets current_model() for this thread (the pool's replica loop).
void set_current_model(const std::string* key) noexcept;

}  // namespace mpool::core::faults
