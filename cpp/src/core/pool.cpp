#include "mpool/core/pool.h"
#include "mpool/core/spin.h"

#include <tbb/concurrent_queue.h>

#include <algorithm>
#include <cstdio>
#include <sstream>

namespace mpool::core {
namespace {

enum ReplicaState : int { kLoading, kIdle, kBusy, kDead };

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

// Empties `queue`, keeping its retire pills counted right, and sets every job
// aside to fail with `error` once the pool lock is released.
template <class Queue>
void drain(Queue& queue, std::atomic<int>& pills, const Error& error, Deferred& deferred) {
  std::shared_ptr<Job> job;
  while (queue.try_pop(job)) {
    if (!job) {
      pills--;
      continue;
    }
    deferred.emplace_back(std::move(job), error);
  }
}

}  // namespace

struct Pool::Replica {
  uint64_t id = 0;
  std::string device;
  double mb = 0;
  std::thread thread;
  std::atomic<int> state{kLoading};
  std::atomic<int64_t> last_active_ns{now_ns()};
  std::mutex current_mu;
  std::vector<std::shared_ptr<Job>> current;  // the jobs running now, for shutdown
};

struct Pool::Model {
  std::string key;
  ModelSpec spec;
  bool pinned = false;
  std::atomic<double> keep_alive_s{0};  // effective: the spec's or the pool default
  tbb::concurrent_bounded_queue<std::shared_ptr<Job>> queue;  // nullptr = retire one replica
  std::vector<std::shared_ptr<Replica>> replicas;             // until reaped (mu_)
  std::atomic<int> pills{0};                                  // retire pills still queued
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
    auto size = static_cast<long>(queue.size()) - pills.load();
    return size > 0 ? static_cast<size_t>(size) : 0;
  }
};

Pool::Pool(PoolOptions options)
    : options_(std::move(options)),
      governor_(std::make_shared<MemoryGovernor>(options_.probe, options_.memory)) {
  check(options_.request_timeout_s > 0, ErrorCode::kInvalidInput,
        "request_timeout must be > 0 seconds, got " + std::to_string(options_.request_timeout_s));
  check(options_.max_queue > 0, ErrorCode::kInvalidInput, "max_queue must be > 0");
  check(options_.cold_start_replicas >= 1, ErrorCode::kInvalidInput, "cold_start_replicas must be >= 1");
  check(options_.maintenance_interval_s > 0, ErrorCode::kInvalidInput, "maintenance_interval must be > 0");
  maintenance_ = std::thread([this] { maintenance_loop(); });
}

Pool::~Pool() { shutdown(); }

// --- registry ------------------------------------------------------------------

void Pool::register_model(const std::string& key, ModelSpec spec) {
  check(!key.empty(), ErrorCode::kInvalidInput, "model key must not be empty");
  check(static_cast<bool>(spec.loader), ErrorCode::kInvalidInput, "model '" + key + "' has no loader");
  check(!spec.capabilities.empty(), ErrorCode::kInvalidInput, "model '" + key + "' declares no capability");
  check(spec.memory_mb >= 0, ErrorCode::kInvalidInput,
        "model '" + key + "': memory_mb must be >= 0, got " + std::to_string(spec.memory_mb));
  check(spec.max_replicas >= 1, ErrorCode::kInvalidInput,
        "model '" + key + "': max_replicas must be >= 1, got " + std::to_string(spec.max_replicas));
  check(!spec.devices.empty(), ErrorCode::kInvalidInput, "model '" + key + "' lists no device");
  for (auto& d : spec.devices) {
    bool ok = d == "cpu" || (d.rfind("cuda:", 0) == 0 && d.size() > 5 &&
                             d.find_first_not_of("0123456789", 5) == std::string::npos);
    check(ok, ErrorCode::kInvalidInput,
          "model '" + key + "': device '" + d + "' is not \"cpu\" or \"cuda:N\"");
  }
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
  unload(key, timeout_s);
  Deferred deferred;
  {
    std::lock_guard lock(mu_);
    auto model = find_locked(key);
    drain(model->queue, model->pills, Error(ErrorCode::kModelNotFound, "model '" + key + "' was unregistered"),
          deferred);
    models_.erase(key);
  }
  fail_all(deferred);
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
  check(timeout > 0, ErrorCode::kInvalidInput, "timeout must be > 0 seconds, got " + std::to_string(timeout));
  std::shared_ptr<ModelMetrics> metrics;
  {
    std::lock_guard lock(mu_);
    metrics = find_locked(key)->metrics;
  }
  auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout));
  return std::make_shared<RequestContext>(deadline, std::move(metrics));
}

// --- requests ------------------------------------------------------------------

void Pool::submit(const std::string& key, const std::string& capability, std::shared_ptr<Job> job) {
  check(job != nullptr, ErrorCode::kInternal, "submit() got no job");
  Deferred deferred;
  std::unique_lock lock(mu_);
  check(!shutting_down_, ErrorCode::kShuttingDown, "pool is shutting down; request for '" + key + "' refused");
  auto model = find_locked(key);
  auto& caps = model->spec.capabilities;
  check(std::find(caps.begin(), caps.end(), capability) != caps.end(), ErrorCode::kInvalidInput,
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
    try {
      spawn_locked(lock, model, std::min(options_.cold_start_replicas, model->spec.max_replicas), /*allow_evict=*/true);
    } catch (const Error& e) {
      model->starting = false;
      model->metrics->errors++;
      // Requests that queued behind this cold start share its fate.
      drain(model->queue, model->pills, e, deferred);
      lock.unlock();
      fail_all(deferred);
      throw;
    }
    model->starting = false;
  }
  model->last_used_ns = now_ns();
  auto context = job->context_ptr();
  context->mark_accepted();  // before the push: a replica may settle it at once
  if (!model->queue.try_push(std::move(job))) {  // capacity has headroom; this is a bug guard
    context->settle(Outcome::kFailed);
    throw Error(ErrorCode::kOverloaded, "model '" + key + "' queue is full");
  }
  maybe_scale_up_locked(lock, model);
}

// --- replicas ------------------------------------------------------------------

bool Pool::spawn_locked(Lock& lock, const std::shared_ptr<Model>& model, int count, bool allow_evict) {
  check(!shutting_down_, ErrorCode::kShuttingDown, "pool is shutting down; '" + model->key + "' not loaded");
  const double est = model->spec.memory_mb;
  for (int n = count; n >= 1; --n) {
    for (auto& device : model->spec.devices) {
      if (auto r = governor_->try_reserve(device, n * est)) {
        for (int i = 0; i < n; ++i) spawn_replica_locked(model, r->split(est));
        return true;
      }
    }
  }
  if (!allow_evict) return false;
  // Nothing fits: evict idle, unpinned memory (least recently used first) until one replica does.
  for (auto& device : model->spec.devices) {
    if (!governor_->has_device(device)) continue;
    while (true) {
      if (auto r = governor_->try_reserve(device, est)) {
        spawn_replica_locked(model, std::move(*r));
        return true;
      }
      if (!evict_one_locked(lock, device, model.get())) break;
      check(!shutting_down_, ErrorCode::kShuttingDown, "pool is shutting down; '" + model->key + "' not loaded");
    }
  }
  // Replicas already retiring (keep-alive, unload) will hand their memory back soon.
  auto retiring = [&] {
    for (auto& [k, m] : models_)
      if (m->pills.load() > 0) return true;
    return false;
  };
  auto give_up = Clock::now() + std::chrono::seconds(30);
  while (retiring() && Clock::now() < give_up && !shutting_down_) {
    exit_cv_.wait_for(lock, std::chrono::milliseconds(50));
    reap_locked();
    for (auto& device : model->spec.devices) {
      if (auto r = governor_->try_reserve(device, est)) {
        spawn_replica_locked(model, std::move(*r));
        return true;
      }
    }
  }
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
  auto replica = std::make_shared<Replica>();
  replica->id = next_replica_id_++;
  replica->device = reservation.device();
  replica->mb = reservation.mb();
  model->replicas.push_back(replica);
  model->scale_pressure_since = {};
  replica->thread = std::thread([this, model, replica, r = std::move(reservation)]() mutable {
    worker_main(model, replica, std::move(r));
  });
}

void Pool::retire_locked(Model& model, int count) {
  for (int i = 0; i < count; ++i) {
    model.pills++;
    model.queue.push(nullptr);  // capacity keeps room for pills
  }
}

bool Pool::evict_one_locked(Lock& lock, const std::string& device, const Model* protect) {
  // Idle extra replicas go first, then whole idle models; least recently used first.
  std::shared_ptr<Model> victim;
  int count = 0;
  for (int pass = 0; pass < 2 && !victim; ++pass) {
    for (auto& [key, m] : models_) {
      if (m.get() == protect || m->pinned || m->starting || m->metrics->in_flight.load() != 0) continue;
      int serving = m->serving();
      bool on_device = std::any_of(m->replicas.begin(), m->replicas.end(), [&](auto& r) {
        // in_flight == 0 already says no request is running; a replica may still be
        // flagged busy for the instant after it delivered its last result, or still
        // loading (it takes its retire pill once loaded).
        return r->device == device && r->state.load() != kDead;
      });
      if (!on_device) continue;
      if (pass == 0 && serving <= 1) continue;
      if (pass == 1 && serving < 1) continue;
      if (!victim || m->last_used_ns.load() < victim->last_used_ns.load()) {
        victim = m;
        count = pass == 0 ? 1 : serving;
      }
    }
  }
  if (!victim) return false;
  int target = victim->dead + count;
  retire_locked(*victim, count);
  victim->metrics->replicas_evicted += count;
  // Wait (lock released) until the memory is actually back.
  exit_cv_.wait_for(lock, std::chrono::seconds(60), [&] { return victim->dead >= target; });
  reap_locked();
  return true;
}

void Pool::reap_locked() {
  for (auto& [key, m] : models_) {
    auto& rs = m->replicas;
    for (auto it = rs.begin(); it != rs.end();) {
      if ((*it)->state.load() == kDead) {
        if ((*it)->thread.joinable()) (*it)->thread.join();  // it has left the pool's code
        it = rs.erase(it);
      } else {
        ++it;
      }
    }
  }
}

void Pool::maybe_scale_up_locked(Lock& lock, const std::shared_ptr<Model>& model) {
  int serving = model->serving();
  bool wants = serving > 0 && serving < model->spec.max_replicas && model->count(kLoading) == 0 &&
               static_cast<double>(model->queued()) > options_.scale_up_queue_depth * serving;
  if (!wants || shutting_down_) {
    model->scale_pressure_since = {};
    return;
  }
  auto now = Clock::now();
  if (model->scale_pressure_since == Clock::time_point{}) model->scale_pressure_since = now;
  std::chrono::duration<double> held = now - model->scale_pressure_since;
  if (held.count() < options_.scale_up_after_s) return;
  // Growth never evicts: only spare memory buys an extra replica.
  spawn_locked(lock, model, 1, /*allow_evict=*/false);
  model->scale_pressure_since = {};
}

void Pool::worker_main(std::shared_ptr<Model> model, std::shared_ptr<Replica> replica, Reservation reservation) {
  std::shared_ptr<Instance> instance;
  std::string load_error;
  try {
    instance = model->spec.loader(replica->device);
    if (!instance) load_error = "the loader returned no instance";
  } catch (const std::exception& e) {
    load_error = e.what();
  } catch (...) {
    load_error = "the loader threw a non-standard exception";
  }

  if (instance) {
    model->metrics->replicas_spawned++;
    replica->last_active_ns = now_ns();
    replica->state = kIdle;
    std::shared_ptr<Job> carry;  // popped while batching but not taken: runs next
    bool retire = false;
    while (!retire) {
      std::shared_ptr<Job> job = std::move(carry);
      // Poll briefly (a busy model's next job is usually right behind), then sleep.
      if (!job && !spin_until([&] { return model->queue.try_pop(job); })) model->queue.pop(job);
      if (!job) {
        model->pills--;
        break;
      }
      if (job->context().should_stop()) {  // expired or cancelled while queued
        job->fail(job->context().stop_error());
        continue;
      }
      std::vector<std::shared_ptr<Job>> batch{job};
      const size_t budget = model->spec.batch_budget;
      if (budget > 0 && !job->batch_key().empty()) {
        // No timer: the batch is whatever of the same kind is queued right now.
        size_t total = job->batch_cost();
        std::shared_ptr<Job> next;
        while (total < budget && model->queue.try_pop(next)) {
          if (!next) {  // a retire pill: finish this batch, then go
            model->pills--;
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
      replica->state = kBusy;
      {
        std::lock_guard lock(replica->current_mu);
        replica->current = batch;
      }
      auto start = Clock::now();
      for (auto& j : batch)
        model->metrics->queue.add(std::chrono::duration<double, std::milli>(start - j->context().created()).count());
      if (batch.size() == 1) {
        run_isolated(*job, *instance, model->key);
      } else {
        try {
          job->run_batch(*instance, batch);
        } catch (const Error& e) {
          for (auto& j : batch) j->fail(e);
        } catch (const std::exception& e) {
          for (auto& j : batch) j->fail(Error(ErrorCode::kModelError, "model '" + model->key + "' failed: " + e.what()));
        } catch (...) {
          for (auto& j : batch)
            j->fail(Error(ErrorCode::kModelError, "model '" + model->key + "' threw a non-standard exception"));
        }
      }
      double compute_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
      for (size_t i = 0; i < batch.size(); ++i) model->metrics->compute.add(compute_ms);
      {
        std::lock_guard lock(replica->current_mu);
        replica->current.clear();
      }
      job.reset();
      batch.clear();
      replica->last_active_ns = now_ns();
      model->last_used_ns = now_ns();
      replica->state = kIdle;
      // keep_alive == 0 unloads right after the last request, not at the next tick.
      if (model->metrics->in_flight.load() == 0 && model->keep_alive_s.load() == 0)
        wake_maintenance();
    }
    instance.reset();  // the model's memory goes back before the reservation does
  }
  reservation.release();

  Deferred deferred;
  {
    std::lock_guard lock(mu_);
    if (!instance && !load_error.empty()) {
      model->metrics->spawn_failures++;
      model->last_spawn_error = load_error;
    }
    replica->state = kDead;
    model->dead++;
    // A failed load with nobody else left to serve: the waiting requests fail now.
    if (!load_error.empty() && model->serving() <= 0 && !model->starting)
      drain(model->queue, model->pills,
            Error(ErrorCode::kSpawnFailed,
                  "model '" + model->key + "' failed to load on " + replica->device + ": " + load_error),
            deferred);
  }
  exit_cv_.notify_all();
  fail_all(deferred);
  wake_maintenance();
}

// --- lifecycle -----------------------------------------------------------------

double Pool::keep_alive_of(const Model& model) const {
  return model.keep_alive_s.load();
}

bool Pool::unload(const std::string& key, double timeout_s) {
  Lock lock(mu_);
  auto model = find_locked(key);
  int count = model->serving();
  if (count <= 0) return true;
  int target = model->dead + count;
  retire_locked(*model, count);  // behind queued work, which finishes first
  bool done = exit_cv_.wait_for(lock, std::chrono::duration<double>(timeout_s),
                                [&] { return model->dead >= target; });
  reap_locked();
  return done;
}

void Pool::set_pinned(const std::string& key, bool pinned) {
  std::lock_guard lock(mu_);
  find_locked(key)->pinned = pinned;
}

void Pool::set_keep_alive(const std::string& key, double keep_alive_s) {
  {
    std::lock_guard lock(mu_);
    find_locked(key)->keep_alive_s = keep_alive_s;
  }
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
  auto interval = std::chrono::duration<double>(options_.maintenance_interval_s);
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
  }
}

void Pool::maintain_locked(Lock& lock) {
  reap_locked();
  governor_->refresh();
  Deferred deferred;
  std::vector<std::shared_ptr<Model>> models;
  for (auto& [key, m] : models_) models.push_back(m);
  for (auto& m : models) {
    int serving = m->serving();
    // Requests queued with nobody to serve them (a failed load, or an eviction race).
    if (serving <= 0 && m->queued() > 0 && !m->starting) {
      if (!m->last_spawn_error.empty() && m->count(kLoading) == 0) {
        drain(m->queue, m->pills,
              Error(ErrorCode::kSpawnFailed, "model '" + m->key + "' failed to load: " + m->last_spawn_error),
              deferred);
      } else if (m->count(kLoading) == 0) {
        m->starting = true;
        try {
          spawn_locked(lock, m, 1, /*allow_evict=*/true);
        } catch (const Error& e) {
          drain(m->queue, m->pills, e, deferred);
        }
        m->starting = false;
      }
      continue;
    }
    if (serving <= 0) continue;
    bool idle = m->metrics->in_flight.load() == 0;
    double keep_alive = keep_alive_of(*m);
    if (idle && !m->pinned && keep_alive >= 0 && seconds_since(m->last_used_ns.load()) >= keep_alive) {
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
    maybe_scale_up_locked(lock, m);
  }
  // Critical pressure: evict idle memory, least recently used first, until it eases.
  for (auto& d : governor_->snapshot()) {
    auto reading = governor_->device(d.device);
    while (reading && reading->pressure == Pressure::kCritical && !shutting_down_) {
      if (!evict_one_locked(lock, d.device, nullptr)) break;
      reading = governor_->device(d.device);
    }
  }
  lock.unlock();
  fail_all(deferred);
  lock.lock();
}

void Pool::shutdown(double drain_timeout_s) {
  Lock lock(mu_);
  if (shutting_down_) {
    exit_cv_.wait(lock, [&] { return shut_down_; });
    return;
  }
  shutting_down_ = true;
  // Drain: let queued and running work finish, up to the timeout.
  auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(drain_timeout_s));
  auto busy = [&] {
    for (auto& [k, m] : models_)
      if (m->metrics->in_flight.load() > 0 && m->live() > 0) return true;
    return false;
  };
  while (busy() && Clock::now() < until) exit_cv_.wait_for(lock, std::chrono::milliseconds(5));
  // What is left gets ShuttingDown; running jobs are told to stop.
  Deferred deferred;
  const Error refused(ErrorCode::kShuttingDown, "pool shut down before the request finished");
  for (auto& [k, m] : models_) {
    drain(m->queue, m->pills, refused, deferred);
    for (auto& r : m->replicas) {
      std::lock_guard current_lock(r->current_mu);
      for (auto& job : r->current) {
        deferred.emplace_back(job, refused);
        job->context().request_cancel();
      }
    }
    retire_locked(*m, m->live() - m->pills.load());
  }
  lock.unlock();
  fail_all(deferred);
  // Join every replica; a model that ignores cancellation is waited for, loudly.
  lock.lock();
  auto all_dead = [&] {
    for (auto& [k, m] : models_)
      if (m->live() > 0) return false;
    return true;
  };
  while (!exit_cv_.wait_for(lock, std::chrono::seconds(10), all_dead)) {
    for (auto& [k, m] : models_)
      if (m->live() > 0)
        std::fprintf(stderr, "mpool: shutdown is waiting for model '%s' to stop (%d replica(s) busy)\n",
                     k.c_str(), m->live());
  }
  reap_locked();
  lock.unlock();
  {
    std::lock_guard m(maintenance_mu_);
    maintenance_stop_ = true;
  }
  maintenance_cv_.notify_all();
  if (maintenance_.joinable()) maintenance_.join();
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
  s.max_replicas = m.spec.max_replicas;
  s.replicas = m.live();
  s.busy_replicas = m.count(kBusy);
  s.queued = m.queued();
  for (auto& r : m.replicas) {
    if (r->state.load() == kDead) continue;
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

PoolStats Pool::stats() const {
  PoolStats out;
  {
    std::lock_guard lock(mu_);
    for (auto& [k, m] : models_) {
      out.models.push_back(stats_locked(*m));
      out.threads += m->replicas.size();
    }
    out.threads += maintenance_.joinable() ? 1 : 0;
  }
  out.devices = governor_->snapshot();
  return out;
}

}  // namespace mpool::core
