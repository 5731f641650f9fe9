#include "mpool/models/kernels.h"

#include <ATen/Parallel.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MPOOL_X86_GEMV 1
#endif

namespace mpool::models::kernels {
namespace {

#ifdef MPOOL_X86_GEMV
__attribute__((target("avx2,fma"))) inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

// y[r] = dot(w[r, :], x) for rows [r0, r1): four rows per pass so each load of x
// serves four weight streams.
__attribute__((target("avx2,fma"))) void gemv_rows(const float* w, const float* x, float* y, int64_t in, int64_t r0,
                                                   int64_t r1) {
  const int64_t vec_end = in - in % 8;
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const float* a = w + r * in;
    const float* b = a + in;
    const float* c = b + in;
    const float* d = c + in;
    __m256 sa = _mm256_setzero_ps(), sb = _mm256_setzero_ps(), sc = _mm256_setzero_ps(), sd = _mm256_setzero_ps();
    for (int64_t i = 0; i < vec_end; i += 8) {
      __m256 xv = _mm256_loadu_ps(x + i);
      sa = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), xv, sa);
      sb = _mm256_fmadd_ps(_mm256_loadu_ps(b + i), xv, sb);
      sc = _mm256_fmadd_ps(_mm256_loadu_ps(c + i), xv, sc);
      sd = _mm256_fmadd_ps(_mm256_loadu_ps(d + i), xv, sd);
    }
    float ta = hsum(sa), tb = hsum(sb), tc = hsum(sc), td = hsum(sd);
    for (int64_t i = vec_end; i < in; ++i) {
      ta += a[i] * x[i];
      tb += b[i] * x[i];
      tc += c[i] * x[i];
      td += d[i] * x[i];
    }
    y[r] = ta;
    y[r + 1] = tb;
    y[r + 2] = tc;
    y[r + 3] = td;
  }
  for (; r < r1; ++r) {
    const float* a = w + r * in;
    __m256 s = _mm256_setzero_ps();
    for (int64_t i = 0; i < vec_end; i += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(x + i), s);
    float t = hsum(s);
    for (int64_t i = vec_end; i < in; ++i) t += a[i] * x[i];
    y[r] = t;
  }
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

bool has_fast_gemv() {
#ifdef MPOOL_X86_GEMV
  return cpu_has_avx2_fma();
#else
  return false;
#endif
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
#ifdef MPOOL_X86_GEMV
  const int64_t in = weight.size(1);
  if (cpu_has_avx2_fma() && x.device().is_cpu() && weight.device().is_cpu() && x.scalar_type() == at::kFloat &&
      weight.scalar_type() == at::kFloat && x.numel() == in && x.size(-1) == in && weight.is_contiguous() &&
      (!bias.defined() || bias.scalar_type() == at::kFloat)) {
    const int64_t out = weight.size(0);
    at::Tensor xc = x.contiguous();
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = out;
    at::Tensor y = bias.defined() ? bias.reshape(shape).clone() : at::empty(shape, x.options());
    at::Tensor dots = bias.defined() ? at::empty({out}, x.options()) : y;
    const float* w = weight.const_data_ptr<float>();
    const float* xp = xc.const_data_ptr<float>();
    float* yp = dots.data_ptr<float>();
    // Blocks of 4 rows; a grain of 64 rows keeps small matrices on one thread.
    const int64_t blocks = (out + 3) / 4;
    at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
      gemv_rows(w, xp, yp, in, b0 * 4, std::min(out, b1 * 4));
    });
    if (bias.defined()) y.view({out}).add_(dots);
    return y;
  }
#endif
  return at::linear(x, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt);
}

}  // namespace mpool::models::kernels
