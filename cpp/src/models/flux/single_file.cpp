#include "models/flux/single_file.h"

#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/diffusion/single_file.h"
#include "mpool/base/error.h"

namespace mpool::models::flux {

std::optional<std::string> flux_prefix(const loading::Checkpoint& c) {
  for (const char* p : {"", "model.diffusion_model."})
    if (c.find(std::string(p) + "img_in.weight") && c.find(std::string(p) + "vector_in.in_layer.weight")) return p;
  return std::nullopt;
}

FluxConfig infer_flux(const loading::Checkpoint& c, const std::string& p) {
  constexpr std::string_view kWhat =
      "a FLUX.1 transformer in the original layout (img_in, double_blocks, single_blocks)";
  const std::string img_in = p + "img_in.weight";
  const diffusion::Shape x = diffusion::shape_of(c, img_in, 2, kWhat);
  const int64_t hidden = x[0];
  auto same_width = [&](const std::string& name) {
    const diffusion::Shape s = diffusion::shape_of(c, name, 2, kWhat);
    diffusion::refuse_if(s[0] != hidden, name,
                         "makes " + std::to_string(s[0]) + " channels, the blocks are " + std::to_string(hidden) +
                             " wide (" + img_in + ")");
    return s;
  };
  const diffusion::Shape txt = same_width(p + "txt_in.weight");
  const diffusion::Shape vec = same_width(p + "vector_in.in_layer.weight");
  const std::string time_in = p + "time_in.in_layer.weight";
  diffusion::refuse_if(same_width(time_in)[1] != 256, time_in, "does not take FLUX's 256 timestep sinusoids");
  const bool guidance = c.find(p + "guidance_in.in_layer.weight").has_value();
  if (guidance) same_width(p + "guidance_in.in_layer.weight");
  const int64_t doubles = diffusion::count(c, p + "double_blocks.", ".img_mod.lin.weight");
  const int64_t singles = diffusion::count(c, p + "single_blocks.", ".modulation.lin.weight");
  check(doubles + singles > 0, ErrorCode::kInvalidInput,
        "checkpoint has neither '" + p + "double_blocks.0.img_mod.lin.weight' nor '" + p +
            "single_blocks.0.modulation.lin.weight': is this " + std::string(kWhat) + "?");
  const std::string norm =
      doubles > 0 ? p + "double_blocks.0.img_attn.norm.query_norm.scale" : p + "single_blocks.0.norm.query_norm.scale";
  const int64_t head_dim = diffusion::shape_of(c, norm, 1, kWhat)[0];
  diffusion::refuse_if(hidden % head_dim != 0, norm,
                       "the width " + std::to_string(hidden) + " is not a multiple of the attention head width " +
                           std::to_string(head_dim));
  const std::vector<int64_t> axes{16, 56, 56};
  diffusion::refuse_if(head_dim != 128, norm,
                       "heads " + std::to_string(head_dim) +
                           " wide; a single file does not store its rotary axes, and FLUX.1's [16, 56, 56] cover "
                           "128-wide heads only (use a diffusers folder with axes_dims_rope in its config)");
  if (singles > 0) {
    const std::string linear1 = p + "single_blocks.0.linear1.weight";
    const diffusion::Shape l1 = diffusion::shape_of(c, linear1, 2, kWhat);
    diffusion::refuse_if(l1[0] != 7 * hidden || l1[1] != hidden, linear1,
                         "shape " + c10::str(at::IntArrayRef(l1)) + " is not q, k, v and a 4x MLP of width " +
                             std::to_string(hidden) + " (" + std::to_string(7 * hidden) + ", " +
                             std::to_string(hidden) + ")");
  }
  const std::string final_linear = p + "final_layer.linear.weight";
  const diffusion::Shape f = diffusion::shape_of(c, final_linear, 2, kWhat);
  diffusion::refuse_if(f[1] != hidden, final_linear,
                       "takes " + std::to_string(f[1]) + " channels, the blocks are " + std::to_string(hidden) +
                           " wide (" + img_in + ")");
  const nlohmann::json j = {{"patch_size", 1},
                            {"in_channels", x[1]},
                            {"out_channels", f[0]},
                            {"num_layers", doubles},
                            {"num_single_layers", singles},
                            {"attention_head_dim", head_dim},
                            {"num_attention_heads", hidden / head_dim},
                            {"joint_attention_dim", txt[1]},
                            {"pooled_projection_dim", vec[1]},
                            {"guidance_embeds", guidance},
                            {"axes_dims_rope", axes}};
  return FluxConfig::from(diffusion::inferred(j, p + "* (shapes of the single file)"));
}

nn::NameMap flux_original_names(const FluxConfig& config) {
  const int64_t dim = config.inner_dim();
  using Rows = std::vector<std::pair<int64_t, int64_t>>;
  return [dim](std::string_view name) -> std::optional<nn::StoredName> {
    std::string_view s = name;
    auto plain = [](std::string stored, std::string_view rest) {
      return nn::StoredName{std::move(stored) + std::string(rest), false, {}};
    };
    auto rows = [](std::string stored, std::string_view rest, int64_t begin, int64_t end) {
      return nn::StoredName{std::move(stored) + std::string(rest), false, Rows{{begin, end}}};
    };
    if (nn::eat_name_prefix(s, "x_embedder.")) return plain("img_in.", s);
    if (nn::eat_name_prefix(s, "context_embedder.")) return plain("txt_in.", s);
    if (nn::eat_name_prefix(s, "time_text_embed.")) {
      std::string base;
      if (nn::eat_name_prefix(s, "timestep_embedder."))
        base = "time_in.";
      else if (nn::eat_name_prefix(s, "guidance_embedder."))
        base = "guidance_in.";
      else if (nn::eat_name_prefix(s, "text_embedder."))
        base = "vector_in.";
      else
        return std::nullopt;
      if (nn::eat_name_prefix(s, "linear_1.")) return plain(base + "in_layer.", s);
      if (nn::eat_name_prefix(s, "linear_2.")) return plain(base + "out_layer.", s);
      return std::nullopt;
    }
    if (nn::eat_name_prefix(s, "norm_out.linear."))  // (shift, scale) stored; (scale, shift) asked for
      return nn::StoredName{"final_layer.adaLN_modulation.1." + std::string(s), false, Rows{{dim, 2 * dim}, {0, dim}}};
    if (nn::eat_name_prefix(s, "proj_out.")) return plain("final_layer.linear.", s);
    if (nn::eat_name_prefix(s, "transformer_blocks.")) {
      const auto i = nn::eat_name_index(s);
      if (!i) return std::nullopt;
      const std::string block = "double_blocks." + std::to_string(*i) + ".";
      if (nn::eat_name_prefix(s, "norm1.linear.")) return plain(block + "img_mod.lin.", s);
      if (nn::eat_name_prefix(s, "norm1_context.linear.")) return plain(block + "txt_mod.lin.", s);
      if (nn::eat_name_prefix(s, "ff.net.0.proj.")) return plain(block + "img_mlp.0.", s);
      if (nn::eat_name_prefix(s, "ff.net.2.")) return plain(block + "img_mlp.2.", s);
      if (nn::eat_name_prefix(s, "ff_context.net.0.proj.")) return plain(block + "txt_mlp.0.", s);
      if (nn::eat_name_prefix(s, "ff_context.net.2.")) return plain(block + "txt_mlp.2.", s);
      if (!nn::eat_name_prefix(s, "attn.")) return std::nullopt;
      // (ours, stream, third of the fused qkv)
      static const std::tuple<std::string_view, std::string_view, int64_t> kThirds[] = {
          {"to_q.", "img_attn.", 0},       {"to_k.", "img_attn.", 1},       {"to_v.", "img_attn.", 2},
          {"add_q_proj.", "txt_attn.", 0}, {"add_k_proj.", "txt_attn.", 1}, {"add_v_proj.", "txt_attn.", 2}};
      for (const auto& [ours, stream, k] : kThirds)
        if (nn::eat_name_prefix(s, ours)) return rows(block + std::string(stream) + "qkv.", s, k * dim, (k + 1) * dim);
      static const std::pair<std::string_view, std::string_view> kNorms[] = {
          {"norm_q.weight", "img_attn.norm.query_norm.scale"},
          {"norm_k.weight", "img_attn.norm.key_norm.scale"},
          {"norm_added_q.weight", "txt_attn.norm.query_norm.scale"},
          {"norm_added_k.weight", "txt_attn.norm.key_norm.scale"}};
      for (const auto& [ours, stored] : kNorms)
        if (s == ours) return plain(block + std::string(stored), "");
      if (nn::eat_name_prefix(s, "to_out.0.")) return plain(block + "img_attn.proj.", s);
      if (nn::eat_name_prefix(s, "to_add_out.")) return plain(block + "txt_attn.proj.", s);
      return std::nullopt;
    }
    if (!nn::eat_name_prefix(s, "single_transformer_blocks.")) return std::nullopt;
    const auto i = nn::eat_name_index(s);
    if (!i) return std::nullopt;
    const std::string block = "single_blocks." + std::to_string(*i) + ".";
    if (nn::eat_name_prefix(s, "norm.linear.")) return plain(block + "modulation.lin.", s);
    // linear1's rows: q, k, v (dim each), then the 4 dim of the MLP.
    if (nn::eat_name_prefix(s, "proj_mlp.")) return rows(block + "linear1.", s, 3 * dim, 7 * dim);
    if (nn::eat_name_prefix(s, "proj_out.")) return plain(block + "linear2.", s);
    if (!nn::eat_name_prefix(s, "attn.")) return std::nullopt;
    static const std::pair<std::string_view, int64_t> kParts[] = {{"to_q.", 0}, {"to_k.", 1}, {"to_v.", 2}};
    for (const auto& [ours, k] : kParts)
      if (nn::eat_name_prefix(s, ours)) return rows(block + "linear1.", s, k * dim, (k + 1) * dim);
    if (s == "norm_q.weight") return plain(block + "norm.query_norm.scale", "");
    if (s == "norm_k.weight") return plain(block + "norm.key_norm.scale", "");
    return std::nullopt;
  };
}

}  // namespace mpool::models::flux
