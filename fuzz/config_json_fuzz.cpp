// libFuzzer target: arbitrary bytes as a model's JSON configuration, through
// everything torch-free that reads it when a model is registered:
//   parse_model_config (config.json's common fields), then each family's own
//   reader, BertConfig::from, ModernBertConfig::from, DecoderConfig::from, ClipConfig::from,
//   SiglipConfig::from, LlavaConfig::from, NvEmbedConfig::from and T5Config::from (the model_type
//   field picks which one accepts, as in production; all are tried on every
//   input), the diffusers autoencoders' AutoencoderKLConfig::from and
//   AutoencoderTinyConfig::from, the SD3 transformer's MMDiTConfig::from, the
//   FLUX transformer's FluxConfig::from, the lone CLIP text tower's
//   ClipTextConfig::from, the flow-matching scheduler's FlowMatchConfig::from with a schedule of a few steps, and
//   parse_generation_config, parse_tokenizer_config and
//   parse_special_tokens_map on the same document; then, as ModelDirectory reads
//   them, the nested configs (nested_config_keys, parse_model_config on each),
//   parse_model_index (model_index.json) and parse_image_processor_config
//   (preprocessor_config.json).
// Every failure must be mpool::Error(kInvalidInput). A config a family accepts
// must satisfy what its model code relies on (checked below); anything else (a
// crash, a sanitizer report, another exception, an allocation over libFuzzer's
// limit) is a finding.
#include <cstddef>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <optional>
#include <string_view>

#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "mpool/loading/json.h"
#include "mpool/nn/flow_match.h"
#include "models/bert/config.h"
#include "models/clip/config.h"
#include "models/decoder/config.h"
#include "models/flux/config.h"
#include "models/jinabert/config.h"
#include "models/jinav3/config.h"
#include "models/llava/config.h"
#include "models/modernbert/config.h"
#include "models/nvembed/config.h"
#include "models/sd3/config.h"
#include "models/siglip/config.h"
#include "models/t5/config.h"
#include "models/vae/config.h"
#include "mpool/loading/model_directory.h"

namespace {

using mpool::Error;
using mpool::ErrorCode;
namespace loading = mpool::loading;

template <typename F>
void expect_only_invalid_input(F f) {
  try {
    f();
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kInvalidInput) std::abort();
  }
}

void require(bool ok) {
  if (!ok) std::abort();
}

// What bert/bert.cpp and bert/family.cpp rely on.
void check_bert(const mpool::models::bert::BertConfig& b) {
  require(b.vocab_size > 0 && b.hidden_size > 0 && b.num_layers > 0 && b.num_heads > 0);
  require(b.intermediate_size > 0 && b.max_position_embeddings > 0);
  require(b.hidden_size % b.num_heads == 0);
  require(b.type_vocab_size >= 0);
  // Positions left for tokens: roberta spends pad_token_id + 1 of them.
  if (b.padding_offset_positions) {
    require(b.pad_token_id >= 0 && b.pad_token_id < b.max_position_embeddings - 1);
  }
}

// What modernbert/modernbert.cpp and modernbert/family.cpp rely on.
void check_modernbert(const mpool::models::modernbert::ModernBertConfig& m) {
  require(m.vocab_size > 0 && m.hidden_size > 0 && m.num_layers > 0 && m.num_heads > 0);
  require(m.intermediate_size > 0 && m.max_position_embeddings > 0);
  require(m.head_dim > 0 && m.head_dim * m.num_heads == m.hidden_size && m.head_dim % 2 == 0);
  require(m.sliding.size() == static_cast<std::size_t>(m.num_layers));
  require(m.local_attention >= 0 && m.window_radius() >= 0);
  for (const auto* r : {&m.global_rope, &m.local_rope})
    require(r->type == "default" && r->rotary_dim == m.head_dim && std::isfinite(r->theta) && r->theta > 0);
  require(std::isfinite(m.norm_eps) && m.norm_eps > 0);
}

// What jinabert/jinabert.cpp and jinabert/family.cpp rely on.
void check_jinabert(const mpool::models::jinabert::JinaBertConfig& j) {
  require(j.vocab_size > 0 && j.hidden_size > 0 && j.num_layers > 0 && j.num_heads > 0);
  require(j.intermediate_size > 0 && j.max_tokens() > 0);
  require(j.hidden_size % j.num_heads == 0);
  require(j.type_vocab_size >= 0 && j.layer_norm_eps > 0);
}

// What jinav3/jinav3.cpp and jinav3/family.cpp rely on.
void check_jinav3(const mpool::models::jinav3::JinaV3Config& j) {
  require(j.vocab_size > 0 && j.hidden_size > 0 && j.num_layers > 0 && j.num_heads > 0);
  require(j.intermediate_size > 0 && j.max_tokens() > 0);
  require(j.head_dim > 0 && j.head_dim * j.num_heads == j.hidden_size);
  require(j.rope.type == "default" && j.rope.rotary_dim == j.head_dim && std::isfinite(j.rope.theta) &&
          j.rope.theta > 0);
  require(j.type_vocab_size >= 0 && j.layer_norm_eps > 0);
  require(j.lora_rank > 0 && std::isfinite(j.lora_alpha) && j.lora_adaptations.size() <= 64);
  require(j.remote_code || j.lora_adaptations.empty());
}

// What decoder/decoder.cpp and decoder/family.cpp rely on.
void check_llama(const mpool::models::decoder::DecoderConfig& l) {
  require(l.vocab_size > 0 && l.hidden_size > 0 && l.num_layers > 0 && l.num_heads > 0);
  require(l.intermediate_size > 0 && l.max_position_embeddings > 0);
  require(l.num_kv_heads > 0 && l.num_heads % l.num_kv_heads == 0);
  require(l.head_dim > 0);
  require(l.sliding_window.size() == static_cast<std::size_t>(l.num_layers));
  for (std::int64_t w : l.sliding_window) require(w >= 0);
  const auto& r = l.rope;
  require(r.rotary_dim >= 2 && r.rotary_dim % 2 == 0 && r.rotary_dim <= l.head_dim);
  require(r.factor > 0);
  if (r.type == "longrope") {
    require(r.short_factor.size() == static_cast<std::size_t>(r.rotary_dim / 2));
    require(r.long_factor.size() == r.short_factor.size());
    require(r.original_max_position_embeddings > 0);
  }
  if (r.type == "yarn") {
    // nn/rope.cpp divides by these and takes their logarithms.
    require(std::isfinite(r.factor) && r.beta_fast > 0 && r.beta_slow > 0);
    require(std::isfinite(r.attention_factor) && r.attention_factor > 0);
    require(r.original_max_position_embeddings > 0);
  }
  if (r.type == "dynamic") {
    // family.cpp: max_context = max_position_embeddings * factor, as an int64.
    const double max_context = static_cast<double>(l.max_position_embeddings) * r.factor;
    require(max_context < static_cast<double>(std::numeric_limits<std::int64_t>::max()));
  }
  // nn/moe.cpp: top-k of the experts, experts named one by one, one flag per layer.
  const auto& m = l.moe;
  if (m.num_experts == 0) {
    require(m.sparse_layers.empty());
  } else {
    require(m.num_experts <= mpool::models::decoder::kMaxExperts);
    require(m.num_experts_per_tok > 0 && m.num_experts_per_tok <= m.num_experts);
    require(m.moe_intermediate_size > 0 && m.shared_expert_intermediate_size >= 0);
    require(m.sparse_layers.size() == static_cast<std::size_t>(l.num_layers));
    require(l.feed_forward_width() >= l.intermediate_size);
    require(m.shared_experts_intermediate_size >= 0);
    if (m.grouped_sigmoid) {
      // The grouped router reshapes to (groups, experts / groups) and takes each group's best 2.
      require(m.n_group > 0 && m.num_experts % m.n_group == 0 && m.num_experts / m.n_group >= 2);
      require(m.topk_group > 0 && m.topk_group <= m.n_group);
      require(m.num_experts_per_tok <= m.topk_group * (m.num_experts / m.n_group));
      require(std::isfinite(m.routed_scaling_factor) && m.routed_scaling_factor > 0);
    }
  }
  // nn/mla.cpp: every size positive, the rope part is the rotary dim, a usable softmax scale.
  if (l.is_mla()) {
    const auto& a = l.mla;
    require(a.q_lora_rank >= 0 && a.qk_nope_head_dim > 0 && a.qk_rope_head_dim > 0 && a.v_head_dim > 0);
    require(l.head_dim == a.qk_nope_head_dim + a.qk_rope_head_dim && r.rotary_dim == a.qk_rope_head_dim);
    require(std::isfinite(a.softmax_scale) && a.softmax_scale > 0);
  }
}

// What nn/vit.cpp and the two-tower families rely on.
void check_encoder(const mpool::nn::EncoderConfig& e) {
  require(e.hidden_size > 0 && e.intermediate_size > 0 && e.num_layers > 0 && e.num_heads > 0);
  require(e.hidden_size % e.num_heads == 0);
  require(std::isfinite(e.layer_norm_eps) && e.layer_norm_eps > 0);
}
void check_towers(const mpool::nn::VisionTowerConfig& v, const mpool::nn::TextTowerConfig& t) {
  check_encoder(v);
  check_encoder(t);
  require(v.patch_size > 0 && v.image_size % v.patch_size == 0 && v.grid() > 0 && v.grid() <= 4096);
  require(v.num_channels > 0 && t.vocab_size > 0 && t.max_positions > 0);
}
void check_clip(const mpool::models::clip::ClipConfig& c) {
  check_towers(c.vision, c.text);
  require(c.projection_dim > 0);
}
void check_siglip(const mpool::models::siglip::SiglipConfig& c) {
  check_towers(c.vision, c.text);
  require(c.projection_size == c.vision.hidden_size);
}

// What llava/llava.cpp, llava/anyres.cpp and llava/family.cpp rely on.
void check_llava(const mpool::models::llava::LlavaConfig& c) {
  check_encoder(c.vision);
  require(c.vision.patch_size > 0 && c.vision.image_size % c.vision.patch_size == 0 && c.vision.grid() > 0);
  check_llama(c.text);
  require(c.image_token_id >= 0 && c.image_token_id < c.text.vocab_size);
  require(!c.feature_layers.empty());
  for (std::int64_t n : c.feature_layer_counts()) require(n >= 0 && n <= c.vision.num_layers);
  require(c.image_tokens() > 0 && c.feature_width() > 0);
  for (const auto& p : c.grid_pinpoints)
    require(p[0] > 0 && p[1] > 0 && p[0] % c.vision.image_size == 0 && p[1] % c.vision.image_size == 0);
  if (c.anyres) require(!c.grid_pinpoints.empty());
}

// What nvembed/nvembed.cpp and nvembed/family.cpp rely on.
void check_nvembed(const mpool::models::nvembed::NvEmbedConfig& c) {
  check_llama(c.text);
  const auto& l = c.latent;
  require(l.num_latents > 0 && l.latent_dim > 0 && l.heads > 0 && l.head_dim > 0 && l.ff_mult > 0);
  require(l.hidden_dim == c.text.hidden_size && l.heads * l.head_dim <= loading::kMaxConfigDimension);
}

// What t5/t5.cpp and nn::T5RelativeBias (bidirectional buckets) rely on.
void check_t5(const mpool::models::t5::T5Config& c) {
  require(c.vocab_size > 0 && c.d_model > 0 && c.d_kv > 0 && c.d_ff > 0 && c.num_heads > 0);
  require(c.num_layers > 0 && c.num_layers <= loading::kMaxConfigLayers);
  require(c.num_heads <= loading::kMaxConfigDimension / c.d_kv && c.inner_dim() > 0);
  require(c.relative_attention_num_buckets >= 4);
  require(c.relative_attention_max_distance > c.relative_attention_num_buckets / 4);
  require(std::isfinite(c.layer_norm_epsilon) && c.layer_norm_epsilon > 0);
}

// What vae/autoencoder_kl.cpp relies on.
void check_autoencoder_kl(const mpool::models::vae::AutoencoderKLConfig& c) {
  require(c.in_channels > 0 && c.out_channels > 0 && c.latent_channels > 0 && c.layers_per_block > 0);
  require(c.num_blocks() >= 1 && c.num_blocks() <= mpool::models::vae::kMaxVaeBlocks);
  require(c.norm_num_groups > 0);
  for (std::int64_t ch : c.block_out_channels) require(ch > 0 && ch % c.norm_num_groups == 0);
  require(c.spatial_scale_factor() > 0);
  require(std::isfinite(c.scaling_factor) && c.scaling_factor != 0 && std::isfinite(c.shift()));
}

// What vae/autoencoder_tiny.cpp relies on.
void check_autoencoder_tiny(const mpool::models::vae::AutoencoderTinyConfig& c) {
  require(c.in_channels > 0 && c.out_channels > 0 && c.latent_channels > 0);
  for (const auto* widths : {&c.encoder_block_out_channels, &c.decoder_block_out_channels}) {
    require(!widths->empty());
    for (std::int64_t ch : *widths) require(ch == widths->front() && ch > 0);
  }
  require(c.num_encoder_blocks.size() == c.encoder_block_out_channels.size());
  require(c.num_decoder_blocks.size() == c.decoder_block_out_channels.size());
  for (const auto* n : {&c.num_encoder_blocks, &c.num_decoder_blocks})
    for (std::int64_t b : *n) require(b >= 0);
  require(c.upsampling_scaling_factor > 0 && c.encoder_scale_factor() > 0 && c.decoder_scale_factor() > 0);
  require(std::isfinite(c.latent_magnitude) && c.latent_magnitude > 0 && std::isfinite(c.latent_shift));
  require(std::isfinite(c.scaling_factor) && c.scaling_factor != 0 && std::isfinite(c.shift_factor));
}

// What sd3/mmdit.cpp relies on.
void check_mmdit(const mpool::models::sd3::MMDiTConfig& c) {
  require(c.patch_size > 0 && c.in_channels > 0 && c.out_channels > 0 && c.num_layers > 0);
  require(c.attention_head_dim > 0 && c.num_attention_heads > 0 && c.inner_dim() % 4 == 0);
  require(c.caption_projection_dim == c.inner_dim() && c.joint_attention_dim > 0 && c.pooled_projection_dim > 0);
  require(c.pos_embed_max_size > 0 && c.sample_size > 0);
  for (std::int64_t layer : c.dual_attention_layers) require(layer >= 0 && layer < c.num_layers);
}

// What flux/transformer.cpp relies on: the rotary axes cover each head exactly.
void check_flux(const mpool::models::flux::FluxConfig& c) {
  require(c.patch_size > 0 && c.in_channels > 0 && c.out_channels > 0);
  require(c.num_layers >= 0 && c.num_single_layers >= 0);
  require(c.attention_head_dim > 0 && c.num_attention_heads > 0 && c.joint_attention_dim > 0 &&
          c.pooled_projection_dim > 0);
  require(!c.axes_dims_rope.empty());
  std::int64_t sum = 0;
  for (std::int64_t d : c.axes_dims_rope) {
    require(d >= 2 && d % 2 == 0);
    sum += d;
  }
  require(sum == c.attention_head_dim);
}

// What the sd3 pipeline relies on: levels from 1 (or what the shift makes of it)
// down to the end level, finite, one timestep per step.
void check_flow_match(const mpool::nn::FlowMatchConfig& c) {
  require(c.num_train_timesteps >= 2 && std::isfinite(c.shift) && c.shift > 0);
  for (std::int64_t steps : {1, 2, 7}) {
    std::optional<double> mu;
    if (c.use_dynamic_shifting) mu = c.mu_for(1024);
    if (mu && !std::isfinite(*mu)) continue;
    try {
      const mpool::nn::FlowMatchSchedule s = c.schedule(steps, mu);
      require(s.steps() == steps && s.sigmas.size() == static_cast<std::size_t>(steps + 1));
    } catch (const Error& e) {
      require(e.code() == ErrorCode::kInvalidInput);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  loading::JsonView json;
  try {
    json = loading::parse_json_object(text, "config.json");
  } catch (const Error& e) {
    if (e.code() != ErrorCode::kInvalidInput) std::abort();
    return 0;
  }
  expect_only_invalid_input([&] {
    const loading::ModelConfig config = loading::parse_model_config(json);
    expect_only_invalid_input([&] { check_bert(mpool::models::bert::BertConfig::from(config)); });
    expect_only_invalid_input([&] { check_modernbert(mpool::models::modernbert::ModernBertConfig::from(config)); });
    expect_only_invalid_input([&] { check_jinabert(mpool::models::jinabert::JinaBertConfig::from(config)); });
    expect_only_invalid_input([&] { (void)mpool::models::jinabert::is_jina_bert(config); });
    expect_only_invalid_input([&] { check_jinav3(mpool::models::jinav3::JinaV3Config::from(config)); });
    expect_only_invalid_input([&] { (void)mpool::models::jinav3::is_remote_code_layout(config); });
    expect_only_invalid_input([&] { check_llama(mpool::models::decoder::DecoderConfig::from(config)); });
    expect_only_invalid_input([&] { check_clip(mpool::models::clip::ClipConfig::from(config)); });
    expect_only_invalid_input([&] { check_siglip(mpool::models::siglip::SiglipConfig::from(config)); });
    expect_only_invalid_input([&] { check_llava(mpool::models::llava::LlavaConfig::from(config)); });
    expect_only_invalid_input([&] { check_nvembed(mpool::models::nvembed::NvEmbedConfig::from(config)); });
    expect_only_invalid_input([&] { check_t5(mpool::models::t5::T5Config::from(config)); });
    expect_only_invalid_input(
        [&] { check_autoencoder_kl(mpool::models::vae::AutoencoderKLConfig::from(config)); });
    expect_only_invalid_input(
        [&] { check_autoencoder_tiny(mpool::models::vae::AutoencoderTinyConfig::from(config)); });
  });
  expect_only_invalid_input([&] { check_mmdit(mpool::models::sd3::MMDiTConfig::from(json)); });
  expect_only_invalid_input([&] { check_flux(mpool::models::flux::FluxConfig::from(json)); });
  expect_only_invalid_input([&] { (void)mpool::models::clip::ClipTextConfig::from(json); });
  expect_only_invalid_input([&] { check_flow_match(mpool::nn::FlowMatchConfig::from(json)); });
  expect_only_invalid_input([&] { (void)loading::parse_generation_config(json); });
  expect_only_invalid_input([&] { (void)loading::parse_tokenizer_config(json); });
  expect_only_invalid_input([&] { (void)loading::parse_special_tokens_map(json); });
  expect_only_invalid_input([&] {
    for (const auto& key : loading::nested_config_keys(json)) {
      const auto nested = json.child(key);
      require(nested.has_value());  // nested_config_keys names objects only
      (void)loading::parse_model_config(*nested);
    }
  });
  expect_only_invalid_input([&] {
    const loading::PipelineIndex index = loading::parse_model_index(json);
    for (const auto& e : index.entries) {
      // Each entry is a folder inside the pipeline directory.
      require(!e.name.empty() && e.name.front() != '_' && e.name != "." && e.name != "..");
      require(e.name.find_first_of("/\\") == std::string::npos);
      require(e.library.has_value() == e.class_name.has_value());
    }
  });
  expect_only_invalid_input([&] {
    const loading::ImageProcessorConfig p = loading::parse_image_processor_config(json);
    for (const auto* size : {&p.size, &p.crop_size})
      if (*size)
        for (const auto* v : {&(*size)->height, &(*size)->width, &(*size)->shortest_edge, &(*size)->longest_edge,
                              &(*size)->value})
          require(!*v || **v > 0);
    for (double s : p.image_std) require(s > 0);
  });
  return 0;
}
