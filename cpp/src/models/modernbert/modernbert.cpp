#include "models/modernbert/modernbert.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "mpool/base/error.h"
#include "mpool/nn/attention.h"
#include "mpool/nn/mlp.h"
#include "mpool/nn/stop.h"

namespace mpool::models::modernbert {
namespace {

// The padded (b, t) layout and the real tokens in it: the token-wise work runs on
// (n, c) rows of real tokens, attention on (b, t, c).
struct Packing {
  int64_t b = 0, t = 0;
  at::Tensor index;  // flat positions of the real tokens; undefined: no padding

  at::Tensor pack(const at::Tensor& padded) const {  // (b, t, c) -> (n, c)
    at::Tensor flat = padded.reshape({b * t, padded.size(-1)});
    return index.defined() ? flat.index_select(0, index) : flat;
  }
  at::Tensor unpack(const at::Tensor& tokens) const {  // (n, c) -> (b, t, c), zeros at the padding
    if (!index.defined()) return tokens.view({b, t, tokens.size(-1)});
    return at::zeros({b * t, tokens.size(-1)}, tokens.options()).index_copy_(0, index, tokens).view({b, t, -1});
  }
};

// Queries per block of the block-local form: the window's width, at least 16.
int64_t block_size(int64_t radius) { return std::max<int64_t>(2 * radius, 16); }

// Local attention as a dense mask: the query at i sees the real keys j with
// |i - j| <= radius, and itself (so a padded query far past its row's end still
// has a key: its output is dropped, and no NaN is made).
at::Tensor dense_local_mask(const at::Tensor& valid, int64_t radius) {
  const int64_t b = valid.size(0), t = valid.size(1);
  const at::Tensor pos = at::arange(t, valid.options().dtype(at::kLong));
  const at::Tensor distance = (pos.view({t, 1}) - pos.view({1, t})).abs();
  const at::Tensor window = distance <= radius;                                         // (t, t)
  const at::Tensor keep = window.unsqueeze(0).logical_and(valid.view({b, 1, t}));      // (b, t, t)
  return keep.logical_or(distance == 0).view({b, 1, t, t});
}

// Local attention block by block: the queries [i c, (i + 1) c) against the keys
// [i c - radius, (i + 1) c + radius). Same result as the dense mask, in
// O(t (c + 2 radius)) instead of O(t^2).
at::Tensor blocked_local_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const at::Tensor& valid, int64_t radius) {
  const int64_t b = q.size(0), heads = q.size(1), t = q.size(2), d = q.size(3);
  const int64_t c = block_size(radius), blocks = (t + c - 1) / c, padded = blocks * c, span = c + 2 * radius;
  // (b, heads, t, d) -> (b * blocks, heads, c, d)
  at::Tensor qb = at::constant_pad_nd(q, {0, 0, 0, padded - t})
                      .view({b, heads, blocks, c, d})
                      .permute({0, 2, 1, 3, 4})
                      .reshape({b * blocks, heads, c, d});
  // (b, heads, t, d) -> (b * blocks, heads, span, d): each block's window of keys.
  auto windows = [&](const at::Tensor& x) {
    return at::constant_pad_nd(x, {0, 0, radius, padded - t + radius})
        .unfold(2, span, c)                 // (b, heads, blocks, d, span)
        .permute({0, 2, 1, 4, 3})           // (b, blocks, heads, span, d)
        .reshape({b * blocks, heads, span, d});
  };
  // Key m of a block sits radius - m + s positions from its query s: in the
  // window when s <= m <= s + 2 radius; m == s + radius is the query itself.
  const at::Tensor s = at::arange(c, valid.options().dtype(at::kLong)).view({c, 1});
  const at::Tensor m = at::arange(span, valid.options().dtype(at::kLong)).view({1, span});
  const at::Tensor window = (m >= s).logical_and(m <= s + 2 * radius);  // (c, span)
  const at::Tensor self = m == s + radius;
  const at::Tensor key_valid = at::constant_pad_nd(valid, {radius, padded - t + radius}, 0).unfold(1, span, c);
  const at::Tensor mask = key_valid.unsqueeze(2)                  // (b, blocks, 1, span)
                              .logical_and(window)                // (b, blocks, c, span)
                              .logical_or(self)
                              .reshape({b * blocks, 1, c, span});
  return nn::attend(qb, windows(k), windows(v), mask)
      .view({b, blocks, heads, c, d})
      .permute({0, 2, 1, 3, 4})
      .reshape({b, heads, padded, d})
      .narrow(2, 0, t);
}

}  // namespace

nn::Weights ModernBertEncoder::base_model(const nn::Weights& checkpoint) {
  return checkpoint.find_prefix({"", "model."}, kProbeTensor, "a ModernBERT model");
}

ModernBertEncoder::ModernBertEncoder(ModernBertConfig config, const nn::Weights& checkpoint)
    : config_(std::move(config)) {
  const nn::Weights w = base_model(checkpoint);
  const auto& c = config_;
  const int64_t h = c.hidden_size;
  tok_embeddings_ = w.get("embeddings.tok_embeddings.weight", {c.vocab_size, h});
  embedding_norm_ = nn::LayerNorm::load(w, "embeddings.norm", h, c.norm_eps, c.norm_bias);
  const nn::Weights layers = w.sub("layers");
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const nn::Weights l = layers.sub(i);
    Layer layer;
    // transformers' layer 0 has no attention norm (the embedding norm precedes it).
    if (i > 0) layer.attn_norm = nn::LayerNorm::load(l, "attn_norm", h, c.norm_eps, c.norm_bias);
    // Wqkv's rows are q, k, v, each heads x head_dim (transformers' view(..., 3, heads, head_dim)).
    layer.wqkv = nn::Linear::load(l, "attn.Wqkv", 3 * h, h, c.attention_bias);
    layer.attn_out = nn::Linear::load(l, "attn.Wo", h, h, c.attention_bias);
    layer.mlp_norm = nn::LayerNorm::load(l, "mlp_norm", h, c.norm_eps, c.norm_bias);
    // GeGLU: Wi's first half goes through the activation, the second half gates it.
    layer.wi = nn::Linear::load(l, "mlp.Wi", 2 * c.intermediate_size, h, c.mlp_bias);
    layer.mlp_out = nn::Linear::load(l, "mlp.Wo", h, c.intermediate_size, c.mlp_bias);
    layer.sliding = c.sliding[static_cast<size_t>(i)];
    layers_.push_back(std::move(layer));
  }
  final_norm_ = nn::LayerNorm::load(w, "final_norm", h, c.norm_eps, c.norm_bias);
  global_rope_ = nn::Rope(c.global_rope, w.dtype(), w.device());
  local_rope_ = nn::Rope(c.local_rope, w.dtype(), w.device());
}

at::Tensor ModernBertEncoder::forward(const at::Tensor& input_ids, const at::Tensor& attention_mask) const {
  const auto& c = config_;
  check(input_ids.dim() == 2, ErrorCode::kInvalidInput, "input_ids must be (batch, tokens)");
  const int64_t b = input_ids.size(0), t = input_ids.size(1), h = c.hidden_size, heads = c.num_heads;
  check(t <= c.max_position_embeddings, ErrorCode::kInvalidInput,
        "input of " + std::to_string(t) + " tokens is longer than the model's " +
            std::to_string(c.max_position_embeddings) + " positions");
  const at::Tensor valid =
      attention_mask.defined() ? attention_mask.to(at::kBool) : at::ones({b, t}, input_ids.options().dtype(at::kBool));
  check(valid.sizes() == input_ids.sizes(), ErrorCode::kInvalidInput, "attention_mask must have input_ids' shape");
  const bool padded = !valid.all().item<bool>();

  Packing packing{b, t, {}};
  if (padded) packing.index = valid.flatten().nonzero().squeeze(1);
  at::Tensor x = packing.pack(input_ids.unsqueeze(-1)).squeeze(-1);
  x = embedding_norm_(at::embedding(tok_embeddings_, x));  // (n, h)

  // Masks and rotary tables, once per forward pass for every layer of a kind.
  const at::Tensor full_mask = padded ? nn::key_padding_mask(valid) : at::Tensor();
  const int64_t radius = c.window_radius();
  const bool blocked = local_mode_ == LocalAttention::kBlocked ||
                       (local_mode_ == LocalAttention::kAuto && t >= 2 * (block_size(radius) + 2 * radius));
  at::Tensor local_mask;
  const bool any_sliding = std::find(c.sliding.begin(), c.sliding.end(), true) != c.sliding.end();
  if (any_sliding && !blocked) local_mask = dense_local_mask(valid, radius);
  const auto [global_cos, global_sin] = global_rope_.tables(0, t);
  at::Tensor local_cos, local_sin;
  if (any_sliding) std::tie(local_cos, local_sin) = local_rope_.tables(0, t);

  for (const Layer& L : layers_) {
    nn::stop_point();
    const at::Tensor normed = L.attn_norm ? (*L.attn_norm)(x) : x;
    // (n, 3h) -> (3, b, heads, t, d)
    const at::Tensor qkv =
        packing.unpack(L.wqkv(normed)).view({b, t, 3, heads, c.head_dim}).permute({2, 0, 3, 1, 4});
    const at::Tensor& cos = L.sliding ? local_cos : global_cos;
    const at::Tensor& sin = L.sliding ? local_sin : global_sin;
    const at::Tensor q = nn::apply_rope(qkv[0], cos, sin), k = nn::apply_rope(qkv[1], cos, sin), v = qkv[2];
    at::Tensor attended;
    if (!L.sliding) attended = nn::attend(q, k, v, full_mask);
    else if (blocked) attended = blocked_local_attention(q, k, v, valid, radius);
    else attended = nn::attend(q, k, v, local_mask);
    x = L.attn_out(packing.pack(attended.transpose(1, 2).reshape({b, t, h})), std::nullopt, x);  // + x, fused
    const at::Tensor inner = L.wi(L.mlp_norm(x));
    const int64_t width = c.intermediate_size;
    x = L.mlp_out(nn::activate(c.hidden_activation, inner.narrow(-1, 0, width)) * inner.narrow(-1, width, width),
                  std::nullopt, x);
  }
  return packing.unpack(final_norm_(x));
}

ModernBertClassifier::ModernBertClassifier(const ModernBertConfig& config, const nn::Weights& checkpoint,
                                           int64_t num_labels)
    : mean_(config.classifier_mean_pooling), act_(config.classifier_activation) {
  const int64_t h = config.hidden_size;
  dense_ = nn::Linear::load(checkpoint, "head.dense", h, h, config.classifier_bias);
  norm_ = nn::LayerNorm::load(checkpoint, "head.norm", h, config.norm_eps, config.norm_bias);
  out_ = nn::Linear::load(checkpoint, "classifier", num_labels, h, true);
}

at::Tensor ModernBertClassifier::operator()(const at::Tensor& hidden, const at::Tensor& mask) const {
  at::Tensor pooled;
  if (mean_) {
    const at::Tensor m = mask.to(hidden.scalar_type()).unsqueeze(-1);
    pooled = (hidden * m).sum(1) / m.sum(1);
  } else {
    pooled = hidden.select(1, 0);  // right-padded: the first token is [CLS]
  }
  return out_(norm_(nn::activate(act_, dense_(pooled))));
}

}  // namespace mpool::models::modernbert
