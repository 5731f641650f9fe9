#pragma once
// Stopping a long forward pass between layers once its request must stop
// (cancelled, past its deadline, the pool shutting down): a capability opens a
// StopScope for the request around its model call, on the replica thread, and
// every encoder and decoder layer loop calls stop_point() before each layer. A
// pass then ends within one layer of the request's end instead of running to
// its last layer. Without a scope (a probe, a decode step) stop_point does nothing.
#include "mpool/core/request.h"

namespace mpool::nn {

/// Makes `context` the request whose stop ends the forward passes this thread
/// runs while the scope lives (scopes nest; the innermost applies).
class StopScope {
 public:
  explicit StopScope(core::RequestContext& context) noexcept;
  ~StopScope();
  StopScope(const StopScope&) = delete;
  StopScope& operator=(const StopScope&) = delete;

 private:
  core::RequestContext* previous_;
};

/// Before a layer: throws the request's stop error (Cancelled, Timeout) when the
/// request in scope must stop. The fault cancel_at_layer cancels it here first.
void stop_point();

/// Layer boundaries passed inside a scope, in this process (tests count them).
long stop_points_passed() noexcept;

}  // namespace mpool::nn
