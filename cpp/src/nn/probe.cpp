#include "mpool/nn/probe.h"

#include <mutex>

#include "mpool/base/error.h"

namespace mpool::nn {
namespace {

struct Registry {
  std::mutex mutex;
  std::map<std::string, ProbeFn> probes;
};

Registry& registry() {
  static Registry r;
  return r;
}

}  // namespace

const at::Tensor& ProbeInput::tensor(const std::string& name) const {
  auto it = tensors.find(name);
  check(it != tensors.end(), ErrorCode::kInvalidInput, "probe input tensor '" + name + "' is missing");
  return it->second;
}

at::Tensor ProbeInput::optional_tensor(const std::string& name) const {
  auto it = tensors.find(name);
  return it == tensors.end() ? at::Tensor() : it->second;
}

Weights ProbeInput::weights() const {
  check(get_or<std::string>("dtype", "float32") == "float32", ErrorCode::kInvalidInput, "block probes run in float32");
  return Weights::open(loading::Checkpoint::open(get<std::string>("checkpoint")), at::kFloat, at::kCPU)
      .sub(get_or<std::string>("prefix", ""));
}

void ProbeInput::require(const std::string& name) const {
  check(options.is_object() && options.contains(name), ErrorCode::kInvalidInput,
        "probe option '" + name + "' is missing");
}

void ProbeInput::wrong_type(const std::string& name) const {
  throw Error(ErrorCode::kInvalidInput, "probe option '" + name + "' has the wrong type: " + options.at(name).dump());
}

void register_probe(const std::string& name, ProbeFn fn) {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  check(!r.probes.count(name), ErrorCode::kInvalidInput, "probe '" + name + "' is already registered");
  r.probes.emplace(name, std::move(fn));
}

ProbeOutput run_probe(const std::string& name, const ProbeInput& input) {
  ProbeFn fn;
  {
    auto& r = registry();
    std::lock_guard lock(r.mutex);
    auto it = r.probes.find(name);
    if (it == r.probes.end()) {
      std::string known;
      for (const auto& [n, _] : r.probes) known += (known.empty() ? "" : ", ") + n;
      throw Error(ErrorCode::kInvalidInput, "no probe named '" + name + "' (known: " + known + ")");
    }
    fn = it->second;
  }
  return fn(input);
}

std::vector<std::string> probe_names() {
  auto& r = registry();
  std::lock_guard lock(r.mutex);
  std::vector<std::string> out;
  for (const auto& [n, _] : r.probes) out.push_back(n);
  return out;
}

}  // namespace mpool::nn
