#include "mpool/nn/norm.h"

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>

#include "mpool/base/error.h"
#include "mpool/nn/kernels.h"

namespace mpool::nn {
namespace {

// RMSNorm after ATen's mean of squares, in one pass on the CPU with the
// roundings of the operations it replaces (ms + eps, rsqrt as 1 / sqrt, x * r,
// then the weight: in bfloat16 the normed row rounded first and the product
// rounded again, as ATen's bfloat16 multiply), so the bits are ATen's. A
// decode step's norm was six small operations, each a dispatch and an
// allocation. Undefined where it does not apply (ATen's path).
template <class T>
void rms_rows(const float* xf, const float* ms, const T* w, T* out, int64_t rows, int64_t h, float eps,
              bool unit_offset) {
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = 1.0f / std::sqrt(ms[r] + eps);
    const float* in = xf + r * h;
    T* o = out + r * h;
    for (int64_t i = 0; i < h; ++i) {
      const float normed = in[i] * inv;
      if (unit_offset) {
        const float scale = static_cast<float>(w[i]) + 1.0f;
        o[i] = static_cast<T>(normed * scale);
      } else {
        o[i] = static_cast<T>(static_cast<float>(w[i]) * static_cast<float>(static_cast<T>(normed)));
      }
    }
  }
}

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& xf, const at::Tensor& ms, const at::Tensor& weight,
                        double eps, bool unit_offset) {
  const auto dtype = x.scalar_type();
  if (!x.device().is_cpu() || (dtype != at::kFloat && dtype != at::kBFloat16) || weight.scalar_type() != dtype ||
      !weight.device().is_cpu() || !weight.is_contiguous() || !xf.is_contiguous() || !ms.is_contiguous() ||
      x.dim() == 0 || weight.dim() != 1 || x.size(-1) != weight.size(0))
    return {};
  const int64_t h = x.size(-1), rows = h == 0 ? 0 : xf.numel() / h;
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const float e = static_cast<float>(eps);
  auto body = [&](int64_t r0, int64_t r1) {
    const int64_t n = r1 - r0;
    if (dtype == at::kFloat)
      rms_rows<float>(xf.const_data_ptr<float>() + r0 * h, ms.const_data_ptr<float>() + r0,
                      weight.const_data_ptr<float>(), out.data_ptr<float>() + r0 * h, n, h, e, unit_offset);
    else
      rms_rows<c10::BFloat16>(xf.const_data_ptr<float>() + r0 * h, ms.const_data_ptr<float>() + r0,
                              weight.const_data_ptr<c10::BFloat16>(), out.data_ptr<c10::BFloat16>() + r0 * h, n, h, e,
                              unit_offset);
  };
  // Prefill's many rows on torch's team (as the operations around them); a decode step's few inline.
  if (rows * h >= (int64_t{1} << 16))
    kernels::parallel_for_beside_torch(rows, std::max<int64_t>(1, (int64_t{1} << 14) / std::max<int64_t>(1, h)), body);
  else
    body(0, rows);
  return out;
}

}  // namespace

LayerNorm LayerNorm::load(const Weights& w, std::string_view name, int64_t dim, double eps, bool bias) {
  const Weights s = w.sub(name);
  return LayerNorm{s.get("weight", {dim}), bias ? s.get("bias", {dim}) : at::Tensor(), eps};
}

at::Tensor LayerNorm::operator()(const at::Tensor& x) const {
  return at::layer_norm(x, {weight.size(0)}, weight, bias, eps);
}

RMSNorm RMSNorm::load(const Weights& w, std::string_view name, int64_t dim, double eps, bool unit_offset) {
  return RMSNorm{w.sub(name).get("weight", {dim}), eps, unit_offset};
}

at::Tensor RMSNorm::operator()(const at::Tensor& x) const {
  const bool wide = x.scalar_type() == at::kFloat;  // already float32: no round trip
  at::Tensor xf = wide ? x : x.to(at::kFloat);
  const at::Tensor ms = xf.pow(2).mean(-1, /*keepdim=*/true);
  if (at::Tensor fused = rms_norm_cpu(x, xf, ms, weight, eps, unit_offset); fused.defined()) return fused;
  at::Tensor normed = xf * at::rsqrt(ms + eps);
  // Llama-style: cast back, then scale. Gemma-style (unit offset): scale by
  // 1 + weight in float32, then cast back.
  if (unit_offset) return (normed * (weight.to(at::kFloat) + 1)).to(x.scalar_type());
  return weight * (wide ? normed : normed.to(x.scalar_type()));
}

GroupNorm GroupNorm::load(const Weights& w, std::string_view name, int64_t groups, int64_t channels, double eps,
                          bool affine) {
  check(groups > 0 && channels % groups == 0, ErrorCode::kInvalidInput,
        w.name(name) + ": " + std::to_string(channels) + " channels do not split into " + std::to_string(groups) +
            " groups");
  GroupNorm g;
  g.groups = groups;
  g.eps = eps;
  if (affine) {
    const Weights s = w.sub(name);
    g.weight = s.get("weight", {channels});
    g.bias = s.get("bias", {channels});
  }
  return g;
}

at::Tensor GroupNorm::operator()(const at::Tensor& x) const { return at::group_norm(x, groups, weight, bias, eps); }

}  // namespace mpool::nn
