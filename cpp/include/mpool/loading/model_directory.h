#pragma once
// A model directory as a set of named components: a transformers model and the
// configs nested in its config.json (text_config, vision_config), the folders of a
// diffusers pipeline (model_index.json), several tokenizers, image processors
// (preprocessor_config.json), and single .safetensors files whose tensors carry
// component prefixes (model.diffusion_model., first_stage_model., text_model., ...).
// Torch-free: reads JSON files and safetensors headers, never tensor data.
// describe_layout() (layout.h) stays the single-model view the families use;
// ModelDirectory::layout() is exactly that view of the same directory.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpool/loading/config.h"
#include "mpool/imageio/preprocess.h"
#include "mpool/loading/json.h"
#include "mpool/loading/layout.h"
#include "mpool/loading/safetensors.h"

namespace mpool::loading {

/// What a component is.
enum class ComponentKind {
  /// A transformers config.json (and usually weights): CLIPTextModel, T5EncoderModel, ...
  kTransformersModel,
  /// A diffusers model folder: config.json with "_class_name", diffusion_pytorch_model weights.
  kDiffusersModel,
  /// A config nested in a parent's config.json ("text_config", "vision_config").
  kSubConfig,
  /// A diffusers scheduler (scheduler_config.json).
  kScheduler,
  /// Tokenizer files (tokenizer.json, vocab.json + merges.txt, spiece.model, ...).
  kTokenizer,
  /// An image processor's preprocessor_config.json.
  kImageProcessor,
  /// Another preprocessor_config.json (an audio feature extractor, ...).
  kFeatureExtractor,
  /// Weights without a config: a lone .safetensors file, or the tensors under one of its prefixes.
  kCheckpoint,
  /// A model_index.json entry whose folder is missing or holds none of the above.
  kOther,
};

/// Stable lowercase name of a kind ("transformers_model", "diffusers_model", "sub_config",
/// "scheduler", "tokenizer", "image_processor", "feature_extractor", "checkpoint", "other").
const char* component_kind_name(ComponentKind kind) noexcept;

/// An image size as preprocessor_config.json writes it: a bare integer or an object.
struct ImageSize {
  /// {"height": h, ...}.
  std::optional<std::int64_t> height;
  /// {"width": w, ...}.
  std::optional<std::int64_t> width;
  /// {"shortest_edge": n}.
  std::optional<std::int64_t> shortest_edge;
  /// {"longest_edge": n}.
  std::optional<std::int64_t> longest_edge;
  /// A bare integer ("size": 224): transformers reads it as the shortest edge or as a
  /// square, depending on the processor class, so it is kept as written.
  std::optional<std::int64_t> value;
};

/// The common fields of an image processor's preprocessor_config.json.
struct ImageProcessorConfig {
  /// "image_processor_type", else the older "feature_extractor_type" ("CLIPImageProcessor").
  std::optional<std::string> image_processor_type;
  /// "processor_class" ("CLIPProcessor"), written when saved through a processor.
  std::optional<std::string> processor_class;
  /// Resize to `size` first.
  std::optional<bool> do_resize;
  /// Then crop the centre to `crop_size`.
  std::optional<bool> do_center_crop;
  /// Multiply pixel values by `rescale_factor`.
  std::optional<bool> do_rescale;
  /// Subtract image_mean and divide by image_std.
  std::optional<bool> do_normalize;
  /// Convert to RGB first.
  std::optional<bool> do_convert_rgb;
  /// Target of the resize.
  std::optional<ImageSize> size;
  /// Target of the centre crop.
  std::optional<ImageSize> crop_size;
  /// Per-channel mean (one number is read as a list of one); empty when absent.
  std::vector<double> image_mean;
  /// Per-channel standard deviation; empty when absent.
  std::vector<double> image_std;
  /// Usually 1/255.
  std::optional<double> rescale_factor;
  /// PIL resampling filter as stored (0 nearest, 2 bilinear, 3 bicubic, ...).
  std::optional<std::int64_t> resample;
  /// The whole file.
  JsonView raw;
};

/// Reads preprocessor_config.json; errors name the file and key
/// (`preprocessor_config.json: "size.height" must be a positive integer`).
ImageProcessorConfig parse_image_processor_config(const JsonView& json);
/// What the image processor does, for imageio::preprocess: "size" with
/// "shortest_edge" or "height" and "width", "resample" (bilinear or bicubic;
/// bicubic when absent), "crop_size", "rescale_factor", three-channel "image_mean"
/// and "image_std". A step whose do_* flag is absent runs when its settings are
/// present. InvalidInput names `where` and the key when the file asks for
/// something imageio does not do.
imageio::PreprocessConfig preprocess_config(const ImageProcessorConfig& config, const std::string& where);
/// Whether a preprocessor_config.json is an image processor's: it names an
/// image_processor_type or an *ImageProcessor / *FeatureExtractor class of an image
/// model, or has an image field (image_mean, image_std, size, crop_size, do_resize,
/// do_center_crop). An audio feature extractor's (sampling_rate, feature_size) is not.
bool is_image_processor_config(const JsonView& json);

/// One entry of model_index.json: `"unet": ["diffusers", "UNet2DConditionModel"]`.
struct PipelineEntry {
  /// The key, which is also the component's folder.
  std::string name;
  /// "diffusers", "transformers", ...; nullopt for a `[null, null]` entry.
  std::optional<std::string> library;
  /// The class; nullopt for a `[null, null]` entry (a component the pipeline was saved without).
  std::optional<std::string> class_name;
};

/// model_index.json of a diffusers pipeline.
struct PipelineIndex {
  /// "_class_name": the pipeline class ("StableDiffusionXLPipeline").
  std::string class_name;
  /// "_diffusers_version".
  std::optional<std::string> diffusers_version;
  /// The component entries, sorted by name, `[null, null]` ones included.
  std::vector<PipelineEntry> entries;
  /// Entries that are settings rather than components ("requires_safety_checker": true).
  std::map<std::string, nlohmann::json> options;
  /// The whole file.
  JsonView raw;
};

/// Reads model_index.json. An entry that is a list of strings and nulls must be
/// `[library, class]` whose key is a plain folder name; errors name the file and key.
PipelineIndex parse_model_index(const JsonView& json);

/// The keys of a config.json object that hold nested model configs, sorted:
/// "text_config", "vision_config" and "audio_config" when they are objects, and any
/// other "*_config" object that names a "model_type" (so quantization_config is not one).
std::vector<std::string> nested_config_keys(const JsonView& json);

/// Tensors of one checkpoint that share a component prefix.
struct TensorGroup {
  /// "text_model.", "text_encoders.clip_l.", ...; "" for the names under no component prefix.
  std::string prefix;
  /// The stored names (prefix included), sorted.
  std::vector<std::string> names;
};

/// The prefix patterns group_by_component_prefix() knows, one dotted segment each
/// side; "*" stands for any one segment ("text_encoders.*." matches
/// "text_encoders.clip_l."). Stable Diffusion single files (model.diffusion_model.,
/// first_stage_model., cond_stage_model., conditioner.embedders.*., model_ema.),
/// bundles of text encoders (text_encoders.*.), two-tower models (text_model.,
/// vision_model.) and vision-language models (language_model., vision_tower.,
/// multi_modal_projector., and each under model.).
const std::vector<std::string>& component_prefix_patterns();

/// Groups tensor names by the component prefix each starts with (the longest
/// pattern that matches wins), sorted by prefix, then one group with prefix "" for the
/// names under none. Empty when no name carries a component prefix. Reads names only.
std::vector<TensorGroup> group_by_component_prefix(const std::vector<std::string>& names);

/// One named part of a model directory.
struct Component {
  /// "model", "text_config", "unet", "tokenizer_2", "image_processor",
  /// "model.diffusion_model", ... (unique within the directory).
  std::string name;
  /// What it is.
  ComponentKind kind = ComponentKind::kOther;
  /// Library from model_index.json ("diffusers", "transformers"), else inferred from the config.
  std::optional<std::string> library;
  /// The class: model_index.json's, else config.json's "_class_name" or first
  /// "architectures" entry, tokenizer_config.json's "tokenizer_class", or the image processor type.
  std::optional<std::string> class_name;
  /// Folder relative to the root ("" for the root itself).
  std::string folder;
  /// The config file relative to the root ("unet/config.json", "scheduler/scheduler_config.json").
  std::optional<std::string> config_file;
  /// For a sub-config: its key in the parent's config file ("text_config").
  std::optional<std::string> config_key;
  /// The component this one is part of: a sub-config's model, a prefix's whole checkpoint.
  std::optional<std::string> parent;
  /// The config object (a sub-config's nested object), for fields no struct reads.
  std::optional<JsonView> config;
  /// The common transformers fields, for transformers models and sub-configs.
  std::optional<ModelConfig> model_config;
  /// The image processor fields, for image processors.
  std::optional<ImageProcessorConfig> image_processor;
  /// Weight files, paths relative to the root (models and checkpoints).
  std::optional<WeightsLayout> weights;
  /// For a part of a single-file checkpoint: only the tensors under this prefix belong to it.
  std::optional<std::string> tensor_prefix;
  /// Tokenizer files relative to the root (tokenizers).
  std::vector<std::string> tokenizer_files;
  /// Why the component cannot be used as it is (its folder is missing, its
  /// checkpoint header is malformed); the other components are still described.
  std::optional<std::string> error;
};

/// A model directory described as components.
///
/// - With model_index.json: one component per entry that names a class, of the kind
///   its folder shows (config.json, scheduler_config.json, preprocessor_config.json,
///   tokenizer files); `[null, null]` entries are in pipeline()->entries only.
/// - Otherwise: "model" for config.json (where describe_layout finds it), one
///   sub-config per nested config named by its key ("text_config"), "tokenizer" for the
///   root's tokenizer (or tokenizer/ when the root has none), "tokenizer_2" and
///   "tokenizer_3" for those folders, and "image_processor" (or "feature_extractor")
///   for preprocessor_config.json; without that file, "image_processor" is the
///   "image_processor" object of processor_config.json, where transformers 5 saves
///   a processor's (LlavaProcessor's) image settings. Without config.json, weights alone make a
///   "checkpoint"; a lone .safetensors whose names carry component prefixes also
///   gets one component per prefix, named by it without the final dot
///   ("first_stage_model"), whose checkpoint() is the tensors under that prefix.
/// - A sub-config of a component other than "model" is named "<parent>.<key>".
class ModelDirectory {
 public:
  /// Describes a directory, or a single .safetensors file (then root() is its folder
  /// and the file is the "checkpoint"). Malformed JSON, a config field of the wrong
  /// type or a malformed model_index.json entry raise Error(kInvalidInput) naming the
  /// file and key; a missing component folder or an unreadable checkpoint header is
  /// reported in that component's `error` instead.
  static ModelDirectory open(const std::filesystem::path& dir_or_file);

  /// The directory described.
  const std::filesystem::path& root() const noexcept { return root_; }
  /// describe_layout(root()): the single-model view, as the families see it.
  const ModelLayout& layout() const noexcept { return layout_; }
  /// model_index.json, when the directory is a diffusers pipeline.
  const std::optional<PipelineIndex>& pipeline() const noexcept { return pipeline_; }
  /// The components, in the order described above (model_index entries by name).
  const std::vector<Component>& components() const noexcept { return components_; }
  /// The component called `name`, or nullptr.
  const Component* find(std::string_view name) const noexcept;
  /// The component called `name`; Error(kInvalidInput) naming the ones there are otherwise.
  const Component& require(std::string_view name) const;
  /// The components of one kind, in order (tokenizers: tokenizer, tokenizer_2, ...).
  std::vector<const Component*> of_kind(ComponentKind kind) const;
  /// A transformers model's or sub-config's common config fields; Error(kInvalidInput)
  /// when `name` is missing or has none.
  const ModelConfig& model_config(std::string_view name) const;
  /// root() / the component's folder.
  std::filesystem::path path_of(const Component& component) const { return root_ / component.folder; }
  /// Opens a component's safetensors weights (headers only; tensors map lazily): the
  /// index when sharded, else its file, narrowed to `tensor_prefix` when it has one.
  /// Error(kInvalidInput) naming the component when it has no weights, they are in
  /// another format (with the conversion advice), or they are malformed.
  Checkpoint checkpoint(std::string_view name) const;

 private:
  std::filesystem::path root_;
  ModelLayout layout_;
  std::optional<PipelineIndex> pipeline_;
  std::vector<Component> components_;
};

}  // namespace mpool::loading
