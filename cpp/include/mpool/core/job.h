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

class Job;

/// Where a continuous batch (Job::run_continuous) takes its further jobs from:
/// the model's queue, seen from the replica running the batch.
class JobFeed {
 public:
  virtual ~JobFeed() = default;
  /// The next queued job of the batch's key, or null when none can join now: the
  /// queue is empty, its head is another kind of job (which runs once this batch
  /// is done, and nothing joins until then), or the replica is retiring. Jobs
  /// that expired or were cancelled while queued get their outcome here and are
  /// skipped. Never blocks.
  virtual std::shared_ptr<Job> take() = 0;
  /// `job` (this batch's first or one taken) has its outcome: it leaves the
  /// replica's jobs in flight, and its compute time is recorded.
  virtual void finished(const Job& job) = 0;
};

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

  /// True for a job that runs as a continuous batch: with a non-empty batch_key,
  /// the replica calls run_continuous() instead of run() or run_batch().
  virtual bool continuous() const { return false; }
  /// Runs this job and, while it runs, the further jobs of its batch_key that it
  /// takes from `feed` (iteration-level batching: they join and leave between
  /// its steps). Returns once every job it took has an outcome, having called
  /// feed.finished() for each. A throw fails every job taken and not finished.
  /// The default runs this job alone.
  virtual void run_continuous(Instance& instance, JobFeed& feed);

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
