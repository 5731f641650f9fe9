#pragma once
// LLaVA's image side on mpool_nn: the CLIP vision tower (clip::ClipVision), the
// hidden states of the configured feature layers, and the multi-modal
// projector (linear_1 -> act -> linear_2) into the language model's width. The
// language model is the decoder family's Decoder, built on its own view.
#include <ATen/ATen.h>

#include <vector>

#include "models/clip/clip.h"
#include "models/llava/config.h"
#include "mpool/nn/linear.h"
#include "mpool/nn/weights.h"

namespace mpool::models::llava {

/// Where a checkpoint keeps each part: "model.vision_tower.",
/// "model.multi_modal_projector.", "model.language_model." and "lm_head.weight"
/// (transformers 5's module names), or "vision_tower.", "multi_modal_projector.",
/// "language_model.model." and "language_model.lm_head.weight" (the original
/// checkpoints', which transformers 5.25 also writes). The tower's own names sit
/// under "vision_model." or directly under "vision_tower.".
struct LlavaParts {
  nn::Weights tower;      ///< holds "embeddings.", "pre_layrnorm.", "encoder.", "post_layernorm."
  nn::Weights projector;  ///< holds "linear_1.", "linear_2."
  nn::Weights language;   ///< the decoder's base model: "embed_tokens.", "layers.", "norm."
  nn::Weights head;       ///< holds "lm_head.weight"
  nn::Weights root;       ///< holds "image_newline" (LLaVA-NeXT)
  /// Finds the layout; InvalidInput lists the prefixes tried.
  static LlavaParts locate(const nn::Weights& checkpoint);
};

/// Pixel values -> image features in the language model's embedding space.
class LlavaVision {
 public:
  LlavaVision(const LlavaConfig& config, const LlavaParts& parts, at::Device device);
  /// (b, 3, S, S) float32 -> the vision tower's selected features (b, image_tokens,
  /// feature_width): the feature layers' hidden states concatenated on the last
  /// axis, without the class token unless the strategy is "full".
  at::Tensor select(const at::Tensor& pixels) const;
  /// Selected features -> (b, image_tokens, text hidden) through the projector.
  at::Tensor project(const at::Tensor& selected) const;
  /// Both: what one image's placeholder positions receive (LLaVA-1.5), or each
  /// tile's features (LLaVA-NeXT, before pack_tile_features).
  at::Tensor operator()(const at::Tensor& pixels) const { return project(select(pixels)); }
  /// LLaVA-NeXT's row terminator (text hidden); undefined for LLaVA-1.5.
  const at::Tensor& image_newline() const noexcept { return newline_; }

 private:
  clip::ClipVision tower_;
  std::vector<int64_t> layer_counts_;
  bool keep_class_token_;
  nn::Linear linear_1_, linear_2_;
  nn::Activation act_;
  at::Tensor newline_;
};

}  // namespace mpool::models::llava
