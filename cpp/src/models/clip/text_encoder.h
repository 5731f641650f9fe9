#pragma once
// CLIP's text tower saved alone (CLIPTextModel, CLIPTextModelWithProjection), as
// diffusion pipelines use it for conditioning: a chosen hidden state of every
// token and the pooled end-of-text vector, projected when the checkpoint has a
// text_projection. Stable Diffusion 3 reads both from CLIP-L and CLIP-G; FLUX
// reads CLIP-L's pooled vector.
#include <ATen/ATen.h>

#include "models/clip/config.h"
#include "mpool/nn/vit.h"
#include "mpool/nn/weights.h"

namespace mpool::models::clip {

class ClipTextEncoder {
 public:
  /// Tensors under `w` as transformers names them ("text_model." or, as
  /// transformers 5 saves a bare CLIPTextModel, without it; and
  /// "text_projection.weight" when `projected`).
  static ClipTextEncoder load(const nn::Weights& w, const ClipTextConfig& config, bool projected);

  struct Output {
    at::Tensor hidden;  ///< (b, t, width): transformers' hidden_states[hidden_index]
    at::Tensor pooled;  ///< (b, projection_dim or width): the end-of-text token's final state, projected
  };
  /// ids (b, t) int64, at most the tower's positions; causal as CLIP is.
  Output encode(const at::Tensor& ids, int64_t hidden_index = -2) const;
  const ClipTextConfig& config() const noexcept { return config_; }

 private:
  ClipTextConfig config_;
  nn::TextTransformer text_;
  at::Tensor projection_;  // (projection_dim, width) or undefined
};

}  // namespace mpool::models::clip
