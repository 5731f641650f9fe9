#include "models/sd3/pipeline.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>

#include "models/diffusion/sampler.h"
#include "models/sd3/single_file.h"
#include "mpool/base/error.h"
#include "mpool/models/kit.h"

namespace mpool::models::sd3 {

nn::Weights mmdit_view(const Sd3Plan& plan, const nn::Weights& w) {
  return plan.original_mmdit_names ? w.renamed(mmdit_original_names(plan.mmdit)) : w;
}

namespace {

namespace cap = capabilities;
using diffusion::open_weights;

// What SD3 takes beyond the settings every flow-matching model checks.
void check_settings(const Sd3Plan& plan, const cap::ImageConfig& c) {
  diffusion::check_common_settings(c, plan.size_multiple(), plan.max_side(), 512, plan.mmdit.in_channels,
                                   plan.latent.scale());
  for (int64_t layer : c.skip_layers)
    check(layer >= 0 && layer < plan.mmdit.num_layers, ErrorCode::kInvalidInput,
          "skip_layer_guidance: block " + std::to_string(layer) + " is not one of the transformer's " +
              std::to_string(plan.mmdit.num_layers));
  check(c.skip_layers.empty() || c.guidance_scale > 1, ErrorCode::kInvalidInput,
        "skip_layer_guidance works inside classifier-free guidance: it needs guidance_scale > 1");
  check(c.true_cfg_scale == 1.0, ErrorCode::kInvalidInput,
        "true_cfg_scale is two-pass guidance for guidance-distilled models (FLUX); Stable Diffusion 3 guides with "
        "guidance_scale > 1 and negative_prompt");
  check(std::isfinite(c.skip_layer_scale) && std::isfinite(c.skip_layer_start) && std::isfinite(c.skip_layer_stop),
        ErrorCode::kInvalidInput, "skip-layer guidance settings must be finite");
}

}  // namespace

Sd3Pipeline::Sd3Pipeline(const Sd3Plan& plan, at::Device device)
    : plan_(plan), device_(device), text_device_(plan.text_encoders_on_cpu ? at::Device(at::kCPU) : device) {
  c10::InferenceMode guard;
  clip_l_tok_ = kit::open_tokenizer(plan.clip_l_tokenizer.file);
  clip_g_tok_ = kit::open_tokenizer(plan.clip_g_tokenizer.file);
  clip_l_ = clip::ClipTextEncoder::load(open_weights(plan.clip_l_weights, plan.text_dtype, text_device_), plan.clip_l,
                                        plan.clip_l_projected);
  clip_g_ = clip::ClipTextEncoder::load(open_weights(plan.clip_g_weights, plan.text_dtype, text_device_), plan.clip_g,
                                        true);
  if (plan.t5_weights && plan.t5 && plan.t5_tokenizer) {
    t5_tok_ = kit::open_tokenizer(plan.t5_tokenizer->file);
    t5_ = t5::T5Encoder::load(t5::T5Encoder::root(open_weights(*plan.t5_weights, plan.text_dtype, text_device_)),
                              *plan.t5);
  }
  mmdit_ = MMDiT::load(mmdit_view(plan, open_weights(plan.transformer_weights, plan.dtype, device_)), plan.mmdit);
  latent_ = diffusion::LatentSpace(plan.latent, device_);
}

Sd3Pipeline::Conditioning Sd3Pipeline::encode_prompts(const std::vector<std::string>& prompts,
                                                      int64_t max_sequence_length) const {
  const auto ids = [&](tokenizer::Tokenizer& tok, const PromptTokenizer& how, int64_t length) {
    return diffusion::tokenize(tok, how, prompts, length, text_device_);
  };
  const auto l = clip_l_.encode(ids(*clip_l_tok_, plan_.clip_l_tokenizer, plan_.clip_l_tokenizer.max_length));
  const auto g = clip_g_.encode(ids(*clip_g_tok_, plan_.clip_g_tokenizer, plan_.clip_g_tokenizer.max_length));
  const int64_t b = static_cast<int64_t>(prompts.size());
  at::Tensor t5;
  if (t5_) {
    t5 = t5_->forward(ids(*t5_tok_, *plan_.t5_tokenizer, max_sequence_length));
  } else {
    // No T5 (dropped to save memory): zeros in its place, as diffusers does.
    t5 = at::zeros({b, max_sequence_length, plan_.mmdit.joint_attention_dim},
                   at::TensorOptions().dtype(plan_.text_dtype).device(text_device_));
  }
  at::Tensor clip = at::cat({l.hidden, g.hidden}, -1);
  check(clip.size(-1) <= t5.size(-1), ErrorCode::kInvalidInput,
        "the CLIP encoders' states (" + std::to_string(clip.size(-1)) + " wide) are wider than the context (" +
            std::to_string(t5.size(-1)) + ")");
  clip = at::constant_pad_nd(clip, {0, t5.size(-1) - clip.size(-1)});
  const at::Tensor context = at::cat({clip, t5}, 1).to(device_, plan_.dtype);
  const at::Tensor pooled = at::cat({l.pooled, g.pooled}, -1).to(device_, plan_.dtype);
  return {context, pooled};
}

cap::Image Sd3Pipeline::generate_image(const std::string& prompt, const cap::ImageConfig& config,
                                       const cap::ProgressSink& progress, cap::RequestContext& ctx) {
  check_settings(plan_, config);
  c10::InferenceMode guard;
  const bool cfg = config.guidance_scale > 1;
  const int64_t max_sequence_length = config.max_sequence_length.value_or(plan_.default_max_sequence_length);
  std::vector<std::string> prompts{prompt};
  if (cfg) prompts.insert(prompts.begin(), config.negative_prompt.value_or(""));
  const Conditioning cond = encode_prompts(prompts, max_sequence_length);
  ctx.throw_if_stopped();

  const int64_t f = plan_.latent.scale();
  const int64_t h = config.height / f, w = config.width / f;
  std::optional<double> mu;
  if (plan_.scheduler.use_dynamic_shifting)
    mu = plan_.scheduler.mu_for((h / plan_.mmdit.patch_size) * (w / plan_.mmdit.patch_size));
  at::Generator gen = diffusion::seeded_generator(config);
  diffusion::Run run = diffusion::start_run(config, plan_.scheduler.schedule(config.steps, mu),
                                            {1, plan_.mmdit.in_channels, h, w}, config.latents, latent_, gen);

  const at::Tensor positive_context = cfg ? cond.context.narrow(0, 1, 1) : cond.context;
  const at::Tensor positive_pooled = cfg ? cond.pooled.narrow(0, 1, 1) : cond.pooled;
  const std::vector<float> timesteps = run.schedule.timesteps;
  const auto velocity = [&](const at::Tensor& latents, size_t i, int64_t j, int64_t total) {
    const at::Tensor x = latents.to(device_, plan_.dtype);
    const at::Tensor input = cfg ? at::cat({x, x}) : x;
    const at::Tensor t = at::full({input.size(0)}, timesteps[i], at::TensorOptions().device(device_));
    at::Tensor v = mmdit_(input, t, cond.context, cond.pooled).to(at::kFloat);
    if (!cfg) return v;
    const at::Tensor uncond = v.narrow(0, 0, 1), text = v.narrow(0, 1, 1);
    v = uncond + config.guidance_scale * (text - uncond);
    const double n = static_cast<double>(total);
    if (!config.skip_layers.empty() && static_cast<double>(j) > n * config.skip_layer_start &&
        static_cast<double>(j) < n * config.skip_layer_stop) {
      const at::Tensor skipped =
          mmdit_(x, t.narrow(0, 0, 1), positive_context, positive_pooled, config.skip_layers).to(at::kFloat);
      v = v + (text - skipped) * config.skip_layer_scale;
    }
    return v;
  };
  return diffusion::denoise(std::move(run), velocity, config, latent_, progress, ctx);
}

}  // namespace mpool::models::sd3
