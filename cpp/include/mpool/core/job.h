#pragma once
// A unit of work for a replica. The pool moves jobs; what a job computes and how
// it reports its result belong to the capability layer (see pending.h, channel.h).
#include <memory>

#include "mpool/core/error.h"
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

  /// The request's shared state.
  RequestContext& context() noexcept { return *context_; }
  /// Shared handle to the request's state.
  const std::shared_ptr<RequestContext>& context_ptr() const noexcept { return context_; }

 private:
  std::shared_ptr<RequestContext> context_;
};

}  // namespace mpool::core
