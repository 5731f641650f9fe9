// The Pool class and model specs. Python-side validation happens in
// mpool/pool.py; this file converts, releases the GIL and submits.
#include <pybind11/functional.h>

#include <algorithm>
#include <sstream>

#include "convert.h"
#include "module.h"
#include "mpool/capabilities/generation_params.h"
#include "mpool/capabilities/requests.h"
#include "mpool/core/pool.h"
#include "mpool/imageio/fetch.h"
#include "mpool/nn/kernels.h"

#include <condition_variable>
#include <mutex>
#include <thread>
#if defined(__linux__)
#include <pthread.h>
#endif

namespace mpool::bindings {

py::object wrap_future(std::shared_ptr<core::Pending<at::Tensor>> p);
py::object wrap_load_future(std::shared_ptr<core::Pending<bool>> p);
py::object wrap_text_stream(std::shared_ptr<capabilities::TextStream> c);
py::object wrap_image_stream(std::shared_ptr<capabilities::ImageStream> c);

namespace {

namespace cap = capabilities;

core::RequestOptions request_options(std::optional<double> timeout) { return core::RequestOptions{timeout}; }

std::vector<cap::TextPair> to_text_pairs(std::vector<std::pair<std::string, std::string>> pairs) {
  std::vector<cap::TextPair> out;
  out.reserve(pairs.size());
  for (auto& [a, b] : pairs) out.push_back(cap::TextPair{std::move(a), std::move(b)});
  return out;
}

// An off-loop image request (asyncio's) whose awaiting task was cancelled while
// its images were fetched: `cancelled()` says so, and the request is never
// queued. Called without the GIL; takes it for the call.
void refuse_if_cancelled(const py::object& cancelled) {
  py::gil_scoped_acquire gil;
  if (!cancelled.is_none() && cancelled().cast<bool>())
    throw Error(ErrorCode::kCancelled, "request cancelled while its images were fetched");
}

// Image requests: fetching and decoding count against the request's deadline.
// The fetch may take min(fetch_timeout, the request's timeout), and the request
// then gets what is left of its timeout. A request whose deadline passed while
// its images were fetched is a Timeout, whatever the fetch itself reported (a
// fetch that fails earlier, a 404 or its own fetch_timeout, is InvalidInput).
class ImageDeadline {
 public:
  /// `timeout_s`: the request's effective timeout (Python passes the pool's when unset).
  /// `allow_private_urls`, `max_image_bytes`: the Python Pool's options.
  ImageDeadline(double timeout_s, double fetch_timeout_s, bool allow_private_urls, size_t max_image_bytes)
      : start_(core::Clock::now()),
        timeout_s_(timeout_s),
        fetch_timeout_s_(fetch_timeout_s),
        allow_private_urls_(allow_private_urls),
        max_image_bytes_(max_image_bytes) {
    core::check_duration("timeout", timeout_s);
    core::check_duration("fetch_timeout", fetch_timeout_s);
    check(max_image_bytes > 0, ErrorCode::kInvalidInput, "max_image_bytes must be > 0");
  }

  /// Decodes (and fetches) without the GIL; call with it released.
  std::vector<cap::Image> decode(const std::vector<ImageInput>& inputs) const {
    std::vector<cap::Image> images;
    try {
      images = decode_images(inputs, ImageFetchOptions{fetch_limit(), allow_private_urls_, max_image_bytes_});
    } catch (const Error&) {
      // libcurl counts whole milliseconds from its own start, so a fetch cut off by
      // the request's deadline may report a hair before our clock reaches it.
      if (left() <= kClockSlackS) throw timeout_error();
      throw;
    }
    if (left() <= 0) throw timeout_error();
    return images;
  }

  /// The request's options: what is left of its timeout.
  core::RequestOptions remaining() const {
    double l = left();
    if (l <= 0) throw timeout_error();
    return core::RequestOptions{l};
  }

 private:
  // libcurl takes whole milliseconds in a long, and 0 means no limit: keep the
  // limit within [1 ms, 1e6 s] (an infinite request timeout leaves fetch_timeout).
  static constexpr double kMinFetchS = 0.001, kMaxFetchS = 1e6;
  static constexpr double kClockSlackS = 0.005;

  double fetch_limit() const { return std::clamp(std::min(fetch_timeout_s_, timeout_s_), kMinFetchS, kMaxFetchS); }
  double left() const {
    return timeout_s_ - std::chrono::duration<double>(core::Clock::now() - start_).count();
  }
  Error timeout_error() const {
    std::ostringstream msg;
    msg << "fetching and decoding the image(s) took the request's whole timeout (" << timeout_s_ << " s)";
    return Error(ErrorCode::kTimeout, msg.str());
  }

  core::Clock::time_point start_;
  double timeout_s_;
  double fetch_timeout_s_;
  bool allow_private_urls_;
  size_t max_image_bytes_;
};

py::dict latency(const core::LatencySummary& l) {
  py::dict d;
  d["p50_ms"] = l.p50_ms;
  d["p95_ms"] = l.p95_ms;
  d["count"] = l.count;
  return d;
}

py::dict model_dict(const core::ModelStats& s) {
  py::dict d;
  d["key"] = s.key;
  d["capabilities"] = s.capabilities;
  d["devices"] = s.devices;
  d["state"] = s.state;
  d["pinned"] = s.pinned;
  d["memory_mb"] = s.memory_mb;
  d["keep_alive"] = s.keep_alive_s;
  d["idle_s"] = s.idle_s;
  d["max_replicas"] = s.max_replicas;
  // A fixed count, or None for the core share (decided per job: see replica_intra_op_threads).
  d["intra_op_threads"] = s.intra_op_threads > 0 ? py::cast(s.intra_op_threads) : py::none();
  d["replica_intra_op_threads"] = s.replica_threads;
  d["replicas"] = s.replicas;
  d["busy_replicas"] = s.busy_replicas;
  d["running"] = s.running;
  d["usage"] = s.usage;
  d["queued"] = s.queued;
  d["replicas_per_device"] = s.replicas_per_device;
  d["reserved_mb"] = s.reserved_mb_per_device;
  d["last_spawn_error"] = s.last_spawn_error.empty() ? py::none() : py::cast(s.last_spawn_error);
  const auto& m = s.metrics;
  py::dict counts;
  counts["requests"] = m.requests;
  counts["succeeded"] = m.succeeded;
  counts["errors"] = m.errors;
  counts["timeouts"] = m.timeouts;
  counts["rejections"] = m.rejections;
  counts["cancellations"] = m.cancellations;
  counts["replicas_spawned"] = m.replicas_spawned;
  counts["replicas_evicted"] = m.replicas_evicted;
  counts["spawn_failures"] = m.spawn_failures;
  counts["replica_deaths"] = m.replica_deaths;
  counts["inputs"] = m.inputs;
  d["counts"] = counts;
  py::dict throughput;
  throughput["inputs_per_s"] = m.inputs_per_s;
  throughput["tokens_per_s"] = m.tokens_per_s;
  d["throughput"] = throughput;
  d["queue_time"] = latency(m.queue);
  d["compute_time"] = latency(m.compute);
  d["time_to_first_chunk"] = latency(m.first_chunk);
  return d;
}

py::dict device_dict(const core::DeviceMemory& dm) {
  py::dict d;
  d["device"] = dm.device;
  d["total_mb"] = dm.total_mb;
  d["budget_mb"] = dm.budget_mb;
  d["committed_mb"] = dm.committed_mb;
  d["os_free_mb"] = dm.os_free_mb;
  d["available_mb"] = dm.available_mb;
  d["pressure"] = core::pressure_name(dm.pressure);
  return d;
}

// Destroying a pool joins its replica threads, which may need the GIL (Python
// models): let go of it first, as CTranslate2 learned the hard way. When the last
// reference drops on one of the pool's own threads (a done-callback, a model
// method, a __del__ running there), that thread cannot join itself: a fresh
// thread does the shutdown while this one returns to its loop and exits.
// Pools being shut down that way; interpreter exit waits for them (see
// wait_for_closing_pools) so that none of their threads takes the GIL while the
// interpreter finalizes.
std::mutex closing_mu;
std::condition_variable closing_cv;
int closing = 0;

struct ReleaseGilDelete {
  void operator()(core::Pool* pool) const {
    if (pool->on_own_thread()) {
      {
        std::lock_guard lock(closing_mu);
        ++closing;
      }
      std::thread([pool] {
#if defined(__linux__)
        pthread_setname_np(pthread_self(), "mpool-closer");
#endif
        delete pool;
        {
          std::lock_guard lock(closing_mu);
          --closing;
        }
        closing_cv.notify_all();
      }).detach();
      return;
    }
    if (PyGILState_Check()) {
      GilRelease nogil;
      delete pool;
    } else {
      delete pool;
    }
  }
};
using PoolHolder = std::unique_ptr<core::Pool, ReleaseGilDelete>;

}  // namespace

void register_pool(py::module_& m) {
  m.def(
      "_generation_param_rules",
      [] {
        py::list rules;
        for (const cap::GenerationParamRule& r : cap::generation_param_rules()) {
          py::dict d;
          d["name"] = std::string(r.name);
          switch (r.kind) {
            case cap::GenerationParamKind::kInteger: d["kind"] = "integer"; break;
            case cap::GenerationParamKind::kReal: d["kind"] = "real"; break;
            case cap::GenerationParamKind::kFlag: d["kind"] = "flag"; break;
            case cap::GenerationParamKind::kStopStrings: d["kind"] = "stop_strings"; break;
            case cap::GenerationParamKind::kTokenIds: d["kind"] = "token_ids"; break;
          }
          d["min_int"] = r.min_int;
          d["max_int"] = r.max_int;
          d["lo"] = r.lo;
          d["hi"] = r.hi;
          d["lo_open"] = r.lo_open;
          d["hi_open"] = r.hi_open;
          d["what"] = cap::describe(r);
          rules.append(std::move(d));
        }
        return rules;
      },
      "The generation parameters and the values each accepts (the table native models check requests with).");
  m.def(
      "_wait_for_closing_pools",
      [](double timeout_s) {
        core::check_duration("timeout", timeout_s);
        std::unique_lock lock(closing_mu);
        return closing_cv.wait_for(lock, core::to_duration(timeout_s), [] { return closing == 0; });
      },
      py::arg("timeout"), py::call_guard<GilRelease>(),
      "Waits until pools whose last reference dropped on one of their own threads are shut down.");
  m.def("_drain_image_releases", &drain_released_images,
        "Releases the image arrays that finished requests shared (done at each image request, pool shutdown "
        "and exit); returns how many.");
  m.def("_set_test_allowed_endpoint", &imageio::set_test_allowed_endpoint, py::arg("endpoint"),
        "Tests only: connections to this 'ip:port' pass the private-address check; '' clears.");
  py::module_::import("atexit").attr("register")(py::cpp_function([] { drain_released_images(); }));
  py::class_<core::Progress, std::shared_ptr<core::Progress>>(
      m, "Progress", "Inputs done of a bulk embedding or scoring call, for a progress bar (pass it to embed_async or score_async).")
      .def(py::init<size_t>(), py::arg("total"))
      .def_property_readonly("total", &core::Progress::total)
      .def_property_readonly("done", &core::Progress::done)
      .def_property_readonly("finished", &core::Progress::finished)
      .def(
          "wait",
          [](const core::Progress& p, size_t seen, double timeout) {
            core::check_duration("timeout", timeout);
            return p.wait_past(seen, timeout);
          },
          py::arg("seen"), py::arg("timeout"), py::call_guard<GilRelease>(),
          "Waits (GIL released) until more than `seen` inputs are done, the call ended, or `timeout` s; "
          "returns the inputs done.");
  py::class_<core::ModelSpec>(m, "ModelSpec", "How to load a model, where, and how much memory a replica takes.")
      .def_readonly("capabilities", &core::ModelSpec::capabilities)
      .def_readwrite("memory_mb", &core::ModelSpec::memory_mb)
      .def_readwrite("devices", &core::ModelSpec::devices)
      .def_readwrite("max_replicas", &core::ModelSpec::max_replicas)
      .def_readwrite("intra_op_threads", &core::ModelSpec::intra_op_threads)
      .def_readwrite("keep_alive", &core::ModelSpec::keep_alive_s)
      .def_readwrite("pinned", &core::ModelSpec::pinned)
      .def_readwrite("batch_budget", &core::ModelSpec::batch_budget)
      .def_readwrite("defaults", &core::ModelSpec::defaults)
      .def("copy", [](const core::ModelSpec& spec) { return core::ModelSpec(spec); },
           "A copy to change without touching this spec (the loader is shared).");

  py::class_<core::Pool, PoolHolder>(m, "Pool", "The native pool; use mpool.Pool.")
      .def(py::init([](double memory_fraction, double reserve_mb, std::map<std::string, double> budget_mb,
                       double request_timeout, double keep_alive, size_t max_queue, int cold_start_replicas,
                       double scale_up_queue_depth, double scale_up_after, double scale_down_after,
                       double maintenance_interval, int intra_op_threads) {
             core::PoolOptions o;
             o.memory.memory_fraction = memory_fraction;
             o.memory.reserve_mb = reserve_mb;
             o.memory.budget_mb = std::move(budget_mb);
             o.request_timeout_s = request_timeout;
             o.keep_alive_s = keep_alive;
             o.max_queue = max_queue;
             o.cold_start_replicas = cold_start_replicas;
             o.scale_up_queue_depth = scale_up_queue_depth;
             o.scale_up_after_s = scale_up_after;
             o.scale_down_after_s = scale_down_after;
             o.maintenance_interval_s = maintenance_interval;
             o.intra_op_threads = intra_op_threads;
             // Each replica thread runs torch with its own intra-op count (this thread only).
             o.replica_thread_setup = [](int threads) { nn::kernels::set_thread_intra_op_threads(threads); };
             return PoolHolder(new core::Pool(std::move(o)));
           }),
           py::arg("memory_fraction"), py::arg("reserve_mb"), py::arg("budget_mb"), py::arg("request_timeout"),
           py::arg("keep_alive"), py::arg("max_queue"), py::arg("cold_start_replicas"),
           py::arg("scale_up_queue_depth"), py::arg("scale_up_after"), py::arg("scale_down_after"),
           py::arg("maintenance_interval"), py::arg("intra_op_threads") = 0)
      .def("register", &core::Pool::register_model, py::arg("key"), py::arg("spec"),
           py::call_guard<GilRelease>())
      .def("unregister", &core::Pool::unregister_model, py::arg("key"), py::arg("timeout"),
           py::call_guard<GilRelease>())
      .def("has_model", &core::Pool::has_model, py::call_guard<GilRelease>())
      .def(
          "load",
          [](core::Pool& pool, const std::string& key, std::optional<double> timeout) {
            std::shared_ptr<core::Pending<bool>> p;
            {
              GilRelease nogil;
              p = pool.load_async(key, request_options(timeout));
            }
            wait_interruptibly(*p);  // Ctrl-C cancels the load request
          },
          py::arg("key"), py::arg("timeout") = py::none())
      .def(
          "load_async",
          [](core::Pool& pool, const std::string& key, std::optional<double> timeout) {
            std::shared_ptr<core::Pending<bool>> p;
            {
              GilRelease nogil;
              p = pool.load_async(key, request_options(timeout));
            }
            return wrap_load_future(std::move(p));
          },
          py::arg("key"), py::arg("timeout") = py::none())
      .def("unload", &core::Pool::unload, py::arg("key"), py::arg("timeout"),
           py::call_guard<GilRelease>())
      .def("set_pinned", &core::Pool::set_pinned, py::call_guard<GilRelease>())
      .def("set_keep_alive", &core::Pool::set_keep_alive, py::call_guard<GilRelease>())
      .def("set_memory_budget", &core::Pool::set_memory_budget, py::arg("device"), py::arg("mb"),
           py::call_guard<GilRelease>())
      .def(
          "shutdown",
          [](core::Pool& pool, double drain_timeout) {
            {
              GilRelease nogil;
              pool.shutdown(drain_timeout);
            }
            drain_released_images();  // the arrays the finished requests shared
          },
          py::arg("drain_timeout"))
      .def("shutting_down", &core::Pool::shutting_down, py::call_guard<GilRelease>())  // takes the pool mutex
      .def(
          "_abandon_after_fork",
          // In a fork()ed child this pool's threads do not exist and its mutexes may be
          // held forever, so its destructor (which shuts down and joins) would hang.
          // One reference that is never dropped keeps it from ever running.
          [](py::object self) { self.inc_ref(); },
          "In a fork()ed child: never destroy this pool (its threads live in the parent only).")
      .def("stats", [](const core::Pool& pool) {
        core::PoolStats s;
        {
          GilRelease nogil;
          s = pool.stats();
        }
        py::dict out, models;
        py::list devices;
        for (auto& ms : s.models) models[ms.key.c_str()] = model_dict(ms);
        for (auto& dm : s.devices) devices.append(device_dict(dm));
        out["models"] = models;
        out["devices"] = devices;
        out["threads"] = s.threads;
        return out;
      })
      .def("embed_async",
           [](core::Pool& pool, const std::string& key, std::vector<std::string> texts, std::optional<std::string> task,
              std::optional<double> timeout, bool truncate, std::optional<bool> normalize,
              std::optional<int64_t> dimensions, std::shared_ptr<core::Progress> progress) {
             std::shared_ptr<core::Pending<at::Tensor>> p;
             {
               GilRelease nogil;
               cap::BulkOptions bulk;
               bulk.progress = std::move(progress);
               p = cap::embed(pool, key, std::move(texts), cap::EmbedOptions{std::move(task), truncate, normalize, dimensions},
                              request_options(timeout), bulk);
             }
             return wrap_future(std::move(p));
           },
           py::arg("key"), py::arg("texts"), py::arg("task") = py::none(), py::arg("timeout") = py::none(),
           py::arg("truncate") = true, py::arg("normalize") = py::none(), py::arg("dimensions") = py::none(),
           py::arg("progress") = py::none())
      .def("embed",
           [](core::Pool& pool, const std::string& key, std::vector<std::string> texts, std::optional<std::string> task,
              std::optional<double> timeout, bool truncate, std::optional<bool> normalize,
              std::optional<int64_t> dimensions) {
             std::shared_ptr<core::Pending<at::Tensor>> p;
             {
               GilRelease nogil;
               p = cap::embed(pool, key, std::move(texts), cap::EmbedOptions{std::move(task), truncate, normalize, dimensions},
                              request_options(timeout));
             }
             return tensor_to_numpy(wait_interruptibly(*p));
           },
           py::arg("key"), py::arg("texts"), py::arg("task") = py::none(), py::arg("timeout") = py::none(),
           py::arg("truncate") = true, py::arg("normalize") = py::none(), py::arg("dimensions") = py::none())
      .def("score_async",
           [](core::Pool& pool, const std::string& key, std::vector<std::pair<std::string, std::string>> pairs,
              std::optional<double> timeout, bool truncate, bool raw, std::shared_ptr<core::Progress> progress) {
             std::shared_ptr<core::Pending<at::Tensor>> p;
             {
               GilRelease nogil;
               cap::BulkOptions bulk;
               bulk.progress = std::move(progress);
               p = cap::score(pool, key, to_text_pairs(std::move(pairs)), cap::ScoreOptions{truncate, raw},
                              request_options(timeout), bulk);
             }
             return wrap_future(std::move(p));
           },
           py::arg("key"), py::arg("pairs"), py::arg("timeout") = py::none(), py::arg("truncate") = true,
           py::arg("raw") = false, py::arg("progress") = py::none())
      .def("score",
           [](core::Pool& pool, const std::string& key, std::vector<std::pair<std::string, std::string>> pairs,
              std::optional<double> timeout, bool truncate, bool raw) {
             std::shared_ptr<core::Pending<at::Tensor>> p;
             {
               GilRelease nogil;
               p = cap::score(pool, key, to_text_pairs(std::move(pairs)), cap::ScoreOptions{truncate, raw},
                              request_options(timeout));
             }
             return tensor_to_numpy(wait_interruptibly(*p));
           },
           py::arg("key"), py::arg("pairs"), py::arg("timeout") = py::none(), py::arg("truncate") = true,
           py::arg("raw") = false)
      .def("embed_images_async",
           [](core::Pool& pool, const std::string& key, py::list items, double timeout, double fetch_timeout,
              bool allow_private_urls, size_t max_image_bytes, std::optional<bool> normalize, bool explicit_timeout,
              std::shared_ptr<core::Progress> progress, py::object cancelled) {
             ImageDeadline deadline(timeout, fetch_timeout, allow_private_urls, max_image_bytes);
             auto inputs = image_inputs(items);
             std::shared_ptr<core::Pending<at::Tensor>> p;
             {
               GilRelease nogil;
               auto images = deadline.decode(inputs);
               refuse_if_cancelled(cancelled);
               cap::BulkOptions bulk;
               bulk.whole_call_timeout = explicit_timeout;
               bulk.progress = std::move(progress);
               p = cap::embed_images(pool, key, std::move(images), cap::ImageEmbedOptions{normalize},
                                     deadline.remaining(), bulk);
             }
             return wrap_future(std::move(p));
           },
           py::arg("key"), py::arg("items"), py::arg("timeout"), py::arg("fetch_timeout"),
           py::arg("allow_private_urls"), py::arg("max_image_bytes"), py::arg("normalize") = py::none(),
           py::arg("explicit_timeout") = true, py::arg("progress") = py::none(), py::arg("cancelled") = py::none(),
           "explicit_timeout: `timeout` is the caller's own and bounds the whole call; false: it is the pool's "
           "default, which then bounds each sub-batch of a split call. cancelled: a callable asked once the "
           "images are decoded; true: the request is not queued (Cancelled).")
      .def("zero_shot_async",
           [](core::Pool& pool, const std::string& key, py::list items, std::vector<std::string> texts,
              double timeout, double fetch_timeout, bool allow_private_urls, size_t max_image_bytes,
              py::object cancelled) {
             ImageDeadline deadline(timeout, fetch_timeout, allow_private_urls, max_image_bytes);
             auto inputs = image_inputs(items);
             std::shared_ptr<core::Pending<at::Tensor>> p;
             {
               GilRelease nogil;
               auto images = deadline.decode(inputs);
               refuse_if_cancelled(cancelled);
               p = cap::zero_shot(pool, key, std::move(images), std::move(texts), deadline.remaining());
             }
             return wrap_future(std::move(p));
           },
           py::arg("key"), py::arg("items"), py::arg("texts"), py::arg("timeout"), py::arg("fetch_timeout"),
           py::arg("allow_private_urls"), py::arg("max_image_bytes"), py::arg("cancelled") = py::none())
      .def("generate",
           [](core::Pool& pool, const std::string& key, py::object prompt, py::dict params,
              std::optional<double> timeout) {
             std::variant<std::string, std::vector<int64_t>> p;
             if (py::isinstance<py::str>(prompt))
               p = prompt.cast<std::string>();
             else
               p = prompt.cast<std::vector<int64_t>>();
             auto gp = params_from_dict(params);
             std::shared_ptr<cap::TextStream> s;
             {
               GilRelease nogil;
               s = cap::generate(pool, key, std::move(p), std::move(gp), request_options(timeout));
             }
             return wrap_text_stream(std::move(s));
           })
      .def("describe",
           [](core::Pool& pool, const std::string& key, py::list items, std::string prompt, py::dict params,
              double timeout, double fetch_timeout, bool allow_private_urls, size_t max_image_bytes) {
             ImageDeadline deadline(timeout, fetch_timeout, allow_private_urls, max_image_bytes);
             auto inputs = image_inputs(items);
             if (inputs.empty()) throw Error(ErrorCode::kInvalidInput, "describe() needs at least one image");
             auto gp = params_from_dict(params);
             std::shared_ptr<cap::TextStream> s;
             {
               GilRelease nogil;
               auto images = deadline.decode(inputs);
               s = cap::describe(pool, key, std::move(images), std::move(prompt), std::move(gp), deadline.remaining());
             }
             return wrap_text_stream(std::move(s));
           })
      .def("generate_image",
           [](core::Pool& pool, const std::string& key, std::string prompt, int64_t width, int64_t height,
              int64_t steps, double guidance_scale, double true_cfg_scale, std::optional<std::string> negative_prompt,
              std::optional<uint64_t> seed, double strength, py::object latents, std::vector<int64_t> skip_layers,
              double skip_layer_scale, double skip_layer_start, double skip_layer_stop,
              std::optional<int64_t> max_sequence_length, bool previews, bool float_output, py::list init_image,
              double timeout, double fetch_timeout, bool allow_private_urls, size_t max_image_bytes) {
             ImageDeadline deadline(timeout, fetch_timeout, allow_private_urls, max_image_bytes);
             cap::ImageConfig c;
             if (!latents.is_none()) c.latents = numpy_to_tensor(latents, at::kFloat, "latents");
             c.skip_layers = std::move(skip_layers);
             c.skip_layer_scale = skip_layer_scale;
             c.skip_layer_start = skip_layer_start;
             c.skip_layer_stop = skip_layer_stop;
             c.max_sequence_length = max_sequence_length;
             c.previews = previews;
             c.float_output = float_output;
             c.width = width;
             c.height = height;
             c.steps = steps;
             c.guidance_scale = guidance_scale;
             c.true_cfg_scale = true_cfg_scale;
             c.negative_prompt = std::move(negative_prompt);
             c.seed = seed;
             c.strength = strength;
             auto inputs = image_inputs(init_image);
             if (inputs.size() > 1)
               throw Error(ErrorCode::kInvalidInput, "generate_image() takes at most one init_image");
             std::shared_ptr<cap::ImageStream> s;
             {
               GilRelease nogil;
               if (!inputs.empty()) c.init_image = std::move(deadline.decode(inputs).front());
               s = cap::generate_image(pool, key, std::move(prompt), std::move(c), deadline.remaining());
             }
             return wrap_image_stream(std::move(s));
           });
}

}  // namespace mpool::bindings
