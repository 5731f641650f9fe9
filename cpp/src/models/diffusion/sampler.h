#pragma once
// The flow-matching Euler loop every text-to-image family runs (SD3, FLUX):
// the settings both check the same way, the starting latents (seeded noise as
// torch's CPU generator makes it, given latents, or img2img's noised image), and
// the steps with their previews, progress and cancellation. A family supplies
// only its velocity: what its transformer predicts for the latents at a step.
#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <vector>

#include "models/diffusion/latent_space.h"
#include "mpool/capabilities/interfaces.h"
#include "mpool/nn/flow_match.h"

namespace mpool::models::diffusion {

/// What the model's sizes allow: width and height multiples of `size_multiple`
/// in [size_multiple, max_side], at least one step, finite guidance >= 0,
/// strength in [0, 1], max_sequence_length in [1, `max_sequence_length`],
/// latents exclusive with init_image, finite, and of shape (1,
/// `latent_channels`, height / latent_scale, width / latent_scale). InvalidInput
/// names the setting.
void check_common_settings(const capabilities::ImageConfig& c, int64_t size_multiple, int64_t max_side,
                           int64_t max_sequence_length, int64_t latent_channels, int64_t latent_scale);

/// One run's schedule and where it starts.
struct Run {
  nn::FlowMatchSchedule schedule;
  int64_t start = 0;  ///< img2img: the first step that runs
  at::Tensor latents;  ///< (1, channels, h, w) float32 on the CPU
};

/// The run's seeded generator: torch's CPU generator, so a seed gives the
/// latents torch.Generator().manual_seed(seed) gives in diffusers, on any device.
at::Generator seeded_generator(const capabilities::ImageConfig& c);

/// The starting latents of shape `shape` (1, channels, h, w): img2img's encoded
/// and noised init_image (noise at the schedule's first running level),
/// `given` (the caller's latents, already in this shape), or noise from `gen`.
Run start_run(const capabilities::ImageConfig& c, nn::FlowMatchSchedule schedule, std::vector<int64_t> shape,
              const std::optional<at::Tensor>& given, const LatentSpace& space, at::Generator& gen);

/// The velocity at schedule index `i` (the j-th of the run's steps) for
/// latents (1, channels, h, w) float32 on the CPU; any dtype or device back.
using Velocity = std::function<at::Tensor(const at::Tensor& latents, size_t i, int64_t j, int64_t total)>;

/// Steps the run to the end: each step adds (sigma[i + 1] - sigma[i]) x
/// velocity, reports progress with a preview of the clean-image estimate
/// (latents - sigma x velocity) when config.previews, and stops with Cancelled
/// when the sink returns false or the request is stopped. Returns the image.
capabilities::Image denoise(Run run, const Velocity& velocity, const capabilities::ImageConfig& c,
                            const LatentSpace& space, const capabilities::ProgressSink& progress,
                            capabilities::RequestContext& ctx);

}  // namespace mpool::models::diffusion
