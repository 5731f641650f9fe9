#include "models/jinabert/jinabert.h"

#include <algorithm>

#include "mpool/base/error.h"
#include "mpool/nn/positions.h"
#include "mpool/nn/stop.h"

namespace mpool::models::jinabert {

JinaBertEncoder::JinaBertEncoder(JinaBertConfig config, const nn::Weights& checkpoint, int64_t score_elements)
    : config_(std::move(config)), score_elements_(score_elements) {
  check(score_elements_ >= 1, ErrorCode::kInvalidInput,
        "jinabert: score_elements must be at least 1, got " + std::to_string(score_elements_));
  // JinaBertModel saves its tensors bare; JinaBertForMaskedLM under "bert.".
  const nn::Weights w = checkpoint.find_prefix({"", "bert.", "model."}, "embeddings.word_embeddings.weight",
                                               "a JinaBert model");
  const auto& c = config_;
  const int64_t h = c.hidden_size;
  const nn::Weights emb = w.sub("embeddings");
  word_ = emb.get("word_embeddings.weight", {c.vocab_size, h});
  if (c.type_vocab_size > 0) token_type_ = emb.get("token_type_embeddings.weight", {c.type_vocab_size, h});
  embedding_norm_ = nn::LayerNorm::load(emb, "LayerNorm", h, c.layer_norm_eps);
  slopes_ = nn::alibi_slopes(c.num_heads).to(word_.device());
  nn::AttentionShape shape;
  shape.hidden = h;
  shape.heads = shape.kv_heads = c.num_heads;
  shape.head_dim = h / c.num_heads;
  shape.qkv_bias = shape.o_bias = true;
  nn::AttentionNames names;
  names.q = "attention.self.query";
  names.k = "attention.self.key";
  names.v = "attention.self.value";
  names.o = "attention.output.dense";
  names.fused_qkv = "";  // never stored fused
  const bool gated = c.feed_forward != FeedForwardType::kOriginal;
  nn::MlpNames mlp;
  if (gated) {
    mlp.gate = mlp.up = "";  // one stored tensor: gated half first, then the linear half
    mlp.fused_gate_up = "mlp.gated_layers";
    mlp.down = "mlp.wo";
  } else {
    mlp.up = "intermediate.dense";
    mlp.down = "output.dense";
  }
  // GEGLU is torch's exact nn.GELU whatever hidden_act says.
  const nn::Activation act = c.feed_forward == FeedForwardType::kGeglu   ? nn::Activation::kGelu
                             : c.feed_forward == FeedForwardType::kReglu ? nn::Activation::kRelu
                                                                         : c.hidden_act;
  const nn::Weights layers = w.sub("encoder.layer");
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const nn::Weights l = layers.sub(i);
    layers_.push_back(Layer{
        nn::Attention::load(l, shape, names),
        nn::LayerNorm::load(l, "attention.output.LayerNorm", h, c.layer_norm_eps),
        nn::Mlp::load(l, h, c.intermediate_size, act, gated, /*bias=*/!gated, mlp, std::nullopt, /*down_bias=*/true),
        nn::LayerNorm::load(l, gated ? "mlp.layernorm" : "output.LayerNorm", h, c.layer_norm_eps),
    });
  }
}

at::Tensor JinaBertEncoder::attend(const nn::Attention& attention, const at::Tensor& x, const at::Tensor& keep) const {
  auto [q, k, v] = attention.project(x);
  const int64_t b = q.size(0), heads = q.size(1), t = q.size(2);
  const at::Tensor keys = at::arange(t, at::TensorOptions().dtype(at::kLong).device(x.device()));
  const int64_t rows = std::clamp<int64_t>(score_elements_ / std::max<int64_t>(1, b * heads * t), 1, t);
  std::vector<at::Tensor> blocks;
  for (int64_t start = 0; start < t; start += rows) {
    const int64_t n = std::min(rows, t - start);
    const at::Tensor bias = nn::alibi_symmetric_bias(slopes_, keys.narrow(0, start, n), keys);  // (heads, n, t)
    const at::Tensor mask = nn::additive_mask(keep, bias.unsqueeze(0), q.scalar_type());      // (b, heads, n, t)
    blocks.push_back(nn::attend(q.narrow(2, start, n), k, v, mask));
  }
  return attention.output(blocks.size() == 1 ? blocks.front() : at::cat(blocks, 2));
}

at::Tensor JinaBertEncoder::forward(const at::Tensor& input_ids, const at::Tensor& token_type_ids,
                                    const at::Tensor& attention_mask) const {
  const int64_t t = input_ids.size(1);
  check(t <= config_.max_tokens(), ErrorCode::kInvalidInput,
        "input of " + std::to_string(t) + " tokens is longer than the model's cap of " +
            std::to_string(config_.max_tokens()) + " (config.json: \"max_position_embeddings\")");
  at::Tensor x = at::embedding(word_, input_ids);
  if (token_type_.defined()) x = x + at::embedding(token_type_, token_type_ids);
  x = embedding_norm_(x);
  const at::Tensor keep = nn::key_padding_mask(attention_mask);
  for (const auto& L : layers_) {
    nn::stop_point();
    x = L.attention_norm(attend(L.attention, x, keep) + x);
    x = L.output_norm(L.mlp(x, x));
  }
  return x;
}

}  // namespace mpool::models::jinabert
