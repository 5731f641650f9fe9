#pragma once
// A loaded model on one device, owned by exactly one replica thread. The pool
// knows nothing else about it; capability layers dynamic_cast to their interface.
namespace mpool::core {

/// Base of every loaded model instance.
class Instance {
 public:
  virtual ~Instance() = default;
};

}  // namespace mpool::core
