// Native model families: build a ModelSpec from a directory or cached repo id.
#include <pybind11/stl.h>

#include "module.h"
#include "convert.h"
#include "mpool/loading/layout.h"
#include "mpool/models/bert/bert.h"
#include "mpool/models/families.h"

#include <c10/core/InferenceMode.h>

namespace mpool::bindings {

namespace py = pybind11;

void register_models(py::module_& m) {
  m.def(
      "native_model",
      [](const std::string& path_or_repo_id, std::optional<std::string> dtype, std::vector<std::string> devices) {
        models::NativeModel model;
        {
          py::gil_scoped_release nogil;
          models::NativeOptions options;
          options.dtype = std::move(dtype);
          options.devices = std::move(devices);
          model = models::native_model(path_or_repo_id, options);
        }
        py::dict info;
        info["family"] = model.family;
        info["path"] = model.path;
        info["warnings"] = model.warnings;
        info["weight_mb"] = model.weight_mb;
        info["memory_mb"] = model.spec.memory_mb;
        return py::make_tuple(py::cast(std::move(model.spec)), info);
      },
      py::arg("path_or_repo_id"), py::arg("dtype") = py::none(), py::arg("devices") = std::vector<std::string>{"cpu"},
      "Builds the ModelSpec of a native model directory (or cached repo id), and facts about it.");
  m.def(
      "_bert_last_hidden_state",
      [](const std::string& dir, py::array_t<int64_t> ids, py::array_t<int64_t> types, py::array_t<int64_t> mask) {
        at::Tensor i = numpy_to_tensor(ids, at::kLong, "input_ids"), t = numpy_to_tensor(types, at::kLong, "token_type_ids"),
                   k = numpy_to_tensor(mask, at::kLong, "attention_mask");
        at::Tensor out;
        {
          py::gil_scoped_release nogil;
          auto layout = loading::describe_layout(dir);
          auto config = models::bert::BertConfig::from(loading::load_model_config(layout.model_dir));
          models::bert::BertEncoder encoder(config, loading::Checkpoint::open(layout.model_dir), at::kFloat, at::kCPU);
          c10::InferenceMode inference;
          out = encoder.forward(i, t, k);
        }
        return tensor_to_numpy(out);
      },
      "Test hook: the BERT encoder's last hidden state for given inputs (float32).");
  m.def("register_builtin_families", &models::register_builtin_families,
        "Registers the native families with the inspect registry (idempotent).");
}

}  // namespace mpool::bindings
