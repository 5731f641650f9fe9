#pragma once
// Stable Diffusion 3 / 3.5 as one text-to-image model: the CLIP-L and CLIP-G
// text encoders (penultimate states and pooled projections) and the optional
// T5-XXL encoder make the joint context, the MMDiT predicts the flow, the
// flow-matching Euler sampler (diffusion/sampler.h) steps it with
// classifier-free and skip-layer guidance, and the latent space
// (diffusion/latent_space.h) decodes, encodes img2img's image and previews.
#include <ATen/ATen.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "models/clip/text_encoder.h"
#include "models/sd3/mmdit.h"
#include "models/t5/t5.h"
#include "models/diffusion/components.h"
#include "models/diffusion/latent_space.h"
#include "mpool/capabilities/interfaces.h"
#include "mpool/core/instance.h"
#include "mpool/nn/flow_match.h"
#include "mpool/nn/weights.h"
#include "mpool/tokenizer/tokenizer.h"

namespace mpool::models::sd3 {

using diffusion::PromptTokenizer;
using diffusion::WeightSource;

/// Where a pipeline's parts are and how they are read: everything the loader
/// needs, decided at registration.
struct Sd3Plan {
  WeightSource clip_l_weights, clip_g_weights;  ///< text_encoder/, text_encoder_2/, or a single file's parts
  std::optional<WeightSource> t5_weights;       ///< text_encoder_3/ (absent: zeros, as diffusers)
  WeightSource transformer_weights;
  diffusion::LatentSpaceConfig latent;          ///< the VAE and the previews
  bool original_mmdit_names = false;            ///< the MMDiT under Stability's names (single files)
  /// false: CLIP-L's pooled vector is used unprojected (an identity projection),
  /// as Stability's reference code and diffusers' single-file loading use it.
  bool clip_l_projected = true;
  PromptTokenizer clip_l_tokenizer, clip_g_tokenizer;
  std::optional<PromptTokenizer> t5_tokenizer;
  clip::ClipTextConfig clip_l, clip_g;
  std::optional<t5::T5Config> t5;
  MMDiTConfig mmdit;
  nn::FlowMatchConfig scheduler;
  at::ScalarType dtype = at::kFloat;        ///< the MMDiT's and the VAE's
  at::ScalarType text_dtype = at::kFloat;   ///< the text encoders'
  bool text_encoders_on_cpu = false;
  int64_t default_max_sequence_length = 256;

  /// Pixels per latent (the VAE's) times the patch size: width and height must be multiples.
  int64_t size_multiple() const noexcept { return latent.scale() * mmdit.patch_size; }
  /// The largest side the MMDiT's positions cover.
  /// The largest image side: the position table's, or without one 4096 pixels.
  int64_t max_side() const noexcept {
    return mmdit.pos_embed_max_size > 0 ? mmdit.pos_embed_max_size * size_multiple()
                                        : (4096 / size_multiple()) * size_multiple();
  }
};

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

  Sd3Plan plan_;
  at::Device device_, text_device_;
  std::unique_ptr<tokenizer::Tokenizer> clip_l_tok_, clip_g_tok_, t5_tok_;
  clip::ClipTextEncoder clip_l_, clip_g_;
  std::optional<t5::T5Encoder> t5_;
  MMDiT mmdit_;
  diffusion::LatentSpace latent_;
};

}  // namespace mpool::models::sd3
