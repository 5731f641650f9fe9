#pragma once
// Multi-head latent attention (DeepSeek-V2/V3's MLA). Keys and values come from
// one low-rank latent per position (kv_lora_rank, RMS-normed) plus one rotary key
// shared by every head; queries come through their own low-rank bottleneck (or a
// plain projection). A cache keeps only the latent and the rotary key
// (KvCache::latent); attention runs against the latent with kv_b_proj's key and
// value halves absorbed into the query and the output, so no per-head keys or
// values are ever built. The expanded form (per-head k and v) is kept as the
// reference the absorbed one is tested against.
#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

#include "mpool/nn/linear.h"
#include "mpool/nn/norm.h"
#include "mpool/nn/weights.h"

namespace mpool::nn {

/// An MLA block's sizes.
struct LatentAttentionShape {
  int64_t hidden = 0;
  int64_t heads = 0;
  int64_t q_lora_rank = 0;  ///< 0: q_proj from the hidden state, no bottleneck
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_dim = 0;  ///< per head, the part of q and k without positions
  int64_t qk_rope_dim = 0;  ///< per head, the rotated part (one key shared by all heads)
  int64_t v_dim = 0;
  bool bias = false;        ///< q_a_proj, kv_a_proj_with_mqa and o_proj have biases
  double norm_eps = 1e-6;   ///< of q_a_layernorm and kv_a_layernorm
  double scale = 0;         ///< the softmax scale; 0: 1/sqrt(qk_nope_dim + qk_rope_dim)
};

/// What project() makes of the hidden states; the rotary parts are not yet rotated.
struct LatentProjection {
  at::Tensor q_nope;  ///< (b, heads, n, qk_nope_dim)
  at::Tensor q_rope;  ///< (b, heads, n, qk_rope_dim)
  at::Tensor latent;  ///< (b, n, kv_lora_rank), normed: what the cache keeps
  at::Tensor k_rope;  ///< (b, 1, n, qk_rope_dim)
};

/// The block, under DeepSeek's names (q_proj or q_a_proj / q_a_layernorm /
/// q_b_proj, kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj).
class LatentAttention {
 public:
  static LatentAttention load(const Weights& w, const LatentAttentionShape& shape);

  LatentProjection project(const at::Tensor& x) const;
  /// Attention of the (rotated) queries over `latent` (b, t, kv_lora_rank) and the
  /// rotated `k_rope` (b, t, qk_rope_dim), absorbed: scores against the latent
  /// itself, values read as latents and mapped per head afterwards. `mask` and
  /// `causal` as nn::attend. Returns (b, heads, n, v_dim).
  /// Under kernels::RowInvariant (float32 on the CPU) each row's bits are its
  /// own: the per-head maps are summed row by row (kernels::rows_times, the row
  /// kernel), and with `prompt_start` (a prompt's rows at positions from there,
  /// `latent` and `k_rope` every position from 0, causal) the rows attend as
  /// their decode steps do (nn::attend_prompt).
  at::Tensor attend(const at::Tensor& q_nope, const at::Tensor& q_rope, const at::Tensor& latent,
                    const at::Tensor& k_rope, const at::Tensor& mask = {}, bool causal = false,
                    std::optional<int64_t> prompt_start = std::nullopt) const;
  /// The same through per-head keys and values expanded by kv_b_proj (the reference form).
  at::Tensor attend_expanded(const at::Tensor& q_nope, const at::Tensor& q_rope, const at::Tensor& latent,
                             const at::Tensor& k_rope, const at::Tensor& mask = {}, bool causal = false) const;
  /// (b, heads, n, v_dim) -> (b, n, hidden).
  at::Tensor output(const at::Tensor& attended) const;
  const LatentAttentionShape& shape() const noexcept { return shape_; }

 private:
  LatentAttentionShape shape_;
  Linear q_, q_a_, q_b_;  // q_ without a bottleneck, else q_a_ and q_b_
  std::optional<RMSNorm> q_a_norm_;
  Linear kv_a_, o_;
  RMSNorm kv_a_norm_;
  at::Tensor kv_b_;     // (heads * (qk_nope_dim + v_dim), kv_lora_rank)
  at::Tensor k_up_;     // (heads, qk_nope_dim, kv_lora_rank): latent -> per-head k_nope
  at::Tensor v_up_t_;   // (heads, kv_lora_rank, v_dim): latent -> per-head value, transposed
};

}  // namespace mpool::nn
