#pragma once
// Per-request state shared by the caller, the queue and the replica: the
// deadline, the cancel flag that models poll between steps, and the single
// terminal outcome.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <vector>

#include "mpool/core/clock.h"
#include "mpool/base/error.h"

namespace mpool::core {

class ModelMetrics;

/// The terminal outcome of a request; the first settle wins, later ones are no-ops.
enum class Outcome { kPending, kSucceeded, kFailed, kTimedOut, kCancelled };

/// Shared state of one request. Models receive it and check should_stop() between steps.
class RequestContext {
 public:
  /// A request that must finish by `deadline`, reporting to `metrics` (may be null).
  RequestContext(Clock::time_point deadline, std::shared_ptr<ModelMetrics> metrics);

  /// The context of a merged batch: it stops only when every member request
  /// should stop, and its deadline is the latest of theirs.
  static std::shared_ptr<RequestContext> group(std::vector<std::shared_ptr<RequestContext>> members);

  /// True once the caller cancelled or the deadline passed: the model should stop.
  /// For a batch's group context: once every member should stop.
  bool should_stop() const noexcept {
    if (!members_.empty())
      return std::all_of(members_.begin(), members_.end(), [](auto& m) { return m->should_stop(); });
    return cancel_requested() || expired();
  }
  /// True once someone asked to cancel (consumer closed, timeout, shutdown).
  bool cancel_requested() const noexcept { return cancelled_.load(std::memory_order_acquire); }
  /// True once the deadline has passed.
  bool expired() const noexcept { return Clock::now() >= deadline_; }
  /// Throws Cancelled or Timeout when should_stop(); models call it between steps.
  void throw_if_stopped() const;
  /// The Error matching why the request stopped (Timeout or Cancelled).
  Error stop_error() const;
  /// Asks the model to stop at its next check (a group's: every member's request).
  void request_cancel() noexcept {
    cancelled_.store(true, std::memory_order_release);
    for (auto& m : members_) m->request_cancel();
  }

  /// Records the terminal outcome once; returns false if one was already recorded.
  bool settle(Outcome outcome) noexcept;
  /// The recorded outcome (kPending until settled).
  Outcome outcome() const noexcept { return outcome_.load(std::memory_order_acquire); }

  /// When the request must be done.
  Clock::time_point deadline() const noexcept { return deadline_; }
  /// When the request was created (queue time starts here).
  Clock::time_point created() const noexcept { return created_; }
  /// Metrics of the model serving it (null for requests that never reached one).
  const std::shared_ptr<ModelMetrics>& metrics() const noexcept { return metrics_; }
  /// Called by the pool once the request is queued: it counts as in flight until settled.
  void mark_accepted() noexcept;
  /// Called by streams on their first chunk; records time to first chunk once.
  void note_first_chunk() noexcept;

 private:
  Clock::time_point created_;
  Clock::time_point deadline_;
  std::shared_ptr<ModelMetrics> metrics_;
  std::vector<std::shared_ptr<RequestContext>> members_;  // a batch's group context only
  std::atomic<bool> cancelled_{false};
  std::atomic<bool> first_chunk_seen_{false};
  std::atomic<bool> accepted_{false};
  std::atomic<Outcome> outcome_{Outcome::kPending};
};

/// Outcome recorded for an Error given to a request.
Outcome outcome_for(const Error& error) noexcept;

}  // namespace mpool::core
