#include "models/vae/ldm_names.h"

#include <charconv>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "mpool/base/error.h"

namespace mpool::models::vae {

namespace {

// Takes `head` off the front of `s`; false (s untouched) when s does not start with it.
bool eat(std::string_view& s, std::string_view head) {
  if (!s.starts_with(head)) return false;
  s.remove_prefix(head.size());
  return true;
}

// Takes "<n>." off the front of `s`.
std::optional<int64_t> eat_index(std::string_view& s) {
  int64_t n = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  if (ec != std::errc() || end == s.data() + s.size() || *end != '.') return std::nullopt;
  s.remove_prefix(static_cast<size_t>(end - s.data()) + 1);
  return n;
}

// A residual block's tensor: only its shortcut is named differently.
std::string resnet_tail(std::string_view tail) {
  return eat(tail, "conv_shortcut.") ? "nin_shortcut." + std::string(tail) : std::string(tail);
}

// The mid-block's attention: group_norm -> norm, to_q/to_k/to_v -> q/k/v,
// to_out.0 -> proj_out, the projections stored as 1x1 convolutions.
std::optional<nn::StoredName> attention(const std::string& base, std::string_view tail) {
  static const std::pair<std::string_view, std::string_view> kNames[] = {
      {"group_norm.", "norm."}, {"to_q.", "q."}, {"to_k.", "k."}, {"to_v.", "v."}, {"to_out.0.", "proj_out."}};
  for (const auto& [ours, theirs] : kNames) {
    std::string_view rest = tail;
    if (!eat(rest, ours)) continue;
    const bool projection = theirs != "norm.";
    return nn::StoredName{base + std::string(theirs) + std::string(rest), projection && rest == "weight"};
  }
  return std::nullopt;
}

}  // namespace

VaeLayout detect_layout(const nn::Weights& w) {
  if (w.has("decoder.conv_norm_out.weight") || w.has("encoder.conv_norm_out.weight")) return VaeLayout::kDiffusers;
  if (w.has("decoder.norm_out.weight") || w.has("encoder.norm_out.weight")) return VaeLayout::kLdm;
  throw Error(ErrorCode::kInvalidInput,
              "checkpoint holds no KL autoencoder under '" + w.prefix() + "': neither " +
                  w.name("decoder.conv_norm_out.weight") + " (diffusers) nor " + w.name("decoder.norm_out.weight") +
                  " (the original layout) is stored");
}

nn::NameMap ldm_names(int64_t num_blocks) {
  return [num_blocks](std::string_view name) -> std::optional<nn::StoredName> {
    std::string_view s = name;
    std::string side;
    if (eat(s, "encoder.")) {
      side = "encoder.";
    } else if (eat(s, "decoder.")) {
      side = "decoder.";
    } else {
      return std::nullopt;  // quant_conv, post_quant_conv: the same names
    }
    if (eat(s, "conv_norm_out.")) return nn::StoredName{side + "norm_out." + std::string(s), false};
    if (eat(s, "mid_block.")) {
      if (eat(s, "attentions.0.")) return attention(side + "mid.attn_1.", s);
      if (!eat(s, "resnets.")) return std::nullopt;
      const auto j = eat_index(s);
      if (!j) return std::nullopt;
      return nn::StoredName{side + "mid.block_" + std::to_string(*j + 1) + "." + resnet_tail(s), false};
    }
    const bool encoder = side == "encoder.";
    if (!eat(s, encoder ? "down_blocks." : "up_blocks.")) return std::nullopt;
    const auto i = eat_index(s);
    if (!i) return std::nullopt;
    // The original decoder numbers its levels from the lowest resolution up.
    const int64_t level = encoder ? *i : num_blocks - 1 - *i;
    const std::string stored = side + (encoder ? "down." : "up.") + std::to_string(level) + ".";
    if (eat(s, "resnets.")) {
      const auto j = eat_index(s);
      if (!j) return std::nullopt;
      return nn::StoredName{stored + "block." + std::to_string(*j) + "." + resnet_tail(s), false};
    }
    if (eat(s, encoder ? "downsamplers.0." : "upsamplers.0."))
      return nn::StoredName{stored + (encoder ? "downsample." : "upsample.") + std::string(s), false};
    return std::nullopt;
  };
}

}  // namespace mpool::models::vae
