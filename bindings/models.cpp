// Native model families: build a ModelSpec from a directory or cached repo id,
// and run probes (blocks and families, for the parity tests). No family header
// is included here: families are reached through families.h and probe names.
#include <pybind11/stl.h>

#include "convert.h"
#include "module.h"
#include "mpool/base/error.h"
#include "mpool/models/families.h"
#include "mpool/nn/probe.h"

namespace mpool::bindings {

namespace py = pybind11;

namespace {

// A Python dict of family options -> the typed bag (bool before int: a Python
// bool is an int).
models::FamilyOptions family_options(const py::dict& options) {
  models::FamilyOptions out;
  for (const auto& [k, v] : options) {
    if (!py::isinstance<py::str>(k))
      throw Error(ErrorCode::kInvalidInput, "options keys must be str, got " +
                                                std::string(py::str(py::type::of(k).attr("__name__"))));
    const std::string name = k.cast<std::string>();
    if (py::isinstance<py::bool_>(v))
      out.values[name] = v.cast<bool>();
    else if (py::isinstance<py::int_>(v)) {
      try {
        out.values[name] = v.cast<int64_t>();
      } catch (const py::cast_error&) {
        throw Error(ErrorCode::kInvalidInput, "option '" + name + "' is out of the int64 range");
      }
    } else if (py::isinstance<py::float_>(v))
      out.values[name] = v.cast<double>();
    else if (py::isinstance<py::str>(v))
      out.values[name] = v.cast<std::string>();
    else
      throw Error(ErrorCode::kInvalidInput, "option '" + name + "' must be a bool, int, float or str, got " +
                                                std::string(py::str(py::type::of(v).attr("__name__"))));
  }
  return out;
}

}  // namespace

void register_models(py::module_& m) {
  m.def(
      "native_model",
      [](const std::string& path_or_repo_id, std::optional<std::string> dtype, std::vector<std::string> devices,
         std::optional<int64_t> context_length, py::dict options) {
        models::NativeModel model;
        models::NativeOptions native;
        native.options = family_options(options);
        {
          GilRelease nogil;
          native.dtype = std::move(dtype);
          native.devices = std::move(devices);
          native.context_length = context_length;
          model = models::native_model(path_or_repo_id, native);
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
      py::arg("context_length") = py::none(), py::arg("options") = py::dict(),
      "Builds the ModelSpec of a native model directory (or cached repo id), and facts about it.");
  m.def(
      "_probe",
      [](const std::string& name, const std::string& options_json, const py::dict& tensors) {
        models::register_builtin_probes();
        nn::ProbeInput input;
        try {
          input.options = nlohmann::json::parse(options_json);
        } catch (const nlohmann::json::exception& e) {
          throw Error(ErrorCode::kInvalidInput, std::string("probe options are not JSON: ") + e.what());
        }
        for (const auto& [k, v] : tensors) {
          const std::string key = py::str(k);
          const char kind = py::array::ensure(v) ? py::array::ensure(v).dtype().kind() : 'f';
          input.tensors[key] = numpy_to_tensor(v, kind == 'i' || kind == 'u' || kind == 'b' ? at::kLong : at::kFloat,
                                               "probe tensor '" + key + "'");
        }
        nn::ProbeOutput out;
        {
          GilRelease nogil;
          out = nn::run_probe(name, input);
        }
        py::dict result;
        for (const auto& [k, t] : out) result[py::str(k)] = tensor_to_numpy(t);
        return result;
      },
      py::arg("name"), py::arg("options_json"), py::arg("tensors"),
      "Runs a registered probe (a block or a model on given tensors); see mpool.testing.probe.");
  m.def(
      "_probe_names",
      [] {
        models::register_builtin_probes();
        return nn::probe_names();
      },
      "The registered probe names.");
  m.def("register_builtin_families", &models::register_builtin_families,
        "Registers the native families with the inspect registry (idempotent).");
}

}  // namespace mpool::bindings
