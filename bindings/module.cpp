#include "module.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "mpool native core";
  mpool::bindings::register_errors(m);
  mpool::bindings::register_native_gil(m);
  mpool::bindings::register_streams(m);
  mpool::bindings::register_pool(m);
  mpool::bindings::register_py_model(m);
  mpool::bindings::register_testing(m);
  mpool::bindings::register_tokenizer(m);
  mpool::bindings::register_loading(m);
  mpool::bindings::register_models(m);
  mpool::bindings::register_preprocess(m);
  mpool::bindings::register_cpu(m);
}
