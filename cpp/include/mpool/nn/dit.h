#pragma once
// Blocks of diffusion transformers (DiT, MMDiT): adaptive layer-norm modulation
// from a conditioning vector (adaLN, adaLN-Zero), and attention over two token
// streams at once (an image stream and a text stream, each with its own
// projections), as Stable Diffusion 3's and FLUX's joint blocks use them.
#include <ATen/ATen.h>

#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mpool/nn/attention.h"
#include "mpool/nn/linear.h"
#include "mpool/nn/mlp.h"
#include "mpool/nn/weights.h"

namespace mpool::nn {

/// The modulation vectors of adaLN: `linear`(silu(conditioning)) split into
/// `chunks` vectors of width `dim` (diffusers' AdaLayerNormZero has six: shift,
/// scale and gate of the attention and of the MLP; AdaLayerNormContinuous two:
/// scale, then shift).
struct AdaModulation {
  Linear linear;  ///< (chunks * dim, conditioning)
  int64_t chunks = 0;

  /// `name`.weight of (chunks * dim, conditioning) and its bias.
  static AdaModulation load(const Weights& w, std::string_view name, int64_t dim, int64_t conditioning,
                            int64_t chunks, bool bias = true);
  /// conditioning (b, c) -> `chunks` tensors of (b, dim).
  std::vector<at::Tensor> operator()(const at::Tensor& conditioning) const;
};

/// LayerNorm over the last dimension without weight or bias.
at::Tensor plain_layer_norm(const at::Tensor& x, double eps = 1e-6);
/// x (b, n, d) * (1 + scale) + shift, with scale and shift (b, d) per sample.
at::Tensor modulate(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale);
/// gate (b, d) per sample times x (b, n, d).
at::Tensor gated(const at::Tensor& gate, const at::Tensor& x);

/// diffusers' FeedForward(dim, activation_fn="gelu-approximate") of the DiT blocks
/// (SD3, FLUX): net.0.proj (4 dim, dim), tanh GELU, net.2 (dim, 4 dim), with biases.
Mlp diffusers_feed_forward(const Weights& w, int64_t dim);

/// Attention over the concatenation of two streams, each with its own q/k/v (and
/// q/k norms) and output projection: SD3's and FLUX's joint attention. The image
/// stream's tensors are to_q/to_k/to_v/to_out.0 (norm_q/norm_k), the text
/// stream's add_q_proj/add_k_proj/add_v_proj/to_add_out (norm_added_q/k).
class JointAttention {
 public:
  /// Which stream comes first in the joint sequence (SD3: image, FLUX: text).
  enum class Order { kImageFirst, kTextFirst };
  /// Applies positions to the joint q and k (b, heads, n + m, d), e.g. FLUX's rotary ones.
  using Positions = std::function<std::pair<at::Tensor, at::Tensor>(const at::Tensor& q, const at::Tensor& k)>;

  /// heads x head_dim projections of width `dim`, with biases; qk_norm_eps set:
  /// per-head RMSNorm of q and k in both streams. text_output false: the text
  /// stream has no to_add_out (SD3's last, context-pre-only block).
  static JointAttention load(const Weights& w, int64_t dim, int64_t heads, int64_t head_dim,
                             std::optional<double> qk_norm_eps, bool text_output, Order order);
  /// image (b, n, dim) and text (b, m, dim) -> both attended, each through its own
  /// output projection; the text result is undefined without text_output.
  std::pair<at::Tensor, at::Tensor> operator()(const at::Tensor& image, const at::Tensor& text,
                                               const Positions& positions = {}) const;

 private:
  Attention image_, text_;
  Order order_ = Order::kImageFirst;
  bool text_output_ = true;
};

}  // namespace mpool::nn
