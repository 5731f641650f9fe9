#include "models/sd3/config.h"

#include <algorithm>

#include "mpool/base/error.h"
#include "mpool/nn/encoder_config.h"

namespace mpool::models::sd3 {

bool MMDiTConfig::dual_attention(int64_t layer) const {
  return std::find(dual_attention_layers.begin(), dual_attention_layers.end(), layer) != dual_attention_layers.end();
}

MMDiTConfig MMDiTConfig::from(const loading::JsonView& c) {
  MMDiTConfig m;
  constexpr int64_t kMaxWidth = int64_t{1} << 16;
  m.sample_size = nn::read_size(c, "sample_size", m.sample_size, kMaxWidth);
  m.patch_size = nn::read_size(c, "patch_size", m.patch_size, 64);
  m.in_channels = nn::read_size(c, "in_channels", m.in_channels, 4096);
  m.out_channels = c.has("out_channels") ? nn::read_size(c, "out_channels", m.in_channels, 4096) : m.in_channels;
  m.num_layers = nn::read_size(c, "num_layers", m.num_layers, 1024);
  m.attention_head_dim = nn::read_size(c, "attention_head_dim", m.attention_head_dim, 1024);
  m.num_attention_heads = nn::read_size(c, "num_attention_heads", m.num_attention_heads, 1024);
  m.joint_attention_dim = nn::read_size(c, "joint_attention_dim", m.joint_attention_dim, kMaxWidth);
  m.caption_projection_dim = nn::read_size(c, "caption_projection_dim", m.caption_projection_dim, kMaxWidth);
  m.pooled_projection_dim = nn::read_size(c, "pooled_projection_dim", m.pooled_projection_dim, kMaxWidth);
  // Absent: diffusers' default (96). Null: no table at all.
  const auto& raw = c.json();
  if (raw.is_object() && raw.contains("pos_embed_max_size") && raw.at("pos_embed_max_size").is_null())
    m.pos_embed_max_size = 0;
  else
    m.pos_embed_max_size = nn::read_size(c, "pos_embed_max_size", m.pos_embed_max_size, 4096);
  m.dual_attention_layers = c.get_or<std::vector<int64_t>>("dual_attention_layers", {});
  for (int64_t layer : m.dual_attention_layers)
    check(layer >= 0 && layer < m.num_layers, ErrorCode::kInvalidInput,
          c.where("dual_attention_layers") + ": layer " + std::to_string(layer) + " is not one of the " +
              std::to_string(m.num_layers) + " layers");
  const auto qk_norm = c.get_optional<std::string>("qk_norm");
  check(!qk_norm || *qk_norm == "rms_norm", ErrorCode::kInvalidInput,
        c.where("qk_norm") + ": '" + qk_norm.value_or("") + "' is not supported (null or \"rms_norm\")");
  m.qk_norm = qk_norm.has_value();
  check(m.inner_dim() <= kMaxWidth, ErrorCode::kInvalidInput,
        c.where("num_attention_heads") + ": heads x attention_head_dim = " + std::to_string(m.inner_dim()) +
            " is too wide");
  check(m.caption_projection_dim == m.inner_dim(), ErrorCode::kInvalidInput,
        c.where("caption_projection_dim") + " = " + std::to_string(m.caption_projection_dim) +
            " must equal num_attention_heads x attention_head_dim = " + std::to_string(m.inner_dim()) +
            " (the joint blocks' width)");
  check(m.inner_dim() % 4 == 0, ErrorCode::kInvalidInput,
        c.where("attention_head_dim") + ": the inner width " + std::to_string(m.inner_dim()) +
            " must be a multiple of 4 for the 2-D sin-cos positions");
  return m;
}

}  // namespace mpool::models::sd3
