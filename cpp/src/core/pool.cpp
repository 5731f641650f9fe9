#include "mpool/core/pool.h"
#include "mpool/core/faults.h"
#include "mpool/core/pending.h"
#include "mpool/core/spin.h"

#include <tbb/concurrent_queue.h>

// Sanitizers bring their own allocator: glibc's malloc_trim would then work on
// arenas nobody uses (and trips glibc's thread-exit bookkeeping under TSan).
#if defined(__has_feature)
#if __has_feature(thread_sanitizer) || __has_feature(address_sanitizer)
#define MPOOL_SANITIZED_ALLOCATOR 1
#endif
#endif
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define MPOOL_SANITIZED_ALLOCATOR 1
#endif
#if defined(__GLIBC__) && !defined(MPOOL_SANITIZED_ALLOCATOR)
#define MPOOL_TRIM_HEAP 1
#include <malloc.h>
#endif
#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif

#include <algorithm>
#include <optional>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <system_error>

namespace mpool::core {
namespace {

enum ReplicaState : int { kLoading, kIdle, kBusy, kDead };

// The pool whose replica or maintenance thread this is (null elsewhere).
thread_local const void* tls_pool = nullptr;

// A replica thread that stops in the middle of a job (the replica_dies fault, or
// anything thrown by the replica's own bookkeeping).
struct ReplicaDeath : std::runtime_error {
  using std::runtime_error::runtime_error;
};

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

double seconds_since(int64_t ns) { return static_cast<double>(now_ns() - ns) / 1e9; }

std::string fmt_mb(double mb) {
  std::ostringstream s;
  s.precision(1);
  s << std::fixed << mb << " MB";
  return s.str();
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (auto& i : items) out += (out.empty() ? "" : ", ") + i;
  return out;
}

// Jobs failed after the pool lock is released: failing runs caller callbacks,
// which must never run under the lock.
using Deferred = std::vector<std::pair<std::shared_ptr<Job>, Error>>;

void fail_all(Deferred& deferred) {
  for (auto& [job, error] : deferred) job->fail(error);
  deferred.clear();
}

// Takes every job out of `queue` and sets it aside to fail with `error` once the
// pool lock is released. Retire pills stay queued: each belongs to a replica that
// must still exit.
template <class Queue>
void drain(Queue& queue, const Error& error, Deferred& deferred) {
  std::shared_ptr<Job> job;
  int pills = 0;
  while (queue.try_pop(job)) {
    if (!job) {
      ++pills;
      continue;
    }
    deferred.emplace_back(std::move(job), error);
  }
  for (int i = 0; i < pills; ++i) queue.push(nullptr);  // capacity keeps room for pills
}

// Names the calling thread as the OS shows it (/proc, top -H, gdb), so that tools
// and tests can tell the pool's threads from everyone else's.
void name_this_thread(const char* name) noexcept {
#if defined(__linux__)
  pthread_setname_np(pthread_self(), name);
#else
  (void)name;
#endif
}

// An unloaded model's freed heap goes back to the OS, not only to malloc's free
// lists: the governor reads the OS's free memory, and a long-running process that
// loads and unloads models must not creep upwards.
void give_memory_back_to_os() noexcept {
#if defined(MPOOL_TRIM_HEAP)
  malloc_trim(0);
#endif
}

Error as_error(const std::exception& e, ErrorCode code, const std::string& what) {
  if (auto* err = dynamic_cast<const Error*>(&e)) return *err;
  return Error(code, what + ": " + e.what());
}

}  // namespace

namespace {
// A replica in a job: counted in the pool's busy count until it is idle again,
// however the job ends (a death included).
struct BusyCount {
  std::atomic<int>& n;
  int now;
  explicit BusyCount(std::atomic<int>& c) : n(c), now(++c) {}
  ~BusyCount() { --n; }
  BusyCount(const BusyCount&) = delete;
  BusyCount& operator=(const BusyCount&) = delete;
};
}  // namespace

struct Pool::Replica {
  uint64_t id = 0;
  std::string device;
  double mb = 0;
  std::thread thread;  // moved to exited_ once dead (mu_)
  std::atomic<int> state{kLoading};
  std::atomic<int64_t> last_active_ns{now_ns()};
  std::atomic<int> threads{0};  // intra-op threads last set on its thread (0: none)
  bool took_pill = false;       // it popped a retire pill (its own thread only)
  std::mutex current_mu;
  std::vector<std::shared_ptr<Job>> current;  // the jobs running now, for shutdown and death
  const Instance* instance = nullptr;          // while loaded, for its usage() (current_mu)
};

struct Pool::Model {
  std::string key;
  ModelSpec spec;
  bool pinned = false;            // (mu_)
  bool removed = false;           // unregistered: nothing may spawn for it again (mu_)
  std::atomic<double> keep_alive_s{0};  // effective: the spec's or the pool default
  tbb::concurrent_bounded_queue<std::shared_ptr<Job>> queue;  // nullptr = retire one replica
  std::vector<std::shared_ptr<Replica>> replicas;             // until reaped (mu_)
  // Retirements not yet done: a pill is counted from the moment it is queued
  // until the replica that took it has exited (under mu_, with its kDead), so
  // live() - pills never counts a replica that is on its way out as serving.
  std::atomic<int> pills{0};
  std::atomic<int> queued_pills{0};  // the pills still in the queue
  std::atomic<int64_t> last_used_ns{now_ns()};
  bool starting = false;          // a cold start is choosing memory (mu_)
  int dead = 0;                   // replicas that have exited (mu_)
  std::string last_spawn_error;   // (mu_)
  Clock::time_point scale_pressure_since{};  // (mu_)
  std::shared_ptr<ModelMetrics> metrics = std::make_shared<ModelMetrics>();

  int live() const {  // loading or ready, not yet exited (mu_)
    int n = 0;
    for (auto& r : replicas) n += r->state.load() != kDead;
    return n;
  }
  int serving() const { return live() - pills.load(); }  // live and not about to retire
  int count(int state) const {
    int n = 0;
    for (auto& r : replicas) n += r->state.load() == state;
    return n;
  }
  size_t queued() const {
    auto size = static_cast<long>(queue.size()) - queued_pills.load();
    return size > 0 ? static_cast<size_t>(size) : 0;
  }
  // Nothing asked of it is unfinished: no request in flight and no replica in a
  // job (a job whose caller gave up still runs, and still uses the model).
  bool idle() const { return metrics->in_flight.load() == 0 && count(kBusy) == 0; }
};

int available_cpus() noexcept {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

namespace {
/// "cpu" or "cuda:N" (N: up to four digits).
bool is_device_name(const std::string& d) {
  return d == "cpu" || (d.rfind("cuda:", 0) == 0 && d.size() > 5 && d.size() < 10 &&
                        d.find_first_not_of("0123456789", 5) == std::string::npos);
}
}  // namespace

Pool::Pool(PoolOptions options)
    : options_(std::move(options)),
      governor_(std::make_shared<MemoryGovernor>(options_.probe, options_.memory)) {
  check_duration("request_timeout", options_.request_timeout_s);
  check_duration("keep_alive", options_.keep_alive_s);
  check_duration("scale_up_after", options_.scale_up_after_s);
  check_duration("scale_down_after", options_.scale_down_after_s);
  check_duration("maintenance_interval", options_.maintenance_interval_s);
  check(options_.request_timeout_s > 0, ErrorCode::kInvalidInput,
        "request_timeout must be > 0 seconds, got " + std::to_string(options_.request_timeout_s));
  check(options_.max_queue > 0, ErrorCode::kInvalidInput, "max_queue must be > 0");
  check(options_.cold_start_replicas >= 1, ErrorCode::kInvalidInput, "cold_start_replicas must be >= 1");
  check(options_.maintenance_interval_s > 0, ErrorCode::kInvalidInput, "maintenance_interval must be > 0");
  check(options_.intra_op_threads >= 0 && options_.intra_op_threads <= kMaxIntraOpThreads, ErrorCode::kInvalidInput,
        "intra_op_threads must be in [1, " + std::to_string(kMaxIntraOpThreads) + "] (0: the core share), got " +
            std::to_string(options_.intra_op_threads));
  check(!std::isnan(options_.scale_up_queue_depth) && options_.scale_up_queue_depth >= 0, ErrorCode::kInvalidInput,
        "scale_up_queue_depth must be >= 0");
  check(options_.scale_up_after_s >= 0, ErrorCode::kInvalidInput, "scale_up_after must be >= 0 seconds");
  check(options_.scale_down_after_s >= 0, ErrorCode::kInvalidInput, "scale_down_after must be >= 0 seconds");
  for (const auto& [device, mb] : options_.memory.budget_mb)
    check(is_device_name(device), ErrorCode::kInvalidInput,
          "memory_budget_mb: device '" + device + "' is not \"cpu\" or \"cuda:N\"");
  maintenance_ = std::thread([this] { maintenance_loop(); });
}

Pool::~Pool() { shutdown(); }

bool Pool::on_own_thread() const noexcept { return tls_pool == this; }

// --- registry ------------------------------------------------------------------

void Pool::register_model(const std::string& key, ModelSpec spec) {
  check(!key.empty(), ErrorCode::kInvalidInput, "model key must not be empty");
  check(static_cast<bool>(spec.loader), ErrorCode::kInvalidInput, "model '" + key + "' has no loader");
  check(!spec.capabilities.empty(), ErrorCode::kInvalidInput, "model '" + key + "' declares no capability");
  check(spec.memory_mb >= 0 && std::isfinite(spec.memory_mb), ErrorCode::kInvalidInput,
        "model '" + key + "': memory_mb must be finite and >= 0, got " + std::to_string(spec.memory_mb));
  check(spec.max_replicas >= 1 && spec.max_replicas <= 1024, ErrorCode::kInvalidInput,
        "model '" + key + "': max_replicas must be in [1, 1024], got " + std::to_string(spec.max_replicas));
  if (spec.keep_alive_s) check_duration("model '" + key + "': keep_alive", *spec.keep_alive_s);
  check(spec.intra_op_threads >= 0 && spec.intra_op_threads <= kMaxIntraOpThreads, ErrorCode::kInvalidInput,
        "model '" + key + "': intra_op_threads must be in [1, " + std::to_string(kMaxIntraOpThreads) +
            "] (0: the pool's), got " + std::to_string(spec.intra_op_threads));
  check(!spec.devices.empty(), ErrorCode::kInvalidInput, "model '" + key + "' lists no device");
  for (auto& d : spec.devices)
    check(is_device_name(d), ErrorCode::kInvalidInput,
          "model '" + key + "': device '" + d + "' is not \"cpu\" or \"cuda:N\"");
  auto model = std::make_shared<Model>();
  model->key = key;
  model->pinned = spec.pinned;
  model->keep_alive_s = spec.keep_alive_s.value_or(options_.keep_alive_s);
  // Room for one retire pill per replica beyond the request cap, so pills never block.
  model->queue.set_capacity(static_cast<std::ptrdiff_t>(options_.max_queue) + 4 * spec.max_replicas + 16);
  model->spec = std::move(spec);
  std::lock_guard lock(mu_);
  check(!shutting_down_, ErrorCode::kShuttingDown, "pool is shutting down");
  check(models_.count(key) == 0, ErrorCode::kInvalidInput, "a model is already registered as '" + key + "'");
  models_[key] = std::move(model);
}

void Pool::unregister_model(const std::string& key, double timeout_s) {
  check_duration("timeout", timeout_s);
  Deferred deferred;
  Lock lock(mu_);
  auto model = find_locked(key);
  // From here no request can reach it and nothing can spawn for it; every replica
  // it has, loading ones included, gets a retire pill behind the queued work it
  // may still be running.
  model->removed = true;
  models_.erase(key);
  unregistered_.push_back(model);
  drain(model->queue, Error(ErrorCode::kModelNotFound, "model '" + key + "' was unregistered"), deferred);
  retire_locked(*model, model->live() - model->pills.load());
  lock.unlock();
  fail_all(deferred);
  lock.lock();
  // Waiting on our own replica would wait for ourselves: then the maintenance
  // thread reaps it once it exits.
  if (!on_own_thread()) wait_exits(lock, deadline_after(timeout_s), [&] { return model->live() == 0; });
  reap_locked();
  lock.unlock();
  join_exited();
}

bool Pool::has_model(const std::string& key) const {
  std::lock_guard lock(mu_);
  return models_.count(key) > 0;
}

std::shared_ptr<Pool::Model> Pool::find_locked(const std::string& key) const {
  auto it = models_.find(key);
  if (it != models_.end()) return it->second;
  std::vector<std::string> keys;
  for (auto& [k, _] : models_) keys.push_back(k);
  throw Error(ErrorCode::kModelNotFound, "no model registered as '" + key + "'" +
                                             (keys.empty() ? " (none are registered)" : "; registered: " + join(keys)));
}

std::shared_ptr<RequestContext> Pool::make_context(const std::string& key, const RequestOptions& options) {
  double timeout = options.timeout_s.value_or(options_.request_timeout_s);
  check_duration("timeout", timeout);
  check(timeout > 0, ErrorCode::kInvalidInput, "timeout must be > 0 seconds, got " + std::to_string(timeout));
  std::shared_ptr<ModelMetrics> metrics;
  {
    std::lock_guard lock(mu_);
    metrics = find_locked(key)->metrics;
  }
  return std::make_shared<RequestContext>(deadline_after(timeout), std::move(metrics));
}

// --- requests ------------------------------------------------------------------

void Pool::submit(const std::string& key, const std::string& capability, std::shared_ptr<Job> job) {
  check(job != nullptr, ErrorCode::kInternal, "submit() got no job");
  Deferred deferred;
  Lock lock(mu_);
  check(!shutting_down_, ErrorCode::kShuttingDown, "pool is shutting down; request for '" + key + "' refused");
  auto model = find_locked(key);
  // A request made (make_context) for an earlier registration of this key, which
  // was unregistered and registered again since: its outcome would count in the
  // old model's metrics, so it must not count (or run) in the new one.
  check(job->context().metrics() == model->metrics, ErrorCode::kModelNotFound,
        "model '" + key + "' was unregistered (and registered again) while this request was made");
  auto& caps = model->spec.capabilities;
  check(capability.empty() || std::find(caps.begin(), caps.end(), capability) != caps.end(),
        ErrorCode::kInvalidInput,
        "model '" + key + "' does not serve " + capability + " (it serves: " + join(caps) + ")");
  model->metrics->requests++;
  if (model->queued() >= options_.max_queue) {
    model->metrics->rejections++;
    throw Error(ErrorCode::kOverloaded, "model '" + key + "' has " + std::to_string(model->queued()) +
                                            " queued requests (max_queue=" + std::to_string(options_.max_queue) +
                                            "); retry later");
  }
  if (model->serving() <= 0 && !model->starting) {
    model->starting = true;
    model->last_spawn_error.clear();
    std::optional<Error> failed;
    try {
      // Waiting for memory (evictions, retiring replicas) is bounded by this request's deadline.
      spawn_locked(lock, model, std::min(options_.cold_start_replicas, model->spec.max_replicas),
                   /*allow_evict=*/true, job->context().deadline());
    } catch (const std::exception& e) {
      failed = as_error(e, ErrorCode::kSpawnFailed, "cannot load '" + key + "'");
    }
    model->starting = false;
    if (failed) {
      // Requests that queued behind this cold start share its fate, unless it only
      // ran out of this request's time: theirs is their own, and maintenance
      // cold-starts for them. This one settles with it (its caller gets the exception).
      if (failed->code() != ErrorCode::kTimeout) drain(model->queue, *failed, deferred);
      deferred.emplace_back(job, *failed);
      lock.unlock();
      fail_all(deferred);
      throw *failed;
    }
  }
  model->last_used_ns = now_ns();
  auto context = job->context_ptr();
  context->mark_accepted();  // before the push: a replica may settle it at once
  if (!model->queue.try_push(job)) {  // capacity has headroom; this is a bug guard
    lock.unlock();
    job->fail(Error(ErrorCode::kOverloaded, "model '" + key + "' queue is full"));
    throw Error(ErrorCode::kOverloaded, "model '" + key + "' queue is full");
  }
  // The job is queued: whatever growth does, the caller's request stands.
  try {
    maybe_scale_up_locked(lock, model);
  } catch (const std::exception& e) {
    model->last_spawn_error = e.what();
  }
}

// --- replicas ------------------------------------------------------------------

bool Pool::spawn_locked(Lock& lock, const std::shared_ptr<Model>& model, int count, bool allow_evict,
                        Clock::time_point deadline) {
  auto still_wanted = [&] {
    check(!shutting_down_, ErrorCode::kShuttingDown, "pool is shutting down; '" + model->key + "' not loaded");
    check(!model->removed, ErrorCode::kModelNotFound, "model '" + model->key + "' was unregistered");
  };
  auto out_of_time = [&] {
    if (Clock::now() >= deadline)
      throw Error(ErrorCode::kTimeout,
                  "request timed out while waiting for memory to load '" + model->key + "'");
  };
  still_wanted();
  const auto& devices = model->spec.devices;
  if (std::none_of(devices.begin(), devices.end(), [&](const std::string& d) { return governor_->has_device(d); })) {
    // It can never load here: a wrong device, not a shortage of memory.
    if (!allow_evict) return false;
    std::string listed;
    for (const auto& d : devices) listed += (listed.empty() ? "" : ", ") + d;
    throw Error(ErrorCode::kSpawnFailed, "cannot load '" + model->key + "': none of its devices (" + listed +
                                             ") is present in this pool");
  }
  const double est = model->spec.memory_mb;
  {
    // One replica larger than every device's whole budget can never load: no
    // eviction or wait could help, so it fails now and leaves the others loaded.
    std::string budgets;
    bool could_fit = false;
    for (const auto& d : devices)
      if (auto view = governor_->device(d)) {
        could_fit = could_fit || est <= view->budget_mb;
        budgets += "; " + d + ": " + fmt_mb(view->available_mb) + " available (budget " + fmt_mb(view->budget_mb) + ")";
      }
    if (!could_fit) {
      if (!allow_evict) return false;
      throw Error(ErrorCode::kMemoryExhausted, "cannot load '" + model->key + "': requested " + fmt_mb(est) +
                                                   " for one replica, more than the whole budget of each of its "
                                                   "devices" + budgets);
    }
  }
  for (int n = count; n >= 1; --n) {
    for (auto& device : model->spec.devices) {
      if (auto r = governor_->try_reserve(device, n * est)) {
        for (int i = 0; i < n; ++i) {
          try {
            spawn_replica_locked(model, r->split(est));
          } catch (const std::exception&) {
            if (i == 0) throw;  // none started: the caller gets the error
            return true;        // one is serving; the error is recorded on the model
          }
        }
        return true;
      }
    }
  }
  if (!allow_evict) return false;
  // Nothing fits: evict idle, unpinned memory (least recently used first) until one replica does.
  // A model whose requests have all settled but whose replica is still in a job
  // (finishing the instant after it delivered, or running for a caller that gave
  // up) is not idle; it becomes evictable when the job returns, so we wait for it.
  for (auto& device : model->spec.devices) {
    if (!governor_->has_device(device)) continue;
    while (true) {
      if (auto r = governor_->try_reserve(device, est)) {
        spawn_replica_locked(model, std::move(*r));
        return true;
      }
      out_of_time();
      bool finishing = false;
      if (!evict_one_locked(lock, device, model.get(), deadline, &finishing)) {
        if (!finishing) break;
        // Wait (lock released, within the deadline) for its job to return.
        exit_cv_.wait_until(lock, std::min(deadline, Clock::now() + std::chrono::milliseconds(50)));
        reap_locked();
      }
      still_wanted();
    }
  }
  // Replicas already retiring (keep-alive, unload) will hand their memory back soon.
  auto retiring = [&] {
    for (auto& [k, m] : models_)
      if (m->pills.load() > 0) return true;
    for (auto& m : unregistered_)
      if (m->live() > 0) return true;
    return false;
  };
  auto give_up = std::min(deadline, Clock::now() + std::chrono::seconds(30));
  while (retiring() && Clock::now() < give_up) {
    exit_cv_.wait_until(lock, std::min(give_up, Clock::now() + std::chrono::milliseconds(50)));
    still_wanted();
    reap_locked();
    for (auto& device : model->spec.devices) {
      if (auto r = governor_->try_reserve(device, est)) {
        spawn_replica_locked(model, std::move(*r));
        return true;
      }
    }
  }
  out_of_time();
  std::string detail;
  for (auto& device : model->spec.devices) {
    auto d = governor_->device(device);
    detail += "; " + device + ": " +
              (d ? fmt_mb(d->available_mb) + " available (budget " + fmt_mb(d->budget_mb) + ", committed " +
                       fmt_mb(d->committed_mb) + ", free " + fmt_mb(d->os_free_mb) + ")"
                 : std::string("not present"));
  }
  throw Error(ErrorCode::kMemoryExhausted, "cannot load '" + model->key + "': requested " + fmt_mb(est) +
                                               " for one replica" + detail +
                                               "; no idle unpinned model is left to evict");
}

void Pool::spawn_replica_locked(const std::shared_ptr<Model>& model, Reservation reservation) {
  // The one place a replica is born: never after shutdown began, never for a
  // model that is gone. A throw here releases the reservation (RAII).
  check(!shutting_down_, ErrorCode::kShuttingDown, "pool is shutting down; '" + model->key + "' not loaded");
  check(!model->removed, ErrorCode::kModelNotFound, "model '" + model->key + "' was unregistered");
  auto replica = std::make_shared<Replica>();
  replica->id = next_replica_id_++;
  replica->device = reservation.device();
  replica->mb = reservation.mb();
  std::thread thread;
  try {
    if (faults::fire(faults::Fault::kThreadCreateFails, &model->key))
      throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again),
                              "injected fault thread_create_fails");
    thread = std::thread([this, model, replica, r = std::move(reservation)]() mutable {
      worker_main(model, replica, std::move(r));
    });
  } catch (const std::exception& e) {
    model->metrics->spawn_failures++;
    model->last_spawn_error = std::string("could not start a replica thread: ") + e.what();
    throw Error(ErrorCode::kSpawnFailed, "model '" + model->key + "': " + model->last_spawn_error);
  }
  // Recorded only once its thread exists (we hold mu_, so the thread cannot look yet).
  replica->thread = std::move(thread);
  model->replicas.push_back(replica);
  model->scale_pressure_since = {};
}

void Pool::retire_locked(Model& model, int count) {
  for (int i = 0; i < count; ++i) {
    model.pills++;
    model.queued_pills++;
    model.queue.push(nullptr);  // capacity keeps room for pills
  }
}

template <class Pred>
bool Pool::wait_exits(Lock& lock, Clock::time_point until, Pred pred) {
  return wait_until_sliced(exit_cv_, lock, until, pred);
}

bool Pool::evict_one_locked(Lock& lock, const std::string& device, const Model* protect, Clock::time_point deadline,
                            bool* finishing) {
  // Idle extra replicas go first, then whole idle models; least recently used first.
  // Each model is read once: a replica may turn idle at any moment (it does not
  // take mu_), and two readings that disagree would evict a whole model whose
  // extra replica was the right victim, or find nothing to evict and nothing finishing.
  std::shared_ptr<Model> extra, whole;  // the LRU model with an extra replica; with any
  int whole_serving = 0;
  for (auto& [key, m] : models_) {
    if (m.get() == protect || m->pinned || m->starting) continue;
    bool on_device = std::any_of(m->replicas.begin(), m->replicas.end(), [&](auto& r) {
      return r->device == device && r->state.load() != kDead;
    });
    if (!on_device || m->metrics->in_flight.load() != 0) continue;  // busy: never evicted
    if (m->count(kBusy) != 0) {  // settled, but a replica is still in its job
      if (finishing) *finishing = true;
      continue;
    }
    int serving = m->serving();
    auto older = [&](const std::shared_ptr<Model>& than) {
      return !than || m->last_used_ns.load() < than->last_used_ns.load();
    };
    if (serving > 1 && older(extra)) extra = m;
    if (serving >= 1 && older(whole)) {
      whole = m;
      whole_serving = serving;
    }
  }
  std::shared_ptr<Model> victim = extra ? extra : whole;
  int count = extra ? 1 : whole_serving;
  if (!victim) return false;
  int target = victim->dead + count;
  retire_locked(*victim, count);
  victim->metrics->replicas_evicted += count;
  // Wait (lock released) until the memory is actually back, within the deadline.
  wait_exits(lock, std::min(deadline, Clock::now() + std::chrono::seconds(60)),
             [&] { return victim->dead >= target; });
  reap_locked();
  return true;
}

void Pool::reap_locked() {
  // Dead replicas leave the lists; their threads are joined later, outside mu_
  // (a dead replica may still be running callbacks that call into the pool).
  auto reap = [&](Model& m) {
    auto& rs = m.replicas;
    for (auto it = rs.begin(); it != rs.end();) {
      if ((*it)->state.load() == kDead) {
        if ((*it)->thread.joinable()) exited_.push_back(std::move((*it)->thread));
        it = rs.erase(it);
      } else {
        ++it;
      }
    }
  };
  for (auto& [key, m] : models_) reap(*m);
  for (auto& m : unregistered_) reap(*m);
  auto gone = std::stable_partition(unregistered_.begin(), unregistered_.end(),
                                    [](auto& m) { return !m->replicas.empty(); });
  for (auto it = gone; it != unregistered_.end(); ++it) graveyard_.push_back(std::move(*it));
  unregistered_.erase(gone, unregistered_.end());
}

void Pool::join_exited() {
  std::vector<std::thread> threads;
  std::vector<std::shared_ptr<Model>> models;  // released last, outside mu_
  {
    std::lock_guard lock(mu_);
    threads.swap(exited_);
    models.swap(graveyard_);
    // A dead replica may itself be here, in a callback: it is never joined by itself.
    auto self = std::find_if(threads.begin(), threads.end(),
                             [](auto& t) { return t.get_id() == std::this_thread::get_id(); });
    if (self != threads.end()) {
      exited_.push_back(std::move(*self));
      threads.erase(self);
    }
  }
  for (auto& t : threads) t.join();
}

void Pool::maybe_scale_up_locked(Lock& lock, const std::shared_ptr<Model>& model) {
  int serving = model->serving();
  bool wants = serving > 0 && serving < model->spec.max_replicas && model->count(kLoading) == 0 &&
               static_cast<double>(model->queued()) > options_.scale_up_queue_depth * serving;
  if (!wants || shutting_down_ || model->removed) {
    model->scale_pressure_since = {};
    return;
  }
  auto now = Clock::now();
  if (model->scale_pressure_since == Clock::time_point{}) model->scale_pressure_since = now;
  std::chrono::duration<double> held = now - model->scale_pressure_since;
  if (held.count() < options_.scale_up_after_s) return;
  model->scale_pressure_since = {};
  // Growth never evicts: only spare memory buys an extra replica.
  spawn_locked(lock, model, 1, /*allow_evict=*/false, Clock::now());
}

void Pool::worker_main(std::shared_ptr<Model> model, std::shared_ptr<Replica> replica, Reservation reservation) {
  tls_pool = this;
  name_this_thread("mpool-replica");
  faults::set_current_model(&model->key);
  std::shared_ptr<Instance> instance;
  std::string load_error;
  try {
    double slow = 0;
    if (faults::fire(faults::Fault::kSlowLoad, &model->key, &slow)) std::this_thread::sleep_for(to_duration(slow));
    if (faults::fire(faults::Fault::kLoaderThrows, &model->key))
      throw Error(ErrorCode::kSpawnFailed, "injected fault loader_throws");
    if (options_.replica_thread_setup) {
      const int threads = threads_for_job(*model, busy_replicas_.load() + 1);
      options_.replica_thread_setup(threads);
      replica->threads = threads;
    }
    instance = model->spec.loader(replica->device);
    if (!instance) load_error = "the loader returned no instance";
    std::lock_guard current(replica->current_mu);
    replica->instance = instance.get();
  } catch (const std::exception& e) {
    load_error = e.what();
  } catch (...) {
    load_error = "the loader threw a non-standard exception";
  }

  std::string death;  // why this replica stopped in the middle of a job
  if (instance) {
    model->metrics->replicas_spawned++;
    try {
      serve(*model, *replica, *instance);
    } catch (const std::exception& e) {
      death = e.what();
    } catch (...) {
      death = "a non-standard exception";
    }
    {
      std::lock_guard current(replica->current_mu);
      replica->instance = nullptr;
    }
    instance.reset();  // the model's memory goes back before the reservation does
  }
  give_memory_back_to_os();
  reservation.release();

  Deferred deferred;
  {
    Lock lock(mu_);
    if (!load_error.empty()) {
      model->metrics->spawn_failures++;
      model->last_spawn_error = load_error;
    }
    replica->state = kDead;
    if (replica->took_pill) model->pills--;  // its retirement is done, together with its kDead
    model->dead++;
    if (!death.empty()) {
      // The jobs it was running get one typed outcome each; a replacement takes its place.
      model->metrics->replica_deaths++;
      std::vector<std::shared_ptr<Job>> current;
      {
        std::lock_guard current_lock(replica->current_mu);
        current.swap(replica->current);
      }
      for (auto& job : current)
        deferred.emplace_back(job, Error(ErrorCode::kModelError, "a replica of model '" + model->key +
                                                                     "' died in the middle of the request: " + death));
      if (!shutting_down_ && !model->removed) {
        try {
          spawn_locked(lock, model, 1, /*allow_evict=*/false, Clock::now());  // never releases the lock
        } catch (const std::exception& e) {
          model->last_spawn_error = std::string("replacing a dead replica failed: ") + e.what();
        }
      }
    }
    // Pills that outlived every replica (one was queued for a replica whose load
    // then failed) retire nobody: drop them, or they would retire the replicas of
    // the next cold start. No replica is left to pop concurrently; submit and
    // drain hold mu_.
    if (model->live() == 0 && model->queued_pills.load() > 0) {
      std::vector<std::shared_ptr<Job>> jobs;
      std::shared_ptr<Job> job;
      int stale = 0;
      while (model->queue.try_pop(job)) {
        if (job)
          jobs.push_back(std::move(job));
        else
          ++stale;
      }
      for (auto& j : jobs) model->queue.push(std::move(j));
      model->queued_pills -= stale;
      model->pills -= stale;
    }
    // A failed load with nobody else left to serve: the waiting requests fail now.
    if (!load_error.empty() && model->serving() <= 0 && !model->starting)
      drain(model->queue,
            Error(ErrorCode::kSpawnFailed,
                  "model '" + model->key + "' failed to load on " + replica->device + ": " + load_error),
            deferred);
  }
  exit_cv_.notify_all();
  fail_all(deferred);
  wake_maintenance();
  faults::set_current_model(nullptr);
}

void Pool::set_job_threads(const Model& model, Replica& replica, int busy) {
  if (!options_.replica_thread_setup) return;
  const int threads = threads_for_job(model, busy);
  if (threads != replica.threads.load()) {
    options_.replica_thread_setup(threads);
    replica.threads = threads;
  }
}

void Pool::serve(Model& model, Replica& replica, Instance& instance) {
  replica.last_active_ns = now_ns();
  replica.state = kIdle;
  std::shared_ptr<Job> carry;  // popped while batching but not taken: runs next
  bool retire = false;
  while (!retire) {
    std::shared_ptr<Job> job = std::move(carry);
    // Poll briefly (a busy model's next job is usually right behind), then sleep.
    if (!job && !spin_until([&] { return model.queue.try_pop(job); })) model.queue.pop(job);
    if (!job) {
      model.queued_pills--;
      replica.took_pill = true;
      break;
    }
    if (job->context().should_stop()) {  // expired or cancelled while queued
      job->fail(job->context().stop_error());
      continue;
    }
    if (job->continuous() && !job->batch_key().empty()) {
      run_continuous_batch(model, replica, instance, std::move(job), carry, retire);
      continue;
    }
    std::vector<std::shared_ptr<Job>> batch{job};
    const size_t budget = model.spec.batch_budget;
    if (budget > 0 && !job->batch_key().empty()) {
      // No timer: the batch is whatever of the same kind is queued right now.
      size_t total = job->batch_cost();
      std::shared_ptr<Job> next;
      while (total < budget && model.queue.try_pop(next)) {
        if (!next) {  // a retire pill: finish this batch, then go
          model.queued_pills--;
          replica.took_pill = true;
          retire = true;
          break;
        }
        if (next->context().should_stop()) {
          next->fail(next->context().stop_error());
          continue;
        }
        if (next->batch_key() != job->batch_key() || total + next->batch_cost() > budget) {
          carry = std::move(next);
          break;
        }
        total += next->batch_cost();
        batch.push_back(std::move(next));
      }
    }
    replica.state = kBusy;
    std::optional<BusyCount> busy;
    busy.emplace(busy_replicas_);
    set_job_threads(model, replica, busy->now);
    {
      std::lock_guard lock(replica.current_mu);
      replica.current = batch;
    }
    if (carry) {  // a held-over job is this replica's too: it dies with it
      std::lock_guard lock(replica.current_mu);
      replica.current.push_back(carry);
    }
    auto start = Clock::now();
    for (auto& j : batch)
      model.metrics->queue.add(std::chrono::duration<double, std::milli>(start - j->context().created()).count());
    if (faults::fire(faults::Fault::kReplicaDies, &model.key)) throw ReplicaDeath("injected fault replica_dies");
    if (faults::fire(faults::Fault::kForwardThrows, &model.key)) {
      for (auto& j : batch) j->fail(Error(ErrorCode::kModelError, "model '" + model.key + "' failed: injected fault forward_throws"));
    } else if (batch.size() == 1) {
      run_isolated(*job, instance, model.key);
    } else {
      try {
        job->run_batch(instance, batch);
      } catch (const Error& e) {
        for (auto& j : batch) j->fail(e);
      } catch (const std::exception& e) {
        for (auto& j : batch) j->fail(Error(ErrorCode::kModelError, "model '" + model.key + "' failed: " + e.what()));
      } catch (...) {
        for (auto& j : batch)
          j->fail(Error(ErrorCode::kModelError, "model '" + model.key + "' threw a non-standard exception"));
      }
    }
    double compute_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
    for (size_t i = 0; i < batch.size(); ++i) model.metrics->compute.add(compute_ms);
    {
      std::lock_guard lock(replica.current_mu);
      replica.current.clear();
    }
    job.reset();
    batch.clear();
    replica.last_active_ns = now_ns();
    model.last_used_ns = now_ns();
    busy.reset();  // before it shows idle: a replica seen idle is out of the count
    replica.state = kIdle;
    if (model.metrics->in_flight.load() == 0) {
      exit_cv_.notify_all();  // a cold start may be waiting for this model to become evictable
      // keep_alive == 0 unloads right after the last request, not at the next tick.
      if (model.keep_alive_s.load() == 0) wake_maintenance();
    }
  }
}

void Pool::run_continuous_batch(Model& model, Replica& replica, Instance& instance, std::shared_ptr<Job> first,
                                std::shared_ptr<Job>& carry, bool& retire) {
  // The feed the batch takes its further jobs from. Every job it holds is in the
  // replica's current list until finished, so a death fails each one once.
  class Feed final : public JobFeed {
   public:
    Feed(Model& model, Replica& replica, std::shared_ptr<Job> first, std::shared_ptr<Job>& carry, bool& retire)
        : model_(model), replica_(replica), key_(first->batch_key()), carry_(carry), retire_(retire) {
      {
        std::lock_guard lock(replica_.current_mu);
        replica_.current.clear();  // a held-over job listed there is `first` now
      }
      hold(std::move(first));
    }
    std::shared_ptr<Job> take() override {
      std::shared_ptr<Job> next;
      while (!closed_ && model_.queue.try_pop(next)) {
        if (!next) {  // a retire pill: finish this batch, then go
          model_.queued_pills--;
          replica_.took_pill = true;
          retire_ = true;
          closed_ = true;
          break;
        }
        if (next->context().should_stop()) {
          next->fail(next->context().stop_error());
          next.reset();
          continue;
        }
        if (!next->continuous() || next->batch_key() != key_) {  // runs next; nothing joins before it
          std::lock_guard lock(replica_.current_mu);
          replica_.current.push_back(next);
          carry_ = std::move(next);
          closed_ = true;
          break;
        }
        return hold(std::move(next));
      }
      return nullptr;
    }
    void finished(const Job& job) override {
      std::shared_ptr<Job> done;
      {
        std::lock_guard lock(replica_.current_mu);
        auto it = std::find_if(replica_.current.begin(), replica_.current.end(),
                               [&](const std::shared_ptr<Job>& j) { return j.get() == &job; });
        if (it == replica_.current.end()) return;
        done = std::move(*it);
        replica_.current.erase(it);
      }
      auto started = started_.find(&job);
      if (started != started_.end()) {
        model_.metrics->compute.add(std::chrono::duration<double, std::milli>(Clock::now() - started->second).count());
        started_.erase(started);
      }
    }
    // Fails every job still held (the batch threw), then lets them go.
    void fail_held(const Error& error) {
      std::vector<std::shared_ptr<Job>> held;
      {
        std::lock_guard lock(replica_.current_mu);
        for (auto& j : replica_.current)
          if (j != carry_) held.push_back(j);
      }
      for (auto& j : held) {
        j->fail(error);
        finished(*j);
      }
    }

   private:
    std::shared_ptr<Job> hold(std::shared_ptr<Job> job) {
      const auto now = Clock::now();
      model_.metrics->queue.add(std::chrono::duration<double, std::milli>(now - job->context().created()).count());
      started_[job.get()] = now;
      std::lock_guard lock(replica_.current_mu);
      replica_.current.push_back(job);
      return job;
    }

    Model& model_;
    Replica& replica_;
    const std::string key_;
    std::shared_ptr<Job>& carry_;
    bool& retire_;
    bool closed_ = false;
    std::map<const Job*, Clock::time_point> started_;
  };

  replica.state = kBusy;
  std::optional<BusyCount> busy;
  busy.emplace(busy_replicas_);
  set_job_threads(model, replica, busy->now);
  const std::shared_ptr<Job> job = first;  // alive for the whole call, even once finished
  Feed feed(model, replica, std::move(first), carry, retire);
  if (faults::fire(faults::Fault::kReplicaDies, &model.key)) throw ReplicaDeath("injected fault replica_dies");
  if (faults::fire(faults::Fault::kForwardThrows, &model.key)) {
    feed.fail_held(Error(ErrorCode::kModelError, "model '" + model.key + "' failed: injected fault forward_throws"));
  } else {
    try {
      job->run_continuous(instance, feed);
    } catch (const Error& e) {
      feed.fail_held(e);
    } catch (const std::exception& e) {
      feed.fail_held(Error(ErrorCode::kModelError, "model '" + model.key + "' failed: " + e.what()));
    } catch (...) {
      feed.fail_held(Error(ErrorCode::kModelError, "model '" + model.key + "' threw a non-standard exception"));
    }
    // A batch that returned with jobs it never finished broke its contract: they
    // still get one outcome each.
    feed.fail_held(Error(ErrorCode::kModelError, "model '" + model.key + "' ended a batch without an outcome for this request"));
  }
  replica.last_active_ns = now_ns();
  model.last_used_ns = now_ns();
  busy.reset();  // before it shows idle: a replica seen idle is out of the count
  replica.state = kIdle;
  if (model.metrics->in_flight.load() == 0) {
    exit_cv_.notify_all();
    if (model.keep_alive_s.load() == 0) wake_maintenance();
  }
}

// --- lifecycle -----------------------------------------------------------------

double Pool::keep_alive_of(const Model& model) const {
  return model.keep_alive_s.load();
}

std::shared_ptr<Pending<bool>> Pool::load_async(const std::string& key, const RequestOptions& options) {
  auto pending = std::make_shared<Pending<bool>>(make_context(key, options));
  auto nothing = [](Instance&, RequestContext&) { return true; };
  submit(key, std::string{}, std::make_shared<UnaryJob<bool>>(pending, nothing));
  return pending;
}

void Pool::load(const std::string& key, const RequestOptions& options) { load_async(key, options)->wait(); }

int Pool::intra_op_threads_of(const Model& model) const {
  return model.spec.intra_op_threads > 0 ? model.spec.intra_op_threads : options_.intra_op_threads;
}

int Pool::threads_for_job(const Model& model, int busy) const {
  const int fixed = intra_op_threads_of(model);
  return fixed > 0 ? fixed : std::max(1, cpus_ / std::max(1, busy));
}

bool Pool::unload(const std::string& key, double timeout_s) {
  check_duration("timeout", timeout_s);
  Lock lock(mu_);
  auto model = find_locked(key);
  // Every replica alive now must be gone before this returns: the serving ones get
  // retired here, and those already retiring (keep-alive or an eviction got there
  // first) are waited for too.
  int live = model->live();
  int count = model->serving();
  if (count > 0) retire_locked(*model, count);  // behind queued work, which finishes first
  bool done = true;
  if (live > 0) {
    int target = model->dead + live;
    // On one of our own threads the replica to wait for may be this one.
    done = !on_own_thread() &&
           wait_exits(lock, deadline_after(timeout_s), [&] { return model->dead >= target; });
  }
  reap_locked();
  lock.unlock();
  join_exited();
  return done;
}

void Pool::set_pinned(const std::string& key, bool pinned) {
  std::lock_guard lock(mu_);
  find_locked(key)->pinned = pinned;
}

void Pool::set_keep_alive(const std::string& key, double keep_alive_s) {
  check_duration("keep_alive", keep_alive_s);
  {
    std::lock_guard lock(mu_);
    find_locked(key)->keep_alive_s = keep_alive_s;
  }
  wake_maintenance();
}

void Pool::set_memory_budget(const std::string& device, std::optional<double> mb) {
  check(is_device_name(device), ErrorCode::kInvalidInput, "device '" + device + "' is not \"cpu\" or \"cuda:N\"");
  // A budget for a device this host lacks would never apply: most likely a
  // wrong ordinal, so it is refused rather than kept silently. (Budgets given
  // to the constructor may name absent devices: one configuration can serve
  // hosts with and without GPUs.)
  governor_->refresh();
  if (!governor_->has_device(device)) {
    std::string present;
    for (const auto& d : governor_->snapshot()) present += (present.empty() ? "" : ", ") + d.device;
    throw Error(ErrorCode::kInvalidInput, "device '" + device + "' is not present in this pool (devices: " +
                                              (present.empty() ? std::string("none") : present) +
                                              "); its memory budget would never apply");
  }
  governor_->set_budget(device, mb);
  governor_->refresh();
  wake_maintenance();
}

void Pool::wake_maintenance() {
  {
    std::lock_guard lock(maintenance_mu_);
    maintenance_wake_ = true;
  }
  maintenance_cv_.notify_one();
}

void Pool::maintenance_loop() {
  tls_pool = this;
  name_this_thread("mpool-maint");
  const auto interval = to_duration(options_.maintenance_interval_s);
  while (true) {
    {
      std::unique_lock lock(maintenance_mu_);
      maintenance_cv_.wait_for(lock, interval, [&] { return maintenance_wake_ || maintenance_stop_; });
      if (maintenance_stop_) return;
      maintenance_wake_ = false;
    }
    try {
      Lock lock(mu_);
      if (shutting_down_) continue;
      maintain_locked(lock);
    } catch (const std::exception& e) {  // keep maintaining; say why once per failure
      std::fprintf(stderr, "mpool: maintenance step failed: %s\n", e.what());
    }
    join_exited();
  }
}

void Pool::maintain_locked(Lock& lock) {
  reap_locked();
  governor_->refresh();
  Deferred deferred;
  std::vector<std::shared_ptr<Model>> models;
  // A model unregistered while an eviction below waited may have its last
  // reference here (or lose its other ones meanwhile): all go to the graveyard,
  // released outside mu_ (the lock is held whenever this scope ends).
  struct Bury {
    std::vector<std::shared_ptr<Model>>& models;
    std::vector<std::shared_ptr<Model>>& graveyard;
    ~Bury() {
      for (auto& m : models) graveyard.push_back(std::move(m));
    }
  } bury{models, graveyard_};
  models.reserve(models_.size());
  graveyard_.reserve(graveyard_.size() + models_.size());
  for (auto& [key, m] : models_) models.push_back(m);
  for (auto& m : models) {
    if (m->removed || shutting_down_) continue;  // changed while an eviction waited
    int serving = m->serving();
    // Requests queued with nobody to serve them (a failed load, or an eviction race).
    if (serving <= 0 && m->queued() > 0 && !m->starting) {
      if (!m->last_spawn_error.empty() && m->count(kLoading) == 0) {
        drain(m->queue, Error(ErrorCode::kSpawnFailed, "model '" + m->key + "' failed to load: " + m->last_spawn_error),
              deferred);
      } else if (m->count(kLoading) == 0) {
        m->starting = true;
        try {
          spawn_locked(lock, m, 1, /*allow_evict=*/true, deadline_after(30));
        } catch (const std::exception& e) {
          drain(m->queue, as_error(e, ErrorCode::kSpawnFailed, "cannot load '" + m->key + "'"), deferred);
        }
        m->starting = false;
      }
      continue;
    }
    if (serving <= 0) continue;
    double keep_alive = keep_alive_of(*m);
    if (m->idle() && !m->pinned && keep_alive >= 0 && seconds_since(m->last_used_ns.load()) >= keep_alive) {
      retire_locked(*m, serving);  // keep-alive expired: unload
      m->metrics->replicas_evicted += serving;
      continue;
    }
    if (serving > 1 && m->queued() == 0) {
      for (auto& r : m->replicas) {
        if (r->state.load() == kIdle && seconds_since(r->last_active_ns.load()) >= options_.scale_down_after_s) {
          retire_locked(*m, 1);  // an extra replica has been idle long enough
          break;
        }
      }
    }
    try {
      maybe_scale_up_locked(lock, m);
    } catch (const std::exception& e) {
      m->last_spawn_error = e.what();
    }
  }
  // Critical pressure: evict one idle victim per device per tick, least recently
  // used first. The next tick reads the memory afresh before deciding again, so
  // one stale reading never empties the pool.
  for (auto& d : governor_->snapshot()) {
    if (shutting_down_) break;
    if (d.pressure == Pressure::kCritical) evict_one_locked(lock, d.device, nullptr, deadline_after(60));
  }
  lock.unlock();
  fail_all(deferred);
  lock.lock();
}

void Pool::shutdown(double drain_timeout_s) {
  check_duration("timeout", drain_timeout_s);
  check(!on_own_thread(), ErrorCode::kInvalidInput,
        "close() was called on one of the pool's own threads (a done-callback, a model method or a __del__ "
        "running there); it would wait for itself. Close the pool from another thread.");
  Lock lock(mu_);
  if (shutting_down_) {
    exit_cv_.wait(lock, [&] { return shut_down_; });
    return;
  }
  shutting_down_ = true;
  auto each_model = [&](auto fn) {
    for (auto& [k, m] : models_) fn(*m);
    for (auto& m : unregistered_) fn(*m);
  };
  // Drain: let queued and running work finish, up to the timeout.
  auto busy = [&] {
    bool any = false;
    each_model([&](Model& m) { any = any || (m.live() > 0 && (m.metrics->in_flight.load() > 0 || m.count(kBusy) > 0)); });
    return any;
  };
  wait_exits(lock, deadline_after(drain_timeout_s), [&] { return !busy(); });
  // What is left gets ShuttingDown; running jobs are told to stop once their
  // outcome is recorded (so they end as ShuttingDown, never as Cancelled).
  Deferred deferred;
  std::vector<std::shared_ptr<Job>> running;
  const Error refused(ErrorCode::kShuttingDown, "pool shut down before the request finished");
  each_model([&](Model& m) {
    drain(m.queue, refused, deferred);
    for (auto& r : m.replicas) {
      std::lock_guard current_lock(r->current_mu);
      for (auto& job : r->current) {
        deferred.emplace_back(job, refused);
        running.push_back(job);
      }
    }
    retire_locked(m, m.live() - m.pills.load());
  });
  lock.unlock();
  fail_all(deferred);
  for (auto& job : running) job->context().request_cancel();
  running.clear();
  // Join every replica; a model that ignores cancellation is waited for, loudly.
  lock.lock();
  auto all_dead = [&] {
    bool dead = true;
    each_model([&](Model& m) { dead = dead && m.live() == 0; });
    return dead;
  };
  while (!wait_exits(lock, Clock::now() + std::chrono::seconds(10), all_dead)) {
    each_model([&](Model& m) {
      if (m.live() > 0)
        std::fprintf(stderr, "mpool: shutdown is waiting for model '%s' to stop (%d replica(s) busy)\n",
                     m.key.c_str(), m.live());
    });
  }
  reap_locked();
  lock.unlock();
  join_exited();
  {
    std::lock_guard m(maintenance_mu_);
    maintenance_stop_ = true;
  }
  maintenance_cv_.notify_all();
  if (maintenance_.joinable()) maintenance_.join();
  join_exited();  // anything the maintenance thread reaped last
  lock.lock();
  shut_down_ = true;
  exit_cv_.notify_all();
}

bool Pool::shutting_down() const {
  std::lock_guard lock(mu_);
  return shutting_down_;
}

// --- stats ---------------------------------------------------------------------

ModelStats Pool::stats_locked(const Model& m) const {
  ModelStats s;
  s.key = m.key;
  s.capabilities = m.spec.capabilities;
  s.devices = m.spec.devices;
  s.pinned = m.pinned;
  s.memory_mb = m.spec.memory_mb;
  s.keep_alive_s = keep_alive_of(m);
  s.idle_s = m.idle() ? seconds_since(m.last_used_ns.load()) : 0.0;
  s.max_replicas = m.spec.max_replicas;
  s.intra_op_threads = intra_op_threads_of(m);
  s.replicas = m.live();
  s.busy_replicas = m.count(kBusy);
  s.queued = m.queued();
  for (auto& r : m.replicas) {
    if (r->state.load() == kDead) continue;
    s.replica_threads.push_back(r->threads.load());
    std::lock_guard current(r->current_mu);
    if (r->state.load() == kBusy) s.running += r->current.size();
    if (r->instance)
      for (const auto& [name, value] : r->instance->usage()) s.usage[name] += value;
    s.replicas_per_device[r->device]++;
    s.reserved_mb_per_device[r->device] += r->mb;
  }
  int ready = m.count(kIdle) + m.count(kBusy);
  s.state = ready > 0 ? "ready" : (m.count(kLoading) > 0 ? "loading" : "unloaded");
  s.last_spawn_error = m.last_spawn_error;
  s.metrics = m.metrics->snapshot();
  return s;
}

ModelStats Pool::model_stats(const std::string& key) const {
  std::lock_guard lock(mu_);
  return stats_locked(*find_locked(key));
}

SplitHint Pool::split_hint(const std::string& key) const {
  std::lock_guard lock(mu_);
  const auto& model = *find_locked(key);
  return SplitHint{model.spec.batch_budget, std::max(0, model.serving())};
}

PoolStats Pool::stats() const {
  PoolStats out;
  {
    std::lock_guard lock(mu_);
    for (auto& [k, m] : models_) {
      out.models.push_back(stats_locked(*m));
      out.threads += m->replicas.size();
    }
    for (auto& m : unregistered_) out.threads += m->replicas.size();
    out.threads += exited_.size();
    out.threads += maintenance_.joinable() ? 1 : 0;
  }
  out.devices = governor_->snapshot();
  return out;
}

}  // namespace mpool::core
