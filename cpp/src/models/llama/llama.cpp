#include "mpool/models/llama/llama.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "mpool/core/error.h"
#include "mpool/loading/tensors.h"
#include "mpool/models/kernels.h"

namespace mpool::models::llama {
namespace {

// theta ** (arange(0, dim, 2) / dim), in float32 as transformers computes it.
at::Tensor frequency_exponents(double theta, int64_t dim) {
  at::Tensor exps = at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
  return at::pow(theta, exps);
}

// inv_freq of the rope types that do not depend on the sequence length.
at::Tensor static_inv_freq(const RopeConfig& r) {
  at::Tensor inv = frequency_exponents(r.theta, r.rotary_dim).reciprocal();
  if (r.type == "linear") return inv / r.factor;
  if (r.type != "llama3") return inv;
  const double old_len = static_cast<double>(r.original_max_position_embeddings);
  const double low_wavelen = old_len / r.low_freq_factor, high_wavelen = old_len / r.high_freq_factor;
  at::Tensor wavelen = 2 * M_PI / inv;
  at::Tensor scaled = at::where(wavelen > low_wavelen, inv / r.factor, inv);
  at::Tensor smooth = (old_len / wavelen - r.low_freq_factor) / (r.high_freq_factor - r.low_freq_factor);
  at::Tensor smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
  at::Tensor medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
  return at::where(medium, smoothed, scaled);
}

}  // namespace

WeightLayout WeightLayout::detect(const loading::Checkpoint& checkpoint, const LlamaConfig& config) {
  WeightLayout w;
  if (checkpoint.find("model.embed_tokens.weight"))
    w.prefix = "model.";
  else if (checkpoint.find("embed_tokens.weight"))
    w.prefix = "";
  else
    throw Error(ErrorCode::kInvalidInput,
                "checkpoint has neither model.embed_tokens.weight nor embed_tokens.weight; is this a " +
                    config.model_type + " decoder?");
  w.has_lm_head = config.tie_word_embeddings || checkpoint.find("lm_head.weight").has_value();
  return w;
}

std::vector<std::string> LlamaDecoder::weight_names(const LlamaConfig& c, const WeightLayout& layout) {
  const std::string& p = layout.prefix;
  std::vector<std::string> names = {p + "embed_tokens.weight", p + "norm.weight"};
  if (layout.has_lm_head && !c.tie_word_embeddings) names.push_back("lm_head.weight");
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string l = p + "layers." + std::to_string(i) + ".";
    names.push_back(l + "input_layernorm.weight");
    names.push_back(l + "post_attention_layernorm.weight");
    names.push_back(l + "self_attn.o_proj.weight");
    if (c.o_bias) names.push_back(l + "self_attn.o_proj.bias");
    names.push_back(l + "mlp.down_proj.weight");
    if (c.mlp_bias) names.push_back(l + "mlp.down_proj.bias");
    if (c.fused_weights) {
      names.push_back(l + "self_attn.qkv_proj.weight");
      names.push_back(l + "mlp.gate_up_proj.weight");
      if (c.qkv_bias) names.push_back(l + "self_attn.qkv_proj.bias");
      if (c.mlp_bias) names.push_back(l + "mlp.gate_up_proj.bias");
    } else {
      for (const char* p : {"q_proj", "k_proj", "v_proj"}) {
        names.push_back(l + "self_attn." + p + ".weight");
        if (c.qkv_bias) names.push_back(l + "self_attn." + p + ".bias");
      }
      for (const char* p : {"gate_proj", "up_proj"}) {
        names.push_back(l + "mlp." + p + ".weight");
        if (c.mlp_bias) names.push_back(l + "mlp." + p + ".bias");
      }
    }
    if (c.qk_norm) {
      names.push_back(l + "self_attn.q_norm.weight");
      names.push_back(l + "self_attn.k_norm.weight");
    }
  }
  return names;
}

LlamaDecoder::LlamaDecoder(LlamaConfig config, const loading::Checkpoint& checkpoint, at::ScalarType dtype,
                           at::Device device)
    : config_(std::move(config)), dtype_(dtype), device_(device) {
  loading::LoadOptions options;
  options.dtype = dtype;
  options.device = device;
  const WeightLayout layout = WeightLayout::detect(checkpoint, config_);
  const std::string& p = layout.prefix;
  auto loaded = loading::load_checkpoint(checkpoint, options, weight_names(config_, layout));
  warnings_ = loaded.warnings;
  std::map<std::string, at::Tensor> w;
  for (auto& t : loaded.tensors) w[t.name] = t.tensor;
  auto take = [&](const std::string& name, std::vector<int64_t> shape) {
    auto it = w.find(name);
    check(it != w.end(), ErrorCode::kInvalidInput, "checkpoint has no tensor '" + name + "'");
    check(it->second.sizes().vec() == shape, ErrorCode::kInvalidInput,
          "tensor '" + name + "' has shape " + c10::str(it->second.sizes()) + " but config.json implies " +
              c10::str(at::IntArrayRef(shape)));
    return it->second;
  };
  const auto& c = config_;
  const int64_t h = c.hidden_size, hd = c.head_dim, q = c.num_heads * hd, kv = c.num_kv_heads * hd,
                inner = c.intermediate_size;
  embed_ = take(p + "embed_tokens.weight", {c.vocab_size, h});
  norm_ = take(p + "norm.weight", {h});
  if (layout.has_lm_head) lm_head_ = c.tie_word_embeddings ? embed_ : take("lm_head.weight", {c.vocab_size, h});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string l = p + "layers." + std::to_string(i) + ".";
    Layer L;
    L.ln1 = take(l + "input_layernorm.weight", {h});
    L.ln2 = take(l + "post_attention_layernorm.weight", {h});
    // q, k and v run as one GEMM, gate and up as another, whatever the checkpoint stores.
    if (c.fused_weights) {
      L.qkv_w = take(l + "self_attn.qkv_proj.weight", {q + 2 * kv, h});
      if (c.qkv_bias) L.qkv_b = take(l + "self_attn.qkv_proj.bias", {q + 2 * kv});
      L.gate_up_w = take(l + "mlp.gate_up_proj.weight", {2 * inner, h});
      if (c.mlp_bias) L.gate_up_b = take(l + "mlp.gate_up_proj.bias", {2 * inner});
    } else {
      L.qkv_w = at::cat({take(l + "self_attn.q_proj.weight", {q, h}), take(l + "self_attn.k_proj.weight", {kv, h}),
                         take(l + "self_attn.v_proj.weight", {kv, h})});
      if (c.qkv_bias)
        L.qkv_b = at::cat({take(l + "self_attn.q_proj.bias", {q}), take(l + "self_attn.k_proj.bias", {kv}),
                           take(l + "self_attn.v_proj.bias", {kv})});
      L.gate_up_w = at::cat({take(l + "mlp.gate_proj.weight", {inner, h}), take(l + "mlp.up_proj.weight", {inner, h})});
      if (c.mlp_bias)
        L.gate_up_b = at::cat({take(l + "mlp.gate_proj.bias", {inner}), take(l + "mlp.up_proj.bias", {inner})});
    }
    L.o_w = take(l + "self_attn.o_proj.weight", {h, q});
    if (c.o_bias) L.o_b = take(l + "self_attn.o_proj.bias", {h});
    L.down_w = take(l + "mlp.down_proj.weight", {h, inner});
    if (c.mlp_bias) L.down_b = take(l + "mlp.down_proj.bias", {h});
    if (c.qk_norm) {
      L.q_norm = take(l + "self_attn.q_norm.weight", {hd});
      L.k_norm = take(l + "self_attn.k_norm.weight", {hd});
    }
    layers_.push_back(std::move(L));
  }
  if (c.rope.type != "dynamic" && c.rope.type != "longrope") inv_freq_ = static_inv_freq(c.rope);
}

KvCache LlamaDecoder::new_cache(int64_t capacity) const {
  KvCache cache;
  cache.capacity = capacity;
  auto opts = at::TensorOptions().dtype(dtype_).device(device_);
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    cache.keys.push_back(at::empty({1, config_.num_kv_heads, capacity, config_.head_dim}, opts));
    cache.values.push_back(at::empty({1, config_.num_kv_heads, capacity, config_.head_dim}, opts));
  }
  return cache;
}

std::pair<at::Tensor, at::Tensor> LlamaDecoder::rotary(int64_t start, int64_t n) const {
  const RopeConfig& r = config_.rope;
  const int64_t seq_len = start + n;  // transformers: max(position_ids) + 1
  at::Tensor inv = inv_freq_;
  double scaling = 1.0;
  if (r.type == "dynamic") {
    // NTK-aware: a larger base once the sequence outgrows the trained length.
    if (seq_len > r.max_position_embeddings) {
      const double dim = static_cast<double>(r.rotary_dim);
      const double base =
          r.theta * std::pow(r.factor * static_cast<double>(seq_len) / static_cast<double>(r.max_position_embeddings) -
                                 (r.factor - 1),
                             dim / (dim - 2));
      inv = frequency_exponents(base, r.rotary_dim).reciprocal();
    } else {
      inv = frequency_exponents(r.theta, r.rotary_dim).reciprocal();
    }
  } else if (r.type == "longrope") {
    const auto& ext = seq_len > r.original_max_position_embeddings ? r.long_factor : r.short_factor;
    inv = (at::tensor(ext, at::kDouble).to(at::kFloat) * frequency_exponents(r.theta, r.rotary_dim)).reciprocal();
    scaling = r.attention_factor;
  }
  at::Tensor positions = at::arange(start, seq_len, at::kLong).to(at::kFloat);
  at::Tensor freqs = at::outer(positions, inv);
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  at::Tensor cos = emb.cos(), sin = emb.sin();
  if (scaling != 1.0) {
    cos = cos * scaling;
    sin = sin * scaling;
  }
  return {cos.to(device_, dtype_), sin.to(device_, dtype_)};
}

at::Tensor LlamaDecoder::rotate(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) const {
  // x (b, heads, n, head_dim); cos/sin (n, rotary_dim). rotate_half layout.
  const int64_t rd = config_.rope.rotary_dim, half = rd / 2;
  at::Tensor rot = rd == x.size(-1) ? x : x.narrow(-1, 0, rd);
  at::Tensor rotated = at::cat({-rot.narrow(-1, half, half), rot.narrow(-1, 0, half)}, -1);
  at::Tensor out = rot * cos + rotated * sin;
  if (rd == x.size(-1)) return out;
  return at::cat({out, x.narrow(-1, rd, x.size(-1) - rd)}, -1);
}

at::Tensor LlamaDecoder::rms_norm(const at::Tensor& x, const at::Tensor& weight) const {
  // transformers: normalize in float32, cast back, then scale.
  at::Tensor xf = x.scalar_type() == at::kFloat ? x : x.to(at::kFloat);
  at::Tensor normed = xf * at::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + config_.rms_norm_eps);
  return weight * (x.scalar_type() == at::kFloat ? normed : normed.to(x.scalar_type()));
}

at::Tensor LlamaDecoder::run(at::Tensor x, int64_t start, KvCache* cache, const at::Tensor& key_mask) const {
  const auto& c = config_;
  const int64_t b = x.size(0), n = x.size(1), hd = c.head_dim, heads = c.num_heads, kvh = c.num_kv_heads;
  const int64_t q_width = heads * hd, kv_width = kvh * hd, group = heads / kvh;
  auto [cos, sin] = rotary(start, n);
  const int64_t total = start + n;
  // Masks: true = attend. Only built when the plain causal case does not apply.
  std::map<int64_t, at::Tensor> masks;  // by window
  auto mask_for = [&](int64_t window) -> at::Tensor {
    auto it = masks.find(window);
    if (it != masks.end()) return it->second;
    at::Tensor qpos = at::arange(start, total, at::kLong).view({n, 1});
    at::Tensor kpos = at::arange(0, total, at::kLong).view({1, total});
    at::Tensor m = kpos <= qpos;
    if (window > 0) m = m.logical_and(kpos > qpos - window);
    m = m.view({1, 1, n, total}).to(device_);
    if (key_mask.defined()) m = m.logical_and(key_mask.to(at::kBool).view({b, 1, 1, total}));
    masks.emplace(window, m);
    return m;
  };

  for (size_t li = 0; li < layers_.size(); ++li) {
    const Layer& L = layers_[li];
    const int64_t window = c.sliding_window[li];
    at::Tensor hs = rms_norm(x, L.ln1);
    at::Tensor qkv = kernels::linear(hs, L.qkv_w, L.qkv_b);
    at::Tensor q = qkv.narrow(-1, 0, q_width).view({b, n, heads, hd});
    at::Tensor k = qkv.narrow(-1, q_width, kv_width).view({b, n, kvh, hd});
    at::Tensor v = qkv.narrow(-1, q_width + kv_width, kv_width).view({b, n, kvh, hd});
    if (c.qk_norm) {
      q = rms_norm(q, L.q_norm);
      k = rms_norm(k, L.k_norm);
    }
    q = rotate(q.transpose(1, 2), cos, sin);  // (b, heads, n, hd)
    k = rotate(k.transpose(1, 2), cos, sin);
    v = v.transpose(1, 2);
    at::Tensor keys = k, values = v;
    int64_t first = 0;  // first key position attended
    if (cache) {
      cache->keys[li].narrow(2, start, n).copy_(k);
      cache->values[li].narrow(2, start, n).copy_(v);
      if (n == 1 && window > 0) first = std::max<int64_t>(0, total - window);
      keys = cache->keys[li].narrow(2, first, total - first);
      values = cache->values[li].narrow(2, first, total - first);
    }
    at::Tensor attn;
    if (cache && n == 1) {
      // One query per head: fold each kv group's queries into one (b, kv, group, hd)
      // block; no mask, no repeated keys.
      at::Tensor qg = q.reshape({b, kvh, group, hd});
      attn = at::scaled_dot_product_attention(qg, keys, values).reshape({b, 1, q_width});
    } else {
      const bool plain_causal = start == 0 && window == 0 && !key_mask.defined();
      attn = plain_causal ? at::scaled_dot_product_attention(q, keys, values, {}, 0.0, true, std::nullopt, group > 1)
                          : at::scaled_dot_product_attention(q, keys, values, mask_for(window), 0.0, false,
                                                             std::nullopt, group > 1);
      attn = attn.transpose(1, 2).reshape({b, n, q_width});
    }
    x = x + kernels::linear(attn, L.o_w, L.o_b);
    hs = rms_norm(x, L.ln2);
    at::Tensor gate_up = kernels::linear(hs, L.gate_up_w, L.gate_up_b);
    at::Tensor act = at::silu(gate_up.narrow(-1, 0, c.intermediate_size)) *
                     gate_up.narrow(-1, c.intermediate_size, c.intermediate_size);
    x = x + kernels::linear(act, L.down_w, L.down_b);
  }
  if (cache) cache->length = total;
  return rms_norm(x, norm_);
}

at::Tensor LlamaDecoder::extend(const std::vector<int64_t>& ids, KvCache& cache) const {
  const int64_t n = static_cast<int64_t>(ids.size());
  check(n > 0, ErrorCode::kInvalidInput, "no tokens to run");
  check(cache.length + n <= cache.capacity, ErrorCode::kInvalidInput,
        "sequence of " + std::to_string(cache.length + n) + " tokens exceeds the cache's " +
            std::to_string(cache.capacity));
  c10::InferenceMode guard;
  std::vector<int64_t> run_ids = ids;
  const int64_t original = config_.rope.original_max_position_embeddings;
  if (config_.rope.type == "longrope" && cache.length > 0 && cache.length <= original &&
      cache.length + n > original) {
    // Crossing into the long factors: every cached key was rotated with the short
    // ones, so recompute the whole sequence (as transformers' Phi-3 does).
    run_ids = cache.tokens;
    run_ids.insert(run_ids.end(), ids.begin(), ids.end());
    cache.length = 0;
    cache.tokens.clear();
  }
  const auto m = static_cast<int64_t>(run_ids.size());
  at::Tensor input = at::tensor(run_ids, at::kLong).to(device_).view({1, m});
  at::Tensor hidden = run(at::embedding(embed_, input), cache.length, &cache, at::Tensor());
  cache.tokens.insert(cache.tokens.end(), run_ids.begin(), run_ids.end());
  return logits(hidden.select(1, m - 1)).view({-1});
}

at::Tensor LlamaDecoder::logits(const at::Tensor& hidden) const {
  check(lm_head_.defined(), ErrorCode::kInvalidInput,
        "this checkpoint has no lm_head.weight (a base model): it can embed but not generate");
  return kernels::linear(hidden, lm_head_).to(at::kCPU, at::kFloat);
}

at::Tensor LlamaDecoder::all_logits(const std::vector<int64_t>& ids) const {
  c10::InferenceMode guard;
  const int64_t n = static_cast<int64_t>(ids.size());
  at::Tensor input = at::tensor(ids, at::kLong).to(device_).view({1, n});
  at::Tensor hidden = run(at::embedding(embed_, input), 0, nullptr, at::Tensor());
  return logits(hidden.squeeze(0));
}

at::Tensor LlamaDecoder::hidden_states(const at::Tensor& ids, const at::Tensor& mask) const {
  c10::InferenceMode guard;
  const bool padded = mask.defined() && !mask.all().item<bool>();
  return run(at::embedding(embed_, ids.to(device_)), 0, nullptr, padded ? mask.to(device_) : at::Tensor());
}

}  // namespace mpool::models::llama
