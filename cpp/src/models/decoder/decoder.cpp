#include "models/decoder/decoder.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <map>
#include <tuple>

#include "mpool/base/error.h"
#include "mpool/nn/kernels.h"
#include "mpool/nn/moe.h"
#include "mpool/nn/stop.h"

namespace mpool::models::decoder {

Decoder::Decoder(DecoderConfig config, const nn::Weights& checkpoint)
    : Decoder(config,
              checkpoint.find_prefix({"model.", ""}, "embed_tokens.weight", "a " + config.model_type + " decoder"),
              checkpoint) {}

Decoder::Decoder(DecoderConfig config, const nn::Weights& model, const nn::Weights& head)
    : config_(std::move(config)), dtype_(model.dtype()), device_(model.device()) {
  const auto& c = config_;
  const int64_t h = c.hidden_size;
  embed_ = model.get("embed_tokens.weight", {c.vocab_size, h});
  norm_ = nn::RMSNorm::load(model, "norm", h, c.rms_norm_eps);
  // The head sits outside the base model; a bare base model (an embedder's
  // checkpoint) has none and only embeds.
  // In an int8 view the head is quantized; a tied one reads the embedding again
  // as its int8 copy, while lookups keep the float table.
  if (c.tie_word_embeddings)
    lm_head_ = model.int8_linears() ? nn::Linear::load(model, "embed_tokens", c.vocab_size, h, false)
                                    : nn::Linear::of({embed_, {}});
  else if (head.has("lm_head.weight"))
    lm_head_ = nn::Linear::load(head, "lm_head", c.vocab_size, h, false);
  nn::AttentionShape shape;
  shape.hidden = h;
  shape.heads = c.num_heads;
  shape.kv_heads = c.num_kv_heads;
  shape.head_dim = c.head_dim;
  shape.qkv_bias = c.qkv_bias;
  shape.o_bias = c.o_bias;
  nn::MoeShape moe;
  moe.hidden = h;
  moe.num_experts = c.moe.num_experts;
  moe.top_k = c.moe.num_experts_per_tok;
  moe.expert_inner = c.moe.moe_intermediate_size;
  moe.normalize_top_k = c.moe.norm_topk_prob;
  moe.shared_inner = c.moe.shared_expert_intermediate_size;
  moe.router = c.moe.grouped_sigmoid ? nn::RouterKind::kGroupedSigmoid : nn::RouterKind::kSoftmax;
  moe.groups = c.moe.n_group;
  moe.top_groups = c.moe.topk_group;
  moe.scale = c.moe.routed_scaling_factor;
  moe.shared_experts_inner = c.moe.shared_experts_intermediate_size;
  nn::LatentAttentionShape mla;
  mla.hidden = h;
  mla.heads = c.num_heads;
  mla.q_lora_rank = c.mla.q_lora_rank;
  mla.kv_lora_rank = c.mla.kv_lora_rank;
  mla.qk_nope_dim = c.mla.qk_nope_head_dim;
  mla.qk_rope_dim = c.mla.qk_rope_head_dim;
  mla.v_dim = c.mla.v_head_dim;
  mla.bias = c.mla.bias;
  mla.scale = c.mla.softmax_scale;
  const nn::Weights layers = model.sub("layers");
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const nn::Weights l = layers.sub(i);
    std::shared_ptr<const nn::FeedForward> feed_forward;
    if (c.is_moe_layer(i))
      feed_forward = std::make_shared<nn::MoeFeedForward>(nn::MoeFeedForward::load(l.sub("mlp"), moe));
    else
      feed_forward = std::make_shared<nn::Mlp>(nn::Mlp::load(l.sub("mlp"), h, c.intermediate_size,
                                                             nn::Activation::kSilu, /*gated=*/true, c.mlp_bias));
    Layer layer{nn::RMSNorm::load(l, "input_layernorm", h, c.rms_norm_eps),
                nn::RMSNorm::load(l, "post_attention_layernorm", h, c.rms_norm_eps),
                {},
                std::nullopt,
                std::move(feed_forward)};
    if (c.is_mla())
      layer.mla = nn::LatentAttention::load(l.sub("self_attn"), mla);
    else
      layer.attention = nn::Attention::load(l.sub("self_attn"), shape, {},
                                            c.qk_norm ? std::optional<double>(c.rms_norm_eps) : std::nullopt);
    layers_.push_back(std::move(layer));
  }
  rope_ = nn::Rope(c.rope, dtype_, device_,
                   c.is_mla() && c.mla.rope_interleave ? nn::RopeLayout::kInterleaved : nn::RopeLayout::kRotateHalf);
}

nn::KvCache Decoder::new_cache(int64_t capacity, std::optional<at::ScalarType> dtype) const {
  const auto options = at::TensorOptions().dtype(dtype.value_or(dtype_)).device(device_);
  if (config_.is_mla())
    return nn::KvCache::latent(config_.num_layers, config_.mla.kv_lora_rank, config_.mla.qk_rope_head_dim, capacity,
                               options);
  return nn::KvCache::key_value(config_.num_layers, config_.num_kv_heads, config_.head_dim, capacity, options);
}

std::shared_ptr<nn::KvBlockPool> Decoder::new_block_pool(int64_t block_size, int64_t blocks,
                                                         std::optional<at::ScalarType> dtype) const {
  const auto options = at::TensorOptions().dtype(dtype.value_or(dtype_)).device(device_);
  if (config_.is_mla())
    return nn::KvBlockPool::latent(config_.num_layers, config_.mla.kv_lora_rank, config_.mla.qk_rope_head_dim,
                                   block_size, blocks, options);
  return nn::KvBlockPool::key_value(config_.num_layers, config_.num_kv_heads, config_.head_dim, block_size, blocks,
                                    options);
}

at::Tensor Decoder::embed_tokens(const std::vector<int64_t>& ids) const {
  c10::InferenceMode guard;
  return at::embedding(embed_, at::tensor(ids, at::kLong).to(device_));
}

at::Tensor Decoder::run(at::Tensor x, int64_t start, nn::KvCache* cache, const at::Tensor& key_mask,
                        bool causal_run) const {
  check(causal_run || !cache, ErrorCode::kInvalidInput, "a bidirectional run takes no cache");
  const int64_t b = x.size(0), n = x.size(1), total = start + n;
  // A prompt's chunk rotates as the whole prompt would (KvCache::prompt_length).
  auto [cos, sin] = rope_.tables(start, n, cache ? cache->prompt_length : 0);
  // Masks: only built when the plain causal case does not apply; one per window.
  std::map<int64_t, at::Tensor> masks;
  auto mask_for = [&](int64_t window) -> at::Tensor {
    auto it = masks.find(window);
    if (it != masks.end()) return it->second;
    at::Tensor m = nn::causal_mask(start, n, total, window, device_);
    if (key_mask.defined()) m = m.logical_and(nn::key_padding_mask(key_mask).view({b, 1, 1, total}));
    return masks[window] = m;
  };
  // A layer's mask: none for a decode step, the plain causal one where it applies,
  // else a built one (as {mask, causal}).
  auto mask_of = [&](int64_t window) -> std::pair<at::Tensor, bool> {
    // (A prompt's chunk of one row is masked as any chunk: kernels::RowInvariant.)
    if (cache && n == 1 && !nn::kernels::prompt_rows()) return {at::Tensor(), false};
    if (!causal_run)  // bidirectional: padding only, windows do not apply
      return {key_mask.defined() ? nn::key_padding_mask(key_mask).view({b, 1, 1, total}) : at::Tensor(), false};
    const bool plain = window == 0 && (cache ? start == 0 : !key_mask.defined());
    return plain ? std::pair<at::Tensor, bool>{at::Tensor(), true} : std::pair{mask_for(window), false};
  };
  // A prompt whose blocks the prefix cache keeps attends as its decode steps
  // would (kernels::RowInvariant), so a block a decode step wrote (a
  // conversation's earlier answer) holds what prefill would compute.
  const bool prompt = cache && nn::kernels::prompt_rows() && !key_mask.defined();
  for (size_t li = 0; li < layers_.size(); ++li) {
    nn::stop_point();
    const Layer& L = layers_[li];
    const int64_t window = config_.sliding_window[li];
    const auto [mask, causal] = mask_of(window);
    if (L.mla) {
      // The cache keeps the normed latent and the rotated shared key, nothing per head.
      nn::LatentProjection p = L.mla->project(L.input_norm(x));
      at::Tensor q_rope = rope_.apply(p.q_rope, cos, sin);
      at::Tensor latent = p.latent, k_rope = rope_.apply(p.k_rope, cos, sin).squeeze(1);
      if (cache) std::tie(latent, k_rope) = cache->append_latent(li, start, latent, k_rope);
      x = x + L.mla->output(L.mla->attend(p.q_nope, q_rope, latent, k_rope, mask, causal,
                                          prompt ? std::optional<int64_t>(start) : std::nullopt));
    } else {
      auto [q, k, v] = L.attention.project(L.input_norm(x));
      q = rope_.apply(q, cos, sin);
      k = rope_.apply(k, cos, sin);
      if (cache) {
        // A decode step under a sliding window reads only the window's keys.
        const int64_t first =
            n == 1 && window > 0 && !nn::kernels::prompt_rows() ? std::max<int64_t>(0, total - window) : 0;
        std::tie(k, v) = cache->append(li, start, k, v, first);
      }
      const at::Tensor attended = prompt ? nn::attend_prompt(q, k, v, start, window, mask, causal)
                                      : nn::attend(q, k, v, mask, causal);
      x = L.attention.output(attended, x);  // + x, fused where it can be
    }
    x = L.feed_forward->plus(L.post_attention_norm(x), x);
  }
  if (cache) cache->length = total;
  return norm_(x);
}

at::Tensor Decoder::extend_embeddings(const at::Tensor& embeddings, nn::KvCache& cache) const {
  const int64_t n = embeddings.size(0);
  check(n > 0, ErrorCode::kInvalidInput, "no tokens to run");
  check(cache.length + n <= cache.capacity, ErrorCode::kInvalidInput,
        "sequence of " + std::to_string(cache.length + n) + " tokens exceeds the cache's " +
            std::to_string(cache.capacity));
  c10::InferenceMode guard;
  at::Tensor input = embeddings.to(device_, dtype_);
  const auto& rope = config_.rope;
  if (config_.longrope_recomputes) {
    const int64_t original = rope.original_max_position_embeddings;
    // (A prompt longer than the original length rotates every chunk with the long
    // factors already: KvCache::prompt_length.)
    if (cache.length > 0 && cache.length <= original && cache.length + n > original &&
        cache.prompt_length <= original) {
      // Crossing into the long factors: every cached key was rotated with the
      // short ones, so recompute the whole sequence (as transformers' Phi-3 does).
      std::vector<at::Tensor> all = cache.replay;
      all.push_back(input);
      input = at::cat(all);
      cache.clear();
    }
    cache.replay.push_back(input.narrow(0, input.size(0) - n, n));
  }
  const int64_t m = input.size(0);
  at::Tensor hidden = run(input.unsqueeze(0), cache.length, &cache, at::Tensor());
  return logits(hidden.select(1, m - 1)).view({-1});
}

at::Tensor Decoder::decode_batch(const std::vector<int64_t>& ids, const std::vector<nn::KvCache*>& caches) const {
  check(!ids.empty() && ids.size() == caches.size(), ErrorCode::kInvalidInput,
        "decode_batch needs one cache per id (" + std::to_string(ids.size()) + " ids, " +
            std::to_string(caches.size()) + " caches)");
  for (size_t i = 0; i < ids.size(); ++i) {
    check(caches[i] != nullptr && caches[i]->length + 1 <= caches[i]->capacity, ErrorCode::kInvalidInput,
          "decode_batch: sequence #" + std::to_string(i) + "'s cache is full");
    check(ids[i] >= 0 && ids[i] < config_.vocab_size, ErrorCode::kInvalidInput,
          "decode_batch: token id " + std::to_string(ids[i]) + " is outside the vocabulary");
  }
  if (config_.is_mla()) return CausalLM::decode_batch(ids, caches);
  c10::InferenceMode guard;
  std::vector<at::Tensor> out(ids.size());
  std::vector<size_t> together;
  const auto& rope = config_.rope;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t length = caches[i]->length;
    if (config_.longrope_recomputes && length > 0 && length == rope.original_max_position_embeddings)
      out[i] = extend({ids[i]}, *caches[i]);  // crosses to the long factors: recomputes its sequence
    else
      together.push_back(i);
  }
  const auto group = static_cast<size_t>(std::max<int64_t>(1, nn::kernels::row_kernel_max_rows()));
  for (size_t g = 0; g < together.size(); g += group) {
    std::vector<int64_t> rows_ids;
    std::vector<nn::KvCache*> rows_caches;
    for (size_t k = g; k < std::min(together.size(), g + group); ++k) {
      rows_ids.push_back(ids[together[k]]);
      rows_caches.push_back(caches[together[k]]);
    }
    const at::Tensor x = embed_tokens(rows_ids).to(dtype_);
    if (config_.longrope_recomputes)
      for (size_t k = 0; k < rows_caches.size(); ++k)
        rows_caches[k]->replay.push_back(x.narrow(0, static_cast<int64_t>(k), 1));
    const at::Tensor logits = decode_rows(x.unsqueeze(1), rows_caches);
    for (size_t k = 0; k < rows_caches.size(); ++k) out[together[g + k]] = logits[static_cast<int64_t>(k)];
  }
  return at::stack(out);
}

at::Tensor Decoder::decode_rows(at::Tensor x, const std::vector<nn::KvCache*>& caches) const {
  const auto b = static_cast<int64_t>(caches.size());
  // Each row's rotary tables at its own position, (b, 1, 1, rotary) to broadcast over the heads.
  std::vector<at::Tensor> cos_rows, sin_rows;
  for (auto* cache : caches) {
    auto [c, s] = rope_.tables(cache->length, 1);
    cos_rows.push_back(c);
    sin_rows.push_back(s);
  }
  const at::Tensor cos = at::stack(cos_rows).unsqueeze(1), sin = at::stack(sin_rows).unsqueeze(1);
  for (size_t li = 0; li < layers_.size(); ++li) {
    const Layer& L = layers_[li];
    const int64_t window = config_.sliding_window[li];
    auto [q, k, v] = L.attention.project(L.input_norm(x));
    q = rope_.apply(q, cos, sin);
    k = rope_.apply(k, cos, sin);
    std::vector<const nn::KvCache*> readers;
    std::vector<int64_t> firsts;
    for (int64_t i = 0; i < b; ++i) {
      nn::KvCache& cache = *caches[static_cast<size_t>(i)];
      const int64_t total = cache.length + 1;
      firsts.push_back(window > 0 ? std::max<int64_t>(0, total - window) : 0);
      cache.write(li, cache.length, k.narrow(0, i, 1), v.narrow(0, i, 1));
      readers.push_back(&cache);
    }
    x = x + L.attention.output(nn::attend_rows(q, readers, li, firsts));
    x = x + (*L.feed_forward)(L.post_attention_norm(x));
  }
  for (auto* cache : caches) cache->length += 1;
  return logits(norm_(x).squeeze(1));
}

at::Tensor Decoder::logits(const at::Tensor& hidden) const {
  check(lm_head_.defined(), ErrorCode::kInvalidInput,
        "this checkpoint has no lm_head.weight (a base model): it can embed but not generate");
  return lm_head_(hidden).to(at::kCPU, at::kFloat);
}

at::Tensor Decoder::all_logits(const std::vector<int64_t>& ids) const {
  c10::InferenceMode guard;
  at::Tensor hidden = run(embed_tokens(ids).unsqueeze(0), 0, nullptr, at::Tensor());
  return logits(hidden.squeeze(0));
}

at::Tensor Decoder::hidden_states(const at::Tensor& ids, const at::Tensor& mask, bool causal) const {
  c10::InferenceMode guard;
  const bool padded = mask.defined() && !mask.all().item<bool>();
  return run(at::embedding(embed_, ids.to(device_)), 0, nullptr, padded ? mask.to(device_) : at::Tensor(), causal);
}

}  // namespace mpool::models::decoder
