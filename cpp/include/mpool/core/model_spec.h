#pragma once
// What the registry knows about a model: nothing but how to load it, where, and
// how much memory a replica takes.
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mpool/core/instance.h"

namespace mpool::core {

/// Creates one instance on one device ("cpu", "cuda:0", ...); runs on the replica's thread.
using Loader = std::function<std::shared_ptr<Instance>(const std::string& device)>;

/// A registered model.
struct ModelSpec {
  std::vector<std::string> capabilities;   ///< names the model serves, e.g. "text_embedding"
  Loader loader;                           ///< makes one instance
  double memory_mb = 0;                    ///< estimate per replica
  std::vector<std::string> devices{"cpu"}; ///< where replicas may live, in preference order
  int max_replicas = 4;
  /// Intra-op threads of each replica (how many cores one replica's compute may
  /// use); 0 = the pool's `PoolOptions::intra_op_threads`. The core only carries
  /// the number to the replica's thread (PoolOptions::replica_thread_setup).
  int intra_op_threads = 0;
  std::optional<double> keep_alive_s;      ///< idle unload delay; pool default if unset
  bool pinned = false;                     ///< never evicted automatically
  /// Cross-request batching: a free replica takes queued jobs of one batch key
  /// until their summed batch_cost() reaches this (0 = one job at a time).
  size_t batch_budget = 0;
  /// The model's own defaults for the settings of the requests it serves (an
  /// image model's "steps", "width", "height", "guidance_scale", "strength"), used
  /// where a request leaves one unset. Opaque to the pool: the API layer applies them.
  std::map<std::string, double> defaults;
};

}  // namespace mpool::core
