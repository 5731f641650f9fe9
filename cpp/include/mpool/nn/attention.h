#pragma once
// Attention: masks, grouped-query attention, optional q/k norms, cross-attention,
// and the one place that calls scaled_dot_product_attention (where the backend
// choice lives).
#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "mpool/nn/kv_cache.h"
#include "mpool/nn/linear.h"
#include "mpool/nn/norm.h"
#include "mpool/nn/weights.h"

namespace mpool::nn {

// --- masks: boolean, true = attend; additive biases are float tensors added to the scores.

/// (1, 1, n, total): queries at positions [start, start + n) see keys at or before
/// their own position, and with `window` > 0 only the last `window` of them.
at::Tensor causal_mask(int64_t start, int64_t n, int64_t total, int64_t window, at::Device device);
/// (b, 1, 1, t) from a (b, t) 0/1 key padding mask.
at::Tensor key_padding_mask(const at::Tensor& mask);
/// A boolean mask turned into an additive one of `dtype` (0 where attended, -inf
/// elsewhere) plus `bias` (ALiBi slopes x distance, T5's relative bias, ...), which
/// broadcasts against (b, heads, n, total). Either may be undefined.
at::Tensor additive_mask(const at::Tensor& keep, const at::Tensor& bias, at::ScalarType dtype);

/// softmax(q k^T * scale + mask) v for q (b, heads, n, d) and k, v (b, kv_heads, t, d),
/// heads a multiple of kv_heads (grouped-query attention). `mask` is boolean or
/// additive (see above) or undefined; `causal` applies the plain causal mask
/// without building one. scale defaults to 1/sqrt(d). One query per group and no
/// mask (a decode step) folds the group into the query axis instead of repeating keys.
at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask = {},
                  bool causal = false, std::optional<double> scale = std::nullopt);

/// attend() for a prompt's rows as their decode steps compute them: q holds
/// positions [start, start + n), k and v every position from 0, each row sees
/// the positions at or before its own (with `window` > 0 only the last `window`
/// of them), `scale` as attend(). On the CPU in float32 each row gets the bits
/// attend() gives it as a decode step (kernels::prompt_attention), so a cached
/// block a decode step wrote holds what prefill would have computed; elsewhere
/// it is attend(q, k, v, mask, causal) with the caller's mask for the same rows.
at::Tensor attend_prompt(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start, int64_t window,
                         const at::Tensor& mask, bool causal, std::optional<double> scale = std::nullopt);

/// attend() for the one query row of each of several sequences with keys and
/// values of their own lengths (a batch's decode step): q (b, heads, 1, d) row i
/// against ks[i], vs[i] (1, kv_heads, t_i, d), no mask, the default scale.
/// Returns (b, heads, 1, dv); row i is the bits attend() gives it alone.
at::Tensor attend_rows(const at::Tensor& q, const std::vector<at::Tensor>& ks, const std::vector<at::Tensor>& vs);

/// attend_rows against the sequences' caches: row i against positions
/// [first[i], caches[i]->length + 1) of layer `layer` of caches[i] (a decode
/// step's, its new position written). Paged caches are read in their blocks,
/// where they lie; the bits are those of attend_rows on the same keys gathered.
at::Tensor attend_rows(const at::Tensor& q, const std::vector<const KvCache*>& caches, size_t layer,
                       const std::vector<int64_t>& first);

/// Where a checkpoint keeps an attention block's tensors, relative to its scope.
struct AttentionNames {
  std::string q = "q_proj", k = "k_proj", v = "v_proj";
  std::string o = "o_proj";  ///< empty: no output projection (output() only merges the heads)
  std::string fused_qkv = "qkv_proj";  ///< one stored q/k/v tensor, when a checkpoint has it
  std::string q_norm = "q_norm", k_norm = "k_norm";
  /// Cross-attention only: k and v stored as one tensor under this name (k rows
  /// first, then v: NV-Embed's "to_kv"), required; empty: the k and v parts.
  std::string fused_kv;
};

/// An attention block's sizes.
struct AttentionShape {
  int64_t hidden = 0;    ///< input width of the queries
  int64_t heads = 0;
  int64_t kv_heads = 0;  ///< heads of k and v (== heads without GQA)
  int64_t head_dim = 0;
  int64_t kv_input = 0;  ///< input width of k and v: 0 = hidden (self-attention)
  int64_t out = 0;       ///< output width: 0 = hidden
  bool qkv_bias = false;
  bool o_bias = false;
  /// The factor of q k^T in operator(): unset = 1/sqrt(head_dim); T5 uses 1 (it
  /// folds the scaling into its weights).
  std::optional<double> scale;
};

/// Multi-head attention with projections: self-attention (q, k and v as one GEMM)
/// or cross-attention (k and v from a context), optional per-head RMSNorm on q and k.
class Attention {
 public:
  /// Loads the projections under `w`; `qk_norm_eps` set: per-head RMSNorm on q and k.
  static Attention load(const Weights& w, const AttentionShape& shape, const AttentionNames& names = {},
                        std::optional<double> qk_norm_eps = std::nullopt);

  /// q (b, heads, n, d), k and v (b, kv_heads, n, d) of x (b, n, hidden), q/k
  /// normed; `context` (b, m, kv_input) gives k and v for cross-attention.
  std::tuple<at::Tensor, at::Tensor, at::Tensor> project(const at::Tensor& x, const at::Tensor& context = {}) const;
  /// (b, heads, n, d) -> (b, n, out), plus `residual` when given (the sum fused
  /// into the output projection where Linear can).
  at::Tensor output(const at::Tensor& attended, const at::Tensor& residual = {}) const;
  /// The whole block without positions or cache: project, attend (with
  /// shape().scale), output (+ `residual`).
  at::Tensor operator()(const at::Tensor& x, const at::Tensor& mask = {}, bool causal = false,
                        const at::Tensor& context = {}, const at::Tensor& residual = {}) const;
  const AttentionShape& shape() const noexcept { return shape_; }
  /// Attaches the LoRA updates of the projections trained as modules `q`, `k`,
  /// `v` and `o` (module paths; an empty `o`: none); self-attention only.
  void attach_lora(LoraAdapters& adapters, const std::string& q, const std::string& k, const std::string& v,
                   const std::string& o);
  /// The same for q, k and v trained as one fused module `qkv` (rows q, k, v).
  void attach_lora_fused(LoraAdapters& adapters, const std::string& qkv, const std::string& o);

 private:
  AttentionShape shape_;
  FusedLinear qkv_;  // self-attention: q, k, v; cross-attention: k, v (q_ apart)
  Linear q_, o_;
  bool cross_ = false;
  std::optional<RMSNorm> q_norm_, k_norm_;
};

}  // namespace mpool::nn
