#pragma once
// Position signals other than rotary ones (rope.h): ALiBi's linear biases (BLOOM,
// MPT), T5's bucketed relative bias, the sinusoidal timestep embedding of
// diffusion models with its MLP, and the 2-D sin-cos tables of patch
// transformers (SD3's PatchEmbed, with its centered crop).
#include <ATen/ATen.h>

#include <cstdint>
#include <string_view>

#include "mpool/nn/activation.h"
#include "mpool/nn/linear.h"
#include "mpool/nn/weights.h"

namespace mpool::nn {

// --- ALiBi (Press et al., "Train Short, Test Long").

/// One slope per head, float32. With p the largest power of two <= heads, head i < p
/// gets 2^(-max_bias * (i + 1) / p); the heads beyond p take the odd-exponent
/// slopes of the 2p-head series, 2^(-max_bias * (2j + 1) / (2p)) for j = 0, 1, ...
/// (BLOOM's slopes for max_bias 8; MPT's for its alibi_bias_max). InvalidInput
/// when heads < 1 or max_bias <= 0.
at::Tensor alibi_slopes(int64_t heads, double max_bias = 8.0);

/// The additive bias slopes[h] * (key_positions[j] - query_positions[i]), float32:
/// (heads, n, t) for positions (n) and (t), or (b, heads, n, t) for (b, n) and
/// (b, t) (per-sequence positions, e.g. of a padded batch). Integer positions are
/// subtracted exactly before the multiplication. Softmax ignores a constant per
/// query row, so a query position of 0 gives BLOOM's form (slope x key position)
/// and t - 1 gives MPT's. Add it to the scores with additive_mask (attention.h).
at::Tensor alibi_bias(const at::Tensor& slopes, const at::Tensor& query_positions, const at::Tensor& key_positions);

/// The symmetric (bidirectional) form of an encoder, -slopes[h] * |key_positions[j] -
/// query_positions[i]| (JinaBert), float32, with alibi_bias's shapes and checks:
/// every key is penalized by its distance from the query, before or after it.
at::Tensor alibi_symmetric_bias(const at::Tensor& slopes, const at::Tensor& query_positions,
                                const at::Tensor& key_positions);

// --- T5 relative position bias.

/// T5's bucket (int64, in [0, num_buckets)) of each relative position (key
/// position - query position, an integer tensor). bidirectional (the encoder):
/// half the buckets for keys after the query; causal (the decoder): keys after the
/// query share bucket 0. Of each half, the first half are exact distances and the
/// rest grow logarithmically up to max_distance, beyond which all share the last.
/// InvalidInput unless the exact buckets are at least 1 and max_distance exceeds them.
at::Tensor t5_relative_buckets(const at::Tensor& relative_position, bool bidirectional, int64_t num_buckets,
                               int64_t max_distance);

/// T5's learned relative bias: one scalar per (bucket, head).
struct T5RelativeBias {
  at::Tensor embedding;  ///< (num_buckets, heads)
  bool bidirectional = true;
  int64_t max_distance = 128;

  /// `name`.weight of (num_buckets, heads); T5 keeps it as
  /// "relative_attention_bias" in the first layer's attention.
  static T5RelativeBias load(const Weights& w, std::string_view name, int64_t num_buckets, int64_t heads,
                             int64_t max_distance, bool bidirectional);
  /// (1, heads, n, t), of the embedding's dtype: queries at positions [start, start + n)
  /// against keys at [0, t).
  at::Tensor operator()(int64_t n, int64_t t, int64_t start = 0) const;
  int64_t num_buckets() const { return embedding.size(0); }
};

// --- Diffusion timesteps.

/// How a timestep becomes sinusoids (diffusers' get_timestep_embedding arguments).
struct TimestepOptions {
  bool flip_sin_to_cos = false;       ///< cos first, then sin
  double downscale_freq_shift = 1.0;  ///< frequencies exp(-ln(max_period) * i / (dim/2 - shift))
  double scale = 1.0;                 ///< multiplies the arguments
  double max_period = 10000.0;
};

/// (n, dim) float32: sin and cos of timesteps (n, possibly fractional) times
/// dim/2 geometric frequencies, zero-padded by one column when dim is odd.
/// InvalidInput unless timesteps is 1-D and dim / 2 - downscale_freq_shift is non-zero.
at::Tensor timestep_embedding(const at::Tensor& timesteps, int64_t dim, const TimestepOptions& options = {});

/// diffusers' TimestepEmbedding: linear_2(act(linear_1(x))).
struct TimestepEmbedding {
  Linear linear_1, linear_2;
  Activation act = Activation::kSilu;

  /// linear_1 (hidden, in) and linear_2 (out, hidden) under `w`; out 0 = hidden.
  static TimestepEmbedding load(const Weights& w, int64_t in, int64_t hidden, Activation act, int64_t out = 0,
                                bool bias = true);
  at::Tensor operator()(const at::Tensor& x) const;
};

// --- 2-D sin-cos patch positions.

/// (grid_h * grid_w, dim) float32, rows in row-major (h, w) order, as diffusers'
/// get_2d_sincos_pos_embed: coordinates are index / (grid / base_size) /
/// interpolation_scale; the first dim/2 columns are sin then cos of the column
/// coordinate, the last dim/2 the same of the row coordinate (frequencies
/// 10000^(-k / (dim/4)), computed in float64). InvalidInput unless dim is a
/// positive multiple of 4 and the grid and scales are positive.
at::Tensor sincos_2d_embedding(int64_t dim, int64_t grid_h, int64_t grid_w, double base_size = 16.0,
                               double interpolation_scale = 1.0);

/// SD3's patch position table: sincos_2d_embedding over max_size x max_size
/// patches, computed once, from which each latent size takes its centered window.
class PatchPositionTable {
 public:
  PatchPositionTable() = default;
  /// base_size: the training sample size in patches (sample_size / patch_size).
  PatchPositionTable(int64_t dim, int64_t max_size, double base_size, double interpolation_scale,
                     at::ScalarType dtype = at::kFloat, at::Device device = at::kCPU);
  /// (h * w, dim): the window of h x w patches starting at ((max - h) / 2,
  /// (max - w) / 2); InvalidInput when h or w is outside [1, max_size].
  at::Tensor crop(int64_t h, int64_t w) const;
  int64_t max_size() const noexcept { return max_size_; }

 private:
  at::Tensor table_;  // (max_size, max_size, dim)
  int64_t max_size_ = 0;
};

}  // namespace mpool::nn
