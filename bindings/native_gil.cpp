#include "native_gil.h"

#include <pybind11/pybind11.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <new>
#include <thread>
#include <vector>

#include "convert.h"
#include "module.h"

namespace mpool::bindings {
namespace {

namespace py = pybind11;

// Guards the creation of thread states against fork(). Reconstructed in the
// child, whose copy is held by the thread that forked (a locked copy of a mutex
// is not portable to unlock after fork).
alignas(std::mutex) unsigned char g_guard_storage[sizeof(std::mutex)];
std::mutex* g_guard = new (g_guard_storage) std::mutex();

}  // namespace

namespace {
// threading.main_thread()'s ident, the thread that finalizes the interpreter.
std::atomic<unsigned long> g_main_thread{0};
}  // namespace

GilRelease::~GilRelease() noexcept(false) {
  if (!python_alive() && PyThread_get_thread_ident() != g_main_thread.load(std::memory_order_relaxed)) {
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  }
  PyEval_RestoreThread(state_);
}

NativeGil::NativeGil() {
  if (PyGILState_GetThisThreadState() != nullptr) {
    state_ = PyGILState_Ensure();  // this thread has a state: no creation, no thread-list lock
    return;
  }
  {
    std::lock_guard<std::mutex> lock(*g_guard);
    created_ = PyThreadState_New(PyInterpreterState_Main());
  }
  if (created_ == nullptr) throw std::bad_alloc();
  PyEval_RestoreThread(created_);
}

NativeGil::~NativeGil() {
  if (created_ == nullptr) {
    PyGILState_Release(state_);
    return;
  }
  PyThreadState_Clear(created_);
  PyThreadState_DeleteCurrent();  // and releases the GIL
}

namespace {

// A few native threads that take and drop the GIL as fast as they can, creating
// a thread state each time: what replica threads running a Python model do, at
// its worst. Tests fork() while these run.
class GilChurn {
 public:
  explicit GilChurn(int threads) {
    for (int i = 0; i < threads; ++i)
      threads_.emplace_back([this] {
        while (!stop_.load(std::memory_order_relaxed)) {
          if (!python_alive()) return;
          NativeGil gil;
          acquisitions_.fetch_add(1, std::memory_order_relaxed);
        }
      });
  }
  ~GilChurn() { stop(); }
  void stop() {
    stop_ = true;
    GilRelease nogil;
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }
  long acquisitions() const { return acquisitions_.load(); }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<long> acquisitions_{0};
  std::vector<std::thread> threads_;
};

}  // namespace

void register_native_gil(py::module_& m) {
  g_main_thread.store(py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>());
  // Python's own hooks, so they run before CPython takes its runtime locks for
  // the fork (3.13 takes the thread-list lock itself before fork()).
  auto os = py::module_::import("os");
  if (py::hasattr(os, "register_at_fork")) {
    os.attr("register_at_fork")(
        // With the GIL held: a creation in progress never waits for it, and a
        // second forking thread cannot get between this lock and the fork.
        py::arg("before") = py::cpp_function([] { g_guard->lock(); }),
        py::arg("after_in_parent") = py::cpp_function([] { g_guard->unlock(); }),
        py::arg("after_in_child") = py::cpp_function([] { g_guard = new (g_guard_storage) std::mutex(); }));
  }
  py::class_<GilChurn>(m, "_GilChurn")
      .def(py::init<int>(), py::arg("threads"))
      .def("stop", &GilChurn::stop)
      .def_property_readonly("acquisitions", &GilChurn::acquisitions);
}

}  // namespace mpool::bindings
