#pragma once
// Typed views of the Hugging Face JSON files every family reads. Only the common
// fields live here; a family reads its own ones through `raw` and JsonView::get.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mpool/loading/json.h"

namespace mpool::loading {

/// rope_scaling (or the newer rope_parameters) of config.json.
struct RopeScaling {
  /// "linear", "dynamic", "yarn", "llama3", ... ("rope_type", or legacy "type").
  std::string type;
  /// Scaling factor, when the type has one.
  std::optional<double> factor;
  /// Context length the model was trained with before scaling.
  std::optional<std::int64_t> original_max_position_embeddings;
  /// llama3 low frequency factor.
  std::optional<double> low_freq_factor;
  /// llama3 high frequency factor.
  std::optional<double> high_freq_factor;
};

/// The common fields of config.json.
struct ModelConfig {
  /// "bert", "llama", "clip", ...
  std::string model_type;
  /// Class names such as "LlamaForCausalLM".
  std::vector<std::string> architectures;
  /// Checkpoint dtype as written ("float32", "bfloat16"; "torch_dtype" or newer "dtype").
  std::optional<std::string> torch_dtype;
  /// Vocabulary size.
  std::optional<std::int64_t> vocab_size;
  /// Hidden size (n_embd / d_model in some families: read those via raw).
  std::optional<std::int64_t> hidden_size;
  /// Number of transformer layers.
  std::optional<std::int64_t> num_hidden_layers;
  /// Number of attention heads.
  std::optional<std::int64_t> num_attention_heads;
  /// Number of key/value heads (grouped-query attention); absent means num_attention_heads.
  std::optional<std::int64_t> num_key_value_heads;
  /// Explicit per-head size, when not hidden_size / num_attention_heads.
  std::optional<std::int64_t> head_dim;
  /// MLP inner size.
  std::optional<std::int64_t> intermediate_size;
  /// Longest position the model has embeddings or rope for.
  std::optional<std::int64_t> max_position_embeddings;
  /// Activation name ("gelu", "silu", ...).
  std::optional<std::string> hidden_act;
  /// RoPE base frequency.
  std::optional<double> rope_theta;
  /// RoPE scaling, when configured.
  std::optional<RopeScaling> rope_scaling;
  /// Fraction of each head that is rotated (partial rotary models).
  std::optional<double> partial_rotary_factor;
  /// LayerNorm epsilon.
  std::optional<double> layer_norm_eps;
  /// RMSNorm epsilon.
  std::optional<double> rms_norm_eps;
  /// Whether the output projection shares the input embedding.
  std::optional<bool> tie_word_embeddings;
  /// Beginning-of-sequence ids (one or several).
  std::vector<std::int64_t> bos_token_id;
  /// End-of-sequence ids (one or several).
  std::vector<std::int64_t> eos_token_id;
  /// Padding ids.
  std::vector<std::int64_t> pad_token_id;
  /// The whole file, for family-specific fields.
  JsonView raw;
};

/// generation_config.json.
struct GenerationConfig {
  /// Beginning-of-sequence ids.
  std::vector<std::int64_t> bos_token_id;
  /// End-of-sequence ids; generation stops at any of them.
  std::vector<std::int64_t> eos_token_id;
  /// Padding ids.
  std::vector<std::int64_t> pad_token_id;
  /// Longest total length (prompt + generated).
  std::optional<std::int64_t> max_length;
  /// Most tokens to generate.
  std::optional<std::int64_t> max_new_tokens;
  /// Sample instead of greedy decoding.
  std::optional<bool> do_sample;
  /// Sampling temperature.
  std::optional<double> temperature;
  /// Nucleus sampling mass.
  std::optional<double> top_p;
  /// Top-k sampling cut.
  std::optional<std::int64_t> top_k;
  /// Repetition penalty.
  std::optional<double> repetition_penalty;
  /// The whole file.
  JsonView raw;
};

/// Special tokens named in tokenizer_config.json or special_tokens_map.json; each may
/// be written as a string or as an AddedToken object, stored here as its content.
struct SpecialTokens {
  /// Beginning-of-sequence token.
  std::optional<std::string> bos_token;
  /// End-of-sequence token.
  std::optional<std::string> eos_token;
  /// Unknown token.
  std::optional<std::string> unk_token;
  /// Separator token.
  std::optional<std::string> sep_token;
  /// Padding token.
  std::optional<std::string> pad_token;
  /// Classification token.
  std::optional<std::string> cls_token;
  /// Mask token.
  std::optional<std::string> mask_token;
  /// Further special tokens.
  std::vector<std::string> additional_special_tokens;
};

/// One chat template and where it was read from.
struct ChatTemplateSource {
  /// The Jinja source, as the file holds it.
  std::string text;
  /// The file it was read from.
  std::filesystem::path file;
  /// The file for messages; for an entry of a JSON list, followed by ` (template 'name')`.
  std::string where;
};

/// tokenizer_config.json (plus chat_template.jinja / chat_template.json when present).
struct TokenizerConfig {
  /// "BertTokenizer", "LlamaTokenizerFast", ...
  std::optional<std::string> tokenizer_class;
  /// Special tokens.
  SpecialTokens special;
  /// Longest input; nullopt when the file says "unlimited" (the 1e30 sentinel) or nothing.
  std::optional<std::int64_t> model_max_length;
  /// Jinja chat templates by name; a single template is called "default". With a
  /// directory, what load_chat_templates() reads from it; without, the file's own.
  std::map<std::string, std::string> chat_templates;
  /// Whether the tokenizer prepends bos.
  std::optional<bool> add_bos_token;
  /// Whether the tokenizer appends eos.
  std::optional<bool> add_eos_token;
  /// Lower-case before tokenizing (BERT uncased).
  std::optional<bool> do_lower_case;
  /// Padding side, "right" or "left".
  std::optional<std::string> padding_side;
  /// The side too long an input is cut from, "right" (transformers' default) or
  /// "left"; anything else is InvalidInput naming the file.
  std::optional<std::string> truncation_side;
  /// Added tokens by id: content and whether they are special.
  std::map<std::int64_t, std::pair<std::string, bool>> added_tokens;
  /// The whole file.
  JsonView raw;
};

/// Largest dimension a family accepts from config.json (2^31 - 1): bounds every
/// size, count and product the model code derives from the file.
inline constexpr std::int64_t kMaxConfigDimension = (std::int64_t{1} << 31) - 1;
/// Most layers a family accepts from config.json; the families allocate and name
/// weights per layer before any checkpoint is read.
inline constexpr std::int64_t kMaxConfigLayers = std::int64_t{1} << 16;

/// `value` of config.json's `key` when it is set, positive and at most `max`;
/// InvalidInput naming the key otherwise (a family's required dimensions).
std::int64_t require_positive(const std::optional<std::int64_t>& value, const char* key,
                              std::int64_t max = kMaxConfigDimension);

/// The rope settings object of config.json: "rope_parameters" (transformers 5)
/// when present, else the older "rope_scaling"; nullopt when neither is an object.
/// Everything that reads rope settings goes through this one precedence.
std::optional<JsonView> rope_parameters_node(const JsonView& config_json);

/// The sizes every transformer family requires of config.json, checked once.
/// A family's config struct derives from it.
struct TransformerSizes {
  std::string model_type;
  std::int64_t vocab_size = 0;
  std::int64_t hidden_size = 0;
  std::int64_t num_layers = 0;
  std::int64_t num_heads = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t max_position_embeddings = 0;

  /// Checks that `config`'s model_type is one of `model_types` (InvalidInput says
  /// `config.json: model_type 'x' is not <what> (a, b, c)`), then reads and bounds
  /// each size (require_positive). `default_max_positions` > 0 stands in for an
  /// absent max_position_embeddings.
  static TransformerSizes require(const struct ModelConfig& config, const std::vector<std::string>& model_types,
                                  const std::string& what, std::int64_t default_max_positions = 0);
};

/// Reads the common fields of config.json; errors name the file and key.
ModelConfig parse_model_config(const JsonView& json);
/// Reads generation_config.json.
GenerationConfig parse_generation_config(const JsonView& json);
/// Reads tokenizer_config.json; with `dir` (the directory it came from), the chat
/// templates are the directory's, as load_chat_templates() reads them.
TokenizerConfig parse_tokenizer_config(const JsonView& json,
                                       const std::optional<std::filesystem::path>& dir = std::nullopt);
/// Reads special_tokens_map.json.
SpecialTokens parse_special_tokens_map(const JsonView& json);

/// Loads `dir`/config.json.
ModelConfig load_model_config(const std::filesystem::path& dir);
/// Loads `dir`/generation_config.json, or nullopt when absent.
std::optional<GenerationConfig> load_generation_config(const std::filesystem::path& dir);
/// Loads `dir`/tokenizer_config.json, or nullopt when absent.
std::optional<TokenizerConfig> load_tokenizer_config(const std::filesystem::path& dir);
/// Loads `dir`/special_tokens_map.json, or nullopt when absent.
std::optional<SpecialTokens> load_special_tokens_map(const std::filesystem::path& dir);

/// The chat templates of tokenizer directory `dir` by name (empty when it has
/// none), read as transformers 5's tokenizers read them
/// (PreTrainedTokenizerBase.from_pretrained and _from_pretrained):
///  1. chat_template.jinja (named "default") and additional_chat_templates/<name>.jinja;
///     when any of these files exists, they are the templates and
///     tokenizer_config.json's "chat_template" is not read;
///  2. otherwise tokenizer_config.json's "chat_template": a string ("default") or
///     a list of {"name", "template"};
///  3. otherwise chat_template.json's "chat_template" (the legacy processor file,
///     which only transformers' processors read), when tokenizer_config.json has
///     no "chat_template" at all.
/// This is the one reader: inspect reports these names and Pool.chat renders these
/// texts. Errors (InvalidInput) name the file.
std::map<std::string, ChatTemplateSource> load_chat_templates(const std::filesystem::path& dir);

}  // namespace mpool::loading
