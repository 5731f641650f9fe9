#pragma once
// The float32 and bfloat16 weight-row kernels' software prefetch of the next
// pass's rows. Into L2 (T1), not L1 (T0): streaming 96 MiB of weights on this
// project's AMD Zen 4 host, one thread, T0 left 8-row bf16 products at 8.6 GB/s
// and T1 gave 14.6; 4-row bf16 8.6 -> 20.5, 8-row float32 18.5 -> 27.4
// (docs/benchmarks.md, "Prefetching weights into L2"). The int8 row kernels
// keep T0 for the next block (T1 measured 6% slower for their one-row decode
// there) and add a T1 prefetch further ahead (int8.cpp, prefetch_next).
#include <cstdint>

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

// Positions the decode attention prefetches ahead of the one it reads.
constexpr int64_t kAttentionPrefetchAhead = 16;

// Every cache line of a `bytes`-long row of keys or values at p, into L2, for
// the decode attention a few positions ahead: a paged cache's rows jump from
// block to block, where the hardware's stream prefetcher starts over. 8 streams
// with 512-768-token prompts decoded 9-19% faster with it on the Zen 4 host
// (bf16 +9-12%, float32 +10%, int8 +19%; docs/benchmarks.md, "Prefetching
// weights into L2").
inline void prefetch_row(const void* p, int64_t bytes) {
#if defined(__x86_64__)
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) _mm_prefetch(c + b, _MM_HINT_T1);
#else
  (void)p, (void)bytes;
#endif
}

}  // namespace mpool::nn::kernels
