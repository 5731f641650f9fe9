#include "mpool/models/bert/bert.h"

#include <algorithm>
#include <map>

#include "mpool/core/error.h"
#include "mpool/loading/tensors.h"

namespace mpool::models::bert {
namespace {

// Checkpoints are saved with or without the base-model prefix (BertModel vs
// BertForMaskedLM, sentence-transformers vs transformers).
std::string find_prefix(const loading::Checkpoint& ckpt) {
  for (const char* prefix : {"", "bert.", "roberta.", "model.", "encoder_model."})
    if (ckpt.find(std::string(prefix) + "embeddings.word_embeddings.weight")) return prefix;
  throw Error(ErrorCode::kInvalidInput,
              "checkpoint has no embeddings.word_embeddings.weight (tried the prefixes '', 'bert.', 'roberta.', "
              "'model.'); is this a BERT-family model?");
}

}  // namespace

std::vector<std::string> BertEncoder::weight_names(const BertConfig& config, const std::string& p) {
  std::vector<std::string> names = {p + "embeddings.word_embeddings.weight",
                                    p + "embeddings.position_embeddings.weight",
                                    p + "embeddings.LayerNorm.weight", p + "embeddings.LayerNorm.bias"};
  if (config.type_vocab_size > 0) names.push_back(p + "embeddings.token_type_embeddings.weight");
  for (int64_t i = 0; i < config.num_layers; ++i) {
    std::string l = p + "encoder.layer." + std::to_string(i) + ".";
    for (const char* w : {"attention.self.query", "attention.self.key", "attention.self.value",
                          "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
                          "output.dense", "output.LayerNorm"}) {
      names.push_back(l + w + ".weight");
      names.push_back(l + w + ".bias");
    }
  }
  return names;
}

BertEncoder::BertEncoder(BertConfig config, const loading::Checkpoint& checkpoint, at::ScalarType dtype,
                         at::Device device)
    : config_(std::move(config)) {
  const std::string prefix = find_prefix(checkpoint);
  auto names = weight_names(config_, prefix);
  loading::LoadOptions options;
  options.dtype = dtype;
  options.device = device;
  auto loaded = loading::load_checkpoint(checkpoint, options, names);
  warnings_ = loaded.warnings;
  std::map<std::string, at::Tensor> w;
  for (auto& t : loaded.tensors) {
    weight_bytes_ += t.tensor.numel() * t.tensor.element_size();
    w[t.name.substr(prefix.size())] = t.tensor;
  }
  auto take = [&](const std::string& name, std::vector<int64_t> shape) {
    auto it = w.find(name);
    check(it != w.end(), ErrorCode::kInvalidInput, "checkpoint has no tensor '" + prefix + name + "'");
    at::Tensor t = it->second;
    check(t.sizes().vec() == shape, ErrorCode::kInvalidInput,
          "tensor '" + prefix + name + "' has shape " + c10::str(t.sizes()) + " but config.json implies " +
              c10::str(at::IntArrayRef(shape)));
    return t;
  };
  const int64_t h = config_.hidden_size, i = config_.intermediate_size;
  word_ = take("embeddings.word_embeddings.weight", {config_.vocab_size, h});
  position_ = take("embeddings.position_embeddings.weight", {config_.max_position_embeddings, h});
  if (config_.type_vocab_size > 0)
    token_type_ = take("embeddings.token_type_embeddings.weight", {config_.type_vocab_size, h});
  emb_ln_w_ = take("embeddings.LayerNorm.weight", {h});
  emb_ln_b_ = take("embeddings.LayerNorm.bias", {h});
  for (int64_t n = 0; n < config_.num_layers; ++n) {
    std::string l = "encoder.layer." + std::to_string(n) + ".";
    Layer layer;
    // One GEMM for q, k and v instead of three.
    layer.qkv_w = at::cat({take(l + "attention.self.query.weight", {h, h}), take(l + "attention.self.key.weight", {h, h}),
                           take(l + "attention.self.value.weight", {h, h})});
    layer.qkv_b = at::cat({take(l + "attention.self.query.bias", {h}), take(l + "attention.self.key.bias", {h}),
                           take(l + "attention.self.value.bias", {h})});
    layer.out_w = take(l + "attention.output.dense.weight", {h, h});
    layer.out_b = take(l + "attention.output.dense.bias", {h});
    layer.ln1_w = take(l + "attention.output.LayerNorm.weight", {h});
    layer.ln1_b = take(l + "attention.output.LayerNorm.bias", {h});
    layer.in_w = take(l + "intermediate.dense.weight", {i, h});
    layer.in_b = take(l + "intermediate.dense.bias", {i});
    layer.down_w = take(l + "output.dense.weight", {h, i});
    layer.down_b = take(l + "output.dense.bias", {h});
    layer.ln2_w = take(l + "output.LayerNorm.weight", {h});
    layer.ln2_b = take(l + "output.LayerNorm.bias", {h});
    layers_.push_back(std::move(layer));
  }
}

at::Tensor BertEncoder::activation(const at::Tensor& x) const {
  const std::string& act = config_.hidden_act;
  if (act == "gelu") return at::gelu(x);
  if (act == "relu") return at::relu(x);
  if (act == "silu" || act == "swish") return at::silu(x);
  return at::gelu(x, "tanh");  // gelu_new, gelu_pytorch_tanh
}

at::Tensor BertEncoder::forward(const at::Tensor& input_ids, const at::Tensor& token_type_ids,
                                const at::Tensor& attention_mask) const {
  const int64_t b = input_ids.size(0), t = input_ids.size(1), h = config_.hidden_size;
  const int64_t heads = config_.num_heads, hd = h / heads;
  check(t <= config_.max_position_embeddings - (config_.padding_offset_positions ? config_.pad_token_id + 1 : 0),
        ErrorCode::kInvalidInput,
        "input of " + std::to_string(t) + " tokens is longer than the model's " +
            std::to_string(config_.max_position_embeddings) + " positions");
  at::Tensor positions;
  if (config_.padding_offset_positions) {
    // roberta: real tokens count from pad_token_id + 1; padding sits at pad_token_id.
    at::Tensor m = attention_mask.to(at::kLong);
    positions = m.cumsum(1) * m + config_.pad_token_id;
  } else {
    positions = at::arange(t, input_ids.options()).unsqueeze(0).expand({b, t});
  }
  at::Tensor x = at::embedding(word_, input_ids) + at::embedding(position_, positions);
  if (token_type_.defined()) x = x + at::embedding(token_type_, token_type_ids);
  x = at::layer_norm(x, {h}, emb_ln_w_, emb_ln_b_, config_.layer_norm_eps);
  // Boolean key mask (b, 1, 1, t): true = attend.
  at::Tensor keep = attention_mask.to(at::kBool).view({b, 1, 1, t});
  for (const auto& L : layers_) {
    at::Tensor qkv = at::linear(x, L.qkv_w, L.qkv_b).view({b, t, 3, heads, hd}).permute({2, 0, 3, 1, 4});
    at::Tensor ctx = at::scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], keep);
    ctx = ctx.transpose(1, 2).reshape({b, t, h});
    x = at::layer_norm(at::linear(ctx, L.out_w, L.out_b) + x, {h}, L.ln1_w, L.ln1_b, config_.layer_norm_eps);
    at::Tensor inner = activation(at::linear(x, L.in_w, L.in_b));
    x = at::layer_norm(at::linear(inner, L.down_w, L.down_b) + x, {h}, L.ln2_w, L.ln2_b, config_.layer_norm_eps);
  }
  return x;
}

}  // namespace mpool::models::bert
