#include "mpool/nn/norm.h"

#include "mpool/base/error.h"

namespace mpool::nn {

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
  at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
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
