#include "models/flux/transformer.h"

#include <string>

#include "mpool/base/error.h"
#include "mpool/nn/attention.h"
#include "mpool/nn/mlp.h"
#include "mpool/nn/rope.h"

namespace mpool::models::flux {
namespace {

constexpr double kEps = 1e-6;
constexpr double kRopeTheta = 10000.0;
constexpr int64_t kSinusoidWidth = 256;
// Timesteps and guidance scales as FLUX embeds them: cos first, no frequency shift.
const nn::TimestepOptions kSinusoids{true, 0.0, 1.0, 10000.0};

// float16 activations are clamped to the finite range after each block, as diffusers does.
at::Tensor clip_half(const at::Tensor& x) { return x.scalar_type() == at::kHalf ? x.clamp(-65504.0, 65504.0) : x; }

std::string shape_of(const at::Tensor& t) { return t.defined() ? c10::str(t.sizes()) : std::string("none"); }

}  // namespace

std::pair<at::Tensor, at::Tensor> RotaryTables::operator()(const at::Tensor& q, const at::Tensor& k) const {
  return {nn::apply_rope(q, cos, sin, nn::RopeLayout::kInterleaved),
          nn::apply_rope(k, cos, sin, nn::RopeLayout::kInterleaved)};
}

DoubleStreamBlock DoubleStreamBlock::load(const nn::Weights& w, const FluxConfig& c) {
  const int64_t dim = c.inner_dim();
  DoubleStreamBlock b;
  b.norm1_ = nn::AdaModulation::load(w, "norm1.linear", dim, dim, 6);
  b.norm1_context_ = nn::AdaModulation::load(w, "norm1_context.linear", dim, dim, 6);
  b.attn_ = nn::JointAttention::load(w.sub("attn"), dim, c.num_attention_heads, c.attention_head_dim, kEps,
                                     /*text_output=*/true, nn::JointAttention::Order::kTextFirst);
  b.ff_ = nn::diffusers_feed_forward(w.sub("ff"), dim);
  b.ff_context_ = nn::diffusers_feed_forward(w.sub("ff_context"), dim);
  return b;
}

std::pair<at::Tensor, at::Tensor> DoubleStreamBlock::operator()(const at::Tensor& image, const at::Tensor& text,
                                                                const at::Tensor& conditioning,
                                                                const RotaryTables& rope) const {
  // Per stream, six vectors: shift, scale, gate of the attention, then of the MLP.
  const std::vector<at::Tensor> m = norm1_(conditioning);
  const std::vector<at::Tensor> cm = norm1_context_(conditioning);
  auto [image_attn, text_attn] = attn_(nn::modulate(nn::plain_layer_norm(image, kEps), m[0], m[1]),
                                       nn::modulate(nn::plain_layer_norm(text, kEps), cm[0], cm[1]), rope);
  at::Tensor x = image + nn::gated(m[2], image_attn);
  x = x + nn::gated(m[5], ff_(nn::modulate(nn::plain_layer_norm(x, kEps), m[3], m[4])));
  at::Tensor t = text + nn::gated(cm[2], text_attn);
  t = t + nn::gated(cm[5], ff_context_(nn::modulate(nn::plain_layer_norm(t, kEps), cm[3], cm[4])));
  return {x, clip_half(t)};
}

SingleStreamBlock SingleStreamBlock::load(const nn::Weights& w, const FluxConfig& c) {
  const int64_t dim = c.inner_dim();
  SingleStreamBlock b;
  b.norm_ = nn::AdaModulation::load(w, "norm.linear", dim, dim, 3);
  const nn::AttentionShape shape{dim, c.num_attention_heads, c.num_attention_heads, c.attention_head_dim, 0, dim, true,
                                 true};
  // No output projection: proj_out below takes the merged heads with the MLP branch.
  b.attn_ = nn::Attention::load(w.sub("attn"), shape, {"to_q", "to_k", "to_v", "", "", "norm_q", "norm_k"}, kEps);
  b.proj_mlp_ = nn::Linear::load(w, "proj_mlp", 4 * dim, dim, true);
  b.proj_out_ = nn::Linear::load(w, "proj_out", dim, 5 * dim, true);
  return b;
}

at::Tensor SingleStreamBlock::operator()(const at::Tensor& x, const at::Tensor& conditioning,
                                         const RotaryTables& rope) const {
  const std::vector<at::Tensor> m = norm_(conditioning);  // shift, scale, gate
  const at::Tensor h = nn::modulate(nn::plain_layer_norm(x, kEps), m[0], m[1]);
  auto [q, k, v] = attn_.project(h);
  std::tie(q, k) = rope(q, k);
  const at::Tensor attended = attn_.output(nn::attend(q, k, v));
  const at::Tensor mlp = nn::activate(nn::Activation::kGeluTanh, proj_mlp_(h));
  // proj_out over (attention, MLP) as two accumulating GEMMs on the weight's
  // column blocks: the same product without concatenating the two first.
  const int64_t dim = x.size(-1);
  const at::Tensor& w = proj_out_.weight;
  at::Tensor out = at::addmm(proj_out_.bias, attended.reshape({-1, dim}), w.narrow(1, 0, dim).t());
  out.addmm_(mlp.reshape({-1, 4 * dim}), w.narrow(1, dim, 4 * dim).t());
  return clip_half(x + nn::gated(m[2], out.view(x.sizes())));
}

FluxTransformer FluxTransformer::load(const nn::Weights& w, const FluxConfig& c) {
  FluxTransformer m;
  m.config_ = c;
  const int64_t dim = c.inner_dim();
  m.x_embedder_ = nn::Linear::load(w, "x_embedder", dim, c.in_channels, true);
  const nn::Weights te = w.sub("time_text_embed");
  m.timestep_embedder_ =
      nn::TimestepEmbedding::load(te.sub("timestep_embedder"), kSinusoidWidth, dim, nn::Activation::kSilu);
  if (c.guidance_embeds)
    m.guidance_embedder_ =
        nn::TimestepEmbedding::load(te.sub("guidance_embedder"), kSinusoidWidth, dim, nn::Activation::kSilu);
  // PixArtAlphaTextProjection with silu: the same linear_1, act, linear_2.
  m.text_embedder_ =
      nn::TimestepEmbedding::load(te.sub("text_embedder"), c.pooled_projection_dim, dim, nn::Activation::kSilu);
  m.context_embedder_ = nn::Linear::load(w, "context_embedder", dim, c.joint_attention_dim, true);
  for (int64_t i = 0; i < c.num_layers; ++i)
    m.double_blocks_.push_back(DoubleStreamBlock::load(w.sub("transformer_blocks").sub(i), c));
  for (int64_t i = 0; i < c.num_single_layers; ++i)
    m.single_blocks_.push_back(SingleStreamBlock::load(w.sub("single_transformer_blocks").sub(i), c));
  m.norm_out_ = nn::AdaModulation::load(w, "norm_out.linear", dim, dim, 2);
  m.proj_out_ = nn::Linear::load(w, "proj_out", c.patch_size * c.patch_size * c.out_channels, dim, true);
  return m;
}

void FluxTransformer::check_inputs(const at::Tensor& latents, const at::Tensor& timestep, const at::Tensor& guidance,
                                   const at::Tensor& pooled, const at::Tensor& context, const at::Tensor& image_ids,
                                   const at::Tensor& text_ids) const {
  const FluxConfig& c = config_;
  auto require = [](bool ok, const std::string& what, const std::string& expected, const at::Tensor& got) {
    check(ok, ErrorCode::kInvalidInput,
          "FLUX transformer: " + what + " must be " + expected + ", got " + shape_of(got));
  };
  require(latents.defined() && latents.dim() == 3 && latents.size(1) >= 1 && latents.size(2) == c.in_channels,
          "latents", "(batch, tokens, " + std::to_string(c.in_channels) + ") packed latents", latents);
  const int64_t b = latents.size(0), n = latents.size(1);
  const std::string bs = std::to_string(b);
  require(timestep.defined() && timestep.dim() == 1 && timestep.size(0) == b, "timestep", "(" + bs + ")", timestep);
  if (c.guidance_embeds) {
    check(guidance.defined(), ErrorCode::kInvalidInput,
          "FLUX transformer: this model embeds a guidance scale (guidance_embeds is true, a guidance-distilled "
          "model): guidance (" +
              bs + ") is required");
    require(guidance.dim() == 1 && guidance.size(0) == b, "guidance", "(" + bs + ")", guidance);
  } else {
    check(!guidance.defined(), ErrorCode::kInvalidInput,
          "FLUX transformer: this model has no guidance embedding (guidance_embeds is false): pass no guidance");
  }
  require(pooled.defined() && pooled.dim() == 2 && pooled.size(0) == b && pooled.size(1) == c.pooled_projection_dim,
          "pooled", "(" + bs + ", " + std::to_string(c.pooled_projection_dim) + ")", pooled);
  require(context.defined() && context.dim() == 3 && context.size(0) == b && context.size(2) == c.joint_attention_dim,
          "context", "(" + bs + ", tokens, " + std::to_string(c.joint_attention_dim) + ")", context);
  const auto axes = static_cast<int64_t>(c.axes_dims_rope.size());
  require(image_ids.defined() && image_ids.dim() == 2 && image_ids.size(0) == n && image_ids.size(1) == axes,
          "image_ids", "(" + std::to_string(n) + ", " + std::to_string(axes) + "), one row per latent token",
          image_ids);
  require(text_ids.defined() && text_ids.dim() == 2 && text_ids.size(0) == context.size(1) && text_ids.size(1) == axes,
          "text_ids",
          "(" + std::to_string(context.size(1)) + ", " + std::to_string(axes) + "), one row per context token",
          text_ids);
}

at::Tensor FluxTransformer::operator()(const at::Tensor& latents, const at::Tensor& timestep,
                                       const at::Tensor& guidance, const at::Tensor& pooled, const at::Tensor& context,
                                       const at::Tensor& image_ids, const at::Tensor& text_ids) const {
  check_inputs(latents, timestep, guidance, pooled, context, image_ids, text_ids);
  const FluxConfig& c = config_;
  const at::TensorOptions opts = x_embedder_.weight.options();
  at::Tensor x = x_embedder_(latents.to(opts));
  // Scaled by 1000 in the model's dtype, sinusoids in float32, as diffusers does.
  auto embed = [&](const nn::TimestepEmbedding& e, const at::Tensor& s) {
    const at::Tensor scaled = s.to(opts) * 1000;
    return e(nn::timestep_embedding(scaled.to(at::kFloat), kSinusoidWidth, kSinusoids).to(opts));
  };
  at::Tensor conditioning = embed(timestep_embedder_, timestep);
  if (guidance_embedder_) conditioning = conditioning + embed(*guidance_embedder_, guidance);
  conditioning = conditioning + text_embedder_(pooled.to(opts));
  at::Tensor text = context_embedder_(context.to(opts));

  // One table for the joint sequence, text rows first, computed on the CPU in float64.
  const at::Tensor ids = at::cat({text_ids.to(at::kCPU, at::kFloat), image_ids.to(at::kCPU, at::kFloat)}, 0);
  auto [cos, sin] = nn::multi_axis_rope_tables(ids, c.axes_dims_rope, kRopeTheta);
  const RotaryTables rope{cos.to(opts.device()), sin.to(opts.device())};

  for (const DoubleStreamBlock& block : double_blocks_) std::tie(x, text) = block(x, text, conditioning, rope);
  if (!single_blocks_.empty()) {
    const int64_t m = text.size(1), n = x.size(1);
    at::Tensor joint = at::cat({text, x}, 1);
    for (const SingleStreamBlock& block : single_blocks_) joint = block(joint, conditioning, rope);
    x = joint.narrow(1, m, n);
  }
  const std::vector<at::Tensor> out = norm_out_(conditioning);  // scale, shift
  return proj_out_(nn::modulate(nn::plain_layer_norm(x, kEps), out[1], out[0]));
}

}  // namespace mpool::models::flux
