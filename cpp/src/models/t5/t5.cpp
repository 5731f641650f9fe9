#include "models/t5/t5.h"

#include <limits>
#include <optional>

#include "mpool/base/error.h"
#include "mpool/nn/stop.h"

namespace mpool::models::t5 {
namespace {

// transformers clamps float16 hidden states after each sub-layer so that an
// overflow to inf does not turn into NaN downstream (T5-XXL overflows in float16).
at::Tensor clamp_half(const at::Tensor& h) {
  if (h.scalar_type() != at::kHalf) return h;
  const double max = static_cast<float>(std::numeric_limits<c10::Half>::max());
  const at::Tensor limit = at::where(at::isinf(h).any(), at::scalar_tensor(max - 1000, h.options()),
                                     at::scalar_tensor(max, h.options()));
  return at::clamp(h, -limit, limit);
}

}  // namespace

nn::Weights T5Encoder::root(const nn::Weights& checkpoint) {
  return checkpoint.find_prefix(kCheckpointPrefixes, "encoder.final_layer_norm.weight", "a T5 encoder");
}

T5Encoder T5Encoder::load(const nn::Weights& w, const T5Config& c) {
  T5Encoder e;
  e.config_ = c;
  const int64_t d = c.d_model;
  const double eps = c.layer_norm_epsilon;
  // The encoder looks its ids up in encoder.embed_tokens, which T5EncoderModel
  // normally ties to shared; checkpoints store either or both. When both are
  // stored they can differ (a model whose tie was not made), and the encoder's
  // own table is the one transformers runs.
  e.embed_ = w.get(w.has("encoder.embed_tokens.weight") ? "encoder.embed_tokens.weight" : "shared.weight",
                   {c.vocab_size, d});
  const nn::Weights blocks = w.sub("encoder.block");
  e.relative_bias_ =
      nn::T5RelativeBias::load(blocks.sub(0).sub("layer.0.SelfAttention"), "relative_attention_bias",
                               c.relative_attention_num_buckets, c.num_heads, c.relative_attention_max_distance,
                               /*bidirectional=*/true);
  nn::AttentionShape shape;
  shape.hidden = d;
  shape.heads = c.num_heads;
  shape.head_dim = c.d_kv;
  shape.scale = 1.0;  // T5 does not scale q k^T
  nn::AttentionNames names;
  names.q = "q";
  names.k = "k";
  names.v = "v";
  names.o = "o";
  names.fused_qkv = "";  // never stored fused
  nn::MlpNames mlp;
  mlp.gate = "wi_0";
  mlp.up = c.is_gated_act ? "wi_1" : "wi";
  mlp.down = "wo";
  mlp.fused_gate_up = "";
  const auto wo_dtype = w.dtype() == at::kHalf ? std::optional<at::ScalarType>(at::kFloat) : std::nullopt;
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const nn::Weights attention = blocks.sub(i).sub("layer.0"), ff = blocks.sub(i).sub("layer.1");
    e.layers_.push_back(Layer{
        nn::RMSNorm::load(attention, "layer_norm", d, eps),
        nn::Attention::load(attention.sub("SelfAttention"), shape, names),
        nn::RMSNorm::load(ff, "layer_norm", d, eps),
        nn::Mlp::load(ff.sub("DenseReluDense"), d, c.d_ff, c.dense_act_fn, c.is_gated_act, /*bias=*/false, mlp,
                      wo_dtype),
    });
  }
  e.final_norm_ = nn::RMSNorm::load(w.sub("encoder"), "final_layer_norm", d, eps);
  return e;
}

at::Tensor T5Encoder::forward(const at::Tensor& input_ids, const at::Tensor& attention_mask) const {
  check(input_ids.defined() && input_ids.dim() == 2 && input_ids.size(0) > 0 && input_ids.size(1) > 0,
        ErrorCode::kInvalidInput,
        "t5 encoder: input_ids must be (batch, tokens) with both positive, got " +
            (input_ids.defined() ? c10::str(input_ids.sizes()) : std::string("none")));
  check(!at::isFloatingType(input_ids.scalar_type()) && input_ids.scalar_type() != at::kBool &&
            !at::isComplexType(input_ids.scalar_type()),
        ErrorCode::kInvalidInput, "t5 encoder: input_ids must be integers");
  const at::Device device = embed_.device();
  const at::Tensor ids = input_ids.to(device, at::kLong);
  const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  check(lo >= 0 && hi < config_.vocab_size, ErrorCode::kInvalidInput,
        "t5 encoder: input_ids must be in [0, " + std::to_string(config_.vocab_size) + "), got ids in [" +
            std::to_string(lo) + ", " + std::to_string(hi) + "]");
  const int64_t n = ids.size(1);
  at::Tensor keep;
  if (attention_mask.defined()) {
    check(attention_mask.sizes() == ids.sizes(), ErrorCode::kInvalidInput,
          "t5 encoder: attention_mask " + c10::str(attention_mask.sizes()) + " must match input_ids " +
              c10::str(ids.sizes()));
    const at::Tensor m = attention_mask.to(device) != 0;
    check(m.any(1).all().item<bool>(), ErrorCode::kInvalidInput,
          "t5 encoder: every sequence's attention_mask must keep at least one token");
    keep = nn::key_padding_mask(m);
  }
  const at::ScalarType dtype = embed_.scalar_type();
  at::Tensor h = at::embedding(embed_, ids);
  // One relative bias for every layer (the first layer's), the padding added to it.
  const at::Tensor bias = nn::additive_mask(keep, relative_bias_(n, n), dtype);
  // h turns float32 after a float32 wo (float16 weights); each block's input is
  // the normed h in the weights' dtype, as T5LayerNorm casts it.
  for (const Layer& l : layers_) {
    nn::stop_point();
    h = clamp_half(h + l.attention(l.attention_norm(h).to(dtype), bias));
    h = clamp_half(h + l.mlp(l.mlp_norm(h).to(dtype)));
  }
  return final_norm_(h).to(dtype);
}

}  // namespace mpool::models::t5
