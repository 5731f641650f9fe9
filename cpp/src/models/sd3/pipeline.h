#pragma once
// Stable Diffusion 3 / 3.5 as one text-to-image model: the CLIP-L and CLIP-G
// text encoders (penultimate states and pooled projections) and the optional
// T5-XXL encoder make the joint context, the MMDiT predicts the flow, the
// flow-matching Euler sampler steps it with classifier-free and skip-layer
// guidance, and the VAE decodes (and, for img2img, encodes). Previews come from
// a tiny autoencoder when there is one, else from a linear latent-to-RGB map
// fitted to the VAE when the model loads.
#include <ATen/ATen.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "models/clip/text_encoder.h"
#include "models/sd3/mmdit.h"
#include "models/t5/t5.h"
#include "models/vae/autoencoder_kl.h"
#include "models/vae/autoencoder_tiny.h"
#include "mpool/capabilities/interfaces.h"
#include "mpool/core/instance.h"
#include "mpool/nn/flow_match.h"
#include "mpool/nn/weights.h"
#include "mpool/tokenizer/tokenizer.h"

namespace mpool::models::sd3 {

/// One text encoder with its tokenizer, padded and truncated to a fixed length.
struct PromptTokenizer {
  std::filesystem::path file;  ///< tokenizer.json, or the folder of slow files (kit::require_tokenizer)
  int64_t max_length = 77;
  int64_t pad_id = 0;
};

/// Where one component's weights are: a folder or .safetensors file, and the
/// prefix its tensors carry there ("" for a diffusers folder,
/// "model.diffusion_model." in a single file).
struct WeightSource {
  std::filesystem::path path;
  std::string prefix;
};

/// Where a pipeline's parts are and how they are read: everything the loader
/// needs, decided at registration.
struct Sd3Plan {
  WeightSource clip_l_weights, clip_g_weights;  ///< text_encoder/, text_encoder_2/, or a single file's parts
  std::optional<WeightSource> t5_weights;       ///< text_encoder_3/ (absent: zeros, as diffusers)
  WeightSource transformer_weights, vae_weights;
  bool original_mmdit_names = false;            ///< the MMDiT under Stability's names (single files)
  /// false: CLIP-L's pooled vector is used unprojected (an identity projection),
  /// as Stability's reference code and diffusers' single-file loading use it.
  bool clip_l_projected = true;
  std::optional<std::filesystem::path> preview_dir;    ///< an AutoencoderTiny folder (vae_preview/ or an option)
  PromptTokenizer clip_l_tokenizer, clip_g_tokenizer;
  std::optional<PromptTokenizer> t5_tokenizer;
  clip::ClipTextConfig clip_l, clip_g;
  std::optional<t5::T5Config> t5;
  MMDiTConfig mmdit;
  vae::AutoencoderKLConfig vae;
  std::optional<vae::AutoencoderTinyConfig> preview;
  nn::FlowMatchConfig scheduler;
  at::ScalarType dtype = at::kFloat;        ///< the MMDiT's and the VAE's
  at::ScalarType text_dtype = at::kFloat;   ///< the text encoders'
  bool text_encoders_on_cpu = false;
  int64_t default_max_sequence_length = 256;

  /// Pixels per latent (the VAE's) times the patch size: width and height must be multiples.
  int64_t size_multiple() const noexcept { return vae.spatial_scale_factor() * mmdit.patch_size; }
  /// The VAE's dtype: the model's, except float16 for a VAE whose config asks
  /// to be upcast (force_upcast: SD3's overflows in float16), as diffusers does.
  at::ScalarType vae_dtype() const noexcept {
    return dtype == at::kHalf && vae.force_upcast ? at::kFloat : dtype;
  }
  /// The largest side the MMDiT's positions cover.
  int64_t max_side() const noexcept { return mmdit.pos_embed_max_size * size_multiple(); }
};

/// A component's weights as a view under its prefix (floating point as `dtype`).
nn::Weights open_weights(const WeightSource& source, at::ScalarType dtype, at::Device device);
/// The MMDiT's view: renamed from the original names when the plan says so.
nn::Weights mmdit_view(const Sd3Plan& plan, const nn::Weights& w);

/// A loaded pipeline on one device.
class Sd3Pipeline final : public core::Instance, public capabilities::TextToImage {
 public:
  Sd3Pipeline(const Sd3Plan& plan, at::Device device);
  capabilities::Image generate_image(const std::string& prompt, const capabilities::ImageConfig& config,
                                     const capabilities::ProgressSink& progress,
                                     capabilities::RequestContext& ctx) override;

 private:
  struct Conditioning {
    at::Tensor context, pooled;  // (b, tokens, joint), (b, pooled): negative first, then positive
  };
  Conditioning encode_prompts(const std::vector<std::string>& prompts, int64_t max_sequence_length) const;
  at::Tensor tokenize(tokenizer::Tokenizer& tok, const PromptTokenizer& how, const std::vector<std::string>& texts,
                      int64_t length) const;
  at::Tensor init_latents(const capabilities::Image& image, int64_t width, int64_t height, at::Generator& gen) const;
  at::Tensor decode(const at::Tensor& latents) const;  // scaled latents -> (b, 3, H, W) in [-1, 1]
  std::optional<capabilities::Image> preview(const at::Tensor& estimate) const;
  void fit_preview_projection();

  Sd3Plan plan_;
  at::Device device_, text_device_;
  std::unique_ptr<tokenizer::Tokenizer> clip_l_tok_, clip_g_tok_, t5_tok_;
  clip::ClipTextEncoder clip_l_, clip_g_;
  std::optional<t5::T5Encoder> t5_;
  MMDiT mmdit_;
  vae::AutoencoderKL vae_;
  std::optional<vae::AutoencoderTiny> preview_vae_;
  at::Tensor preview_projection_;  // (latent_channels + 1, 3) float32: a linear map to RGB in [-1, 1]
};

}  // namespace mpool::models::sd3
