#pragma once
// Activations and feed-forward blocks. A decoder layer holds its feed-forward
// block through the FeedForward interface: a dense MLP today, a mixture of
// experts where a family needs one.
#include <ATen/ATen.h>

#include <memory>
#include <optional>
#include <string_view>

#include "mpool/nn/activation.h"
#include "mpool/nn/linear.h"
#include "mpool/nn/weights.h"

namespace mpool::nn {

/// `act`(x).
at::Tensor activate(Activation act, const at::Tensor& x);

/// The logistic sigmoid, element by element in float32 (std::exp), in x's dtype:
/// an element's bits do not depend on where it sits or how many there are
/// (ATen's vectorized kernel gives the elements of a loop's tail other bits).
/// For the small gates of a mixture of experts, whose rows keep their bits in
/// any chunk of a prompt (kernels::RowInvariant). Off the CPU, at::sigmoid.
at::Tensor sigmoid_per_element(const at::Tensor& x);

/// The feed-forward slot of a transformer layer: (..., hidden) -> (..., hidden).
class FeedForward {
 public:
  virtual ~FeedForward() = default;
  virtual at::Tensor operator()(const at::Tensor& x) const = 0;
  /// (*this)(x) + residual; a block that can fuse the sum into its last
  /// projection does.
  virtual at::Tensor plus(const at::Tensor& x, const at::Tensor& residual) const { return (*this)(x) + residual; }
};

/// How an MLP's checkpoint names its projections.
struct MlpNames {
  std::string up = "up_proj";      ///< plain: the first projection; gated: the "up" half
  std::string gate = "gate_proj";  ///< gated only
  std::string down = "down_proj";
  std::string fused_gate_up = "gate_up_proj";  ///< gated: one stored tensor (gate rows first), when present
  // Gated with gate and up both empty: only the fused tensor exists (JinaBert's
  // gated_layers), and an error names it.
  /// With that fused-only form: the stored tensor holds the up rows first, then
  /// the gate (GEGLU written as `x, gates = proj(x).chunk(2); x * gelu(gates)`).
  bool fused_up_first = false;
};

/// A dense MLP: down(act(up(x))), or gated down(act(gate(x)) * up(x)) (SwiGLU
/// with silu, GEGLU with gelu). Gate and up run as one GEMM. A down projection
/// kept in another dtype gets its input cast to it, and returns that dtype.
class Mlp final : public FeedForward {
 public:
  /// `hidden` -> `inner` -> `hidden`, under `w`; `down_dtype`: the down projection's
  /// dtype when not the view's (T5's wo in float32 under float16); `down_bias`: whether
  /// the down projection has a bias when it differs from `bias`, the input
  /// projection's (JinaBert's gated_layers has none, its wo has one).
  static Mlp load(const Weights& w, int64_t hidden, int64_t inner, Activation act, bool gated, bool bias,
                  const MlpNames& names = {}, std::optional<at::ScalarType> down_dtype = std::nullopt,
                  std::optional<bool> down_bias = std::nullopt);
  at::Tensor operator()(const at::Tensor& x) const override;
  /// operator()(x) + residual, the sum fused into the down projection where
  /// Linear can (a transformer layer's residual connection).
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& residual) const;
  at::Tensor plus(const at::Tensor& x, const at::Tensor& residual) const override { return (*this)(x, residual); }
  /// Attaches the LoRA updates of the projections trained as modules `up`, `down`
  /// and, when gated, `gate` (module paths).
  void attach_lora(LoraAdapters& adapters, const std::string& up, const std::string& down,
                   const std::string& gate = "");

 private:
  Linear in_;  // up, or gate and up fused (gate rows first)
  Linear down_;
  Activation act_ = Activation::kGelu;
  bool gated_ = false;
  bool up_first_ = false;  // gated: in_'s output is [up, gate] instead of [gate, up]
  int64_t inner_ = 0;
};

/// The perceiver-style GEGLU feed-forward (lucidrains' FeedForward, NV-Embed's
/// latent-attention block): net.0 (2 * mult * dim, dim) giving [x, gates],
/// x * gelu(gates), net.2 (dim, mult * dim); both with biases.
Mlp geglu_feed_forward(const Weights& w, int64_t dim, int64_t mult = 4);

}  // namespace mpool::nn
