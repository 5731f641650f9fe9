#include "models/vae/autoencoder_tiny.h"

#include <string>
#include <utility>

#include "mpool/base/error.h"
#include "mpool/nn/mlp.h"

namespace mpool::models::vae {

AutoencoderTiny::Block AutoencoderTiny::Block::load(const nn::Weights& w, int64_t in, int64_t out,
                                                    nn::Activation act) {
  Block b;
  const nn::Weights conv = w.sub("conv");
  b.conv0 = nn::Conv2d::load(conv, "0", in, out, 3, 1, 1);
  b.conv1 = nn::Conv2d::load(conv, "2", out, out, 3, 1, 1);
  b.conv2 = nn::Conv2d::load(conv, "4", out, out, 3, 1, 1);
  if (in != out) b.skip = nn::Conv2d::load(w, "skip", in, out, 1, 1, 0, false);
  b.act = act;
  return b;
}

at::Tensor AutoencoderTiny::Block::operator()(const at::Tensor& x) const {
  const at::Tensor h = conv2(nn::activate(act, conv1(nn::activate(act, conv0(x)))));
  return at::relu(h + (skip ? (*skip)(x) : x));
}

AutoencoderTiny AutoencoderTiny::load(const nn::Weights& w, const AutoencoderTinyConfig& config) {
  const auto& c = config;
  AutoencoderTiny m;
  m.config_ = config;
  m.dtype_ = w.dtype();

  // EncoderTiny: conv_in; per level a stride-2 conv (from the second) and its
  // blocks; conv_out to the latents.
  const nn::Weights enc = w.sub("encoder").sub("layers");
  int64_t k = 0;
  const auto& ew = c.encoder_block_out_channels;
  for (size_t i = 0; i < ew.size(); ++i) {
    Step down;
    down.conv = i == 0 ? nn::Conv2d::load(enc, std::to_string(k), c.in_channels, ew[0], 3, 1, 1)
                       : nn::Conv2d::load(enc, std::to_string(k), ew[i], ew[i], 3, 2, 1, false);
    m.encoder_.push_back(std::move(down));
    ++k;
    for (int64_t j = 0; j < c.num_encoder_blocks[i]; ++j, ++k)
      m.encoder_.push_back(Step{std::nullopt, Block::load(enc.sub(k), ew[i], ew[i], c.act), std::nullopt});
  }
  m.encoder_.push_back(Step{nn::Conv2d::load(enc, std::to_string(k), ew.back(), c.latent_channels, 3, 1, 1)});

  // DecoderTiny: conv_in and an activation; per level its blocks, an upsampler
  // (not after the last) and a conv (the last one to the output channels, with bias).
  const nn::Weights dec = w.sub("decoder").sub("layers");
  const auto& dw = c.decoder_block_out_channels;
  Step first{nn::Conv2d::load(dec, "0", c.latent_channels, dw[0], 3, 1, 1)};
  first.act_after = true;
  m.decoder_.push_back(std::move(first));
  k = 2;
  for (size_t i = 0; i < dw.size(); ++i) {
    for (int64_t j = 0; j < c.num_decoder_blocks[i]; ++j, ++k)
      m.decoder_.push_back(Step{std::nullopt, Block::load(dec.sub(k), dw[i], dw[i], c.act), std::nullopt});
    const bool last = i + 1 == dw.size();
    if (!last) {
      m.decoder_.push_back(Step{std::nullopt, std::nullopt, nn::Upsample2D::load(dec.sub(k), dw[i], false)});
      ++k;
    }
    m.decoder_.push_back(Step{last ? nn::Conv2d::load(dec, std::to_string(k), dw[i], c.out_channels, 3, 1, 1)
                                   : nn::Conv2d::load(dec, std::to_string(k), dw[i], dw[i], 3, 1, 1, false)});
    ++k;
  }
  return m;
}

at::Tensor AutoencoderTiny::run(const std::vector<Step>& steps, at::Tensor x, nn::Activation act, int64_t factor) {
  for (const Step& s : steps) {
    if (s.conv) {
      x = (*s.conv)(x);
      if (s.act_after) x = nn::activate(act, x);
    } else if (s.block) {
      x = (*s.block)(x);
    } else {
      x = factor == 2 ? (*s.up)(x) : (*s.up)(x, std::make_pair(x.size(2) * factor, x.size(3) * factor));
    }
  }
  return x;
}

at::Tensor AutoencoderTiny::input(const at::Tensor& x, int64_t channels, const char* what) const {
  check(x.defined() && x.dim() == 4 && x.size(1) == channels && x.size(0) > 0 && x.size(2) > 0 && x.size(3) > 0 &&
            at::isFloatingType(x.scalar_type()),
        ErrorCode::kInvalidInput,
        std::string("AutoencoderTiny.") + what + ": expected a non-empty floating (b, " + std::to_string(channels) +
            ", h, w) tensor, got " + (x.defined() ? c10::str(x.sizes(), " ", x.scalar_type()) : std::string("none")));
  return x.to(encoder_.front().conv->weight.device(), dtype_);
}

at::Tensor AutoencoderTiny::encode(const at::Tensor& images) const {
  // TAESD works on [0, 1] pixels.
  const at::Tensor x = (input(images, config_.in_channels, "encode") + 1) / 2;
  return run(encoder_, x, config_.act, config_.upsampling_scaling_factor);
}

at::Tensor AutoencoderTiny::decode(const at::Tensor& latents) const {
  const at::Tensor z = at::tanh(input(latents, config_.latent_channels, "decode") / 3) * 3;
  return run(decoder_, z, config_.act, config_.upsampling_scaling_factor) * 2 - 1;
}

}  // namespace mpool::models::vae
