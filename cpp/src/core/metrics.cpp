#include "mpool/core/metrics.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace mpool::core {

void LatencyWindow::add(double ms) noexcept {
  std::lock_guard lock(mu_);
  samples_[count_ % kCapacity] = ms;
  ++count_;
}

LatencySummary LatencyWindow::summary() const {
  std::vector<double> sorted;
  LatencySummary out;
  {
    std::lock_guard lock(mu_);
    out.count = count_;
    size_t n = std::min<uint64_t>(count_, kCapacity);
    sorted.assign(samples_.begin(), samples_.begin() + static_cast<std::ptrdiff_t>(n));
  }
  if (sorted.empty()) return out;
  std::sort(sorted.begin(), sorted.end());
  auto at = [&](double q) {  // nearest-rank percentile
    size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
    return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
  };
  out.p50_ms = at(0.50);
  out.p95_ms = at(0.95);
  return out;
}

void ModelMetrics::record_outcome(Outcome outcome) noexcept {
  switch (outcome) {
    case Outcome::kSucceeded: succeeded.fetch_add(1, std::memory_order_relaxed); break;
    case Outcome::kFailed: errors.fetch_add(1, std::memory_order_relaxed); break;
    case Outcome::kTimedOut: timeouts.fetch_add(1, std::memory_order_relaxed); break;
    case Outcome::kCancelled: cancellations.fetch_add(1, std::memory_order_relaxed); break;
    case Outcome::kPending: break;
  }
}

MetricsSnapshot ModelMetrics::snapshot() const {
  MetricsSnapshot s;
  s.requests = requests.load();
  s.succeeded = succeeded.load();
  s.errors = errors.load();
  s.timeouts = timeouts.load();
  s.rejections = rejections.load();
  s.cancellations = cancellations.load();
  s.replicas_spawned = replicas_spawned.load();
  s.replicas_evicted = replicas_evicted.load();
  s.spawn_failures = spawn_failures.load();
  s.replica_deaths = replica_deaths.load();
  s.queue = queue.summary();
  s.compute = compute.summary();
  s.first_chunk = first_chunk.summary();
  return s;
}

}  // namespace mpool::core
