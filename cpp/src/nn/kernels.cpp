#include "mpool/nn/kernels.h"

#include <ATen/Parallel.h>
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#include <tbb/partitioner.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <type_traits>
#include <string>
#include <vector>

#include "mpool/base/error.h"
#include "mpool/nn/gemm.h"
#include "prefetch.h"
#include "simd_reduce.h"
#include "simd_exp.h"

// OpenMP's and MKL's per-thread setters, bound weakly to the runtime torch loaded
// (its libgomp and its MKL): null where this torch has none, and no second copy.
extern "C" void omp_set_num_threads(int) noexcept __attribute__((weak));
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));  // mkl_service.h's C name (the lowercase one is Fortran's, by pointer)

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MPOOL_X86_GEMV 1
#endif

namespace mpool::nn::kernels {
namespace {

#ifdef MPOOL_X86_GEMV
using simd::exp_nonpositive;

__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

// Eight weights as float32: a float32 load, or a bfloat16 load widened (a bf16
// is the top half of a float), which streams the weights at half the bytes.
__attribute__((target("avx2,fma"))) inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
__attribute__((target("avx2,fma"))) inline __m256 load8(const uint16_t* p) {
  __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
inline float to_float(float v) { return v; }
inline float to_float(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Y[j, r] = dot(w[r, :], X[j, :]) for weight rows [r, r + NR) and rows
// [j0, j0 + NX) of X: each load of an X row serves NR weight streams, and each
// weight vector loaded serves NX rows of X (from L1 after the first). Every
// (weight row, X row) pair is summed in one fixed order (eight lanes over the
// columns, then hsum, then the tail with fused multiply-adds) whatever NR and NX
// are, so a row's result never depends on how many rows run with it: a sequence
// decodes to the same bits alone or in a batch.
template <class W, int NR, int NX>
__attribute__((target("avx2,fma"))) void block_rows(const W* w, const float* x, float* y, int64_t in, int64_t out,
                                                    int64_t r, int64_t j0) {
  const int64_t vec_end = in - in % 8;
  const W* rows = w + r * in;
  const float* xs = x + j0 * in;
  __m256 acc[NR][NX];
  for (int k = 0; k < NR; ++k)
    for (int j = 0; j < NX; ++j) acc[k][j] = _mm256_setzero_ps();
  for (int64_t i = 0; i < vec_end; i += 8) {
    // The next rows' same cache line, one pass ahead, into L2 (a hint; never faults).
    if ((i * static_cast<int64_t>(sizeof(W)) & 63) == 0)
      for (int k = 0; k < NR; ++k) prefetch_weights(rows + (NR + k) * in + i);
    __m256 wv[NR];
    for (int k = 0; k < NR; ++k) wv[k] = load8(rows + k * in + i);
    for (int j = 0; j < NX; ++j) {
      const __m256 xv = _mm256_loadu_ps(xs + j * in + i);
      for (int k = 0; k < NR; ++k) acc[k][j] = _mm256_fmadd_ps(wv[k], xv, acc[k][j]);
    }
  }
  for (int k = 0; k < NR; ++k)
    for (int j = 0; j < NX; ++j) {
      float t = hsum(acc[k][j]);
      for (int64_t i = vec_end; i < in; ++i) t = std::fma(to_float(rows[k * in + i]), xs[j * in + i], t);
      y[(j0 + j) * out + r + k] = t;
    }
}

// Sixteen weights as float32 (the first `mask` lanes; the rest 0): a float32
// load, or a bfloat16 load widened.
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(const float* p, __mmask16 mask) {
  return mask == static_cast<__mmask16>(0xFFFF) ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(mask, p);
}
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load16(const uint16_t* p, __mmask16 mask) {
  const __m256i raw = mask == static_cast<__mmask16>(0xFFFF)
                          ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
                          : _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// Y[j0 + j, r + k] = the tree sum of acc[k][j] (_mm512_reduce_add_ps's bits):
// sixteen pairs at once where a block has sixteen.
template <int NR, int NX>
__attribute__((target("avx512f"))) inline void store_sums(const __m512 (&acc)[NR][NX], float* y, int64_t out,
                                                          int64_t r, int64_t j0) {
  if constexpr (NR * NX == 16) {
    alignas(64) float sums[16];
    _mm512_store_ps(sums, simd::reduce_add_16(&acc[0][0]));
    for (int k = 0; k < NR; ++k)
      for (int j = 0; j < NX; ++j) y[(j0 + j) * out + r + k] = sums[k * NX + j];
  } else {
    for (int k = 0; k < NR; ++k)
      for (int j = 0; j < NX; ++j) y[(j0 + j) * out + r + k] = _mm512_reduce_add_ps(acc[k][j]);
  }
}

// block_rows with AVX-512: sixteen lanes, the tail a masked step; each pair sums
// in one order whatever NR and NX are (here too a row's bits never depend on
// the other rows).
template <class W, int NR, int NX>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void block_rows_512(const W* w, const float* x, float* y, int64_t in,
                                                               int64_t out, int64_t r, int64_t j0) {
  const int64_t full = in - in % 16;
  const W* rows = w + r * in;
  const float* xs = x + j0 * in;
  __m512 acc[NR][NX];
  for (int k = 0; k < NR; ++k)
    for (int j = 0; j < NX; ++j) acc[k][j] = _mm512_setzero_ps();
  auto step = [&](int64_t i, __mmask16 mask) __attribute__((target("avx512f,avx512bw,avx512vl"))) {
    __m512 wv[NR];
    for (int k = 0; k < NR; ++k) wv[k] = load16(rows + k * in + i, mask);
    for (int j = 0; j < NX; ++j) {
      const __m512 xv = load16(xs + j * in + i, mask);
      for (int k = 0; k < NR; ++k) acc[k][j] = _mm512_fmadd_ps(wv[k], xv, acc[k][j]);
    }
  };
  for (int64_t i = 0; i < full; i += 16) {
    if ((i * static_cast<int64_t>(sizeof(W)) & 63) == 0)
      for (int k = 0; k < NR; ++k) prefetch_weights(rows + (NR + k) * in + i);
    step(i, static_cast<__mmask16>(0xFFFF));
  }
  if (full < in) step(full, static_cast<__mmask16>((1u << (in - full)) - 1));
  store_sums<NR, NX>(acc, y, out, r, j0);
}

bool cpu_has_avx512() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
  }();
  return yes;
}

// The rows of X a tile of many rows holds (RowInvariant's linear): about this many bytes.
constexpr int64_t kRowTileBytes = 192 * 1024;
// The same for bfloat16 rows: every tile streams all the weights once, and on
// the Zen 4 host (1 MiB of L2 a core) tiles of 1 MiB ran 4096-wide layers at
// 1.2x the rate of 192 KiB ones; float32 tiles past 192 KiB measured slower.
constexpr int64_t kBf16RowTileBytes = 1024 * 1024;

// Every row of X (m of them) against weight rows [r0, r1). With AVX-512: for a
// single row, one weight row a pass where rows are narrow (kSequentialRowBytes),
// else eight (more streams in flight); for more rows, four weight rows against
// four rows of X (sixteen accumulators of 32 registers). With AVX2:
// four weight rows a pass, X rows one at a time for a single row, else two at
// a time (eight accumulators of sixteen registers).
template <class W>
void gemm_rows(const W* w, const float* x, float* y, int64_t in, int64_t out, int64_t m, int64_t r0, int64_t r1) {
  if (cpu_has_avx512()) {
    auto pass = [&]<int NR>(int64_t r) {
      int64_t j = 0;
      if (m > 1)
        for (; j + 4 <= m; j += 4) block_rows_512<W, NR, 4>(w, x, y, in, out, r, j);
      for (; j + 2 <= m; j += 2) block_rows_512<W, NR, 2>(w, x, y, in, out, r, j);
      for (; j < m; ++j) block_rows_512<W, NR, 1>(w, x, y, in, out, r, j);
    };
    int64_t r = r0;
    if (m == 1 && in * static_cast<int64_t>(sizeof(W)) <= kSequentialRowBytes) {
      for (; r < r1; ++r) pass.template operator()<1>(r);
      return;
    }
    if (m == 1)
      for (; r + 8 <= r1; r += 8) pass.template operator()<8>(r);
    for (; r + 4 <= r1; r += 4) pass.template operator()<4>(r);
    for (; r < r1; ++r) pass.template operator()<1>(r);
    return;
  }
  auto pass = [&]<int NR>(int64_t r) {
    int64_t j = 0;
    if (m > 1)
      for (; j + 2 <= m; j += 2) block_rows<W, NR, 2>(w, x, y, in, out, r, j);
    for (; j < m; ++j) block_rows<W, NR, 1>(w, x, y, in, out, r, j);
  };
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) pass.template operator()<4>(r);
  for (; r < r1; ++r) pass.template operator()<1>(r);
}

// run(float{}) for float32, run(uint16_t{}) for bfloat16 (its bits).
template <class F>
void run_as_float_or_bf16(at::ScalarType type, F&& run) {
  if (type == at::kFloat)
    run(float{});
  else
    run(uint16_t{});
}

// Rows `stride` elements apart: a contiguous cache's keys or values of one head.
template <class W>
struct Strided {
  const W* base;
  int64_t stride;
  const W* operator()(int64_t j) const { return base + j * stride; }
};
template <class W>
Strided<W> strided(const W* base, int64_t stride) {
  return {base, stride};
}

// scores[0:t] = exp(scores - top) in place (top: their maximum); returns their sum.
__attribute__((target("avx2,fma"))) inline float softmax_in_place(float* scores, int64_t t, float top) {
  const int64_t t_vec = t - t % 8;
  const __m256 top8 = _mm256_set1_ps(top);
  __m256 sum8 = _mm256_setzero_ps();
  for (int64_t j = 0; j < t_vec; j += 8) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(scores + j), top8));
    _mm256_storeu_ps(scores + j, e);
    sum8 = _mm256_add_ps(sum8, e);
  }
  float sum = hsum(sum8);
  for (int64_t j = t_vec; j < t; ++j) sum += scores[j] = std::exp(scores[j] - top);
  return sum;
}

// Query rows of one head that attend together: row r against the key and value
// rows at positions [f[r], t[r]) (`key(j)` and `value(j)` point at position j's
// row, contiguous or in blocks), its scores into scores[r][j - f[r]] and its
// output into acc[r]. Every row's arithmetic is the same whatever rows run with
// it (R = 1 is a decode step): each key's dot product is summed in one fixed
// order (lanes over the columns, one horizontal tree, the column tail with
// fused multiply-adds) whichever keys share its pass; the softmax runs over the
// row's own range; and each output column is summed over the row's keys in
// increasing position with fused multiply-adds, however the columns are cut
// into registers. So a prompt's rows, R at a time, get the bits each would get
// as a decode step.
template <int R>
struct KeyWalk {
  // Row r's positions: [f[r], head_end[r]) alone, then [shared_begin,
  // shared_end) with every row (where they all share some), then
  // [tail_begin[r], t[r]) alone: each row's in increasing position.
  int64_t lo, hi, shared_begin, shared_end, head_end[R], tail_begin[R];
  KeyWalk(const int64_t* f, const int64_t* t) {
    lo = f[0], hi = t[0], shared_begin = f[0], shared_end = t[0];
    for (int r = 1; r < R; ++r) {
      lo = std::min(lo, f[r]), hi = std::max(hi, t[r]);
      shared_begin = std::max(shared_begin, f[r]), shared_end = std::min(shared_end, t[r]);
    }
    if (shared_begin >= shared_end) shared_begin = shared_end = hi;  // nothing shared: each row alone
    for (int r = 0; r < R; ++r) {
      head_end[r] = shared_begin < shared_end ? shared_begin : t[r];
      tail_begin[r] = shared_begin < shared_end ? shared_end : t[r];
    }
  }
  // one(r, j) for each row's positions outside the shared span, all(j) for each
  // shared one, every row's in increasing position.
  template <class One, class All>
  __attribute__((always_inline)) inline void each(const int64_t* f, const int64_t* t, One&& one, All&& all) const {
    for (int r = 0; r < R; ++r)
      for (int64_t j = f[r]; j < head_end[r]; ++j) one(r, j);
    for (int64_t j = shared_begin; j < shared_end; ++j) all(j);
    for (int r = 0; r < R; ++r)
      for (int64_t j = tail_begin[r]; j < t[r]; ++j) one(r, j);
  }
};

template <class W, int R, class KeyAt, class ValueAt>
__attribute__((target("avx2,fma"))) void attend_rows(const float* const* q, KeyAt key, ValueAt value,
                                                     const int64_t* f, const int64_t* t, int64_t d, int64_t dv,
                                                     float scale, float* const* scores, float* const* acc) {
  const KeyWalk<R> walk(f, t);
  float top[R];
  for (int r = 0; r < R; ++r) top[r] = -INFINITY;
  // Keys four at a time (a last group of fewer reads its missing keys as the
  // last one again, computed and never stored).
  const int64_t q_vec = d - d % 8;
  const int64_t key_bytes = d * static_cast<int64_t>(sizeof(W));
  for (int64_t j = walk.lo; j < walk.hi; j += 4) {
    for (int64_t u = j + kAttentionPrefetchAhead; u < std::min(j + kAttentionPrefetchAhead + 4, walk.hi); ++u)
      prefetch_row(key(u), key_bytes);
    const W* rows[4];
    for (int u = 0; u < 4; ++u) rows[u] = key(std::min(j + u, walk.hi - 1));
    __m256 a[R][4];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < 4; ++u) a[r][u] = _mm256_setzero_ps();
    for (int64_t i = 0; i < q_vec; i += 8) {
      __m256 kv[4];
      for (int u = 0; u < 4; ++u) kv[u] = load8(rows[u] + i);
      for (int r = 0; r < R; ++r) {
        const __m256 qv = _mm256_loadu_ps(q[r] + i);
        for (int u = 0; u < 4; ++u) a[r][u] = _mm256_fmadd_ps(kv[u], qv, a[r][u]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < 4; ++u) {
        if (j + u < f[r] || j + u >= t[r]) continue;
        float sum = hsum(a[r][u]);
        for (int64_t i = q_vec; i < d; ++i) sum = std::fma(to_float(rows[u][i]), q[r][i], sum);
        scores[r][j + u - f[r]] = sum * scale;
        top[r] = std::max(top[r], sum * scale);
      }
  }
  float inv[R];
  for (int r = 0; r < R; ++r) inv[r] = 1.0f / softmax_in_place(scores[r], t[r] - f[r], top[r]);
  // The weighted values, C registers of eight columns a row at a time (64
  // columns for one row, 32 for more), then eight, then one.
  constexpr int C = R == 1 ? 8 : 4;
  const int64_t slice_bytes = 8 * C * static_cast<int64_t>(sizeof(W));
  int64_t i0 = 0;
  for (; i0 + 8 * C <= dv; i0 += 8 * C) {
    __m256 a[R][C];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < C; ++u) a[r][u] = _mm256_setzero_ps();
    auto one = [&](int r, int64_t j) __attribute__((target("avx2,fma"))) {
      const W* row = value(j) + i0;
      const __m256 w = _mm256_set1_ps(scores[r][j - f[r]]);
      for (int u = 0; u < C; ++u) a[r][u] = _mm256_fmadd_ps(w, load8(row + 8 * u), a[r][u]);
    };
    walk.each(f, t, one, [&](int64_t j) __attribute__((target("avx2,fma"))) {
      if (j + kAttentionPrefetchAhead < walk.shared_end)
        prefetch_row(value(j + kAttentionPrefetchAhead) + i0, slice_bytes);
      const W* row = value(j) + i0;
      __m256 v[C];
      for (int u = 0; u < C; ++u) v[u] = load8(row + 8 * u);
      for (int r = 0; r < R; ++r) {
        const __m256 w = _mm256_set1_ps(scores[r][j - f[r]]);
        for (int u = 0; u < C; ++u) a[r][u] = _mm256_fmadd_ps(w, v[u], a[r][u]);
      }
    });
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < C; ++u) _mm256_storeu_ps(acc[r] + i0 + 8 * u, a[r][u]);
  }
  for (; i0 + 8 <= dv; i0 += 8)
    for (int r = 0; r < R; ++r) {
      __m256 a = _mm256_setzero_ps();
      for (int64_t j = f[r]; j < t[r]; ++j)
        a = _mm256_fmadd_ps(_mm256_set1_ps(scores[r][j - f[r]]), load8(value(j) + i0), a);
      _mm256_storeu_ps(acc[r] + i0, a);
    }
  for (int64_t i = i0; i < dv; ++i)
    for (int r = 0; r < R; ++r) {
      float a = 0;
      for (int64_t j = f[r]; j < t[r]; ++j) a = std::fma(scores[r][j - f[r]], to_float(value(j)[i]), a);
      acc[r][i] = a;
    }
  for (int r = 0; r < R; ++r)
    for (int64_t i = 0; i < dv; ++i) acc[r][i] *= inv[r];
}

// attend_rows with AVX-512: sixteen lanes for the query-key dots and the
// weighted values (64 columns in four registers a row), the same softmax. Four
// keys' dots are summed together (their halves, then one horizontal tree), the
// same way for every key.
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) inline __m128 reduce4(const __m512 (&a)[4]) {
  __m256 h[4];
  for (int u = 0; u < 4; ++u)
    h[u] = _mm256_add_ps(_mm512_castps512_ps256(a[u]), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a[u]), 1)));
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
  return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));  // key u in lane u
}

template <class W, int R, class KeyAt, class ValueAt>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void attend_rows_512(
    const float* const* q, KeyAt key, ValueAt value, const int64_t* f, const int64_t* t, int64_t d, int64_t dv,
    float scale, float* const* scores, float* const* acc) {
  const __mmask16 all = 0xFFFF;
  const int64_t q_full = d - d % 16;
  const __mmask16 q_tail = static_cast<__mmask16>((1u << (d - q_full)) - 1);
  const KeyWalk<R> walk(f, t);
  float top[R];
  __m128 tops[R];  // the maxima of whole groups of four, lane by lane
  for (int r = 0; r < R; ++r) top[r] = -INFINITY, tops[r] = _mm_set1_ps(-INFINITY);
  const int64_t key_bytes = d * static_cast<int64_t>(sizeof(W)), slice_bytes = 64 * static_cast<int64_t>(sizeof(W));
  for (int64_t j = walk.lo; j < walk.hi; j += 4) {
    for (int64_t u = j + kAttentionPrefetchAhead; u < std::min(j + kAttentionPrefetchAhead + 4, walk.hi); ++u)
      prefetch_row(key(u), key_bytes);
    const W* rows[4];
    for (int u = 0; u < 4; ++u) rows[u] = key(std::min(j + u, walk.hi - 1));
    __m512 a[R][4];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < 4; ++u) a[r][u] = _mm512_setzero_ps();
    for (int64_t i = 0; i < q_full; i += 16) {
      __m512 kv[4];
      for (int u = 0; u < 4; ++u) kv[u] = load16(rows[u] + i, all);
      for (int r = 0; r < R; ++r) {
        const __m512 qv = _mm512_loadu_ps(q[r] + i);
        for (int u = 0; u < 4; ++u) a[r][u] = _mm512_fmadd_ps(kv[u], qv, a[r][u]);
      }
    }
    if (q_full < d) {
      __m512 kv[4];
      for (int u = 0; u < 4; ++u) kv[u] = load16(rows[u] + q_full, q_tail);
      for (int r = 0; r < R; ++r) {
        const __m512 qv = _mm512_maskz_loadu_ps(q_tail, q[r] + q_full);
        for (int u = 0; u < 4; ++u) a[r][u] = _mm512_fmadd_ps(kv[u], qv, a[r][u]);
      }
    }
    for (int r = 0; r < R; ++r) {
      if (j + 4 <= f[r] || j >= t[r]) continue;
      const __m128 four = _mm_mul_ps(reduce4(a[r]), _mm_set1_ps(scale));
      if (j >= f[r] && j + 4 <= t[r]) {  // all four keys the row's
        _mm_storeu_ps(scores[r] + (j - f[r]), four);
        tops[r] = _mm_max_ps(four, tops[r]);  // a NaN score leaves the maximum as it was
        continue;
      }
      alignas(16) float lanes[4];
      _mm_store_ps(lanes, four);
      for (int64_t u = std::max<int64_t>(0, f[r] - j); u < 4 && j + u < t[r]; ++u) {
        scores[r][j + u - f[r]] = lanes[u];
        top[r] = std::max(top[r], lanes[u]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    alignas(16) float lanes[4];
    _mm_store_ps(lanes, tops[r]);
    for (int u = 0; u < 4; ++u) top[r] = std::max(top[r], lanes[u]);
  }
  float inv[R];
  for (int r = 0; r < R; ++r) inv[r] = 1.0f / softmax_in_place(scores[r], t[r] - f[r], top[r]);
  int64_t i0 = 0;
  for (; i0 + 64 <= dv; i0 += 64) {
    __m512 a[R][4];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < 4; ++u) a[r][u] = _mm512_setzero_ps();
    auto one = [&](int r, int64_t j) __attribute__((target("avx512f,avx512bw,avx512vl,fma"))) {
      const W* row = value(j) + i0;
      const __m512 w = _mm512_set1_ps(scores[r][j - f[r]]);
      for (int u = 0; u < 4; ++u) a[r][u] = _mm512_fmadd_ps(w, load16(row + 16 * u, all), a[r][u]);
    };
    walk.each(f, t, one, [&](int64_t j) __attribute__((target("avx512f,avx512bw,avx512vl,fma"))) {
      if (j + kAttentionPrefetchAhead < walk.shared_end)
        prefetch_row(value(j + kAttentionPrefetchAhead) + i0, slice_bytes);
      const W* row = value(j) + i0;
      __m512 v[4];
      for (int u = 0; u < 4; ++u) v[u] = load16(row + 16 * u, all);
      for (int r = 0; r < R; ++r) {
        const __m512 w = _mm512_set1_ps(scores[r][j - f[r]]);
        for (int u = 0; u < 4; ++u) a[r][u] = _mm512_fmadd_ps(w, v[u], a[r][u]);
      }
    });
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < 4; ++u) _mm512_storeu_ps(acc[r] + i0 + 16 * u, a[r][u]);
  }
  for (; i0 < dv; i0 += 16) {
    const __mmask16 m = dv - i0 >= 16 ? all : static_cast<__mmask16>((1u << (dv - i0)) - 1);
    for (int r = 0; r < R; ++r) {
      __m512 a = _mm512_setzero_ps();
      for (int64_t j = f[r]; j < t[r]; ++j)
        a = _mm512_fmadd_ps(_mm512_set1_ps(scores[r][j - f[r]]), load16(value(j) + i0, m), a);
      _mm512_mask_storeu_ps(acc[r] + i0, m, a);
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m512 scale_out = _mm512_set1_ps(inv[r]);
    for (int64_t i = 0; i < dv; i += 16) {
      const __mmask16 m = dv - i >= 16 ? all : static_cast<__mmask16>((1u << (dv - i)) - 1);
      _mm512_mask_storeu_ps(acc[r] + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, acc[r] + i), scale_out));
    }
  }
}

// R query rows against their keys and values: the AVX-512 rows where `wide`
// (the CPU has it, unless a test asks for the AVX2 ones), else the AVX2 ones.
// Every decode attention path and the prompt rows that must match them go
// through here, so the same row gives the same bits whichever path reads it.
template <class W, int R, class KeyAt, class ValueAt>
void attend_rows_any(bool wide, const float* const* q, KeyAt key, ValueAt value, const int64_t* f, const int64_t* t,
                     int64_t d, int64_t dv, float scale, float* const* scores, float* const* acc) {
  if (wide)
    attend_rows_512<W, R>(q, key, value, f, t, d, dv, scale, scores, acc);
  else
    attend_rows<W, R>(q, key, value, f, t, d, dv, scale, scores, acc);
}

// One query row against its t keys and values (a decode step).
template <class W, class KeyAt, class ValueAt>
void attend_row_any(bool wide, const float* q, KeyAt key, ValueAt value, int64_t t, int64_t d, int64_t dv, float scale,
                    float* scores, float* acc) {
  const int64_t f = 0;
  attend_rows_any<W, 1>(wide, &q, key, value, &f, &t, d, dv, scale, &scores, &acc);
}

// Rows [r0, r0 + R) of x (m, k) times w (k, n): each output column an FMA
// chain over k in order from zero (as std::fma one at a time would give), 64
// columns a pass in four registers a row, the last pass masked.
template <int R>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void rows_times_512(const float* x, const float* w, float* y,
                                                                              int64_t k, int64_t n, int64_t r0) {
  for (int64_t c0 = 0; c0 < n; c0 += 64) {
    __mmask16 lanes[4];
    for (int u = 0; u < 4; ++u) {
      const int64_t left = n - c0 - 16 * u;
      lanes[u] = left >= 16 ? static_cast<__mmask16>(0xFFFF)
                 : left <= 0 ? static_cast<__mmask16>(0)
                             : static_cast<__mmask16>((1u << left) - 1);
    }
    __m512 acc[R][4];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < 4; ++u) acc[r][u] = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; ++i) {
      __m512 wv[4];
      for (int u = 0; u < 4; ++u) wv[u] = _mm512_maskz_loadu_ps(lanes[u], w + i * n + c0 + 16 * u);
      for (int r = 0; r < R; ++r) {
        const __m512 xb = _mm512_set1_ps(x[(r0 + r) * k + i]);
        for (int u = 0; u < 4; ++u) acc[r][u] = _mm512_fmadd_ps(xb, wv[u], acc[r][u]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < 4; ++u) _mm512_mask_storeu_ps(y + (r0 + r) * n + c0 + 16 * u, lanes[u], acc[r][u]);
  }
}

// The same with AVX2: 32 columns a pass in four registers a row, columns past
// the last eight one at a time.
template <int R>
__attribute__((target("avx2,fma"))) void rows_times_avx2(const float* x, const float* w, float* y, int64_t k,
                                                         int64_t n, int64_t r0) {
  const int64_t n8 = n - n % 8;
  for (int64_t c0 = 0; c0 < n8; c0 += 32) {
    const int vecs = static_cast<int>(std::min<int64_t>(4, (n8 - c0) / 8));
    __m256 acc[R][4];
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < 4; ++u) acc[r][u] = _mm256_setzero_ps();
    for (int64_t i = 0; i < k; ++i)
      for (int r = 0; r < R; ++r) {
        const __m256 xb = _mm256_set1_ps(x[(r0 + r) * k + i]);
        for (int u = 0; u < vecs; ++u)
          acc[r][u] = _mm256_fmadd_ps(xb, _mm256_loadu_ps(w + i * n + c0 + 8 * u), acc[r][u]);
      }
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < vecs; ++u) _mm256_storeu_ps(y + (r0 + r) * n + c0 + 8 * u, acc[r][u]);
  }
  for (int r = 0; r < R; ++r)
    for (int64_t c = n8; c < n; ++c) {
      float a = 0;
      for (int64_t i = 0; i < k; ++i) a = std::fma(x[(r0 + r) * k + i], w[i * n + c], a);
      y[(r0 + r) * n + c] = a;
    }
}

// bf16 weights against bf16 rows of X with AVX512-BF16's pair dot product: 32
// products a step, exact (bf16 x bf16 fits a float), accumulated in float32.
// Weight rows [r, r + R) against X rows [j0, j0 + NX), columns [c0, c1) of the
// full vectors (c1 <= in - in % 32), the next R rows prefetched. A pass over
// part of the columns starts from the sums `carry` holds (unless it is the
// first) and leaves its sums there (unless it is the last, which adds the tail
// and writes Y): each lane sums its columns in order either way, so, as in
// block_rows, each pair sums in one order whatever R, NX and the column split are.
template <int R, int NX>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void block_rows_bf16_dot_span(
    const uint16_t* w, const uint16_t* x, float* y, int64_t in, int64_t out, int64_t r, int64_t j0, int64_t c0,
    int64_t c1, float* carry, bool first, bool last) {
  const int64_t full = in - in % 32;
  const __mmask32 tail = static_cast<__mmask32>((uint64_t{1} << (in - full)) - 1);
  __m512 acc[R][NX];
  for (int k = 0; k < R; ++k)
    for (int j = 0; j < NX; ++j) acc[k][j] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(carry + (k * NX + j) * 16);
  const uint16_t* base = w + r * in;
  const uint16_t* xs = x + j0 * in;
  for (int64_t i = c0; i < c1; i += 32) {  // 64 bytes: one cache line of each row a step
    for (int k = 0; k < R; ++k) prefetch_weights(base + (R + k) * in + i);
    __m512bh wv[R];
    for (int k = 0; k < R; ++k) wv[k] = (__m512bh)_mm512_loadu_si512(base + k * in + i);
    for (int j = 0; j < NX; ++j) {
      const __m512bh xv = (__m512bh)_mm512_loadu_si512(xs + j * in + i);
      for (int k = 0; k < R; ++k) acc[k][j] = _mm512_dpbf16_ps(acc[k][j], wv[k], xv);
    }
  }
  if (!last) {
    for (int k = 0; k < R; ++k)
      for (int j = 0; j < NX; ++j) _mm512_storeu_ps(carry + (k * NX + j) * 16, acc[k][j]);
    return;
  }
  if (full < in) {
    __m512bh wv[R];
    for (int k = 0; k < R; ++k) wv[k] = (__m512bh)_mm512_maskz_loadu_epi16(tail, base + k * in + full);
    for (int j = 0; j < NX; ++j) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(tail, xs + j * in + full);
      for (int k = 0; k < R; ++k) acc[k][j] = _mm512_dpbf16_ps(acc[k][j], wv[k], xv);
    }
  }
  store_sums<R, NX>(acc, y, out, r, j0);
}

template <int R, int NX>
void block_rows_bf16_dot(const uint16_t* w, const uint16_t* x, float* y, int64_t in, int64_t out, int64_t r,
                         int64_t j0) {
  block_rows_bf16_dot_span<R, NX>(w, x, y, in, out, r, j0, 0, in - in % 32, nullptr, true, true);
}

// Eight rows of X of more than this many columns (16 KiB in bf16) no longer sit
// in L1 beside the weights streaming past them; the 8-row pass then walks the
// columns in spans of this width over a group of weight rows (kSpanGroupRows),
// its sums carried from span to span.
constexpr int64_t kSpanColumns = 1024;
constexpr int64_t kSpanGroupRows = 32;

// Every bf16 row of X against weight rows [r0, r1): for a single row, one weight
// row a pass where rows are narrow (kSequentialRowBytes), else eight (more
// streams in flight); from eight rows of X up to row_kernel_max_rows(), two
// weight rows against eight X rows; else four rows against four X rows; in
// column spans where X is wide. A pair's sum has the same bits in each.
void gemm_rows_bf16_dot(const uint16_t* w, const uint16_t* x, float* y, int64_t in, int64_t out, int64_t m,
                        int64_t r0, int64_t r1) {
  auto pass = [&]<int R>(int64_t r, int64_t j) {
    if constexpr (R == 2)
      for (; j + 8 <= m; j += 8) block_rows_bf16_dot<R, 8>(w, x, y, in, out, r, j);
    if (m > 1)
      for (; j + 4 <= m; j += 4) block_rows_bf16_dot<R, 4>(w, x, y, in, out, r, j);
    for (; j + 2 <= m; j += 2) block_rows_bf16_dot<R, 2>(w, x, y, in, out, r, j);
    for (; j < m; ++j) block_rows_bf16_dot<R, 1>(w, x, y, in, out, r, j);
  };
  int64_t r = r0;
  if (m == 1 && in * 2 <= kSequentialRowBytes) {
    for (; r < r1; ++r) pass.template operator()<1>(r, 0);
    return;
  }
  if (m == 1)
    for (; r + 8 <= r1; r += 8) pass.template operator()<8>(r, 0);
  // R weight rows against NX rows of X in column spans over groups of weight
  // rows, the sums carried from span to span; the rows of X past a multiple of
  // NX, and the weight rows past the last group's, as pass() takes them.
  auto spans = [&]<int R, int NX>() {
    alignas(64) float carry[kSpanGroupRows * NX * 16];
    const int64_t full = in - in % 32, whole = m - m % NX;
    while (r + R <= r1) {
      const int64_t rows = std::min(kSpanGroupRows, (r1 - r) / R * R);
      for (int64_t j = 0; j < whole; j += NX)
        for (int64_t c0 = 0; c0 < full; c0 += kSpanColumns) {
          const int64_t c1 = std::min(full, c0 + kSpanColumns);
          for (int64_t p = 0; p < rows; p += R)
            block_rows_bf16_dot_span<R, NX>(w, x, y, in, out, r + p, j, c0, c1, carry + p * NX * 16, c0 == 0,
                                            c1 == full);
        }
      for (int64_t p = 0; p < rows; p += R) pass.template operator()<R>(r + p, whole);
      r += rows;
    }
  };
  // A tile of many rows (RowInvariant) goes four against four below, without
  // spans: eight loads for sixteen products (two against eight take ten); on the
  // Zen 4 host 10-30% faster at 768 columns, and spans cost 10% at 4,096.
  if (m >= 8 && m <= row_kernel_max_rows()) {
    if (in - in % 32 > kSpanColumns) spans.template operator()<2, 8>();
    for (; r + 2 <= r1; r += 2) pass.template operator()<2>(r, 0);
  }
  for (; r + 4 <= r1; r += 4) pass.template operator()<4>(r, 0);
  for (; r < r1; ++r) pass.template operator()<1>(r, 0);
}

bool cpu_has_avx512_bf16() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16");
  }();
  return yes;
}

bool cpu_has_avx2_fma() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
}
#endif

}  // namespace

void set_thread_intra_op_threads(int threads) {
  check(threads >= 1, ErrorCode::kInvalidInput, "intra-op threads must be >= 1, got " + std::to_string(threads));
  // torch's lazy per-thread init is an inline function with a thread_local flag:
  // each shared library has its own copy. Run this library's copy and libtorch's
  // (at::get_num_threads runs it inside libtorch) before setting the count; else
  // libtorch's first op on this thread re-applies a count the user set with
  // torch.set_num_threads over ours.
  at::internal::lazy_init_num_threads();
  (void)at::get_num_threads();
  if (&omp_set_num_threads == nullptr) {
    at::set_num_threads(threads);
    return;
  }
  omp_set_num_threads(threads);
  if (&MKL_Set_Num_Threads_Local != nullptr) MKL_Set_Num_Threads_Local(threads);
}

namespace {
// The count parallel_for uses while a SerialTorchOps scope holds torch's at 1 (0: torch's).
thread_local int tls_kernel_threads = 0;

// Nonzero while this thread runs a parallel_for body: a big kernel called there
// splits on TBB (nested in the same arena), never on a new OpenMP team of a TBB worker.
thread_local int tls_in_tbb_body = 0;
struct InTbbBody {
  InTbbBody() { ++tls_in_tbb_body; }
  ~InTbbBody() { --tls_in_tbb_body; }
  InTbbBody(const InTbbBody&) = delete;
  InTbbBody& operator=(const InTbbBody&) = delete;
};
}  // namespace

namespace detail {
bool torch_team_parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body);
}  // namespace detail

void parallel_for_beside_torch(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  if (tls_kernel_threads > 0 || tls_in_tbb_body > 0 || &omp_set_num_threads == nullptr ||
      !detail::torch_team_parallel_for(n, std::max<int64_t>(grain, 1), body))
    parallel_for(n, grain, body);
}

namespace {
// 0: none; 1: RowInvariant; 2: RowInvariant(prompt).
thread_local int tls_row_invariant = 0;
}  // namespace

RowInvariant::RowInvariant(bool prompt) : saved_(tls_row_invariant) { tls_row_invariant = prompt ? 2 : 1; }
RowInvariant::~RowInvariant() { tls_row_invariant = saved_; }
bool row_invariant() noexcept { return tls_row_invariant > 0; }
bool prompt_rows() noexcept { return tls_row_invariant == 2; }

SerialTorchOps::SerialTorchOps() {
  if (&omp_set_num_threads == nullptr || tls_kernel_threads > 0) return;  // no OpenMP team, or already serial
  saved_ = std::max(1, at::get_num_threads());
  tls_kernel_threads = saved_;
  omp_set_num_threads(1);
}

SerialTorchOps::~SerialTorchOps() {
  if (saved_ == 0) return;
  omp_set_num_threads(saved_);
  tls_kernel_threads = 0;
}

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int threads =
      at::in_parallel_region() ? 1 : tls_kernel_threads > 0 ? tls_kernel_threads : std::max(1, at::get_num_threads());
  if (threads == 1 || n <= grain) {
    body(0, n);
    return;
  }
  // One arena per calling thread (a replica's worker), sized to torch's setting;
  // the workers behind all arenas are TBB's one process-wide set.
  thread_local std::unique_ptr<tbb::task_arena> arena;
  thread_local int arena_threads = 0;
  if (!arena || arena_threads != threads) {
    arena = std::make_unique<tbb::task_arena>(threads);
    arena_threads = threads;
  }
  arena->execute([&] {
    tbb::parallel_for(
        tbb::blocked_range<int64_t>(0, n, static_cast<size_t>(grain)),
        [&](const tbb::blocked_range<int64_t>& r) {
          const InTbbBody inside;
          body(r.begin(), r.end());
        },
        tbb::static_partitioner());
  });
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
#ifdef MPOOL_X86_GEMV
  return decode_attention_with(q, k, v, scale, cpu_has_avx512());
#else
  return decode_attention_with(q, k, v, scale, false);
#endif
}

at::Tensor decode_attention_with(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                                 bool avx512) {
#ifdef MPOOL_X86_GEMV
  check(!avx512 || cpu_has_avx512(), ErrorCode::kInvalidInput, "decode attention: this CPU has no AVX-512");
  const bool wide = avx512;
  const at::ScalarType type = q.scalar_type();
  if (!cpu_has_avx2_fma() || q.dim() != 4 || k.dim() != 4 || v.dim() != 4 || q.size(2) != 1 ||
      !(type == at::kFloat || type == at::kBFloat16) || k.scalar_type() != type || v.scalar_type() != type ||
      !q.device().is_cpu() || !k.device().is_cpu() || !v.device().is_cpu())
    return {};
  const int64_t b = q.size(0), heads = q.size(1), d = q.size(3), kvh = k.size(1), t = k.size(2), dv = v.size(3);
  if (k.size(0) != b || v.size(0) != b || v.size(1) != kvh || v.size(2) != t || k.size(3) != d || kvh == 0 ||
      heads % kvh != 0 || t == 0 || k.stride(3) != 1 || v.stride(3) != 1 || !std::isfinite(scale))
    return {};
  const int64_t group = heads / kvh;
  const at::Tensor qf = q.to(at::kFloat).reshape({b * heads, d}).contiguous();
  at::Tensor out = at::empty({b, heads, 1, dv}, q.options().dtype(at::kFloat));
  const float* qp = qf.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float s = static_cast<float>(scale);
  auto run = [&](const auto* kp, const auto* vp) {
    using W = std::remove_cv_t<std::remove_pointer_t<decltype(kp)>>;
    parallel_for(b * heads, 1, [&](int64_t r0, int64_t r1) {
      std::vector<float> scores(static_cast<size_t>(t));
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t bi = r / heads, kv = (r % heads) / group;
        attend_row_any<W>(wide, qp + r * d, strided(kp + bi * k.stride(0) + kv * k.stride(1), k.stride(2)),
                      strided(vp + bi * v.stride(0) + kv * v.stride(1), v.stride(2)), t, d, dv, s, scores.data(),
                      op + r * dv);
      }
    });
  };
  if (type == at::kFloat)
    run(k.const_data_ptr<float>(), v.const_data_ptr<float>());
  else
    run(reinterpret_cast<const uint16_t*>(k.const_data_ptr<at::BFloat16>()),
        reinterpret_cast<const uint16_t*>(v.const_data_ptr<at::BFloat16>()));
  return out.to(type);
#else
  (void)q, (void)k, (void)v, (void)scale, (void)avx512;
  return {};
#endif
}

at::Tensor prompt_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start,
                            int64_t window, double scale, std::optional<bool> avx512) {
#ifdef MPOOL_X86_GEMV
  bool wide = cpu_has_avx512();
  if (avx512.has_value()) {
    if (*avx512 && !wide) return {};
    wide = *avx512;
  }
  auto cpu_float = [](const at::Tensor& x) {
    return x.defined() && x.dim() == 4 && x.device().is_cpu() && x.scalar_type() == at::kFloat && x.stride(3) == 1;
  };
  if (!cpu_has_avx2_fma() || !cpu_float(q) || !cpu_float(k) || !cpu_float(v) || !std::isfinite(scale)) return {};
  const int64_t b = q.size(0), heads = q.size(1), n = q.size(2), d = q.size(3);
  const int64_t kvh = k.size(1), t = k.size(2), dv = v.size(3);
  if (b == 0 || n == 0 || d == 0 || dv == 0 || kvh == 0 || heads % kvh != 0 || start < 0 || window < 0 ||
      t != start + n || k.size(0) != b || v.size(0) != b || v.size(1) != kvh || v.size(2) != t || k.size(3) != d)
    return {};
  const int64_t group = heads / kvh;
  at::Tensor out = at::empty({b, n, heads, dv}, q.options());
  const float* qp = q.const_data_ptr<float>();
  const float* kp = k.const_data_ptr<float>();
  const float* vp = v.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float s = static_cast<float>(scale);
  // R rows a pass share each key's and value's loads: four with AVX-512 (16 of
  // 32 registers for their sums), two with AVX2 (of 16); the rows a head has
  // past a multiple of R go one at a time, which gives them the same bits.
  auto run = [&]<int R>() {
    const int64_t blocks = (n + R - 1) / R;
    // Heads outermost: a causal head's late rows cost more than its early ones,
    // and every thread's share then holds whole heads (or equal runs of them).
    parallel_for_beside_torch(b * heads * blocks, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(static_cast<size_t>(R * t));
      for (int64_t item = begin; item < end; ++item) {
        const int64_t block = item % blocks, head = (item / blocks) % heads, seq = item / blocks / heads;
        const auto key = strided(kp + seq * k.stride(0) + (head / group) * k.stride(1), k.stride(2));
        const auto value = strided(vp + seq * v.stride(0) + (head / group) * v.stride(1), v.stride(2));
        auto rows = [&]<int N>(int64_t i0) {
          const float* qr[N];
          float* sr[N];
          float* orow[N];
          int64_t f[N], e[N];
          for (int r = 0; r < N; ++r) {
            const int64_t i = i0 + r, position = start + i;
            qr[r] = qp + seq * q.stride(0) + head * q.stride(1) + i * q.stride(2);
            sr[r] = scratch.data() + r * t;
            orow[r] = op + ((seq * n + i) * heads + head) * dv;
            e[r] = position + 1;
            f[r] = window > 0 ? std::max<int64_t>(0, e[r] - window) : 0;
          }
          attend_rows_any<float, N>(wide, qr, key, value, f, e, d, dv, s, sr, orow);
        };
        const int64_t i0 = block * R;
        if (i0 + R <= n)
          rows.template operator()<R>(i0);
        else
          for (int64_t i = i0; i < n; ++i) rows.template operator()<1>(i);
      }
    });
  };
  if (wide)
    run.template operator()<4>();
  else
    run.template operator()<2>();
  return out.permute({0, 2, 1, 3});
#else
  (void)q, (void)k, (void)v, (void)start, (void)window, (void)scale, (void)avx512;
  return {};
#endif
}

at::Tensor rows_times(const at::Tensor& x, const at::Tensor& w) {
  if (!x.defined() || !w.defined() || x.dim() != 2 || w.dim() != 2 || !x.device().is_cpu() || !w.device().is_cpu() ||
      x.scalar_type() != at::kFloat || w.scalar_type() != at::kFloat || x.size(1) != w.size(0) || !w.is_contiguous())
    return {};
  const at::Tensor xc = x.contiguous();
  const int64_t m = x.size(0), k = x.size(1), n = w.size(1);
  at::Tensor out = at::empty({m, n}, x.options());
  const float* xp = xc.const_data_ptr<float>();
  const float* wp = w.const_data_ptr<float>();
  float* yp = out.data_ptr<float>();
  if (m == 0 || n == 0) return out;
#ifdef MPOOL_X86_GEMV
  if (cpu_has_avx512() || cpu_has_avx2_fma()) {
    const bool wide = cpu_has_avx512();
    const int64_t rows = wide ? 4 : 2, blocks = (m + rows - 1) / rows;
    parallel_for_beside_torch(blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * rows;
        if (r0 + rows <= m) {
          if (wide)
            rows_times_512<4>(xp, wp, yp, k, n, r0);
          else
            rows_times_avx2<2>(xp, wp, yp, k, n, r0);
        } else {
          for (int64_t r = r0; r < m; ++r) {
            if (wide)
              rows_times_512<1>(xp, wp, yp, k, n, r);
            else
              rows_times_avx2<1>(xp, wp, yp, k, n, r);
          }
        }
      }
    });
    return out;
  }
#endif
  for (int64_t r = 0; r < m; ++r)
    for (int64_t c = 0; c < n; ++c) {
      float a = 0;
      for (int64_t i = 0; i < k; ++i) a = std::fma(xp[r * k + i], wp[i * n + c], a);
      yp[r * n + c] = a;
    }
  return out;
}

at::Tensor decode_attention_rows(const at::Tensor& q, const std::vector<at::Tensor>& ks,
                                 const std::vector<at::Tensor>& vs, double scale) {
#ifdef MPOOL_X86_GEMV
  const bool wide = cpu_has_avx512();
  const at::ScalarType type = q.scalar_type();
  if (!cpu_has_avx2_fma() || q.dim() != 4 || q.size(2) != 1 || !(type == at::kFloat || type == at::kBFloat16) ||
      !q.device().is_cpu() || ks.size() != static_cast<size_t>(q.size(0)) || vs.size() != ks.size() || ks.empty() ||
      !std::isfinite(scale))
    return {};
  const int64_t b = q.size(0), heads = q.size(1), d = q.size(3);
  const int64_t kvh = ks[0].dim() == 4 ? ks[0].size(1) : 0, dv = vs[0].dim() == 4 ? vs[0].size(3) : 0;
  if (kvh == 0 || heads % kvh != 0) return {};
  for (size_t i = 0; i < ks.size(); ++i) {
    const at::Tensor &k = ks[i], &v = vs[i];
    if (k.dim() != 4 || v.dim() != 4 || k.size(0) != 1 || v.size(0) != 1 || k.size(1) != kvh || v.size(1) != kvh ||
        k.size(2) != v.size(2) || k.size(2) == 0 || k.size(3) != d || v.size(3) != dv || k.stride(3) != 1 ||
        v.stride(3) != 1 || k.scalar_type() != type || v.scalar_type() != type || !k.device().is_cpu() ||
        !v.device().is_cpu())
      return {};
  }
  const int64_t group = heads / kvh;
  int64_t longest = 0;
  for (const auto& k : ks) longest = std::max(longest, k.size(2));
  const at::Tensor qf = q.to(at::kFloat).reshape({b * heads, d}).contiguous();
  at::Tensor out = at::empty({b, heads, 1, dv}, q.options().dtype(at::kFloat));
  const float* qp = qf.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float s = static_cast<float>(scale);
  auto run = [&](auto tag) {
    using W = decltype(tag);
    parallel_for(b * heads, 1, [&](int64_t r0, int64_t r1) {
      std::vector<float> scores(static_cast<size_t>(longest));
      for (int64_t r = r0; r < r1; ++r) {
        const auto bi = static_cast<size_t>(r / heads);
        const int64_t kv = (r % heads) / group;
        const at::Tensor &k = ks[bi], &v = vs[bi];
        const W* kp = reinterpret_cast<const W*>(k.const_data_ptr()) + kv * k.stride(1);
        const W* vp = reinterpret_cast<const W*>(v.const_data_ptr()) + kv * v.stride(1);
        attend_row_any<W>(wide, qp + r * d, strided(kp, k.stride(2)), strided(vp, v.stride(2)), k.size(2), d, dv, s,
                      scores.data(), op + r * dv);
      }
    });
  };
  run_as_float_or_bf16(type, run);
  return out.to(type);
#else
  (void)q, (void)ks, (void)vs, (void)scale;
  return {};
#endif
}

at::Tensor decode_attention_paged(const at::Tensor& q, const at::Tensor& k_blocks, const at::Tensor& v_blocks,
                                  const std::vector<const std::vector<int32_t>*>& tables,
                                  const std::vector<int64_t>& first, const std::vector<int64_t>& total, double scale) {
#ifdef MPOOL_X86_GEMV
  const bool wide = cpu_has_avx512();
  // The blocks may hold another dtype than q (a bfloat16 cache of a float32 model).
  const at::ScalarType type = q.scalar_type(), stored = k_blocks.scalar_type();
  const auto b = static_cast<size_t>(q.dim() == 4 ? q.size(0) : 0);
  if (!cpu_has_avx2_fma() || q.dim() != 4 || q.size(2) != 1 || !(type == at::kFloat || type == at::kBFloat16) ||
      !(stored == at::kFloat || stored == at::kBFloat16) || !q.device().is_cpu() || b == 0 || tables.size() != b ||
      first.size() != b || total.size() != b || k_blocks.dim() != 4 || v_blocks.dim() != 4 ||
      !k_blocks.is_contiguous() || !v_blocks.is_contiguous() || v_blocks.scalar_type() != stored ||
      !k_blocks.device().is_cpu() || !v_blocks.device().is_cpu() || !std::isfinite(scale))
    return {};
  const int64_t heads = q.size(1), d = q.size(3), kvh = k_blocks.size(1), bs = k_blocks.size(2),
                dv = v_blocks.size(3);
  if (kvh == 0 || heads % kvh != 0 || k_blocks.size(3) != d || v_blocks.size(1) != kvh || v_blocks.size(2) != bs ||
      v_blocks.size(0) != k_blocks.size(0))
    return {};
  int64_t longest = 0;
  for (size_t i = 0; i < b; ++i) {
    if (tables[i] == nullptr || first[i] < 0 || total[i] <= first[i] ||
        static_cast<int64_t>(tables[i]->size()) * bs < total[i])
      return {};
    longest = std::max(longest, total[i] - first[i]);
  }
  const int64_t group = heads / kvh;
  const at::Tensor qf = q.to(at::kFloat).reshape({static_cast<int64_t>(b) * heads, d}).contiguous();
  at::Tensor out = at::empty({static_cast<int64_t>(b), heads, 1, dv}, q.options().dtype(at::kFloat));
  const float* qp = qf.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float s = static_cast<float>(scale);
  auto run = [&](auto tag) {
    using W = decltype(tag);
    const W* kb = reinterpret_cast<const W*>(k_blocks.const_data_ptr());
    const W* vb = reinterpret_cast<const W*>(v_blocks.const_data_ptr());
    parallel_for(static_cast<int64_t>(b) * heads, 1, [&](int64_t r0, int64_t r1) {
      // Each position's key and value row, looked up in the block table once.
      std::vector<float> scores(static_cast<size_t>(longest));
      std::vector<const W*> krows(static_cast<size_t>(longest)), vrows(static_cast<size_t>(longest));
      for (int64_t r = r0; r < r1; ++r) {
        const auto bi = static_cast<size_t>(r / heads);
        const int64_t kv = (r % heads) / group, t = total[bi] - first[bi];
        const std::vector<int32_t>& table = *tables[bi];
        for (int64_t j = 0; j < t; ++j) {
          const int64_t pos = first[bi] + j;
          const int64_t block = table[static_cast<size_t>(pos / bs)], row = pos % bs;
          krows[static_cast<size_t>(j)] = kb + ((block * kvh + kv) * bs + row) * d;
          vrows[static_cast<size_t>(j)] = vb + ((block * kvh + kv) * bs + row) * dv;
        }
        attend_row_any<W>(
            wide, qp + r * d, [&](int64_t j) { return krows[static_cast<size_t>(j)]; },
            [&](int64_t j) { return vrows[static_cast<size_t>(j)]; }, t, d, dv, s, scores.data(), op + r * dv);
      }
    });
  };
  run_as_float_or_bf16(stored, run);
  return out.to(type);
#else
  (void)q, (void)k_blocks, (void)v_blocks, (void)tables, (void)first, (void)total, (void)scale;
  return {};
#endif
}

bool has_fast_gemv() {
#ifdef MPOOL_X86_GEMV
  return cpu_has_avx2_fma();
#else
  return false;
#endif
}

int64_t row_kernel_max_rows() { return 16; }

bool row_kernel_takes(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
#ifdef MPOOL_X86_GEMV
  const int64_t in = weight.dim() == 2 ? weight.size(1) : -1;
  const at::ScalarType type = weight.scalar_type();
  const int64_t m = in > 0 && x.dim() >= 1 && x.size(-1) == in ? x.numel() / in : 0;
  return cpu_has_avx2_fma() && m >= 1 && (m <= row_kernel_max_rows() || row_invariant()) &&
         x.device().is_cpu() &&
         weight.device().is_cpu() && (type == at::kFloat || type == at::kBFloat16) && x.scalar_type() == type &&
         weight.is_contiguous() && (!bias.defined() || bias.scalar_type() == type);
#else
  (void)x, (void)weight, (void)bias;
  return false;
#endif
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
#ifdef MPOOL_X86_GEMV
  if (row_kernel_takes(x, weight, bias)) {
    const int64_t in = weight.size(1), m = x.numel() / in;
    const at::ScalarType type = weight.scalar_type();
    const int64_t out = weight.size(0);
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = out;
    at::Tensor yf = at::empty({m, out}, x.options().dtype(at::kFloat));
    float* yp = yf.data_ptr<float>();
    if (type == at::kBFloat16 && cpu_has_avx512_bf16()) {
      // bf16 rows against bf16 rows: products exact, float32 sums, rounded once.
      const at::Tensor xc = x.reshape({m, in}).contiguous();
      const auto* xp = reinterpret_cast<const uint16_t*>(xc.const_data_ptr<at::BFloat16>());
      const auto* wp = reinterpret_cast<const uint16_t*>(weight.const_data_ptr<at::BFloat16>());
      if (m <= row_kernel_max_rows()) {
        parallel_for((out + 7) / 8, 8, [&](int64_t b0, int64_t b1) {
          gemm_rows_bf16_dot(wp, xp, yp, in, out, m, b0 * 8, std::min(out, b1 * 8));
        });
      } else {
        // Many rows (RowInvariant): x in tiles of about kBf16RowTileBytes, each
        // against every weight row, four by four.
        const int64_t tile = std::max<int64_t>(
            row_kernel_max_rows() + 1,
            kBf16RowTileBytes / std::max<int64_t>(1, in * static_cast<int64_t>(sizeof(uint16_t))));
        for (int64_t t0 = 0; t0 < m; t0 += tile) {
          const int64_t rows = std::min(tile, m - t0);
          parallel_for_beside_torch((out + 7) / 8, 1, [&](int64_t b0, int64_t b1) {
            gemm_rows_bf16_dot(wp, xp + t0 * in, yp + t0 * out, in, out, rows, b0 * 8, std::min(out, b1 * 8));
          });
        }
      }
    } else {
      // float32 in and out; bfloat16 rows are widened first and the result rounded
      // back, as ATen's bf16 GEMM accumulates in float32 and rounds once.
      const at::Tensor xf = x.reshape({m, in}).to(at::kFloat).contiguous();
      const float* xp = xf.const_data_ptr<float>();
      const int64_t blocks = (out + 7) / 8;  // eight weight rows: one or two passes
      auto run = [&](const auto* w) {
        if (m <= row_kernel_max_rows()) {
          parallel_for(blocks, std::max<int64_t>(1, 8 / m), [&](int64_t b0, int64_t b1) {
            gemm_rows(w, xp, yp, in, out, m, b0 * 8, std::min(out, b1 * 8));
          });
          return;
        }
        // Many rows (RowInvariant): x in tiles of about kRowTileBytes (kept in
        // L2), each against every weight row in blocks of eight (kept in L1 while
        // the tile's rows pass), on torch's team beside its ops. A row's sums are
        // the ones the kernel gives it alone.
        const int64_t tile = std::max<int64_t>(
            row_kernel_max_rows(), kRowTileBytes / std::max<int64_t>(1, in * static_cast<int64_t>(sizeof(float))));
        for (int64_t t0 = 0; t0 < m; t0 += tile) {
          const int64_t rows = std::min(tile, m - t0);
          parallel_for_beside_torch(blocks, 1, [&](int64_t b0, int64_t b1) {
            gemm_rows(w, xp + t0 * in, yp + t0 * out, in, out, rows, b0 * 8, std::min(out, b1 * 8));
          });
        }
      };
      if (type == at::kFloat)
        run(weight.const_data_ptr<float>());
      else
        run(reinterpret_cast<const uint16_t*>(weight.const_data_ptr<at::BFloat16>()));
    }
    if (bias.defined()) yf.add_(bias.to(at::kFloat).view({out}));
    return yf.view(shape).to(type);
  }
#endif
  if (at::Tensor y = gemm::onednn_linear(x, weight, bias); y.defined()) return y;
  return at::linear(x, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt);
}

}  // namespace mpool::nn::kernels
