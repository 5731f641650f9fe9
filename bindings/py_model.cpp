// Python-defined models: a Python object served by native replica threads. The
// replica takes the GIL only while it calls into Python.
#include <pybind11/functional.h>

#include <condition_variable>
#include <mutex>

#include "convert.h"
#include "module.h"
#include "native_gil.h"
#include "mpool/capabilities/interfaces.h"
#include "mpool/core/model_spec.h"

namespace mpool::bindings {
namespace {

namespace cap = capabilities;

// Holds a Python object and drops it with the GIL (or leaks it once the
// interpreter is going away, when taking the GIL would hang the thread).
struct PyRef {
  py::object obj;
  explicit PyRef(py::object o) : obj(std::move(o)) {}
  ~PyRef() {
    if (python_alive()) {
      NativeGil gil;
      obj = py::object();
    } else {
      obj.release();
    }
  }
};

// What the `progress` callable given to a Python model's generate_image reaches.
// The model may keep that callable and call it after its request ended, from any
// thread: the sink and context it reports to live in the request's frame and are
// gone by then. So the callable holds this state (shared), never the frame:
// `open` is cleared when generate_image returns, and generate_image waits until
// no call is still inside the sink (`in_flight`) before it returns. A call after
// that raises Cancelled and touches nothing of the request.
struct ProgressReport {
  std::mutex mu;
  std::condition_variable idle;
  bool open = true;
  int in_flight = 0;
  const cap::ProgressSink* sink;  // valid while open or in_flight > 0
  cap::RequestContext* ctx;       // likewise

  ProgressReport(const cap::ProgressSink& s, cap::RequestContext& c) : sink(&s), ctx(&c) {}

  // With the GIL held (a Python call): reports one step; false if the request must stop.
  bool report(int64_t step, int64_t total, const py::object& preview) {
    {
      std::lock_guard lock(mu);
      if (!open)
        throw Error(ErrorCode::kCancelled,
                    "this progress callback belongs to a finished request; a model must not call it after "
                    "generate_image returned");
      ++in_flight;
    }
    struct Leave {
      ProgressReport& r;
      ~Leave() {
        std::lock_guard lock(r.mu);
        if (--r.in_flight == 0) r.idle.notify_all();
      }
    } leave{*this};
    cap::ImageProgress p{step, total, std::nullopt};
    if (!preview.is_none()) p.preview = numpy_to_tensor(preview, at::kByte, "progress preview");
    GilRelease nogil;  // the sink may wait for a slow consumer
    return (*sink)(std::move(p)) && !ctx->should_stop();
  }

  // When generate_image returns (GIL held): no call reaches the sink or context after this.
  void close() {
    GilRelease nogil;  // a call in flight may need the GIL to finish
    std::unique_lock lock(mu);
    open = false;
    idle.wait(lock, [&] { return in_flight == 0; });
  }
};

// Turns one yielded item into (text, ids); dicts may also carry final fields.
void read_text_item(const py::handle& item, std::string& text, std::vector<int64_t>& ids, cap::Completion& done) {
  if (py::isinstance<py::str>(item)) {
    text = item.cast<std::string>();
    return;
  }
  auto get = [&](const char* name) -> py::object {
    if (py::isinstance<py::dict>(item)) {
      auto d = py::reinterpret_borrow<py::dict>(item);
      return d.contains(name) ? py::object(d[name]) : py::none();
    }
    return py::hasattr(item, name) ? item.attr(name) : py::none();
  };
  py::object t = get("text"), i = get("token_ids"), f = get("finish_reason"), p = get("prompt_tokens"),
             c = get("completion_tokens");
  if (t.is_none() && i.is_none() && f.is_none())
    throw Error(ErrorCode::kModelError, "a text stream item must be a str, or a dict/object with 'text' (got " +
                                            std::string(py::str(py::type::of(item).attr("__name__"))) + ")");
  if (!t.is_none()) text = t.cast<std::string>();
  if (!i.is_none()) ids = i.cast<std::vector<int64_t>>();
  if (!f.is_none()) done.finish_reason = f.cast<std::string>();
  if (!p.is_none()) done.prompt_tokens = p.cast<int64_t>();
  if (!c.is_none()) done.completion_tokens = c.cast<int64_t>();
}

class PyInstance final : public core::Instance,
                         public cap::TextEmbedding,
                         public cap::TextToText,
                         public cap::ImageEmbedding,
                         public cap::Vision,
                         public cap::TextToImage,
                         public cap::Reranking {
 public:
  explicit PyInstance(py::object obj) : ref_(std::move(obj)) {}

  at::Tensor embed(const std::vector<std::string>& texts, const cap::EmbedOptions& options,
                   cap::RequestContext&) override {
    return call([&] {
      // Python models get task= only when one was asked for, so embed(texts) suffices otherwise.
      py::object out = options.task ? ref_.obj.attr("embed")(texts, py::arg("task") = *options.task)
                                    : ref_.obj.attr("embed")(texts);
      return numpy_to_tensor(out, at::kFloat, "embed() result");
    });
  }
  int64_t dimension() const override {
    return call([&] { return ref_.obj.attr("dimension").cast<int64_t>(); });
  }
  // score(pairs) -> (n,) or (n, labels) scores, already through the model's activation;
  // raw=True is passed only when asked for.
  at::Tensor score(const std::vector<cap::TextPair>& pairs, const cap::ScoreOptions& options,
                   cap::RequestContext&) override {
    return call([&] {
      py::list items;
      for (const auto& p : pairs) items.append(py::make_tuple(p.first, p.second));
      py::object out = options.raw ? ref_.obj.attr("score")(items, py::arg("raw") = true) : ref_.obj.attr("score")(items);
      at::Tensor t = numpy_to_tensor(out, at::kFloat, "score() result");
      return t.dim() == 1 ? t.unsqueeze(1) : t;
    });
  }
  at::Tensor embed_images(const std::vector<cap::Image>& images, const cap::ImageEmbedOptions&,
                          cap::RequestContext&) override {
    return call([&] {
      py::list arrays;
      for (auto& img : images) arrays.append(tensor_to_numpy(img));
      return numpy_to_tensor(ref_.obj.attr("embed_images")(arrays), at::kFloat, "embed_images() result");
    });
  }
  cap::Completion generate(const std::variant<std::string, std::vector<int64_t>>& prompt,
                           const cap::GenerationParams& params, const cap::TextSink& sink,
                           cap::RequestContext& ctx) override {
    return stream_text(sink, ctx, [&] {
      py::object p = std::holds_alternative<std::string>(prompt) ? py::cast(std::get<std::string>(prompt))
                                                                  : py::cast(std::get<std::vector<int64_t>>(prompt));
      return ref_.obj.attr("generate")(p, params_to_dict(params));
    });
  }
  // A Python-defined model has no chat template: it gets the question as asked,
  // with its one image (the protocol is describe(image, query, params)).
  cap::Completion describe(const std::vector<cap::Image>& images, const std::string& query,
                           const cap::GenerationParams& params, const cap::TextSink& sink,
                           cap::RequestContext& ctx) override {
    if (images.size() != 1)
      throw Error(ErrorCode::kInvalidInput,
                  "a Python-defined vision model takes one image per request, got " + std::to_string(images.size()));
    return stream_text(sink, ctx, [&] {
      return ref_.obj.attr("describe")(tensor_to_numpy(images.front()), query, params_to_dict(params));
    });
  }
  cap::Image generate_image(const std::string& prompt, const cap::ImageConfig& config,
                            const cap::ProgressSink& progress, cap::RequestContext& ctx) override {
    return call([&] {
      py::dict c;
      c["width"] = config.width;
      c["height"] = config.height;
      c["steps"] = config.steps;
      c["guidance_scale"] = config.guidance_scale;
      c["negative_prompt"] = config.negative_prompt;
      c["seed"] = config.seed;
      c["init_image"] = config.init_image ? py::object(tensor_to_numpy(*config.init_image)) : py::none();
      c["strength"] = config.strength;
      // The model calls this each step; raising Cancelled unwinds it when the request must stop.
      // It holds only `state`, so a model that keeps it past the request cannot reach freed memory.
      auto state = std::make_shared<ProgressReport>(progress, ctx);
      py::cpp_function report(
          [state](int64_t step, int64_t total, py::object preview) {
            if (!state->report(step, total, preview)) throw Error(ErrorCode::kCancelled, "image generation stopped");
          },
          py::arg("step"), py::arg("total"), py::arg("preview") = py::none());
      struct CloseOnExit {
        ProgressReport& state;
        ~CloseOnExit() { state.close(); }
      } close_on_exit{*state};
      py::object img = ref_.obj.attr("generate_image")(prompt, c, report);
      if (py::hasattr(img, "convert") && py::hasattr(img, "size"))  // a PIL image
        img = py::module_::import("numpy").attr("asarray")(img.attr("convert")("RGB"));
      return numpy_to_tensor(img, at::kByte, "generate_image() result");
    });
  }

 private:
  template <class Fn>
  auto call(Fn fn) const -> decltype(fn()) {
    NativeGil gil;
    try {
      return fn();
    } catch (py::error_already_set& e) {
      throw error_from_python(e, ErrorCode::kModelError);
    } catch (const py::cast_error& e) {
      throw Error(ErrorCode::kModelError, std::string("model returned a value of the wrong type: ") + e.what());
    }
  }

  template <class Start>
  cap::Completion stream_text(const cap::TextSink& sink, cap::RequestContext& ctx, Start start) {
    cap::Completion done;
    call([&] {
      py::iterator it = py::iter(start());
      while (true) {
        if (ctx.should_stop()) break;
        py::object item;
        {
          auto* raw = PyIter_Next(it.ptr());
          if (raw == nullptr) {
            if (PyErr_Occurred()) throw py::error_already_set();
            break;
          }
          item = py::reinterpret_steal<py::object>(raw);
        }
        std::string text;
        std::vector<int64_t> ids;
        read_text_item(item, text, ids, done);
        if (text.empty() && ids.empty()) continue;
        bool more;
        {
          GilRelease nogil;  // the sink may wait for a slow consumer
          more = sink(cap::TextPiece{std::move(text), std::move(ids), {}});
        }
        if (!more) break;
      }
      if (py::hasattr(it, "close")) it.attr("close")();  // runs the generator's finally blocks
      return 0;
    });
    return done;
  }

  PyRef ref_;
};

}  // namespace

void register_py_model(py::module_& m) {
  m.def(
      "python_model_spec",
      [](std::vector<std::string> capabilities, py::object loader, double memory_mb, std::vector<std::string> devices,
         int max_replicas, std::optional<double> keep_alive, bool pinned, size_t batch_budget) {
        auto ref = std::make_shared<PyRef>(std::move(loader));
        core::ModelSpec spec;
        spec.capabilities = std::move(capabilities);
        spec.memory_mb = memory_mb;
        spec.devices = std::move(devices);
        spec.max_replicas = max_replicas;
        spec.keep_alive_s = keep_alive;
        spec.pinned = pinned;
        spec.batch_budget = batch_budget;
        spec.loader = [ref](const std::string& device) -> std::shared_ptr<core::Instance> {
          if (!python_alive()) throw Error(ErrorCode::kShuttingDown, "the Python interpreter is shutting down");
          NativeGil gil;
          try {
            py::object obj = ref->obj(device);
            if (obj.is_none()) throw Error(ErrorCode::kSpawnFailed, "loader returned None");
            return std::make_shared<PyInstance>(std::move(obj));
          } catch (py::error_already_set& e) {
            throw error_from_python(e, ErrorCode::kSpawnFailed);
          }
        };
        return spec;
      },
      py::arg("capabilities"), py::arg("loader"), py::arg("memory_mb"), py::arg("devices"), py::arg("max_replicas"),
      py::arg("keep_alive"), py::arg("pinned"), py::arg("batch_budget"));
}

}  // namespace mpool::bindings
