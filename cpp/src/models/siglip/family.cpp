// The SigLIP family as a pool model: recognizes SiglipModel directories and
// builds image_embedding + text_embedding specs whose replicas run both towers
// under the kit's ImageTextEmbedder. Texts are padded to the text tower's length
// with the pad token, as SigLIP's processor pads them and the model was trained.
#include <c10/core/InferenceMode.h>

#include <cmath>

#include "models/siglip/siglip.h"
#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "mpool/models/families.h"
#include "mpool/models/image_text_embedder.h"
#include "mpool/models/kit.h"
#include "mpool/nn/probe.h"

namespace mpool::models::siglip {
namespace {

struct SiglipModel {
  SiglipVision vision;
  nn::TextTransformer text;
  at::Tensor head_weight, head_bias;
  double logit_scale, logit_bias;

  SiglipModel(const SiglipConfig& c, const nn::Weights& checkpoint, at::Device device)
      : SiglipModel(c, checkpoint.find_prefix({"", "model."}, "vision_model.head.probe", "a SigLIP model"), device, 0) {}

 private:
  SiglipModel(const SiglipConfig& c, const nn::Weights& w, at::Device device, int)
      : vision(c.vision, w.sub("vision_model"), device),
        text(nn::TextTransformer::load(w.sub("text_model"), c.text)),
        head_weight(w.get("text_model.head.weight", {c.projection_size, c.text.hidden_size})),
        head_bias(w.get("text_model.head.bias", {c.projection_size})),
        logit_scale(scalar_value(w.get("logit_scale", {1}))),
        logit_bias(scalar_value(w.get("logit_bias", {1}))) {}
};

NativeModel build(const loading::ModelDirectory& directory, const loading::ModelConfig& model_config,
                  const NativeOptions& options) {
  const SiglipConfig config = SiglipConfig::from(model_config);
  TwoTowerPlan plan = plan_two_tower(directory, options, "SigLIP", config.vision, config.text, config.projection_size);
  plan.text.normalize = true;
  const auto tok = kit::open_tokenizer(plan.inputs.tokenizer_file, plan.inputs.tokenizer_options);
  plan.text.pad_to_max_length_with = kit::pad_token_id(plan.inputs.layout.tokenizer_dir, *tok, config.pad_token_id);
  NativeModel model;
  const double weight_bytes = kit::measure_weights(
      plan.inputs.checkpoint, plan.inputs.dtype,
      [&](const nn::Weights& w) { SiglipModel(config, w, at::Device(at::kMeta)); }, model.warnings);
  fill_two_tower_spec(model, plan, config.vision, config.text, weight_bytes, options,
                      [config](const TwoTowerPlan& p, const std::string& device) {
                        const at::Device dev(device);
                        auto w = nn::Weights::open(loading::Checkpoint::open(p.inputs.layout.model_dir),
                                                   p.inputs.dtype, dev);
                        SiglipModel m(config, w, dev);
                        auto pooler = std::make_shared<TokenPooler>(TokenPick::kLast, 0, m.head_weight, m.head_bias);
                        capabilities::ContrastiveHead head{std::exp(m.logit_scale), m.logit_bias, true};
                        return make_two_tower(p, std::make_unique<SiglipVision>(std::move(m.vision)),
                                              std::make_unique<TextTowerBackbone>(std::move(m.text), /*causal=*/false, dev), pooler, head);
                      });
  return model;
}

}  // namespace

Family family() {
  return Family{"siglip",
                {capabilities::ImageEmbedding::kName, capabilities::TextEmbedding::kName},
                kit::serves_model_types(kModelTypes, "siglip"),
                build,
                two_tower_options()};
}

void register_probes() {
  // The image and text features, as transformers' get_image_features /
  // get_text_features give them (input_ids already padded as the processor pads).
  nn::register_probe("siglip.features", [](const nn::ProbeInput& in) {
    const kit::ProbedModel m = kit::open_probed_model(in);
    const SiglipConfig config = SiglipConfig::from(m.config);
    SiglipModel model(config, m.weights, at::kCPU);
    const TokenPooler pooler(TokenPick::kLast, 0, model.head_weight, model.head_bias);
    return two_tower_probe(in, model.vision, TextTowerBackbone(model.text, false, at::kCPU), pooler);
  });
}

}  // namespace mpool::models::siglip
