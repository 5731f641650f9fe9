#pragma once
// A stream of chunks from one replica to one consumer: bounded (back-pressure,
// nothing dropped), ending in exactly one of end, error, or cancel. StreamJob is
// the Job that feeds it.
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

#include <thread>

#include "mpool/core/clock.h"
#include "mpool/core/faults.h"
#include "mpool/core/job.h"

namespace mpool::core {

/// Bounded single-producer single-consumer channel of T.
template <class T>
class Channel {
 public:
  /// A channel holding at most `capacity` undelivered chunks.
  Channel(std::shared_ptr<RequestContext> context, size_t capacity)
      : context_(std::move(context)), capacity_(capacity == 0 ? 1 : capacity) {}

  // --- producer side (the replica) ---

  /// Appends a chunk, blocking while the buffer is full. Returns false when the
  /// consumer is gone or the request must stop; the producer should then return.
  bool push(T chunk) {
    std::unique_lock lock(mu_);
    wait_until_sliced(not_full_, lock, context_->deadline(), [&] {
      return buffer_.size() < capacity_ || ended_ || context_->cancel_requested();
    });
    if (ended_ || context_->should_stop()) return false;
    buffer_.push_back(std::move(chunk));
    auto ready = std::move(ready_);
    ready_ = nullptr;
    lock.unlock();
    context_->note_first_chunk();
    not_empty_.notify_one();
    if (ready) ready();
    return true;
  }
  /// Chunks push() takes now without waiting: the free buffer, or SIZE_MAX once
  /// the stream ended or was cancelled (push returns at once then).
  size_t room() const {
    std::lock_guard lock(mu_);
    if (ended_ || context_->cancel_requested()) return SIZE_MAX;
    return capacity_ - buffer_.size();
  }
  /// Ends the stream normally; false if it had already ended.
  bool finish() { return end(Outcome::kSucceeded, std::nullopt); }
  /// Ends the stream with an error; false if it had already ended.
  bool fail(const Error& error) { return end(outcome_for(error), error); }

  // --- consumer side ---

  /// Next chunk; nullopt at the normal end. Throws the stream's Error, or Timeout
  /// once the deadline passes with nothing to deliver.
  std::optional<T> next() {
    double stall = 0;
    if (faults::fire(faults::Fault::kConsumerStalls, nullptr, &stall))
      std::this_thread::sleep_for(to_duration(stall));
    std::unique_lock lock(mu_);
    while (true) {
      std::optional<T> chunk;
      if (take_locked(lock, chunk)) return chunk;
      if (!wait_until_sliced(not_empty_, lock, context_->deadline(), [&] { return !buffer_.empty() || ended_; })) {
        lock.unlock();
        end(Outcome::kTimedOut, Error(ErrorCode::kTimeout, "stream timed out"));
        context_->request_cancel();
        lock.lock();
      }
    }
  }
  /// Waits at most `seconds` (and not past the deadline) for a chunk or the
  /// end; true once next() would return without blocking. Settles nothing: a
  /// consumer that waits in slices (to look for Ctrl-C) then calls next().
  bool wait_for(double seconds) {
    const Clock::time_point until = std::min(context_->deadline(), deadline_after(seconds));
    std::unique_lock lock(mu_);
    wait_until_sliced(not_empty_, lock, until, [&] { return !buffer_.empty() || ended_; });
    return !buffer_.empty() || ended_ || Clock::now() >= context_->deadline();
  }
  /// next() without waiting: false when nothing is there yet; true with the
  /// chunk, or with nullopt at the normal end (throws like next()).
  bool try_next(std::optional<T>& out) {
    std::unique_lock lock(mu_);
    if (take_locked(lock, out)) return true;
    if (Clock::now() < context_->deadline()) return false;
    lock.unlock();
    end(Outcome::kTimedOut, Error(ErrorCode::kTimeout, "stream timed out"));
    context_->request_cancel();
    lock.lock();
    if (take_locked(lock, out)) return true;
    return false;  // unreachable: the stream has ended
  }
  /// Calls `callback` once, when a chunk or the end is there (at once, on this
  /// thread, if one already is); on the producer's thread otherwise, with no lock
  /// held. A newer callback replaces an older one that has not run (the old one is
  /// destroyed outside the lock). For consumers that wait without a thread.
  void on_ready(std::function<void()> callback) {
    std::function<void()> replaced;
    {
      std::lock_guard lock(mu_);
      if (buffer_.empty() && !ended_) {
        replaced = std::move(ready_);
        ready_ = std::move(callback);
        return;
      }
    }
    callback();
  }
  /// The consumer is done reading: cancels the producer and frees its replica.
  void cancel() {
    context_->request_cancel();
    end(Outcome::kCancelled, Error(ErrorCode::kCancelled, "stream cancelled by its consumer"));
  }
  /// True once the stream ended (chunks may still be buffered).
  bool ended() const {
    std::lock_guard lock(mu_);
    return ended_;
  }
  /// The request's shared state.
  const std::shared_ptr<RequestContext>& context() const { return context_; }

 private:
  // Under the lock: pops the next chunk into `out` (true), or reports the end
  // (true, out empty; throws the stream's error); false if nothing is there yet.
  bool take_locked(std::unique_lock<std::mutex>& lock, std::optional<T>& out) {
    if (!buffer_.empty()) {
      out.emplace(std::move(buffer_.front()));
      buffer_.pop_front();
      lock.unlock();
      not_full_.notify_one();
      lock.lock();
      return true;
    }
    if (ended_) {
      out.reset();
      if (error_) throw error_->error();
      return true;
    }
    return false;
  }

  bool end(Outcome outcome, std::optional<Error> error) {
    std::function<void()> ready;
    {
      std::lock_guard lock(mu_);
      if (ended_) return false;
      ended_ = true;
      if (!context_->settle(outcome)) {
        // Someone else settled (e.g. the consumer timed out): report that instead.
        if (context_->outcome() != Outcome::kSucceeded) error_.emplace(ErrorInfo::of(context_->stop_error()));
      } else if (error) {
        error_.emplace(ErrorInfo::of(*error));
      }
      ready = std::move(ready_);
      ready_ = nullptr;
    }
    not_empty_.notify_all();
    not_full_.notify_all();
    if (ready) ready();
    return true;
  }

  std::shared_ptr<RequestContext> context_;
  const size_t capacity_;
  mutable std::mutex mu_;
  std::condition_variable not_empty_;
  std::condition_variable not_full_;
  std::deque<T> buffer_;
  bool ended_ = false;
  std::optional<ErrorInfo> error_;
  std::function<void()> ready_;  // on_ready's callback, until it runs
};

/// A job that runs `fn`, which pushes chunks into a Channel<T>, then ends it.
template <class T>
class StreamJob final : public Job {
 public:
  using Fn = std::function<void(Instance&, RequestContext&, Channel<T>&)>;

  StreamJob(std::shared_ptr<Channel<T>> channel, Fn fn)
      : Job(channel->context()), channel_(std::move(channel)), fn_(std::move(fn)) {}

  void run(Instance& instance) override {
    fn_(instance, context(), *channel_);
    if (context().should_stop())
      channel_->fail(context().stop_error());
    else
      channel_->finish();
  }
  void fail(const Error& error) noexcept override {
    try {
      channel_->fail(error);
    } catch (...) {  // allocation failure while storing the error: nothing left to tell
    }
  }

 private:
  std::shared_ptr<Channel<T>> channel_;
  Fn fn_;
};

}  // namespace mpool::core
