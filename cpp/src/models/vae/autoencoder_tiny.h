#pragma once
// diffusers' AutoencoderTiny (TAESD, and TAESD3 / TAEF1 for the SD3 and FLUX
// latents) on the shared conv blocks: a deterministic encoder and a decoder of
// plain conv blocks. encode() and decode() return what AutoencoderTiny.encode(x)
// .latents and .decode(z).sample do: images in [-1, 1] on both sides, latents
// unscaled (scale_latents' magnitude and shift, and the pipeline's
// scaling_factor / shift_factor, are the caller's).
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "models/vae/config.h"
#include "mpool/nn/conv.h"
#include "mpool/nn/weights.h"

namespace mpool::models::vae {

class AutoencoderTiny {
 public:
  /// encoder.layers.{k} and decoder.layers.{k} under `w`, numbered as diffusers'
  /// nn.Sequential numbers them (activations and upsamplers hold a number but no
  /// tensor). InvalidInput names a missing or misshapen tensor.
  static AutoencoderTiny load(const nn::Weights& w, const AutoencoderTinyConfig& config);

  /// images (b, in_channels, H, W) in [-1, 1] -> latents (b, latent_channels, H / f, W / f)
  /// (f = encoder_scale_factor(); odd sizes round up, as stride-2 convs do).
  at::Tensor encode(const at::Tensor& images) const;
  /// latents (b, latent_channels, h, w) -> images (b, out_channels, h * f, w * f) in
  /// [-1, 1] (f = decoder_scale_factor()); latents are first soft-clamped to
  /// 3 * tanh(z / 3).
  at::Tensor decode(const at::Tensor& latents) const;

  const AutoencoderTinyConfig& config() const noexcept { return config_; }

 private:
  // diffusers' AutoencoderTinyBlock: relu(conv.4(act(conv.2(act(conv.0(x))))) + skip(x)).
  struct Block {
    nn::Conv2d conv0, conv1, conv2;
    std::optional<nn::Conv2d> skip;  // 1x1 without bias, when the width changes
    nn::Activation act = nn::Activation::kRelu;
    static Block load(const nn::Weights& w, int64_t in, int64_t out, nn::Activation act);
    at::Tensor operator()(const at::Tensor& x) const;
  };
  // One entry of a coder's sequence: a conv, a block, or an upsampler.
  struct Step {
    std::optional<nn::Conv2d> conv;
    std::optional<Block> block;
    std::optional<nn::Upsample2D> up;
    bool act_after = false;  // the decoder's activation after its first conv
  };
  at::Tensor input(const at::Tensor& x, int64_t channels, const char* what) const;
  static at::Tensor run(const std::vector<Step>& steps, at::Tensor x, nn::Activation act, int64_t factor);

  AutoencoderTinyConfig config_;
  std::vector<Step> encoder_, decoder_;
  at::ScalarType dtype_ = at::kFloat;
};

}  // namespace mpool::models::vae
