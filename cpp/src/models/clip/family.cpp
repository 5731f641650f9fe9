// The CLIP family as a pool model: recognizes CLIPModel directories and builds
// image_embedding + text_embedding specs whose replicas run both towers under
// the kit's ImageTextEmbedder.
#include <c10/core/InferenceMode.h>

#include <cmath>

#include "models/clip/clip.h"
#include "models/clip/text_encoder.h"
#include "mpool/models/image_text_embedder.h"
#include "mpool/base/error.h"
#include "mpool/models/families.h"
#include "mpool/models/kit.h"
#include "mpool/nn/probe.h"

namespace mpool::models::clip {
namespace {

namespace fs = std::filesystem;

// Everything a replica loads, from one directory.
struct ClipModel {
  ClipVision vision;
  nn::TextTransformer text;
  at::Tensor text_projection;
  double logit_scale;

  ClipModel(const ClipConfig& c, const nn::Weights& checkpoint, at::Device device)
      : ClipModel(c, checkpoint.find_prefix({"", "model."}, "vision_model.embeddings.class_embedding", "a CLIP model"),
                  device, 0) {}

 private:
  ClipModel(const ClipConfig& c, const nn::Weights& w, at::Device device, int)
      : vision(c.vision, w.sub("vision_model"), w.sub("visual_projection"), c.projection_dim, device),
        text(nn::TextTransformer::load(w.sub("text_model"), c.text)),
        text_projection(w.get("text_projection.weight", {c.projection_dim, c.text.hidden_size})),
        logit_scale(scalar_value(w.get("logit_scale", {}))) {}
};

NativeModel build(const loading::ModelDirectory& directory, const loading::ModelConfig& model_config,
                  const NativeOptions& options) {
  const ClipConfig config = ClipConfig::from(model_config);
  TwoTowerPlan plan = plan_two_tower(directory, options, "CLIP", config.vision, config.text, config.projection_dim);
  plan.text.normalize = true;
  NativeModel model;
  const double weight_bytes = kit::measure_weights(
      plan.inputs.checkpoint, plan.inputs.dtype,
      [&](const nn::Weights& w) { ClipModel(config, w, at::Device(at::kMeta)); }, model.warnings);
  const TokenPick pick = config.pool_at_largest_id() ? TokenPick::kLargestId : TokenPick::kFirstId;
  const int64_t eos = config.eos_token_id;
  fill_two_tower_spec(model, plan, config.vision, config.text, weight_bytes, options,
                      [config, pick, eos](const TwoTowerPlan& p, const std::string& device) {
                        const at::Device dev(device);
                        auto w = nn::Weights::open(loading::Checkpoint::open(p.inputs.layout.model_dir),
                                                   p.inputs.dtype, dev);
                        ClipModel m(config, w, dev);
                        auto pooler = std::make_shared<TokenPooler>(pick, eos, m.text_projection, at::Tensor());
                        capabilities::ContrastiveHead head{std::exp(m.logit_scale), 0.0, false};
                        return make_two_tower(p, std::make_unique<ClipVision>(std::move(m.vision)),
                                              std::make_unique<TextTowerBackbone>(std::move(m.text), /*causal=*/true, dev), pooler, head);
                      });
  return model;
}

}  // namespace

Family family() {
  return Family{"clip",
                {capabilities::ImageEmbedding::kName, capabilities::TextEmbedding::kName},
                kit::serves_model_types(kModelTypes, "clip"),
                build,
                two_tower_options()};
}

void register_probes() {
  // The projected (unnormalized) image and text features, as transformers'
  // get_image_features / get_text_features give them.
  nn::register_probe("clip.features", [](const nn::ProbeInput& in) {
    const kit::ProbedModel m = kit::open_probed_model(in);
    const ClipConfig config = ClipConfig::from(m.config);
    ClipModel model(config, m.weights, at::kCPU);
    const TokenPooler pooler(config.pool_at_largest_id() ? TokenPick::kLargestId : TokenPick::kFirstId,
                             config.eos_token_id, model.text_projection, at::Tensor());
    return two_tower_probe(in, model.vision, TextTowerBackbone(model.text, true, at::kCPU), pooler);
  });
  // A text tower saved alone (CLIPTextModel / CLIPTextModelWithProjection, option
  // "projected"): transformers' hidden_states["hidden_index"] (default -2) and the
  // pooled end-of-text state, projected when "projected" (text_embeds) or not
  // (pooler_output).
  nn::register_probe("clip.text_encoder", [](const nn::ProbeInput& in) {
    const std::filesystem::path dir = in.get<std::string>("path");
    const ClipTextConfig config = ClipTextConfig::from(loading::load_json_object(dir / "config.json"));
    const nn::Weights w = nn::Weights::open(loading::Checkpoint::open(dir), at::kFloat, at::kCPU);
    const ClipTextEncoder encoder = ClipTextEncoder::load(w, config, in.get_or<bool>("projected", true));
    c10::InferenceMode guard;
    const auto out = encoder.encode(in.tensor("input_ids").to(at::kLong), in.get_or<int64_t>("hidden_index", -2));
    return nn::ProbeOutput{{"hidden", out.hidden}, {"pooled", out.pooled}};
  });
}

}  // namespace mpool::models::clip
