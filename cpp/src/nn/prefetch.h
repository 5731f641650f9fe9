#pragma once
// The float32 and bfloat16 weight-row kernels' software prefetch of the next
// pass's rows. Into L2 (T1), not L1 (T0): streaming 96 MiB of weights on this
// project's AMD Zen 4 host, one thread, T0 left 8-row bf16 products at 8.6 GB/s
// and T1 gave 14.6; 4-row bf16 8.6 -> 20.5, 8-row float32 18.5 -> 27.4
// (docs/benchmarks.md, "Prefetching weights into L2"). The int8 row kernels
// keep T0: T1 measured 6% slower for their one-row decode there.
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mpool::nn::kernels {

inline void prefetch_weights(const void* p) {
#if defined(__x86_64__)
  _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1);
#else
  (void)p;
#endif
}

}  // namespace mpool::nn::kernels
