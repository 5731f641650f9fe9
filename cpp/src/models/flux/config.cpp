#include "models/flux/config.h"

#include <string>

#include "mpool/base/error.h"
#include "mpool/nn/encoder_config.h"

namespace mpool::models::flux {
namespace {

// A block count: 0 allowed (diffusers builds a model without either kind).
int64_t read_count(const loading::JsonView& c, const char* key, int64_t fallback) {
  constexpr int64_t kMaxBlocks = 1024;
  const int64_t v = c.get_or<int64_t>(key, fallback);
  check(v >= 0 && v <= kMaxBlocks, ErrorCode::kInvalidInput,
        c.where(key) + " is " + std::to_string(v) + "; it must be in [0, " + std::to_string(kMaxBlocks) + "]");
  return v;
}

}  // namespace

FluxConfig FluxConfig::from(const loading::JsonView& c) {
  FluxConfig f;
  constexpr int64_t kMaxWidth = int64_t{1} << 16;
  f.patch_size = nn::read_size(c, "patch_size", f.patch_size, 64);
  f.in_channels = nn::read_size(c, "in_channels", f.in_channels, 4096);
  f.out_channels = c.has("out_channels") ? nn::read_size(c, "out_channels", f.in_channels, 4096) : f.in_channels;
  f.num_layers = read_count(c, "num_layers", f.num_layers);
  f.num_single_layers = read_count(c, "num_single_layers", f.num_single_layers);
  f.attention_head_dim = nn::read_size(c, "attention_head_dim", f.attention_head_dim, 1024);
  f.num_attention_heads = nn::read_size(c, "num_attention_heads", f.num_attention_heads, 1024);
  f.joint_attention_dim = nn::read_size(c, "joint_attention_dim", f.joint_attention_dim, kMaxWidth);
  f.pooled_projection_dim = nn::read_size(c, "pooled_projection_dim", f.pooled_projection_dim, kMaxWidth);
  f.guidance_embeds = c.get_or<bool>("guidance_embeds", f.guidance_embeds);
  f.axes_dims_rope = c.get_or<std::vector<int64_t>>("axes_dims_rope", f.axes_dims_rope);
  check(f.inner_dim() <= kMaxWidth, ErrorCode::kInvalidInput,
        c.where("num_attention_heads") + ": heads x attention_head_dim = " + std::to_string(f.inner_dim()) +
            " is too wide");
  check(!f.axes_dims_rope.empty() && f.axes_dims_rope.size() <= 16, ErrorCode::kInvalidInput,
        c.where("axes_dims_rope") + " must list 1 to 16 axes, got " + std::to_string(f.axes_dims_rope.size()));
  int64_t sum = 0;
  for (int64_t d : f.axes_dims_rope) {
    check(d >= 2 && d % 2 == 0 && d <= f.attention_head_dim, ErrorCode::kInvalidInput,
          c.where("axes_dims_rope") + ": an axis of " + std::to_string(d) +
              " dimensions; each must be even, at least 2 and at most attention_head_dim");
    sum += d;
  }
  check(sum == f.attention_head_dim, ErrorCode::kInvalidInput,
        c.where("axes_dims_rope") + " adds up to " + std::to_string(sum) + ", not attention_head_dim = " +
            std::to_string(f.attention_head_dim) + " (the rotary tables cover each head)");
  return f;
}

}  // namespace mpool::models::flux
