#pragma once
// How far a call over many inputs has got, for a caller that shows it (a
// progress bar). Whoever completes work advances it; the caller waits for the
// next change with no lock of its own held.
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>

#include "mpool/core/clock.h"

namespace mpool::core {

/// Inputs done out of a total, and whether the call has ended.
class Progress {
 public:
  explicit Progress(size_t total) : total_(total) {}

  /// `n` more inputs are done.
  void advance(size_t n) {
    {
      std::lock_guard lock(mu_);
      done_ += n;
    }
    cv_.notify_all();
  }
  /// The call has ended (whatever its outcome): waiters return at once from now on.
  void finish() {
    {
      std::lock_guard lock(mu_);
      finished_ = true;
    }
    cv_.notify_all();
  }

  /// Waits until more than `seen` inputs are done, the call ended, or `timeout_s`
  /// passed; returns the inputs done. Call it without the GIL.
  size_t wait_past(size_t seen, double timeout_s) const {
    std::unique_lock lock(mu_);
    wait_until_sliced(cv_, lock, deadline_after(timeout_s), [&] { return finished_ || done_ > seen; });
    return done_;
  }

  size_t done() const {
    std::lock_guard lock(mu_);
    return done_;
  }
  size_t total() const noexcept { return total_; }
  bool finished() const {
    std::lock_guard lock(mu_);
    return finished_;
  }

 private:
  const size_t total_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  size_t done_ = 0;
  bool finished_ = false;
};

}  // namespace mpool::core
