#include "mpool/nn/rope.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "mpool/base/error.h"
#include "mpool/nn/kernels.h"

namespace mpool::nn {
namespace {

// theta ** (arange(0, dim, 2) / dim), in float32 as transformers computes it.
at::Tensor frequency_exponents(double theta, int64_t dim) {
  at::Tensor exps = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  return at::pow(theta, exps);
}

at::Tensor llama3_inv_freq(const RopeConfig& r, const at::Tensor& inv) {
  const double old_len = static_cast<double>(r.original_max_position_embeddings);
  const double low_wavelen = old_len / r.low_freq_factor, high_wavelen = old_len / r.high_freq_factor;
  at::Tensor wavelen = 2 * M_PI / inv;
  at::Tensor scaled = at::where(wavelen > low_wavelen, inv / r.factor, inv);
  at::Tensor smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
  at::Tensor smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
  at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
  return at::where(medium, smoothed, scaled);
}

// YaRN: interpolate the low frequencies by `factor`, keep (extrapolate) the high
// ones, and ramp linearly between the dimensions that make beta_fast and
// beta_slow rotations over the original length.
at::Tensor yarn_inv_freq(const RopeConfig& r) {
  const int64_t dim = r.rotary_dim;
  const double base = r.theta, length = static_cast<double>(r.original_max_position_embeddings);
  auto correction_dim = [&](double rotations) {
    return (static_cast<double>(dim) * std::log(length / (rotations * 2 * M_PI))) / (2 * std::log(base));
  };
  double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
  if (r.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // no zero-width ramp
  at::Tensor pos_freqs = at::pow(base, at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim));
  at::Tensor extrapolation = 1.0 / pos_freqs;
  at::Tensor interpolation = 1.0 / (r.factor * pos_freqs);
  at::Tensor ramp = ((at::arange(dim / 2, at::kFloat) - low) / (high - low)).clamp(0, 1);
  at::Tensor keep = 1 - ramp;  // 1: extrapolate (high frequencies)
  return interpolation * (1 - keep) + extrapolation * keep;
}

// apply_rope for float32 on the CPU in one pass: what ATen's five operations
// (negate, cat, two products, sum) compute, with the same three roundings a
// value (the products, then their sum; the negation is exact), so the bits are
// ATen's and a row's never depend on the rows beside it. Contraction into fused
// multiply-adds would change them, so it is off in these functions.
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
void rotate_row(const float* x, const float* c, const float* s, float* out, int64_t d, int64_t rd, int64_t cs,
                RopeLayout layout) {
  if (layout == RopeLayout::kRotateHalf) {
    const int64_t half = rd / 2;
    for (int64_t i = 0; i < half; ++i) {
      const float a = x[i] * c[i * cs], b = x[i + half] * s[i * cs];
      out[i] = a - b;
    }
    for (int64_t i = half; i < rd; ++i) {
      const float a = x[i] * c[i * cs], b = x[i - half] * s[i * cs];
      out[i] = a + b;
    }
  } else {
    for (int64_t i = 0; i + 1 < rd; i += 2) {
      const float a0 = x[i] * c[i * cs], b0 = x[i + 1] * s[i * cs];
      const float a1 = x[i + 1] * c[(i + 1) * cs], b1 = x[i] * s[(i + 1) * cs];
      out[i] = a0 - b0;
      out[i + 1] = a1 + b1;
    }
  }
  for (int64_t i = rd; i < d; ++i) out[i] = x[i];
}
#pragma GCC pop_options

// x (b, h, n, d) of any strides with a contiguous last dimension, cos and sin
// broadcastable to (b, h, n, rd); else an undefined tensor (ATen's path).
at::Tensor rope_float32_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, RopeLayout layout) {
  if (x.dim() != 4 || !x.device().is_cpu() || x.scalar_type() != at::kFloat || cos.scalar_type() != at::kFloat ||
      sin.scalar_type() != at::kFloat || !cos.device().is_cpu() || !sin.device().is_cpu() || x.stride(3) != 1 ||
      cos.dim() > 4 || sin.dim() > 4 || cos.sizes() != sin.sizes())
    return {};
  const int64_t rd = cos.size(-1), d = x.size(3);
  if (rd > d || rd % 2 != 0) return {};
  std::vector<int64_t> lead(x.sizes().begin(), x.sizes().end() - 1);
  lead.push_back(rd);
  for (int64_t i = 0; i < cos.dim(); ++i) {  // broadcastable, as ATen would check
    const int64_t size = cos.size(cos.dim() - 1 - i), want = lead[3 - static_cast<size_t>(i)];
    if (size != 1 && size != want) return {};
  }
  const at::Tensor c = cos.expand(lead), s = sin.expand(lead);
  if (c.strides() != s.strides()) return {};
  at::Tensor out = at::empty_like(x);  // x's memory order
  if (out.stride(3) != 1) return {};
  const int64_t b = x.size(0), h = x.size(1), n = x.size(2), rows = b * h * n;
  const float* xp = x.const_data_ptr<float>();
  const float* cp = c.const_data_ptr<float>();
  const float* sp = s.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  auto body = [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = r / (h * n), j = (r / n) % h, k = r % n;
      const int64_t table = i * c.stride(0) + j * c.stride(1) + k * c.stride(2);
      rotate_row(xp + i * x.stride(0) + j * x.stride(1) + k * x.stride(2), cp + table, sp + table,
                 op + i * out.stride(0) + j * out.stride(1) + k * out.stride(2), d, rd, c.stride(3), layout);
    }
  };
  // Prefill's many rows on torch's team (as the products around them); a decode step's few inline.
  if (rows * d >= (int64_t{1} << 16))
    kernels::parallel_for_beside_torch(rows, std::max<int64_t>(1, (int64_t{1} << 14) / d), body);
  else
    body(0, rows);
  return out;
}

}  // namespace

std::pair<at::Tensor, double> rope_inv_freq(const RopeConfig& r, int64_t seq_len) {
  const auto& t = r.type;
  if (t == "default") return {frequency_exponents(r.theta, r.rotary_dim).reciprocal(), 1.0};
  if (t == "linear") return {frequency_exponents(r.theta, r.rotary_dim).reciprocal() / r.factor, 1.0};
  if (t == "llama3") return {llama3_inv_freq(r, frequency_exponents(r.theta, r.rotary_dim).reciprocal()), 1.0};
  if (t == "yarn") return {yarn_inv_freq(r), r.attention_factor};
  if (t == "dynamic") {
    // NTK-aware: a larger base once the sequence outgrows the trained length.
    double base = r.theta;
    if (seq_len > r.max_position_embeddings) {
      const double dim = static_cast<double>(r.rotary_dim);
      base = r.theta * std::pow(r.factor * static_cast<double>(seq_len) /
                                        static_cast<double>(r.max_position_embeddings) -
                                    (r.factor - 1),
                                dim / (dim - 2));
    }
    return {frequency_exponents(base, r.rotary_dim).reciprocal(), 1.0};
  }
  if (t == "longrope") {
    const auto& ext = seq_len > r.original_max_position_embeddings ? r.long_factor : r.short_factor;
    return {(at::tensor(ext, at::kDouble).to(at::kFloat) * frequency_exponents(r.theta, r.rotary_dim)).reciprocal(),
            r.attention_factor};
  }
  throw Error(ErrorCode::kInvalidInput, "rope type '" + t + "' is not supported");
}

std::pair<at::Tensor, at::Tensor> rope_tables(const at::Tensor& positions, const at::Tensor& inv_freq, double scale,
                                              RopeLayout layout) {
  at::Tensor freqs = at::outer(positions, inv_freq);
  at::Tensor emb = layout == RopeLayout::kRotateHalf ? at::cat({freqs, freqs}, -1) : freqs.repeat_interleave(2, -1);
  at::Tensor cos = emb.cos(), sin = emb.sin();
  if (scale != 1.0) {
    cos = cos * scale;
    sin = sin * scale;
  }
  return {cos, sin};
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, RopeLayout layout) {
  if (at::Tensor fused = rope_float32_cpu(x, cos, sin, layout); fused.defined()) return fused;
  if (x.dim() == 4 && cos.dim() == 2 && !x.is_contiguous() && x.transpose(1, 2).is_contiguous()) {
    // (b, heads, n, d) viewed on (b, n, heads, d) memory: rotate in the memory's
    // order (the tables broadcast over the heads), the same values without a
    // transposing copy.
    return apply_rope(x.transpose(1, 2), cos.unsqueeze(-2), sin.unsqueeze(-2), layout).transpose(1, 2);
  }
  const int64_t rd = cos.size(-1), d = x.size(-1);
  at::Tensor rot = rd == d ? x : x.narrow(-1, 0, rd);
  at::Tensor rotated;
  if (layout == RopeLayout::kRotateHalf) {
    const int64_t half = rd / 2;
    rotated = at::cat({-rot.narrow(-1, half, half), rot.narrow(-1, 0, half)}, -1);
  } else {
    // (x0, x1) -> (-x1, x0) for each adjacent pair.
    at::Tensor pairs = rot.unflatten(-1, {rd / 2, 2});
    rotated = at::stack({-pairs.select(-1, 1), pairs.select(-1, 0)}, -1).flatten(-2);
  }
  // In the wider of x's and the tables' dtypes (half x, float32 tables: float32,
  // as diffusers rotates FLUX's q and k), then back to x's.
  at::Tensor out = (rot * cos + rotated * sin).to(x.scalar_type());
  if (rd == d) return out;
  return at::cat({out, x.narrow(-1, rd, d - rd)}, -1);
}

std::pair<at::Tensor, at::Tensor> multi_axis_rope_tables(const at::Tensor& positions,
                                                         const std::vector<int64_t>& axes_dims, double theta) {
  check(positions.dim() == 2 && positions.size(1) == static_cast<int64_t>(axes_dims.size()), ErrorCode::kInvalidInput,
        "multi-axis rope: positions must be (n, " + std::to_string(axes_dims.size()) + ")");
  std::vector<at::Tensor> cos, sin;
  for (size_t a = 0; a < axes_dims.size(); ++a) {
    const int64_t dim = axes_dims[a];
    check(dim >= 2 && dim % 2 == 0, ErrorCode::kInvalidInput, "multi-axis rope: each axis needs an even width >= 2");
    // In float64, as diffusers' FLUX embedding computes them, then float32.
    at::Tensor inv = 1.0 / at::pow(theta, at::arange(0, dim, 2, at::kDouble) / static_cast<double>(dim));
    // Coordinates pass through float32 first (diffusers' ids.float()): integer ids
    // beyond 2^24 round as there.
    at::Tensor coords = positions.select(1, static_cast<int64_t>(a)).to(at::kFloat).to(at::kDouble);
    at::Tensor freqs = at::outer(coords, inv);
    cos.push_back(freqs.cos().repeat_interleave(2, -1).to(at::kFloat));
    sin.push_back(freqs.sin().repeat_interleave(2, -1).to(at::kFloat));
  }
  return {at::cat(cos, -1), at::cat(sin, -1)};
}

Rope::Rope(RopeConfig config, at::ScalarType dtype, at::Device device, RopeLayout layout)
    : config_(std::move(config)), dtype_(dtype), device_(device), layout_(layout) {
  if (!config_.depends_on_length()) std::tie(inv_freq_, scale_) = rope_inv_freq(config_, 0);
}

std::pair<at::Tensor, at::Tensor> Rope::tables(int64_t start, int64_t n, int64_t length) const {
  at::Tensor inv = inv_freq_;
  double scale = scale_;
  if (config_.depends_on_length())  // max(position) + 1
    std::tie(inv, scale) = rope_inv_freq(config_, std::max(start + n, length));
  at::Tensor positions = at::arange(start, start + n, at::kLong).to(at::kFloat);
  auto [cos, sin] = rope_tables(positions, inv, scale, layout_);
  return {cos.to(device_, dtype_), sin.to(device_, dtype_)};
}

}  // namespace mpool::nn
