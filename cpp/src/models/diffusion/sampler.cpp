#include "models/diffusion/sampler.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <random>
#include <string>
#include <utility>

#include "mpool/base/error.h"

namespace mpool::models::diffusion {

namespace cap = capabilities;

void check_common_settings(const cap::ImageConfig& c, int64_t m, int64_t max, int64_t max_sequence_length,
                           int64_t latent_channels, int64_t latent_scale) {
  for (auto [name, side] : {std::pair<const char*, int64_t>{"width", c.width}, {"height", c.height}})
    check(side >= m && side <= max && side % m == 0, ErrorCode::kInvalidInput,
          std::string(name) + " must be a multiple of " + std::to_string(m) + " in [" + std::to_string(m) + ", " +
              std::to_string(max) + "] for this model, got " + std::to_string(side));
  check(c.steps >= 1, ErrorCode::kInvalidInput, "steps must be at least 1, got " + std::to_string(c.steps));
  check(std::isfinite(c.guidance_scale) && c.guidance_scale >= 0, ErrorCode::kInvalidInput,
        "guidance_scale must be a finite number >= 0");
  check(std::isfinite(c.strength) && c.strength >= 0 && c.strength <= 1, ErrorCode::kInvalidInput,
        "strength must be in [0, 1]");
  if (c.max_sequence_length)
    check(*c.max_sequence_length >= 1 && *c.max_sequence_length <= max_sequence_length, ErrorCode::kInvalidInput,
          "max_sequence_length must be in [1, " + std::to_string(max_sequence_length) + "], got " +
              std::to_string(*c.max_sequence_length));
  check(!(c.latents && c.init_image), ErrorCode::kInvalidInput,
        "latents and init_image are exclusive: img2img makes its latents from the image");
  if (c.latents) {
    const std::vector<int64_t> expected{1, latent_channels, c.height / latent_scale, c.width / latent_scale};
    check(c.latents->sizes().vec() == expected, ErrorCode::kInvalidInput,
          "latents must have shape " + std::string(c10::str(at::IntArrayRef(expected))) + " for a " +
              std::to_string(c.width) + "x" + std::to_string(c.height) + " image, got " +
              std::string(c10::str(c.latents->sizes())));
    check(at::isfinite(*c.latents).all().item<bool>(), ErrorCode::kInvalidInput, "latents must be finite");
  }
}

at::Generator seeded_generator(const cap::ImageConfig& c) {
  const uint64_t seed = c.seed ? *c.seed : std::random_device{}();
  return at::make_generator<at::CPUGeneratorImpl>(seed);
}

Run start_run(const cap::ImageConfig& c, nn::FlowMatchSchedule schedule, std::vector<int64_t> shape,
              const std::optional<at::Tensor>& given, const LatentSpace& space, at::Generator& gen) {
  Run run;
  run.schedule = std::move(schedule);
  const auto noise = [&](at::IntArrayRef sizes) { return at::randn(sizes, gen, at::TensorOptions().dtype(at::kFloat)); };
  if (c.init_image) {
    run.start = nn::img2img_start_step(c.steps, c.strength);
    const at::Tensor init = space.encode(*c.init_image, c.width, c.height, gen);
    const float sigma = run.schedule.sigmas[static_cast<size_t>(run.start)];
    run.latents = sigma * noise(init.sizes()) + (1.0f - sigma) * init;
  } else if (given) {
    run.latents = given->to(at::kFloat).cpu().contiguous();
  } else {
    run.latents = noise(shape);
  }
  return run;
}

cap::Image denoise(Run run, const Velocity& velocity, const cap::ImageConfig& c, const LatentSpace& space,
                   const cap::ProgressSink& progress, cap::RequestContext& ctx) {
  const int64_t total = run.schedule.steps() - run.start;
  at::Tensor latents = std::move(run.latents);
  for (int64_t j = 0; j < total; ++j) {
    ctx.throw_if_stopped();
    const size_t i = static_cast<size_t>(run.start + j);
    const at::Tensor v = velocity(latents, i, j, total).to(at::kFloat).cpu();
    const float sigma = run.schedule.sigmas[i], next = run.schedule.sigmas[i + 1];
    std::optional<cap::Image> shown;
    if (c.previews) shown = space.preview(latents - sigma * v);  // the clean-image estimate x0
    latents = latents + (next - sigma) * v;
    if (!progress(cap::ImageProgress{j + 1, total, std::move(shown), 0.0}))
      throw Error(ErrorCode::kCancelled, "image generation stopped");
  }
  ctx.throw_if_stopped();
  return LatentSpace::output(space.decode(latents), c.float_output);
}

}  // namespace mpool::models::diffusion
