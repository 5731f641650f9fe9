// The CPU's compute choices the process makes once for every model: which
// library runs float32 GEMMs (nn/gemm.h), and who runs attention (nn/kernels.h).
#include "module.h"
#include "mpool/nn/gemm.h"
#include "mpool/nn/kernels.h"

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
  m.def(
      "cpu_attention",
      [] { return std::string(nn::kernels::cpu_attention() == nn::kernels::CpuAttention::kMpool ? "mpool" : "aten"); },
      "Who runs attention on the CPU: 'mpool' or 'aten'.");
  m.def(
      "set_cpu_attention",
      [](const std::string& backend) {
        nn::kernels::set_cpu_attention(nn::kernels::parse_cpu_attention(backend, "set_cpu_attention"));
      },
      py::arg("backend"), "Sets who runs attention on the CPU for the whole process: 'mpool' or 'aten'.");
}

}  // namespace mpool::bindings
