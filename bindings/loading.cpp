// Model inspection and the safetensors reader. Loading runs with the GIL released;
// only wrapping the finished tensors as numpy arrays needs it.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "module.h"
#include "native_gil.h"
#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "mpool/loading/inspect.h"
#include "mpool/loading/tensors.h"

namespace py = pybind11;

namespace mpool::bindings {
namespace {

using loading::LoadResult;

py::dtype numpy_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBool: return py::dtype("bool");
    case at::kByte: return py::dtype::of<std::uint8_t>();
    case at::kChar: return py::dtype::of<std::int8_t>();
    case at::kUInt16: return py::dtype::of<std::uint16_t>();
    case at::kShort: return py::dtype::of<std::int16_t>();
    case at::kUInt32: return py::dtype::of<std::uint32_t>();
    case at::kInt: return py::dtype::of<std::int32_t>();
    case at::kUInt64: return py::dtype::of<std::uint64_t>();
    case at::kLong: return py::dtype::of<std::int64_t>();
    case at::kHalf: return py::dtype("float16");
    case at::kFloat: return py::dtype::of<float>();
    case at::kDouble: return py::dtype::of<double>();
    default: throw Error(ErrorCode::kInternal, std::string("no numpy dtype for ") + c10::toString(t));
  }
}

// numpy has no bfloat16 or float8: such tensors are widened to float32, which
// holds every one of their values exactly.
bool numpy_has(at::ScalarType t) {
  return t != at::kBFloat16 && t != at::kFloat8_e4m3fn && t != at::kFloat8_e5m2;
}

LoadResult load_for_numpy(const std::string& path, const std::optional<std::string>& dtype,
                          const std::optional<std::vector<std::string>>& expected, bool populate) {
  loading::LoadOptions options;
  options.populate = populate;
  if (dtype) {
    options.dtype = loading::parse_scalar_type(*dtype);
    if (!options.dtype || !at::isFloatingType(*options.dtype))
      throw Error(ErrorCode::kInvalidInput, "dtype must be one of float32, float16, bfloat16, float64 (got \"" +
                                                *dtype + "\")");
  }
  const loading::Checkpoint checkpoint = loading::Checkpoint::open(path);
  LoadResult result = loading::load_checkpoint(checkpoint, options, expected);
  for (auto& t : result.tensors) {
    if (numpy_has(t.tensor.scalar_type())) continue;
    t.tensor = t.tensor.to(at::kFloat);
    t.zero_copy = false;
  }
  return result;
}

py::array to_numpy(const at::Tensor& tensor) {
  std::vector<py::ssize_t> shape(tensor.sizes().begin(), tensor.sizes().end());
  std::vector<py::ssize_t> strides;
  for (auto s : tensor.strides()) strides.push_back(s * static_cast<py::ssize_t>(tensor.element_size()));
  // The capsule owns a tensor reference: the array keeps the storage (and for a
  // zero-copy tensor, the file mapping) alive.
  auto* owner = new at::Tensor(tensor);
  py::capsule base(owner, [](void* p) { delete static_cast<at::Tensor*>(p); });
  return py::array(numpy_dtype(tensor.scalar_type()), shape, strides, tensor.data_ptr(), base);
}

// `text` as a Python str; InvalidInput naming `where` when it is not UTF-8 (a
// template file is read as bytes, and transformers reads it as UTF-8).
py::str utf8_text(const std::string& text, const std::string& where) {
  PyObject* str = PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "strict");
  if (str == nullptr) {
    PyErr_Clear();
    throw Error(ErrorCode::kInvalidInput, where + " is not valid UTF-8");
  }
  return py::reinterpret_steal<py::str>(str);
}

}  // namespace

void register_loading(py::module_& m) {
  py::class_<LoadResult>(m, "_LoadedTensors", "Tensors loaded from a safetensors checkpoint.")
      .def(
          "arrays",
          [](const LoadResult& r) {
            py::dict out;
            for (const auto& t : r.tensors) out[py::str(t.name)] = to_numpy(t.tensor);
            return out;
          },
          "The tensors as numpy arrays that share the loaded memory.")
      .def_property_readonly(
          "zero_copy",
          [](const LoadResult& r) {
            std::vector<std::string> names;
            for (const auto& t : r.tensors)
              if (t.zero_copy) names.push_back(t.name);
            return names;
          },
          "Names of the tensors that view the file mapping instead of a copy.")
      .def_readonly("warnings", &LoadResult::warnings, "Unexpected tensors and index inconsistencies.");

  m.def("_safetensors_load", &load_for_numpy, py::arg("path"), py::arg("dtype") = py::none(),
        py::arg("expected") = py::none(), py::arg("populate") = true, py::call_guard<GilRelease>(),
        "Loads a safetensors file, index or directory; bfloat16 and float8 come back as float32.");

  m.def(
      "_inspect_json",
      [](const std::string& path_or_repo_id) { return loading::inspect_model(path_or_repo_id).to_json().dump(); },
      py::arg("path_or_repo_id"), py::call_guard<GilRelease>(),
      "Reports on a model directory or cached repo id, as JSON text.");

  m.def(
      "_chat_templates",
      [](const std::string& dir) {
        std::map<std::string, loading::ChatTemplateSource> templates;
        {
          GilRelease nogil;
          templates = loading::load_chat_templates(dir);
        }
        py::dict out;
        for (const auto& [name, source] : templates)
          out[py::str(name)] = py::make_tuple(utf8_text(source.text, source.where), source.where);
        return out;
      },
      py::arg("dir"),
      "The chat templates of a tokenizer directory, read as transformers reads them: {name: (text, where)}.");
  m.def(
      "_tokenizer_dir",
      [](const std::string& dir) {
        std::string out;
        {
          GilRelease nogil;
          out = loading::describe_layout(dir).tokenizer_dir.string();
        }
        return out.empty() ? dir : out;
      },
      py::arg("dir"),
      "The folder of a model directory that holds its tokenizer files (what inspect reads); `dir` when none does.");
}

}  // namespace mpool::bindings
