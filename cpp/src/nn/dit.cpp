#include "mpool/nn/dit.h"

#include "mpool/base/error.h"

namespace mpool::nn {

AdaModulation AdaModulation::load(const Weights& w, std::string_view name, int64_t dim, int64_t conditioning,
                                  int64_t chunks, bool bias) {
  check(dim > 0 && conditioning > 0 && chunks > 0, ErrorCode::kInvalidInput,
        "adaLN modulation " + w.name(name) + " needs positive sizes");
  AdaModulation m;
  m.linear = Linear::load(w, name, chunks * dim, conditioning, bias);
  m.chunks = chunks;
  return m;
}

std::vector<at::Tensor> AdaModulation::operator()(const at::Tensor& conditioning) const {
  check(conditioning.defined() && conditioning.dim() == 2 && conditioning.size(1) == linear.in_features(),
        ErrorCode::kInvalidInput,
        "adaLN modulation: the conditioning must be (batch, " + std::to_string(linear.in_features()) + "), got " +
            (conditioning.defined() ? c10::str(conditioning.sizes()) : std::string("none")));
  return linear(at::silu(conditioning)).chunk(chunks, 1);
}

at::Tensor plain_layer_norm(const at::Tensor& x, double eps) { return at::layer_norm(x, {x.size(-1)}, {}, {}, eps); }

at::Tensor modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  return at::addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1));
}

at::Tensor gated(const at::Tensor& gate, const at::Tensor& x) { return gate.unsqueeze(1) * x; }

Mlp diffusers_feed_forward(const Weights& w, int64_t dim) {
  MlpNames names;
  names.up = "net.0.proj";
  names.down = "net.2";
  return Mlp::load(w, dim, 4 * dim, Activation::kGeluTanh, /*gated=*/false, /*bias=*/true, names);
}

JointAttention JointAttention::load(const Weights& w, int64_t dim, int64_t heads, int64_t head_dim,
                                    std::optional<double> qk_norm_eps, bool text_output, Order order) {
  const AttentionShape shape{dim, heads, heads, head_dim, 0, dim, true, true};
  AttentionNames image_names{"to_q", "to_k", "to_v", "to_out.0", "", "norm_q", "norm_k"};
  AttentionNames text_names{"add_q_proj", "add_k_proj", "add_v_proj", text_output ? "to_add_out" : "",
                            "", "norm_added_q", "norm_added_k"};
  JointAttention a;
  a.image_ = Attention::load(w, shape, image_names, qk_norm_eps);
  a.text_ = Attention::load(w, shape, text_names, qk_norm_eps);
  a.order_ = order;
  a.text_output_ = text_output;
  return a;
}

std::pair<at::Tensor, at::Tensor> JointAttention::operator()(const at::Tensor& image, const at::Tensor& text,
                                                             const Positions& positions) const {
  check(image.dim() == 3 && text.dim() == 3 && image.size(0) == text.size(0), ErrorCode::kInvalidInput,
        "joint attention: image and text streams must be (batch, tokens, width) with the same batch, got " +
            c10::str(image.sizes()) + " and " + c10::str(text.sizes()));
  auto [iq, ik, iv] = image_.project(image);
  auto [tq, tk, tv] = text_.project(text);
  const bool image_first = order_ == Order::kImageFirst;
  // Joined along the sequence in the projections' (b, n, heads, d) memory order,
  // a straight copy, then viewed as (b, heads, n, d).
  auto join = [&](const at::Tensor& a, const at::Tensor& b) {
    const at::Tensor& first = image_first ? a : b;
    const at::Tensor& second = image_first ? b : a;
    return at::cat({first.transpose(1, 2), second.transpose(1, 2)}, 1).transpose(1, 2);
  };
  at::Tensor q = join(iq, tq), k = join(ik, tk), v = join(iv, tv);
  if (positions) std::tie(q, k) = positions(q, k);
  const at::Tensor out = attend(q, k, v);
  const int64_t n = image.size(1), m = text.size(1);
  const at::Tensor image_out = image_first ? out.narrow(2, 0, n) : out.narrow(2, m, n);
  const at::Tensor text_out = image_first ? out.narrow(2, n, m) : out.narrow(2, 0, m);
  return {image_.output(image_out), text_output_ ? text_.output(text_out) : at::Tensor()};
}

}  // namespace mpool::nn
