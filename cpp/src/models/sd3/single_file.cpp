#include "models/sd3/single_file.h"

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
namespace {

using Shape = std::vector<int64_t>;

std::optional<Shape> shape_if(const loading::Checkpoint& c, const std::string& name) {
  const auto ref = c.find(name);
  if (!ref) return std::nullopt;
  return Shape(ref->info->shape.begin(), ref->info->shape.end());
}

// The stored shape of `name`, which must have `rank` dimensions.
Shape shape_of(const loading::Checkpoint& c, const std::string& name, size_t rank, std::string_view what) {
  const auto s = shape_if(c, name);
  check(s.has_value(), ErrorCode::kInvalidInput,
        "checkpoint has no tensor '" + name + "': is this " + std::string(what) + "?");
  check(s->size() == rank && std::all_of(s->begin(), s->end(), [](int64_t d) { return d > 0; }),
        ErrorCode::kInvalidInput,
        "tensor '" + name + "' has shape " + c10::str(at::IntArrayRef(*s)) + ", not " + std::to_string(rank) +
            " positive dimensions as " + std::string(what) + " stores it");
  return *s;
}

// How many of `<head>{i}<tail>` exist for i = 0, 1, ...
int64_t count(const loading::Checkpoint& c, const std::string& head, const std::string& tail) {
  int64_t n = 0;
  while (c.find(head + std::to_string(n) + tail)) ++n;
  return n;
}

void refuse_if(bool contradicts, const std::string& tensor, const std::string& why) {
  check(!contradicts, ErrorCode::kInvalidInput, "tensor '" + tensor + "': " + why);
}

loading::JsonView inferred(nlohmann::json j, const std::string& label) {
  auto root = std::make_shared<const nlohmann::json>(std::move(j));
  return loading::JsonView(root, root.get(), label, "");
}

}  // namespace

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
  constexpr std::string_view kWhat = "an SD3 VAE in the original layout (first_stage_model.*)";
  const Shape conv_in = shape_of(c, p + "encoder.conv_in.weight", 4, kWhat);
  const int64_t levels = count(c, p + "encoder.down.", ".block.0.conv1.weight");
  check(levels > 0, ErrorCode::kInvalidInput,
        "checkpoint has no tensor '" + p + "encoder.down.0.block.0.conv1.weight': is this " + std::string(kWhat) + "?");
  std::vector<int64_t> widths;
  for (int64_t i = 0; i < levels; ++i)
    widths.push_back(shape_of(c, p + "encoder.down." + std::to_string(i) + ".block.0.conv1.weight", 4, kWhat)[0]);
  const int64_t layers = count(c, p + "encoder.down.0.block.", ".conv1.weight");
  const std::string dec_in = p + "decoder.conv_in.weight";
  const Shape d = shape_of(c, dec_in, 4, kWhat);
  refuse_if(d[0] != widths.back(), dec_in,
            "makes " + std::to_string(d[0]) + " channels, the encoder's last level is " +
                std::to_string(widths.back()) + " wide");
  const Shape out = shape_of(c, p + "decoder.conv_out.weight", 4, kWhat);
  const std::vector<std::string> down(static_cast<size_t>(levels), "DownEncoderBlock2D");
  const std::vector<std::string> up(static_cast<size_t>(levels), "UpDecoderBlock2D");
  nlohmann::json j = {{"_class_name", "AutoencoderKL"},
                      {"in_channels", conv_in[1]},
                      {"out_channels", out[0]},
                      {"down_block_types", down},
                      {"up_block_types", up},
                      {"block_out_channels", widths},
                      {"layers_per_block", layers},
                      {"latent_channels", d[1]},
                      {"norm_num_groups", 32},
                      {"scaling_factor", 1.5305},
                      {"shift_factor", 0.0609},
                      {"use_quant_conv", c.find(p + "quant_conv.weight").has_value()},
                      {"use_post_quant_conv", c.find(p + "post_quant_conv.weight").has_value()},
                      {"mid_block_add_attention", c.find(p + "encoder.mid.attn_1.q.weight").has_value()}};
  return vae::AutoencoderKLConfig::from(
      loading::parse_model_config(inferred(std::move(j), p + "* (shapes of the single file)")));
}

clip::ClipTextConfig infer_clip_text(const loading::Checkpoint& c, const std::string& p, const std::string& act,
                                     int64_t eos_token_id, bool projected) {
  constexpr std::string_view kWhat = "a CLIP text encoder with projection (text_model.*, text_projection.weight)";
  const std::string tok = p + "text_model.embeddings.token_embedding.weight";
  const Shape t = shape_of(c, tok, 2, kWhat);
  const int64_t width = t[1];
  refuse_if(width % 64 != 0, tok, "the width " + std::to_string(width) + " is not a multiple of 64 (the heads' width)");
  const Shape pos = shape_of(c, p + "text_model.embeddings.position_embedding.weight", 2, kWhat);
  const int64_t layers = count(c, p + "text_model.encoder.layers.", ".mlp.fc1.weight");
  check(layers > 0, ErrorCode::kInvalidInput,
        "checkpoint has no tensor '" + p + "text_model.encoder.layers.0.mlp.fc1.weight': is this " +
            std::string(kWhat) + "?");
  const Shape fc1 = shape_of(c, p + "text_model.encoder.layers.0.mlp.fc1.weight", 2, kWhat);
  const int64_t projection = projected ? shape_of(c, p + "text_projection.weight", 2, kWhat)[0] : width;
  nlohmann::json j = {{"model_type", "clip_text_model"},
                      {"hidden_size", width},
                      {"intermediate_size", fc1[0]},
                      {"num_hidden_layers", layers},
                      {"num_attention_heads", width / 64},
                      {"max_position_embeddings", pos[0]},
                      {"vocab_size", t[0]},
                      {"hidden_act", act},
                      {"projection_dim", projection},
                      {"eos_token_id", eos_token_id}};
  return clip::ClipTextConfig::from(inferred(std::move(j), p + "* (shapes of the text encoder's tensors)"));
}

t5::T5Config infer_t5(const loading::Checkpoint& c, const std::string& p) {
  constexpr std::string_view kWhat = "a T5 encoder (shared.weight, encoder.block.N)";
  const std::string emb =
      c.find(p + "encoder.embed_tokens.weight") ? p + "encoder.embed_tokens.weight" : p + "shared.weight";
  const Shape e = shape_of(c, emb, 2, kWhat);
  const std::string attn = p + "encoder.block.0.layer.0.SelfAttention.";
  const Shape bias = shape_of(c, attn + "relative_attention_bias.weight", 2, kWhat);
  const std::string qn = attn + "q.weight";
  const Shape q = shape_of(c, qn, 2, kWhat);
  refuse_if(q[1] != e[1] || q[0] % bias[1] != 0, qn,
            "shape " + c10::str(at::IntArrayRef(q)) + " is not (" + std::to_string(bias[1]) + " heads x d_kv, " +
                std::to_string(e[1]) + ")");
  const int64_t layers = count(c, p + "encoder.block.", ".layer.0.SelfAttention.q.weight");
  const std::string ff = p + "encoder.block.0.layer.1.DenseReluDense.";
  const bool gated = c.find(ff + "wi_0.weight").has_value();
  const Shape wi = shape_of(c, ff + (gated ? "wi_0.weight" : "wi.weight"), 2, kWhat);
  nlohmann::json j = {{"model_type", "t5"},
                      {"vocab_size", e[0]},
                      {"d_model", e[1]},
                      {"d_kv", q[0] / bias[1]},
                      {"d_ff", wi[0]},
                      {"num_layers", layers},
                      {"num_heads", bias[1]},
                      {"relative_attention_num_buckets", bias[0]},
                      {"feed_forward_proj", gated ? "gated-gelu" : "relu"},
                      {"layer_norm_epsilon", 1e-6}};
  return t5::T5Config::from(loading::parse_model_config(inferred(std::move(j), p + "* (shapes of the T5 tensors)")));
}

std::optional<std::string> prefix_of(const loading::Checkpoint& c, const std::string& suffix) {
  std::optional<std::string> best;
  for (const auto& n : c.names())
    if (n.ends_with(suffix)) {
      std::string p = n.substr(0, n.size() - suffix.size());
      if (!p.empty() && p.back() != '.') continue;
      if (!best || p.size() < best->size()) best = std::move(p);
    }
  return best;
}

}  // namespace mpool::models::sd3
