# libtorch comes from the torch package installed in the build's Python, so the
# extension always matches the user's torch. pip must run with
# --no-build-isolation, or this would find an isolated (different) torch.
find_package(Python 3.10 REQUIRED COMPONENTS Interpreter Development.Module)
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
  OUTPUT_VARIABLE MPOOL_TORCH_CMAKE_PREFIX OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE MPOOL_TORCH_RESULT ERROR_QUIET)
if(NOT MPOOL_TORCH_RESULT EQUAL 0)
  message(FATAL_ERROR "`import torch` failed in ${Python_EXECUTABLE}. Install torch first and build "
                      "with `pip install --no-build-isolation .` so the build sees it.")
endif()
list(APPEND CMAKE_PREFIX_PATH "${MPOOL_TORCH_CMAKE_PREFIX}")
# TorchConfig's optional CUDA probing is noisy and irrelevant for CPU wheels; CUDA
# is detected at run time instead.
find_package(Torch REQUIRED)
get_filename_component(MPOOL_TORCH_LIB_DIR "${TORCH_LIBRARY}" DIRECTORY)

# Only the libraries we link: torch_python is not needed because no torch Python
# object crosses our boundary, which is what lets `import mpool` work without
# `import torch` first.
add_library(mpool_torch INTERFACE)
target_link_libraries(mpool_torch INTERFACE torch)
target_compile_options(mpool_torch INTERFACE ${TORCH_CXX_FLAGS})
