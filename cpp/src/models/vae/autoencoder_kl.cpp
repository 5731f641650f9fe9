#include "models/vae/autoencoder_kl.h"

#include <string>

#include "models/vae/ldm_names.h"
#include "mpool/base/error.h"
#include "mpool/nn/mlp.h"

namespace mpool::models::vae {

namespace {

// The VAE's residual blocks: no timestep, eps 1e-6, the config's groups and activation.
nn::ResnetBlockConfig resnet(const AutoencoderKLConfig& c, int64_t in, int64_t out) {
  nn::ResnetBlockConfig r;
  r.in_channels = in;
  r.out_channels = out;
  r.groups = c.norm_num_groups;
  r.eps = 1e-6;
  r.act = c.act;
  return r;
}

// conv_out(silu(norm(x))): both coders close this way whatever act_fn says.
at::Tensor close(const nn::GroupNorm& norm, const nn::Conv2d& conv, const at::Tensor& x) {
  return conv(nn::activate(nn::Activation::kSilu, norm(x)));
}

}  // namespace

at::Tensor AutoencoderKL::MidBlock::operator()(const at::Tensor& x) const {
  at::Tensor h = resnets[0](x);
  if (attention) h = (*attention)(h);
  return resnets[1](h);
}

AutoencoderKL::MidBlock AutoencoderKL::load_mid(const nn::Weights& w, const AutoencoderKLConfig& c, int64_t ch) {
  MidBlock m;
  const nn::Weights resnets = w.sub("resnets");
  m.resnets.push_back(nn::ResnetBlock2D::load(resnets.sub(0), resnet(c, ch, ch)));
  if (c.mid_block_add_attention)
    m.attention = nn::SpatialAttention::load(w.sub("attentions").sub(0), ch, c.norm_num_groups, 1e-6);
  m.resnets.push_back(nn::ResnetBlock2D::load(resnets.sub(1), resnet(c, ch, ch)));
  return m;
}

AutoencoderKL::Coder AutoencoderKL::load_encoder(const nn::Weights& w, const AutoencoderKLConfig& c) {
  const auto& ch = c.block_out_channels;
  Coder e;
  e.conv_in = nn::Conv2d::load(w, "conv_in", c.in_channels, ch[0], 3, 1, 1);
  int64_t in = ch[0];
  for (int64_t i = 0; i < c.num_blocks(); ++i) {
    const nn::Weights b = w.sub("down_blocks").sub(i);
    Level level;
    for (int64_t j = 0; j < c.layers_per_block; ++j)
      level.resnets.push_back(nn::ResnetBlock2D::load(b.sub("resnets").sub(j), resnet(c, j == 0 ? in : ch[i], ch[i])));
    // Padding 0: the encoder pads right and bottom by one before its stride-2 conv.
    if (i + 1 < c.num_blocks()) level.down = nn::Downsample2D::load(b.sub("downsamplers").sub(0), ch[i], true, 0, 3, 0);
    e.levels.push_back(std::move(level));
    in = ch[i];
  }
  e.mid = load_mid(w.sub("mid_block"), c, ch.back());
  e.norm_out = nn::GroupNorm::load(w, "conv_norm_out", c.norm_num_groups, ch.back(), 1e-6);
  e.conv_out = nn::Conv2d::load(w, "conv_out", ch.back(), 2 * c.latent_channels, 3, 1, 1);
  return e;
}

AutoencoderKL::Coder AutoencoderKL::load_decoder(const nn::Weights& w, const AutoencoderKLConfig& c) {
  const auto& ch = c.block_out_channels;
  Coder d;
  d.conv_in = nn::Conv2d::load(w, "conv_in", c.latent_channels, ch.back(), 3, 1, 1);
  d.mid = load_mid(w.sub("mid_block"), c, ch.back());
  int64_t in = ch.back();
  for (int64_t i = 0; i < c.num_blocks(); ++i) {
    const int64_t out = ch[static_cast<size_t>(c.num_blocks() - 1 - i)];  // widths in reverse
    const nn::Weights b = w.sub("up_blocks").sub(i);
    Level level;
    for (int64_t j = 0; j <= c.layers_per_block; ++j)
      level.resnets.push_back(nn::ResnetBlock2D::load(b.sub("resnets").sub(j), resnet(c, j == 0 ? in : out, out)));
    if (i + 1 < c.num_blocks()) level.up = nn::Upsample2D::load(b.sub("upsamplers").sub(0), out, true, out);
    d.levels.push_back(std::move(level));
    in = out;
  }
  d.norm_out = nn::GroupNorm::load(w, "conv_norm_out", c.norm_num_groups, ch[0], 1e-6);
  d.conv_out = nn::Conv2d::load(w, "conv_out", ch[0], c.out_channels, 3, 1, 1);
  return d;
}

AutoencoderKL AutoencoderKL::load(const nn::Weights& root, const AutoencoderKLConfig& config) {
  const nn::Weights w =
      detect_layout(root) == VaeLayout::kLdm ? root.renamed(ldm_names(config.num_blocks())) : root;
  AutoencoderKL m;
  m.config_ = config;
  m.encoder_ = load_encoder(w.sub("encoder"), config);
  m.decoder_ = load_decoder(w.sub("decoder"), config);
  const int64_t latent = config.latent_channels;
  if (config.use_quant_conv) m.quant_conv_ = nn::Conv2d::load(w, "quant_conv", 2 * latent, 2 * latent, 1);
  if (config.use_post_quant_conv) m.post_quant_conv_ = nn::Conv2d::load(w, "post_quant_conv", latent, latent, 1);
  m.dtype_ = w.dtype();
  return m;
}

at::Tensor AutoencoderKL::input(const at::Tensor& x, int64_t channels, const char* what) const {
  check(x.defined() && x.dim() == 4 && x.size(1) == channels && x.size(0) > 0 && x.size(2) > 0 && x.size(3) > 0 &&
            at::isFloatingType(x.scalar_type()),
        ErrorCode::kInvalidInput,
        std::string("AutoencoderKL.") + what + ": expected a non-empty floating (b, " + std::to_string(channels) +
            ", h, w) tensor, got " + (x.defined() ? c10::str(x.sizes(), " ", x.scalar_type()) : std::string("none")));
  return x.to(encoder_.conv_in.weight.device(), dtype_);
}

AutoencoderKL::Moments AutoencoderKL::encode(const at::Tensor& images) const {
  at::Tensor h = encoder_.conv_in(input(images, config_.in_channels, "encode"));
  for (const Level& level : encoder_.levels) {
    for (const auto& r : level.resnets) h = r(h);
    if (level.down) h = (*level.down)(h);
  }
  h = close(encoder_.norm_out, encoder_.conv_out, encoder_.mid(h));
  if (quant_conv_) h = (*quant_conv_)(h);
  auto parts = h.chunk(2, 1);
  return Moments{parts[0], at::clamp(parts[1], -30.0, 20.0)};
}

at::Tensor AutoencoderKL::decode(const at::Tensor& latents) const {
  at::Tensor z = input(latents, config_.latent_channels, "decode");
  if (post_quant_conv_) z = (*post_quant_conv_)(z);
  at::Tensor h = decoder_.mid(decoder_.conv_in(z));
  for (const Level& level : decoder_.levels) {
    for (const auto& r : level.resnets) h = r(h);
    if (level.up) h = (*level.up)(h);
  }
  return close(decoder_.norm_out, decoder_.conv_out, h);
}

}  // namespace mpool::models::vae
