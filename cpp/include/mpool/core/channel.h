#pragma once
// A stream of chunks from one replica to one consumer: bounded (back-pressure,
// nothing dropped), ending in exactly one of end, error, or cancel. StreamJob is
// the Job that feeds it.
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <utility>

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
    not_full_.wait_until(lock, context_->deadline(), [&] {
      return buffer_.size() < capacity_ || ended_ || context_->cancel_requested();
    });
    if (ended_ || context_->should_stop()) return false;
    buffer_.push_back(std::move(chunk));
    lock.unlock();
    context_->note_first_chunk();
    not_empty_.notify_one();
    return true;
  }
  /// Ends the stream normally; false if it had already ended.
  bool finish() { return end(Outcome::kSucceeded, std::nullopt); }
  /// Ends the stream with an error; false if it had already ended.
  bool fail(const Error& error) { return end(outcome_for(error), error); }

  // --- consumer side ---

  /// Next chunk; nullopt at the normal end. Throws the stream's Error, or Timeout
  /// once the deadline passes with nothing to deliver.
  std::optional<T> next() {
    std::unique_lock lock(mu_);
    while (true) {
      if (!buffer_.empty()) {
        T chunk = std::move(buffer_.front());
        buffer_.pop_front();
        lock.unlock();
        not_full_.notify_one();
        return chunk;
      }
      if (ended_) {
        if (error_) throw error_->error();
        return std::nullopt;
      }
      if (!not_empty_.wait_until(lock, context_->deadline(),
                                 [&] { return !buffer_.empty() || ended_; })) {
        lock.unlock();
        end(Outcome::kTimedOut, Error(ErrorCode::kTimeout, "stream timed out"));
        context_->request_cancel();
        lock.lock();
      }
    }
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
  bool end(Outcome outcome, std::optional<Error> error) {
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
    }
    not_empty_.notify_all();
    not_full_.notify_all();
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
