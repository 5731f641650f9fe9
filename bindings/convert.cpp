#include "convert.h"

#include <ATen/ATen.h>
#include <tbb/parallel_for.h>

#include <mutex>

#include "mpool/capabilities/image_io.h"
#include "mpool/imageio/source.h"

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

namespace {

std::mutex release_mu;
std::vector<PyObject*> release_queue;  // guarded by release_mu

// A tensor deleter: never takes the GIL (see drain_released_images).
void release_later(PyObject* obj) {
  std::lock_guard lock(release_mu);
  release_queue.push_back(obj);
}

std::string_view encoded_payload(const py::handle& obj, const std::string& what) {
  if (PyBytes_Check(obj.ptr())) {
    char* data = nullptr;
    Py_ssize_t size = 0;
    if (PyBytes_AsStringAndSize(obj.ptr(), &data, &size) != 0) throw py::error_already_set();
    return {data, static_cast<size_t>(size)};
  }
  if (PyUnicode_Check(obj.ptr())) {
    Py_ssize_t size = 0;
    // The UTF-8 form is cached in the str object: a view, no copy (ASCII strings share it).
    const char* data = PyUnicode_AsUTF8AndSize(obj.ptr(), &size);
    if (data == nullptr) {
      PyErr_Clear();
      throw Error(ErrorCode::kInvalidInput, what + ": the string is not valid Unicode (lone surrogate)");
    }
    return {data, static_cast<size_t>(size)};
  }
  throw Error(ErrorCode::kInvalidInput, what + ": expected bytes or str, got " +
                                            std::string(py::str(py::type::of(obj).attr("__name__"))));
}

void read_array(const py::handle& obj, ImageInput& in, const std::string& what) {
  if (!py::isinstance<py::array>(obj))
    throw Error(ErrorCode::kInvalidInput, what + ": expected a numpy array");
  auto arr = py::reinterpret_borrow<py::array>(obj);
  if (!arr.dtype().is(py::dtype::of<uint8_t>()) || arr.ndim() != 3)
    throw Error(ErrorCode::kInvalidInput, what + ": numpy images must be HWC uint8 with 1, 3 or 4 channels");
  in.kind = ImageInput::kPixels;
  in.data = static_cast<const std::uint8_t*>(arr.data());
  in.height = arr.shape(0);
  in.width = arr.shape(1);
  in.channels = arr.shape(2);
  for (int d = 0; d < 3; ++d) in.strides[d] = arr.strides(d);
  if (in.height <= 0 || in.width <= 0 || (in.channels != 1 && in.channels != 3 && in.channels != 4))
    throw Error(ErrorCode::kInvalidInput, what + ": the image is empty or not HWC with 1, 3 or 4 channels (shape " +
                                              std::to_string(in.height) + "x" + std::to_string(in.width) + "x" +
                                              std::to_string(in.channels) + ")");
  const bool c_contiguous = in.strides[2] == 1 && in.strides[1] == 3 && in.strides[0] == 3 * in.width;
  if (in.channels == 3 && c_contiguous && arr.writeable()) {
    PyObject* ref = obj.ptr();
    Py_INCREF(ref);
    in.shared = at::from_blob(const_cast<std::uint8_t*>(in.data), {in.height, in.width, 3},
                              [ref](void*) { release_later(ref); }, at::TensorOptions().dtype(at::kByte));
  }
}

}  // namespace

size_t drain_released_images() {
  std::vector<PyObject*> batch;
  {
    std::lock_guard lock(release_mu);
    batch.swap(release_queue);
  }
  // Outside the lock: a release may run Python code that queues more.
  for (PyObject* obj : batch) Py_DECREF(obj);
  return batch.size();
}

std::vector<ImageInput> image_inputs(const py::list& items) {
  drain_released_images();
  std::vector<ImageInput> out;
  out.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string what = "image #" + std::to_string(i);
    auto pair = py::reinterpret_borrow<py::object>(items[i]);
    if (!py::isinstance<py::tuple>(pair) || py::len(pair) != 2)
      throw Error(ErrorCode::kInternal, what + ": malformed image input");
    const std::string kind = py::str(pair[py::int_(0)]);
    py::object payload = pair[py::int_(1)];
    ImageInput in{};
    if (kind == "path") {
      in.kind = ImageInput::kPath;
      in.text = payload.cast<std::string>();
    } else if (kind == "url") {
      in.kind = ImageInput::kUrl;
      in.text = payload.cast<std::string>();
    } else if (kind == "bytes") {
      in.kind = ImageInput::kBytes;
      in.payload = encoded_payload(payload, what);
    } else if (kind == "base64") {
      in.kind = ImageInput::kBase64;
      in.payload = encoded_payload(payload, what);
      py::object start = payload[py::slice(0, 60, 1)];
      in.text = py::repr(start).cast<std::string>();
      if (in.payload.size() > 60) in.text += "...";
    } else if (kind == "data_uri") {
      in.kind = ImageInput::kDataUri;
      in.payload = encoded_payload(payload, what);
    } else if (kind == "array") {
      read_array(payload, in, what);
    } else {
      throw Error(ErrorCode::kInternal, "unknown image input kind '" + kind + "'");
    }
    out.push_back(std::move(in));
  }
  return out;
}

std::vector<capabilities::Image> decode_images(const std::vector<ImageInput>& inputs,
                                               const ImageFetchOptions& options) {
  std::vector<capabilities::Image> images(inputs.size());
  std::vector<std::optional<Error>> errors(inputs.size());
  imageio::FetchOptions fetch;
  fetch.timeout_s = options.timeout_s;
  fetch.max_bytes = options.max_bytes;
  fetch.allow_private = options.allow_private_urls;
  tbb::parallel_for(size_t{0}, inputs.size(), [&](size_t i) {
    try {
      const auto& in = inputs[i];
      switch (in.kind) {
        case ImageInput::kPath: images[i] = capabilities::read_image_file(in.text, options.max_bytes); break;
        case ImageInput::kUrl: images[i] = capabilities::fetch_image(in.text, fetch); break;
        case ImageInput::kBytes:
          images[i] = capabilities::decode_image(in.payload.data(), in.payload.size(), "bytes");
          break;
        case ImageInput::kBase64: {
          const std::string bytes = imageio::decode_base64(
              in.payload, in.text + " (not an existing file, an http(s) URL or a data URI)");
          images[i] = capabilities::decode_image(bytes.data(), bytes.size(), "base64 " + in.text);
          break;
        }
        case ImageInput::kDataUri: {
          const imageio::DataUri uri = imageio::parse_data_uri(in.payload, "data URI");
          images[i] = capabilities::decode_image(uri.data.data(), uri.data.size(),
                                                 "data URI (" + (uri.media_type.empty() ? std::string("no media type")
                                                                                        : uri.media_type) + ")");
          break;
        }
        case ImageInput::kPixels:
          images[i] = in.shared.defined()
                          ? in.shared
                          : capabilities::image_from_pixels(in.data, in.height, in.width, in.channels, in.strides[0],
                                                            in.strides[1], in.strides[2], "array");
          break;
      }
    } catch (const Error& e) {
      errors[i].emplace(e.code(), e.what());
    } catch (const std::bad_alloc&) {
      errors[i].emplace(ErrorCode::kInvalidInput, "out of memory while decoding the image");
    }
  });
  for (size_t i = 0; i < errors.size(); ++i)
    if (errors[i]) throw Error(errors[i]->code(), "image #" + std::to_string(i) + ": " + errors[i]->what());
  return images;
}

}  // namespace mpool::bindings
