#pragma once
// The pool's clock and the one place where seconds (a double from a user) become
// a duration. The clock is steady_clock plus an offset that only fault injection
// moves ("the clock jumps"); reading the offset is one relaxed atomic load.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <string>

#include "mpool/base/error.h"

namespace mpool::core {

/// steady_clock, plus a forward offset that tests can add (see faults.h).
struct Clock {
  using duration = std::chrono::steady_clock::duration;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<Clock, duration>;
  static constexpr bool is_steady = true;  // the offset only ever grows

  /// Now.
  static time_point now() noexcept {
    return time_point(std::chrono::steady_clock::now().time_since_epoch() +
                      duration(offset_ns().load(std::memory_order_relaxed)));
  }
  /// Moves the clock forward by `d` (fault injection only).
  static void jump(duration d) noexcept { offset_ns().fetch_add(d.count(), std::memory_order_relaxed); }

 private:
  static std::atomic<rep>& offset_ns() noexcept {
    static std::atomic<rep> offset{0};
    return offset;
  }
};

/// Longest duration the pool converts: about 31 years. Anything longer, inf
/// included, means "no limit" and is clamped to this before conversion, so no
/// arithmetic on a time point can overflow.
inline constexpr double kForeverSeconds = 1e9;

/// Throws InvalidInput naming `what` when `seconds` is NaN (inf is "no limit").
inline void check_duration(const std::string& what, double seconds) {
  check(!std::isnan(seconds), ErrorCode::kInvalidInput, what + " must be a number of seconds, got NaN");
}

/// `seconds` (checked not NaN by the caller) as a Clock duration: negative is 0,
/// inf or huge is kForeverSeconds.
inline Clock::duration to_duration(double seconds) noexcept {
  if (!(seconds > 0)) return Clock::duration::zero();
  if (seconds > kForeverSeconds) seconds = kForeverSeconds;
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

/// now + `seconds`, clamped as to_duration does.
inline Clock::time_point deadline_after(double seconds) noexcept { return Clock::now() + to_duration(seconds); }

/// cv.wait_until(lock, deadline, pred), waking at least every 100 ms to read the
/// clock again: a far deadline never overflows, and a clock jump is noticed.
template <class CondVar, class Lock, class Pred>
bool wait_until_sliced(CondVar& cv, Lock& lock, Clock::time_point deadline, Pred pred) {
  while (!pred()) {
    auto now = Clock::now();
    if (now >= deadline) return false;
    cv.wait_until(lock, std::min(deadline, now + std::chrono::milliseconds(100)));
  }
  return true;
}

}  // namespace mpool::core
