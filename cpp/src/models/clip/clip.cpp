#include "models/clip/clip.h"

#include <algorithm>
#include <map>

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

std::vector<at::Tensor> ClipVision::hidden_states(const at::Tensor& pixels, const std::vector<int64_t>& layers) const {
  std::vector<int64_t> order(layers);
  std::sort(order.begin(), order.end());
  order.erase(std::unique(order.begin(), order.end()), order.end());
  check(!order.empty() && order.front() >= 0 && order.back() <= num_layers(), ErrorCode::kInvalidInput,
        "vision feature layers must be in [0, " + std::to_string(num_layers()) + "]");
  std::map<int64_t, at::Tensor> after;
  at::Tensor x = pre_norm_(embeddings_(pixels.to(device_)));
  int64_t done = 0;
  for (int64_t count : order) {
    x = encoder_.run_layers(x, done, count);
    done = count;
    after[count] = x;
  }
  std::vector<at::Tensor> out;
  for (int64_t count : layers) out.push_back(after.at(count));
  return out;
}

at::Tensor ClipVision::forward(const at::Tensor& pixels) const {
  at::Tensor pooled = post_norm_(hidden_states(pixels).select(1, 0));
  return projection_.defined() ? at::linear(pooled, projection_) : pooled;
}

}  // namespace mpool::models::clip
