#include "mpool/nn/stop.h"

#include <atomic>

#include "mpool/core/faults.h"

namespace mpool::nn {
namespace {

thread_local core::RequestContext* tls_request = nullptr;
std::atomic<long> g_passed{0};

}  // namespace

StopScope::StopScope(core::RequestContext& context) noexcept : previous_(tls_request) { tls_request = &context; }

StopScope::~StopScope() { tls_request = previous_; }

void stop_point() {
  core::RequestContext* request = tls_request;
  if (request == nullptr) return;
  g_passed.fetch_add(1, std::memory_order_relaxed);
  if (core::faults::fire(core::faults::Fault::kCancelAtLayer, core::faults::current_model())) request->request_cancel();
  request->throw_if_stopped();
}

long stop_points_passed() noexcept { return g_passed.load(); }

}  // namespace mpool::nn
