// kernels::attention: mpool's CPU attention for many query rows (encoders,
// prefill, vision and diffusion transformers). The row-block kernel itself is
// attention_rows.inc, compiled here once for AVX-512 and once for AVX2.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "mpool/base/error.h"
#include "mpool/nn/kernels.h"
#include "simd_exp.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MPOOL_X86_ATTENTION 1
#endif

namespace mpool::nn::kernels {
namespace {

std::atomic<int> g_choice{-1};  // -1: MPOOL_CPU_ATTENTION not read yet
std::once_flag g_env_once;

// Query rows [i0, i0 + rows) of one (sequence, head): pointers at row i0 (q,
// out, mask) or key 0 (k, v), strides in elements; kt and s are the calling
// thread's scratch (the keys transposed, and the score tile).
struct AttendRows {
  const float* q;
  int64_t q_row;
  const float* k;
  int64_t k_row;
  const float* v;
  int64_t v_row;
  float* out;
  int64_t out_row;
  int64_t i0, rows, t, d, dv;
  float scale;
  bool causal;
  const uint8_t* mask_bool;  // one of the two masks, or neither
  const float* mask_add;
  int64_t mask_row, mask_col;
  float* kt;
  float* s;
};

}  // namespace

#ifdef MPOOL_X86_ATTENTION
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
namespace attention_avx512 {
struct Vec {
  using V = __m512;
  static constexpr int64_t W = 16;
  static __mmask16 mask(int64_t n) { return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1); }
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V load_n(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store_n(float* p, V v, int64_t n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static uint32_t bits(const uint8_t* m, int64_t n) {
    const __m128i bytes = _mm_maskz_loadu_epi8(mask(n), m);
    return _mm_test_epi8_mask(bytes, bytes);
  }
  static V keep(V x, int64_t n, uint32_t lanes) {
    const __mmask16 m = n <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>(mask(n) & lanes);
    return _mm512_mask_mov_ps(_mm512_set1_ps(-__builtin_inff()), m, x);
  }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
  static float hmax(V v) { return _mm512_reduce_max_ps(v); }
  static V exp_nonpositive(V x) { return simd::exp_nonpositive(x); }
};
constexpr int QK_ROWS = 8, QK_KEYS = 2, PV_CELLS = 16;
#include "attention_rows.inc"
}  // namespace attention_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace attention_avx2 {
struct Vec {
  using V = __m256;
  static constexpr int64_t W = 8;
  static __m256i mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V load_n(const float* p, int64_t n) { return _mm256_maskload_ps(p, mask(n)); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store_n(float* p, V v, int64_t n) { _mm256_maskstore_ps(p, mask(n), v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static uint32_t bits(const uint8_t* m, int64_t n) {
    uint32_t out = 0;
    if (n >= 8) {
      const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(m));
      out = ~static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_setzero_si128()))) & 0xFFu;
    } else {
      for (int64_t u = 0; u < n; ++u) out |= static_cast<uint32_t>(m[u] != 0) << u;
    }
    return out;
  }
  static V keep(V x, int64_t n, uint32_t lanes) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i on = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(lanes & 0xFFu)), bit), bit);
    const __m256i m = _mm256_and_si256(on, mask(n <= 0 ? 0 : n));
    return _mm256_blendv_ps(_mm256_set1_ps(-__builtin_inff()), x, _mm256_castsi256_ps(m));
  }
  static float hsum(V v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
  }
  static float hmax(V v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
  }
  static V exp_nonpositive(V x) { return simd::exp_nonpositive(x); }
};
constexpr int QK_ROWS = 4, QK_KEYS = 2, PV_CELLS = 8;
#include "attention_rows.inc"
}  // namespace attention_avx2
#pragma GCC pop_options
#endif

namespace {

enum class Isa { kNone, kAvx2, kAvx512 };

constexpr int64_t kMaxTransposedKeys = int64_t{1} << 20;  // floats

Isa widest_isa() {
#ifdef MPOOL_X86_ATTENTION
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
      return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
    return Isa::kNone;
  }();
  return isa;
#else
  return Isa::kNone;
#endif
}

}  // namespace

CpuAttention parse_cpu_attention(std::string_view value, const std::string& where) {
  if (value == "mpool") return CpuAttention::kMpool;
  if (value == "aten") return CpuAttention::kAten;
  throw Error(ErrorCode::kInvalidInput, where + ": the CPU attention must be 'mpool' or 'aten', got '" +
                                           std::string(value) + "'");
}

CpuAttention cpu_attention() {
  const int c = g_choice.load(std::memory_order_acquire);
  if (c >= 0) return static_cast<CpuAttention>(c);
  std::call_once(g_env_once, [] {
    const char* env = std::getenv("MPOOL_CPU_ATTENTION");
    const std::string_view value = env != nullptr && *env != '\0' ? std::string_view(env) : "mpool";
    int expected = -1;
    g_choice.compare_exchange_strong(expected, static_cast<int>(parse_cpu_attention(value, "MPOOL_CPU_ATTENTION")));
  });
  return static_cast<CpuAttention>(g_choice.load(std::memory_order_acquire));
}

void set_cpu_attention(CpuAttention choice) { g_choice.store(static_cast<int>(choice), std::memory_order_release); }

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask,
                     bool causal, double scale, std::optional<bool> avx512) {
  Isa isa = widest_isa();
  if (avx512.has_value()) {
    if (*avx512 && isa != Isa::kAvx512) return {};
    if (!*avx512 && isa != Isa::kNone) isa = Isa::kAvx2;
  } else if (cpu_attention() != CpuAttention::kMpool) {
    return {};
  }
  if (isa == Isa::kNone) return {};
  auto cpu_float = [](const at::Tensor& x) {
    return x.defined() && x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4 && x.stride(3) == 1;
  };
  if (!cpu_float(q) || !cpu_float(k) || !cpu_float(v)) return {};
  const int64_t b = q.size(0), h = q.size(1), n = q.size(2), d = q.size(3);
  const int64_t kvh = k.size(1), t = k.size(2), dv = v.size(3);
  if (k.size(0) != b || v.size(0) != b || v.size(1) != kvh || v.size(2) != t || k.size(3) != d || kvh == 0 ||
      b == 0 || h == 0 || h % kvh != 0 || n == 0 || d == 0 || dv == 0 || t == 0 || (causal && mask.defined()) ||
      !std::isfinite(scale))
    return {};
  at::Tensor m;
  if (mask.defined()) {
    if (!mask.device().is_cpu() || (mask.scalar_type() != at::kBool && mask.scalar_type() != at::kFloat) ||
        mask.dim() > 4)
      return {};
    const int64_t full[4] = {b, h, n, t};
    for (int64_t i = 0; i < mask.dim(); ++i) {
      const int64_t size = mask.size(mask.dim() - 1 - i), want = full[3 - i];
      if (size != 1 && size != want) return {};  // not broadcastable: ATen says why
    }
    m = mask.expand({b, h, n, t});
  }
  const int64_t group = h / kvh;
  const Isa chosen = isa;
  const int64_t qk_rows = chosen == Isa::kAvx512 ? 8 : 4, tile = chosen == Isa::kAvx512 ? 16 : 8;
  // Tasks: whole heads where there are enough of them, else each head's rows in
  // chunks (each task transposes its head's keys once).
  const int64_t threads = std::max(1, at::get_num_threads());
  const int64_t splits = std::max<int64_t>(1, (4 * threads + b * h - 1) / (b * h));
  const int64_t chunk = std::max<int64_t>(qk_rows, ((n + splits - 1) / splits + qk_rows - 1) / qk_rows * qk_rows);
  const int64_t parts = (n + chunk - 1) / chunk;
  at::Tensor out = at::empty({b, n, h, dv}, q.options());
  const float* qp = q.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const bool boolean = m.defined() && m.scalar_type() == at::kBool;
  const uint8_t* mb = boolean ? reinterpret_cast<const uint8_t*>(m.data_ptr<bool>()) : nullptr;
  const float* ma = m.defined() && !boolean ? m.data_ptr<float>() : nullptr;
  const int64_t keys_room = (t + tile - 1) / tile * tile;
  // Each thread keeps its head's keys transposed: past 4 MiB of them (8,192 keys
  // of 128 columns), ATen's tiled attention, not a scratch buffer that size.
  if (d * keys_room > kMaxTransposedKeys) return {};
  // On torch's team, as the GEMMs around it (kernels.h: parallel_for_beside_torch).
  parallel_for_beside_torch(b * h * parts, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> kt, s;
    if (kt.size() < static_cast<size_t>(d * keys_room)) kt.resize(static_cast<size_t>(d * keys_room));
    if (s.size() < static_cast<size_t>(qk_rows * keys_room)) s.resize(static_cast<size_t>(qk_rows * keys_room));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t part = item % parts, head = (item / parts) % h, seq = item / parts / h;
      AttendRows a{};
      a.i0 = part * chunk;
      a.rows = std::min(chunk, n - a.i0);
      a.q = qp + seq * q.stride(0) + head * q.stride(1) + a.i0 * q.stride(2);
      a.q_row = q.stride(2);
      a.k = kp + seq * k.stride(0) + (head / group) * k.stride(1);
      a.k_row = k.stride(2);
      a.v = vp + seq * v.stride(0) + (head / group) * v.stride(1);
      a.v_row = v.stride(2);
      a.out = op + ((seq * n + a.i0) * h + head) * dv;
      a.out_row = h * dv;
      a.t = t;
      a.d = d;
      a.dv = dv;
      a.scale = static_cast<float>(scale);
      a.causal = causal;
      if (m.defined()) {
        const int64_t at = seq * m.stride(0) + head * m.stride(1) + a.i0 * m.stride(2);
        if (boolean) a.mask_bool = mb + at;
        else a.mask_add = ma + at;
        a.mask_row = m.stride(2);
        a.mask_col = m.stride(3);
      }
      a.kt = kt.data();
      a.s = s.data();
#ifdef MPOOL_X86_ATTENTION
      if (chosen == Isa::kAvx512)
        attention_avx512::attend_rows(a);
      else
        attention_avx2::attend_rows(a);
#endif
    }
  });
  return out.permute({0, 2, 1, 3});
}

}  // namespace mpool::nn::kernels
