#pragma once
// Where a model lives and what its directory holds. Resolution is offline only:
// a local directory, or a snapshot already in the local Hugging Face cache.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace mpool::loading {

/// A model directory found on disk.
struct ResolvedModel {
  /// The snapshot or local directory.
  std::filesystem::path path;
  /// "local_directory" or "hf_cache".
  std::string source;
  /// The repo id, when found in the cache.
  std::optional<std::string> repo_id;
  /// The snapshot revision, when found in the cache.
  std::optional<std::string> revision;
};

/// The hub cache directory: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.
std::filesystem::path hf_hub_cache_dir();

/// Resolves a local directory or a repo id ("org/name", optionally "@revision") from
/// the cache. Throws Error(kInvalidInput) naming every path searched.
ResolvedModel resolve_model(std::string_view path_or_repo_id);
/// Same with an explicit cache directory (tests, callers with their own cache).
ResolvedModel resolve_model(std::string_view path_or_repo_id, const std::filesystem::path& hub_cache);

/// How the weights are stored.
enum class WeightsFormat { kNone, kSafetensors, kSafetensorsSharded, kPytorchBin, kPytorchBinSharded, kGguf, kOther };

/// Stable lowercase name of a format ("safetensors", "safetensors_sharded", ...).
const char* weights_format_name(WeightsFormat format) noexcept;

/// The weight files of a model directory.
struct WeightsLayout {
  /// Format found (safetensors preferred when several are present).
  WeightsFormat format = WeightsFormat::kNone;
  /// Weight files, relative to the model directory, sorted.
  std::vector<std::string> files;
  /// The shard index, when sharded.
  std::optional<std::string> index;
  /// Other formats that are present as well (e.g. pytorch_model.bin beside model.safetensors).
  std::vector<std::string> other_files;
};

/// The weights of one model folder `dir`: transformers' file names (model.safetensors,
/// its index, pytorch_model.bin, ...) and diffusers' (diffusion_pytorch_model.*);
/// every path is `prefix` + the file name. A malformed shard index raises
/// Error(kInvalidInput) naming it.
WeightsLayout describe_weights(const std::filesystem::path& dir, const std::string& prefix = "");

/// The tokenizer files present in `dir` (tokenizer.json, tokenizer_config.json,
/// vocab.txt, vocab.json, merges.txt, spiece.model, ...), as `prefix` + name, in a fixed order.
std::vector<std::string> tokenizer_files_in(const std::filesystem::path& dir, const std::string& prefix = "");

/// One entry of modules.json.
struct SentenceTransformersModule {
  /// Position in the pipeline.
  std::int64_t idx = 0;
  /// Module name.
  std::string name;
  /// Folder relative to the model directory ("" for the root).
  std::string path;
  /// Class, e.g. "sentence_transformers.models.Pooling".
  std::string type;
};

/// A Dense module's config.json (sentence-transformers' Dense: a linear layer,
/// then an activation, then optionally a residual sum, over the pooled embedding).
struct DenseModuleConfig {
  /// The module's folder under the model root (its weights: model.safetensors there).
  std::string path;
  /// The config file, for errors.
  std::string config_file;
  std::int64_t in_features = 0;
  std::int64_t out_features = 0;
  bool bias = true;
  /// The activation's torch class ("torch.nn.modules.activation.Tanh", the default).
  std::string activation;
  /// Adds the input (or its projection "residual.weight", when the widths differ).
  bool use_residual = false;
  /// The features it reads and writes ("sentence_embedding" unless a model says otherwise).
  std::string input_name;
  std::string output_name;
};

/// 1_Pooling/config.json.
struct PoolingConfig {
  /// "mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens", "weightedmean" (several joined by "+").
  std::string mode;
  /// Embedding width the pooling expects ("embedding_dimension", formerly
  /// "word_embedding_dimension").
  std::optional<std::int64_t> word_embedding_dimension;
  /// Whether prompt tokens are pooled too.
  bool include_prompt = true;
};

/// The sentence-transformers wrapping of a model.
struct SentenceTransformersLayout {
  /// Modules in pipeline order.
  std::vector<SentenceTransformersModule> modules;
  /// Folder of the Transformer module ("" when the model is at the root).
  std::string transformer_path;
  /// The Pooling module's settings, when there is one.
  std::optional<PoolingConfig> pooling;
  /// The Dense modules, in pipeline order.
  std::vector<DenseModuleConfig> dense;
  /// Whether the pipeline has a Normalize module.
  bool normalize = false;
  /// Modules other than Transformer, Pooling, Dense and Normalize, by type.
  std::vector<std::string> other_modules;
  /// sentence_bert_config.json max_seq_length.
  std::optional<std::int64_t> max_seq_length;
  /// sentence_bert_config.json do_lower_case.
  std::optional<bool> do_lower_case;
  /// Named prompts from config_sentence_transformers.json.
  std::map<std::string, std::string> prompts;
  /// The prompt used when the caller names none.
  std::optional<std::string> default_prompt_name;
  /// "cosine", "dot", ...
  std::optional<std::string> similarity_fn_name;
};

/// What a model directory holds.
struct ModelLayout {
  /// The directory inspected.
  std::filesystem::path root;
  /// Where config.json and the weights live (root, or the Transformer module's folder).
  std::filesystem::path model_dir;
  /// Whether model_dir holds config.json.
  bool has_config = false;
  /// Whether model_dir holds generation_config.json.
  bool has_generation_config = false;
  /// The weights.
  WeightsLayout weights;
  /// Tokenizer files present (tokenizer.json, tokenizer_config.json, vocab.txt, ...), relative to root.
  std::vector<std::string> tokenizer_files;
  /// The directory the tokenizer files are in.
  std::filesystem::path tokenizer_dir;
  /// The sentence-transformers wrapping, when modules.json exists.
  std::optional<SentenceTransformersLayout> sentence_transformers;
};

/// Describes `dir`; malformed JSON in the files it reads raises Error(kInvalidInput) naming the file.
ModelLayout describe_layout(const std::filesystem::path& dir);

}  // namespace mpool::loading
