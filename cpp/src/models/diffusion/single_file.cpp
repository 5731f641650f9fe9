#include "models/diffusion/single_file.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "mpool/models/kit.h"

namespace mpool::models::diffusion {

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

vae::AutoencoderKLConfig infer_ldm_vae(const loading::Checkpoint& c, const std::string& p, double scaling_factor,
                                       double shift_factor) {
  constexpr std::string_view kWhat = "a VAE in the original (LDM) layout (encoder.down.N, decoder.up.N)";
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
                      {"scaling_factor", scaling_factor},
                      {"shift_factor", shift_factor},
                      {"use_quant_conv", c.find(p + "quant_conv.weight").has_value()},
                      {"use_post_quant_conv", c.find(p + "post_quant_conv.weight").has_value()},
                      {"mid_block_add_attention", c.find(p + "encoder.mid.attn_1.q.weight").has_value()}};
  return vae::AutoencoderKLConfig::from(
      loading::parse_model_config(inferred(std::move(j), p + "* (shapes of the autoencoder's tensors)")));
}

clip::ClipTextConfig infer_clip_text(const loading::Checkpoint& c, const std::string& p, const std::string& act,
                                     int64_t eos_token_id, bool projected) {
  constexpr std::string_view kWhat = "a CLIP text encoder with projection (text_model.*, text_projection.weight)";
  // Under text_model. (CLIPTextModelWithProjection, older CLIPTextModel files) or bare (transformers 5's CLIPTextModel).
  const std::string tm = c.find(p + "text_model.embeddings.token_embedding.weight") ? p + "text_model." : p;
  const std::string tok = tm + "embeddings.token_embedding.weight";
  const Shape t = shape_of(c, tok, 2, kWhat);
  const int64_t width = t[1];
  refuse_if(width % 64 != 0, tok, "the width " + std::to_string(width) + " is not a multiple of 64 (the heads' width)");
  const Shape pos = shape_of(c, tm + "embeddings.position_embedding.weight", 2, kWhat);
  const int64_t layers = count(c, tm + "encoder.layers.", ".mlp.fc1.weight");
  check(layers > 0, ErrorCode::kInvalidInput,
        "checkpoint has no tensor '" + tm + "encoder.layers.0.mlp.fc1.weight': is this " +
            std::string(kWhat) + "?");
  const Shape fc1 = shape_of(c, tm + "encoder.layers.0.mlp.fc1.weight", 2, kWhat);
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

int64_t clip_eos_id(const std::filesystem::path& tokenizer_file) {
  const auto tok = kit::open_tokenizer(tokenizer_file);
  const auto eos = tok->token_to_id("<|endoftext|>");
  return eos ? static_cast<int64_t>(*eos) : 2;
}

std::optional<WeightSource> text_encoder_source(const std::filesystem::path& file,
                                                const loading::Checkpoint& checkpoint, const std::string& inside,
                                                const NativeOptions& options, const std::string& option,
                                                const std::vector<std::string>& suffixes) {
  const std::string given = options.options.get_string(option, "");
  if (!given.empty()) {
    check(std::filesystem::is_regular_file(given), ErrorCode::kInvalidInput,
          "option " + option + ": " + given + " is not a file");
    const loading::Checkpoint other = loading::Checkpoint::open(given);
    for (const std::string& suffix : suffixes)
      if (const auto prefix = prefix_of(other, suffix)) return WeightSource{given, *prefix};
    throw Error(ErrorCode::kInvalidInput,
                "option " + option + ": " + given + " holds no tensor named *" + suffixes.front());
  }
  for (const std::string& suffix : suffixes)
    if (checkpoint.find(inside + suffix)) return WeightSource{file, inside};
  return std::nullopt;
}

}  // namespace mpool::models::diffusion
