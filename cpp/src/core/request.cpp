#include "mpool/core/request.h"

#include "mpool/core/job.h"
#include "mpool/core/metrics.h"

namespace mpool::core {

RequestContext::RequestContext(Clock::time_point deadline, std::shared_ptr<ModelMetrics> metrics)
    : created_(Clock::now()), deadline_(deadline), metrics_(std::move(metrics)) {}

std::shared_ptr<RequestContext> RequestContext::group(std::vector<std::shared_ptr<RequestContext>> members) {
  Clock::time_point latest = Clock::time_point::min();
  for (auto& m : members) latest = std::max(latest, m->deadline());
  auto g = std::make_shared<RequestContext>(latest, nullptr);
  g->members_ = std::move(members);
  return g;
}

Error RequestContext::stop_error() const {
  switch (outcome()) {
    case Outcome::kTimedOut: return Error(ErrorCode::kTimeout, "request timed out");
    case Outcome::kCancelled: return Error(ErrorCode::kCancelled, "request cancelled");
    default: break;
  }
  if (expired()) return Error(ErrorCode::kTimeout, "request timed out");
  return Error(ErrorCode::kCancelled, "request cancelled");
}

void RequestContext::throw_if_stopped() const {
  if (should_stop()) throw stop_error();
}

bool RequestContext::settle(Outcome outcome) noexcept {
  Outcome expected = Outcome::kPending;
  if (!outcome_.compare_exchange_strong(expected, outcome, std::memory_order_acq_rel)) return false;
  if (metrics_) {
    metrics_->record_outcome(outcome);
    if (accepted_.load(std::memory_order_acquire)) metrics_->in_flight.fetch_sub(1, std::memory_order_acq_rel);
  }
  return true;
}

void RequestContext::note_first_chunk() noexcept {
  if (first_chunk_seen_.exchange(true, std::memory_order_relaxed)) return;
  if (metrics_) {
    std::chrono::duration<double, std::milli> ms = Clock::now() - created_;
    metrics_->first_chunk.add(ms.count());
  }
}

void RequestContext::mark_accepted() noexcept {
  if (metrics_ && !accepted_.exchange(true, std::memory_order_acq_rel))
    metrics_->in_flight.fetch_add(1, std::memory_order_acq_rel);
}

void Job::run_batch(Instance& instance, const std::vector<std::shared_ptr<Job>>& batch) {
  for (auto& job : batch) run_isolated(*job, instance, "model");
}

void Job::run_continuous(Instance& instance, JobFeed& feed) {
  run(instance);
  feed.finished(*this);
}

void run_isolated(Job& job, Instance& instance, const std::string& model) noexcept {
  try {
    job.run(instance);
  } catch (const Error& e) {
    job.fail(e);
  } catch (const std::exception& e) {
    job.fail(Error(ErrorCode::kModelError, "model '" + model + "' failed: " + e.what()));
  } catch (...) {
    job.fail(Error(ErrorCode::kModelError, "model '" + model + "' threw a non-standard exception"));
  }
}

Outcome outcome_for(const Error& error) noexcept {
  switch (error.code()) {
    case ErrorCode::kTimeout: return Outcome::kTimedOut;
    case ErrorCode::kCancelled: return Outcome::kCancelled;
    default: return Outcome::kFailed;
  }
}

}  // namespace mpool::core
