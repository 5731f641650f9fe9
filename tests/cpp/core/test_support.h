#pragma once
// Shared fixtures for the core tests: a fixed memory probe, instances with
// observable behaviour, and helpers that submit unary and streaming jobs.
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "mpool/core/channel.h"
#include "mpool/core/pending.h"
#include "mpool/core/pool.h"

namespace mpool::core::testing {

/// A probe reporting fixed readings (plenty of OS memory; budgets come from options).
class FixedProbe final : public MemoryProbe {
 public:
  explicit FixedProbe(double cpu_total_mb = 1e6, double cpu_free_mb = 1e6) : total_(cpu_total_mb), free_(cpu_free_mb) {}
  std::vector<DeviceReading> read() override {
    reads_++;
    return {{"cpu", total_, free_.load()}};
  }
  void set_free(double mb) { free_ = mb; }
  /// Readings taken so far: each maintenance tick takes one.
  long reads() const { return reads_.load(); }

 private:
  double total_;
  std::atomic<double> free_;
  std::atomic<long> reads_{0};
};

/// An instance whose work is a callable, so each test decides what "compute" means.
struct FnInstance : Instance {
  std::function<int(int, RequestContext&)> fn;
  std::atomic<int>* alive = nullptr;
  ~FnInstance() override {
    if (alive) (*alive)--;
  }
};

/// Pool options for tests: a CPU budget of `budget_mb` and a fast maintenance tick.
inline PoolOptions test_options(double budget_mb, double keep_alive_s = 300) {
  PoolOptions o;
  o.probe = std::make_shared<FixedProbe>();
  o.memory.budget_mb["cpu"] = budget_mb;
  o.keep_alive_s = keep_alive_s;
  o.maintenance_interval_s = 0.02;
  o.request_timeout_s = 10;
  return o;
}

/// The FixedProbe that test_options() installed: tests count its ticks or change its free memory.
inline std::shared_ptr<FixedProbe> fixed_probe(const PoolOptions& options) {
  return std::static_pointer_cast<FixedProbe>(options.probe);
}

/// A spec whose instances run `fn`; `loads` counts loader calls, `alive` live instances.
inline ModelSpec fn_spec(double mb, std::function<int(int, RequestContext&)> fn,
                         std::atomic<int>* loads = nullptr, std::atomic<int>* alive = nullptr) {
  ModelSpec s;
  s.capabilities = {"compute"};
  s.memory_mb = mb;
  s.loader = [fn, loads, alive](const std::string&) {
    if (loads) (*loads)++;
    auto inst = std::make_shared<FnInstance>();
    inst->fn = fn;
    inst->alive = alive;
    if (alive) (*alive)++;
    return inst;
  };
  return s;
}

/// Submits x to `key` and returns the pending result.
inline std::shared_ptr<Pending<int>> call_async(Pool& pool, const std::string& key, int x,
                                                std::optional<double> timeout = std::nullopt) {
  auto pending = std::make_shared<Pending<int>>(pool.make_context(key, {timeout}));
  pool.submit(key, "compute", std::make_shared<UnaryJob<int>>(pending, [x](Instance& inst, RequestContext& ctx) {
                return static_cast<FnInstance&>(inst).fn(x, ctx);
              }));
  return pending;
}

/// Submits x and waits for the result.
inline int call(Pool& pool, const std::string& key, int x, std::optional<double> timeout = std::nullopt) {
  return call_async(pool, key, x, timeout)->wait();
}

/// Streams `n` ints, one per step, checking cancellation between steps.
inline std::shared_ptr<Channel<int>> stream(Pool& pool, const std::string& key, int n, size_t capacity = 4,
                                            std::atomic<int>* produced = nullptr,
                                            std::chrono::milliseconds step = std::chrono::milliseconds(0)) {
  auto channel = std::make_shared<Channel<int>>(pool.make_context(key, {}), capacity);
  pool.submit(key, "compute",
              std::make_shared<StreamJob<int>>(channel, [n, produced, step](Instance&, RequestContext& ctx, Channel<int>& out) {
                for (int i = 0; i < n && !ctx.should_stop(); ++i) {
                  if (step.count() > 0) std::this_thread::sleep_for(step);
                  if (!out.push(i)) return;
                  if (produced) (*produced)++;
                }
              }));
  return channel;
}

/// Polls `pred` until true or `seconds` pass.
inline bool eventually(const std::function<bool()>& pred, double seconds = 5) {
  auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < until) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return pred();
}

/// Waits until the pool's maintenance thread has ticked `n` more times (each tick
/// reads `probe` once): event-driven, never a guess at how long a tick takes.
inline bool wait_ticks(const FixedProbe& probe, long n, double seconds = 30) {
  long target = probe.reads() + n;
  return eventually([&] { return probe.reads() >= target; }, seconds);
}

/// Blocks callers until open() (for holding a replica busy).
class Gate {
 public:
  void wait(RequestContext& ctx) {
    std::unique_lock lock(mu_);
    entered_++;
    cv_.notify_all();
    while (!open_ && !ctx.should_stop()) cv_.wait_for(lock, std::chrono::milliseconds(5));
  }
  void open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  bool wait_entered(int n, double seconds = 5) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return entered_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
  int entered_ = 0;
};

}  // namespace mpool::core::testing
