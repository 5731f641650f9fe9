#include "module.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "mpool native core";
  mpool::bindings::register_errors(m);
  mpool::bindings::register_loading(m);
}
