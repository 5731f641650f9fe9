#pragma once
// Rotary position embeddings: inverse frequencies for every rope type (as
// transformers' rope init functions compute them), cos/sin tables, rotate-half
// and interleaved application, and the N-axis variant (FLUX rotates over 3 axes).
#include <ATen/ATen.h>

#include <utility>
#include <vector>

#include "mpool/nn/rope_config.h"

namespace mpool::nn {

/// How a head's dimensions pair up for rotation.
enum class RopeLayout {
  kRotateHalf,   ///< dimension i pairs with i + d/2 (Llama, GPT-NeoX)
  kInterleaved,  ///< dimension 2i pairs with 2i + 1 (GPT-J, FLUX, DeepSeek's MLA)
};

/// inv_freq (rotary_dim / 2, float32) for a sequence of `seq_len` positions (only
/// dynamic and longrope depend on it), and the factor that scales cos and sin.
std::pair<at::Tensor, double> rope_inv_freq(const RopeConfig& config, int64_t seq_len);

/// cos and sin (n, 2 * inv_freq.size(0)) of `positions` (n) float32, laid out for `layout`.
std::pair<at::Tensor, at::Tensor> rope_tables(const at::Tensor& positions, const at::Tensor& inv_freq, double scale,
                                              RopeLayout layout);

/// Rotates the first cos.size(-1) dimensions of x (..., n, head_dim) by the
/// tables (n, rotary); the rest pass through. Computed in the wider of x's and
/// the tables' dtypes, returned in x's.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                      RopeLayout layout = RopeLayout::kRotateHalf);

/// The N-axis variant: each row of `positions` (n, axes) has one coordinate per
/// axis; axis a rotates axes_dims[a] dimensions with base `theta`, and the
/// tables concatenate over the axes (n, sum(axes_dims)), interleaved layout, float32
/// (coordinates rounded to float32, angles in float64, as diffusers' FluxPosEmbed).
std::pair<at::Tensor, at::Tensor> multi_axis_rope_tables(const at::Tensor& positions,
                                                         const std::vector<int64_t>& axes_dims, double theta);

/// A model's rotary embedding: its config, with the length-independent inv_freq
/// computed once, and tables cast to the model's dtype and device.
class Rope {
 public:
  Rope() = default;
  Rope(RopeConfig config, at::ScalarType dtype, at::Device device, RopeLayout layout = RopeLayout::kRotateHalf);
  /// cos and sin (n, rotary_dim) for positions [start, start + n), in a
  /// sequence of at least `length` positions (where the rotation depends on the
  /// length: the larger of it and start + n, transformers' max position + 1).
  std::pair<at::Tensor, at::Tensor> tables(int64_t start, int64_t n, int64_t length = 0) const;
  /// Rotates x (b, heads, n, head_dim) with tables from tables().
  at::Tensor apply(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const {
    return apply_rope(x, cos, sin, layout_);
  }
  const RopeConfig& config() const noexcept { return config_; }

 private:
  RopeConfig config_;
  at::ScalarType dtype_ = at::kFloat;
  at::Device device_ = at::kCPU;
  RopeLayout layout_ = RopeLayout::kRotateHalf;
  at::Tensor inv_freq_;  // the length-independent types
  double scale_ = 1.0;
};

}  // namespace mpool::nn
