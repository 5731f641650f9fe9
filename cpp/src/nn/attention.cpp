#include "mpool/nn/attention.h"

#include <cmath>
#include <limits>

#include "mpool/base/error.h"
#include "mpool/nn/kernels.h"

namespace mpool::nn {

at::Tensor causal_mask(int64_t start, int64_t n, int64_t total, int64_t window, at::Device device) {
  at::Tensor qpos = at::arange(start, start + n, at::kLong).view({n, 1});
  at::Tensor kpos = at::arange(0, total, at::kLong).view({1, total});
  at::Tensor m = kpos <= qpos;
  if (window > 0) m = m.logical_and(kpos > qpos - window);
  return m.view({1, 1, n, total}).to(device);
}

at::Tensor key_padding_mask(const at::Tensor& mask) {
  return mask.to(at::kBool).view({mask.size(0), 1, 1, mask.size(1)});
}

at::Tensor additive_mask(const at::Tensor& keep, const at::Tensor& bias, at::ScalarType dtype) {
  at::Tensor out;
  if (keep.defined())
    out = at::zeros(keep.sizes(), keep.options().dtype(dtype))
              .masked_fill(keep.logical_not(), -std::numeric_limits<double>::infinity());
  if (bias.defined()) out = out.defined() ? out + bias.to(dtype) : bias.to(dtype);
  return out;
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask, bool causal,
                  std::optional<double> scale) {
  const int64_t b = q.size(0), heads = q.size(1), n = q.size(2), d = q.size(3), kvh = k.size(1);
  check(kvh > 0 && heads % kvh == 0, ErrorCode::kInvalidInput,
        std::to_string(heads) + " query heads do not group over " + std::to_string(kvh) + " key/value heads");
  const int64_t group = heads / kvh;
  // The backend: ATen picks flash / memory-efficient / math per device and dtype
  // from the inputs; this is the single call site, so a policy goes here.
  if (n == 1 && !mask.defined() && (!causal || k.size(2) == 1) && !kernels::prompt_rows()) {
    // One query row per head (a decode step): mpool's kernel, off ATen's OpenMP team.
    // (A prompt's chunk of one row runs as any chunk does: kernels::RowInvariant.)
    at::Tensor out = kernels::decode_attention(q, k, v, scale ? *scale : 1.0 / std::sqrt(static_cast<double>(d)));
    if (out.defined()) return out;
  }
  {
    // Many rows, or one with a mask: mpool's kernel (kernels.h), where it applies.
    at::Tensor out = kernels::attention(q, k, v, mask, causal && !mask.defined(),
                                        scale ? *scale : 1.0 / std::sqrt(static_cast<double>(d)));
    if (out.defined()) return out;
  }
  if (n == 1 && !mask.defined() && group > 1) {
    // One query per head: each kv group's queries become one block, no repeated keys.
    at::Tensor qg = q.reshape({b, kvh, group, d});
    return at::scaled_dot_product_attention(qg, k, v, {}, 0.0, false, scale).reshape({b, heads, 1, v.size(3)});
  }
  return at::scaled_dot_product_attention(q, k, v, mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt,
                                          0.0, causal && !mask.defined(), scale, group > 1);
}

at::Tensor attend_prompt(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t start, int64_t window,
                         const at::Tensor& mask, bool causal, std::optional<double> scale) {
  const double s = scale ? *scale : 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  at::Tensor out;
  if (q.scalar_type() == at::kBFloat16 && q.device().is_cpu()) {
    // A bfloat16 model's decode step widens its query and the cached keys and
    // values to float32 exactly, and rounds its output once: the same here.
    out = kernels::prompt_attention(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), start, window, s);
    if (out.defined()) out = out.to(at::kBFloat16);
  } else {
    out = kernels::prompt_attention(q, k, v, start, window, s);
  }
  return out.defined() ? out : attend(q, k, v, mask, causal, scale);
}

at::Tensor attend_rows(const at::Tensor& q, const std::vector<at::Tensor>& ks, const std::vector<at::Tensor>& vs) {
  check(q.dim() == 4 && q.size(2) == 1 && ks.size() == static_cast<size_t>(q.size(0)) && vs.size() == ks.size(),
        ErrorCode::kInvalidInput, "attend_rows: q must be (b, heads, 1, d) with b keys and values");
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  at::Tensor out = kernels::decode_attention_rows(q, ks, vs, scale);
  if (out.defined()) return out;
  // Each row as attend() runs it alone (the kernel's or ATen's path, as there).
  std::vector<at::Tensor> rows;
  for (size_t i = 0; i < ks.size(); ++i) rows.push_back(attend(q.narrow(0, static_cast<int64_t>(i), 1), ks[i], vs[i]));
  return at::cat(rows);
}

at::Tensor attend_rows(const at::Tensor& q, const std::vector<const KvCache*>& caches, size_t layer,
                       const std::vector<int64_t>& first) {
  check(q.dim() == 4 && q.size(2) == 1 && caches.size() == static_cast<size_t>(q.size(0)) &&
            first.size() == caches.size(),
        ErrorCode::kInvalidInput, "attend_rows: q must be (b, heads, 1, d) with b caches and starts");
  std::vector<int64_t> total;
  bool paged = true;
  for (const KvCache* c : caches) {
    total.push_back(c->length + 1);
    paged = paged && c->paged() && c->kind == CacheKind::kKeyValue && c->table.pool() == caches[0]->table.pool();
  }
  if (paged) {
    const LayerCache& storage = caches[0]->table.pool()->layer(layer);
    std::vector<const std::vector<int32_t>*> tables;
    for (const KvCache* c : caches) tables.push_back(&c->table.blocks());
    at::Tensor out = kernels::decode_attention_paged(q, storage.keys, storage.values, tables, first, total,
                                                     1.0 / std::sqrt(static_cast<double>(q.size(3))));
    if (out.defined()) return out;
  }
  std::vector<at::Tensor> ks, vs;
  for (size_t i = 0; i < caches.size(); ++i) {
    auto [k, v] = caches[i]->read(layer, first[i], total[i]);
    ks.push_back(k.to(q.scalar_type()));  // a cache may store another dtype than the model computes in
    vs.push_back(v.to(q.scalar_type()));
  }
  return attend_rows(q, ks, vs);
}

Attention Attention::load(const Weights& w, const AttentionShape& shape, const AttentionNames& names,
                          std::optional<double> qk_norm_eps) {
  Attention a;
  a.shape_ = shape;
  AttentionShape& s = a.shape_;
  check(s.hidden > 0 && s.heads > 0 && s.head_dim > 0, ErrorCode::kInvalidInput, "attention needs positive sizes");
  check(!s.scale || (std::isfinite(*s.scale) && *s.scale > 0), ErrorCode::kInvalidInput,
        "attention scale must be a positive finite number");
  if (s.kv_heads == 0) s.kv_heads = s.heads;
  if (s.out == 0) s.out = s.hidden;
  a.cross_ = s.kv_input != 0;
  const int64_t q = s.heads * s.head_dim, kv = s.kv_heads * s.head_dim;
  if (a.cross_) {
    a.q_ = Linear::load(w, names.q, q, s.hidden, s.qkv_bias);
    if (names.fused_kv.empty())
      a.qkv_ = FusedLinear::load(w, "", {{names.k, kv}, {names.v, kv}}, s.kv_input, s.qkv_bias);
    else
      a.qkv_ = FusedLinear{Linear::load(w, names.fused_kv, 2 * kv, s.kv_input, s.qkv_bias), {kv, kv}};
  } else {
    a.qkv_ = FusedLinear::load(w, names.fused_qkv, {{names.q, q}, {names.k, kv}, {names.v, kv}}, s.hidden, s.qkv_bias);
  }
  if (!names.o.empty()) a.o_ = Linear::load(w, names.o, s.out, q, s.o_bias);
  if (qk_norm_eps) {
    a.q_norm_ = RMSNorm::load(w, names.q_norm, s.head_dim, *qk_norm_eps);
    a.k_norm_ = RMSNorm::load(w, names.k_norm, s.head_dim, *qk_norm_eps);
  }
  return a;
}

void Attention::attach_lora(LoraAdapters& adapters, const std::string& q, const std::string& k, const std::string& v,
                            const std::string& o) {
  check(!cross_, ErrorCode::kInvalidInput, "LoRA adapters attach to self-attention only");
  const auto& s = shape_;
  const int64_t qw = s.heads * s.head_dim, kvw = s.kv_heads * s.head_dim;
  qkv_.linear.lora = adapters.fused({{q, qw}, {k, kvw}, {v, kvw}}, s.hidden);
  if (!o.empty()) {
    check(o_.defined(), ErrorCode::kInvalidInput, "LoRA module '" + o + "': this attention has no output projection");
    o_.lora = adapters.linear(o, s.out, qw);
  }
}

void Attention::attach_lora_fused(LoraAdapters& adapters, const std::string& qkv, const std::string& o) {
  check(!cross_, ErrorCode::kInvalidInput, "LoRA adapters attach to self-attention only");
  const auto& s = shape_;
  const int64_t qw = s.heads * s.head_dim, kvw = s.kv_heads * s.head_dim;
  qkv_.linear.lora = adapters.linear(qkv, qw + 2 * kvw, s.hidden);
  if (!o.empty()) o_.lora = adapters.linear(o, s.out, qw);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> Attention::project(const at::Tensor& x, const at::Tensor& context) const {
  const auto& s = shape_;
  const int64_t b = x.size(0), n = x.size(1);
  at::Tensor q, k, v;
  if (cross_) {
    check(context.defined(), ErrorCode::kInvalidInput, "cross-attention needs a context");
    q = q_(x);
    auto kv = qkv_(context);
    k = kv[0];
    v = kv[1];
  } else {
    auto qkv = qkv_(x);
    q = qkv[0];
    k = qkv[1];
    v = qkv[2];
  }
  const int64_t m = k.size(1);
  q = q.view({b, n, s.heads, s.head_dim});
  k = k.view({b, m, s.kv_heads, s.head_dim});
  v = v.view({b, m, s.kv_heads, s.head_dim});
  if (q_norm_) {
    q = (*q_norm_)(q);
    k = (*k_norm_)(k);
  }
  return {q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)};
}

at::Tensor Attention::output(const at::Tensor& attended, const at::Tensor& residual) const {
  const int64_t b = attended.size(0), n = attended.size(2);
  at::Tensor merged = attended.transpose(1, 2).reshape({b, n, shape_.heads * shape_.head_dim});
  if (!o_.defined()) return residual.defined() ? merged + residual : merged;
  return o_(merged, std::nullopt, residual);
}

at::Tensor Attention::operator()(const at::Tensor& x, const at::Tensor& mask, bool causal, const at::Tensor& context,
                                 const at::Tensor& residual) const {
  auto [q, k, v] = project(x, context);
  return output(attend(q, k, v, mask, causal, shape_.scale), residual);
}

}  // namespace mpool::nn
