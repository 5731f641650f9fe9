#pragma once
// Conversions between Python values and the capability types, shared by the
// binding files. Call them with the GIL held.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <string_view>
#include <vector>

#include "mpool/capabilities/types.h"
#include "native_gil.h"
#include "mpool/core/channel.h"
#include "mpool/core/pending.h"
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

/// Waits, with the GIL released, in slices of 100 ms, until `source` (a
/// core::Pending or core::Channel) has its next result or the request's deadline
/// has passed. Between slices Python's signal handlers run (on the main thread):
/// Ctrl-C cancels the request and raises KeyboardInterrupt, however long the
/// work. Call it with the GIL held.
template <class Source>
void await_interruptibly(Source& source) {
  constexpr double kSignalPollS = 0.1;
  while (true) {
    bool ready = false;
    {
      GilRelease nogil;
      ready = source.wait_for(kSignalPollS);
    }
    if (ready) return;
    if (PyErr_CheckSignals() != 0) {
      py::error_already_set interrupt;  // takes the handler's exception
      {
        GilRelease nogil;
        source.cancel();
      }
      throw interrupt;
    }
  }
}

/// A Pending's value (or its Error, thrown) after await_interruptibly.
template <class T>
T wait_interruptibly(core::Pending<T>& pending) {
  await_interruptibly(pending);
  GilRelease nogil;
  return pending.wait();
}

/// An undecoded image input, read out of Python so it can be decoded without
/// the GIL. Paths and URLs are copied; encoded payloads (bytes, base64 strings,
/// data URIs) and pixel arrays are views of the Python objects in the list
/// given to image_inputs, which must outlive the inputs.
struct ImageInput {
  enum Kind { kPath, kUrl, kBytes, kBase64, kDataUri, kPixels } kind;
  std::string text;          ///< path or URL; for kBase64 a repr() of its start, for messages
  std::string_view payload;  ///< kBytes, kBase64, kDataUri: the encoded data
  // kPixels: HWC uint8 with byte strides.
  const std::uint8_t* data = nullptr;
  int64_t height = 0, width = 0, channels = 0;
  int64_t strides[3] = {0, 0, 0};
  /// kPixels that pass to the model without a copy (a writeable C-contiguous
  /// 3-channel array): a tensor over the array's memory that keeps it alive.
  at::Tensor shared;
};
/// Reads ("path"|"url"|"bytes"|"base64"|"data_uri"|"array", payload) pairs
/// prepared by mpool/_images.py. Drains the image release queue first.
std::vector<ImageInput> image_inputs(const py::list& items);

/// How image URLs are fetched (Pool options, passed with each request).
struct ImageFetchOptions {
  double timeout_s = 10.0;
  bool allow_private_urls = false;
  size_t max_bytes = size_t{64} << 20;  ///< URL bodies and files
};
/// Decodes and fetches, in parallel, without the GIL (call with it released).
std::vector<capabilities::Image> decode_images(const std::vector<ImageInput>& inputs,
                                               const ImageFetchOptions& options);

/// Arrays shared with tensors (ImageInput::shared) are released through a
/// queue: a tensor's deleter may run on any native thread, holding any lock, so
/// it never takes the GIL; it queues the reference, and this drops the queued
/// ones. Call with the GIL held (image_inputs, pool shutdown and interpreter
/// exit do). Returns how many were released.
size_t drain_released_images();

}  // namespace mpool::bindings
