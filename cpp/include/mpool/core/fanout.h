#pragma once
// One call run as several separately queued parts (a bulk embedding split into
// sub-batches). At most window() parts are out (queued or running) at once; the
// next one starts when one succeeds, so other callers of the same model queue
// between them. The first failure ends the call, and ending it (a failure, a
// cancel, a timeout: close()) cancels every part still out and starts no more.
// What a part computes, and how results are put together, is the caller's.
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "mpool/base/error.h"

namespace mpool::core {

/// Schedules the parts of one call.
class Fanout : public std::enable_shared_from_this<Fanout> {
 public:
  struct Hooks {
    /// How many parts may be out at once; read before each start (below 1 counts as 1).
    std::function<size_t()> window;
    /// Queues part `part` and returns what cancels it. Throwing refuses the part,
    /// which fails the call with what was thrown.
    std::function<std::function<void()>(size_t part)> start;
    /// Every part succeeded: called once, on the thread that finished the last one.
    std::function<void()> complete;
    /// The call failed: called at most once, never after complete, with the first error.
    std::function<void(const Error&)> fail;
  };

  /// A call of `parts` parts (at least one); nothing starts before begin().
  static std::shared_ptr<Fanout> create(size_t parts, Hooks hooks);

  /// Starts the first window() parts.
  void begin();
  /// Part `part` succeeded: starts the next one, or completes the call after the last.
  void part_succeeded(size_t part);
  /// Part `part` failed: fails the call with `error` unless it already ended.
  void part_failed(size_t part, const Error& error);
  /// The call ended elsewhere (cancelled, timed out): starts nothing more and
  /// cancels every part still out. Idempotent.
  void close();

  size_t parts() const noexcept { return parts_; }
  /// Parts out now (started, not finished).
  size_t out() const;
  /// True once the call completed, failed or was closed.
  bool ended() const;

 private:
  Fanout(size_t parts, Hooks hooks);
  void pump();
  std::vector<std::function<void()>> end_locked();
  /// Marks `part` finished; false when it already was, is unknown, or the call had ended.
  bool settle_locked(size_t part);

  const size_t parts_;
  const Hooks hooks_;
  mutable std::mutex mu_;
  size_t next_ = 0;       // the next part to start
  size_t out_ = 0;        // started and not finished
  size_t succeeded_ = 0;
  bool ended_ = false;
  std::vector<char> finished_;                       // per part
  std::map<size_t, std::function<void()>> cancels_;  // parts out, by index
};

}  // namespace mpool::core
