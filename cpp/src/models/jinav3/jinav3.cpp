#include "models/jinav3/jinav3.h"

#include "mpool/base/error.h"
#include "mpool/nn/stop.h"

namespace mpool::models::jinav3 {

JinaV3Encoder::JinaV3Encoder(JinaV3Config config, const nn::Weights& checkpoint) : config_(std::move(config)) {
  // jina's remote-code checkpoints are saved under torch.nn.utils.parametrize:
  // every linear and embedding weight as M.parametrizations.weight.original.
  const nn::Weights w = (config_.remote_code ? nn::without_parametrizations(checkpoint) : checkpoint)
                            .find_prefix({"", "roberta.", "model."}, "embeddings.word_embeddings.weight",
                                         "a jina-embeddings-v3 model");
  const auto& c = config_;
  const int64_t h = c.hidden_size;
  // save_pretrained writes jina's own names (emb_ln, encoder.layers.N.mixer.Wqkv,
  // mixer.out_proj, norm1, norm2: transformers' conversion mapping, reversed);
  // the module's state_dict() has transformers' names. Both load.
  const bool module_names = w.has("embeddings.LayerNorm.weight") || w.has("layers.0.self_attn.q_proj.weight");
  const nn::Weights emb = w.sub("embeddings");
  word_ = emb.get("word_embeddings.weight", {c.vocab_size, h});
  if (c.type_vocab_size > 0) token_type_ = emb.get("token_type_embeddings.weight", {c.type_vocab_size, h});
  embedding_norm_ = module_names ? nn::LayerNorm::load(emb, "LayerNorm", h, c.layer_norm_eps)
                                 : nn::LayerNorm::load(w, "emb_ln", h, c.layer_norm_eps);
  nn::AttentionShape shape;
  shape.hidden = h;
  shape.heads = shape.kv_heads = c.num_heads;
  shape.head_dim = c.head_dim;
  shape.qkv_bias = shape.o_bias = true;
  nn::AttentionNames names;
  names.q = "self_attn.q_proj";
  names.k = "self_attn.k_proj";
  names.v = "self_attn.v_proj";
  names.o = module_names ? "self_attn.o_proj" : "mixer.out_proj";
  names.fused_qkv = module_names ? "" : "mixer.Wqkv";  // jina's names: q, k, v rows in one tensor
  nn::MlpNames mlp;
  mlp.up = "mlp.fc1";
  mlp.down = "mlp.fc2";
  const nn::Weights layers = w.sub(module_names ? "layers" : "encoder.layers");
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const nn::Weights l = layers.sub(i);
    if (!module_names)  // else a missing Wqkv would be reported as missing q_proj parts
      for (const char* part : {"mixer.Wqkv.weight", "mixer.Wqkv.bias"})
        check(l.has(part), ErrorCode::kInvalidInput, "checkpoint has no tensor '" + l.name(part) + "'");
    layers_.push_back(Layer{
        nn::Attention::load(l, shape, names),
        nn::LayerNorm::load(l, module_names ? "post_attention_layernorm" : "norm1", h, c.layer_norm_eps),
        nn::Mlp::load(l, h, c.intermediate_size, c.hidden_act, /*gated=*/false, /*bias=*/true, mlp),
        nn::LayerNorm::load(l, module_names ? "post_mlp_layernorm" : "norm2", h, c.layer_norm_eps),
    });
  }
  rope_ = nn::Rope(c.rope, w.dtype(), w.device());
  if (c.remote_code && !c.lora_adaptations.empty()) {
    // Its task adapters: stacked LoRA factors of every linear and embedding, one
    // slice per task of "lora_adaptations".
    check(!module_names, ErrorCode::kInvalidInput,
          "a remote-code jina-embeddings-v3 checkpoint must use jina's tensor names (emb_ln, encoder.layers.N.mixer)");
    nn::LoraAdapters lora = nn::LoraAdapters::stacked(w, c.lora_adaptations, c.lora_rank, c.lora_alpha);
    word_lora_ = lora.embedding("embeddings.word_embeddings", c.vocab_size, h);
    if (token_type_.defined())
      token_type_lora_ = lora.embedding("embeddings.token_type_embeddings", c.type_vocab_size, h);
    for (size_t i = 0; i < layers_.size(); ++i) {
      const std::string l = "encoder.layers." + std::to_string(i) + ".";
      layers_[i].attention.attach_lora_fused(lora, l + "mixer.Wqkv", l + "mixer.out_proj");
      layers_[i].mlp.attach_lora(lora, l + "mlp.fc1", l + "mlp.fc2");
    }
    lora.skip("pooler");  // jina's LoRA parametrizes every linear, the unused pooler's too
    lora.finish();
  }
}

void JinaV3Encoder::attach_lora(nn::LoraAdapters& adapters) {
  const auto& c = config_;
  const std::string p = adapters.find_prefix({"", "roberta."});
  word_lora_ = adapters.embedding(p + "embeddings.word_embeddings", c.vocab_size, c.hidden_size);
  if (token_type_.defined())
    token_type_lora_ = adapters.embedding(p + "embeddings.token_type_embeddings", c.type_vocab_size, c.hidden_size);
  for (size_t i = 0; i < layers_.size(); ++i) {
    const std::string l = p + "layers." + std::to_string(i) + ".";
    layers_[i].attention.attach_lora(adapters, l + "self_attn.q_proj", l + "self_attn.k_proj", l + "self_attn.v_proj",
                                     l + "self_attn.o_proj");
    layers_[i].mlp.attach_lora(adapters, l + "mlp.fc1", l + "mlp.fc2");
  }
  adapters.skip(p + "pooler");  // not on the embedding path: its update changes no embedding
  adapters.finish();
}

at::Tensor JinaV3Encoder::forward(const at::Tensor& input_ids, const at::Tensor& token_type_ids,
                                  const at::Tensor& attention_mask) const {
  check(input_ids.dim() == 2, ErrorCode::kInvalidInput, "input_ids must be (batch, tokens)");
  const int64_t t = input_ids.size(1);
  check(t <= config_.max_tokens(), ErrorCode::kInvalidInput,
        "input of " + std::to_string(t) + " tokens is longer than the model's cap of " +
            std::to_string(config_.max_tokens()) + " (config.json: \"max_position_embeddings\")");
  at::Tensor x = nn::apply_lora_embedding(word_lora_.get(), input_ids, at::embedding(word_, input_ids));
  if (token_type_.defined())
    x = x + nn::apply_lora_embedding(token_type_lora_.get(), token_type_ids, at::embedding(token_type_, token_type_ids));
  x = embedding_norm_(x);
  const at::Tensor keep = nn::key_padding_mask(attention_mask);
  const auto [cos, sin] = rope_.tables(0, t);
  for (const auto& L : layers_) {
    nn::stop_point();
    auto [q, k, v] = L.attention.project(x);
    const at::Tensor attended = nn::attend(rope_.apply(q, cos, sin), rope_.apply(k, cos, sin), v, keep);
    x = L.attention_norm(L.attention.output(attended, x));  // residual sums fused where they can be
    x = L.mlp_norm(L.mlp(x, x));
  }
  return x;
}

}  // namespace mpool::models::jinav3
