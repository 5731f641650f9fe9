#include "models/clip/clip.h"

#include "mpool/base/error.h"
#include "mpool/nn/attention.h"

namespace mpool::models::clip {

ClipVision::ClipVision(const nn::VisionTowerConfig& c, const nn::Weights& w, const nn::Weights& projection,
                       int64_t projection_dim, at::Device device)
    : embeddings_(nn::PatchEmbedding::load(w.sub("embeddings"), c, /*class_token=*/true, /*conv_bias=*/false)),
      // "pre_layrnorm" is how CLIP's checkpoints spell it.
      pre_norm_(nn::LayerNorm::load(w, "pre_layrnorm", c.hidden_size, c.layer_norm_eps)),
      post_norm_(nn::LayerNorm::load(w, "post_layernorm", c.hidden_size, c.layer_norm_eps)),
      encoder_(nn::PreNormEncoder::load(w.sub("encoder"), c)),
      device_(device) {
  if (projection_dim > 0) projection_ = projection.get("weight", {projection_dim, c.hidden_size});
}

at::Tensor ClipVision::hidden_states(const at::Tensor& pixels, int64_t layers) const {
  return encoder_(pre_norm_(embeddings_(pixels.to(device_))), {}, false, layers);
}

at::Tensor ClipVision::forward(const at::Tensor& pixels) const {
  at::Tensor pooled = post_norm_(hidden_states(pixels).select(1, 0));
  return projection_.defined() ? at::linear(pooled, projection_) : pooled;
}

}  // namespace mpool::models::clip
