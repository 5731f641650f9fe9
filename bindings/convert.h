#pragma once
// Conversions between Python values and the capability types, shared by the
// binding files. Call them with the GIL held.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "mpool/capabilities/types.h"
#include "mpool/base/error.h"

namespace mpool::bindings {

namespace py = pybind11;

/// True while the interpreter runs and is not finalizing: only then may a
/// native thread take the GIL (during finalization it would hang or be killed).
bool python_alive();
/// A CPU tensor as a numpy array that shares its memory (the array keeps it alive).
py::array tensor_to_numpy(const at::Tensor& tensor);
/// A numpy array (any dtype convertible to `dtype`) copied into a contiguous tensor.
at::Tensor numpy_to_tensor(const py::handle& array, at::ScalarType dtype, const std::string& what);
/// Generation parameters from a dict of validated keyword arguments.
capabilities::GenerationParams params_from_dict(const py::dict& params);
/// The explicitly set generation parameters as a dict (what Python models receive).
py::dict params_to_dict(const capabilities::GenerationParams& params);
/// An mpool::Error for the Python exception being handled (its message, and its
/// code if it is an mpool error); clears nothing, call inside the catch.
Error error_from_python(const py::error_already_set& e, ErrorCode fallback);

/// An undecoded image input, copied out of Python so it can be decoded without the GIL.
struct ImageInput {
  enum Kind { kPath, kUrl, kBytes, kPixels } kind;
  std::string text;      ///< path, URL or encoded bytes
  at::Tensor pixels;     ///< HWC uint8 for kPixels
};
/// Reads ("path"|"url"|"bytes"|"array", payload) pairs prepared by mpool/_images.py.
std::vector<ImageInput> image_inputs(const py::list& items);
/// Decodes and fetches, in parallel, without the GIL (call with it released).
std::vector<capabilities::Image> decode_images(const std::vector<ImageInput>& inputs, double timeout_s);

}  // namespace mpool::bindings
