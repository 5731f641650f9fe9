#pragma once
// Taking the GIL on a thread that Python did not start (replica, maintenance and
// closing threads), safely across os.fork().
//
// Such a thread has no Python thread state, so each acquisition creates one and
// drops it after. Creating one takes the interpreter's thread-list lock without
// the GIL. Python 3.11 (before 3.11.8/3.12.1) does not reset that lock in a
// fork()ed child before taking it, so a fork made while a native thread is inside
// that creation leaves the child hung in os.fork() for good. Every creation here
// runs under one native mutex, which a before-fork hook takes (and the after-fork
// hooks release), so no fork happens in the middle of one. The mutex is held only
// for the creation, never while waiting for the GIL.
#include <Python.h>

namespace mpool::bindings {

/// Holds the GIL for its scope on any thread. On a thread with a Python thread
/// state (a Python thread, or a nested use) it is PyGILState_Ensure/Release; on
/// a native thread it creates the thread state under the fork guard and deletes
/// it at the end of the scope. Check python_alive() first: taking the GIL while
/// the interpreter finalizes would hang the thread.
class NativeGil {
 public:
  NativeGil();
  ~NativeGil();
  NativeGil(const NativeGil&) = delete;
  NativeGil& operator=(const NativeGil&) = delete;

 private:
  PyThreadState* created_ = nullptr;  ///< the thread state made for this scope, if any
  PyGILState_STATE state_{};
};

/// py::gil_scoped_release for every binding, safe at interpreter exit. Before
/// 3.14, CPython ends a thread (pthread_exit: a forced unwind) that takes the GIL
/// back once finalization has begun. py::gil_scoped_release's destructor is
/// noexcept, so that unwind aborted the process. This one lets it pass (up to
/// pybind11's dispatcher, which rethrows it), and parks for good a thread other
/// than the main one that already sees the interpreter finalizing, as 3.14 does.
class GilRelease {
 public:
  GilRelease() : state_(PyEval_SaveThread()) {}
  ~GilRelease() noexcept(false);
  GilRelease(const GilRelease&) = delete;
  GilRelease& operator=(const GilRelease&) = delete;

 private:
  PyThreadState* state_;
};

}  // namespace mpool::bindings
