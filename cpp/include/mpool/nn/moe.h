#pragma once
// A mixture-of-experts feed-forward block for the FeedForward slot: a router
// picks top_k experts per token, only those experts run, and their outputs are
// summed with the routing weights; an optional shared expert runs on every token
// behind a sigmoid gate (Qwen2-MoE). The router and the experts are separate
// parts so another scoring rule or a grouped top-k (DeepSeek-V3) replaces the
// router alone.
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

#include "mpool/nn/linear.h"
#include "mpool/nn/mlp.h"
#include "mpool/nn/weights.h"

namespace mpool::nn {

/// A MoE block's sizes, from the family's config.
struct MoeShape {
  int64_t hidden = 0;
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t expert_inner = 0;  ///< each expert's intermediate size
  bool normalize_top_k = false;  ///< rescale the chosen weights to sum to 1
  int64_t shared_inner = 0;  ///< the shared expert's intermediate size; 0: none
};

/// Per token: which experts run and with what weight.
struct Routing {
  at::Tensor experts;  ///< (tokens, top_k) int64, by falling probability
  at::Tensor weights;  ///< (tokens, top_k), the input's dtype
};

/// Softmax routing: a linear map to one logit per expert, a float32 softmax over
/// the experts, the top_k largest, optionally renormalised.
struct Router {
  Linear gate;  ///< (num_experts, hidden), no bias
  int64_t top_k = 0;
  bool normalize = false;

  /// `name`.weight of (num_experts, hidden).
  static Router load(const Weights& w, std::string_view name, const MoeShape& shape);
  /// x: (tokens, hidden).
  Routing operator()(const at::Tensor& x) const;
};

/// The routed experts, each a gated SiLU MLP, kept as stacked 3-D weights.
struct Experts {
  at::Tensor gate_up;  ///< (num_experts, 2 * inner, hidden), gate rows first
  at::Tensor down;     ///< (num_experts, hidden, inner)
  int64_t inner = 0;

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

/// The block: router, experts, and the optional gated shared expert, under
/// Qwen-MoE's names ("gate", "experts", "shared_expert", "shared_expert_gate").
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
};

}  // namespace mpool::nn
