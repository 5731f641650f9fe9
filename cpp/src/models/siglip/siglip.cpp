#include "models/siglip/siglip.h"

#include "mpool/base/error.h"
#include "mpool/nn/attention.h"

namespace mpool::models::siglip {

namespace {
nn::MlpNames fc_names() {
  nn::MlpNames n;
  n.up = "fc1";
  n.down = "fc2";
  return n;
}
}  // namespace

AttentionPoolingHead::AttentionPoolingHead(const nn::EncoderConfig& c, const nn::Weights& w)
    : probe_(w.get("probe", {1, 1, c.hidden_size})),
      in_weight_(w.get("attention.in_proj_weight", {3 * c.hidden_size, c.hidden_size})),
      in_bias_(w.get("attention.in_proj_bias", {3 * c.hidden_size})),
      out_weight_(w.get("attention.out_proj.weight", {c.hidden_size, c.hidden_size})),
      out_bias_(w.get("attention.out_proj.bias", {c.hidden_size})),
      norm_(nn::LayerNorm::load(w, "layernorm", c.hidden_size, c.layer_norm_eps)),
      mlp_(nn::Mlp::load(w.sub("mlp"), c.hidden_size, c.intermediate_size, c.act, false, true, fc_names())),
      heads_(c.num_heads) {}

at::Tensor AttentionPoolingHead::operator()(const at::Tensor& x) const {
  const int64_t b = x.size(0), n = x.size(1), h = x.size(2), d = h / heads_;
  const auto w = in_weight_.chunk(3, 0), bias = in_bias_.chunk(3, 0);
  at::Tensor q = at::linear(probe_, w[0], bias[0]).expand({b, 1, h});
  at::Tensor k = at::linear(x, w[1], bias[1]), v = at::linear(x, w[2], bias[2]);
  auto heads = [&](const at::Tensor& t, int64_t len) { return t.reshape({b, len, heads_, d}).transpose(1, 2); };
  at::Tensor attended = nn::attend(heads(q, 1), heads(k, n), heads(v, n)).transpose(1, 2).reshape({b, 1, h});
  at::Tensor y = at::linear(attended, out_weight_, out_bias_);
  y = y + mlp_(norm_(y));
  return y.select(1, 0);
}

SiglipVision::SiglipVision(const nn::VisionTowerConfig& c, const nn::Weights& w, at::Device device)
    : embeddings_(nn::PatchEmbedding::load(w.sub("embeddings"), c, /*class_token=*/false, /*conv_bias=*/true)),
      encoder_(nn::PreNormEncoder::load(w.sub("encoder"), c)),
      post_norm_(nn::LayerNorm::load(w, "post_layernorm", c.hidden_size, c.layer_norm_eps)),
      head_(c, w.sub("head")),
      device_(device) {}

at::Tensor SiglipVision::forward(const at::Tensor& pixels) const {
  return head_(post_norm_(encoder_(embeddings_(pixels.to(device_)))));
}

}  // namespace mpool::models::siglip
