// Results handed to Python: futures of tensors, text streams and image streams.
// Every wait releases the GIL and takes it back only to build the Python object.
#include <pybind11/functional.h>

#include "convert.h"
#include "module.h"
#include "native_gil.h"
#include "mpool/capabilities/requests.h"

namespace mpool::bindings {
namespace {

using capabilities::GenerationStats;
using capabilities::ImageEvent;
using capabilities::ImageProgress;
using capabilities::TextChunk;

// A Python callable that may be called or dropped on any thread: takes the GIL
// to do either (and leaks it once the interpreter is finalizing, when taking the
// GIL would hang the thread). Never call or drop it under a native lock.
struct PyCallback {
  std::shared_ptr<py::object> fn;
  explicit PyCallback(py::object f)
      : fn(new py::object(std::move(f)), [](py::object* p) {
          if (python_alive()) {
            NativeGil gil;
            delete p;
          }
        }) {}
  void operator()(const char* what) const {
    if (!python_alive()) return;
    NativeGil gil;
    try {
      (*fn)();
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable(what);
    }
  }
};

// Registers a one-shot native "ready" callback that calls `fn` with the GIL.
template <class Channel>
void on_ready(Channel& channel, py::object fn) {
  PyCallback cb(std::move(fn));
  GilRelease nogil;
  channel.on_ready([cb] { cb("mpool stream ready callback"); });
}

double seconds_left(const core::RequestContext& context) {
  return std::chrono::duration<double>(context.deadline() - core::Clock::now()).count();
}

/// A native future: of a tensor (embeddings, scores), or of a load (no value).
template <class T>
struct NativeFuture {
  std::shared_ptr<core::Pending<T>> pending;

  double remaining() const { return seconds_left(*pending->context()); }
  void add_done_callback(py::object fn) {
    PyCallback cb(std::move(fn));
    GilRelease nogil;
    pending->on_done([cb] { cb("mpool future callback"); });
  }
};
using Future = NativeFuture<at::Tensor>;
using LoadFuture = NativeFuture<bool>;

/// Binds a NativeFuture; `result` turns the waited value into Python's.
template <class T, class Result>
void bind_future(py::module_& m, const char* name, const char* doc, Result result) {
  py::class_<NativeFuture<T>>(m, name, doc)
      .def("result", result, "Waits (GIL released) until the result or the request's deadline.")
      .def("done", [](const NativeFuture<T>& f) { return f.pending->done(); })
      .def("cancel", [](NativeFuture<T>& f) { return f.pending->cancel(); }, py::call_guard<GilRelease>())
      .def("remaining", &NativeFuture<T>::remaining, "Seconds left before the request's deadline.")
      .def("add_done_callback", &NativeFuture<T>::add_done_callback,
           "Calls fn() (on the delivering thread, with the GIL) once the result is there.");
}

/// Text stream: iterating yields TextChunk until the end.
struct PyTextStream {
  std::shared_ptr<capabilities::TextStream> channel;
  explicit PyTextStream(std::shared_ptr<capabilities::TextStream> c) : channel(std::move(c)) {}
  PyTextStream(PyTextStream&&) = default;  // the moved-from one must not cancel
  ~PyTextStream() {
    if (channel) channel->cancel();  // a dropped iterator frees its replica
  }
  TextChunk next() {
    std::optional<TextChunk> chunk;
    await_interruptibly(*channel);
    {
      GilRelease nogil;
      chunk = channel->next();
    }
    if (!chunk) throw py::stop_iteration();
    return std::move(*chunk);
  }
  // (True, chunk), (True, None) at the end, or (False, None) when nothing is there yet.
  py::tuple poll() {
    std::optional<TextChunk> chunk;
    bool got;
    {
      GilRelease nogil;
      got = channel->try_next(chunk);
    }
    if (!got) return py::make_tuple(false, py::none());
    if (!chunk) return py::make_tuple(true, py::none());
    return py::make_tuple(true, py::cast(std::move(*chunk)));
  }
  double remaining() const { return seconds_left(*channel->context()); }
  void cancel() { channel->cancel(); }
};

/// Image stream: iterating yields ImageProgress; the final image ends iteration.
struct PyImageStream {
  std::shared_ptr<capabilities::ImageStream> channel;
  std::optional<at::Tensor> image;
  explicit PyImageStream(std::shared_ptr<capabilities::ImageStream> c) : channel(std::move(c)) {}
  PyImageStream(PyImageStream&&) = default;  // the moved-from one must not cancel
  ~PyImageStream() {
    if (channel) channel->cancel();
  }
  ImageProgress next() {
    while (true) {
      std::optional<ImageEvent> event;
      await_interruptibly(*channel);
      {
        GilRelease nogil;
        event = channel->next();
      }
      if (!event) throw py::stop_iteration();
      if (auto* progress = std::get_if<ImageProgress>(&*event)) return std::move(*progress);
      image = std::get<at::Tensor>(*event);
    }
  }
  // Like PyTextStream::poll, for progress chunks (the final image is kept aside).
  py::tuple poll() {
    while (true) {
      std::optional<ImageEvent> event;
      bool got;
      {
        GilRelease nogil;
        got = channel->try_next(event);
      }
      if (!got) return py::make_tuple(false, py::none());
      if (!event) return py::make_tuple(true, py::none());
      if (auto* progress = std::get_if<ImageProgress>(&*event)) return py::make_tuple(true, py::cast(std::move(*progress)));
      image = std::get<at::Tensor>(*event);
    }
  }
  double remaining() const { return seconds_left(*channel->context()); }
  py::object final_image() {
    if (!image) return py::none();
    return tensor_to_numpy(*image);
  }
  void cancel() { channel->cancel(); }
};

}  // namespace

void register_streams(py::module_& m) {
  py::class_<GenerationStats>(m, "GenerationStats", "Counts and timings of a finished generation.")
      .def_readonly("prompt_tokens", &GenerationStats::prompt_tokens)
      .def_readonly("completion_tokens", &GenerationStats::completion_tokens)
      .def_readonly("time_to_first_token", &GenerationStats::time_to_first_token_s)
      .def_readonly("tokens_per_second", &GenerationStats::tokens_per_second)
      .def_readonly("image_tokens", &GenerationStats::image_tokens,
                    "prompt positions that image features filled (0 without images)")
      .def_readonly("image_time_s", &GenerationStats::image_time_s,
                    "seconds spent turning the images into features: preprocessing, vision tower, projector")
      .def("__repr__", [](const GenerationStats& s) {
        return "GenerationStats(prompt_tokens=" + std::to_string(s.prompt_tokens) +
               ", completion_tokens=" + std::to_string(s.completion_tokens) +
               ", time_to_first_token=" + std::to_string(s.time_to_first_token_s) +
               ", tokens_per_second=" + std::to_string(s.tokens_per_second) +
               (s.image_tokens > 0 ? ", image_tokens=" + std::to_string(s.image_tokens) +
                                         ", image_time_s=" + std::to_string(s.image_time_s)
                                   : std::string()) +
               ")";
      });
  py::class_<capabilities::TokenLogprob>(m, "TokenLogprob",
                                         "A generated token's log-probability under the model, and the most likely "
                                         "alternatives at that step.")
      .def_readonly("token_id", &capabilities::TokenLogprob::token_id)
      .def_readonly("logprob", &capabilities::TokenLogprob::logprob)
      .def_readonly("top", &capabilities::TokenLogprob::top, "(token id, logprob) pairs, most likely first")
      .def("__repr__", [](const capabilities::TokenLogprob& t) {
        return "TokenLogprob(token_id=" + std::to_string(t.token_id) + ", logprob=" + std::to_string(t.logprob) + ")";
      });
  py::class_<TextChunk>(m, "TextChunk", "One piece of a text stream.")
      .def_readonly("text", &TextChunk::text)
      .def_readonly("token_ids", &TextChunk::token_ids)
      .def_readonly("logprobs", &TextChunk::logprobs, "per token, when the request set logprobs")
      .def_readonly("finish_reason", &TextChunk::finish_reason)
      .def_readonly("stats", &TextChunk::stats)
      .def("__repr__", [](const TextChunk& c) {
        return "TextChunk(text=" + std::string(py::repr(py::str(c.text))) +
               (c.finish_reason ? ", finish_reason='" + *c.finish_reason + "'" : std::string()) + ")";
      });
  py::class_<ImageProgress>(m, "ImageProgress", "Progress of an image generation.")
      .def_readonly("step", &ImageProgress::step)
      .def_readonly("total", &ImageProgress::total)
      .def_readonly("elapsed", &ImageProgress::elapsed_s)
      .def_property_readonly("preview", [](const ImageProgress& p) -> py::object {
        if (!p.preview) return py::none();
        return tensor_to_numpy(*p.preview);
      })
      .def("__repr__", [](const ImageProgress& p) {
        return "ImageProgress(step=" + std::to_string(p.step) + ", total=" + std::to_string(p.total) + ")";
      });
  bind_future<at::Tensor>(m, "Future", "A pending embedding or scoring result.",
                          [](Future& f) { return tensor_to_numpy(wait_interruptibly(*f.pending)); });
  bind_future<bool>(m, "LoadFuture", "A pending load: its result is None once a replica serves the model.",
                    [](LoadFuture& f) {
                      wait_interruptibly(*f.pending);
                      return py::none();
                    });
  py::class_<PyTextStream>(m, "TextStream", "Chunks of generated text; iterate it.")
      .def("__iter__", [](py::object self) { return self; })
      .def("__next__", &PyTextStream::next)
      .def("poll", &PyTextStream::poll, "(True, chunk), (True, None) at the end, or (False, None): never waits.")
      .def("on_ready", [](PyTextStream& s, py::object fn) { on_ready(*s.channel, std::move(fn)); },
           "Calls fn() once (with the GIL, on the producing thread) when a chunk or the end is there.")
      .def("remaining", &PyTextStream::remaining, "Seconds left before the request's deadline.")
      .def("cancel", &PyTextStream::cancel, py::call_guard<GilRelease>());
  py::class_<PyImageStream>(m, "ImageStream", "Progress chunks of an image generation, then the image.")
      .def("__iter__", [](py::object self) { return self; })
      .def("__next__", &PyImageStream::next)
      .def("poll", &PyImageStream::poll, "(True, progress), (True, None) at the end, or (False, None).")
      .def("on_ready", [](PyImageStream& s, py::object fn) { on_ready(*s.channel, std::move(fn)); },
           "Calls fn() once (with the GIL, on the producing thread) when an event or the end is there.")
      .def("remaining", &PyImageStream::remaining, "Seconds left before the request's deadline.")
      .def("final_image", &PyImageStream::final_image)
      .def("cancel", &PyImageStream::cancel, py::call_guard<GilRelease>());
}

// Factories used by pool.cpp (kept here so the stream types stay private).
py::object wrap_future(std::shared_ptr<core::Pending<at::Tensor>> p) { return py::cast(Future{std::move(p)}); }
py::object wrap_load_future(std::shared_ptr<core::Pending<bool>> p) { return py::cast(LoadFuture{std::move(p)}); }
py::object wrap_text_stream(std::shared_ptr<capabilities::TextStream> c) {
  return py::cast(PyTextStream(std::move(c)), py::return_value_policy::move);
}
py::object wrap_image_stream(std::shared_ptr<capabilities::ImageStream> c) {
  return py::cast(PyImageStream(std::move(c)), py::return_value_policy::move);
}

}  // namespace mpool::bindings
