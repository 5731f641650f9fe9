#include "mpool/nn/vit.h"

#include <c10/util/irange.h>

#include <algorithm>

#include "mpool/base/error.h"
#include "mpool/nn/stop.h"

namespace mpool::nn {

PreNormEncoder PreNormEncoder::load(const Weights& w, const EncoderConfig& c) {
  PreNormEncoder e;
  AttentionShape shape;
  shape.hidden = c.hidden_size;
  shape.heads = c.num_heads;
  shape.head_dim = c.head_dim();
  shape.qkv_bias = shape.o_bias = true;
  AttentionNames names;
  names.o = "out_proj";
  names.fused_qkv = "";  // stored as separate q, k, v
  MlpNames mlp;
  mlp.up = "fc1";
  mlp.down = "fc2";
  const Weights layers = w.sub("layers");
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const Weights l = layers.sub(i);
    e.layers_.push_back(Layer{
        LayerNorm::load(l, "layer_norm1", c.hidden_size, c.layer_norm_eps),
        Attention::load(l.sub("self_attn"), shape, names),
        LayerNorm::load(l, "layer_norm2", c.hidden_size, c.layer_norm_eps),
        Mlp::load(l.sub("mlp"), c.hidden_size, c.intermediate_size, c.act, /*gated=*/false, /*bias=*/true, mlp),
    });
  }
  return e;
}

at::Tensor PreNormEncoder::operator()(at::Tensor x, const at::Tensor& mask, bool causal, int64_t layers) const {
  return run_layers(std::move(x), 0, layers, mask, causal);
}

at::Tensor PreNormEncoder::run_layers(at::Tensor x, int64_t from, int64_t to, const at::Tensor& mask,
                                      bool causal) const {
  const int64_t n = to < 0 ? num_layers() : std::min(to, num_layers());
  for (int64_t i = std::max<int64_t>(from, 0); i < n; ++i) {
    stop_point();
    const Layer& L = layers_[static_cast<size_t>(i)];
    x = L.attention(L.norm1(x), mask, causal, {}, x);  // residual sums fused where they can be
    x = L.mlp(L.norm2(x), x);
  }
  return x;
}

PatchEmbedding PatchEmbedding::load(const Weights& w, const VisionTowerConfig& c, bool class_token, bool conv_bias) {
  PatchEmbedding p;
  p.patch_ = Conv2d::load(w, "patch_embedding", c.num_channels, c.hidden_size, c.patch_size, c.patch_size, 0, conv_bias);
  if (class_token) p.class_ = w.get("class_embedding", {c.hidden_size});
  p.positions_ = w.get("position_embedding.weight", {c.num_patches() + (class_token ? 1 : 0), c.hidden_size});
  p.image_size_ = c.image_size;
  return p;
}

at::Tensor PatchEmbedding::operator()(const at::Tensor& pixels) const {
  check(pixels.dim() == 4 && pixels.size(1) == patch_.in_channels() && pixels.size(2) == image_size_ &&
            pixels.size(3) == image_size_,
        ErrorCode::kInvalidInput,
        "pixel values must be (batch, " + std::to_string(patch_.in_channels()) + ", " + std::to_string(image_size_) +
            ", " + std::to_string(image_size_) + "), got " + std::string(c10::str(pixels.sizes())));
  const int64_t b = pixels.size(0);
  at::Tensor x = patch_(pixels.to(positions_.scalar_type())).flatten(2).transpose(1, 2);  // (b, patches, hidden)
  if (class_.defined()) x = at::cat({class_.view({1, 1, -1}).expand({b, 1, class_.size(0)}), x}, 1);
  return x + positions_.unsqueeze(0);
}

TextTransformer TextTransformer::load(const Weights& w, const TextTowerConfig& c) {
  TextTransformer t;
  t.token_ = w.get("embeddings.token_embedding.weight", {c.vocab_size, c.hidden_size});
  t.position_ = w.get("embeddings.position_embedding.weight", {c.max_positions, c.hidden_size});
  t.encoder_ = PreNormEncoder::load(w.sub("encoder"), c);
  t.final_norm_ = LayerNorm::load(w, "final_layer_norm", c.hidden_size, c.layer_norm_eps);
  return t;
}

at::Tensor TextTransformer::operator()(const at::Tensor& ids, bool causal) const {
  const int64_t t = ids.size(1);
  check(t <= position_.size(0), ErrorCode::kInvalidInput,
        "input of " + std::to_string(t) + " tokens is longer than the text tower's " +
            std::to_string(position_.size(0)) + " positions");
  at::Tensor x = at::embedding(token_, ids) + position_.narrow(0, 0, t).unsqueeze(0);
  return final_norm_(encoder_(x, {}, causal));
}

std::pair<at::Tensor, at::Tensor> TextTransformer::with_hidden_state(const at::Tensor& ids, bool causal,
                                                                     int64_t hidden_index) const {
  const int64_t layers = encoder_.num_layers();
  const int64_t at_layer = hidden_index < 0 ? layers + 1 + hidden_index : hidden_index;
  check(at_layer >= 0 && at_layer <= layers, ErrorCode::kInvalidInput,
        "hidden state " + std::to_string(hidden_index) + " is not one of the text tower's " +
            std::to_string(layers + 1));
  const int64_t t = ids.size(1);
  check(t <= position_.size(0), ErrorCode::kInvalidInput,
        "input of " + std::to_string(t) + " tokens is longer than the text tower's " +
            std::to_string(position_.size(0)) + " positions");
  const at::Tensor x = at::embedding(token_, ids) + position_.narrow(0, 0, t).unsqueeze(0);
  at::Tensor hidden = encoder_.run_layers(x, 0, at_layer, {}, causal);
  at::Tensor last = encoder_.run_layers(hidden, at_layer, -1, {}, causal);
  return {final_norm_(last), hidden};
}

}  // namespace mpool::nn
