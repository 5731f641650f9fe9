#pragma once
// The latent space a text-to-image model denoises in, shared by every family:
// the AutoencoderKL that decodes the result (and encodes img2img's start), the
// family's latent scaling and shift, and the step previews, from a tiny
// autoencoder (TAESD3, TAEF1) when there is one, else from a linear
// latent-to-RGB map fitted to the VAE when the model loads.
#include <ATen/ATen.h>

#include <filesystem>
#include <optional>
#include <string>

#include "models/diffusion/components.h"
#include "models/vae/autoencoder_kl.h"
#include "models/vae/autoencoder_tiny.h"
#include "mpool/capabilities/interfaces.h"
#include "mpool/models/families.h"

namespace mpool::models::diffusion {

/// Where the autoencoders are and how they run, decided at registration.
struct LatentSpaceConfig {
  WeightSource vae_weights;
  vae::AutoencoderKLConfig vae;
  std::optional<std::filesystem::path> preview_dir;  ///< an AutoencoderTiny folder
  std::optional<vae::AutoencoderTinyConfig> preview;
  at::ScalarType dtype = at::kFloat;  ///< the denoiser's

  /// The VAE's dtype: the model's, except float16 for a VAE whose config asks
  /// to be upcast (force_upcast: SD3's overflows in float16), as diffusers does.
  at::ScalarType vae_dtype() const noexcept { return dtype == at::kHalf && vae.force_upcast ? at::kFloat : dtype; }
  /// Pixels per latent.
  int64_t scale() const noexcept { return vae.spatial_scale_factor(); }

  /// The preview autoencoder: option preview_vae, else `default_dir` when it
  /// holds a config.json (a pipeline's vae_preview/), else none. InvalidInput
  /// when the option names no autoencoder or its latent channels differ.
  void find_preview(const NativeOptions& options, const std::filesystem::path& default_dir);
  /// Measures the VAE and the preview autoencoder with `meter`.
  void measure(WeightMeter& meter) const;
  /// Bytes the VAE decode of a side x side image peaks at (its widest level at full size).
  double decode_peak(int64_t side) const;
};

class LatentSpace {
 public:
  LatentSpace() = default;
  LatentSpace(const LatentSpaceConfig& config, at::Device device);

  /// img2img's start: `image` resized to width x height as diffusers does (PIL
  /// Lanczos), encoded, a sample of the latent distribution drawn from `gen`,
  /// scaled and shifted: (1, channels, height / scale, width / scale) float32 on the CPU.
  at::Tensor encode(const capabilities::Image& image, int64_t width, int64_t height, at::Generator& gen) const;
  /// Denoised latents (1, channels, h, w) -> the image (1, 3, H, W) in [-1, 1] on the device.
  at::Tensor decode(const at::Tensor& latents) const;
  /// A preview of the clean-image estimate (1, channels, h, w).
  capabilities::Image preview(const at::Tensor& estimate) const;
  /// The final image from decode(): HWC uint8 rounded as diffusers' numpy_to_pil,
  /// or HWC float32 in [0, 1] (output_type "np") with `float_output`.
  static capabilities::Image output(const at::Tensor& image, bool float_output);

  const LatentSpaceConfig& config() const noexcept { return config_; }

 private:
  void fit_preview_projection();

  LatentSpaceConfig config_;
  at::Device device_ = at::kCPU;
  vae::AutoencoderKL vae_;
  std::optional<vae::AutoencoderTiny> preview_vae_;
  at::Tensor preview_projection_;  // (latent_channels + 1, 3) float32: a linear map to RGB in [-1, 1]
};

}  // namespace mpool::models::diffusion
