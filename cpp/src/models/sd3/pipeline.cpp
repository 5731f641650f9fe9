#include "models/sd3/pipeline.h"

#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "models/sd3/single_file.h"
#include "mpool/base/error.h"
#include "mpool/imageio/preprocess.h"
#include "mpool/models/image_text_embedder.h"

namespace mpool::models::sd3 {

nn::Weights open_weights(const WeightSource& source, at::ScalarType dtype, at::Device device) {
  return nn::Weights::open(loading::Checkpoint::open(source.path), dtype, device, source.prefix);
}

nn::Weights mmdit_view(const Sd3Plan& plan, const nn::Weights& w) {
  return plan.original_mmdit_names ? w.renamed(mmdit_original_names(plan.mmdit)) : w;
}

namespace {

namespace cap = capabilities;

std::unique_ptr<tokenizer::Tokenizer> open_tokenizer(const PromptTokenizer& how) {
  return kit::open_tokenizer(how.file);
}

// A (1, 3, H, W) float image in [-1, 1] -> HWC uint8, as diffusers' numpy_to_pil rounds.
at::Tensor to_uint8(const at::Tensor& image) {
  return (image[0].permute({1, 2, 0}).to(at::kFloat).cpu() / 2 + 0.5).clamp(0, 1).mul(255).round().to(at::kByte).contiguous();
}

void check_settings(const Sd3Plan& plan, const cap::ImageConfig& c) {
  const int64_t m = plan.size_multiple(), max = plan.max_side();
  for (auto [name, side] : {std::pair<const char*, int64_t>{"width", c.width}, {"height", c.height}})
    check(side >= m && side <= max && side % m == 0, ErrorCode::kInvalidInput,
          std::string(name) + " must be a multiple of " + std::to_string(m) + " in [" + std::to_string(m) + ", " +
              std::to_string(max) + "] for this model, got " + std::to_string(side));
  check(c.steps >= 1, ErrorCode::kInvalidInput, "steps must be at least 1, got " + std::to_string(c.steps));
  check(std::isfinite(c.guidance_scale) && c.guidance_scale >= 0, ErrorCode::kInvalidInput,
        "guidance_scale must be a finite number >= 0");
  check(std::isfinite(c.strength) && c.strength >= 0 && c.strength <= 1, ErrorCode::kInvalidInput,
        "strength must be in [0, 1]");
  for (int64_t layer : c.skip_layers)
    check(layer >= 0 && layer < plan.mmdit.num_layers, ErrorCode::kInvalidInput,
          "skip_layer_guidance: block " + std::to_string(layer) + " is not one of the transformer's " +
              std::to_string(plan.mmdit.num_layers));
  check(c.skip_layers.empty() || c.guidance_scale > 1, ErrorCode::kInvalidInput,
        "skip_layer_guidance works inside classifier-free guidance: it needs guidance_scale > 1");
  check(std::isfinite(c.skip_layer_scale) && std::isfinite(c.skip_layer_start) && std::isfinite(c.skip_layer_stop),
        ErrorCode::kInvalidInput, "skip-layer guidance settings must be finite");
  if (c.max_sequence_length)
    check(*c.max_sequence_length >= 1 && *c.max_sequence_length <= 512, ErrorCode::kInvalidInput,
          "max_sequence_length must be in [1, 512], got " + std::to_string(*c.max_sequence_length));
  check(!(c.latents && c.init_image), ErrorCode::kInvalidInput,
        "latents and init_image are exclusive: img2img makes its latents from the image");
  if (c.latents) {
    const std::vector<int64_t> expected{1, plan.mmdit.in_channels, c.height / plan.vae.spatial_scale_factor(),
                                        c.width / plan.vae.spatial_scale_factor()};
    check(c.latents->sizes().vec() == expected, ErrorCode::kInvalidInput,
          "latents must have shape " + std::string(c10::str(at::IntArrayRef(expected))) + " for a " +
              std::to_string(c.width) + "x" + std::to_string(c.height) + " image, got " +
              std::string(c10::str(c.latents->sizes())));
    check(at::isfinite(*c.latents).all().item<bool>(), ErrorCode::kInvalidInput, "latents must be finite");
  }
}

}  // namespace

Sd3Pipeline::Sd3Pipeline(const Sd3Plan& plan, at::Device device)
    : plan_(plan), device_(device), text_device_(plan.text_encoders_on_cpu ? at::Device(at::kCPU) : device) {
  c10::InferenceMode guard;
  clip_l_tok_ = open_tokenizer(plan.clip_l_tokenizer);
  clip_g_tok_ = open_tokenizer(plan.clip_g_tokenizer);
  clip_l_ = clip::ClipTextEncoder::load(open_weights(plan.clip_l_weights, plan.text_dtype, text_device_), plan.clip_l,
                                        plan.clip_l_projected);
  clip_g_ = clip::ClipTextEncoder::load(open_weights(plan.clip_g_weights, plan.text_dtype, text_device_), plan.clip_g,
                                        true);
  if (plan.t5_weights && plan.t5 && plan.t5_tokenizer) {
    t5_tok_ = open_tokenizer(*plan.t5_tokenizer);
    t5_ = t5::T5Encoder::load(t5::T5Encoder::root(open_weights(*plan.t5_weights, plan.text_dtype, text_device_)),
                              *plan.t5);
  }
  mmdit_ = MMDiT::load(mmdit_view(plan, open_weights(plan.transformer_weights, plan.dtype, device_)), plan.mmdit);
  vae_ = vae::AutoencoderKL::load(open_weights(plan.vae_weights, plan.vae_dtype(), device_), plan.vae);
  if (plan.preview_dir && plan.preview)
    preview_vae_ = vae::AutoencoderTiny::load(open_weights(WeightSource{*plan.preview_dir, ""}, plan.dtype, device_),
                                              *plan.preview);
  else
    fit_preview_projection();
}

at::Tensor Sd3Pipeline::tokenize(tokenizer::Tokenizer& tok, const PromptTokenizer& how,
                                 const std::vector<std::string>& texts, int64_t length) const {
  // Truncated by the tokenizer as transformers does (the post-processor's
  // specials stay), then padded to `length`. The tokenizer is this replica's own.
  tokenizer::TruncationParams truncation;
  truncation.max_length = static_cast<size_t>(length);
  tok.set_truncation(truncation);
  const size_t len = static_cast<size_t>(length);
  std::vector<int64_t> ids(texts.size() * len, how.pad_id);
  for (size_t i = 0; i < texts.size(); ++i) {
    const tokenizer::Encoding e = tok.encode(texts[i]);
    std::copy_n(e.ids.begin(), std::min(e.ids.size(), len), ids.begin() + static_cast<std::ptrdiff_t>(i * len));
  }
  return at::tensor(ids, at::kLong).view({static_cast<int64_t>(texts.size()), length}).to(text_device_);
}

Sd3Pipeline::Conditioning Sd3Pipeline::encode_prompts(const std::vector<std::string>& prompts,
                                                      int64_t max_sequence_length) const {
  const auto l = clip_l_.encode(tokenize(*clip_l_tok_, plan_.clip_l_tokenizer, prompts, plan_.clip_l_tokenizer.max_length));
  const auto g = clip_g_.encode(tokenize(*clip_g_tok_, plan_.clip_g_tokenizer, prompts, plan_.clip_g_tokenizer.max_length));
  const int64_t b = static_cast<int64_t>(prompts.size());
  at::Tensor t5;
  if (t5_) {
    t5 = t5_->forward(tokenize(*t5_tok_, *plan_.t5_tokenizer, prompts, max_sequence_length));
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

at::Tensor Sd3Pipeline::init_latents(const cap::Image& image, int64_t width, int64_t height, at::Generator& gen) const {
  at::Tensor rgb = rgb8(image, "init_image");
  if (rgb.size(0) != height || rgb.size(1) != width) {
    // Resized as diffusers' VaeImageProcessor does (PIL, Lanczos).
    const at::Tensor src = rgb.contiguous();
    imageio::Rgb8 out = imageio::resize(src.data_ptr<uint8_t>(), src.size(0), src.size(1), height, width,
                                        imageio::Resample::kLanczos);
    rgb = at::from_blob(out.pixels.data(), {height, width, 3}, at::kByte).clone();
  }
  const at::Tensor pixels =
      (rgb.permute({2, 0, 1}).unsqueeze(0).to(at::kFloat) / 255.0 * 2.0 - 1.0).to(device_, plan_.vae_dtype());
  const vae::AutoencoderKL::Moments m = vae_.encode(pixels);
  // A sample of the latent distribution (diffusers' default), then the scaling.
  const at::Tensor noise = at::randn(m.mean.sizes(), gen, at::TensorOptions().dtype(at::kFloat));
  const at::Tensor sample = m.mean.to(at::kFloat).cpu() + at::exp(0.5 * m.logvar.to(at::kFloat).cpu()) * noise;
  return (sample - plan_.vae.shift()) * plan_.vae.scaling_factor;
}

at::Tensor Sd3Pipeline::decode(const at::Tensor& latents) const {
  return vae_.decode((latents / plan_.vae.scaling_factor + plan_.vae.shift()).to(device_, plan_.vae_dtype()));
}

void Sd3Pipeline::fit_preview_projection() {
  // Smooth random colour fields, encoded by the VAE: a least-squares map from
  // each latent pixel (plus a constant) to the mean colour of the pixels it covers.
  const int64_t f = plan_.vae.spatial_scale_factor(), side = 8 * f, k = 6;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(0);
  const at::Tensor coarse = at::rand({k, 3, 4, 4}, gen) * 2 - 1;
  const at::Tensor images = at::upsample_bilinear2d(coarse, {side, side}, false);
  const at::Tensor z = ((vae_.encode(images.to(device_, plan_.vae_dtype())).mean.to(at::kFloat).cpu() - plan_.vae.shift()) *
                        plan_.vae.scaling_factor);
  const at::Tensor target = at::avg_pool2d(images, {f, f});
  const int64_t c = z.size(1);
  const at::Tensor x = at::cat({z.permute({0, 2, 3, 1}).reshape({-1, c}), at::ones({z.numel() / c, 1})}, 1);
  const at::Tensor y = target.permute({0, 2, 3, 1}).reshape({-1, 3});
  preview_projection_ = std::get<0>(at::linalg_lstsq(x, y, std::nullopt, "gelsd"));
}

std::optional<cap::Image> Sd3Pipeline::preview(const at::Tensor& estimate) const {
  if (preview_vae_) {
    const auto& t = preview_vae_->config();
    return to_uint8(preview_vae_->decode((estimate / t.scaling_factor + t.shift_factor).to(device_, plan_.dtype)));
  }
  const at::Tensor z = estimate[0].to(at::kFloat).cpu().permute({1, 2, 0});
  const int64_t c = z.size(2);
  const at::Tensor rgb = at::addmm(preview_projection_[c], z.reshape({-1, c}), preview_projection_.narrow(0, 0, c));
  return (rgb.view({z.size(0), z.size(1), 3}) / 2 + 0.5).clamp(0, 1).mul(255).round().to(at::kByte).contiguous();
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

  const int64_t f = plan_.vae.spatial_scale_factor();
  const int64_t h = config.height / f, w = config.width / f;
  std::optional<double> mu;
  if (plan_.scheduler.use_dynamic_shifting)
    mu = plan_.scheduler.mu_for((h / plan_.mmdit.patch_size) * (w / plan_.mmdit.patch_size));
  const nn::FlowMatchSchedule schedule = plan_.scheduler.schedule(config.steps, mu);
  const uint64_t seed = config.seed ? *config.seed : std::random_device{}();
  // Noise comes from torch's CPU generator: the same seed gives the same
  // latents as torch.Generator().manual_seed(seed) in diffusers, on any device.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  int64_t start = 0;
  at::Tensor latents;  // float32 on the CPU between steps
  if (config.init_image) {
    start = nn::img2img_start_step(config.steps, config.strength);
    const at::Tensor init = init_latents(*config.init_image, config.width, config.height, gen);
    const at::Tensor noise = at::randn(init.sizes(), gen, at::TensorOptions().dtype(at::kFloat));
    const float sigma = schedule.sigmas[static_cast<size_t>(start)];
    latents = sigma * noise + (1.0f - sigma) * init;
  } else if (config.latents) {
    latents = config.latents->to(at::kFloat).cpu();
  } else {
    latents = at::randn({1, plan_.mmdit.in_channels, h, w}, gen, at::TensorOptions().dtype(at::kFloat));
  }

  const int64_t total = schedule.steps() - start;
  const at::Tensor positive_context = cfg ? cond.context.narrow(0, 1, 1) : cond.context;
  const at::Tensor positive_pooled = cfg ? cond.pooled.narrow(0, 1, 1) : cond.pooled;
  for (int64_t j = 0; j < total; ++j) {
    ctx.throw_if_stopped();
    const size_t i = static_cast<size_t>(start + j);
    const at::Tensor x = latents.to(device_, plan_.dtype);
    const at::Tensor input = cfg ? at::cat({x, x}) : x;
    const at::Tensor t = at::full({input.size(0)}, schedule.timesteps[i], at::TensorOptions().device(device_));
    at::Tensor v = mmdit_(input, t, cond.context, cond.pooled).to(at::kFloat);
    if (cfg) {
      const at::Tensor uncond = v.narrow(0, 0, 1), text = v.narrow(0, 1, 1);
      v = uncond + config.guidance_scale * (text - uncond);
      const double n = static_cast<double>(total);
      if (!config.skip_layers.empty() && static_cast<double>(j) > n * config.skip_layer_start &&
          static_cast<double>(j) < n * config.skip_layer_stop) {
        const at::Tensor skipped =
            mmdit_(x, t.narrow(0, 0, 1), positive_context, positive_pooled, config.skip_layers).to(at::kFloat);
        v = v + (text - skipped) * config.skip_layer_scale;
      }
    }
    v = v.cpu();
    const float sigma = schedule.sigmas[i], next = schedule.sigmas[i + 1];
    std::optional<cap::Image> shown;
    if (config.previews) shown = preview(latents - sigma * v);  // the clean-image estimate x0
    latents = latents + (next - sigma) * v;
    if (!progress(cap::ImageProgress{j + 1, total, std::move(shown), 0.0}))
      throw Error(ErrorCode::kCancelled, "image generation stopped");
  }
  ctx.throw_if_stopped();
  const at::Tensor image = decode(latents);
  if (config.float_output)
    return (image[0].permute({1, 2, 0}).to(at::kFloat).cpu() / 2 + 0.5).clamp(0, 1).contiguous();
  return to_uint8(image);
}

}  // namespace mpool::models::sd3
