// Maps mpool::Error codes once to the Python classes of mpool/errors.py.
#include <Python.h>

#include "module.h"
#include "mpool/base/error.h"

namespace py = pybind11;

namespace mpool::bindings {
namespace {

// Strong reference, deliberately never released: the translator may run until the
// interpreter is gone, and a static py::object would decref after finalization.
PyObject* g_classes = nullptr;

PyObject* class_for(ErrorCode code) {
  if (g_classes == nullptr) return PyExc_RuntimeError;
  PyObject* cls = PyDict_GetItemString(g_classes, error_code_name(code));  // borrowed
  return cls != nullptr ? cls : PyExc_RuntimeError;
}

}  // namespace

void register_errors(py::module_& m) {
  m.def(
      "_set_error_classes",
      [](py::dict classes) {
        Py_XDECREF(g_classes);
        g_classes = classes.release().ptr();
      },
      "Installs the Python exception class for each error code name.");
  m.def("_error_code_names", [] {
    py::list names;
    for (int c = 0; c <= static_cast<int>(ErrorCode::kInternal); ++c)
      names.append(error_code_name(static_cast<ErrorCode>(c)));
    return names;
  });
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      PyErr_SetString(class_for(e.code()), e.what());
    } catch (const py::cast_error& e) {
      // A Python value a binding could not convert (the Python layer validates
      // first; this is the safety net): a bad argument, not a bug in the pool.
      PyErr_SetString(class_for(ErrorCode::kInvalidInput),
                      (std::string("invalid argument: ") + e.what()).c_str());
    }
  });
}

}  // namespace mpool::bindings
