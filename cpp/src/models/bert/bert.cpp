#include "models/bert/bert.h"

#include "mpool/base/error.h"
#include "mpool/nn/stop.h"

namespace mpool::models::bert {

BertEncoder::BertEncoder(BertConfig config, const nn::Weights& checkpoint) : config_(std::move(config)) {
  // Checkpoints are saved with or without the base-model prefix (BertModel vs
  // BertForMaskedLM, sentence-transformers vs transformers).
  const nn::Weights w = checkpoint.find_prefix({"", "bert.", "roberta.", "model.", "encoder_model."},
                                               "embeddings.word_embeddings.weight", "a BERT-family model");
  const auto& c = config_;
  const int64_t h = c.hidden_size;
  const nn::Weights emb = w.sub("embeddings");
  word_ = emb.get("word_embeddings.weight", {c.vocab_size, h});
  position_ = emb.get("position_embeddings.weight", {c.max_position_embeddings, h});
  if (c.type_vocab_size > 0) token_type_ = emb.get("token_type_embeddings.weight", {c.type_vocab_size, h});
  embedding_norm_ = nn::LayerNorm::load(emb, "LayerNorm", h, c.layer_norm_eps);
  nn::AttentionShape shape;
  shape.hidden = h;
  shape.heads = c.num_heads;
  shape.head_dim = h / c.num_heads;
  shape.qkv_bias = shape.o_bias = true;
  nn::AttentionNames names;
  names.q = "attention.self.query";
  names.k = "attention.self.key";
  names.v = "attention.self.value";
  names.o = "attention.output.dense";
  names.fused_qkv = "";  // never stored fused
  nn::MlpNames mlp;
  mlp.up = "intermediate.dense";
  mlp.down = "output.dense";
  const nn::Weights layers = w.sub("encoder.layer");
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const nn::Weights l = layers.sub(i);
    layers_.push_back(Layer{
        nn::Attention::load(l, shape, names),
        nn::LayerNorm::load(l, "attention.output.LayerNorm", h, c.layer_norm_eps),
        nn::Mlp::load(l, h, c.intermediate_size, c.hidden_act, /*gated=*/false, /*bias=*/true, mlp),
        nn::LayerNorm::load(l, "output.LayerNorm", h, c.layer_norm_eps),
    });
  }
}

at::Tensor BertEncoder::forward(const at::Tensor& input_ids, const at::Tensor& token_type_ids,
                                const at::Tensor& attention_mask) const {
  const int64_t b = input_ids.size(0), t = input_ids.size(1);
  check(t <= config_.max_tokens(), ErrorCode::kInvalidInput,
        "input of " + std::to_string(t) + " tokens is longer than the model's " +
            std::to_string(config_.max_position_embeddings) + " positions");
  at::Tensor positions;
  if (config_.padding_offset_positions) {
    // roberta (transformers' create_position_ids_from_input_ids): tokens count
    // from pad_token_id + 1, and any token whose id is pad_token_id (padding, or
    // the pad token written in a text) sits at pad_token_id without counting.
    const at::Tensor m = (input_ids != config_.pad_token_id).logical_and(attention_mask.to(at::kBool)).to(at::kLong);
    positions = m.cumsum(1) * m + config_.pad_token_id;
  } else {
    positions = at::arange(t, input_ids.options()).unsqueeze(0).expand({b, t});
  }
  at::Tensor x = at::embedding(word_, input_ids) + at::embedding(position_, positions);
  if (token_type_.defined()) x = x + at::embedding(token_type_, token_type_ids);
  x = embedding_norm_(x);
  const at::Tensor keep = nn::key_padding_mask(attention_mask);
  for (const auto& L : layers_) {
    nn::stop_point();
    x = L.attention_norm(L.attention(x, keep, false, {}, x));  // residual sums fused where they can be
    x = L.output_norm(L.mlp(x, x));
  }
  return x;
}

BertClassifier::BertClassifier(const BertConfig& config, const nn::Weights& checkpoint, int64_t num_labels) {
  const int64_t h = config.hidden_size;
  if (checkpoint.has("classifier.out_proj.weight")) {  // roberta / xlm-roberta
    dense_ = nn::Linear::load(checkpoint, "classifier.dense", h, h, true);
    out_ = nn::Linear::load(checkpoint, "classifier.out_proj", num_labels, h, true);
  } else {
    const nn::Weights w = checkpoint.find_prefix({"", "bert.", "model."}, "pooler.dense.weight",
                                                 "a BERT sequence classifier (pooler.dense or classifier.out_proj)");
    dense_ = nn::Linear::load(w, "pooler.dense", h, h, true);
    out_ = nn::Linear::load(checkpoint, "classifier", num_labels, h, true);
  }
}

at::Tensor BertClassifier::operator()(const at::Tensor& hidden) const {
  return out_(at::tanh(dense_(hidden.select(1, 0))));
}

}  // namespace mpool::models::bert
