#pragma once
// Normalization layers, on ATen's functional kernels.
#include <ATen/ATen.h>

#include <string_view>

#include "mpool/nn/weights.h"

namespace mpool::nn {

/// LayerNorm over the last dimension; the bias is optional.
struct LayerNorm {
  at::Tensor weight, bias;
  double eps = 1e-5;
  /// `name`.weight (and `name`.bias when `bias`) of (dim).
  static LayerNorm load(const Weights& w, std::string_view name, int64_t dim, double eps, bool bias = true);
  at::Tensor operator()(const at::Tensor& x) const;
};

/// RMSNorm as transformers computes it: normalize in float32, cast back to the
/// input's dtype, then scale by `weight` (or by 1 + weight: the unit-offset
/// variant of Gemma-style checkpoints).
struct RMSNorm {
  at::Tensor weight;
  double eps = 1e-6;
  bool unit_offset = false;
  static RMSNorm load(const Weights& w, std::string_view name, int64_t dim, double eps, bool unit_offset = false);
  at::Tensor operator()(const at::Tensor& x) const;
};

/// GroupNorm over (n, channels, ...) inputs, with an optional affine part.
struct GroupNorm {
  int64_t groups = 32;
  at::Tensor weight, bias;
  double eps = 1e-6;
  static GroupNorm load(const Weights& w, std::string_view name, int64_t groups, int64_t channels, double eps,
                        bool affine = true);
  at::Tensor operator()(const at::Tensor& x) const;
};

}  // namespace mpool::nn
