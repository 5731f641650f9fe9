#include "convert.h"

#include <ATen/ATen.h>
#include <tbb/parallel_for.h>

#include "mpool/capabilities/image_io.h"

namespace mpool::bindings {

bool python_alive() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsInitialized() && !Py_IsFinalizing();
#else
  return Py_IsInitialized() && !_Py_IsFinalizing();
#endif
}

py::array tensor_to_numpy(const at::Tensor& tensor) {
  at::Tensor t = tensor.device().is_cpu() ? tensor.contiguous() : tensor.to(at::kCPU).contiguous();
  py::dtype dtype;
  switch (t.scalar_type()) {
    case at::kFloat: dtype = py::dtype::of<float>(); break;
    case at::kDouble: dtype = py::dtype::of<double>(); break;
    case at::kByte: dtype = py::dtype::of<uint8_t>(); break;
    case at::kInt: dtype = py::dtype::of<int32_t>(); break;
    case at::kLong: dtype = py::dtype::of<int64_t>(); break;
    case at::kHalf: dtype = py::dtype("float16"); break;
    default:
      t = t.to(at::kFloat);
      dtype = py::dtype::of<float>();
  }
  std::vector<py::ssize_t> shape(t.sizes().begin(), t.sizes().end());
  std::vector<py::ssize_t> strides;
  for (auto s : t.strides()) strides.push_back(s * static_cast<py::ssize_t>(t.element_size()));
  auto* owner = new at::Tensor(t);
  py::capsule keep(owner, [](void* p) { delete static_cast<at::Tensor*>(p); });
  return py::array(dtype, shape, strides, t.data_ptr(), keep);
}

at::Tensor numpy_to_tensor(const py::handle& obj, at::ScalarType dtype, const std::string& what) {
  py::array arr;
  try {
    if (dtype == at::kFloat)
      arr = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(obj);
    else if (dtype == at::kByte)
      arr = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(obj);
    else if (dtype == at::kLong)
      arr = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(obj);
    else
      throw Error(ErrorCode::kInternal, "numpy_to_tensor: unsupported dtype");
  } catch (const py::error_already_set&) {
    arr = py::array();
  }
  if (!arr) throw Error(ErrorCode::kModelError, what + " is not array-like (got " +
                                                    std::string(py::str(py::type::of(obj).attr("__name__"))) + ")");
  std::vector<int64_t> shape(arr.shape(), arr.shape() + arr.ndim());
  auto t = at::empty(shape, dtype);
  std::memcpy(t.data_ptr(), arr.data(), static_cast<size_t>(arr.nbytes()));
  return t;
}

capabilities::GenerationParams params_from_dict(const py::dict& params) {
  capabilities::GenerationParams p;
  for (auto [k, v] : params) {
    std::string key = py::str(k);
    if (v.is_none()) continue;
    if (key == "max_tokens") p.max_tokens = v.cast<int64_t>();
    else if (key == "temperature") p.temperature = v.cast<double>();
    else if (key == "top_k") p.top_k = v.cast<int64_t>();
    else if (key == "top_p") p.top_p = v.cast<double>();
    else if (key == "min_p") p.min_p = v.cast<double>();
    else if (key == "repetition_penalty") p.repetition_penalty = v.cast<double>();
    else if (key == "presence_penalty") p.presence_penalty = v.cast<double>();
    else if (key == "frequency_penalty") p.frequency_penalty = v.cast<double>();
    else if (key == "seed") p.seed = v.cast<uint64_t>();
    else if (key == "stop") p.stop = v.cast<std::vector<std::string>>();
    else if (key == "stop_token_ids") p.stop_token_ids = v.cast<std::vector<int64_t>>();
    else if (key == "ignore_eos") p.ignore_eos = v.cast<bool>();
    else if (key == "logprobs") p.logprobs = v.cast<int64_t>();
    else if (key == "add_special_tokens") p.add_special_tokens = v.cast<bool>();
    else throw Error(ErrorCode::kInvalidInput, "unknown generation parameter '" + key + "'");
    p.explicitly_set.push_back(key);
  }
  return p;
}

py::dict params_to_dict(const capabilities::GenerationParams& p) {
  py::dict d;
  for (auto& key : p.explicitly_set) {
    if (key == "max_tokens") d[key.c_str()] = p.max_tokens;
    else if (key == "temperature") d[key.c_str()] = p.temperature;
    else if (key == "top_k") d[key.c_str()] = p.top_k;
    else if (key == "top_p") d[key.c_str()] = p.top_p;
    else if (key == "min_p") d[key.c_str()] = p.min_p;
    else if (key == "repetition_penalty") d[key.c_str()] = p.repetition_penalty;
    else if (key == "presence_penalty") d[key.c_str()] = p.presence_penalty;
    else if (key == "frequency_penalty") d[key.c_str()] = p.frequency_penalty;
    else if (key == "seed") d[key.c_str()] = p.seed;
    else if (key == "stop") d[key.c_str()] = p.stop;
    else if (key == "stop_token_ids") d[key.c_str()] = p.stop_token_ids;
    else if (key == "ignore_eos") d[key.c_str()] = p.ignore_eos;
    else if (key == "logprobs") d[key.c_str()] = p.logprobs;
    else if (key == "add_special_tokens") d[key.c_str()] = p.add_special_tokens;
  }
  return d;
}

Error error_from_python(const py::error_already_set& e, ErrorCode fallback) {
  ErrorCode code = fallback;
  py::object value = e.value();
  if (value && py::hasattr(value, "code")) {
    py::object c = value.attr("code");
    if (py::isinstance<py::str>(c)) {
      std::string name = c.cast<std::string>();
      for (int i = 0; i <= static_cast<int>(ErrorCode::kInternal); ++i)
        if (name == error_code_name(static_cast<ErrorCode>(i))) code = static_cast<ErrorCode>(i);
    }
  }
  std::string type = py::str(e.type().attr("__name__"));
  std::string msg = value ? std::string(py::str(value)) : std::string();
  return Error(code, code == fallback ? type + ": " + msg : msg);
}

std::vector<ImageInput> image_inputs(const py::list& items) {
  std::vector<ImageInput> out;
  for (auto item : items) {
    auto pair = item.cast<py::tuple>();
    std::string kind = pair[0].cast<std::string>();
    ImageInput in{};
    if (kind == "path") {
      in.kind = ImageInput::kPath;
      in.text = pair[1].cast<std::string>();
    } else if (kind == "url") {
      in.kind = ImageInput::kUrl;
      in.text = pair[1].cast<std::string>();
    } else if (kind == "bytes") {
      in.kind = ImageInput::kBytes;
      in.text = pair[1].cast<std::string>();  // copies out of Python
    } else if (kind == "array") {
      in.kind = ImageInput::kPixels;
      auto arr = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(pair[1]);
      if (!arr || arr.ndim() != 3)
        throw Error(ErrorCode::kInvalidInput, "image array must be HWC uint8 with 3 dimensions");
      in.pixels = capabilities::image_from_pixels(arr.data(), arr.shape(0), arr.shape(1), arr.shape(2));
    } else {
      throw Error(ErrorCode::kInternal, "unknown image input kind '" + kind + "'");
    }
    out.push_back(std::move(in));
  }
  return out;
}

std::vector<capabilities::Image> decode_images(const std::vector<ImageInput>& inputs, double timeout_s) {
  std::vector<capabilities::Image> images(inputs.size());
  std::vector<std::optional<Error>> errors(inputs.size());
  tbb::parallel_for(size_t{0}, inputs.size(), [&](size_t i) {
    try {
      const auto& in = inputs[i];
      switch (in.kind) {
        case ImageInput::kPath: images[i] = capabilities::read_image_file(in.text); break;
        case ImageInput::kUrl: images[i] = capabilities::fetch_image(in.text, timeout_s); break;
        case ImageInput::kBytes: images[i] = capabilities::decode_image(in.text, "image #" + std::to_string(i) + " (bytes)"); break;
        case ImageInput::kPixels: images[i] = in.pixels; break;
      }
    } catch (const Error& e) {
      errors[i].emplace(e.code(), e.what());
    }
  });
  for (size_t i = 0; i < errors.size(); ++i)
    if (errors[i]) throw Error(errors[i]->code(), "image #" + std::to_string(i) + ": " + errors[i]->what());
  return images;
}

}  // namespace mpool::bindings
