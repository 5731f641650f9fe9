#pragma once
// Linear projections. One row on the CPU (a decode step) goes through the
// bandwidth-bound matrix-vector kernel (kernels.h); everything else is at::linear.
// LoRA adapters attached to a projection (lora.h) add the active adapter's update.
#include <ATen/ATen.h>

#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "mpool/nn/lora.h"
#include "mpool/nn/weights.h"

namespace mpool::nn {

/// y = x W^T + b.
struct Linear {
  at::Tensor weight;  ///< (out, in)
  at::Tensor bias;    ///< (out), or undefined
  std::shared_ptr<const LoraDeltas> lora;  ///< per adapter, or null: none attached

  /// `name`.weight of (out, in), and `name`.bias of (out) when `bias`.
  static Linear load(const Weights& w, std::string_view name, int64_t out, int64_t in, bool bias);
  at::Tensor operator()(const at::Tensor& x) const;
  int64_t out_features() const { return weight.size(0); }
};

/// Several projections of the same input run as one GEMM (q/k/v, gate/up), then
/// split. Fusing copies the parts once at load (weights.h).
struct FusedLinear {
  Linear linear;
  std::vector<int64_t> splits;  ///< output widths, in order

  /// The stored fused tensor `fused_name` (e.g. Phi-3's "qkv_proj") when present,
  /// else the `parts` ("q_proj", "k_proj", "v_proj") with their output widths; an
  /// empty `fused_name`: always the parts.
  static FusedLinear load(const Weights& w, std::string_view fused_name,
                          const std::vector<std::pair<std::string, int64_t>>& parts, int64_t in, bool bias);
  /// The outputs, one per part (views of one result).
  std::vector<at::Tensor> operator()(const at::Tensor& x) const;
};

}  // namespace mpool::nn
