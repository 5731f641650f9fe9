// Native model families: build a ModelSpec from a directory or cached repo id.
#include <pybind11/stl.h>

#include "module.h"
#include "convert.h"
#include "mpool/loading/layout.h"
#include "mpool/models/bert/bert.h"
#include "mpool/models/families.h"
#include "mpool/models/llama/llama.h"
#include "mpool/loading/tensors.h"

#include <c10/core/InferenceMode.h>

namespace mpool::bindings {

namespace py = pybind11;

void register_models(py::module_& m) {
  m.def(
      "native_model",
      [](const std::string& path_or_repo_id, std::optional<std::string> dtype, std::vector<std::string> devices,
         std::optional<int64_t> context_length) {
        models::NativeModel model;
        {
          py::gil_scoped_release nogil;
          models::NativeOptions options;
          options.dtype = std::move(dtype);
          options.devices = std::move(devices);
          options.context_length = context_length;
          model = models::native_model(path_or_repo_id, options);
        }
        py::dict info;
        info["family"] = model.family;
        info["path"] = model.path;
        info["warnings"] = model.warnings;
        info["weight_mb"] = model.weight_mb;
        info["memory_mb"] = model.spec.memory_mb;
        info["capabilities"] = model.spec.capabilities;
        return py::make_tuple(py::cast(std::move(model.spec)), info);
      },
      py::arg("path_or_repo_id"), py::arg("dtype") = py::none(), py::arg("devices") = std::vector<std::string>{"cpu"},
      py::arg("context_length") = py::none(),
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
  m.def(
      "_decoder_logits",
      [](const std::string& dir, std::vector<int64_t> ids, int64_t chunk, const std::string& dtype) {
        at::Tensor out, positions;
        {
          py::gil_scoped_release nogil;
          auto layout = loading::describe_layout(dir);
          auto config = models::llama::LlamaConfig::from(loading::load_model_config(layout.model_dir));
          auto type = loading::parse_scalar_type(dtype);
          check(type.has_value(), ErrorCode::kInvalidInput, "unknown dtype '" + dtype + "'");
          models::llama::LlamaDecoder decoder(config, loading::Checkpoint::open(layout.model_dir), *type, at::kCPU);
          if (chunk <= 0) {
            out = decoder.all_logits(ids);
            positions = at::arange(static_cast<int64_t>(ids.size()), at::kLong);
          } else {
            // Through the KV cache, `chunk` tokens per step: the logits at each step's last position.
            auto cache = decoder.new_cache(static_cast<int64_t>(ids.size()));
            std::vector<at::Tensor> rows;
            std::vector<int64_t> at_positions;
            for (size_t i = 0; i < ids.size(); i += static_cast<size_t>(chunk)) {
              size_t end = std::min(ids.size(), i + static_cast<size_t>(chunk));
              rows.push_back(decoder.extend(std::vector<int64_t>(ids.begin() + static_cast<std::ptrdiff_t>(i),
                                                                 ids.begin() + static_cast<std::ptrdiff_t>(end)),
                                            cache));
              at_positions.push_back(static_cast<int64_t>(end) - 1);
            }
            out = at::stack(rows);
            positions = at::tensor(at_positions, at::kLong);
          }
        }
        return py::make_tuple(tensor_to_numpy(positions), tensor_to_numpy(out));
      },
      py::arg("path"), py::arg("ids"), py::arg("chunk") = 0, py::arg("dtype") = "float32",
      "Test hook: (positions, float32 logits) of the decoder for `ids`, all at once (chunk=0) or through the KV "
      "cache `chunk` tokens at a time.");
  m.def("register_builtin_families", &models::register_builtin_families,
        "Registers the native families with the inspect registry (idempotent).");
}

}  // namespace mpool::bindings
