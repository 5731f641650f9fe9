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
// Set by the exit hook (after the live pools closed): from then on a thread
// other than the main one parks instead of taking the GIL.
std::atomic<bool> g_exiting{false};
// Threads between announcing a GIL acquisition and having it.
std::atomic<int> g_taking{0};

bool on_main_thread() { return PyThread_get_thread_ident() == g_main_thread.load(); }

[[noreturn]] void park_for_good() {
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

// Before 3.14, CPython ends (pthread_exit: a forced unwind through our frames,
// which aborts the process) a thread that takes the GIL once finalization began,
// also one already waiting for it. So every acquisition is announced first: the
// exit hook sets g_exiting and then lets every announced one finish, and one
// announced after it parks. A thread that sees the interpreter finalizing parks.
void announce_take() {
  g_taking.fetch_add(1);
  if ((g_exiting.load() || !python_alive()) && !on_main_thread()) {
    g_taking.fetch_sub(1);
    park_for_good();
  }
}

void taken() { g_taking.fetch_sub(1); }

// The exit hook: runs after mpool.pool's (atexit is last in, first out), while
// threads may still take the GIL.
void let_gil_takers_finish() {
  g_exiting.store(true);
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (g_taking.load() > 0 && std::chrono::steady_clock::now() < until) {
    PyThreadState* self = PyEval_SaveThread();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    PyEval_RestoreThread(self);
  }
}
}  // namespace

GilRelease::~GilRelease() noexcept(false) {
  announce_take();
  PyEval_RestoreThread(state_);
  taken();
}

NativeGil::NativeGil() {
  announce_take();
  if (PyGILState_GetThisThreadState() != nullptr) {
    state_ = PyGILState_Ensure();  // this thread has a state: no creation, no thread-list lock
    taken();
    return;
  }
  {
    std::lock_guard<std::mutex> lock(*g_guard);
    created_ = PyThreadState_New(PyInterpreterState_Main());
  }
  if (created_ == nullptr) {
    taken();
    throw std::bad_alloc();
  }
  PyEval_RestoreThread(created_);
  taken();
}

NativeGil::~NativeGil() {
  // Not holding the GIL here means CPython is ending this thread (it ran Python
  // code that gave the GIL up and found the interpreter finalizing) and the
  // unwind is passing through: leave the thread state alone, as CPython does.
  if (!PyGILState_Check()) return;
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
  // Registered when _core is imported, before mpool.pool registers the hook that
  // closes live pools: so it runs after that one.
  py::module_::import("atexit").attr("register")(py::cpp_function([] { let_gil_takers_finish(); }));
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
