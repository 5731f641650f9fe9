#pragma once
// A mixture-of-experts feed-forward block for the FeedForward slot: a router
// picks top_k experts per token, only those experts run, and their outputs are
// summed with the routing weights; optional shared experts run on every token,
// behind a sigmoid gate (Qwen2-MoE) or ungated (DeepSeek-V3). The router is a
// part of its own: softmax top-k (Qwen-MoE) or DeepSeek-V3's grouped sigmoid
// top-k, over the same experts.
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

#include "mpool/nn/linear.h"
#include "mpool/nn/mlp.h"
#include "mpool/nn/weights.h"

namespace mpool::nn {

/// How a router scores and picks experts.
enum class RouterKind {
  kSoftmax,         ///< softmax over the experts, top_k largest
  kGroupedSigmoid,  ///< DeepSeek-V3: sigmoid scores, bias-corrected choice within the best groups
};

/// A MoE block's sizes, from the family's config.
struct MoeShape {
  int64_t hidden = 0;
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t expert_inner = 0;  ///< each expert's intermediate size
  bool normalize_top_k = false;  ///< rescale the chosen weights to sum to 1
  int64_t shared_inner = 0;  ///< the gated shared expert's intermediate size; 0: none
  RouterKind router = RouterKind::kSoftmax;
  int64_t groups = 1;      ///< kGroupedSigmoid: expert groups (num_experts divisible by it)
  int64_t top_groups = 1;  ///< kGroupedSigmoid: groups a token chooses among
  double scale = 1.0;      ///< kGroupedSigmoid: factor of the routed weights
  int64_t shared_experts_inner = 0;  ///< ungated shared experts as one MLP ("shared_experts"); 0: none
};

/// Per token: which experts run and with what weight.
struct Routing {
  at::Tensor experts;  ///< (tokens, top_k) int64, by falling probability
  at::Tensor weights;  ///< (tokens, top_k), the input's dtype
};

/// Routing: a linear map to one logit per expert, then
/// - kSoftmax: a float32 softmax over the experts, the top_k largest, optionally
///   renormalised;
/// - kGroupedSigmoid: float32 sigmoid scores; the choice adds a per-expert
///   correction bias, ranks groups by the sum of their two best corrected scores,
///   keeps the top_groups best groups and takes the top_k corrected scores among
///   their experts; the weights are the uncorrected scores, optionally
///   renormalised, times `scale`.
struct Router {
  Linear gate;  ///< (num_experts, hidden), no bias; float32 for kGroupedSigmoid
  int64_t top_k = 0;
  bool normalize = false;
  RouterKind kind = RouterKind::kSoftmax;
  at::Tensor bias;  ///< kGroupedSigmoid: (num_experts) float32, for choosing only
  int64_t groups = 1, top_groups = 1;
  double scale = 1.0;

  /// `name`.weight of (num_experts, hidden); kGroupedSigmoid also
  /// `name`.e_score_correction_bias (num_experts), both taken as float32. The
  /// router is never quantized: int8 rounding would move tokens between experts.
  static Router load(const Weights& w, std::string_view name, const MoeShape& shape);
  /// x: (tokens, hidden).
  Routing operator()(const at::Tensor& x) const;

 private:
  Routing grouped_sigmoid(const at::Tensor& x) const;
};

/// The routed experts, each a gated SiLU MLP, kept as stacked 3-D weights (in
/// a view with int8_linears(), as int8 rows with their scales instead).
struct Experts {
  LinearWeight gate_up;  ///< (num_experts, 2 * inner, hidden), gate rows first
  LinearWeight down;     ///< (num_experts, hidden, inner)
  int64_t inner = 0;
  int64_t num_experts = 0;

  /// The stacked `name`.gate_up_proj / `name`.down_proj when stored so, else the
  /// per-expert `name`.<e>.{gate,up,down}_proj.weight, stacked at load.
  static Experts load(const Weights& w, std::string_view name, const MoeShape& shape);
  /// x: (tokens, hidden); each token through its routed experts, weighted and
  /// summed. Tokens are grouped by expert, so each chosen expert runs one GEMM
  /// (one matrix-vector product per expert for a single token).
  at::Tensor operator()(const at::Tensor& x, const Routing& routing) const;

 private:
  at::Tensor run(int64_t expert, const at::Tensor& x) const;
};

/// The block: router, experts, and the optional shared experts, under the
/// checkpoints' names ("gate", "experts", Qwen2-MoE's "shared_expert" and
/// "shared_expert_gate", DeepSeek-V3's "shared_experts").
class MoeFeedForward final : public FeedForward {
 public:
  static MoeFeedForward load(const Weights& w, const MoeShape& shape);
  /// (..., hidden) -> (..., hidden).
  at::Tensor operator()(const at::Tensor& x) const override;
  /// The routing of x (..., hidden), flattened to (tokens, top_k).
  Routing route(const at::Tensor& x) const;

 private:
  Router router_;
  Experts experts_;
  std::optional<Mlp> shared_;
  Linear shared_gate_;  // (1, hidden)
  std::optional<Mlp> shared_experts_;  // ungated
};

}  // namespace mpool::nn
