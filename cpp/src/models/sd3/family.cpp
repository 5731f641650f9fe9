// The Stable Diffusion 3 family as a pool model: a diffusers
// StableDiffusion3Pipeline folder (model_index.json with transformer/, vae/,
// text_encoder{,_2,_3}/, tokenizer{,_2,_3}/, scheduler/) or an SD3 / SD3.5
// single-file checkpoint (model.diffusion_model., first_stage_model., optional
// text_encoders.*; text encoders, tokenizers and scheduler also from options)
// becomes a text_to_image spec whose replicas each hold a whole Sd3Pipeline.
#include <algorithm>
#include <cctype>

#include "models/diffusion/single_file.h"
#include "models/sd3/pipeline.h"
#include "models/sd3/single_file.h"
#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "mpool/models/families.h"
#include "mpool/models/kit.h"

namespace mpool::models::sd3 {
namespace {

namespace fs = std::filesystem;
namespace cap = capabilities;
using diffusion::clip_eos_id;
using diffusion::component_dir;
using diffusion::infer_clip_text;
using diffusion::infer_t5;
using diffusion::prompt_tokenizer;
using diffusion::text_encoder_source;

const std::vector<std::string> kPipelineClasses = {"StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"};

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

// Both CLIP prompts are padded to the first tokenizer's length, as diffusers'
// SD3 pipelines pad them (tokenizer_max_length is tokenizer/'s model_max_length);
// bounded by both encoders' positions.
void share_clip_length(Sd3Plan& plan) {
  const int64_t length = std::min({plan.clip_l_tokenizer.max_length, plan.clip_l.text.max_positions,
                                   plan.clip_g.text.max_positions});
  plan.clip_l_tokenizer.max_length = plan.clip_g_tokenizer.max_length = length;
}

void check_pooled(const Sd3Plan& plan, const std::string& where) {
  check(plan.clip_l.projection_dim + plan.clip_g.projection_dim == plan.mmdit.pooled_projection_dim,
        ErrorCode::kInvalidInput,
        where + ": the text encoders' projections (" + std::to_string(plan.clip_l.projection_dim) + " + " +
            std::to_string(plan.clip_g.projection_dim) + ") do not make the transformer's pooled_projection_dim " +
            std::to_string(plan.mmdit.pooled_projection_dim));
}

void check_t5_width(const Sd3Plan& plan, const std::string& where) {
  check(plan.t5->d_model == plan.mmdit.joint_attention_dim, ErrorCode::kInvalidInput,
        where + ": T5's width " + std::to_string(plan.t5->d_model) + " is not the transformer's joint_attention_dim " +
            std::to_string(plan.mmdit.joint_attention_dim));
}

// A diffusers StableDiffusion3Pipeline folder: every component and config from its folders.
void plan_from_folders(Sd3Plan& plan, const loading::ModelDirectory& d) {
  plan.transformer_weights = {component_dir(d, "transformer"), ""};
  plan.mmdit = MMDiTConfig::from(loading::load_json_object(plan.transformer_weights.path / "config.json"));
  plan.latent.vae_weights = {component_dir(d, "vae"), ""};
  plan.latent.vae = vae::AutoencoderKLConfig::from(loading::load_model_config(plan.latent.vae_weights.path));
  plan.clip_l_weights = {component_dir(d, "text_encoder"), ""};
  plan.clip_g_weights = {component_dir(d, "text_encoder_2"), ""};
  plan.clip_l = clip::ClipTextConfig::from(loading::load_json_object(plan.clip_l_weights.path / "config.json"));
  plan.clip_g = clip::ClipTextConfig::from(loading::load_json_object(plan.clip_g_weights.path / "config.json"));
  plan.clip_l_tokenizer = prompt_tokenizer(component_dir(d, "tokenizer"), 77, plan.clip_l.text.max_positions);
  plan.clip_g_tokenizer = prompt_tokenizer(component_dir(d, "tokenizer_2"), 77, plan.clip_g.text.max_positions);
  share_clip_length(plan);
  check_pooled(plan, d.root().string());
  if (d.find("text_encoder_3") && d.find("tokenizer_3")) {
    plan.t5_weights = WeightSource{component_dir(d, "text_encoder_3"), ""};
    plan.t5 = t5::T5Config::from(loading::load_model_config(plan.t5_weights->path));
    plan.t5_tokenizer = prompt_tokenizer(component_dir(d, "tokenizer_3"), 256, 0);
    check_t5_width(plan, d.root().string());
  }
  plan.scheduler = nn::FlowMatchConfig::from(
      loading::load_json_object(component_dir(d, "scheduler") / "scheduler_config.json"));
}

// An SD3 / SD3.5 single file (Stability's layout): configs from the shapes, text
// encoders inside it or from the files options name, tokenizers and scheduler
// from the `tokenizers` folder.
void plan_from_single_file(Sd3Plan& plan, const loading::ModelDirectory& d, const NativeOptions& options) {
  const loading::Component& whole = d.require("checkpoint");
  check(whole.weights && whole.weights->files.size() == 1, ErrorCode::kInvalidInput,
        d.root().string() + ": an SD3 single file must be one .safetensors file");
  const fs::path file = d.root() / whole.weights->files.front();
  const loading::Checkpoint checkpoint = loading::Checkpoint::open(file);
  const std::string where = file.string();
  plan.transformer_weights = {file, kMMDiTPrefix};
  plan.original_mmdit_names = true;
  plan.mmdit = infer_mmdit(checkpoint, kMMDiTPrefix);
  plan.latent.vae_weights = {file, kVaePrefix};
  plan.latent.vae = infer_sd3_vae(checkpoint, kVaePrefix);

  // Tokenizers: nothing can be downloaded, so a folder with diffusers' tokenizer folders.
  const std::string option = options.options.get_string("tokenizers", "");
  const fs::path tokenizers = option.empty() ? file.parent_path() : fs::path(option);
  check(fs::is_directory(tokenizers / "tokenizer") && fs::is_directory(tokenizers / "tokenizer_2"),
        ErrorCode::kInvalidInput,
        where + ": a single file holds no tokenizers; give option tokenizers = a folder with tokenizer/, "
                "tokenizer_2/ (and tokenizer_3/ for T5), as a diffusers StableDiffusion3Pipeline has them (" +
            (option.empty() ? "none beside the file in " : "option tokenizers: none in ") + tokenizers.string() +
            ")");

  const auto clip_l = text_encoder_source(file, checkpoint, "text_encoders.clip_l.transformer.", options,
                                          "clip_l_file", diffusion::kClipTextSuffixes);
  const auto clip_g = text_encoder_source(file, checkpoint, "text_encoders.clip_g.transformer.", options,
                                          "clip_g_file", diffusion::kClipTextSuffixes);
  check(clip_l && clip_g, ErrorCode::kInvalidInput,
        where + ": CLIP-L and CLIP-G are needed: the file has no " +
            (clip_l ? "text_encoders.clip_g.transformer." : "text_encoders.clip_l.transformer.") +
            "* tensors; give them with option " + (clip_l ? "clip_g_file" : "clip_l_file") +
            " (a CLIPTextModelWithProjection .safetensors file)");
  plan.clip_l_weights = *clip_l;
  plan.clip_g_weights = *clip_g;
  const fs::path tok_l = tokenizers / "tokenizer", tok_g = tokenizers / "tokenizer_2";
  // CLIP-L's pooled vector goes in unprojected (Stability's reference ClipL has
  // return_projected_pooled=False; diffusers' single-file loading sets an
  // identity text_projection), so a stored text_projection is not used.
  plan.clip_l_projected = false;
  plan.clip_l = infer_clip_text(loading::Checkpoint::open(clip_l->path), clip_l->prefix, "quick_gelu",
                                clip_eos_id(kit::require_tokenizer(tok_l)), false);
  plan.clip_g = infer_clip_text(loading::Checkpoint::open(clip_g->path), clip_g->prefix, "gelu",
                                clip_eos_id(kit::require_tokenizer(tok_g)), true);
  plan.clip_l_tokenizer = prompt_tokenizer(tok_l, 77, plan.clip_l.text.max_positions);
  plan.clip_g_tokenizer = prompt_tokenizer(tok_g, 77, plan.clip_g.text.max_positions);
  share_clip_length(plan);
  check_pooled(plan, where);
  plan.t5_weights = text_encoder_source(file, checkpoint, "text_encoders.t5xxl.transformer.", options, "t5xxl_file",
                                        {"encoder.final_layer_norm.weight"});
  if (plan.t5_weights) {
    check(fs::is_directory(tokenizers / "tokenizer_3"), ErrorCode::kInvalidInput,
          where + ": T5 weights are given but " + (tokenizers / "tokenizer_3").string() +
              " (its tokenizer) is missing; see option tokenizers");
    plan.t5 = infer_t5(loading::Checkpoint::open(plan.t5_weights->path), plan.t5_weights->prefix);
    plan.t5_tokenizer = prompt_tokenizer(tokenizers / "tokenizer_3", 256, 0);
    check_t5_width(plan, where);
  }
  const fs::path scheduler = tokenizers / "scheduler" / "scheduler_config.json";
  if (fs::is_regular_file(scheduler)) {
    plan.scheduler = nn::FlowMatchConfig::from(loading::load_json_object(scheduler));
  } else {
    plan.scheduler = nn::FlowMatchConfig{};
    plan.scheduler.shift = 3.0;  // SD3's FlowMatchEulerDiscreteScheduler
  }
  check(plan.latent.vae.latent_channels == plan.mmdit.in_channels, ErrorCode::kInvalidInput,
        where + ": the VAE makes " + std::to_string(plan.latent.vae.latent_channels) + " latent channels (" + kVaePrefix +
            "decoder.conv_in.weight), the transformer takes " + std::to_string(plan.mmdit.in_channels) + " (" +
            kMMDiTPrefix + "x_embedder.proj.weight)");
}

NativeModel build(const loading::ModelDirectory& d, const loading::ModelConfig&, const NativeOptions& options) {
  Sd3Plan plan;
  plan.dtype = kit::pick_dtype(options, "sd3");
  plan.latent.dtype = plan.dtype;
  plan.text_encoders_on_cpu = options.options.get_bool("text_encoders_on_cpu", false);
  plan.text_dtype = plan.text_encoders_on_cpu ? at::kFloat : plan.dtype;
  plan.default_max_sequence_length = options.options.get_int("max_sequence_length", 256);
  check(plan.default_max_sequence_length >= 1 && plan.default_max_sequence_length <= 512, ErrorCode::kInvalidInput,
        "option max_sequence_length must be in [1, 512]");
  const bool single_file = !d.pipeline().has_value();
  if (single_file) {
    plan_from_single_file(plan, d, options);
  } else {
    for (const char* o : {"clip_l_file", "clip_g_file", "t5xxl_file", "tokenizers"})
      check(options.options.values.count(o) == 0, ErrorCode::kInvalidInput,
            std::string("option ") + o + " is for single-file checkpoints; " + d.root().string() +
                " is a diffusers folder");
    plan_from_folders(plan, d);
    check(plan.latent.vae.latent_channels == plan.mmdit.in_channels, ErrorCode::kInvalidInput,
          d.root().string() + ": the VAE makes " + std::to_string(plan.latent.vae.latent_channels) +
              " latent channels, the transformer takes " + std::to_string(plan.mmdit.in_channels));
  }
  plan.latent.find_preview(options, single_file ? fs::path() : d.root() / "vae_preview");
  // Memory: every component's weights as loaded, plus the peak of one step at
  // the default size with guidance (two sequences through the MMDiT, attention
  // scores included) or of the VAE decode at full resolution.
  NativeModel model;
  diffusion::WeightMeter meter(single_file, model.warnings);
  meter.measure(plan.transformer_weights, plan.dtype,
                [&](const nn::Weights& w) { MMDiT::load(mmdit_view(plan, w), plan.mmdit); });
  plan.latent.measure(meter);
  double text_weights = meter.measure(plan.clip_l_weights, plan.text_dtype, [&](const nn::Weights& w) {
    clip::ClipTextEncoder::load(w, plan.clip_l, plan.clip_l_projected);
  });
  text_weights += meter.measure(plan.clip_g_weights, plan.text_dtype,
                                [&](const nn::Weights& w) { clip::ClipTextEncoder::load(w, plan.clip_g, true); });
  if (plan.t5_weights)
    text_weights += meter.measure(*plan.t5_weights, plan.text_dtype, [&](const nn::Weights& w) {
      t5::T5Encoder::load(t5::T5Encoder::root(w), *plan.t5);
    });
  // A single file's variant is in its name ("sd3.5_large_turbo.safetensors").
  const fs::path& weights_file = plan.transformer_weights.path;
  const bool turbo =
      turbo_variant(single_file ? weights_file.parent_path() / weights_file.stem() : d.root(), options);
  const int64_t side = std::min(plan.mmdit.sample_size * plan.latent.scale(), plan.max_side());
  const double e = dtype_bytes(plan.dtype);
  const double tokens = std::pow(static_cast<double>(side / plan.size_multiple()), 2) + 77.0 +
                        static_cast<double>(plan.default_max_sequence_length);
  const double mmdit_peak = 2.0 * tokens * static_cast<double>(plan.mmdit.inner_dim()) * 12.0 * e +
                            2.0 * static_cast<double>(plan.mmdit.num_attention_heads) * tokens * tokens * e;
  diffusion::ImageModel image;
  image.weights = meter.total();
  image.text_weights = text_weights;
  image.text_encoders_on_cpu = plan.text_encoders_on_cpu;
  image.peak = std::max(mmdit_peak, plan.latent.decode_peak(side));
  image.defaults = {
      {"width", static_cast<double>(side)},
      {"height", static_cast<double>(side)},
      {"steps", turbo ? 4.0 : 28.0},
      {"guidance_scale", turbo ? 0.0 : 7.0},
      {"strength", 0.6},
      {"size_multiple", static_cast<double>(plan.size_multiple())},
      {"latent_channels", static_cast<double>(plan.mmdit.in_channels)},
      {"latent_scale", static_cast<double>(plan.latent.scale())},
  };
  diffusion::publish(model, options, image,
                     [plan](const std::string& device) { return std::make_shared<Sd3Pipeline>(plan, at::Device(device)); });
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
       "folder's (a single file's) name says so; the default)"},
      {"tokenizers", OptionSpec::Kind::kString,
       "single files: a folder holding tokenizer/, tokenizer_2/ and tokenizer_3/ as a diffusers SD3 folder does (and "
       "optionally scheduler/; default: the file's own folder)"},
      {"clip_l_file", OptionSpec::Kind::kString,
       "single files: CLIP-L (CLIPTextModelWithProjection) as a .safetensors file, when the checkpoint has no "
       "text_encoders.clip_l.*"},
      {"clip_g_file", OptionSpec::Kind::kString,
       "single files: CLIP-G (CLIPTextModelWithProjection) as a .safetensors file, when the checkpoint has no "
       "text_encoders.clip_g.*"},
      {"t5xxl_file", OptionSpec::Kind::kString,
       "single files: the T5-XXL encoder as a .safetensors file, when the checkpoint has no text_encoders.t5xxl.* "
       "(neither: no T5, its context is zeros)"},
      {"max_sequence_length", OptionSpec::Kind::kInt, "T5 tokens of a prompt by default (256; at most 512)"}};
  Family f{"sd3",
           {cap::TextToImage::kName},
           [](const loading::ModelConfig&, const loading::ModelLayout&) {
             return loading::FamilySupport::no(
                 "sd3 builds diffusers StableDiffusion3Pipeline folders (model_index.json) and SD3 single "
                 ".safetensors files");
           },
           build,
           std::move(options)};
  f.pipeline_classes = kPipelineClasses;
  f.single_file_tensors = {kSingleFileProbe};
  return f;
}

}  // namespace mpool::models::sd3
