#pragma once
// diffusers' AutoencoderKL on the shared conv blocks (nn/conv.h): the encoder to
// the latent distribution and the decoder back to pixels, for the Stable
// Diffusion 1/2/XL, SD3 and FLUX pipelines. Weights are read with diffusers'
// names, or from the original (LDM) layout of single-file checkpoints (detected
// from the names; ldm_names.h).
//
// Latent scaling is the caller's: a pipeline gives its denoiser
//   (latents - config().shift()) * config().scaling_factor
// and decodes latents / scaling_factor + shift (SD 1/2/XL have no shift).
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "models/vae/config.h"
#include "mpool/nn/conv.h"
#include "mpool/nn/norm.h"
#include "mpool/nn/weights.h"

namespace mpool::models::vae {

class AutoencoderKL {
 public:
  /// The diagonal Gaussian over latents (diffusers' DiagonalGaussianDistribution):
  /// (b, latent_channels, H / f, W / f) each, logvar clamped to [-30, 20]. Its mode
  /// is `mean`; a sample is mean + exp(0.5 * logvar) * noise.
  struct Moments {
    at::Tensor mean, logvar;
  };

  /// Every tensor of the encoder, the decoder and the quant convs the config
  /// asks for, under `w` (the autoencoder's root: "" in a diffusers vae folder,
  /// "first_stage_model." in a single file). InvalidInput names a missing or
  /// misshapen tensor.
  static AutoencoderKL load(const nn::Weights& w, const AutoencoderKLConfig& config);

  /// images (b, in_channels, H, W) in [-1, 1] -> the latent distribution after
  /// quant_conv (when the model has one).
  Moments encode(const at::Tensor& images) const;
  /// latents (b, latent_channels, h, w), unscaled -> images (b, out_channels,
  /// h * f, w * f), roughly in [-1, 1]; post_quant_conv first when the model has one.
  at::Tensor decode(const at::Tensor& latents) const;

  const AutoencoderKLConfig& config() const noexcept { return config_; }
  /// f: pixels per latent along each side, 2^(blocks - 1).
  int64_t spatial_scale_factor() const noexcept { return config_.spatial_scale_factor(); }

 private:
  // diffusers' UNetMidBlock2D as the VAE has it: resnet, [attention], resnet.
  struct MidBlock {
    std::vector<nn::ResnetBlock2D> resnets;
    std::optional<nn::SpatialAttention> attention;
    at::Tensor operator()(const at::Tensor& x) const;
  };
  // One resolution level: DownEncoderBlock2D or UpDecoderBlock2D.
  struct Level {
    std::vector<nn::ResnetBlock2D> resnets;
    std::optional<nn::Downsample2D> down;
    std::optional<nn::Upsample2D> up;
  };
  // conv_in, the levels, the mid-block, then conv_out(silu(conv_norm_out(.))).
  struct Coder {
    nn::Conv2d conv_in, conv_out;
    std::vector<Level> levels;
    MidBlock mid;
    nn::GroupNorm norm_out;
  };
  static MidBlock load_mid(const nn::Weights& w, const AutoencoderKLConfig& c, int64_t channels);
  static Coder load_encoder(const nn::Weights& w, const AutoencoderKLConfig& c);
  static Coder load_decoder(const nn::Weights& w, const AutoencoderKLConfig& c);
  at::Tensor input(const at::Tensor& x, int64_t channels, const char* what) const;

  AutoencoderKLConfig config_;
  Coder encoder_, decoder_;
  std::optional<nn::Conv2d> quant_conv_, post_quant_conv_;
  at::ScalarType dtype_ = at::kFloat;
};

}  // namespace mpool::models::vae
