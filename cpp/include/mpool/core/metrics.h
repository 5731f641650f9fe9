#pragma once
// Per-model counters and latency windows. Counters are lock-free; latencies keep
// the most recent samples for p50/p95.
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>

#include "mpool/core/request.h"

namespace mpool::core {

/// p50 and p95 of a latency window, in milliseconds (0 when empty).
struct LatencySummary {
  double p50_ms = 0;
  double p95_ms = 0;
  uint64_t count = 0;  ///< samples ever recorded
};

/// The most recent samples of one latency.
class LatencyWindow {
 public:
  /// Records one sample.
  void add(double ms) noexcept;
  /// Percentiles over the retained samples.
  LatencySummary summary() const;

 private:
  static constexpr size_t kCapacity = 2048;
  mutable std::mutex mu_;
  std::array<double, kCapacity> samples_{};
  uint64_t count_ = 0;
};

/// A quantity per second over the last minute (a sliding window of one-second
/// buckets). The rate divides what was added in the window by the window's span:
/// a minute, or less while the first sample is younger than a minute (at least
/// one second), so a model that just started is not under-reported.
class RateWindow {
 public:
  /// The window's length.
  static constexpr std::chrono::seconds kSpan{60};
  /// Adds `amount` at `now`.
  void add(uint64_t amount, Clock::time_point now) noexcept;
  /// Per second over the window ending at `now` (0 when nothing was added in it).
  double rate(Clock::time_point now) const;

 private:
  static constexpr size_t kBuckets = 60;
  mutable std::mutex mu_;
  std::array<uint64_t, kBuckets> amounts_{};
  std::array<int64_t, kBuckets> second_of_{};  // which absolute second each bucket holds
  int64_t first_second_ = -1;                  // the first sample's second (-1: none yet)
};

/// Plain copy of a model's counters.
struct MetricsSnapshot {
  uint64_t requests = 0, succeeded = 0, errors = 0, timeouts = 0, rejections = 0, cancellations = 0;
  uint64_t replicas_spawned = 0, replicas_evicted = 0, spawn_failures = 0, replica_deaths = 0;
  uint64_t inputs = 0;              ///< texts, images or pairs embedded or scored
  double inputs_per_s = 0;          ///< over the last minute
  double tokens_per_s = 0;          ///< batch-cost units (estimated tokens) over the last minute
  LatencySummary queue, compute, first_chunk;
};

/// Live metrics of one model.
class ModelMetrics {
 public:
  std::atomic<uint64_t> requests{0}, succeeded{0}, errors{0}, timeouts{0}, rejections{0},
      cancellations{0};
  std::atomic<uint64_t> replicas_spawned{0}, replicas_evicted{0}, spawn_failures{0};
  /// Replicas whose thread died in the middle of a job (and were replaced).
  std::atomic<uint64_t> replica_deaths{0};
  /// Requests accepted and not yet settled; a model with none is idle.
  std::atomic<int64_t> in_flight{0};
  LatencyWindow queue, compute, first_chunk;
  /// Inputs (texts, images, pairs) delivered by embedding and scoring requests.
  std::atomic<uint64_t> inputs{0};
  RateWindow input_rate, token_rate;

  /// Counts `inputs` delivered, worth `tokens` (the capability's batch cost), now.
  void record_inputs(uint64_t inputs, uint64_t tokens) noexcept;
  /// Counts a request's terminal outcome.
  void record_outcome(Outcome outcome) noexcept;
  /// Copies everything out.
  MetricsSnapshot snapshot() const;
};

}  // namespace mpool::core
