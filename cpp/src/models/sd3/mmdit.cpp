#include "models/sd3/mmdit.h"

#include <algorithm>

#include "mpool/base/error.h"

namespace mpool::models::sd3 {
namespace {

constexpr double kEps = 1e-6;

}  // namespace

JointBlock JointBlock::load(const nn::Weights& w, const MMDiTConfig& c, bool context_pre_only, bool dual_attention) {
  const int64_t dim = c.inner_dim();
  const std::optional<double> qk = c.qk_norm ? std::optional<double>(kEps) : std::nullopt;
  JointBlock b;
  b.context_pre_only_ = context_pre_only;
  b.norm1_ = nn::AdaModulation::load(w, "norm1.linear", dim, dim, dual_attention ? 9 : 6);
  b.norm1_context_ = nn::AdaModulation::load(w, "norm1_context.linear", dim, dim, context_pre_only ? 2 : 6);
  b.attn_ = nn::JointAttention::load(w.sub("attn"), dim, c.num_attention_heads, c.attention_head_dim, qk,
                                     !context_pre_only, nn::JointAttention::Order::kImageFirst);
  if (dual_attention) {
    const nn::AttentionShape shape{dim, c.num_attention_heads, c.num_attention_heads, c.attention_head_dim, 0, dim,
                                   true, true};
    b.attn2_ = nn::Attention::load(w.sub("attn2"), shape, {"to_q", "to_k", "to_v", "to_out.0", "", "norm_q", "norm_k"},
                                   qk);
  }
  b.ff_ = nn::diffusers_feed_forward(w.sub("ff"), dim);
  if (!context_pre_only) b.ff_context_ = nn::diffusers_feed_forward(w.sub("ff_context"), dim);
  return b;
}

std::pair<at::Tensor, at::Tensor> JointBlock::operator()(const at::Tensor& image, const at::Tensor& text,
                                                         const at::Tensor& conditioning) const {
  // adaLN-Zero: shift, scale, gate of the attention, then of the MLP (then, for
  // MMDiT-X, of the second attention).
  const std::vector<at::Tensor> m = norm1_(conditioning);
  const at::Tensor normed = nn::plain_layer_norm(image, kEps);
  const at::Tensor image_in = nn::modulate(normed, m[0], m[1]);
  at::Tensor text_in;
  std::vector<at::Tensor> cm = norm1_context_(conditioning);
  if (context_pre_only_) {
    text_in = nn::modulate(nn::plain_layer_norm(text, kEps), cm[1], cm[0]);  // AdaLayerNormContinuous: scale, shift
  } else {
    text_in = nn::modulate(nn::plain_layer_norm(text, kEps), cm[0], cm[1]);
  }
  auto [image_attn, text_attn] = attn_(image_in, text_in);
  at::Tensor x = image + nn::gated(m[2], image_attn);
  if (attn2_) x = x + nn::gated(m[8], (*attn2_)(nn::modulate(normed, m[6], m[7])));
  x = x + nn::gated(m[5], ff_(nn::modulate(nn::plain_layer_norm(x, kEps), m[3], m[4])));
  if (context_pre_only_) return {x, at::Tensor()};
  at::Tensor t = text + nn::gated(cm[2], text_attn);
  t = t + nn::gated(cm[5], (*ff_context_)(nn::modulate(nn::plain_layer_norm(t, kEps), cm[3], cm[4])));
  return {x, t};
}

MMDiT MMDiT::load(const nn::Weights& w, const MMDiTConfig& c) {
  MMDiT m;
  m.config_ = c;
  const int64_t dim = c.inner_dim(), p = c.patch_size, side = c.pos_embed_max_size;
  m.patch_ = nn::Conv2d::load(w, "pos_embed.proj", c.in_channels, dim, p, p, 0);
  // Without a table (null in the config) diffusers keeps none in the file either:
  // the positions of each latent size are computed in forward.
  at::Tensor stored = side > 0 ? w.get_optional("pos_embed.pos_embed", {1, side * side, dim}) : at::Tensor();
  if (side == 0) {
    // nothing to load
  } else if (stored.defined()) {
    m.positions_ = stored.view({side, side, dim});
  } else {
    // base size: the training sample size in patches, as diffusers' PatchEmbed.
    m.positions_ = nn::sincos_2d_embedding(dim, side, side, static_cast<double>(c.sample_size / p), 1.0)
                       .to(w.device(), w.dtype())
                       .view({side, side, dim});
  }
  const nn::Weights te = w.sub("time_text_embed");
  m.timestep_embedder_ = nn::TimestepEmbedding::load(te.sub("timestep_embedder"), 256, dim, nn::Activation::kSilu);
  m.text_embedder_ =
      nn::TimestepEmbedding::load(te.sub("text_embedder"), c.pooled_projection_dim, dim, nn::Activation::kSilu);
  m.context_embedder_ = nn::Linear::load(w, "context_embedder", c.caption_projection_dim, c.joint_attention_dim, true);
  for (int64_t i = 0; i < c.num_layers; ++i)
    m.blocks_.push_back(JointBlock::load(w.sub("transformer_blocks").sub(i), c, i == c.num_layers - 1,
                                         c.dual_attention(i)));
  m.norm_out_ = nn::AdaModulation::load(w, "norm_out.linear", dim, dim, 2);
  m.proj_out_ = nn::Linear::load(w, "proj_out", p * p * c.out_channels, dim, true);
  return m;
}

at::Tensor MMDiT::operator()(const at::Tensor& latents, const at::Tensor& timestep, const at::Tensor& context,
                             const at::Tensor& pooled, const std::vector<int64_t>& skip_layers) const {
  const MMDiTConfig& c = config_;
  const int64_t p = c.patch_size;
  check(latents.dim() == 4 && latents.size(1) == c.in_channels, ErrorCode::kInvalidInput,
        "MMDiT: latents must be (batch, " + std::to_string(c.in_channels) + ", height, width), got " +
            c10::str(latents.sizes()));
  const int64_t b = latents.size(0), gh = latents.size(2) / p, gw = latents.size(3) / p;
  const int64_t max_patches = c.pos_embed_max_size > 0 ? c.pos_embed_max_size : MMDiTConfig::kMaxPatchesWithoutTable;
  check(latents.size(2) % p == 0 && latents.size(3) % p == 0 && gh >= 1 && gw >= 1 && gh <= max_patches &&
            gw <= max_patches,
        ErrorCode::kInvalidInput,
        "MMDiT: a latent of " + std::to_string(latents.size(2)) + "x" + std::to_string(latents.size(3)) +
            " must be a multiple of the patch size " + std::to_string(p) + " and at most " +
            std::to_string(max_patches * p) + " a side");
  check(context.dim() == 3 && context.size(0) == b && context.size(2) == c.joint_attention_dim &&
            pooled.dim() == 2 && pooled.size(0) == b && pooled.size(1) == c.pooled_projection_dim &&
            timestep.dim() == 1 && timestep.size(0) == b,
        ErrorCode::kInvalidInput,
        "MMDiT: context (" + std::to_string(b) + ", tokens, " + std::to_string(c.joint_attention_dim) +
            "), pooled (" + std::to_string(b) + ", " + std::to_string(c.pooled_projection_dim) + ") and timestep (" +
            std::to_string(b) + ") expected, got " + c10::str(context.sizes()) + ", " + c10::str(pooled.sizes()) +
            " and " + c10::str(timestep.sizes()));
  const int64_t dim = c.inner_dim();
  // Patches in row-major order plus the centred window of the position table.
  at::Tensor x = patch_(latents).flatten(2).transpose(1, 2);
  if (c.pos_embed_max_size > 0) {
    const int64_t top = (c.pos_embed_max_size - gh) / 2, left = (c.pos_embed_max_size - gw) / 2;
    x = x + positions_.slice(0, top, top + gh).slice(1, left, left + gw).reshape({1, gh * gw, dim});
  } else {
    // base size: the training sample size in patches, as diffusers' PatchEmbed.
    x = x + nn::sincos_2d_embedding(dim, gh, gw, static_cast<double>(c.sample_size / p), 1.0)
                .to(x.device(), x.scalar_type())
                .reshape({1, gh * gw, dim});
  }
  const at::Tensor sinusoids =
      nn::timestep_embedding(timestep.to(at::kFloat), 256, nn::TimestepOptions{true, 0.0, 1.0, 10000.0});
  const at::Tensor conditioning =
      timestep_embedder_(sinusoids.to(pooled.scalar_type())) + text_embedder_(pooled);
  at::Tensor text = context_embedder_(context);
  for (int64_t i = 0; i < static_cast<int64_t>(blocks_.size()); ++i) {
    if (std::find(skip_layers.begin(), skip_layers.end(), i) != skip_layers.end()) continue;
    std::tie(x, text) = blocks_[static_cast<size_t>(i)](x, text, conditioning);
  }
  const std::vector<at::Tensor> out = norm_out_(conditioning);
  x = proj_out_(nn::modulate(nn::plain_layer_norm(x, kEps), out[1], out[0]));  // scale, shift
  // (b, h*w, p*p*c) -> (b, c, h*p, w*p)
  return x.view({b, gh, gw, p, p, c.out_channels}).permute({0, 5, 1, 3, 2, 4}).reshape({b, c.out_channels, gh * p, gw * p});
}

}  // namespace mpool::models::sd3
