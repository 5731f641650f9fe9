#pragma once
// Sixteen horizontal sums at once with the bits of sixteen _mm512_reduce_add_ps
// calls. The row kernels keep a (weight row, x row) pair's sum in sixteen lanes
// and reduce it with that tree; a decode step reduces one pair at a time, a
// block of many rows sixteen pairs here, and each pair gets the same bits
// either way, for a row's bits never depend on the rows beside it.
//
// The tree (GCC's, which builds this project; the bitwise row tests check it):
// s8[i] = a[i] + a[i + 8], s4[i] = s8[i] + s8[i + 4], t[i] = s4[i] + s4[i + 2],
// sum = t[0] + t[1]. The network below adds the same pairs, sixteen vectors'
// worth a step (float addition commutes bit for bit, so only which values meet
// matters): 30 shuffles and 15 adds for sixteen sums, against about 7
// operations each one at a time.
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

namespace mpool::nn::simd {

// Lane i of the result is the tree sum of v[i].
__attribute__((target("avx512f"))) inline __m512 reduce_add_16(const __m512* v) {
  // Slot s = 4c + L takes v[4L + c]: the last step leaves slot 4c + L's sum in
  // lane 4L + c.
  __m512 u[8];
  for (int p = 0; p < 8; ++p) {
    const int s0 = 2 * p, s1 = 2 * p + 1;
    const __m512 a = v[4 * (s0 % 4) + s0 / 4], b = v[4 * (s1 % 4) + s1 / 4];
    // s8 of a in 128-bit lanes 0-1, of b in 2-3.
    u[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
  }
  __m512 w[4];
  for (int p = 0; p < 4; ++p)  // s4 of slot 4p + L in 128-bit lane L
    w[p] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * p], u[2 * p + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(u[2 * p], u[2 * p + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  __m512 t[2];
  for (int p = 0; p < 2; ++p)  // lane L: t[0], t[1] of slot 8p + L, then of slot 8p + 4 + L
    t[p] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * p], w[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(w[2 * p], w[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  // lane L: the sums of slots L, 4 + L, 8 + L, 12 + L.
  return _mm512_add_ps(_mm512_shuffle_ps(t[0], t[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(t[0], t[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

}  // namespace mpool::nn::simd
#endif
