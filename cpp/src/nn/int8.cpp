#include "mpool/nn/int8.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
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
};

// The scale and the bias in one explicit fused multiply-add: left to the
// compiler, `acc * scale + bias` was contracted into one in some blockings and
// not in others, so a row's bits depended on the rows beside it.
inline void store(const RowsArgs& a, int64_t r, int64_t mi, float acc) {
  a.y[mi * a.out + r] = a.bias ? std::fma(acc, a.scales[r], a.bias[r]) : acc * a.scales[r];
}

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
      for (int i = 0; i < NR; ++i) _mm_prefetch(reinterpret_cast<const char*>(w + (NR + i) * in + k), _MM_HINT_T0);
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
    // One block ahead: the next rows' same cache line (a hint; never faults).
    if ((k & 63) == 0)
      for (int i = 0; i < NR; ++i) _mm_prefetch(reinterpret_cast<const char*>(w + (NR + i) * in + k), _MM_HINT_T0);
    step_avx512<NR, NX>(w, in, x, k, static_cast<__mmask16>(0xFFFF), acc);
  }
  if (vec_end < in) step_avx512<NR, NX>(w, in, x, vec_end, static_cast<__mmask16>((1u << (in - vec_end)) - 1), acc);
  for (int i = 0; i < NR; ++i)
    for (int j = 0; j < NX; ++j) store(a, r + i, mi + j, _mm512_reduce_add_ps(acc[i][j]));
}

// Every x row against weight rows [r0, r1): kBlock rows at a time, the x rows
// in groups of up to MaxX (each group reuses the block's rows from L1).
template <int MaxX, template <int, int> class Block, int Rows = kBlock>
void rows_blocked(const RowsArgs& a, int64_t r0, int64_t r1) {
  auto group = [&]<int NR>(int64_t r) {
    int64_t mi = 0;
    for (; mi + MaxX <= a.m; mi += MaxX) Block<NR, MaxX>::run(a, r, mi);
    switch (a.m - mi) {
      case 0: break;
      case 1: Block<NR, 1>::run(a, r, mi); break;
      case 2: if constexpr (MaxX > 2) Block<NR, 2>::run(a, r, mi); break;
      case 3: if constexpr (MaxX > 3) Block<NR, 3>::run(a, r, mi); break;
      default: break;
    }
  };
  int64_t r = r0;
  for (; r + Rows <= r1; r += Rows) group.template operator()<Rows>(r);
  for (; r < r1; ++r) group.template operator()<1>(r);
}

template <int NR, int NX>
struct Avx2Block {
  static void run(const RowsArgs& a, int64_t r, int64_t mi) { block_avx2<NR, NX>(a, r, mi); }
};
template <int NR, int NX>
struct Avx512Block {
  static void run(const RowsArgs& a, int64_t r, int64_t mi) { block_avx512<NR, NX>(a, r, mi); }
};

bool cpu_has(const char* what) {
  __builtin_cpu_init();
  if (std::strcmp(what, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
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
  kernels::parallel_for(blocks, grain, [&](int64_t b0, int64_t b1) {
    const int64_t r0 = b0 * kChunk, r1 = std::min(a.out, b1 * kChunk);
#ifdef MPOOL_X86_INT8
    // Narrow rows one a pass, as kernels.h's row kernel does (int8: a row's bytes
    // are its width); measured for one and two x rows (768-byte rows: 16.7 ->
    // 23.5 GB/s for one, 18.2 -> 22.4 for two, on 2 threads).
    const bool narrow = a.in <= kernels::kSequentialRowBytes;
    if (isa == Isa::kAvx512 && a.m == 1)
      return narrow ? rows_blocked<1, Avx512Block, 1>(a, r0, r1) : rows_blocked<1, Avx512Block, 8>(a, r0, r1);
    if (isa == Isa::kAvx512 && a.m <= 2)
      return narrow ? rows_blocked<2, Avx512Block, 1>(a, r0, r1) : rows_blocked<2, Avx512Block, 8>(a, r0, r1);
    if (isa == Isa::kAvx512) return rows_blocked<4, Avx512Block>(a, r0, r1);
    if (isa == Isa::kAvx2) return rows_blocked<2, Avx2Block>(a, r0, r1);
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
  kernels::parallel_for(m, std::max<int64_t>(1, 4096 / k), [&](int64_t r0, int64_t r1) {
    split_bf16(xp + r0 * k, hi.data() + r0 * k, lo.data() + r0 * k, (r1 - r0) * k);
  });
  const int64_t block = std::clamp<int64_t>(((int64_t{1} << 20) / k) / 16 * 16, 16, n);
  std::vector<uint16_t> wb(static_cast<size_t>(block * k));
  const int8_t* qp = q.const_data_ptr<int8_t>();
  const int mi = static_cast<int>(m), ki = static_cast<int>(k), ni = static_cast<int>(n);
  for (int64_t n0 = 0; n0 < n; n0 += block) {
    const int64_t rows = std::min(block, n - n0);
    kernels::parallel_for(rows, std::max<int64_t>(1, 16384 / k), [&](int64_t r0, int64_t r1) {
      widen_bf16(qp + (n0 + r0) * k, wb.data() + r0 * k, (r1 - r0) * k);
    });
    const int nb = static_cast<int>(rows);
    cblas_gemm_bf16bf16f32(101, 111, 112, mi, nb, ki, 1.0f, hi.data(), ki, wb.data(), ki, 0.0f, y + n0, ni);
    cblas_gemm_bf16bf16f32(101, 111, 112, mi, nb, ki, 1.0f, lo.data(), ki, wb.data(), ki, 1.0f, y + n0, ni);
  }
}
#endif

// y (m, n) = x (m, k) @ (q * scales)^T + bias through the process's float32
// GEMM library (kernels::linear: oneDNN or ATen, see gemm.h), the weights
// dequantized a block of rows at a time (about 2 MiB of float32, so a block
// stays in cache between its widening and its GEMM) rather than whole each
// call. Each weight is the same float32 `dequantize` gives.
at::Tensor gemm_float32(const at::Tensor& x, const Quantized& w, const at::Tensor& bias) {
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
    // at::parallel_for: the GEMM's own thread team, so no second pool spins beside it.
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, k)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int8_t* src = qp + (n0 + r) * k;
        float* dst = wp + r * k;
        const float s = sp[n0 + r];
        for (int64_t i = 0; i < k; ++i) dst[i] = static_cast<float>(src[i]) * s;
      }
    });
    const at::Tensor part = kernels::linear(x, wb.narrow(0, 0, rows), bias.defined() ? bias.narrow(0, n0, rows) : bias);
    if (rows == n) return part;
    y.narrow(1, n0, rows).copy_(part);
  }
  return y;
}

at::Tensor gemm(const at::Tensor& x, const Quantized& w, const at::Tensor& bias) {
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
  return gemm_float32(x, w, bias);
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
  static const Isa isa = cpu_has("avx512") ? Isa::kAvx512 : cpu_has("avx2") ? Isa::kAvx2 : Isa::kScalar;
  return isa;
#else
  return Isa::kScalar;
#endif
}

std::string isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512: return "avx512";
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
  check(isa == Isa::kScalar || (isa == Isa::kAvx2 && cpu_has("avx2")) || (isa == Isa::kAvx512 && cpu_has("avx512")),
        ErrorCode::kInvalidInput, "int8 linear: this CPU has no " + isa_name(isa));
#else
  check(isa == Isa::kScalar, ErrorCode::kInvalidInput, "int8 linear: this CPU has no " + isa_name(isa));
#endif
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = out;
  const at::Tensor x2 = x.to(at::kFloat).reshape({-1, in}).contiguous();
  const int64_t m = x2.size(0);
  if (path == Path::kAuto) path = m <= rows_kernel_max_rows() ? Path::kRows : Path::kGemm;
  if (m == 0 || out == 0) return at::zeros(shape, x2.options());
  if (path == Path::kGemm) return gemm(x2, w, bias.defined() ? bias.view({out}) : bias).view(shape);
  at::Tensor y = at::empty({m, out}, x2.options());
  const at::Tensor b = bias.defined() ? bias.contiguous() : bias;
  const at::Tensor q = w.q.contiguous(), s = w.scales.contiguous();
  RowsArgs args{q.const_data_ptr<int8_t>(), s.const_data_ptr<float>(), b.defined() ? b.const_data_ptr<float>() : nullptr,
                x2.const_data_ptr<float>(), y.data_ptr<float>(), in, out, m};
  run_rows(args, isa);
  return y.view(shape);
}

at::Tensor linear(const at::Tensor& x, const Quantized& w, const at::Tensor& bias) {
  return linear_with(x, w, bias, best_isa(), Path::kAuto);
}

}  // namespace mpool::nn::int8
