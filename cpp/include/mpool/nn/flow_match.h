#pragma once
// The flow-matching Euler sampler's schedule (diffusers'
// FlowMatchEulerDiscreteScheduler), shared by Stable Diffusion 3 and FLUX:
// which noise levels (sigmas) a run of n steps visits, with the scheduler
// config's static or resolution-dependent shift. Torch-free (mpool_nn_config):
// the arithmetic follows diffusers' float64-then-float32 order, so the same
// steps give the same sigmas bit for bit. Each step is then
//   latents += (sigma[i + 1] - sigma[i]) * velocity,
// and img2img noises its start as sigma * noise + (1 - sigma) * latents.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mpool/loading/json.h"

namespace mpool::nn {

/// The levels of one run: `sigmas` has steps + 1 entries (the last is 0, or 1
/// with invert_sigmas), `timesteps` (sigma x num_train_timesteps) one per step:
/// what the model is conditioned on.
struct FlowMatchSchedule {
  std::vector<float> sigmas;
  std::vector<float> timesteps;
  int64_t steps() const noexcept { return static_cast<int64_t>(timesteps.size()); }
};

struct FlowMatchConfig {
  int64_t num_train_timesteps = 1000;
  double shift = 1.0;
  bool use_dynamic_shifting = false;  ///< FLUX: the shift depends on the image's token count (mu)
  double base_shift = 0.5;
  double max_shift = 1.15;
  int64_t base_image_seq_len = 256;
  int64_t max_image_seq_len = 4096;
  bool invert_sigmas = false;
  std::optional<double> shift_terminal;
  bool linear_time_shift = false;  ///< time_shift_type "linear" (else "exponential")

  /// scheduler/scheduler_config.json. Karras, exponential or beta sigmas and
  /// stochastic sampling are refused by name (InvalidInput), as is a class other
  /// than FlowMatchEulerDiscreteScheduler when _class_name is given.
  static FlowMatchConfig from(const loading::JsonView& config);

  /// diffusers' calculate_shift: mu for an image of `image_seq_len` tokens,
  /// linear between (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift).
  double mu_for(int64_t image_seq_len) const;
  /// The levels of `steps` steps (>= 1); `mu` is required exactly when
  /// use_dynamic_shifting (InvalidInput otherwise).
  FlowMatchSchedule schedule(int64_t steps, std::optional<double> mu = std::nullopt) const;
  /// The levels a pipeline gives the scheduler itself (set_timesteps(sigmas=...):
  /// FLUX gives linspace(1, 1 / steps, steps)), shifted as schedule() shifts
  /// them but in float32, as diffusers computes given levels. Each in (0, 1].
  FlowMatchSchedule schedule_from_sigmas(const std::vector<double>& sigmas,
                                         std::optional<double> mu = std::nullopt) const;
};

/// numpy's linspace(start, stop, n): start + i x step, the last point exactly stop.
std::vector<double> linspace(double start, double stop, int64_t n);

/// img2img: of a `steps`-step schedule, strength s in [0, 1] keeps the last
/// min(steps x s, steps) steps (truncated as diffusers' get_timesteps does); the
/// index of the first step that runs.
int64_t img2img_start_step(int64_t steps, double strength);

}  // namespace mpool::nn
