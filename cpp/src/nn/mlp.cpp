#include "mpool/nn/mlp.h"

#include <cmath>

#include "mpool/base/error.h"

namespace mpool::nn {

at::Tensor activate(Activation act, const at::Tensor& x) {
  switch (act) {
    case Activation::kGelu: return at::gelu(x);
    case Activation::kGeluTanh: return at::gelu(x, "tanh");
    case Activation::kQuickGelu: return x * at::sigmoid(x * 1.702);
    case Activation::kRelu: return at::relu(x);
    case Activation::kSilu: return at::silu(x);
  }
  return x;
}

at::Tensor sigmoid_per_element(const at::Tensor& x) {
  // On a GPU no chunk runs the CPU kernels whose tails this avoids: its own sigmoid,
  // with no copy to the host.
  if (!x.device().is_cpu()) return at::sigmoid(x);
  const at::Tensor in = x.to(at::kFloat).contiguous();
  at::Tensor out = at::empty_like(in);
  const float* src = in.const_data_ptr<float>();
  float* dst = out.data_ptr<float>();
  for (int64_t i = 0, n = in.numel(); i < n; ++i) dst[i] = 1.0f / (1.0f + std::exp(-src[i]));
  return out.to(x.device(), x.scalar_type());
}

Mlp Mlp::load(const Weights& w, int64_t hidden, int64_t inner, Activation act, bool gated, bool bias,
              const MlpNames& names, std::optional<at::ScalarType> down_dtype, std::optional<bool> down_bias) {
  Mlp m;
  m.act_ = act;
  m.gated_ = gated;
  m.inner_ = inner;
  const bool fused_only = names.gate.empty() && names.up.empty();
  check(!names.fused_up_first || (gated && fused_only), ErrorCode::kInvalidInput,
        "Mlp: fused_up_first needs a gated input stored only fused (gate and up names empty)");
  if (gated && fused_only) {
    m.up_first_ = names.fused_up_first;
    m.in_ = Linear::load(w, names.fused_gate_up, 2 * inner, hidden, bias);
  } else if (gated) {
    m.in_ = FusedLinear::load(w, names.fused_gate_up, {{names.gate, inner}, {names.up, inner}}, hidden, bias).linear;
  } else {
    m.in_ = Linear::load(w, names.up, inner, hidden, bias);
  }
  m.down_ = Linear::load(down_dtype ? w.as(*down_dtype) : w, names.down, hidden, inner, down_bias.value_or(bias));
  return m;
}

void Mlp::attach_lora(LoraAdapters& adapters, const std::string& up, const std::string& down, const std::string& gate) {
  const int64_t hidden = in_.in_features();
  if (!gated_) {
    in_.lora = adapters.linear(up, inner_, hidden);
  } else {
    check(!gate.empty(), ErrorCode::kInvalidInput, "LoRA: a gated MLP needs the gate's module name");
    in_.lora = up_first_ ? adapters.fused({{up, inner_}, {gate, inner_}}, hidden)
                         : adapters.fused({{gate, inner_}, {up, inner_}}, hidden);
  }
  down_.lora = adapters.linear(down, down_.out_features(), inner_);
}

at::Tensor Mlp::operator()(const at::Tensor& x) const { return (*this)(x, at::Tensor()); }

at::Tensor Mlp::operator()(const at::Tensor& x, const at::Tensor& residual) const {
  at::Tensor h;
  if (gated_) {
    h = in_(x);
    h = activate(act_, h.narrow(-1, up_first_ ? inner_ : 0, inner_)) * h.narrow(-1, up_first_ ? 0 : inner_, inner_);
  } else {
    h = in_(x, act_);  // the activation fused into the GEMM where it can be
  }
  if (h.scalar_type() != down_.input_dtype()) h = h.to(down_.input_dtype());
  if (residual.defined() && residual.scalar_type() != down_.input_dtype()) return down_(h) + residual;
  return down_(h, std::nullopt, residual);
}

Mlp geglu_feed_forward(const Weights& w, int64_t dim, int64_t mult) {
  MlpNames names;
  names.gate = names.up = "";
  names.fused_gate_up = "net.0";
  names.fused_up_first = true;
  names.down = "net.2";
  return Mlp::load(w, dim, mult * dim, Activation::kGelu, /*gated=*/true, /*bias=*/true, names);
}

}  // namespace mpool::nn
