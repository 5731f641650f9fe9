#pragma once
// A unit of work for a replica. The pool moves jobs; what a job computes and how
// it reports its result belong to the capability layer (see pending.h, channel.h).
#include <memory>
#include <string_view>
#include <vector>

#include "mpool/base/error.h"
#include "mpool/core/instance.h"
#include "mpool/core/request.h"

namespace mpool::core {

/// One queued request.
class Job {
 public:
  explicit Job(std::shared_ptr<RequestContext> context) : context_(std::move(context)) {}
  virtual ~Job() = default;
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  /// Runs on a replica thread against its instance; throwing reports the error.
  virtual void run(Instance& instance) = 0;
  /// Delivers a terminal error to the caller (no-op if the request already settled).
  virtual void fail(const Error& error) noexcept = 0;

  /// Jobs with the same non-empty key may run together through run_batch().
  virtual std::string_view batch_key() const { return {}; }
  /// What this job counts against its model's batch budget (approximate tokens, say).
  virtual size_t batch_cost() const { return 1; }
  /// Runs `batch` (this job first; all share its batch_key) in one go, delivering
  /// an outcome to each. The default runs them one at a time.
  virtual void run_batch(Instance& instance, const std::vector<std::shared_ptr<Job>>& batch);

  /// The request's shared state.
  RequestContext& context() noexcept { return *context_; }
  /// Shared handle to the request's state.
  const std::shared_ptr<RequestContext>& context_ptr() const noexcept { return context_; }

 private:
  std::shared_ptr<RequestContext> context_;
};

/// Runs one job, turning whatever it throws into its error (ModelError for
/// foreign exceptions, naming `model`). Never throws.
void run_isolated(Job& job, Instance& instance, const std::string& model) noexcept;

}  // namespace mpool::core
