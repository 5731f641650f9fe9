#pragma once
// The caller's side of a request with one result: wait (bounded by the request's
// deadline) or get a callback. UnaryJob is the Job that fills it.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "mpool/core/job.h"
#include "mpool/core/spin.h"

namespace mpool::core {

/// A result that a replica will deliver exactly once: a value or an Error.
/// Whoever settles the request (the replica, the waiter at the deadline, a
/// cancel) also completes the Pending: done() turns true and every callback runs
/// once, on the settling thread, with no lock held.
template <class T>
class Pending {
 public:
  using Callback = std::function<void()>;

  explicit Pending(std::shared_ptr<RequestContext> context) : context_(std::move(context)) {}

  /// Delivers the value; false if the request had already settled (the value is dropped).
  bool set_value(T value) {
    if (!context_->settle(Outcome::kSucceeded)) return false;
    finish([&] { value_.emplace(std::move(value)); });
    return true;
  }
  /// Delivers an error; false if the request had already settled.
  bool set_error(const Error& error) {
    if (!context_->settle(outcome_for(error))) return false;
    finish([&] { error_.emplace(ErrorInfo::of(error)); });
    return true;
  }

  /// Blocks until the result or the deadline; on the deadline settles Timeout
  /// (which completes this Pending) and cancels the job. Returns the value or
  /// throws the Error; later calls return or throw the same at once.
  T wait() {
    spin_until([&] { return ready_.load(std::memory_order_acquire); });
    std::unique_lock lock(mu_);
    if (!wait_until_sliced(cv_, lock, context_->deadline(), [&] { return done_; })) {
      lock.unlock();
      if (set_error(Error(ErrorCode::kTimeout, "request timed out"))) context_->request_cancel();
      lock.lock();
      cv_.wait(lock, [&] { return done_; });  // whoever settled completes it
    }
    return take(lock);
  }

  /// Waits at most `seconds` (and not past the deadline) for the result; true
  /// once wait() would return without blocking: the result is there or the
  /// deadline has passed. Settles nothing: a caller that waits in slices (to
  /// look for Ctrl-C between them) ends with wait().
  bool wait_for(double seconds) {
    if (spin_until([&] { return ready_.load(std::memory_order_acquire); })) return true;
    const Clock::time_point until = std::min(context_->deadline(), deadline_after(seconds));
    std::unique_lock lock(mu_);
    wait_until_sliced(cv_, lock, until, [&] { return done_; });
    return done_ || Clock::now() >= context_->deadline();
  }

  /// Cancels the request if it has not settled; true if this call settled it.
  bool cancel() {
    context_->request_cancel();
    return set_error(Error(ErrorCode::kCancelled, "request cancelled"));
  }

  /// Runs `callback` once the result is there (immediately, on this thread, if it
  /// already is), on whichever thread delivers it. Every callback added runs.
  void on_done(Callback callback) {
    {
      std::lock_guard lock(mu_);
      if (!done_) {
        callbacks_.push_back(std::move(callback));
        return;
      }
    }
    callback();
  }

  /// True once the result is there (lock-free: callers may hold other locks, the GIL).
  bool done() const noexcept { return ready_.load(std::memory_order_acquire); }
  /// The result of a done Pending: the value, or throws its Error.
  T get() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return done_; });
    return take(lock);
  }
  /// The request's shared state.
  const std::shared_ptr<RequestContext>& context() const { return context_; }

 private:
  template <class Fill>
  void finish(Fill fill) {
    std::vector<Callback> callbacks;
    {
      std::lock_guard lock(mu_);
      fill();
      done_ = true;
      ready_.store(true, std::memory_order_release);
      callbacks.swap(callbacks_);
    }
    cv_.notify_all();
    // Run and destroy the callbacks with no lock held: they may take the GIL.
    for (auto& cb : callbacks) {
      try {
        cb();
      } catch (...) {  // a callback's failure is its own; the result stands
      }
    }
  }

  T take(std::unique_lock<std::mutex>&) {
    if (error_) throw error_->error();
    return *value_;  // copies: get() may be called more than once
  }

  std::shared_ptr<RequestContext> context_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::atomic<bool> ready_{false};  // done_, readable without the lock
  std::optional<T> value_;
  std::optional<ErrorInfo> error_;
  std::vector<Callback> callbacks_;
};

/// A job that computes one T with `fn` and delivers it to a Pending<T>.
template <class T>
class UnaryJob final : public Job {
 public:
  using Fn = std::function<T(Instance&, RequestContext&)>;

  UnaryJob(std::shared_ptr<Pending<T>> pending, Fn fn)
      : Job(pending->context()), pending_(std::move(pending)), fn_(std::move(fn)) {}

  void run(Instance& instance) override {
    T value = fn_(instance, context());
    // A result that arrives past the deadline (or after a cancel) is not a success.
    if (context().should_stop()) throw context().stop_error();
    pending_->set_value(std::move(value));
  }
  void fail(const Error& error) noexcept override {
    try {
      pending_->set_error(error);
    } catch (...) {  // allocation failure while storing the error: nothing left to tell
    }
  }

 private:
  std::shared_ptr<Pending<T>> pending_;
  Fn fn_;
};

}  // namespace mpool::core
