// The one file of this library compiled with OpenMP (see CMakeLists.txt), so
// that ATen's inline at::parallel_for here is its OpenMP loop and runs on the
// calling thread's torch team. Elsewhere, compiled without OpenMP, the same
// inline function runs serially. No libgomp is linked for it: its symbols bind
// at load to the copy libtorch depends on, so the process keeps one team a
// thread.
#include <ATen/Parallel.h>

#include <cstdint>
#include <functional>

namespace mpool::nn::kernels::detail {

bool torch_team_parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
#if defined(_OPENMP) && AT_PARALLEL_OPENMP
  at::parallel_for(0, n, grain, body);
  return true;
#else
  (void)n, (void)grain, (void)body;
  return false;
#endif
}

}  // namespace mpool::nn::kernels::detail
