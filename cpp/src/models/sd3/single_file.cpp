#include "models/sd3/single_file.h"

#include "models/diffusion/single_file.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <memory>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "mpool/loading/json.h"

namespace mpool::models::sd3 {

using diffusion::count;
using diffusion::inferred;
using diffusion::refuse_if;
using diffusion::Shape;
using diffusion::shape_of;


MMDiTConfig infer_mmdit(const loading::Checkpoint& c, const std::string& p) {
  constexpr std::string_view kWhat = "an SD3 MMDiT (model.diffusion_model.*)";
  const std::string proj = p + "x_embedder.proj.weight";
  const Shape x = shape_of(c, proj, 4, kWhat);
  const int64_t hidden = x[0], in_channels = x[1], patch = x[2];
  refuse_if(x[2] != x[3], proj,
            "the patch kernel " + std::to_string(x[2]) + "x" + std::to_string(x[3]) + " is not square");
  const int64_t layers = count(c, p + "joint_blocks.", ".x_block.adaLN_modulation.1.weight");
  check(layers > 0, ErrorCode::kInvalidInput,
        "checkpoint has no tensor '" + p + "joint_blocks.0.x_block.adaLN_modulation.1.weight': is this " +
            std::string(kWhat) + "?");
  // SD3's heads are 64 wide; SD3.5's q/k norm weights say the width.
  const std::string ln_q = p + "joint_blocks.0.x_block.attn.ln_q.weight";
  const bool qk_norm = c.find(ln_q).has_value();
  const int64_t head_dim = qk_norm ? shape_of(c, ln_q, 1, kWhat)[0] : 64;
  refuse_if(hidden % head_dim != 0, qk_norm ? ln_q : proj,
            "the width " + std::to_string(hidden) + " is not a multiple of the attention head width " +
                std::to_string(head_dim));
  const std::string pos = p + "pos_embed";
  const Shape pe = shape_of(c, pos, 3, kWhat);
  const auto side = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(pe[1]))));
  refuse_if(pe[0] != 1 || pe[2] != hidden || side * side != pe[1], pos,
            "shape " + c10::str(at::IntArrayRef(pe)) + " is not (1, side^2, " + std::to_string(hidden) + ")");
  const std::string ctx = p + "context_embedder.weight";
  const Shape ce = shape_of(c, ctx, 2, kWhat);
  refuse_if(ce[0] != hidden, ctx, "makes " + std::to_string(ce[0]) + " channels, the blocks are " +
                                      std::to_string(hidden) + " wide (" + proj + ")");
  const std::string y = p + "y_embedder.mlp.0.weight";
  const Shape ye = shape_of(c, y, 2, kWhat);
  refuse_if(ye[0] != hidden, y, "makes " + std::to_string(ye[0]) + " channels, the blocks are " +
                                    std::to_string(hidden) + " wide (" + proj + ")");
  const std::string fl = p + "final_layer.linear.weight";
  const Shape f = shape_of(c, fl, 2, kWhat);
  refuse_if(f[0] % (patch * patch) != 0, fl,
            std::to_string(f[0]) + " outputs are not a whole number of channels per " + std::to_string(patch) + "x" +
                std::to_string(patch) + " patch");
  nlohmann::json j = {{"sample_size", 128},
                      {"patch_size", patch},
                      {"in_channels", in_channels},
                      {"out_channels", f[0] / (patch * patch)},
                      {"num_layers", layers},
                      {"attention_head_dim", head_dim},
                      {"num_attention_heads", hidden / head_dim},
                      {"joint_attention_dim", ce[1]},
                      {"caption_projection_dim", hidden},
                      {"pooled_projection_dim", ye[1]},
                      {"pos_embed_max_size", side}};
  if (qk_norm) j["qk_norm"] = "rms_norm";
  std::vector<int64_t> dual;
  for (int64_t i = 0; i < layers; ++i)
    if (c.find(p + "joint_blocks." + std::to_string(i) + ".x_block.attn2.qkv.weight")) dual.push_back(i);
  if (!dual.empty()) j["dual_attention_layers"] = dual;
  return MMDiTConfig::from(inferred(std::move(j), p + "* (shapes of the single file)"));
}

nn::NameMap mmdit_original_names(const MMDiTConfig& config) {
  const int64_t dim = config.inner_dim(), last = config.num_layers - 1;
  using Rows = std::vector<std::pair<int64_t, int64_t>>;
  const Rows swapped{{dim, 2 * dim}, {0, dim}};  // (shift, scale) stored; (scale, shift) asked for
  return [dim, last, swapped](std::string_view name) -> std::optional<nn::StoredName> {
    std::string_view s = name;
    auto plain = [](std::string stored, std::string_view rest) {
      return nn::StoredName{std::move(stored) + std::string(rest), false, {}};
    };
    if (nn::eat_name_prefix(s, "pos_embed.proj.")) return plain("x_embedder.proj.", s);
    if (s == "pos_embed.pos_embed") return plain("pos_embed", "");
    if (nn::eat_name_prefix(s, "time_text_embed.")) {
      std::string base;
      if (nn::eat_name_prefix(s, "timestep_embedder.")) base = "t_embedder.mlp.";
      else if (nn::eat_name_prefix(s, "text_embedder.")) base = "y_embedder.mlp.";
      else return std::nullopt;
      if (nn::eat_name_prefix(s, "linear_1.")) return plain(base + "0.", s);
      if (nn::eat_name_prefix(s, "linear_2.")) return plain(base + "2.", s);
      return std::nullopt;
    }
    if (nn::eat_name_prefix(s, "norm_out.linear."))
      return nn::StoredName{"final_layer.adaLN_modulation.1." + std::string(s), false, swapped};
    if (nn::eat_name_prefix(s, "proj_out.")) return plain("final_layer.linear.", s);
    if (!nn::eat_name_prefix(s, "transformer_blocks.")) return std::nullopt;  // context_embedder: the same name
    const auto i = nn::eat_name_index(s);
    if (!i) return std::nullopt;
    const std::string block = "joint_blocks." + std::to_string(*i) + ".";
    const std::string x = block + "x_block.", ctx = block + "context_block.";
    if (nn::eat_name_prefix(s, "norm1.linear.")) return plain(x + "adaLN_modulation.1.", s);
    if (nn::eat_name_prefix(s, "norm1_context.linear."))
      return nn::StoredName{ctx + "adaLN_modulation.1." + std::string(s), false, *i == last ? swapped : Rows{}};
    if (nn::eat_name_prefix(s, "ff.net.0.proj.")) return plain(x + "mlp.fc1.", s);
    if (nn::eat_name_prefix(s, "ff.net.2.")) return plain(x + "mlp.fc2.", s);
    if (nn::eat_name_prefix(s, "ff_context.net.0.proj.")) return plain(ctx + "mlp.fc1.", s);
    if (nn::eat_name_prefix(s, "ff_context.net.2.")) return plain(ctx + "mlp.fc2.", s);
    std::string attn;
    if (nn::eat_name_prefix(s, "attn.")) attn = "attn.";
    else if (nn::eat_name_prefix(s, "attn2.")) attn = "attn2.";
    else return std::nullopt;
    // One third of the fused qkv.
    auto third = [dim](const std::string& stored, int64_t k, std::string_view rest) {
      return nn::StoredName{stored + "qkv." + std::string(rest), false, Rows{{k * dim, (k + 1) * dim}}};
    };
    static const std::pair<std::string_view, int64_t> kImage[] = {{"to_q.", 0}, {"to_k.", 1}, {"to_v.", 2}};
    static const std::pair<std::string_view, int64_t> kText[] = {
        {"add_q_proj.", 0}, {"add_k_proj.", 1}, {"add_v_proj.", 2}};
    for (const auto& [ours, k] : kImage)
      if (nn::eat_name_prefix(s, ours)) return third(x + attn, k, s);
    for (const auto& [ours, k] : kText)
      if (nn::eat_name_prefix(s, ours)) return third(ctx + attn, k, s);
    if (nn::eat_name_prefix(s, "to_out.0.")) return plain(x + attn + "proj.", s);
    if (nn::eat_name_prefix(s, "to_add_out.")) return plain(ctx + attn + "proj.", s);
    if (nn::eat_name_prefix(s, "norm_q.")) return plain(x + attn + "ln_q.", s);
    if (nn::eat_name_prefix(s, "norm_k.")) return plain(x + attn + "ln_k.", s);
    if (nn::eat_name_prefix(s, "norm_added_q.")) return plain(ctx + attn + "ln_q.", s);
    if (nn::eat_name_prefix(s, "norm_added_k.")) return plain(ctx + attn + "ln_k.", s);
    return std::nullopt;
  };
}

vae::AutoencoderKLConfig infer_sd3_vae(const loading::Checkpoint& c, const std::string& p) {
  return diffusion::infer_ldm_vae(c, p, 1.5305, 0.0609);
}

}  // namespace mpool::models::sd3
