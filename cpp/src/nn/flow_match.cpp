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

namespace {

// Shifts the levels (static or by mu), stretches them to shift_terminal, and
// appends the terminal level, each operation in T: float64 when diffusers made
// the levels itself, float32 when it was given them (numpy keeps float32 then).
template <class T>
FlowMatchSchedule finish(const FlowMatchConfig& c, std::vector<T> sig, std::optional<double> mu) {
  check(!c.use_dynamic_shifting || mu.has_value(), ErrorCode::kInvalidInput,
        "this scheduler shifts by resolution (use_dynamic_shifting): it needs mu");
  if (mu) check(std::isfinite(*mu), ErrorCode::kInvalidInput, "mu must be finite");
  const T one = 1;
  for (T& s : sig) {
    if (c.use_dynamic_shifting) {
      const T e = static_cast<T>(c.linear_time_shift ? *mu : std::exp(*mu));
      s = e / (e + (one / s - one));
    } else {
      s = static_cast<T>(c.shift) * s / (one + static_cast<T>(c.shift - 1.0) * s);
    }
  }
  if (c.shift_terminal) {
    const T scale = (one - sig.back()) / static_cast<T>(1.0 - *c.shift_terminal);
    check(scale > 0, ErrorCode::kInvalidInput,
          "shift_terminal stretches the schedule to its last level, which needs at least 2 steps");
    for (T& s : sig) s = one - (one - s) / scale;
  }
  FlowMatchSchedule out;
  const float n_train = static_cast<float>(c.num_train_timesteps);
  for (T s : sig) {
    float f = static_cast<float>(s);
    if (c.invert_sigmas) f = 1.0f - f;
    out.sigmas.push_back(f);
    out.timesteps.push_back(f * n_train);
  }
  out.sigmas.push_back(c.invert_sigmas ? 1.0f : 0.0f);
  return out;
}

}  // namespace

FlowMatchSchedule FlowMatchConfig::schedule(int64_t steps, std::optional<double> mu) const {
  check(steps >= 1, ErrorCode::kInvalidInput, "steps must be at least 1, got " + std::to_string(steps));
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
  const std::vector<double> t = linspace(sigma_max * n_train, sigma_min * n_train, steps);
  std::vector<double> sig;
  for (double x : t) sig.push_back(x / n_train);
  return finish(*this, std::move(sig), mu);
}

FlowMatchSchedule FlowMatchConfig::schedule_from_sigmas(const std::vector<double>& sigmas,
                                                        std::optional<double> mu) const {
  check(!sigmas.empty(), ErrorCode::kInvalidInput, "sigmas must not be empty");
  std::vector<float> sig;
  for (double s : sigmas) {
    check(std::isfinite(s) && s > 0 && s <= 1, ErrorCode::kInvalidInput,
          "sigmas must be in (0, 1], got " + std::to_string(s));
    sig.push_back(static_cast<float>(s));
  }
  return finish(*this, std::move(sig), mu);
}

std::vector<double> linspace(double start, double stop, int64_t n) {
  check(n >= 1, ErrorCode::kInvalidInput, "linspace needs at least 1 point, got " + std::to_string(n));
  std::vector<double> out(static_cast<size_t>(n));
  const double step = n == 1 ? 0.0 : (stop - start) / static_cast<double>(n - 1);
  for (int64_t i = 0; i < n; ++i)  // numpy's: start + i * step, the last point exactly `stop`
    out[static_cast<size_t>(i)] = n > 1 && i == n - 1 ? stop : start + static_cast<double>(i) * step;
  return out;
}

int64_t img2img_start_step(int64_t steps, double strength) {
  check(std::isfinite(strength) && strength >= 0 && strength <= 1, ErrorCode::kInvalidInput,
        "strength must be in [0, 1], got " + std::to_string(strength));
  const double init = std::min(static_cast<double>(steps) * strength, static_cast<double>(steps));
  const auto start = static_cast<int64_t>(std::max(static_cast<double>(steps) - init, 0.0));
  // As diffusers: a strength that leaves no step to run is refused, not
  // answered with the init image after a VAE round trip.
  check(start < steps, ErrorCode::kInvalidInput,
        "strength " + std::to_string(strength) + " leaves none of the " + std::to_string(steps) +
            " steps to run; img2img needs strength > 0");
  return start;
}

}  // namespace mpool::nn
