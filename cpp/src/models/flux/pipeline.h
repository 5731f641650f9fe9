#pragma once
// FLUX.1 (schnell and dev) as one text-to-image model: CLIP-L's pooled vector
// and the T5-XXL encoder's states condition the FLUX transformer, which
// predicts the flow over 2x2-packed latent tokens placed by 3-axis rotary ids;
// dev embeds the guidance scale, and a negative prompt with true_cfg_scale > 1
// adds two-pass guidance. The flow-matching Euler loop (diffusion/sampler.h)
// runs FLUX's own levels, linspace(1, 1 / steps, steps) shifted by the image's
// token count (dynamic shifting), and the latent space (diffusion/latent_space.h)
// decodes, encodes img2img's image and previews (TAEF1 when present).
#include <ATen/ATen.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "models/clip/text_encoder.h"
#include "models/diffusion/components.h"
#include "models/diffusion/latent_space.h"
#include "models/flux/config.h"
#include "models/flux/transformer.h"
#include "models/t5/t5.h"
#include "mpool/capabilities/interfaces.h"
#include "mpool/core/instance.h"
#include "mpool/nn/flow_match.h"
#include "mpool/tokenizer/tokenizer.h"

namespace mpool::models::flux {

using diffusion::PromptTokenizer;
using diffusion::WeightSource;

/// Latent pixels per packed token side: FLUX packs 2x2 latents into one token.
inline constexpr int64_t kPack = 2;
/// The longest side a request may ask for (no position table bounds FLUX; this bounds its memory).
inline constexpr int64_t kMaxSide = 4096;

/// Where a pipeline's parts are and how they are read, decided at registration.
struct FluxPlan {
  WeightSource clip_weights, t5_weights, transformer_weights;
  bool original_names = false;  ///< the transformer under Black Forest Labs' names (single files)
  diffusion::LatentSpaceConfig latent;
  PromptTokenizer clip_tokenizer, t5_tokenizer;
  clip::ClipTextConfig clip;
  t5::T5Config t5;
  FluxConfig transformer;
  nn::FlowMatchConfig scheduler;
  at::ScalarType dtype = at::kFloat;       ///< the transformer's and the VAE's
  at::ScalarType text_dtype = at::kFloat;  ///< the text encoders'
  bool text_encoders_on_cpu = false;
  int64_t default_max_sequence_length = 512;

  /// Width and height must be multiples: the VAE's factor times the packing.
  int64_t size_multiple() const noexcept { return latent.scale() * kPack; }
  /// Channels of the unpacked latents the VAE makes.
  int64_t latent_channels() const noexcept { return transformer.in_channels / (kPack * kPack); }
};

/// The transformer's view: renamed from the original names when the plan says so.
nn::Weights transformer_view(const FluxPlan& plan, const nn::Weights& w);

/// (b, c, h, w) latents -> (b, h/2 * w/2, 4c) tokens, as diffusers' _pack_latents; and back.
at::Tensor pack_latents(const at::Tensor& latents);
at::Tensor unpack_latents(const at::Tensor& tokens, int64_t height, int64_t width);
/// The image tokens' rotary ids (rows * cols, 3): (0, row, col), float32.
at::Tensor image_ids(int64_t rows, int64_t cols);

/// A loaded pipeline on one device.
class FluxPipeline final : public core::Instance, public capabilities::TextToImage {
 public:
  FluxPipeline(const FluxPlan& plan, at::Device device);
  capabilities::Image generate_image(const std::string& prompt, const capabilities::ImageConfig& config,
                                     const capabilities::ProgressSink& progress,
                                     capabilities::RequestContext& ctx) override;

 private:
  struct Conditioning {
    at::Tensor context, pooled;  // (b, tokens, joint), (b, pooled) on the device
  };
  Conditioning encode_prompts(const std::vector<std::string>& prompts, int64_t max_sequence_length) const;

  FluxPlan plan_;
  at::Device device_, text_device_;
  std::unique_ptr<tokenizer::Tokenizer> clip_tok_, t5_tok_;
  clip::ClipTextEncoder clip_;
  t5::T5Encoder t5_;
  FluxTransformer transformer_;
  diffusion::LatentSpace latent_;
};

}  // namespace mpool::models::flux
