#include "models/flux/pipeline.h"

#include <c10/core/InferenceMode.h>

#include <cmath>

#include "models/diffusion/sampler.h"
#include "models/flux/single_file.h"
#include "mpool/base/error.h"
#include "mpool/models/kit.h"

namespace mpool::models::flux {

namespace cap = capabilities;
using diffusion::open_weights;

nn::Weights transformer_view(const FluxPlan& plan, const nn::Weights& w) {
  return plan.original_names ? w.renamed(flux_original_names(plan.transformer)) : w;
}

at::Tensor pack_latents(const at::Tensor& x) {
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  return x.view({b, c, h / kPack, kPack, w / kPack, kPack})
      .permute({0, 2, 4, 1, 3, 5})
      .reshape({b, (h / kPack) * (w / kPack), c * kPack * kPack});
}

at::Tensor unpack_latents(const at::Tensor& tokens, int64_t h, int64_t w) {
  const int64_t b = tokens.size(0), c = tokens.size(2) / (kPack * kPack);
  return tokens.view({b, h / kPack, w / kPack, c, kPack, kPack}).permute({0, 3, 1, 4, 2, 5}).reshape({b, c, h, w});
}

at::Tensor image_ids(int64_t rows, int64_t cols) {
  const at::Tensor r = at::arange(rows, at::kFloat).view({rows, 1}).expand({rows, cols});
  const at::Tensor c = at::arange(cols, at::kFloat).view({1, cols}).expand({rows, cols});
  return at::stack({at::zeros({rows, cols}), r, c}, -1).reshape({rows * cols, 3});
}

namespace {

// What FLUX takes beyond the settings every flow-matching model checks.
void check_settings(const FluxPlan& plan, const cap::ImageConfig& c) {
  // Latents arrive unpacked (Python unpacks diffusers' packed form).
  diffusion::check_common_settings(c, plan.size_multiple(), kMaxSide, 512, plan.latent_channels(), plan.latent.scale());
  check(c.skip_layers.empty(), ErrorCode::kInvalidInput,
        "skip_layer_guidance is Stable Diffusion 3.5's; FLUX has no skip-layer guidance");
  check(std::isfinite(c.true_cfg_scale) && c.true_cfg_scale >= 0, ErrorCode::kInvalidInput,
        "true_cfg_scale must be a finite number >= 0");
  check(plan.transformer.guidance_embeds || c.guidance_scale == 0, ErrorCode::kInvalidInput,
        "this FLUX model (schnell) has no guidance embedding: guidance_scale must be 0, got " +
            std::to_string(c.guidance_scale) + " (true_cfg_scale with a negative_prompt guides any model)");
}

}  // namespace

FluxPipeline::FluxPipeline(const FluxPlan& plan, at::Device device)
    : plan_(plan), device_(device), text_device_(plan.text_encoders_on_cpu ? at::Device(at::kCPU) : device) {
  c10::InferenceMode guard;
  clip_tok_ = kit::open_tokenizer(plan.clip_tokenizer.file);
  t5_tok_ = kit::open_tokenizer(plan.t5_tokenizer.file);
  clip_ = clip::ClipTextEncoder::load(open_weights(plan.clip_weights, plan.text_dtype, text_device_), plan.clip, false);
  t5_ = t5::T5Encoder::load(t5::T5Encoder::root(open_weights(plan.t5_weights, plan.text_dtype, text_device_)),
                            plan.t5);
  transformer_ = FluxTransformer::load(
      transformer_view(plan, open_weights(plan.transformer_weights, plan.dtype, device_)), plan.transformer);
  latent_ = diffusion::LatentSpace(plan.latent, device_);
}

FluxPipeline::Conditioning FluxPipeline::encode_prompts(const std::vector<std::string>& prompts,
                                                        int64_t max_sequence_length) const {
  // CLIP-L's pooled output (unprojected, as CLIPTextModel's pooler_output) and T5's last states.
  const at::Tensor clip_ids =
      diffusion::tokenize(*clip_tok_, plan_.clip_tokenizer, prompts, plan_.clip_tokenizer.max_length, text_device_);
  const at::Tensor pooled = clip_.encode(clip_ids).pooled;
  const at::Tensor t5_ids = diffusion::tokenize(*t5_tok_, plan_.t5_tokenizer, prompts, max_sequence_length, text_device_);
  const at::Tensor context = t5_.forward(t5_ids);
  return {context.to(device_, plan_.dtype), pooled.to(device_, plan_.dtype)};
}

cap::Image FluxPipeline::generate_image(const std::string& prompt, const cap::ImageConfig& config,
                                        const cap::ProgressSink& progress, cap::RequestContext& ctx) {
  check_settings(plan_, config);
  c10::InferenceMode guard;
  // Two-pass guidance as diffusers' true_cfg_scale: only with a negative prompt.
  const bool cfg = config.true_cfg_scale > 1 && config.negative_prompt.has_value();
  const int64_t max_sequence_length = config.max_sequence_length.value_or(plan_.default_max_sequence_length);
  std::vector<std::string> prompts{prompt};
  if (cfg) prompts.insert(prompts.begin(), *config.negative_prompt);
  const Conditioning cond = encode_prompts(prompts, max_sequence_length);
  ctx.throw_if_stopped();

  const int64_t f = plan_.latent.scale();
  const int64_t h = config.height / f, w = config.width / f;
  const double mu = plan_.scheduler.mu_for((h / kPack) * (w / kPack));
  const std::vector<double> levels = nn::linspace(1.0, 1.0 / static_cast<double>(config.steps), config.steps);
  at::Generator gen = diffusion::seeded_generator(config);
  diffusion::Run run = diffusion::start_run(config, plan_.scheduler.schedule_from_sigmas(levels, mu),
                                            {1, plan_.latent_channels(), h, w}, config.latents, latent_, gen);

  const int64_t b = cond.context.size(0);
  const at::Tensor img_ids = image_ids(h / kPack, w / kPack).to(device_);
  const at::Tensor txt_ids = at::zeros({cond.context.size(1), 3}, at::TensorOptions().device(device_));
  const auto on_device = at::TensorOptions().dtype(at::kFloat).device(device_);
  at::Tensor guidance;
  if (plan_.transformer.guidance_embeds) guidance = at::full({b}, config.guidance_scale, on_device);
  const std::vector<float> timesteps = run.schedule.timesteps;
  const auto velocity = [&](const at::Tensor& latents, size_t i, int64_t, int64_t) {
    const at::Tensor x = pack_latents(latents).to(device_, plan_.dtype);
    const at::Tensor input = cfg ? at::cat({x, x}) : x;
    // The pipeline hands the transformer t / 1000, computed in float32 as diffusers does.
    const at::Tensor t = at::full({b}, timesteps[i], on_device) / 1000;
    at::Tensor v = transformer_(input, t, guidance, cond.pooled, cond.context, img_ids, txt_ids).to(at::kFloat);
    if (cfg) {
      const at::Tensor negative = v.narrow(0, 0, 1), positive = v.narrow(0, 1, 1);
      v = negative + config.true_cfg_scale * (positive - negative);
    }
    return unpack_latents(v, h, w);
  };
  return diffusion::denoise(std::move(run), velocity, config, latent_, progress, ctx);
}

}  // namespace mpool::models::flux
