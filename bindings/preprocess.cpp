// Image preprocessing (imageio::preprocess) with a model's preprocessor_config.json,
// for tests and for users who want the exact model input.
#include <pybind11/numpy.h>

#include <cstring>

#include "module.h"
#include "native_gil.h"
#include "mpool/base/error.h"
#include "mpool/imageio/preprocess.h"
#include "mpool/loading/json.h"
#include "mpool/loading/model_directory.h"

namespace mpool::bindings {

namespace py = pybind11;

void register_preprocess(py::module_& m) {
  m.def(
      "_preprocess_image",
      [](const std::string& config_file, const py::handle& image) {
        py::array_t<std::uint8_t, py::array::c_style> rgb;
        try {
          rgb = py::array_t<std::uint8_t, py::array::c_style>::ensure(image);
        } catch (const py::error_already_set&) {
        }
        if (!rgb || rgb.ndim() != 3 || rgb.shape(2) != 3)
          throw Error(ErrorCode::kInvalidInput, "image must be an (height, width, 3) uint8 RGB array");
        const int64_t h = rgb.shape(0), w = rgb.shape(1);
        std::vector<float> out;
        int64_t oh = 0, ow = 0;
        {
          GilRelease nogil;
          const auto config = loading::preprocess_config(
              loading::parse_image_processor_config(loading::load_json_object(config_file)), config_file);
          out = imageio::preprocess(rgb.data(), h, w, config, "image", &oh, &ow);
        }
        py::array_t<float> result({int64_t{3}, oh, ow});
        std::memcpy(result.mutable_data(), out.data(), out.size() * sizeof(float));
        return result;
      },
      py::arg("config_file"), py::arg("image"),
      "The model input (3, H, W) float32 of an RGB uint8 image, as its preprocessor_config.json prescribes.");
}

}  // namespace mpool::bindings
