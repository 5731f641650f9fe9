#include "models/vae/ldm_names.h"

#include <charconv>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "mpool/base/error.h"

namespace mpool::models::vae {

namespace {

// A residual block's tensor: only its shortcut is named differently.
std::string resnet_tail(std::string_view tail) {
  return nn::eat_name_prefix(tail, "conv_shortcut.") ? "nin_shortcut." + std::string(tail) : std::string(tail);
}

// The mid-block's attention: group_norm -> norm, to_q/to_k/to_v -> q/k/v,
// to_out.0 -> proj_out, the projections stored as 1x1 convolutions.
std::optional<nn::StoredName> attention(const std::string& base, std::string_view tail) {
  static const std::pair<std::string_view, std::string_view> kNames[] = {
      {"group_norm.", "norm."}, {"to_q.", "q."}, {"to_k.", "k."}, {"to_v.", "v."}, {"to_out.0.", "proj_out."}};
  for (const auto& [ours, theirs] : kNames) {
    std::string_view rest = tail;
    if (!nn::eat_name_prefix(rest, ours)) continue;
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
    if (nn::eat_name_prefix(s, "encoder.")) {
      side = "encoder.";
    } else if (nn::eat_name_prefix(s, "decoder.")) {
      side = "decoder.";
    } else {
      return std::nullopt;  // quant_conv, post_quant_conv: the same names
    }
    if (nn::eat_name_prefix(s, "conv_norm_out.")) return nn::StoredName{side + "norm_out." + std::string(s), false};
    if (nn::eat_name_prefix(s, "mid_block.")) {
      if (nn::eat_name_prefix(s, "attentions.0.")) return attention(side + "mid.attn_1.", s);
      if (!nn::eat_name_prefix(s, "resnets.")) return std::nullopt;
      const auto j = nn::eat_name_index(s);
      if (!j) return std::nullopt;
      return nn::StoredName{side + "mid.block_" + std::to_string(*j + 1) + "." + resnet_tail(s), false};
    }
    const bool encoder = side == "encoder.";
    if (!nn::eat_name_prefix(s, encoder ? "down_blocks." : "up_blocks.")) return std::nullopt;
    const auto i = nn::eat_name_index(s);
    if (!i) return std::nullopt;
    // The original decoder numbers its levels from the lowest resolution up.
    const int64_t level = encoder ? *i : num_blocks - 1 - *i;
    const std::string stored = side + (encoder ? "down." : "up.") + std::to_string(level) + ".";
    if (nn::eat_name_prefix(s, "resnets.")) {
      const auto j = nn::eat_name_index(s);
      if (!j) return std::nullopt;
      return nn::StoredName{stored + "block." + std::to_string(*j) + "." + resnet_tail(s), false};
    }
    if (nn::eat_name_prefix(s, encoder ? "downsamplers.0." : "upsamplers.0."))
      return nn::StoredName{stored + (encoder ? "downsample." : "upsample.") + std::string(s), false};
    return std::nullopt;
  };
}

}  // namespace mpool::models::vae
