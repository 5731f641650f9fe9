#include "mpool/nn/flow_match.h"

#include <algorithm>
#include <cmath>

#include "mpool/base/error.h"

namespace mpool::nn {

FlowMatchConfig FlowMatchConfig::from(const loading::JsonView& c) {
  if (auto cls = c.get_optional<std::string>("_class_name"))
    check(*cls == "FlowMatchEulerDiscreteScheduler", ErrorCode::kInvalidInput,
          c.where("_class_name") + ": '" + *cls + "' is not supported (FlowMatchEulerDiscreteScheduler)");
  for (const char* key : {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "stochastic_sampling"})
    check(!c.get_or<bool>(key, false), ErrorCode::kInvalidInput, c.where(key) + ": true is not supported");
  FlowMatchConfig f;
  f.num_train_timesteps = c.get_or<int64_t>("num_train_timesteps", f.num_train_timesteps);
  check(f.num_train_timesteps >= 2 && f.num_train_timesteps <= 1'000'000, ErrorCode::kInvalidInput,
        c.where("num_train_timesteps") + " must be in [2, 1000000]");
  f.shift = c.get_or<double>("shift", f.shift);
  check(std::isfinite(f.shift) && f.shift > 0, ErrorCode::kInvalidInput, c.where("shift") + " must be positive");
  f.use_dynamic_shifting = c.get_or<bool>("use_dynamic_shifting", false);
  f.base_shift = c.get_or<double>("base_shift", f.base_shift);
  f.max_shift = c.get_or<double>("max_shift", f.max_shift);
  f.base_image_seq_len = c.get_or<int64_t>("base_image_seq_len", f.base_image_seq_len);
  f.max_image_seq_len = c.get_or<int64_t>("max_image_seq_len", f.max_image_seq_len);
  check(std::isfinite(f.base_shift) && std::isfinite(f.max_shift), ErrorCode::kInvalidInput,
        c.where("base_shift") + " and max_shift must be finite");
  check(f.max_image_seq_len != f.base_image_seq_len, ErrorCode::kInvalidInput,
        c.where("max_image_seq_len") + " must differ from base_image_seq_len");
  f.invert_sigmas = c.get_or<bool>("invert_sigmas", false);
  f.shift_terminal = c.get_optional<double>("shift_terminal");
  if (f.shift_terminal)
    check(std::isfinite(*f.shift_terminal) && *f.shift_terminal >= 0 && *f.shift_terminal < 1,
          ErrorCode::kInvalidInput, c.where("shift_terminal") + " must be in [0, 1)");
  if (f.shift_terminal && *f.shift_terminal == 0) f.shift_terminal.reset();  // diffusers tests its truth
  const std::string type = c.get_or<std::string>("time_shift_type", "exponential");
  check(type == "exponential" || type == "linear", ErrorCode::kInvalidInput,
        c.where("time_shift_type") + ": '" + type + "' is neither \"exponential\" nor \"linear\"");
  f.linear_time_shift = type == "linear";
  return f;
}

double FlowMatchConfig::mu_for(int64_t image_seq_len) const {
  const double m = (max_shift - base_shift) / static_cast<double>(max_image_seq_len - base_image_seq_len);
  const double b = base_shift - m * static_cast<double>(base_image_seq_len);
  return static_cast<double>(image_seq_len) * m + b;
}

FlowMatchSchedule FlowMatchConfig::schedule(int64_t steps, std::optional<double> mu) const {
  check(steps >= 1, ErrorCode::kInvalidInput, "steps must be at least 1, got " + std::to_string(steps));
  check(!use_dynamic_shifting || mu.has_value(), ErrorCode::kInvalidInput,
        "this scheduler shifts by resolution (use_dynamic_shifting): it needs mu");
  if (mu) check(std::isfinite(*mu), ErrorCode::kInvalidInput, "mu must be finite");
  const double n_train = static_cast<double>(num_train_timesteps);
  // The training levels, in float32 as the scheduler's constructor makes them:
  // only their ends matter here.
  auto train_sigma = [&](double t) {
    float s = static_cast<float>(t) / static_cast<float>(n_train);
    if (!use_dynamic_shifting) {
      const float sh = static_cast<float>(shift);
      s = sh * s / (1.0f + (sh - 1.0f) * s);
    }
    return static_cast<double>(s);
  };
  const double sigma_max = train_sigma(n_train), sigma_min = train_sigma(1.0);
  std::vector<double> sig(static_cast<size_t>(steps));
  const double t0 = sigma_max * n_train, t1 = sigma_min * n_train;
  for (int64_t i = 0; i < steps; ++i) {
    // numpy's linspace: start + i * step, the last point exactly `stop`.
    const double t = steps == 1 ? t0 : (i == steps - 1 ? t1 : t0 + static_cast<double>(i) * ((t1 - t0) / static_cast<double>(steps - 1)));
    sig[static_cast<size_t>(i)] = t / n_train;
  }
  for (double& s : sig) {
    if (use_dynamic_shifting) {
      const double e = linear_time_shift ? *mu : std::exp(*mu);
      s = e / (e + (1.0 / s - 1.0));
    } else {
      s = shift * s / (1.0 + (shift - 1.0) * s);
    }
  }
  if (shift_terminal) {
    const double scale = (1.0 - sig.back()) / (1.0 - *shift_terminal);
    check(scale > 0, ErrorCode::kInvalidInput,
          "shift_terminal stretches the schedule to its last level, which needs at least 2 steps");
    for (double& s : sig) s = 1.0 - (1.0 - s) / scale;
  }
  FlowMatchSchedule out;
  const float n_train_f = static_cast<float>(n_train);
  for (double s : sig) {
    float f = static_cast<float>(s);
    if (invert_sigmas) f = 1.0f - f;
    out.sigmas.push_back(f);
    out.timesteps.push_back(f * n_train_f);
  }
  out.sigmas.push_back(invert_sigmas ? 1.0f : 0.0f);
  return out;
}

int64_t img2img_start_step(int64_t steps, double strength) {
  check(std::isfinite(strength) && strength >= 0 && strength <= 1, ErrorCode::kInvalidInput,
        "strength must be in [0, 1], got " + std::to_string(strength));
  const double init = std::min(static_cast<double>(steps) * strength, static_cast<double>(steps));
  return static_cast<int64_t>(std::max(static_cast<double>(steps) - init, 0.0));
}

}  // namespace mpool::nn
