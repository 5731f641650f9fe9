#pragma once
// Probes: named functions that run one block or one model on given tensors, for
// the tests that compare them with their torch/transformers/diffusers
// counterparts. The bindings expose one generic entry point (mpool.testing.probe)
// instead of a hook per family; blocks and families register their own.
#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpool/nn/weights.h"

namespace mpool::nn {

/// A probe's arguments: settings (numbers, strings, lists, a model path, a config
/// object) and named input tensors.
struct ProbeInput {
  nlohmann::json options = nlohmann::json::object();
  std::map<std::string, at::Tensor> tensors;

  /// The tensor `name`; InvalidInput names the probe argument when it is missing.
  const at::Tensor& tensor(const std::string& name) const;
  /// The tensor `name`, or an undefined tensor when it was not given.
  at::Tensor optional_tensor(const std::string& name) const;
  /// The float32 CPU view of the safetensors file in option "checkpoint", under
  /// option "prefix" (blocks with weights read them from a file the test wrote).
  Weights weights() const;
  /// The option `name` as T; InvalidInput when it is missing or of another type.
  template <class T>
  T get(const std::string& name) const {
    require(name);
    try {
      return options.at(name).get<T>();
    } catch (const nlohmann::json::exception&) {
      wrong_type(name);
    }
  }
  /// The option `name` as T, or `fallback` when absent.
  template <class T>
  T get_or(const std::string& name, T fallback) const {
    return options.contains(name) ? get<T>(name) : fallback;
  }

 private:
  void require(const std::string& name) const;
  [[noreturn]] void wrong_type(const std::string& name) const;
};

using ProbeOutput = std::map<std::string, at::Tensor>;
using ProbeFn = std::function<ProbeOutput(const ProbeInput&)>;

/// Adds a probe; InvalidInput when the name is taken.
void register_probe(const std::string& name, ProbeFn fn);
/// Runs a probe; InvalidInput for an unknown name lists the known ones.
ProbeOutput run_probe(const std::string& name, const ProbeInput& input);
/// Every registered name, sorted.
std::vector<std::string> probe_names();

/// Registers the probes of the nn blocks (idempotent).
void register_block_probes();
/// The position and convolution blocks' part of it (block_probes_positions_conv.cpp).
void register_position_and_conv_probes();

}  // namespace mpool::nn
