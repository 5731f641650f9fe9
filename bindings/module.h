#pragma once
// Each binding file registers one concept on the extension module; module.cpp
// calls them in order. Every blocking call they bind releases the GIL.
#include <pybind11/pybind11.h>

namespace mpool::bindings {

void register_errors(pybind11::module_& m);
void register_native_gil(pybind11::module_& m);
void register_streams(pybind11::module_& m);
void register_pool(pybind11::module_& m);
void register_py_model(pybind11::module_& m);
void register_testing(pybind11::module_& m);
void register_tokenizer(pybind11::module_& m);
void register_loading(pybind11::module_& m);
void register_models(pybind11::module_& m);
void register_preprocess(pybind11::module_& m);
void register_cpu(pybind11::module_& m);

}  // namespace mpool::bindings
