#include "models/llava/llava.h"

#include "mpool/base/error.h"
#include "mpool/nn/mlp.h"

namespace mpool::models::llava {

LlavaParts LlavaParts::locate(const nn::Weights& checkpoint) {
  const nn::Weights root =
      checkpoint.find_prefix({"model.", ""}, "multi_modal_projector.linear_1.weight", "a LLaVA model");
  const bool legacy = root.prefix().empty();
  // The tower is a CLIPVisionModel ("vision_tower.vision_model.") in most
  // checkpoints; transformers 5.25 saves the transformer itself ("vision_tower.").
  // With int8 weights it stays float: it runs once per image, and its features
  // feed every generated token.
  const nn::Weights tower = root.sub("vision_tower")
                                .with_int8_linears(false)
                                .find_prefix({"vision_model.", ""}, "embeddings.patch_embedding.weight",
                                             "LLaVA's CLIP vision tower");
  return LlavaParts{tower, root.sub("multi_modal_projector"),
                    legacy ? checkpoint.sub("language_model").sub("model") : root.sub("language_model"),
                    legacy ? checkpoint.sub("language_model") : checkpoint, root};
}

LlavaVision::LlavaVision(const LlavaConfig& c, const LlavaParts& parts, at::Device device)
    : tower_(c.vision, parts.tower, parts.tower, /*projection_dim=*/0, device),
      layer_counts_(c.feature_layer_counts()),
      keep_class_token_(c.keep_class_token),
      linear_1_(nn::Linear::load(parts.projector, "linear_1", c.text.hidden_size, c.feature_width(), c.projector_bias)),
      linear_2_(nn::Linear::load(parts.projector, "linear_2", c.text.hidden_size, c.text.hidden_size, c.projector_bias)),
      act_(c.projector_act) {
  if (c.anyres) newline_ = parts.root.get("image_newline", {c.text.hidden_size});
}

at::Tensor LlavaVision::select(const at::Tensor& pixels) const {
  std::vector<at::Tensor> states = tower_.hidden_states(pixels, layer_counts_);
  if (!keep_class_token_)
    for (auto& s : states) s = s.narrow(1, 1, s.size(1) - 1);
  return states.size() == 1 ? states.front() : at::cat(states, -1);
}

at::Tensor LlavaVision::project(const at::Tensor& selected) const {
  return linear_2_(nn::activate(act_, linear_1_(selected.to(linear_1_.input_dtype()))));
}

}  // namespace mpool::models::llava
