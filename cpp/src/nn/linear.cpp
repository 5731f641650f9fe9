#include "mpool/nn/linear.h"

#include "mpool/nn/gemm.h"
#include "mpool/nn/kernels.h"
#include "mpool/nn/mlp.h"

namespace mpool::nn {

Linear Linear::load(const Weights& w, std::string_view name, int64_t out, int64_t in, bool bias) {
  const Weights scope = w.sub(name);
  Linear l = of(scope.linear_weight("weight", {out, in}));
  if (bias) l.bias = scope.get("bias", {out});
  return l;
}

Linear Linear::of(LinearWeight weight, at::Tensor bias) {
  Linear l;
  l.weight = std::move(weight.weight);
  l.int8 = std::move(weight.int8);
  l.bias = std::move(bias);
  return l;
}

at::Tensor Linear::operator()(const at::Tensor& x) const {
  at::Tensor y = quantized() ? int8::linear(x, int8, bias) : kernels::linear(x, weight, bias);
  return lora ? apply_lora(lora.get(), x, y) : y;
}

at::Tensor Linear::operator()(const at::Tensor& x, std::optional<Activation> act, const at::Tensor& residual) const {
  if (!quantized() && !lora && !kernels::row_kernel_takes(x, weight, bias) && (!act || !residual.defined()))
    if (at::Tensor y = gemm::onednn_linear(x, weight, bias, act, residual); y.defined()) return y;
  at::Tensor y = (*this)(x);
  if (act) y = activate(*act, y);
  return residual.defined() ? y + residual : y;
}

FusedLinear FusedLinear::load(const Weights& w, std::string_view fused_name,
                              const std::vector<std::pair<std::string, int64_t>>& parts, int64_t in, bool bias) {
  FusedLinear f;
  int64_t total = 0;
  std::vector<std::pair<std::string, Shape>> weights, biases;
  for (const auto& [name, out] : parts) {
    f.splits.push_back(out);
    total += out;
    weights.push_back({name + ".weight", {out, in}});
    biases.push_back({name + ".bias", {out}});
  }
  // An empty fused_name: no stored fused form, always the parts.
  const std::string fused(fused_name);
  f.linear = Linear::of(w.fused_linear_weight(fused.empty() ? "" : fused + ".weight", {total, in}, weights));
  if (bias) f.linear.bias = fused.empty() ? w.fused(biases) : w.fused_or_parts(fused + ".bias", {total}, biases);
  return f;
}

std::vector<at::Tensor> FusedLinear::operator()(const at::Tensor& x) const {
  return linear(x).split_with_sizes(splits, -1);
}

}  // namespace mpool::nn
