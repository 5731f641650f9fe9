#include "mpool/loading/inspect.h"

#include <initializer_list>
#include <set>

#include "mpool/base/error.h"
#include "mpool/loading/safetensors.h"

namespace mpool::loading {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

template <typename T>
json opt(const std::optional<T>& v) {
  return v ? json(*v) : json(nullptr);
}

json special_json(const SpecialTokens& s) {
  return {{"bos_token", opt(s.bos_token)}, {"eos_token", opt(s.eos_token)}, {"unk_token", opt(s.unk_token)},
          {"sep_token", opt(s.sep_token)}, {"pad_token", opt(s.pad_token)}, {"cls_token", opt(s.cls_token)},
          {"mask_token", opt(s.mask_token)}, {"additional_special_tokens", s.additional_special_tokens}};
}

void add_tensor(WeightsSummary& w, const TensorInfo& info) {
  ++w.num_tensors;
  w.num_parameters += info.numel();
  w.num_bytes += info.end - info.begin;
  ++w.dtypes[dtype_name(info.dtype)];
}

WeightsSummary summarize_weights(const ModelLayout& layout) {
  WeightsSummary w;
  switch (layout.weights.format) {
    case WeightsFormat::kSafetensors:
    case WeightsFormat::kSafetensorsSharded:
      break;
    case WeightsFormat::kNone:
      w.error = "no weight files found in " + layout.model_dir.string();
      return w;
    default: {
      const fs::path first = layout.root / layout.weights.files.front();
      w.error = first.string() + " is " + unsupported_format_advice(first).value_or("not a safetensors file");
      return w;
    }
  }
  try {
    const fs::path target = layout.weights.index ? layout.root / *layout.weights.index
                            : layout.weights.files.size() == 1 ? layout.root / layout.weights.files.front()
                                                               : layout.model_dir;
    const Checkpoint ckpt = Checkpoint::open(target);
    for (const auto& name : ckpt.names()) add_tensor(w, *ckpt.find(name)->info);
  } catch (const Error& e) {
    w.error = e.what();
  }
  return w;
}

// A component's weights: only its prefix's tensors, grouped by component prefix.
WeightsSummary summarize_component_weights(const ModelDirectory& dir, const Component& c) {
  WeightsSummary w;
  const WeightsLayout& layout = *c.weights;
  if (layout.format == WeightsFormat::kNone) {
    w.error = "no weight files found in " + dir.path_of(c).string();
    return w;
  }
  try {
    const Checkpoint ckpt = dir.checkpoint(c.name);
    const std::vector<std::string> names = ckpt.names();
    for (const auto& name : names) add_tensor(w, *ckpt.find(name)->info);
    if (!c.tensor_prefix)
      for (const auto& group : group_by_component_prefix(names)) {
        WeightsSummary g;
        for (const auto& name : group.names) add_tensor(g, *ckpt.find(name)->info);
        w.prefixes.push_back({group.prefix, g.num_tensors, g.num_parameters, g.num_bytes});
      }
  } catch (const Error& e) {
    w.error = e.what();
  }
  return w;
}

// The fields of `config` named in `keys` that are set, as written.
json present_fields(const JsonView& config, std::initializer_list<const char*> keys) {
  json out = json::object();
  for (const char* key : keys)
    if (config.has(key)) out[key] = config.json().at(key);
  return out;
}

json image_size_json(const std::optional<ImageSize>& s) {
  if (!s) return nullptr;
  if (s->value) return *s->value;
  json out = json::object();
  if (s->height) out["height"] = *s->height;
  if (s->width) out["width"] = *s->width;
  if (s->shortest_edge) out["shortest_edge"] = *s->shortest_edge;
  if (s->longest_edge) out["longest_edge"] = *s->longest_edge;
  return out;
}

// What a component's config says, in brief: sizes and types, per kind.
json config_summary(const ComponentReport& r) {
  const Component& c = r.component;
  // A component whose folder is missing or unrecognised has no config to sum up.
  if (!c.config && c.kind != ComponentKind::kTokenizer) return nullptr;
  switch (c.kind) {
    case ComponentKind::kTransformersModel:
    case ComponentKind::kSubConfig: {
      const ModelConfig& m = *c.model_config;
      json out = {{"model_type", m.model_type.empty() ? json(nullptr) : json(m.model_type)},
                  {"architectures", m.architectures},
                  {"torch_dtype", opt(m.torch_dtype)},
                  {"vocab_size", opt(m.vocab_size)},
                  {"hidden_size", opt(m.hidden_size)},
                  {"num_hidden_layers", opt(m.num_hidden_layers)},
                  {"num_attention_heads", opt(m.num_attention_heads)},
                  {"intermediate_size", opt(m.intermediate_size)},
                  {"max_position_embeddings", opt(m.max_position_embeddings)}};
      // Sizes other families spell differently (T5: d_model, num_layers; vision towers: image_size).
      out.update(present_fields(*c.config, {"projection_dim", "image_size", "patch_size", "num_channels", "d_model",
                                            "num_layers", "num_heads", "d_ff"}));
      return out;
    }
    case ComponentKind::kDiffusersModel: {
      json out = {{"class_name", opt(c.config->get_optional<std::string>("_class_name"))},
                  {"diffusers_version", opt(c.config->get_optional<std::string>("_diffusers_version"))}};
      out.update(present_fields(*c.config,
                                {"in_channels", "out_channels", "latent_channels", "sample_size", "block_out_channels",
                                 "layers_per_block", "cross_attention_dim", "attention_head_dim", "num_attention_heads",
                                 "num_layers", "patch_size", "joint_attention_dim", "pooled_projection_dim",
                                 "caption_projection_dim", "norm_num_groups", "scaling_factor", "shift_factor"}));
      return out;
    }
    case ComponentKind::kScheduler: {
      json out = {{"class_name", opt(c.config->get_optional<std::string>("_class_name"))},
                  {"diffusers_version", opt(c.config->get_optional<std::string>("_diffusers_version"))}};
      out.update(present_fields(*c.config, {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                            "prediction_type", "timestep_spacing", "steps_offset", "shift",
                                            "use_dynamic_shifting"}));
      return out;
    }
    case ComponentKind::kImageProcessor: {
      const ImageProcessorConfig& p = *c.image_processor;
      return {{"image_processor_type", opt(p.image_processor_type)},
              {"processor_class", opt(p.processor_class)},
              {"do_resize", opt(p.do_resize)},
              {"size", image_size_json(p.size)},
              {"resample", opt(p.resample)},
              {"do_center_crop", opt(p.do_center_crop)},
              {"crop_size", image_size_json(p.crop_size)},
              {"do_rescale", opt(p.do_rescale)},
              {"rescale_factor", opt(p.rescale_factor)},
              {"do_normalize", opt(p.do_normalize)},
              {"image_mean", p.image_mean},
              {"image_std", p.image_std},
              {"do_convert_rgb", opt(p.do_convert_rgb)}};
    }
    case ComponentKind::kFeatureExtractor:
      return present_fields(*c.config, {"feature_extractor_type", "processor_class", "sampling_rate", "feature_size"});
    case ComponentKind::kTokenizer: {
      if (!r.tokenizer_config) return nullptr;
      const TokenizerConfig& t = *r.tokenizer_config;
      std::vector<std::string> templates;
      for (const auto& [name, text] : t.chat_templates) templates.push_back(name);
      return {{"tokenizer_class", opt(t.tokenizer_class)},
              {"model_max_length", opt(t.model_max_length)},
              {"chat_templates", templates},
              {"special_tokens", special_json(t.special)}};
    }
    case ComponentKind::kCheckpoint:
    case ComponentKind::kOther:
      break;
  }
  return nullptr;
}

json component_json(const ComponentReport& r) {
  const Component& c = r.component;
  json weights = nullptr;
  if (c.weights && r.weights) {
    json prefixes = json::array();
    for (const auto& g : r.weights->prefixes)
      prefixes.push_back({{"prefix", g.prefix},
                          {"num_tensors", g.num_tensors},
                          {"num_parameters", g.num_parameters},
                          {"num_bytes", g.num_bytes}});
    weights = {{"format", weights_format_name(c.weights->format)},
               {"files", c.weights->files},
               {"index", opt(c.weights->index)},
               {"sharded", c.weights->index.has_value()},
               {"other_files", c.weights->other_files},
               {"tensor_prefix", opt(c.tensor_prefix)},
               {"num_tensors", r.weights->num_tensors},
               {"num_parameters", r.weights->num_parameters},
               {"num_bytes", r.weights->num_bytes},
               {"dtypes", r.weights->dtypes},
               {"prefixes", prefixes},
               {"error", opt(r.weights->error)}};
  }
  return {{"name", c.name},
          {"kind", component_kind_name(c.kind)},
          {"library", opt(c.library)},
          {"class", opt(c.class_name)},
          {"folder", c.folder},
          {"config_file", opt(c.config_file)},
          {"config_key", opt(c.config_key)},
          {"parent", opt(c.parent)},
          {"config", config_summary(r)},
          {"weights", weights},
          {"tokenizer_files", c.tokenizer_files},
          {"error", opt(c.error)}};
}

std::string support_sentence(const InspectReport& r) {
  if (!r.config && r.pipeline) {
    for (const auto& f : r.families)
      if (f.supported) return "supported by " + f.name + " (a " + r.pipeline->class_name + " pipeline)";
    return "no registered family builds the " + r.pipeline->class_name + " pipeline";
  }
  if (!r.config) return "no config.json in " + r.layout.model_dir.string() + ", so no family can be chosen";
  const std::string type = r.config->model_type.empty() ? "(none: config.json has no \"model_type\")"
                                                        : "\"" + r.config->model_type + "\"";
  std::vector<std::string> yes;
  for (const auto& f : r.families)
    if (f.supported) yes.push_back(f.name);
  if (!yes.empty()) {
    std::string s = "supported by ";
    for (std::size_t i = 0; i < yes.size(); ++i) s += (i ? ", " : "") + yes[i];
    return s;
  }
  if (r.families.empty()) return "no registered family supports model_type " + type + " (no families are registered)";
  std::string s = "no registered family supports model_type " + type + ": ";
  for (std::size_t i = 0; i < r.families.size(); ++i)
    s += (i ? "; " : "") + r.families[i].name + ": " + r.families[i].reason;
  return s;
}

}  // namespace

InspectReport inspect_model(std::string_view path_or_repo_id, const FamilyRegistry& registry) {
  InspectReport r;
  r.resolved = resolve_model(path_or_repo_id);
  const ModelDirectory dir = ModelDirectory::open(r.resolved.path);
  r.layout = dir.layout();
  if (r.layout.has_config) r.config = load_model_config(r.layout.model_dir);
  r.generation_config = load_generation_config(r.layout.model_dir);
  if (!r.layout.tokenizer_dir.empty()) {
    r.tokenizer_config = load_tokenizer_config(r.layout.tokenizer_dir);
    r.special_tokens_map = load_special_tokens_map(r.layout.tokenizer_dir);
    r.chat_templates = load_chat_templates(r.layout.tokenizer_dir);
  }
  r.weights = summarize_weights(r.layout);
  r.pipeline = dir.pipeline();
  for (const Component& c : dir.components()) {
    ComponentReport cr{c, std::nullopt, std::nullopt};
    if (c.weights) cr.weights = summarize_component_weights(dir, c);
    if (c.kind == ComponentKind::kTokenizer) cr.tokenizer_config = load_tokenizer_config(dir.path_of(c));
    r.components.push_back(std::move(cr));
  }
  if (r.config)
    r.families = registry.match(*r.config, r.layout);
  else if (r.pipeline)
    r.families = registry.match_pipeline(r.pipeline->class_name);
  r.support = support_sentence(r);
  return r;
}

json InspectReport::to_json() const {
  json out;
  out["path"] = resolved.path.string();
  out["source"] = resolved.source;
  out["repo_id"] = opt(resolved.repo_id);
  out["revision"] = opt(resolved.revision);
  out["model_dir"] = layout.model_dir.string();

  if (config) {
    const ModelConfig& c = *config;
    json rope = nullptr;
    if (c.rope_scaling)
      rope = {{"type", c.rope_scaling->type},
              {"factor", opt(c.rope_scaling->factor)},
              {"original_max_position_embeddings", opt(c.rope_scaling->original_max_position_embeddings)},
              {"low_freq_factor", opt(c.rope_scaling->low_freq_factor)},
              {"high_freq_factor", opt(c.rope_scaling->high_freq_factor)}};
    out["model_type"] = c.model_type.empty() ? json(nullptr) : json(c.model_type);
    out["architectures"] = c.architectures;
    out["config"] = {{"torch_dtype", opt(c.torch_dtype)},
                     {"vocab_size", opt(c.vocab_size)},
                     {"hidden_size", opt(c.hidden_size)},
                     {"num_hidden_layers", opt(c.num_hidden_layers)},
                     {"num_attention_heads", opt(c.num_attention_heads)},
                     {"num_key_value_heads", opt(c.num_key_value_heads)},
                     {"head_dim", opt(c.head_dim)},
                     {"intermediate_size", opt(c.intermediate_size)},
                     {"max_position_embeddings", opt(c.max_position_embeddings)},
                     {"hidden_act", opt(c.hidden_act)},
                     {"rope_theta", opt(c.rope_theta)},
                     {"rope_scaling", rope},
                     {"tie_word_embeddings", opt(c.tie_word_embeddings)},
                     {"bos_token_id", c.bos_token_id},
                     {"eos_token_id", c.eos_token_id},
                     {"pad_token_id", c.pad_token_id}};
  } else {
    out["model_type"] = nullptr;
    out["architectures"] = json::array();
    out["config"] = nullptr;
  }

  json weights = {{"format", weights_format_name(layout.weights.format)},
                  {"files", layout.weights.files},
                  {"index", opt(layout.weights.index)},
                  {"sharded", layout.weights.index.has_value()},
                  {"other_files", layout.weights.other_files},
                  {"num_tensors", this->weights.num_tensors},
                  {"num_parameters", this->weights.num_parameters},
                  {"num_bytes", this->weights.num_bytes},
                  {"dtypes", this->weights.dtypes},
                  {"error", opt(this->weights.error)}};
  std::vector<std::string> templates;
  for (const auto& [name, source] : chat_templates) templates.push_back(name);
  json tokenizer = {{"files", layout.tokenizer_files}, {"chat_templates", templates}};
  if (tokenizer_config) {
    const TokenizerConfig& t = *tokenizer_config;
    tokenizer["tokenizer_class"] = opt(t.tokenizer_class);
    tokenizer["model_max_length"] = opt(t.model_max_length);
    tokenizer["special_tokens"] = special_json(t.special);
    tokenizer["do_lower_case"] = opt(t.do_lower_case);
  }
  if (special_tokens_map) tokenizer["special_tokens_map"] = special_json(*special_tokens_map);
  json generation = nullptr;
  if (generation_config)
    generation = {{"eos_token_id", generation_config->eos_token_id},
                  {"bos_token_id", generation_config->bos_token_id},
                  {"pad_token_id", generation_config->pad_token_id},
                  {"max_length", opt(generation_config->max_length)},
                  {"max_new_tokens", opt(generation_config->max_new_tokens)},
                  {"do_sample", opt(generation_config->do_sample)},
                  {"temperature", opt(generation_config->temperature)},
                  {"top_p", opt(generation_config->top_p)},
                  {"top_k", opt(generation_config->top_k)}};
  json st = nullptr;
  if (layout.sentence_transformers) {
    const auto& s = *layout.sentence_transformers;
    json modules = json::array();
    for (const auto& m : s.modules) modules.push_back({{"idx", m.idx}, {"name", m.name}, {"path", m.path}, {"type", m.type}});
    json pooling = nullptr;
    if (s.pooling)
      pooling = {{"mode", s.pooling->mode},
                 {"word_embedding_dimension", opt(s.pooling->word_embedding_dimension)},
                 {"include_prompt", s.pooling->include_prompt}};
    json dense = json::array();
    for (const auto& d : s.dense)
      dense.push_back({{"path", d.path},
                       {"in_features", d.in_features},
                       {"out_features", d.out_features},
                       {"bias", d.bias},
                       {"activation_function", d.activation},
                       {"use_residual", d.use_residual}});
    st = {{"modules", modules},
          {"transformer_path", s.transformer_path},
          {"pooling", pooling},
          {"dense", dense},
          {"normalize", s.normalize},
          {"other_modules", s.other_modules},
          {"max_seq_length", opt(s.max_seq_length)},
          {"do_lower_case", opt(s.do_lower_case)},
          {"prompts", s.prompts},
          {"default_prompt_name", opt(s.default_prompt_name)},
          {"similarity_fn_name", opt(s.similarity_fn_name)}};
  }
  out["files"] = {{"config", layout.has_config},
                  {"generation_config", layout.has_generation_config},
                  {"weights", weights},
                  {"tokenizer", tokenizer}};
  out["generation_config"] = generation;
  out["sentence_transformers"] = st;

  json families_json = json::array();
  std::set<std::string> capabilities;
  std::vector<std::string> supported_by;
  json details = json::object();
  for (const auto& f : families) {
    families_json.push_back({{"name", f.name},
                             {"capabilities", f.capabilities},
                             {"supported", f.supported},
                             {"reason", f.supported ? json(nullptr) : json(f.reason)},
                             {"details", json(f.details)}});
    if (f.supported) {
      if (supported_by.empty()) details = json(f.details);
      supported_by.push_back(f.name);
      capabilities.insert(f.capabilities.begin(), f.capabilities.end());
    }
  }
  json pipeline_json = nullptr;
  if (pipeline) {
    json entries = json::array();
    for (const auto& e : pipeline->entries)
      entries.push_back({{"name", e.name}, {"library", opt(e.library)}, {"class", opt(e.class_name)}});
    pipeline_json = {{"class_name", pipeline->class_name},
                     {"diffusers_version", opt(pipeline->diffusers_version)},
                     {"entries", entries},
                     {"options", pipeline->options}};
  }
  out["pipeline"] = pipeline_json;
  json components_json = json::array();
  for (const auto& c : components) components_json.push_back(component_json(c));
  out["components"] = components_json;

  out["families"] = families_json;
  out["supported_by"] = supported_by;
  out["capabilities"] = std::vector<std::string>(capabilities.begin(), capabilities.end());
  out["support"] = support;
  out["details"] = details;
  return out;
}

}  // namespace mpool::loading
