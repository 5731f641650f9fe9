#pragma once
// Convolutional blocks of the diffusion VAE and UNet: 2-D convolution, the
// residual block, 2x up- and downsampling and the single-head spatial
// self-attention of the VAE's mid-block. Each loads from a Weights view with
// diffusers' tensor names and runs on (b, c, h, w).
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "mpool/nn/activation.h"
#include "mpool/nn/attention.h"
#include "mpool/nn/linear.h"
#include "mpool/nn/norm.h"
#include "mpool/nn/weights.h"

namespace mpool::nn {

/// A square-kernel 2-D convolution through at::conv2d.
struct Conv2d {
  at::Tensor weight;  ///< (out, in, kernel, kernel)
  at::Tensor bias;    ///< (out), or undefined
  int64_t stride = 1;
  int64_t padding = 0;
  std::string name;  ///< the checkpoint scope, for errors

  /// `name`.weight of (out, in, kernel, kernel), and `name`.bias of (out) when `bias`.
  static Conv2d load(const Weights& w, std::string_view name, int64_t in, int64_t out, int64_t kernel,
                     int64_t stride = 1, int64_t padding = 0, bool bias = true);
  /// (b, in, h, w) -> (b, out, h', w'); InvalidInput names the layer when x is not
  /// 4-D with `in` channels.
  at::Tensor operator()(const at::Tensor& x) const;
  int64_t in_channels() const { return weight.size(1); }
  int64_t out_channels() const { return weight.size(0); }
};

/// How a residual block combines its timestep embedding (diffusers' time_embedding_norm).
enum class TimeEmbeddingNorm {
  kDefault,     ///< added to conv1's output before norm2
  kScaleShift,  ///< projected to 2 x out: norm2's output times (1 + scale) plus shift
};

/// A residual block's sizes and options (diffusers' ResnetBlock2D arguments).
struct ResnetBlockConfig {
  int64_t in_channels = 0;
  int64_t out_channels = 0;   ///< 0: in_channels
  int64_t temb_channels = 0;  ///< 0: no timestep projection (the VAE)
  int64_t groups = 32;
  int64_t groups_out = 0;  ///< norm2's groups; 0: groups
  double eps = 1e-6;
  Activation act = Activation::kSilu;
  double output_scale_factor = 1.0;
  TimeEmbeddingNorm time_embedding_norm = TimeEmbeddingNorm::kDefault;
  bool skip_time_act = false;  ///< project temb without the activation first
  bool conv_shortcut_bias = true;
};

/// diffusers' ResnetBlock2D without up/down sampling:
///   h = conv1(act(norm1(x))); h += time_emb_proj(act(temb)) (or scale-shift after norm2);
///   h = conv2(act(norm2(h))); out = (shortcut(x) + h) / output_scale_factor,
/// with shortcut a 1x1 `conv_shortcut` when the channel count changes. Dropout is
/// an identity at inference and has no part here.
class ResnetBlock2D {
 public:
  /// norm1, conv1, [time_emb_proj], norm2, conv2, [conv_shortcut] under `w`;
  /// InvalidInput names the norm whose channels do not split into its groups.
  static ResnetBlock2D load(const Weights& w, const ResnetBlockConfig& config);
  /// x (b, in, h, w) and temb (b, temb_channels), which the block needs exactly
  /// when it has a timestep projection.
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& temb = {}) const;
  const ResnetBlockConfig& config() const noexcept { return config_; }

 private:
  ResnetBlockConfig config_;
  GroupNorm norm1_, norm2_;
  Conv2d conv1_, conv2_;
  std::optional<Linear> time_emb_proj_;
  std::optional<Conv2d> conv_shortcut_;
  std::string name_;
};

/// diffusers' Upsample2D: nearest-neighbour 2x (or to a given size), then an
/// optional 3x3 `conv`.
struct Upsample2D {
  std::optional<Conv2d> conv;
  int64_t channels = 0;

  /// With `use_conv`: `name`.weight (out, channels, kernel, kernel) and bias; out 0 = channels.
  static Upsample2D load(const Weights& w, int64_t channels, bool use_conv = true, int64_t out_channels = 0,
                         int64_t kernel = 3, int64_t padding = 1, std::string_view name = "conv");
  /// (b, channels, h, w) -> (b, out, 2h, 2w), or (b, out, size) when `size` is given
  /// (a UNet matching its skip connection's odd size).
  at::Tensor operator()(const at::Tensor& x, std::optional<std::pair<int64_t, int64_t>> size = std::nullopt) const;
};

/// diffusers' Downsample2D: a stride-2 `conv` (padding 0 pads right and bottom
/// by one first, as the VAE encoder does), or 2x2 average pooling without conv.
struct Downsample2D {
  std::optional<Conv2d> conv;
  int64_t channels = 0;
  int64_t padding = 1;

  /// With `use_conv`: `name`.weight (out, channels, kernel, kernel) and bias; out 0 =
  /// channels. Without, out must equal channels.
  static Downsample2D load(const Weights& w, int64_t channels, bool use_conv = true, int64_t out_channels = 0,
                           int64_t kernel = 3, int64_t padding = 1, std::string_view name = "conv");
  at::Tensor operator()(const at::Tensor& x) const;
};

/// The self-attention over pixels of diffusers' UNetMidBlock2D (the VAE's, with
/// one head as wide as the channels): x + to_out.0(attend(to_q, to_k, to_v of
/// group_norm(x) as (b, h*w, c))), divided by rescale_output_factor.
class SpatialAttention {
 public:
  /// group_norm (groups, eps), to_q/to_k/to_v/to_out.0 (channels x channels, with
  /// biases) under `w`; heads must divide channels.
  static SpatialAttention load(const Weights& w, int64_t channels, int64_t groups, double eps, int64_t heads = 1,
                               double rescale_output_factor = 1.0);
  /// (b, channels, h, w) -> the same shape.
  at::Tensor operator()(const at::Tensor& x) const;

 private:
  GroupNorm norm_;
  Attention attention_;
  int64_t channels_ = 0;
  double rescale_ = 1.0;
  std::string name_;
};

}  // namespace mpool::nn
