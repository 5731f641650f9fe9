#include "mpool/nn/kernels.h"

#include <ATen/Parallel.h>

#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MPOOL_X86_GEMV 1
#endif

namespace mpool::nn::kernels {
namespace {

#ifdef MPOOL_X86_GEMV
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

// y[r] = dot(w[r, :], x) for rows [r0, r1): four rows per pass so each load of x
// serves four weight streams; float32 accumulation whatever the weight type.
template <class W>
__attribute__((target("avx2,fma"))) void gemv_rows(const W* w, const float* x, float* y, int64_t in, int64_t r0,
                                                   int64_t r1) {
  const int64_t vec_end = in - in % 8;
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const W* rows[4] = {w + r * in, w + (r + 1) * in, w + (r + 2) * in, w + (r + 3) * in};
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t i = 0; i < vec_end; i += 8) {
      __m256 xv = _mm256_loadu_ps(x + i);
      for (int k = 0; k < 4; ++k) acc[k] = _mm256_fmadd_ps(load8(rows[k] + i), xv, acc[k]);
    }
    for (int k = 0; k < 4; ++k) {
      float t = hsum(acc[k]);
      for (int64_t i = vec_end; i < in; ++i) t += to_float(rows[k][i]) * x[i];
      y[r + k] = t;
    }
  }
  for (; r < r1; ++r) {
    const W* a = w + r * in;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < vec_end; i += 8) acc = _mm256_fmadd_ps(load8(a + i), _mm256_loadu_ps(x + i), acc);
    float t = hsum(acc);
    for (int64_t i = vec_end; i < in; ++i) t += to_float(a[i]) * x[i];
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
  const int64_t in = weight.dim() == 2 ? weight.size(1) : -1;
  const at::ScalarType type = weight.scalar_type();
  if (cpu_has_avx2_fma() && in > 0 && x.device().is_cpu() && weight.device().is_cpu() &&
      (type == at::kFloat || type == at::kBFloat16) && x.scalar_type() == type && x.numel() == in &&
      x.size(-1) == in && weight.is_contiguous() && (!bias.defined() || bias.scalar_type() == type)) {
    const int64_t out = weight.size(0);
    // float32 in and out; a bfloat16 row is widened first and the result rounded
    // back, as ATen's bf16 GEMM accumulates in float32 and rounds once.
    at::Tensor xf = x.to(at::kFloat).contiguous();
    at::Tensor yf = at::empty({out}, xf.options());
    const float* xp = xf.const_data_ptr<float>();
    float* yp = yf.data_ptr<float>();
    const int64_t blocks = (out + 3) / 4;  // four rows per pass
    auto run = [&](const auto* w) {
      at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
        gemv_rows(w, xp, yp, in, b0 * 4, std::min(out, b1 * 4));
      });
    };
    if (type == at::kFloat)
      run(weight.const_data_ptr<float>());
    else
      run(reinterpret_cast<const uint16_t*>(weight.const_data_ptr<at::BFloat16>()));
    if (bias.defined()) yf.add_(bias.to(at::kFloat).view({out}));
    std::vector<int64_t> shape = x.sizes().vec();
    shape.back() = out;
    return yf.view(shape).to(type);
  }
#endif
  return at::linear(x, weight, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt);
}

}  // namespace mpool::nn::kernels
