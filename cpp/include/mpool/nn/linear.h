#pragma once
// Linear projections. One row on the CPU (a decode step) goes through the
// bandwidth-bound matrix-vector kernel (kernels.h); everything else is at::linear.
// A weight loaded from a view with int8_linears() is stored as int8 rows and
// runs through int8.h (float32 activations in and out). LoRA adapters attached
// to a projection (lora.h) add the active adapter's update.
#include <ATen/ATen.h>

#include <memory>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "mpool/nn/activation.h"
#include "mpool/nn/lora.h"
#include "mpool/nn/weights.h"

namespace mpool::nn {

/// y = x W^T + b.
struct Linear {
  at::Tensor weight;     ///< (out, in); undefined when quantized
  int8::Quantized int8;  ///< int8 rows and scales, when quantized
  at::Tensor bias;       ///< (out), or undefined
  std::shared_ptr<const LoraDeltas> lora;  ///< per adapter, or null: none attached

  /// `name`.weight of (out, in), and `name`.bias of (out) when `bias`; quantized
  /// when `w` has int8_linears().
  static Linear load(const Weights& w, std::string_view name, int64_t out, int64_t in, bool bias);
  /// A projection of `weight` as loaded by Weights::linear_weight.
  static Linear of(LinearWeight weight, at::Tensor bias = {});
  at::Tensor operator()(const at::Tensor& x) const;
  /// act(x W^T + b) + residual (either may be absent): one oneDNN pass where
  /// gemm::onednn_linear applies and the row kernel does not take x (no int8, no
  /// LoRA), else operator() followed by the activation and the sum.
  at::Tensor operator()(const at::Tensor& x, std::optional<Activation> act, const at::Tensor& residual = {}) const;
  bool defined() const { return weight.defined() || quantized(); }
  bool quantized() const { return int8.q.defined(); }
  int64_t out_features() const { return quantized() ? int8.q.size(0) : weight.size(0); }
  int64_t in_features() const { return quantized() ? int8.q.size(1) : weight.size(1); }
  /// The dtype its input is computed in: the weight's, float32 when quantized.
  at::ScalarType input_dtype() const { return quantized() ? at::kFloat : weight.scalar_type(); }
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
