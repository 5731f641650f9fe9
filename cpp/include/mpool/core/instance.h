#pragma once
// A loaded model on one device, owned by exactly one replica thread. The pool
// knows nothing else about it; capability layers dynamic_cast to their interface.
#include <map>
#include <string>

namespace mpool::core {

/// Base of every loaded model instance.
class Instance {
 public:
  virtual ~Instance() = default;
  /// Named gauges of what the instance holds now (a batching decoder's cache
  /// blocks in use and free, say), summed over a model's replicas in stats().
  /// Called from other threads while the replica runs: it must only read
  /// atomics. The default reports none.
  virtual std::map<std::string, double> usage() const { return {}; }
};

}  // namespace mpool::core
