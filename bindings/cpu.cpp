// The CPU's compute choices the process makes once for every model: which
// library runs float32 GEMMs (nn/gemm.h).
#include "module.h"
#include "mpool/nn/gemm.h"

namespace mpool::bindings {

namespace py = pybind11;

void register_cpu(py::module_& m) {
  m.def("float32_gemm", [] { return std::string(nn::gemm::name(nn::gemm::float32_gemm())); },
        "The library that runs float32 GEMMs on the CPU: 'aten' or 'onednn'.");
  m.def(
      "float32_gemm_auto",
      [] {
        return py::make_tuple(std::string(nn::gemm::name(nn::gemm::automatic())),
                              std::string(nn::gemm::automatic_reason()));
      },
      "What 'auto' picks on this machine, and why.");
  m.def(
      "set_float32_gemm",
      [](const std::string& backend) { nn::gemm::set_float32_gemm(nn::gemm::parse(backend, "set_float32_gemm")); },
      py::arg("backend"), "Sets the float32 GEMM library for the whole process: 'auto', 'aten' or 'onednn'.");
}

}  // namespace mpool::bindings
