#include "mpool/nn/int8.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <memory>
#include <cstring>
#include <functional>
#include <vector>

#include "mpool/base/error.h"
#include "mpool/nn/kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define MPOOL_X86_INT8 1
#endif

// MKL's bf16 GEMM with float32 output, as the MKL linked into torch exports it
// (LP64: int dimensions); bound weakly, null where this torch has no MKL.
// Layout 101 = row major, 111 = no transpose, 112 = transpose.
extern "C" void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                                       const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta, float* c,
                                       int ldc) __attribute__((weak));

namespace mpool::nn::int8 {
namespace {

// Rows of the weight handled together (a one-row product takes twice as many
// with AVX-512: more streams in flight), and the unit threads split rows by.
constexpr int kBlock = 4;
constexpr int kChunk = 8;

// The row kernel's operands: y[m * out + r] = dot(w row r, x row m) * scales[r]
// + bias[r], for `m` rows of x, `out` rows of w, `in` wide.
struct RowsArgs {
  const int8_t* w;
  const float* scales;
  const float* bias;  // null: none
  const float* x;
  float* y;
  int64_t in, out, m;
  // The VNNI kernel's x: each row as int16 (xq_stride wide, zero past `in`) times
  // its scale; a row whose scale is NaN held a non-finite value.
  const int16_t* xq = nullptr;
  const float* xscales = nullptr;
  int64_t xq_stride = 0;
};

// The scale and the bias in one explicit fused multiply-add: left to the
// compiler, `acc * scale + bias` was contracted into one in some blockings and
// not in others, so a row's bits depended on the rows beside it.
inline void store(const RowsArgs& a, int64_t r, int64_t mi, float acc, float scale) {
  a.y[mi * a.out + r] = a.bias ? std::fma(acc, scale, a.bias[r]) : acc * scale;
}
inline void store(const RowsArgs& a, int64_t r, int64_t mi, float acc) { store(a, r, mi, acc, a.scales[r]); }

void rows_scalar(const RowsArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int8_t* w = a.w + r * a.in;
    for (int64_t mi = 0; mi < a.m; ++mi) {
      const float* x = a.x + mi * a.in;
      float acc = 0;
      for (int64_t i = 0; i < a.in; ++i) acc += static_cast<float>(w[i]) * x[i];
      store(a, r, mi, acc);
    }
  }
}

#ifdef MPOOL_X86_INT8

// The weight rows' software prefetch, called at each cache line of a block's
// rows: the next block's same line into L1 (T0), and the line kFarPrefetchBytes
// further on into L2 (T1), so that the rows stream from memory ahead of the
// block that needs them. Hints: they never fault, past the end of the weights
// either. The far one was measured on the Zen 4 host (2 threads streaming 48 MiB
// of 768-wide rows, GB/s of weights): VNNI 1 x row 36-42 -> 41-44, 2 rows
// 29-36 -> 32-42, 8 rows 14-15 -> 16; AVX2 int16 2 rows 21-24 -> 42-45; the
// float32 paths unchanged. 8 int8 streams of the bench Llama decoded 5-8%
// faster, batch 1 unchanged (docs/benchmarks.md, "Prefetching int8 rows
// further ahead").
constexpr int64_t kFarPrefetchBytes = 8192;

template <int NR>
inline void prefetch_next(const int8_t* w, int64_t in, int64_t k) {
  for (int i = 0; i < NR; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(w + (NR + i) * in + k), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w + (NR + i) * in + k + kFarPrefetchBytes), _MM_HINT_T1);
  }
}

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

// Eight int8 weights widened to float32.
__attribute__((target("avx2,fma"))) inline __m256 widen8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

template <int NR, int NX>
__attribute__((target("avx2,fma"))) void block_avx2(const RowsArgs& a, int64_t r, int64_t mi) {
  const int64_t in = a.in, vec_end = in - in % 8;
  __m256 acc[NR][NX];
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < NX; ++j) acc[i][j] = _mm256_setzero_ps();
  const int8_t* w = a.w + r * in;
  const float* x = a.x + mi * in;
  for (int64_t k = 0; k < vec_end; k += 8) {
    if ((k & 63) == 0)
      prefetch_next<NR>(w, in, k);
    __m256 wv[NR];
    for (int i = 0; i < NR; ++i) wv[i] = widen8(w + i * in + k);
    for (int j = 0; j < NX; ++j) {
      const __m256 xv = _mm256_loadu_ps(x + j * in + k);
      for (int i = 0; i < NR; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
    }
  }
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < NX; ++j) {
      float t = hsum256(acc[i][j]);
      for (int64_t k = vec_end; k < in; ++k) t = std::fma(static_cast<float>(w[i * in + k]), x[j * in + k], t);
      store(a, r + i, mi + j, t);
    }
}

__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) inline __m512 widen16(const int8_t* p, __mmask16 mask) {
  // A full vector loads plainly, so the load folds into the sign extension.
  const __m128i raw = mask == static_cast<__mmask16>(0xFFFF) ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))
                                                              : _mm_maskz_loadu_epi8(mask, p);
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw));
}

template <int NR, int NX>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) inline void step_avx512(const int8_t* w, int64_t in,
                                                                                 const float* x, int64_t k,
                                                                                 __mmask16 mask,
                                                                                 __m512 (&acc)[NR][NX]) {
  __m512 wv[NR];
  for (int i = 0; i < NR; ++i) wv[i] = widen16(w + i * in + k, mask);
  for (int j = 0; j < NX; ++j) {
    const __m512 xv = mask == static_cast<__mmask16>(0xFFFF) ? _mm512_loadu_ps(x + j * in + k)
                                                             : _mm512_maskz_loadu_ps(mask, x + j * in + k);
    for (int i = 0; i < NR; ++i) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
  }
}

template <int NR, int NX>
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void block_avx512(const RowsArgs& a, int64_t r,
                                                                            int64_t mi) {
  const int64_t in = a.in, vec_end = in - in % 16;
  __m512 acc[NR][NX];
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < NX; ++j) acc[i][j] = _mm512_setzero_ps();
  const int8_t* w = a.w + r * in;
  const float* x = a.x + mi * in;
  for (int64_t k = 0; k < vec_end; k += 16) {
    // The next block's same line, and one further on (prefetch_next).
    if ((k & 63) == 0)
      prefetch_next<NR>(w, in, k);
    step_avx512<NR, NX>(w, in, x, k, static_cast<__mmask16>(0xFFFF), acc);
  }
  if (vec_end < in) step_avx512<NR, NX>(w, in, x, vec_end, static_cast<__mmask16>((1u << (in - vec_end)) - 1), acc);
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < NX; ++j) store(a, r + i, mi + j, _mm512_reduce_add_ps(acc[i][j]));
}

// The VNNI kernel: x rows quantized to int16 (symmetric per row, scale =
// max|x| / 32767), each weight widened to int16 and multiplied by vpdpwssd,
// which sums pairs of exact products into int32 lanes. A lane takes one product
// in 16 of a row, each at most 127 * 32767 in size, so 8,192 columns (512
// products, under 2^31) are summed exactly in int32 before the lanes go to
// float32; wider rows carry float32 sums from one such segment to the next.
// Every x row is summed in the same order whatever rows run beside it.
constexpr int64_t kVnniSegment = 8192;
constexpr int64_t kVnniStep = 32;
constexpr float kInt16Max = 32767.0f;

template <int NR, int NX>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) inline void step_vnni(const int8_t* w, int64_t in,
                                                                                      const int16_t* x,
                                                                                      int64_t stride, int64_t k,
                                                                                      __mmask32 mask,
                                                                                      __m512i (&acc)[NR][NX]) {
  __m512i wv[NR];
  for (int i = 0; i < NR; ++i) {
    const __m256i raw = mask == static_cast<__mmask32>(0xFFFFFFFFu)
                            ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i * in + k))
                            : _mm256_maskz_loadu_epi8(mask, w + i * in + k);
    wv[i] = _mm512_cvtepi8_epi16(raw);
  }
  for (int j = 0; j < NX; ++j) {
    const __m512i xv = _mm512_loadu_si512(x + j * stride + k);  // zeros past `in`
    for (int i = 0; i < NR; ++i) acc[i][j] = _mm512_dpwssd_epi32(acc[i][j], wv[i], xv);
  }
}

template <int NR, int NX>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void block_vnni(const RowsArgs& a, int64_t r,
                                                                                int64_t mi) {
  const int64_t in = a.in, stride = a.xq_stride, vec_end = in - in % kVnniStep;
  const int8_t* w = a.w + r * in;
  const int16_t* x = a.xq + mi * stride;
  __m512 sums[NR][NX];
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < NX; ++j) sums[i][j] = _mm512_setzero_ps();
  for (int64_t s0 = 0; s0 < in; s0 += kVnniSegment) {
    const int64_t s1 = std::min(in, s0 + kVnniSegment), full_end = std::min(s1, vec_end);
    __m512i acc[NR][NX];
    for (int i = 0; i < NR; ++i)
      for (int j = 0; j < NX; ++j) acc[i][j] = _mm512_setzero_si512();
    int64_t k = s0;
    for (; k < full_end; k += kVnniStep) {
      // The next block's same line, and one further on (prefetch_next).
      if ((k & 63) == 0)
        prefetch_next<NR>(w, in, k);
      step_vnni<NR, NX>(w, in, x, stride, k, static_cast<__mmask32>(0xFFFFFFFFu), acc);
    }
    if (k < s1) step_vnni<NR, NX>(w, in, x, stride, k, static_cast<__mmask32>((1ull << (s1 - k)) - 1), acc);
    for (int i = 0; i < NR; ++i)
      for (int j = 0; j < NX; ++j) sums[i][j] = _mm512_add_ps(sums[i][j], _mm512_cvtepi32_ps(acc[i][j]));
  }
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < NX; ++j) {
      const float xs = a.xscales[mi + j];
      store(a, r + i, mi + j, _mm512_reduce_add_ps(sums[i][j]), a.scales[r + i] * xs);
    }
}

// The same with AVX2: vpmaddwd sums pairs of exact products into eight int32
// lanes (vpaddd accumulates them), so a lane takes one product in 8 and 4,096
// columns (512 products) are exact before float32.
constexpr int64_t kAvx2Int16Segment = 4096;
constexpr int64_t kAvx2Int16Step = 16;

template <int NR, int NX>
__attribute__((target("avx2,fma"))) inline void step_avx2_int16(const int8_t* w, int64_t in, const int16_t* x,
                                                                int64_t stride, int64_t k, int64_t valid,
                                                                __m256i (&acc)[NR][NX]) {
  __m256i wv[NR];
  for (int i = 0; i < NR; ++i) {
    __m128i raw;
    if (valid == kAvx2Int16Step) {
      raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i * in + k));
    } else {  // the row's last few weights, zeros after them (no byte-masked loads in AVX2)
      alignas(16) int8_t tail[kAvx2Int16Step] = {};
      std::memcpy(tail, w + i * in + k, static_cast<size_t>(valid));
      raw = _mm_load_si128(reinterpret_cast<const __m128i*>(tail));
    }
    wv[i] = _mm256_cvtepi8_epi16(raw);
  }
  for (int j = 0; j < NX; ++j) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + j * stride + k));  // zeros past `in`
    for (int i = 0; i < NR; ++i) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(wv[i], xv));
  }
}

template <int NR, int NX>
__attribute__((target("avx2,fma"))) void block_avx2_int16(const RowsArgs& a, int64_t r, int64_t mi) {
  const int64_t in = a.in, stride = a.xq_stride, vec_end = in - in % kAvx2Int16Step;
  const int8_t* w = a.w + r * in;
  const int16_t* x = a.xq + mi * stride;
  __m256 sums[NR][NX];
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < NX; ++j) sums[i][j] = _mm256_setzero_ps();
  for (int64_t s0 = 0; s0 < in; s0 += kAvx2Int16Segment) {
    const int64_t s1 = std::min(in, s0 + kAvx2Int16Segment), full_end = std::min(s1, vec_end);
    __m256i acc[NR][NX];
    for (int i = 0; i < NR; ++i)
      for (int j = 0; j < NX; ++j) acc[i][j] = _mm256_setzero_si256();
    int64_t k = s0;
    for (; k < full_end; k += kAvx2Int16Step) {
      if ((k & 63) == 0)
        prefetch_next<NR>(w, in, k);
      step_avx2_int16<NR, NX>(w, in, x, stride, k, kAvx2Int16Step, acc);
    }
    if (k < s1) step_avx2_int16<NR, NX>(w, in, x, stride, k, s1 - k, acc);
    for (int i = 0; i < NR; ++i)
      for (int j = 0; j < NX; ++j) sums[i][j] = _mm256_add_ps(sums[i][j], _mm256_cvtepi32_ps(acc[i][j]));
  }
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < NX; ++j) store(a, r + i, mi + j, hsum256(sums[i][j]), a.scales[r + i] * a.xscales[mi + j]);
}

// Rows of x as int16 for the int16 kernels, `stride` wide (a multiple of 32,
// zeros past `in`), and their scales: NaN for a row holding a non-finite value,
// 0 for a row of zeros. Eight lanes at a time; cvtps rounds to nearest even, as
// nearbyint does in the default rounding mode for the last few.
__attribute__((target("avx2,fma"))) void quantize_x_int16(const float* x, int64_t m, int64_t in, int64_t stride,
                                                          int16_t* q, float* scales) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256 inf = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  const int64_t vec_end = in - in % 8;
  for (int64_t mi = 0; mi < m; ++mi) {
    const float* row = x + mi * in;
    int16_t* out = q + mi * stride;
    __m256 amax8 = _mm256_setzero_ps(), bad8 = _mm256_setzero_ps();
    for (int64_t i = 0; i < vec_end; i += 8) {
      const __m256 v = _mm256_and_ps(_mm256_loadu_ps(row + i), abs_mask);
      bad8 = _mm256_or_ps(bad8, _mm256_cmp_ps(v, inf, _CMP_NLT_UQ));  // infinity or NaN
      amax8 = _mm256_max_ps(amax8, v);
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, amax8);
    float amax = 0;
    for (float v : lanes) amax = std::max(amax, v);
    bool finite = _mm256_movemask_ps(bad8) == 0;
    for (int64_t i = vec_end; i < in; ++i) {
      const float v = std::fabs(row[i]);
      finite = finite && std::isfinite(v);
      amax = std::max(amax, v);
    }
    std::fill(out + in, out + stride, int16_t{0});
    if (!finite || amax == 0) {
      std::fill(out, out + in, int16_t{0});
      scales[mi] = finite ? 0.0f : std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    const float inv = kInt16Max / amax;
    if (!std::isfinite(inv)) {  // amax so small (under ~1e-34) that 32767 / amax overflows: in double
      const double inv64 = static_cast<double>(kInt16Max) / static_cast<double>(amax);
      for (int64_t i = 0; i < in; ++i)
        out[i] = static_cast<int16_t>(std::clamp(std::nearbyint(static_cast<double>(row[i]) * inv64), -32767.0, 32767.0));
      scales[mi] = amax / kInt16Max;
      continue;
    }
    const __m256 inv8 = _mm256_set1_ps(inv), hi = _mm256_set1_ps(kInt16Max), lo = _mm256_set1_ps(-kInt16Max);
    for (int64_t i = 0; i < vec_end; i += 8) {
      const __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_loadu_ps(row + i), inv8), lo), hi);
      const __m256i n = _mm256_cvtps_epi32(v);
      const __m128i packed = _mm_packs_epi32(_mm256_castsi256_si128(n), _mm256_extracti128_si256(n, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), packed);
    }
    for (int64_t i = vec_end; i < in; ++i)
      out[i] = static_cast<int16_t>(std::clamp(std::nearbyint(row[i] * inv), -kInt16Max, kInt16Max));
    scales[mi] = amax / kInt16Max;
  }
}

// Weight rows [r, r + NR) against x rows [mi, mi + nx), nx <= MaxX: one Block call.
template <int MaxX, template <int, int> class Block, int NR>
void group_of(const RowsArgs& a, int64_t r, int64_t mi, int64_t nx) {
  if (nx == MaxX) return Block<NR, MaxX>::run(a, r, mi);
  switch (nx) {
    case 1: Block<NR, 1>::run(a, r, mi); break;
    case 2: if constexpr (MaxX > 2) Block<NR, 2>::run(a, r, mi); break;
    case 3: if constexpr (MaxX > 3) Block<NR, 3>::run(a, r, mi); break;
    default: break;
  }
}

// Every x row against weight rows [r0, r1): kBlock rows at a time, the x rows
// in groups of up to MaxX (each group reuses the block's rows from L1).
template <int MaxX, template <int, int> class Block, int Rows = kBlock>
void rows_blocked(const RowsArgs& a, int64_t r0, int64_t r1) {
  auto group = [&]<int NR>(int64_t r) {
    for (int64_t mi = 0; mi < a.m; mi += MaxX) group_of<MaxX, Block, NR>(a, r, mi, std::min<int64_t>(MaxX, a.m - mi));
  };
  int64_t r = r0;
  for (; r + Rows <= r1; r += Rows) group.template operator()<Rows>(r);
  for (; r < r1; ++r) group.template operator()<1>(r);
}

// Many rows of x (a prefill chunk, an embedding batch): a tile of x rows
// (about kXTileBytes, kept in L2) against the thread's weight rows a tile at a
// time (about kWTileBytes, kept in L1/L2), and within those, each group of up
// to MaxX x rows against every block of the weight tile. Each output is still
// computed by one Block call, the same whatever the tiling, so its bits do not
// depend on how many rows the call has.
constexpr int64_t kXTileBytes = 192 << 10;
constexpr int64_t kWTileBytes = 32 << 10;

template <int MaxX, template <int, int> class Block>
void rows_tiled(const RowsArgs& a, int64_t r0, int64_t r1) {
  const int64_t x_row_bytes = a.xq != nullptr ? a.xq_stride * 2 : a.in * 4;
  const int64_t tm = std::max<int64_t>(MaxX, kXTileBytes / std::max<int64_t>(1, x_row_bytes) / MaxX * MaxX);
  const int64_t tr = std::max<int64_t>(kBlock, kWTileBytes / std::max<int64_t>(1, a.in) / kBlock * kBlock);
  for (int64_t m0 = 0; m0 < a.m; m0 += tm) {
    const int64_t m1 = std::min(a.m, m0 + tm);
    for (int64_t t0 = r0; t0 < r1; t0 += tr) {
      const int64_t t1 = std::min(r1, t0 + tr);
      for (int64_t mi = m0; mi < m1; mi += MaxX) {
        const int64_t nx = std::min<int64_t>(MaxX, m1 - mi);
        int64_t r = t0;
        for (; r + kBlock <= t1; r += kBlock) group_of<MaxX, Block, kBlock>(a, r, mi, nx);
        for (; r < t1; ++r) group_of<MaxX, Block, 1>(a, r, mi, nx);
      }
    }
  }
}

template <int NR, int NX>
struct Avx2Block {
  static void run(const RowsArgs& a, int64_t r, int64_t mi) { block_avx2<NR, NX>(a, r, mi); }
};
template <int NR, int NX>
struct Avx512Block {
  static void run(const RowsArgs& a, int64_t r, int64_t mi) { block_avx512<NR, NX>(a, r, mi); }
};
template <int NR, int NX>
struct Avx2Int16Block {
  static void run(const RowsArgs& a, int64_t r, int64_t mi) { block_avx2_int16<NR, NX>(a, r, mi); }
};
template <int NR, int NX>
struct VnniBlock {
  static void run(const RowsArgs& a, int64_t r, int64_t mi) { block_vnni<NR, NX>(a, r, mi); }
};

bool cpu_has(const char* what) {
  __builtin_cpu_init();
  if (std::strcmp(what, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (std::strcmp(what, "avx512vnni") == 0) return cpu_has("avx512") && __builtin_cpu_supports("avx512vnni");
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
}

// AMX-BF16 in the CPU (CPUID.7.0:EDX bit 22, tiles bit 24) and its tile state
// enabled by the OS (XCR0 bits 17 and 18).
bool cpu_has_amx_bf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  if (!(d & (1u << 22)) || !(d & (1u << 24))) return false;
  unsigned a1 = 0, b1 = 0, c1 = 0, d1 = 0;
  if (!__get_cpuid(1, &a1, &b1, &c1, &d1) || !(c1 & (1u << 27))) return false;  // OSXSAVE
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & (3u << 17)) == (3u << 17);
}
#endif

void run_rows(const RowsArgs& a, Isa isa) {
  // Chunks of whole blocks, at least ~64 KiB of weights each.
  const int64_t blocks = (a.out + kChunk - 1) / kChunk;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, a.in * kChunk));
  // Many rows (a prefill chunk, an embedding batch) on torch's team, as the ops
  // around them; a decode step's few on TBB's (kernels.h).
  const auto parallel = a.m > rows_kernel_max_rows() ? kernels::parallel_for_beside_torch : kernels::parallel_for;
  parallel(blocks, grain, [&](int64_t b0, int64_t b1) {
    const int64_t r0 = b0 * kChunk, r1 = std::min(a.out, b1 * kChunk);
#ifdef MPOOL_X86_INT8
    // Narrow rows one a pass, as kernels.h's row kernel does (int8: a row's bytes
    // are its width); measured for one and two x rows (768-byte rows: 16.7 ->
    // 23.5 GB/s for one, 18.2 -> 22.4 for two, on 2 threads).
    const bool narrow = a.in <= kernels::kSequentialRowBytes;
    if (a.m > rows_kernel_max_rows()) {
      if (isa == Isa::kAvx512Vnni) return rows_tiled<4, VnniBlock>(a, r0, r1);
      if (isa == Isa::kAvx512) return rows_tiled<4, Avx512Block>(a, r0, r1);
      if (isa == Isa::kAvx2) return rows_tiled<2, Avx2Block>(a, r0, r1);
      if (isa == Isa::kAvx2Int16) return rows_tiled<2, Avx2Int16Block>(a, r0, r1);
    }
    if (isa == Isa::kAvx512Vnni && a.m == 1)
      return narrow ? rows_blocked<1, VnniBlock, 1>(a, r0, r1) : rows_blocked<1, VnniBlock, 8>(a, r0, r1);
    if (isa == Isa::kAvx512Vnni && a.m <= 2)
      return narrow ? rows_blocked<2, VnniBlock, 1>(a, r0, r1) : rows_blocked<2, VnniBlock, 8>(a, r0, r1);
    if (isa == Isa::kAvx512Vnni) return rows_blocked<4, VnniBlock>(a, r0, r1);
    if (isa == Isa::kAvx512 && a.m == 1)
      return narrow ? rows_blocked<1, Avx512Block, 1>(a, r0, r1) : rows_blocked<1, Avx512Block, 8>(a, r0, r1);
    if (isa == Isa::kAvx512 && a.m <= 2)
      return narrow ? rows_blocked<2, Avx512Block, 1>(a, r0, r1) : rows_blocked<2, Avx512Block, 8>(a, r0, r1);
    if (isa == Isa::kAvx512) return rows_blocked<4, Avx512Block>(a, r0, r1);
    if (isa == Isa::kAvx2 && a.m == 1)
      return narrow ? rows_blocked<1, Avx2Block, 1>(a, r0, r1) : rows_blocked<1, Avx2Block, 8>(a, r0, r1);
    if (isa == Isa::kAvx2Int16 && a.m == 1)
      return narrow ? rows_blocked<1, Avx2Int16Block, 1>(a, r0, r1) : rows_blocked<1, Avx2Int16Block, 8>(a, r0, r1);
    if (isa == Isa::kAvx2) return rows_blocked<2, Avx2Block>(a, r0, r1);
    if (isa == Isa::kAvx2Int16) return rows_blocked<2, Avx2Int16Block>(a, r0, r1);
#endif
    (void)isa;
    rows_scalar(a, r0, r1);
  });
}

#ifdef MPOOL_X86_INT8
// bfloat16 bits of float bits, rounded to nearest even (16 lanes).
__attribute__((target("avx512f,avx512bw"))) inline __m512i round_bf16(__m512i bits) {
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  return _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), odd)), 16);
}
inline uint16_t round_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}
inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// n int8 values as bfloat16 bits: exact, as |q| <= 127 fits bf16's 8-bit significand.
__attribute__((target("avx512f,avx512bw"))) void widen_bf16(const int8_t* q, uint16_t* out, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i))));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(f), 16)));
  }
  for (; i < n; ++i) out[i] = round_bf16(static_cast<float>(q[i]));
}

// x = hi + lo, both bfloat16 (hi = x rounded, lo = the rest rounded): together
// within 2^-16 of x, relative.
__attribute__((target("avx512f,avx512bw"))) void split_bf16(const float* x, uint16_t* hi, uint16_t* lo, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    const __m512i h = round_bf16(_mm512_castps_si512(v));
    const __m512 rest = _mm512_sub_ps(v, _mm512_castsi512_ps(_mm512_slli_epi32(h, 16)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi + i), _mm512_cvtepi32_epi16(h));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo + i),
                        _mm512_cvtepi32_epi16(round_bf16(_mm512_castps_si512(rest))));
  }
  for (; i < n; ++i) {
    hi[i] = round_bf16(x[i]);
    lo[i] = round_bf16(x[i] - bf16_to_float(hi[i]));
  }
}

// y (m, n) = x (m, k) @ q^T in float32 through MKL's bf16 GEMM: x as hi + lo,
// q widened to bf16 a block of rows at a time (about 2 MiB, so the block stays
// in cache between its widening and its two GEMMs).
void gemm_bf16(const at::Tensor& x, const at::Tensor& q, float* y) {
  const int64_t m = x.size(0), k = x.size(1), n = q.size(0);
  std::vector<uint16_t> hi(static_cast<size_t>(m * k)), lo(static_cast<size_t>(m * k));
  const float* xp = x.const_data_ptr<float>();
  // On torch's team, as MKL's GEMMs between them (kernels.h: parallel_for_beside_torch).
  kernels::parallel_for_beside_torch(m, std::max<int64_t>(1, 4096 / k), [&](int64_t r0, int64_t r1) {
    split_bf16(xp + r0 * k, hi.data() + r0 * k, lo.data() + r0 * k, (r1 - r0) * k);
  });
  const int64_t block = std::clamp<int64_t>(((int64_t{1} << 20) / k) / 16 * 16, 16, n);
  std::vector<uint16_t> wb(static_cast<size_t>(block * k));
  const int8_t* qp = q.const_data_ptr<int8_t>();
  const int mi = static_cast<int>(m), ki = static_cast<int>(k), ni = static_cast<int>(n);
  for (int64_t n0 = 0; n0 < n; n0 += block) {
    const int64_t rows = std::min(block, n - n0);
    kernels::parallel_for_beside_torch(rows, std::max<int64_t>(1, 16384 / k), [&](int64_t r0, int64_t r1) {
      widen_bf16(qp + (n0 + r0) * k, wb.data() + r0 * k, (r1 - r0) * k);
    });
    const int nb = static_cast<int>(rows);
    cblas_gemm_bf16bf16f32(101, 111, 112, mi, nb, ki, 1.0f, hi.data(), ki, wb.data(), ki, 0.0f, y + n0, ni);
    cblas_gemm_bf16bf16f32(101, 111, 112, mi, nb, ki, 1.0f, lo.data(), ki, wb.data(), ki, 1.0f, y + n0, ni);
  }
}
#endif

// Rows [r0, r1) of q (k wide) times their scales, as float32 rows of `out`:
// each weight the float32 `q * scale` that `dequantize` gives, in every ISA.
void dequantize_scalar(const int8_t* q, const float* scales, float* out, int64_t r0, int64_t r1, int64_t k) {
  for (int64_t r = r0; r < r1; ++r) {
    const int8_t* src = q + r * k;
    float* dst = out + (r - r0) * k;
    const float s = scales[r];
    for (int64_t i = 0; i < k; ++i) dst[i] = static_cast<float>(src[i]) * s;
  }
}

#ifdef MPOOL_X86_INT8
__attribute__((target("avx512f,avx512bw,avx512vl,fma"))) void dequantize_avx512(const int8_t* q, const float* scales,
                                                                                float* out, int64_t r0, int64_t r1,
                                                                                int64_t k) {
  for (int64_t r = r0; r < r1; ++r) {
    const int8_t* src = q + r * k;
    float* dst = out + (r - r0) * k;
    const __m512 s = _mm512_set1_ps(scales[r]);
    int64_t i = 0;
    for (; i + 64 <= k; i += 64) {
      const __m512i b = _mm512_loadu_si512(src + i);
      _mm512_storeu_ps(dst + i, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_castsi512_si128(b))), s));
      _mm512_storeu_ps(dst + i + 16,
                       _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(b, 1))), s));
      _mm512_storeu_ps(dst + i + 32,
                       _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(b, 2))), s));
      _mm512_storeu_ps(dst + i + 48,
                       _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm512_extracti32x4_epi32(b, 3))), s));
    }
    for (; i < k; i += 16) {
      const __mmask16 mask = k - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (k - i)) - 1);
      const __m512 w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, src + i)));
      _mm512_mask_storeu_ps(dst + i, mask, _mm512_mul_ps(w, s));
    }
  }
}

__attribute__((target("avx2,fma"))) void dequantize_avx2(const int8_t* q, const float* scales, float* out, int64_t r0,
                                                         int64_t r1, int64_t k) {
  for (int64_t r = r0; r < r1; ++r) {
    const int8_t* src = q + r * k;
    float* dst = out + (r - r0) * k;
    const __m256 s = _mm256_set1_ps(scales[r]);
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) _mm256_storeu_ps(dst + i, _mm256_mul_ps(widen8(src + i), s));
    for (; i < k; ++i) dst[i] = static_cast<float>(src[i]) * scales[r];
  }
}
#endif

void dequantize_rows(const int8_t* q, const float* scales, float* out, int64_t r0, int64_t r1, int64_t k, Isa isa) {
#ifdef MPOOL_X86_INT8
  if (isa == Isa::kAvx512 || isa == Isa::kAvx512Vnni) return dequantize_avx512(q, scales, out, r0, r1, k);
  if (isa == Isa::kAvx2 || isa == Isa::kAvx2Int16) return dequantize_avx2(q, scales, out, r0, r1, k);
#endif
  (void)isa;
  dequantize_scalar(q, scales, out, r0, r1, k);
}

// y (m, n) = x (m, k) @ (q * scales)^T + bias through the process's float32
// GEMM library (kernels::linear: oneDNN or ATen, see gemm.h), the weights
// dequantized a block of rows at a time (about 2 MiB of float32, so a block
// stays in cache between its widening and its GEMM) rather than whole each
// call. Each weight is the same float32 `dequantize` gives.
at::Tensor gemm_float32(const at::Tensor& x, const Quantized& w, const at::Tensor& bias, Isa isa) {
  const int64_t m = x.size(0), k = x.size(1), n = w.q.size(0);
  const at::Tensor q = w.q.contiguous(), scales = w.scales.contiguous();
  const int8_t* qp = q.const_data_ptr<int8_t>();
  const float* sp = scales.const_data_ptr<float>();
  const int64_t block = std::min(n, std::max<int64_t>(64, ((int64_t{1} << 19) / std::max<int64_t>(1, k)) / 16 * 16));
  at::Tensor y = block < n ? at::empty({m, n}, x.options()) : at::Tensor();
  at::Tensor wb = at::empty({block, k}, x.options());
  for (int64_t n0 = 0; n0 < n; n0 += block) {
    const int64_t rows = std::min(block, n - n0);
    float* wp = wb.data_ptr<float>();
    // The GEMM's own thread team, so no second pool spins beside it.
    kernels::parallel_for_beside_torch(rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, k)), [&](int64_t r0, int64_t r1) {
      dequantize_rows(qp, sp, wp + r0 * k, n0 + r0, n0 + r1, k, isa);
    });
    const at::Tensor part = kernels::linear(x, wb.narrow(0, 0, rows), bias.defined() ? bias.narrow(0, n0, rows) : bias);
    if (rows == n) return part;
    y.narrow(1, n0, rows).copy_(part);
  }
  return y;
}

at::Tensor gemm(const at::Tensor& x, const Quantized& w, const at::Tensor& bias, Isa isa) {
#ifdef MPOOL_X86_INT8
  const int64_t m = x.size(0), k = x.size(1), n = w.q.size(0);
  if (has_bf16_gemm() && m < INT_MAX && n < INT_MAX && k < INT_MAX) {
    at::Tensor y = at::empty({m, n}, x.options());
    gemm_bf16(x, w.q.contiguous(), y.data_ptr<float>());
    y.mul_(w.scales);
    if (bias.defined()) y.add_(bias);
    return y;
  }
#endif
  return gemm_float32(x, w, bias, isa);
}

}  // namespace

Quantized quantize_rows(const at::Tensor& weight, std::string_view what) {
  const std::string of = "int8 quantization of " + (what.empty() ? std::string("a weight") : std::string(what));
  check(weight.defined() && weight.dim() == 2 && at::isFloatingType(weight.scalar_type()), ErrorCode::kInvalidInput,
        of + ": needs a 2-D floating-point weight");
  if (weight.device().is_meta())
    return {at::empty(weight.sizes(), weight.options().dtype(at::kChar)),
            at::empty({weight.size(0)}, weight.options().dtype(at::kFloat))};
  const at::Tensor wf = weight.to(at::kFloat);
  const at::Tensor bad_rows = at::isfinite(wf).all(1).logical_not().nonzero();
  check(bad_rows.numel() == 0, ErrorCode::kInvalidInput,
        of + ": row " + (bad_rows.numel() ? std::to_string(bad_rows[0][0].item<int64_t>()) : std::string()) +
            " holds a non-finite value (NaN or infinity), which int8 cannot scale");
  at::Tensor scales = std::get<0>(wf.abs().max(1)).div_(127.0f);
  scales.masked_fill_(scales.eq(0), 1.0f);
  at::Tensor q = wf.div(scales.unsqueeze(1)).round_().clamp_(-127, 127).to(at::kChar).contiguous();
  return {std::move(q), scales.contiguous()};
}

at::Tensor dequantize(const Quantized& w) { return w.q.to(at::kFloat).mul_(w.scales.unsqueeze(1)); }

Isa best_isa() {
#ifdef MPOOL_X86_INT8
  static const Isa isa = cpu_has("avx512vnni") ? Isa::kAvx512Vnni
                         : cpu_has("avx512")   ? Isa::kAvx512
                         : cpu_has("avx2")     ? Isa::kAvx2Int16
                                               : Isa::kScalar;
  return isa;
#else
  return Isa::kScalar;
#endif
}

std::string isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx2Int16: return "avx2_int16";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx512Vnni: return "avx512_vnni";
    case Isa::kAvx2: return "avx2";
    case Isa::kScalar: break;
  }
  return "scalar";
}

bool has_bf16_gemm() {
#ifdef MPOOL_X86_INT8
  static const bool yes = &cblas_gemm_bf16bf16f32 != nullptr && cpu_has("avx512") && cpu_has_amx_bf16();
  return yes;
#else
  return false;
#endif
}

int64_t rows_kernel_max_rows() { return 16; }

bool auto_takes_rows(int64_t m, Isa isa) {
  return m <= rows_kernel_max_rows() || kernels::row_invariant() ||
         ((isa == Isa::kAvx512Vnni || isa == Isa::kAvx2Int16) && !has_bf16_gemm());
}

at::Tensor linear_with(const at::Tensor& x, const Quantized& w, const at::Tensor& bias, Isa isa, Path path) {
  check(w.q.defined() && w.q.dim() == 2 && w.q.scalar_type() == at::kChar && w.scales.defined() &&
            w.scales.scalar_type() == at::kFloat && w.scales.numel() == w.q.size(0),
        ErrorCode::kInvalidInput, "int8 linear: q must be int8 (out, in) with float32 scales (out)");
  const int64_t out = w.q.size(0), in = w.q.size(1);
  check(x.defined() && x.dim() >= 1 && x.size(-1) == in, ErrorCode::kInvalidInput,
        "int8 linear: the input must end in " + std::to_string(in) + " features");
  check(x.device().is_cpu() && w.q.device().is_cpu(), ErrorCode::kInvalidInput,
        "int8 linear runs on the CPU only");
  check(!bias.defined() || (bias.numel() == out && bias.scalar_type() == at::kFloat), ErrorCode::kInvalidInput,
        "int8 linear: the bias must be float32 (" + std::to_string(out) + ")");
#ifdef MPOOL_X86_INT8
  check(isa == Isa::kScalar || ((isa == Isa::kAvx2 || isa == Isa::kAvx2Int16) && cpu_has("avx2")) ||
            (isa == Isa::kAvx512 && cpu_has("avx512")) ||
            (isa == Isa::kAvx512Vnni && cpu_has("avx512vnni")),
        ErrorCode::kInvalidInput, "int8 linear: this CPU has no " + isa_name(isa));
#else
  check(isa == Isa::kScalar, ErrorCode::kInvalidInput, "int8 linear: this CPU has no " + isa_name(isa));
#endif
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out;
  const at::Tensor x2 = x.to(at::kFloat).reshape({-1, in}).contiguous();
  const int64_t m = x2.size(0);
  if (path == Path::kAuto) path = auto_takes_rows(m, isa) ? Path::kRows : Path::kGemm;
  if (m == 0 || out == 0) return at::zeros(shape, x2.options());
  if (path == Path::kGemm) return gemm(x2, w, bias.defined() ? bias.view({out}) : bias, isa).view(shape);
  at::Tensor y = at::empty({m, out}, x2.options());
  const at::Tensor b = bias.defined() ? bias.contiguous() : bias;
  const at::Tensor q = w.q.contiguous(), s = w.scales.contiguous();
  RowsArgs args{q.const_data_ptr<int8_t>(), s.const_data_ptr<float>(), b.defined() ? b.const_data_ptr<float>() : nullptr,
                x2.const_data_ptr<float>(), y.data_ptr<float>(), in, out, m};
#ifdef MPOOL_X86_INT8
  // This call's own buffers (uninitialized: every value is written), never
  // shared with another call that might run on the same thread meanwhile.
  std::unique_ptr<int16_t[]> xq;
  std::unique_ptr<float[]> xscales;
  if (isa == Isa::kAvx512Vnni || isa == Isa::kAvx2Int16) {
    args.xq_stride = (in + kVnniStep - 1) / kVnniStep * kVnniStep;
    xq.reset(new int16_t[static_cast<size_t>(m * args.xq_stride)]);
    xscales.reset(new float[static_cast<size_t>(m)]);
    // Many rows (past a decode step's) are quantized apart on torch's team.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, in));
    int16_t* qp = xq.get();
    float* sp = xscales.get();
    auto quantize = [&](int64_t r0, int64_t r1) {
      quantize_x_int16(args.x + r0 * in, r1 - r0, in, args.xq_stride, qp + r0 * args.xq_stride, sp + r0);
    };
    if (m > rows_kernel_max_rows())
      kernels::parallel_for_beside_torch(m, grain, quantize);
    else
      quantize(0, m);
    args.xq = xq.get();
    args.xscales = xscales.get();
  }
#endif
  run_rows(args, isa);
  return y.view(shape);
}

at::Tensor linear(const at::Tensor& x, const Quantized& w, const at::Tensor& bias) {
  return linear_with(x, w, bias, best_isa(), Path::kAuto);
}

}  // namespace mpool::nn::int8
