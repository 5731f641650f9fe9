// The FLUX.1 family as a pool model: a diffusers FluxPipeline folder
// (model_index.json with transformer/, vae/, text_encoder/ (CLIP-L),
// text_encoder_2/ (T5-XXL), tokenizer{,_2}/, scheduler/) or Black Forest Labs'
// single transformer file (double_blocks / single_blocks, with or without
// "model.diffusion_model."), whose text encoders, autoencoder and tokenizers
// come from the file when it holds them, else from options. Schnell or dev is
// the transformer's guidance embedding; replicas each hold a whole FluxPipeline.
#include <algorithm>
#include <cmath>

#include "models/diffusion/single_file.h"
#include "models/flux/pipeline.h"
#include "models/flux/single_file.h"
#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "mpool/models/families.h"
#include "mpool/models/kit.h"

namespace mpool::models::flux {
namespace {

namespace fs = std::filesystem;
namespace cap = capabilities;
using diffusion::component_dir;
using diffusion::prompt_tokenizer;

const std::vector<std::string> kPipelineClasses = {"FluxPipeline", "FluxImg2ImgPipeline"};
const std::vector<std::string> kSingleFileMarkers = {"double_blocks.0.img_attn.qkv.weight",
                                                     "model.diffusion_model.double_blocks.0.img_attn.qkv.weight"};
// FLUX's autoencoder latents: (mean - shift) * scaling.
constexpr double kVaeScaling = 0.3611, kVaeShift = 0.1159;

void check_parts(const FluxPlan& plan, const std::string& where) {
  check(plan.transformer.patch_size == 1, ErrorCode::kInvalidInput,
        where + ": a FLUX transformer with patch_size " + std::to_string(plan.transformer.patch_size) +
            " is not supported (FLUX.1 packs 2x2 latents in the pipeline and uses patch_size 1)");
  check(plan.transformer.in_channels == plan.latent.vae.latent_channels * kPack * kPack, ErrorCode::kInvalidInput,
        where + ": the transformer takes " + std::to_string(plan.transformer.in_channels) +
            " channels per token, the VAE's " + std::to_string(plan.latent.vae.latent_channels) +
            " latent channels packed 2x2 make " + std::to_string(plan.latent.vae.latent_channels * kPack * kPack));
  check(plan.clip.text.hidden_size == plan.transformer.pooled_projection_dim, ErrorCode::kInvalidInput,
        where + ": CLIP's width " + std::to_string(plan.clip.text.hidden_size) +
            " is not the transformer's pooled_projection_dim " + std::to_string(plan.transformer.pooled_projection_dim));
  check(plan.t5.d_model == plan.transformer.joint_attention_dim, ErrorCode::kInvalidInput,
        where + ": T5's width " + std::to_string(plan.t5.d_model) + " is not the transformer's joint_attention_dim " +
            std::to_string(plan.transformer.joint_attention_dim));
}

// A diffusers FluxPipeline folder: every component and config from its folders.
void plan_from_folders(FluxPlan& plan, const loading::ModelDirectory& d) {
  plan.transformer_weights = {component_dir(d, "transformer"), ""};
  plan.transformer = FluxConfig::from(loading::load_json_object(plan.transformer_weights.path / "config.json"));
  plan.latent.vae_weights = {component_dir(d, "vae"), ""};
  plan.latent.vae = vae::AutoencoderKLConfig::from(loading::load_model_config(plan.latent.vae_weights.path));
  plan.clip_weights = {component_dir(d, "text_encoder"), ""};
  plan.clip = clip::ClipTextConfig::from(loading::load_json_object(plan.clip_weights.path / "config.json"));
  plan.clip_tokenizer = prompt_tokenizer(component_dir(d, "tokenizer"), 77, plan.clip.text.max_positions);
  plan.t5_weights = {component_dir(d, "text_encoder_2"), ""};
  plan.t5 = t5::T5Config::from(loading::load_model_config(plan.t5_weights.path));
  plan.t5_tokenizer = prompt_tokenizer(component_dir(d, "tokenizer_2"), 512, 0);
  plan.scheduler = nn::FlowMatchConfig::from(
      loading::load_json_object(component_dir(d, "scheduler") / "scheduler_config.json"));
}

// Black Forest Labs' transformer file; the rest from the file or from options.
void plan_from_single_file(FluxPlan& plan, const loading::ModelDirectory& d, const NativeOptions& options) {
  const loading::Component& whole = d.require("checkpoint");
  check(whole.weights && whole.weights->files.size() == 1, ErrorCode::kInvalidInput,
        d.root().string() + ": a FLUX single file must be one .safetensors file");
  const fs::path file = d.root() / whole.weights->files.front();
  const loading::Checkpoint checkpoint = loading::Checkpoint::open(file);
  const std::string where = file.string();
  const auto prefix = flux_prefix(checkpoint);
  check(prefix.has_value(), ErrorCode::kInvalidInput, where + ": no FLUX transformer (double_blocks.0.*) in it");
  plan.transformer_weights = {file, *prefix};
  plan.original_names = true;
  plan.transformer = infer_flux(checkpoint, *prefix);

  const std::string option = options.options.get_string("tokenizers", "");
  const fs::path tokenizers = option.empty() ? file.parent_path() : fs::path(option);
  check(fs::is_directory(tokenizers / "tokenizer") && fs::is_directory(tokenizers / "tokenizer_2"),
        ErrorCode::kInvalidInput,
        where + ": a single file holds no tokenizers; give option tokenizers = a folder with tokenizer/ (CLIP) and "
                "tokenizer_2/ (T5), as a diffusers FluxPipeline has them (none in " +
            tokenizers.string() + ")");
  const auto need = [&](std::optional<WeightSource> s, const std::string& inside, const std::string& option_name,
                        const std::string& what) {
    check(s.has_value(), ErrorCode::kInvalidInput,
          where + ": " + what + " is needed: the file has no " + inside + "* tensors; give it with option " +
              option_name);
    return *s;
  };
  const std::string clip_in = "text_encoders.clip_l.transformer.", t5_in = "text_encoders.t5xxl.transformer.",
                    vae_in = "vae.";
  plan.clip_weights = need(diffusion::text_encoder_source(file, checkpoint, clip_in, options, "clip_l_file",
                                                          diffusion::kClipTextSuffixes),
                           clip_in, "clip_l_file", "CLIP-L (a CLIPTextModel .safetensors file)");
  plan.t5_weights = need(diffusion::text_encoder_source(file, checkpoint, t5_in, options, "t5xxl_file",
                                                        {"encoder.final_layer_norm.weight"}),
                         t5_in, "t5xxl_file", "the T5-XXL encoder (a T5EncoderModel .safetensors file)");
  plan.latent.vae_weights = need(diffusion::text_encoder_source(file, checkpoint, vae_in, options, "vae_file",
                                                                {"decoder.conv_in.weight"}),
                                 vae_in, "vae_file", "the autoencoder (ae.safetensors, original names)");
  const fs::path tok_clip = tokenizers / "tokenizer";
  plan.clip = diffusion::infer_clip_text(loading::Checkpoint::open(plan.clip_weights.path), plan.clip_weights.prefix,
                                         "quick_gelu", diffusion::clip_eos_id(kit::require_tokenizer(tok_clip)), false);
  plan.clip_tokenizer = prompt_tokenizer(tok_clip, 77, plan.clip.text.max_positions);
  plan.t5 = diffusion::infer_t5(loading::Checkpoint::open(plan.t5_weights.path), plan.t5_weights.prefix);
  plan.t5_tokenizer = prompt_tokenizer(tokenizers / "tokenizer_2", 512, 0);
  plan.latent.vae = diffusion::infer_ldm_vae(loading::Checkpoint::open(plan.latent.vae_weights.path),
                                             plan.latent.vae_weights.prefix, kVaeScaling, kVaeShift);
  const fs::path scheduler = tokenizers / "scheduler" / "scheduler_config.json";
  if (fs::is_regular_file(scheduler)) {
    plan.scheduler = nn::FlowMatchConfig::from(loading::load_json_object(scheduler));
  } else {
    // The published schedulers: schnell's static shift 1, dev's resolution-dependent shift.
    plan.scheduler = nn::FlowMatchConfig{};
    plan.scheduler.use_dynamic_shifting = plan.transformer.guidance_embeds;
    plan.scheduler.shift = plan.transformer.guidance_embeds ? 3.0 : 1.0;
  }
}

NativeModel build(const loading::ModelDirectory& d, const loading::ModelConfig&, const NativeOptions& options) {
  FluxPlan plan;
  plan.dtype = kit::pick_dtype(options, "flux");
  plan.latent.dtype = plan.dtype;
  plan.text_encoders_on_cpu = options.options.get_bool("text_encoders_on_cpu", false);
  plan.text_dtype = plan.text_encoders_on_cpu ? at::kFloat : plan.dtype;
  const bool single_file = !d.pipeline().has_value();
  if (single_file) {
    plan_from_single_file(plan, d, options);
  } else {
    for (const char* o : {"clip_l_file", "t5xxl_file", "vae_file", "tokenizers"})
      check(options.options.values.count(o) == 0, ErrorCode::kInvalidInput,
            std::string("option ") + o + " is for single-file checkpoints; " + d.root().string() +
                " is a diffusers folder");
    plan_from_folders(plan, d);
  }
  const bool dev = plan.transformer.guidance_embeds;
  // diffusers' default for both (Black Forest Labs ran schnell with 256: the option, or the request's setting).
  plan.default_max_sequence_length = options.options.get_int("max_sequence_length", 512);
  check(plan.default_max_sequence_length >= 1 && plan.default_max_sequence_length <= 512, ErrorCode::kInvalidInput,
        "option max_sequence_length must be in [1, 512]");
  check_parts(plan, d.root().string());
  plan.latent.find_preview(options, single_file ? fs::path() : d.root() / "vae_preview");

  // Memory: every component's weights as loaded, plus the peak of one step at
  // the default size (attention scores included) or of the VAE decode.
  NativeModel model;
  diffusion::WeightMeter meter(single_file, model.warnings);
  meter.measure(plan.transformer_weights, plan.dtype,
                [&](const nn::Weights& w) { FluxTransformer::load(transformer_view(plan, w), plan.transformer); });
  plan.latent.measure(meter);
  double text_weights = meter.measure(plan.clip_weights, plan.text_dtype, [&](const nn::Weights& w) {
    clip::ClipTextEncoder::load(w, plan.clip, false);
  });
  text_weights += meter.measure(plan.t5_weights, plan.text_dtype,
                                [&](const nn::Weights& w) { t5::T5Encoder::load(t5::T5Encoder::root(w), plan.t5); });
  const int64_t side = 128 * plan.latent.scale();  // diffusers' default_sample_size 128 latents
  const double e = static_cast<double>(c10::elementSize(plan.dtype));
  const double tokens = std::pow(static_cast<double>(side / plan.size_multiple()), 2) +
                        static_cast<double>(plan.default_max_sequence_length);
  const double inner = static_cast<double>(plan.transformer.num_attention_heads * plan.transformer.attention_head_dim);
  const double step_peak = tokens * inner * 14.0 * e +
                           static_cast<double>(plan.transformer.num_attention_heads) * tokens * tokens * e;
  diffusion::ImageModel image;
  image.weights = meter.total();
  image.text_weights = text_weights;
  image.text_encoders_on_cpu = plan.text_encoders_on_cpu;
  image.peak = std::max(step_peak, plan.latent.decode_peak(side));
  image.defaults = {
      {"width", static_cast<double>(side)},
      {"height", static_cast<double>(side)},
      {"steps", dev ? 28.0 : 4.0},
      {"guidance_scale", dev ? 3.5 : 0.0},
      {"strength", 0.6},
      {"size_multiple", static_cast<double>(plan.size_multiple())},
      {"latent_channels", static_cast<double>(plan.latent_channels())},
      {"latent_scale", static_cast<double>(plan.latent.scale())},
      {"latent_packing", static_cast<double>(kPack)},
  };
  diffusion::publish(model, options, image,
                     [plan](const std::string& device) { return std::make_shared<FluxPipeline>(plan, at::Device(device)); });
  return model;
}

}  // namespace

Family family() {
  std::vector<OptionSpec> options = {
      {"text_encoders_on_cpu", OptionSpec::Kind::kBool,
       "run CLIP-L and T5 on the CPU in float32 while the transformer and VAE use the device (default false)"},
      {"preview_vae", OptionSpec::Kind::kString,
       "an AutoencoderTiny (TAEF1) folder for step previews (default: vae_preview/ when present, else a linear "
       "latent-to-RGB map)"},
      {"max_sequence_length", OptionSpec::Kind::kInt,
       "T5 tokens of a prompt by default (512, as diffusers; schnell was trained with 256; at most 512)"},
      {"tokenizers", OptionSpec::Kind::kString,
       "single files: a folder holding tokenizer/ and tokenizer_2/ as a diffusers FluxPipeline does (and optionally "
       "scheduler/; default: the file's own folder)"},
      {"clip_l_file", OptionSpec::Kind::kString,
       "single files: CLIP-L (CLIPTextModel) as a .safetensors file, when the checkpoint has no "
       "text_encoders.clip_l.*"},
      {"t5xxl_file", OptionSpec::Kind::kString,
       "single files: the T5-XXL encoder as a .safetensors file, when the checkpoint has no text_encoders.t5xxl.*"},
      {"vae_file", OptionSpec::Kind::kString,
       "single files: the autoencoder (Black Forest Labs' ae.safetensors, original names), when the checkpoint has "
       "no vae.*"}};
  Family f{"flux",
           {cap::TextToImage::kName},
           [](const loading::ModelConfig&, const loading::ModelLayout&) {
             return loading::FamilySupport::no(
                 "flux builds diffusers FluxPipeline folders (model_index.json) and FLUX.1 single .safetensors files");
           },
           build,
           std::move(options)};
  f.pipeline_classes = kPipelineClasses;
  f.single_file_tensors = kSingleFileMarkers;
  return f;
}

}  // namespace mpool::models::flux
