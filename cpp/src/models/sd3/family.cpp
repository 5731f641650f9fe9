// The Stable Diffusion 3 family as a pool model: a diffusers
// StableDiffusion3Pipeline folder (model_index.json with transformer/, vae/,
// text_encoder{,_2,_3}/, tokenizer{,_2,_3}/, scheduler/) becomes a text_to_image
// spec whose replicas each hold a whole Sd3Pipeline.
#include <algorithm>
#include <cctype>

#include "models/sd3/pipeline.h"
#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "mpool/models/families.h"
#include "mpool/models/kit.h"

namespace mpool::models::sd3 {
namespace {

namespace fs = std::filesystem;
namespace cap = capabilities;

const std::vector<std::string> kPipelineClasses = {"StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"};

fs::path component_dir(const loading::ModelDirectory& d, const std::string& name) {
  const loading::Component& c = d.require(name);
  check(!c.error, ErrorCode::kInvalidInput, d.root().string() + ": component '" + name + "': " + c.error.value_or(""));
  return d.path_of(c);
}

PromptTokenizer prompt_tokenizer(const fs::path& dir, int64_t default_length, int64_t max_positions) {
  PromptTokenizer t;
  t.file = kit::require_tokenizer(dir);
  const auto tok = kit::open_tokenizer(t.file);
  t.pad_id = kit::pad_token_id(dir, *tok, 0);
  int64_t length = default_length;
  if (auto config = loading::load_tokenizer_config(dir))
    if (config->model_max_length && *config->model_max_length > 0 && *config->model_max_length < (int64_t{1} << 20))
      length = *config->model_max_length;
  t.max_length = max_positions > 0 ? std::min(length, max_positions) : length;
  return t;
}

bool turbo_variant(const fs::path& root, const NativeOptions& options) {
  const std::string variant = options.options.get_string("variant", "auto");
  check(variant == "auto" || variant == "turbo" || variant == "standard", ErrorCode::kInvalidInput,
        "option variant must be \"auto\", \"turbo\" or \"standard\", got '" + variant + "'");
  if (variant != "auto") return variant == "turbo";
  std::string name = fs::absolute(root).lexically_normal().filename().string();
  if (name.empty()) name = fs::absolute(root).lexically_normal().parent_path().filename().string();
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  return name.find("turbo") != std::string::npos;
}

double dtype_bytes(at::ScalarType t) { return static_cast<double>(c10::elementSize(t)); }

NativeModel build(const loading::ModelDirectory& d, const loading::ModelConfig&, const NativeOptions& options) {
  Sd3Plan plan;
  plan.dtype = kit::pick_dtype(options, "sd3");
  plan.text_encoders_on_cpu = options.options.get_bool("text_encoders_on_cpu", false);
  plan.text_dtype = plan.text_encoders_on_cpu ? at::kFloat : plan.dtype;
  plan.transformer_dir = component_dir(d, "transformer");
  plan.mmdit = MMDiTConfig::from(loading::load_json_object(plan.transformer_dir / "config.json"));
  plan.vae_dir = component_dir(d, "vae");
  plan.vae = vae::AutoencoderKLConfig::from(loading::load_model_config(plan.vae_dir));
  check(plan.vae.latent_channels == plan.mmdit.in_channels, ErrorCode::kInvalidInput,
        d.root().string() + ": the VAE makes " + std::to_string(plan.vae.latent_channels) +
            " latent channels, the transformer takes " + std::to_string(plan.mmdit.in_channels));
  plan.clip_l_dir = component_dir(d, "text_encoder");
  plan.clip_g_dir = component_dir(d, "text_encoder_2");
  plan.clip_l = clip::ClipTextConfig::from(loading::load_json_object(plan.clip_l_dir / "config.json"));
  plan.clip_g = clip::ClipTextConfig::from(loading::load_json_object(plan.clip_g_dir / "config.json"));
  plan.clip_l_tokenizer = prompt_tokenizer(component_dir(d, "tokenizer"), 77, plan.clip_l.text.max_positions);
  plan.clip_g_tokenizer = prompt_tokenizer(component_dir(d, "tokenizer_2"), 77, plan.clip_g.text.max_positions);
  check(plan.clip_l.projection_dim + plan.clip_g.projection_dim == plan.mmdit.pooled_projection_dim,
        ErrorCode::kInvalidInput,
        d.root().string() + ": the text encoders' projections (" + std::to_string(plan.clip_l.projection_dim) + " + " +
            std::to_string(plan.clip_g.projection_dim) + ") do not make the transformer's pooled_projection_dim " +
            std::to_string(plan.mmdit.pooled_projection_dim));
  plan.default_max_sequence_length = options.options.get_int("max_sequence_length", 256);
  check(plan.default_max_sequence_length >= 1 && plan.default_max_sequence_length <= 512, ErrorCode::kInvalidInput,
        "option max_sequence_length must be in [1, 512]");
  if (d.find("text_encoder_3") && d.find("tokenizer_3")) {
    plan.t5_dir = component_dir(d, "text_encoder_3");
    plan.t5 = t5::T5Config::from(loading::load_model_config(*plan.t5_dir));
    plan.t5_tokenizer = prompt_tokenizer(component_dir(d, "tokenizer_3"), 256, 0);
    check(plan.t5->d_model == plan.mmdit.joint_attention_dim, ErrorCode::kInvalidInput,
          d.root().string() + ": T5's width " + std::to_string(plan.t5->d_model) +
              " is not the transformer's joint_attention_dim " + std::to_string(plan.mmdit.joint_attention_dim));
  }
  plan.scheduler = nn::FlowMatchConfig::from(
      loading::load_json_object(component_dir(d, "scheduler") / "scheduler_config.json"));
  const std::string preview_option = options.options.get_string("preview_vae", "");
  const fs::path preview_dir = preview_option.empty() ? d.root() / "vae_preview" : fs::path(preview_option);
  if (fs::is_regular_file(preview_dir / "config.json")) {
    plan.preview_dir = preview_dir;
    plan.preview = vae::AutoencoderTinyConfig::from(loading::load_model_config(preview_dir));
    check(plan.preview->latent_channels == plan.vae.latent_channels, ErrorCode::kInvalidInput,
          preview_dir.string() + ": the preview autoencoder takes " + std::to_string(plan.preview->latent_channels) +
              " latent channels, the model makes " + std::to_string(plan.vae.latent_channels));
  } else {
    check(preview_option.empty(), ErrorCode::kInvalidInput,
          "option preview_vae: " + (preview_dir / "config.json").string() + " is missing");
  }

  // Memory: every component's weights as loaded, plus the peak of one step at
  // the default size with guidance (two sequences through the MMDiT, attention
  // scores included) or of the VAE decode at full resolution.
  NativeModel model;
  double weights = 0;
  auto measure = [&](const fs::path& dir, at::ScalarType dtype, const std::function<void(const nn::Weights&)>& f) {
    weights += kit::measure_weights(loading::Checkpoint::open(dir), dtype, f, model.warnings);
  };
  measure(plan.transformer_dir, plan.dtype, [&](const nn::Weights& w) { MMDiT::load(w, plan.mmdit); });
  measure(plan.vae_dir, plan.vae_dtype(), [&](const nn::Weights& w) { vae::AutoencoderKL::load(w, plan.vae); });
  double text_weights = 0;
  {
    const double before = weights;
    measure(plan.clip_l_dir, plan.text_dtype,
            [&](const nn::Weights& w) { clip::ClipTextEncoder::load(w, plan.clip_l, true); });
    measure(plan.clip_g_dir, plan.text_dtype,
            [&](const nn::Weights& w) { clip::ClipTextEncoder::load(w, plan.clip_g, true); });
    if (plan.t5_dir)
      measure(*plan.t5_dir, plan.text_dtype,
              [&](const nn::Weights& w) { t5::T5Encoder::load(t5::T5Encoder::root(w), *plan.t5); });
    text_weights = weights - before;
  }
  if (plan.preview_dir)
    measure(*plan.preview_dir, plan.dtype, [&](const nn::Weights& w) { vae::AutoencoderTiny::load(w, *plan.preview); });
  const bool turbo = turbo_variant(d.root(), options);
  const int64_t side = std::min(plan.mmdit.sample_size * plan.vae.spatial_scale_factor(), plan.max_side());
  const double e = dtype_bytes(plan.dtype);
  const double tokens = std::pow(static_cast<double>(side / plan.size_multiple()), 2) + 77.0 +
                        static_cast<double>(plan.default_max_sequence_length);
  const double mmdit_peak = 2.0 * tokens * static_cast<double>(plan.mmdit.inner_dim()) * 12.0 * e +
                            2.0 * static_cast<double>(plan.mmdit.num_attention_heads) * tokens * tokens * e;
  const double vae_peak = 4.0 * static_cast<double>(plan.vae.block_out_channels.front()) *
                          static_cast<double>(side) * static_cast<double>(side) * dtype_bytes(plan.vae_dtype());
  const double on_device = plan.text_encoders_on_cpu ? weights - text_weights : weights;
  model.weight_mb = on_device / (1024.0 * 1024.0);
  core::ModelSpec& spec = model.spec;
  spec.capabilities = {cap::TextToImage::kName};
  spec.memory_mb = kit::replica_memory_mb(on_device, std::max(mmdit_peak, vae_peak));
  spec.devices = options.devices;
  spec.max_replicas = 1;  // one pipeline is heavy; more replicas are the caller's explicit choice
  spec.defaults = {
      {"width", static_cast<double>(side)},
      {"height", static_cast<double>(side)},
      {"steps", turbo ? 4.0 : 28.0},
      {"guidance_scale", turbo ? 0.0 : 7.0},
      {"strength", 0.6},
      {"size_multiple", static_cast<double>(plan.size_multiple())},
      {"latent_channels", static_cast<double>(plan.mmdit.in_channels)},
      {"latent_scale", static_cast<double>(plan.vae.spatial_scale_factor())},
  };
  if (plan.text_encoders_on_cpu)
    model.warnings.push_back("text encoders on the CPU (" + std::to_string(static_cast<int64_t>(text_weights / 1048576.0)) +
                             " MB of host memory, float32), outside the device budget");
  spec.loader = [plan](const std::string& device) { return std::make_shared<Sd3Pipeline>(plan, at::Device(device)); };
  return model;
}

}  // namespace

Family family() {
  std::vector<OptionSpec> options = {
      {"text_encoders_on_cpu", OptionSpec::Kind::kBool,
       "run CLIP-L, CLIP-G and T5 on the CPU in float32 while the MMDiT and VAE use the device (default false)"},
      {"preview_vae", OptionSpec::Kind::kString,
       "an AutoencoderTiny (TAESD3) folder for step previews (default: vae_preview/ when present, else a linear "
       "latent-to-RGB map)"},
      {"variant", OptionSpec::Kind::kString,
       "\"turbo\" (4 steps, guidance 0 by default), \"standard\" (28 steps, guidance 7), or \"auto\" (turbo when the "
       "folder's name says so; the default)"},
      {"max_sequence_length", OptionSpec::Kind::kInt, "T5 tokens of a prompt by default (256; at most 512)"}};
  Family f{"sd3",
           {cap::TextToImage::kName},
           [](const loading::ModelConfig&, const loading::ModelLayout&) {
             return loading::FamilySupport::no("sd3 builds diffusers StableDiffusion3Pipeline folders (model_index.json)");
           },
           build,
           std::move(options)};
  f.pipeline_classes = kPipelineClasses;
  return f;
}

}  // namespace mpool::models::sd3
