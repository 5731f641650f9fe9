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

namespace {
int64_t second_of(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}
}  // namespace

void RateWindow::add(uint64_t amount, Clock::time_point now) noexcept {
  const int64_t sec = second_of(now);
  const size_t slot = static_cast<size_t>(sec % static_cast<int64_t>(kBuckets));
  std::lock_guard lock(mu_);
  if (first_second_ < 0) first_second_ = sec;
  if (second_of_[slot] != sec) {  // the bucket held an older second: start it afresh
    second_of_[slot] = sec;
    amounts_[slot] = 0;
  }
  amounts_[slot] += amount;
}

double RateWindow::rate(Clock::time_point now) const {
  const int64_t sec = second_of(now);
  const int64_t span = kSpan.count();
  uint64_t sum = 0;
  int64_t first;
  {
    std::lock_guard lock(mu_);
    first = first_second_;
    if (first < 0) return 0;
    for (size_t i = 0; i < kBuckets; ++i)
      if (second_of_[i] > sec - span && second_of_[i] <= sec) sum += amounts_[i];
  }
  // The window's span: a minute, or the time since the first sample (whole
  // seconds, the current one included), whichever is shorter.
  const int64_t seconds = std::clamp<int64_t>(sec - first + 1, 1, span);
  return static_cast<double>(sum) / static_cast<double>(seconds);
}

void ModelMetrics::record_inputs(uint64_t n, uint64_t tokens) noexcept {
  const auto now = Clock::now();
  inputs.fetch_add(n, std::memory_order_relaxed);
  input_rate.add(n, now);
  token_rate.add(tokens, now);
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
  s.inputs = inputs.load();
  const auto now = Clock::now();
  s.inputs_per_s = input_rate.rate(now);
  s.tokens_per_s = token_rate.rate(now);
  s.queue = queue.summary();
  s.compute = compute.summary();
  s.first_chunk = first_chunk.summary();
  return s;
}

}  // namespace mpool::core
