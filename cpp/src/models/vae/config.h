#pragma once
// What the diffusers autoencoders read from vae/config.json: AutoencoderKL (the
// Stable Diffusion 1/2/XL, SD3 and FLUX VAE) and AutoencoderTiny (TAESD), as plain
// structs. Torch-free (part of mpool_model_configs), so it runs under the
// sanitizers and is fuzzed (fuzz/config_json_fuzz.cpp).
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mpool/loading/config.h"
#include "mpool/nn/activation.h"

namespace mpool::models::vae {

/// Most blocks (resolution levels) an autoencoder config may list: 2^15 is already
/// far past any published VAE's spatial factor of 8.
inline constexpr int64_t kMaxVaeBlocks = 16;
/// Most residual blocks per level (layers_per_block, num_*_blocks entries).
inline constexpr int64_t kMaxVaeLayersPerBlock = 64;

/// diffusers' AutoencoderKL: a convolutional encoder to a diagonal Gaussian over
/// latents and a decoder back to pixels.
struct AutoencoderKLConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  /// One entry per resolution level (down_block_types / up_block_types have as many).
  std::vector<int64_t> block_out_channels{64};
  int64_t layers_per_block = 1;
  /// The residual blocks' activation (the conv_out activation is always SiLU).
  nn::Activation act = nn::Activation::kSilu;
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 32;
  /// The image side the model was trained at (tiling hints); not a limit.
  int64_t sample_size = 32;
  /// latents for the denoiser = (mean - shift_factor) * scaling_factor; the caller applies it.
  double scaling_factor = 0.18215;
  /// SD3 and FLUX shift their latents; null (SD 1/2/XL) means no shift.
  std::optional<double> shift_factor;
  /// 1x1 convs on the moments after the encoder / on the latents before the decoder
  /// (SD 1/2/XL have them, SD3 and FLUX not).
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  /// The single-head self-attention between the mid-block's two residual blocks.
  bool mid_block_add_attention = true;
  /// Whether diffusers' pipelines run this VAE in float32 whatever the pipeline's dtype.
  bool force_upcast = true;

  int64_t num_blocks() const noexcept { return static_cast<int64_t>(block_out_channels.size()); }
  /// Pixels per latent along each side: 2^(blocks - 1).
  int64_t spatial_scale_factor() const noexcept { return int64_t{1} << (num_blocks() - 1); }
  double shift() const noexcept { return shift_factor.value_or(0.0); }

  /// Reads and checks the fields with AutoencoderKL's defaults for what the file
  /// leaves out. InvalidInput names config.json and the key: a block type other than
  /// DownEncoderBlock2D / UpDecoderBlock2D, lists of different lengths, channels
  /// that norm_num_groups does not divide, a size out of bounds, an unknown
  /// activation, a zero or non-finite scaling_factor, or a `_class_name` other than
  /// AutoencoderKL.
  static AutoencoderKLConfig from(const loading::ModelConfig& config);
};

/// diffusers' AutoencoderTiny (TAESD): plain conv blocks, a deterministic encoder.
struct AutoencoderTinyConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  /// EncoderTiny's and DecoderTiny's widths; each list is one width repeated (the
  /// stride-2 and post-upsample convs keep the width they are given).
  std::vector<int64_t> encoder_block_out_channels{64, 64, 64, 64};
  std::vector<int64_t> decoder_block_out_channels{64, 64, 64, 64};
  /// The conv blocks' activation (each block's closing "fuse" is always ReLU).
  nn::Activation act = nn::Activation::kRelu;
  int64_t latent_channels = 4;
  /// The decoder's nearest-neighbour upsampling factor between levels
  /// (upsample_fn must be "nearest").
  int64_t upsampling_scaling_factor = 2;
  /// AutoencoderTinyBlocks per level, as many entries as the widths.
  std::vector<int64_t> num_encoder_blocks{1, 3, 3, 3};
  std::vector<int64_t> num_decoder_blocks{3, 3, 3, 1};
  /// scale_latents: latents / (2 * latent_magnitude) + latent_shift, into [0, 1]
  /// (how TAESD latents are stored as images; the caller's business).
  double latent_magnitude = 3.0;
  double latent_shift = 0.5;
  /// As AutoencoderKLConfig's (diffusers registers false for AutoencoderTiny).
  bool force_upcast = false;
  /// The pipeline's latent scaling, as AutoencoderKLConfig's.
  double scaling_factor = 1.0;
  double shift_factor = 0.0;

  /// Pixels per latent along each side when encoding: 2^(encoder levels - 1).
  int64_t encoder_scale_factor() const noexcept;
  /// Pixels per latent along each side when decoding: factor^(decoder levels - 1).
  int64_t decoder_scale_factor() const noexcept;

  /// Reads and checks the fields with AutoencoderTiny's defaults; InvalidInput
  /// names config.json and the key.
  static AutoencoderTinyConfig from(const loading::ModelConfig& config);
};

}  // namespace mpool::models::vae
