#include "models/nvembed/nvembed.h"

#include <c10/core/InferenceMode.h>

namespace mpool::models::nvembed {

namespace {

// LayerNorm's default epsilon (torch.nn.LayerNorm), which NV-Embed's PreNorm uses.
constexpr double kLayerNormEps = 1e-5;

nn::Attention load_cross_attention(const nn::Weights& w, const LatentAttentionConfig& c) {
  nn::AttentionShape shape;
  shape.hidden = c.hidden_dim;
  shape.heads = c.heads;
  shape.kv_heads = c.heads;
  shape.head_dim = c.head_dim;
  shape.kv_input = c.latent_dim;
  shape.out = c.hidden_dim;
  nn::AttentionNames names;
  names.q = "to_q";
  names.fused_kv = "to_kv";
  names.o = "to_out";
  return nn::Attention::load(w, shape, names);
}

}  // namespace

LatentAttentionPooler::LatentAttentionPooler(const LatentAttentionConfig& c, const nn::Weights& w)
    : hidden_(c.hidden_dim),
      latents_(w.get("latents", {c.num_latents, c.latent_dim})),
      norm_(nn::LayerNorm::load(w, "cross_attend_blocks.0.norm", c.hidden_dim, kLayerNormEps)),
      norm_context_(nn::LayerNorm::load(w, "cross_attend_blocks.0.norm_context", c.latent_dim, kLayerNormEps)),
      cross_(load_cross_attention(w.sub("cross_attend_blocks.0.fn"), c)),
      ff_norm_(nn::LayerNorm::load(w, "cross_attend_blocks.1.norm", c.hidden_dim, kLayerNormEps)),
      ff_(nn::geglu_feed_forward(w.sub("cross_attend_blocks.1.fn"), c.hidden_dim, c.ff_mult)) {}

at::Tensor LatentAttentionPooler::states(const at::Tensor& hidden) const {
  at::Tensor x = hidden.to(latents_.scalar_type());
  // Every token attends to the same latents without a mask, so the batch's tokens
  // run as the queries of one sequence and the latents' keys and values are
  // projected once.
  const at::Tensor tokens = x.reshape({1, x.size(0) * x.size(1), x.size(2)});
  x = x + cross_(norm_(tokens), {}, false, norm_context_(latents_).unsqueeze(0)).view(x.sizes());
  return x + ff_(ff_norm_(x));
}

at::Tensor LatentAttentionPooler::operator()(const at::Tensor& hidden, const at::Tensor& mask,
                                             const at::Tensor&) const {
  const at::Tensor x = states(hidden).to(at::kFloat);
  const at::Tensor m = mask.to(x.device(), at::kFloat).unsqueeze(-1);
  // A row whose every token is masked (an instruction filling the whole text) pools to zero.
  return (x * m).sum(1) / m.sum(1).clamp_min(1e-9);
}

NvEmbedNetwork::NvEmbedNetwork(const NvEmbedConfig& config, const nn::Weights& w) {
  const nn::Weights base = w.sub("embedding_model");
  decoder = std::make_shared<const decoder::Decoder>(config.text, base, base);
  pooler = std::make_shared<const LatentAttentionPooler>(config.latent, w.sub("latent_attention_model"));
}

}  // namespace mpool::models::nvembed
