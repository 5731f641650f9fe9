#pragma once
// Per-model counters and latency windows. Counters are lock-free; latencies keep
// the most recent samples for p50/p95.
#include <array>
#include <atomic>
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

/// Plain copy of a model's counters.
struct MetricsSnapshot {
  uint64_t requests = 0, succeeded = 0, errors = 0, timeouts = 0, rejections = 0, cancellations = 0;
  uint64_t replicas_spawned = 0, replicas_evicted = 0, spawn_failures = 0, replica_deaths = 0;
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

  /// Counts a request's terminal outcome.
  void record_outcome(Outcome outcome) noexcept;
  /// Copies everything out.
  MetricsSnapshot snapshot() const;
};

}  // namespace mpool::core
