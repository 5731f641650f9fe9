#pragma once
// The pool: a registry of models, each with one bounded job queue that its
// replicas (worker threads owning a loaded instance) pull from; a memory governor
// that admits, evicts and refuses; and a maintenance thread. It moves jobs and
// memory and never looks inside them.
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "mpool/core/job.h"
#include "mpool/core/memory.h"
#include "mpool/core/metrics.h"
#include "mpool/core/model_spec.h"
#include "mpool/core/pending.h"

namespace mpool::core {

/// Pool-wide settings.
struct PoolOptions {
  GovernorOptions memory;                 ///< budgets per device
  std::shared_ptr<MemoryProbe> probe;     ///< null: the system probe
  double request_timeout_s = 30;          ///< default per request (queue + compute)
  double keep_alive_s = 300;              ///< default idle unload delay; 0 = at once, <0 = never
  size_t max_queue = 1024;                ///< queued jobs per model before Overloaded
  int cold_start_replicas = 2;            ///< replicas on first request, when memory admits them
  double scale_up_queue_depth = 2;        ///< queued jobs per replica that asks for another
  double scale_up_after_s = 0.05;         ///< ... sustained this long
  double scale_down_after_s = 60;         ///< an extra replica idle this long retires
  double maintenance_interval_s = 0.25;   ///< maintenance tick
  /// Intra-op threads per replica of a model that sets none; 0 = the core share:
  /// each job runs on max(1, available_cpus() / the pool's replicas in a job as it
  /// starts, this one included), so replicas busy at once never ask for more
  /// threads than the cores, and a replica busy alone uses them all.
  int intra_op_threads = 0;
  /// Runs on the replica's thread with its intra-op thread count: before the
  /// loader, and before a job whose count differs from the last one set (the
  /// bindings set the thread's torch count here). A throw before the loader is
  /// the replica's load error. Empty: nothing is set.
  std::function<void(int threads)> replica_thread_setup;
};

/// The CPUs this process may run on (its affinity mask; hardware_concurrency
/// where that cannot be read), at least 1.
int available_cpus() noexcept;

/// The most intra-op threads a pool or model may ask for.
inline constexpr int kMaxIntraOpThreads = 1024;

/// Per-request settings.
struct RequestOptions {
  std::optional<double> timeout_s;  ///< overrides the pool's request_timeout_s
};

/// A model's state as seen from outside.
struct ModelStats {
  std::string key;
  std::vector<std::string> capabilities;
  std::vector<std::string> devices;
  std::string state;  ///< "unloaded", "loading" or "ready"
  bool pinned = false;
  double memory_mb = 0;      ///< estimate per replica
  double keep_alive_s = 0;   ///< effective
  double idle_s = 0;         ///< since the last request arrived, while none is in flight (else 0)
  int max_replicas = 0;
  int intra_op_threads = 0;  ///< fixed count per replica (the model's or the pool's); 0 = the core share per job
  std::vector<int> replica_threads;  ///< each live replica's count as last set (0: none yet)
  int replicas = 0;          ///< live (loading or ready)
  int busy_replicas = 0;
  size_t queued = 0;
  /// Requests on busy replicas now: a replica batching continuously counts each
  /// of its sequences (and a job it popped to run next).
  size_t running = 0;
  /// The loaded replicas' Instance::usage() gauges, summed.
  std::map<std::string, double> usage;
  std::map<std::string, int> replicas_per_device;
  std::map<std::string, double> reserved_mb_per_device;
  std::string last_spawn_error;
  MetricsSnapshot metrics;
};

/// What a caller that splits a large request into parts (capabilities' bulk
/// embedding) reads of a model: its batch budget and its replicas serving now
/// (live and not retiring; 0 while unloaded).
struct SplitHint {
  size_t batch_budget = 0;
  int replicas = 0;
};

/// Everything stats() reports.
struct PoolStats {
  std::vector<ModelStats> models;
  std::vector<DeviceMemory> devices;
  size_t threads = 0;  ///< replica threads not yet joined, plus maintenance
};

/// The pool of models.
class Pool {
 public:
  explicit Pool(PoolOptions options = {});
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  /// Registers a model under `key`; nothing loads until its first request.
  void register_model(const std::string& key, ModelSpec spec);
  /// Unloads (if loaded) and forgets a model.
  void unregister_model(const std::string& key, double timeout_s = 30);
  /// True if `key` is registered.
  bool has_model(const std::string& key) const;

  /// Queues a job for `key`, which must serve `capability` (empty: any job the
  /// model's replicas can run, such as load()'s). Loads the model on
  /// first use. Throws ModelNotFound, InvalidInput, MemoryExhausted, Overloaded or
  /// ShuttingDown; every other outcome reaches the job.
  void submit(const std::string& key, const std::string& capability, std::shared_ptr<Job> job);
  /// A fresh request context for `key` with the effective deadline.
  std::shared_ptr<RequestContext> make_context(const std::string& key, const RequestOptions& options);

  /// Loads `key` now (a cold start if it has no replica) and returns once a replica
  /// is serving: a request that does nothing, queued like any other and bounded by
  /// `options`' deadline. Throws what a request would: ModelNotFound, SpawnFailed,
  /// MemoryExhausted, Overloaded, Timeout, ShuttingDown.
  void load(const std::string& key, const RequestOptions& options = {});
  /// `load` without waiting: the pending request (true once a replica served it).
  /// Cancelling it cancels the request; replicas already loading finish loading.
  std::shared_ptr<Pending<bool>> load_async(const std::string& key, const RequestOptions& options = {});

  /// Retires every replica of `key` once its queued work is done; returns when they
  /// are gone or after `timeout_s` (false then).
  bool unload(const std::string& key, double timeout_s = 30);
  /// Pins or unpins: pinned models are never evicted automatically.
  void set_pinned(const std::string& key, bool pinned);
  /// Overrides a model's keep-alive (seconds; 0 = at once; <0 = never).
  void set_keep_alive(const std::string& key, double keep_alive_s);

  /// Sets a device's memory budget in MB (nullopt: back to memory_fraction of
  /// its total). Lowering it below what is committed makes the device's pressure
  /// critical: maintenance then evicts idle replicas, and new loads wait or fail.
  /// A device that is malformed or not present is an InvalidInput.
  void set_memory_budget(const std::string& device, std::optional<double> mb);

  /// Snapshot of all models and devices.
  PoolStats stats() const;
  /// Snapshot of one model.
  ModelStats model_stats(const std::string& key) const;
  /// `key`'s batch budget and serving replicas (cheap: no metrics snapshot).
  SplitHint split_hint(const std::string& key) const;

  /// Stops accepting, drains for up to `drain_timeout_s` (inf: until done),
  /// cancels what is left, joins every thread, releases every reservation.
  /// Idempotent; a concurrent call returns once the first one finished. Throws
  /// InvalidInput on one of the pool's own threads (it would wait for itself).
  void shutdown(double drain_timeout_s = 5);
  /// True on one of this pool's replica threads or its maintenance thread (where
  /// done-callbacks and model code run): shutdown() and destruction must not
  /// happen there.
  bool on_own_thread() const noexcept;
  /// True once shutdown began.
  bool shutting_down() const;

  /// The governor (for inspection and tests).
  MemoryGovernor& governor() { return *governor_; }

 private:
  struct Replica;
  struct Model;

  using Lock = std::unique_lock<std::mutex>;

  std::shared_ptr<Model> find_locked(const std::string& key) const;
  bool spawn_locked(Lock& lock, const std::shared_ptr<Model>& model, int count, bool allow_evict,
                    Clock::time_point deadline);
  void spawn_replica_locked(const std::shared_ptr<Model>& model, Reservation reservation);
  // Evicts one idle victim on `device` (waiting, lock released, until its memory is
  // back). False when none is idle; `finishing` is then set if a model with no
  // request in flight still has a replica in a job (it will be idle soon).
  bool evict_one_locked(Lock& lock, const std::string& device, const Model* protect, Clock::time_point deadline,
                        bool* finishing = nullptr);
  void retire_locked(Model& model, int count);
  void reap_locked();
  void join_exited();
  void maybe_scale_up_locked(Lock& lock, const std::shared_ptr<Model>& model);
  void maintenance_loop();
  void maintain_locked(Lock& lock);
  void worker_main(std::shared_ptr<Model> model, std::shared_ptr<Replica> replica, Reservation reservation);
  void serve(Model& model, Replica& replica, Instance& instance);
  // Runs the thread-setup hook when a job's share (with `busy` replicas in jobs) differs from the last.
  void set_job_threads(const Model& model, Replica& replica, int busy);
  // Runs `first` as a continuous batch (Job::run_continuous); a job of another
  // kind it pops lands in `carry`, a retire pill sets `retire`.
  void run_continuous_batch(Model& model, Replica& replica, Instance& instance, std::shared_ptr<Job> first,
                            std::shared_ptr<Job>& carry, bool& retire);
  template <class Pred>
  bool wait_exits(Lock& lock, Clock::time_point until, Pred pred);
  double keep_alive_of(const Model& model) const;
  int intra_op_threads_of(const Model& model) const;
  int threads_for_job(const Model& model, int busy) const;
  ModelStats stats_locked(const Model& model) const;
  void wake_maintenance();

  PoolOptions options_;
  std::shared_ptr<MemoryGovernor> governor_;
  mutable std::mutex mu_;                 // registry, replica lists, lifecycle
  std::condition_variable exit_cv_;       // a replica exited (with mu_)
  std::map<std::string, std::shared_ptr<Model>> models_;
  std::vector<std::shared_ptr<Model>> unregistered_;  // removed, replicas still exiting (mu_)
  std::vector<std::thread> exited_;  // threads of dead replicas, joined outside mu_ (mu_)
  // Unregistered models whose replicas are all gone, released by join_exited
  // outside mu_: a model's last reference may hold Python objects (a PyModel's
  // loader), and releasing those runs arbitrary Python code, which may call the
  // pool (mu_)
  std::vector<std::shared_ptr<Model>> graveyard_;
  bool shutting_down_ = false;
  bool shut_down_ = false;
  const int cpus_ = available_cpus();
  std::atomic<int> busy_replicas_{0};  // replicas of every model inside a job now
  uint64_t next_replica_id_ = 1;

  std::mutex maintenance_mu_;
  std::condition_variable maintenance_cv_;
  bool maintenance_wake_ = false;
  bool maintenance_stop_ = false;
  std::thread maintenance_;
};

}  // namespace mpool::core
