#include "models/vae/config.h"

#include <cmath>

#include "mpool/base/error.h"

namespace mpool::models::vae {

namespace {

// Largest spatial factor accepted (pixels per latent along a side).
constexpr int64_t kMaxScaleFactor = int64_t{1} << 16;

int64_t read_count(const loading::JsonView& j, const char* key, int64_t fallback, int64_t min, int64_t max) {
  const int64_t v = j.get_or<int64_t>(key, fallback);
  check(v >= min && v <= max, ErrorCode::kInvalidInput,
        j.where(key) + " is " + std::to_string(v) + "; it must be in [" + std::to_string(min) + ", " +
            std::to_string(max) + "]");
  return v;
}

// A list of sizes, each in [min, loading::kMaxConfigDimension], with 1 to kMaxVaeBlocks entries.
std::vector<int64_t> read_sizes(const loading::JsonView& j, const char* key, std::vector<int64_t> fallback,
                                int64_t min = 1, int64_t max = loading::kMaxConfigDimension) {
  std::vector<int64_t> v = j.get_or<std::vector<int64_t>>(key, std::move(fallback));
  check(!v.empty() && static_cast<int64_t>(v.size()) <= kMaxVaeBlocks, ErrorCode::kInvalidInput,
        j.where(key) + " has " + std::to_string(v.size()) + " entries; it must have 1 to " +
            std::to_string(kMaxVaeBlocks));
  for (int64_t x : v)
    check(x >= min && x <= max, ErrorCode::kInvalidInput,
          j.where(key) + " holds " + std::to_string(x) + "; each entry must be in [" + std::to_string(min) + ", " +
              std::to_string(max) + "]");
  return v;
}

double read_finite(const loading::JsonView& j, const char* key, double fallback) {
  const double v = j.get_or<double>(key, fallback);
  check(std::isfinite(v), ErrorCode::kInvalidInput, j.where(key) + " must be a finite number");
  return v;
}

// `_class_name`, when the file says it, must be `expected`.
void check_class(const loading::JsonView& j, const char* expected) {
  const auto name = j.get_optional<std::string>("_class_name");
  if (name && *name != expected)
    throw Error(ErrorCode::kInvalidInput, j.where("_class_name") + " is '" + *name + "', not " + expected);
}

// down_block_types / up_block_types: absent means `accepted` once per level; present,
// one entry per level and each `accepted`.
void check_block_types(const loading::JsonView& j, const char* key, const char* accepted, size_t levels) {
  if (!j.has(key)) return;
  const auto types = j.get<std::vector<std::string>>(key);
  check(types.size() == levels, ErrorCode::kInvalidInput,
        j.where(key) + " has " + std::to_string(types.size()) + " entries, but " + j.where("block_out_channels") +
            " has " + std::to_string(levels));
  for (const auto& t : types)
    check(t == accepted, ErrorCode::kInvalidInput,
          j.where(key) + " holds '" + t + "'; only " + accepted + " is supported");
}

}  // namespace

AutoencoderKLConfig AutoencoderKLConfig::from(const loading::ModelConfig& c) {
  const loading::JsonView& j = c.raw;
  check_class(j, "AutoencoderKL");
  AutoencoderKLConfig out;
  out.in_channels = read_count(j, "in_channels", 3, 1, loading::kMaxConfigDimension);
  out.out_channels = read_count(j, "out_channels", 3, 1, loading::kMaxConfigDimension);
  out.block_out_channels = read_sizes(j, "block_out_channels", {64});
  check_block_types(j, "down_block_types", "DownEncoderBlock2D", out.block_out_channels.size());
  check_block_types(j, "up_block_types", "UpDecoderBlock2D", out.block_out_channels.size());
  out.layers_per_block = read_count(j, "layers_per_block", 1, 1, kMaxVaeLayersPerBlock);
  out.act = nn::parse_activation(j.get_or<std::string>("act_fn", "silu"), j.where("act_fn"));
  out.latent_channels = read_count(j, "latent_channels", 4, 1, loading::kMaxConfigDimension / 2);
  out.norm_num_groups = read_count(j, "norm_num_groups", 32, 1, loading::kMaxConfigDimension);
  for (int64_t ch : out.block_out_channels)
    check(ch % out.norm_num_groups == 0, ErrorCode::kInvalidInput,
          j.where("block_out_channels") + " holds " + std::to_string(ch) + ", which " + j.where("norm_num_groups") +
              " (" + std::to_string(out.norm_num_groups) + ") does not divide");
  out.sample_size = read_count(j, "sample_size", 32, 1, loading::kMaxConfigDimension);
  out.scaling_factor = read_finite(j, "scaling_factor", 0.18215);
  check(out.scaling_factor != 0, ErrorCode::kInvalidInput, j.where("scaling_factor") + " must not be zero");
  if (j.has("shift_factor")) out.shift_factor = read_finite(j, "shift_factor", 0.0);
  out.use_quant_conv = j.get_or<bool>("use_quant_conv", true);
  out.use_post_quant_conv = j.get_or<bool>("use_post_quant_conv", true);
  out.mid_block_add_attention = j.get_or<bool>("mid_block_add_attention", true);
  out.force_upcast = j.get_or<bool>("force_upcast", true);
  return out;
}

int64_t AutoencoderTinyConfig::encoder_scale_factor() const noexcept {
  return int64_t{1} << (encoder_block_out_channels.size() - 1);
}

int64_t AutoencoderTinyConfig::decoder_scale_factor() const noexcept {
  int64_t f = 1;
  for (size_t i = 1; i < decoder_block_out_channels.size(); ++i) f *= upsampling_scaling_factor;
  return f;
}

AutoencoderTinyConfig AutoencoderTinyConfig::from(const loading::ModelConfig& c) {
  const loading::JsonView& j = c.raw;
  check_class(j, "AutoencoderTiny");
  AutoencoderTinyConfig out;
  out.in_channels = read_count(j, "in_channels", 3, 1, loading::kMaxConfigDimension);
  out.out_channels = read_count(j, "out_channels", 3, 1, loading::kMaxConfigDimension);
  out.encoder_block_out_channels = read_sizes(j, "encoder_block_out_channels", {64, 64, 64, 64});
  out.decoder_block_out_channels = read_sizes(j, "decoder_block_out_channels", {64, 64, 64, 64});
  out.num_encoder_blocks = read_sizes(j, "num_encoder_blocks", {1, 3, 3, 3}, 0, kMaxVaeLayersPerBlock);
  out.num_decoder_blocks = read_sizes(j, "num_decoder_blocks", {3, 3, 3, 1}, 0, kMaxVaeLayersPerBlock);
  check(out.num_encoder_blocks.size() == out.encoder_block_out_channels.size(), ErrorCode::kInvalidInput,
        j.where("num_encoder_blocks") + " must have as many entries as " + j.where("encoder_block_out_channels"));
  check(out.num_decoder_blocks.size() == out.decoder_block_out_channels.size(), ErrorCode::kInvalidInput,
        j.where("num_decoder_blocks") + " must have as many entries as " + j.where("decoder_block_out_channels"));
  // EncoderTiny's stride-2 convs and DecoderTiny's level convs map a width to
  // itself, so a level can only follow one of the same width.
  for (const char* key : {"encoder_block_out_channels", "decoder_block_out_channels"}) {
    const auto& v = key[0] == 'e' ? out.encoder_block_out_channels : out.decoder_block_out_channels;
    for (int64_t ch : v)
      check(ch == v.front(), ErrorCode::kInvalidInput,
            j.where(key) + " mixes widths " + std::to_string(v.front()) + " and " + std::to_string(ch) +
                "; AutoencoderTiny's levels all keep one width");
  }
  out.act = nn::parse_activation(j.get_or<std::string>("act_fn", "relu"), j.where("act_fn"));
  const std::string upsample = j.get_or<std::string>("upsample_fn", "nearest");
  check(upsample == "nearest", ErrorCode::kInvalidInput,
        j.where("upsample_fn") + " is '" + upsample + "'; only nearest is supported");
  out.latent_channels = read_count(j, "latent_channels", 4, 1, loading::kMaxConfigDimension);
  out.upsampling_scaling_factor = read_count(j, "upsampling_scaling_factor", 2, 1, kMaxScaleFactor);
  int64_t scale = 1;
  for (size_t i = 1; i < out.decoder_block_out_channels.size(); ++i) {
    scale *= out.upsampling_scaling_factor;
    check(scale <= kMaxScaleFactor, ErrorCode::kInvalidInput,
          j.where("upsampling_scaling_factor") + " (" + std::to_string(out.upsampling_scaling_factor) + ") over " +
              std::to_string(out.decoder_block_out_channels.size()) + " levels scales by more than " +
              std::to_string(kMaxScaleFactor));
  }
  out.latent_magnitude = read_finite(j, "latent_magnitude", 3.0);
  check(out.latent_magnitude > 0, ErrorCode::kInvalidInput, j.where("latent_magnitude") + " must be positive");
  out.latent_shift = read_finite(j, "latent_shift", 0.5);
  out.force_upcast = j.get_or<bool>("force_upcast", false);
  out.scaling_factor = read_finite(j, "scaling_factor", 1.0);
  check(out.scaling_factor != 0, ErrorCode::kInvalidInput, j.where("scaling_factor") + " must not be zero");
  out.shift_factor = read_finite(j, "shift_factor", 0.0);
  return out;
}

}  // namespace mpool::models::vae
