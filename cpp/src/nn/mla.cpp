#include "mpool/nn/mla.h"

#include <cmath>
#include <string>
#include <vector>

#include "mpool/base/error.h"
#include "mpool/nn/attention.h"
#include "mpool/nn/kernels.h"

namespace mpool::nn {

LatentAttention LatentAttention::load(const Weights& w, const LatentAttentionShape& shape) {
  LatentAttention a;
  a.shape_ = shape;
  LatentAttentionShape& s = a.shape_;
  check(s.hidden > 0 && s.heads > 0 && s.kv_lora_rank > 0 && s.qk_nope_dim > 0 && s.qk_rope_dim > 0 && s.v_dim > 0 &&
            s.q_lora_rank >= 0,
        ErrorCode::kInvalidInput, "latent attention needs positive sizes");
  const int64_t qk = s.qk_nope_dim + s.qk_rope_dim;
  if (s.scale == 0) s.scale = 1.0 / std::sqrt(static_cast<double>(qk));
  check(std::isfinite(s.scale) && s.scale > 0, ErrorCode::kInvalidInput,
        "latent attention scale must be a positive finite number");
  if (s.q_lora_rank == 0) {
    a.q_ = Linear::load(w, "q_proj", s.heads * qk, s.hidden, /*bias=*/false);
  } else {
    a.q_a_ = Linear::load(w, "q_a_proj", s.q_lora_rank, s.hidden, s.bias);
    a.q_a_norm_ = RMSNorm::load(w, "q_a_layernorm", s.q_lora_rank, s.norm_eps);
    a.q_b_ = Linear::load(w, "q_b_proj", s.heads * qk, s.q_lora_rank, /*bias=*/false);
  }
  a.kv_a_ = Linear::load(w, "kv_a_proj_with_mqa", s.kv_lora_rank + s.qk_rope_dim, s.hidden, s.bias);
  a.kv_a_norm_ = RMSNorm::load(w, "kv_a_layernorm", s.kv_lora_rank, s.norm_eps);
  a.kv_b_ = w.get("kv_b_proj.weight", {s.heads * (s.qk_nope_dim + s.v_dim), s.kv_lora_rank});
  const at::Tensor per_head = a.kv_b_.view({s.heads, s.qk_nope_dim + s.v_dim, s.kv_lora_rank});
  a.k_up_ = per_head.narrow(1, 0, s.qk_nope_dim);
  a.v_up_t_ = per_head.narrow(1, s.qk_nope_dim, s.v_dim).transpose(1, 2);
  a.o_ = Linear::load(w, "o_proj", s.hidden, s.heads * s.v_dim, s.bias);
  return a;
}

LatentProjection LatentAttention::project(const at::Tensor& x) const {
  const auto& s = shape_;
  const int64_t b = x.size(0), n = x.size(1);
  const at::Tensor q = (s.q_lora_rank == 0 ? q_(x) : q_b_((*q_a_norm_)(q_a_(x))))
                           .view({b, n, s.heads, s.qk_nope_dim + s.qk_rope_dim})
                           .transpose(1, 2);
  const at::Tensor kv = kv_a_(x);
  return LatentProjection{q.narrow(-1, 0, s.qk_nope_dim), q.narrow(-1, s.qk_nope_dim, s.qk_rope_dim),
                          kv_a_norm_(kv.narrow(-1, 0, s.kv_lora_rank)),
                          kv.narrow(-1, s.kv_lora_rank, s.qk_rope_dim).unsqueeze(1)};
}

at::Tensor LatentAttention::attend(const at::Tensor& q_nope, const at::Tensor& q_rope, const at::Tensor& latent,
                                   const at::Tensor& k_rope, const at::Tensor& mask, bool causal,
                                   std::optional<int64_t> prompt_start) const {
  // q_nope . k_nope = (q_nope W_uk) . latent: the query moves into latent space,
  // and every head shares one key (latent ++ k_rope) and one value (latent).
  const auto& s = shape_;
  // Row by row where a row's bits must be its own (batched products sum in
  // shapes that follow the row count): each head's maps through row kernels.
  const bool rows = kernels::row_invariant() && q_nope.device().is_cpu() && q_nope.scalar_type() == at::kFloat &&
                    k_up_.scalar_type() == at::kFloat;
  auto per_head = [&](const at::Tensor& x, auto&& map) {  // (b, heads, n, in) -> (b, heads, n, out)
    const int64_t b = x.size(0), n = x.size(2);
    std::vector<at::Tensor> heads;
    for (int64_t h = 0; h < s.heads; ++h) {
      const at::Tensor y = map(x.select(1, h).reshape({b * n, x.size(3)}), h);
      check(y.defined(), ErrorCode::kModelError,
            "latent attention: head " + std::to_string(h) + "'s row-by-row map does not take its inputs");
      heads.push_back(y.view({b, n, -1}));
    }
    return at::stack(heads, 1);
  };
  const at::Tensor q_latent =
      rows ? per_head(q_nope, [&](const at::Tensor& x, int64_t h) { return kernels::rows_times(x, k_up_[h]); })
           : at::matmul(q_nope, k_up_);
  const at::Tensor q = at::cat({q_latent, q_rope}, -1);
  const at::Tensor k = at::cat({latent, k_rope}, -1).unsqueeze(1);
  const at::Tensor attended = prompt_start ? nn::attend_prompt(q, k, latent.unsqueeze(1), *prompt_start, 0, mask,
                                                               causal, s.scale)
                                           : nn::attend(q, k, latent.unsqueeze(1), mask, causal, s.scale);
  if (!rows) return at::matmul(attended, v_up_t_);
  // Each head's value map as a linear: its rows of kv_b_proj, (v_dim, kv_lora_rank).
  return per_head(attended, [&](const at::Tensor& x, int64_t h) {
    return kernels::linear(x, kv_b_.narrow(0, h * (s.qk_nope_dim + s.v_dim) + s.qk_nope_dim, s.v_dim));
  });
}

at::Tensor LatentAttention::attend_expanded(const at::Tensor& q_nope, const at::Tensor& q_rope,
                                            const at::Tensor& latent, const at::Tensor& k_rope,
                                            const at::Tensor& mask, bool causal) const {
  const auto& s = shape_;
  const int64_t b = latent.size(0), t = latent.size(1);
  const at::Tensor kv =
      kernels::linear(latent, kv_b_).view({b, t, s.heads, s.qk_nope_dim + s.v_dim}).transpose(1, 2);
  const at::Tensor k =
      at::cat({kv.narrow(-1, 0, s.qk_nope_dim), k_rope.unsqueeze(1).expand({b, s.heads, t, s.qk_rope_dim})}, -1);
  return nn::attend(at::cat({q_nope, q_rope}, -1), k, kv.narrow(-1, s.qk_nope_dim, s.v_dim).contiguous(), mask,
                    causal, s.scale);
}

at::Tensor LatentAttention::output(const at::Tensor& attended) const {
  const int64_t b = attended.size(0), n = attended.size(2);
  return o_(attended.transpose(1, 2).reshape({b, n, shape_.heads * shape_.v_dim}));
}

}  // namespace mpool::nn
