// Native test models for mpool.testing: like torch.testing, small and real. They
// exercise the pool without Python in the replica loop.
#include <ATen/ATen.h>

#include <pybind11/stl.h>

#include <thread>

#include "module.h"
#include "mpool/capabilities/interfaces.h"
#include "mpool/core/faults.h"
#include "mpool/core/model_spec.h"
#include "mpool/nn/stop.h"

namespace mpool::bindings {
namespace {

namespace py = pybind11;
namespace cap = capabilities;

// Embeds every text as a row of zeros after an optional (cancellable) sleep; counts
// to `tokens` when asked to generate.
class NativeTestModel final : public core::Instance, public cap::TextEmbedding, public cap::TextToText {
 public:
  NativeTestModel(int64_t dimension, double sleep_s) : dimension_(dimension), sleep_s_(sleep_s) {}

  at::Tensor embed(const std::vector<std::string>& texts, const cap::EmbedOptions&,
                   cap::RequestContext& ctx) override {
    if (sleep_s_ > 0) {
      auto until = core::Clock::now() + std::chrono::duration_cast<core::Clock::duration>(
                                            std::chrono::duration<double>(sleep_s_));
      while (core::Clock::now() < until) {
        ctx.throw_if_stopped();
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
    return at::zeros({static_cast<int64_t>(texts.size()), dimension_}, at::kFloat);
  }
  int64_t dimension() const override { return dimension_; }

  cap::Completion generate(const std::variant<std::string, std::vector<int64_t>>&, const cap::GenerationParams& params,
                           const cap::TextSink& sink, cap::RequestContext& ctx) override {
    for (int64_t i = 0; i < params.max_tokens; ++i) {
      if (ctx.should_stop()) break;
      if (sleep_s_ > 0) std::this_thread::sleep_for(std::chrono::duration<double>(sleep_s_));
      if (!sink(cap::TextPiece{std::to_string(i) + " ", {i}, {}})) break;
    }
    return cap::Completion{"length", 1, std::nullopt};
  }

 private:
  int64_t dimension_;
  double sleep_s_;
};

}  // namespace

core::faults::Fault fault_named(const std::string& name) {
  if (auto f = core::faults::fault_from_name(name)) return *f;
  std::string known;
  for (int i = 0; i < core::faults::kFaultKinds; ++i)
    known += std::string(i ? ", " : "") + core::faults::fault_name(static_cast<core::faults::Fault>(i));
  throw Error(ErrorCode::kInvalidInput, "unknown fault '" + name + "'; known: " + known);
}

void register_testing(py::module_& m) {
  m.def(
      "inject_fault",
      [](const std::string& name, int count, const std::string& key, double seconds) {
        core::faults::arm(fault_named(name), count, key, seconds);
      },
      py::arg("name"), py::arg("count"), py::arg("key"), py::arg("seconds"));
  m.def("clear_faults", &core::faults::disarm_all);
  m.def("layer_boundaries", &nn::stop_points_passed,
        "Layer boundaries a request's forward passes reached in this process (nn::stop_point).");
  m.def(
      "faults_fired", [](const std::string& name) { return core::faults::fired(fault_named(name)); },
      py::arg("name"));
  m.def("fault_names", [] {
    std::vector<std::string> names;
    for (int i = 0; i < core::faults::kFaultKinds; ++i)
      names.emplace_back(core::faults::fault_name(static_cast<core::faults::Fault>(i)));
    return names;
  });
  m.def(
      "native_test_model_spec",
      [](int64_t dimension, double sleep, double memory_mb, int max_replicas) {
        core::ModelSpec spec;
        spec.capabilities = {cap::TextEmbedding::kName, cap::TextToText::kName};
        spec.memory_mb = memory_mb;
        spec.max_replicas = max_replicas;
        spec.loader = [dimension, sleep](const std::string&) {
          return std::make_shared<NativeTestModel>(dimension, sleep);
        };
        return spec;
      },
      py::arg("dimension"), py::arg("sleep"), py::arg("memory_mb"), py::arg("max_replicas"));
}

}  // namespace mpool::bindings
