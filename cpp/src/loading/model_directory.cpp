#include "mpool/loading/model_directory.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "mpool/base/error.h"

namespace mpool::loading {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

[[noreturn]] void invalid(const std::string& message) { throw Error(ErrorCode::kInvalidInput, message); }

std::string show(const json& value) {
  std::string s = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool contains(std::string_view s, std::string_view part) { return s.find(part) != std::string_view::npos; }

std::string quoted(const std::string& file, const std::string& key) { return file + ": \"" + key + "\""; }

std::int64_t positive(const JsonView& view, std::string_view key, const std::string& where) {
  const auto v = view.get<std::int64_t>(key);
  if (v <= 0) invalid(where + " must be a positive integer, got " + std::to_string(v));
  return v;
}

std::optional<std::int64_t> optional_positive(const JsonView& view, std::string_view key, const std::string& where) {
  if (!view.has(key)) return std::nullopt;
  return positive(view, key, where);
}

// "size": 224 or {"height": 224, "width": 224} / {"shortest_edge": 224} / ...
std::optional<ImageSize> image_size(const JsonView& j, const std::string& key) {
  if (!j.has(key)) return std::nullopt;
  ImageSize s;
  const json& v = j.json().at(key);
  if (v.is_object()) {
    const JsonView obj = *j.child(key);
    for (auto [field, slot] : {std::pair{"height", &s.height}, std::pair{"width", &s.width},
                               std::pair{"shortest_edge", &s.shortest_edge}, std::pair{"longest_edge", &s.longest_edge}})
      *slot = optional_positive(obj, field, quoted(j.file(), key + "." + field));
    if (s.height.has_value() != s.width.has_value())
      invalid(quoted(j.file(), key) + " must give both \"height\" and \"width\", or neither");
    if (!s.height && !s.shortest_edge && !s.longest_edge)
      invalid(quoted(j.file(), key) + " must have \"height\" and \"width\", \"shortest_edge\" or \"longest_edge\", got " +
              show(v));
    return s;
  }
  if (!v.is_number())
    invalid(quoted(j.file(), key) + " must be an integer or an object of sizes, got " + show(v));
  s.value = positive(j, key, quoted(j.file(), key));
  return s;
}

// image_mean / image_std: a list of numbers, or one number.
std::vector<double> channel_values(const JsonView& j, const std::string& key, bool require_positive) {
  if (!j.has(key)) return {};
  const json& v = j.json().at(key);
  std::vector<double> out = v.is_number() ? std::vector<double>{j.get<double>(key)} : j.get<std::vector<double>>(key);
  if (out.empty()) invalid(quoted(j.file(), key) + " must not be empty");
  for (std::size_t i = 0; i < out.size(); ++i) {
    const std::string at = quoted(j.file(), key + "[" + std::to_string(i) + "]");
    if (!std::isfinite(out[i])) invalid(at + " must be a finite number");
    if (require_positive && out[i] <= 0) invalid(at + " must be positive, got " + show(json(out[i])));
  }
  return out;
}

// One pattern of component_prefix_patterns(), split into segments.
struct PrefixPattern {
  std::vector<std::string> segments;
};

std::vector<std::string> split_dots(std::string_view s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    const auto dot = s.find('.', start);
    if (dot == std::string_view::npos) {
      out.emplace_back(s.substr(start));
      return out;
    }
    out.emplace_back(s.substr(start, dot - start));
    start = dot + 1;
  }
}

const std::vector<PrefixPattern>& prefix_patterns() {
  static const std::vector<PrefixPattern> patterns = [] {
    std::vector<PrefixPattern> out;
    for (const auto& p : component_prefix_patterns()) {
      auto segments = split_dots(p);
      segments.pop_back();  // the empty segment after the final dot
      out.push_back({std::move(segments)});
    }
    return out;
  }();
  return patterns;
}

// The component prefix of a tensor name ("" when none): the longest pattern whose
// segments match the name's first ones, with something left after them.
std::string component_prefix(const std::string& name) {
  const auto parts = split_dots(name);
  std::size_t best = 0;
  for (const auto& p : prefix_patterns()) {
    const std::size_t k = p.segments.size();
    if (k <= best || parts.size() <= k || (parts.size() == k + 1 && parts[k].empty())) continue;
    bool match = true;
    for (std::size_t i = 0; i < p.segments.size() && match; ++i)
      match = !parts[i].empty() && (p.segments[i] == "*" || p.segments[i] == parts[i]);
    if (match) best = p.segments.size();
  }
  std::string prefix;
  for (std::size_t i = 0; i < best; ++i) prefix += parts[i] + ".";
  return prefix;
}

// A kind for a model_index.json entry whose folder cannot say.
ComponentKind kind_from_class(const PipelineEntry& e) {
  const std::string cls = e.class_name.value_or("");
  if (contains(cls, "Scheduler")) return ComponentKind::kScheduler;
  if (contains(cls, "Tokenizer")) return ComponentKind::kTokenizer;
  if (ends_with(cls, "ImageProcessor") || ends_with(cls, "FeatureExtractor")) return ComponentKind::kImageProcessor;
  if (e.library == "diffusers") return ComponentKind::kDiffusersModel;
  if (e.library == "transformers") return ComponentKind::kTransformersModel;
  return ComponentKind::kOther;
}

std::string relative_folder(const fs::path& path, const fs::path& root) {
  const std::string rel = path.lexically_relative(root).generic_string();
  return rel == "." ? "" : rel;
}

std::string folder_prefix(const std::string& folder) { return folder.empty() ? "" : folder + "/"; }

// Builds the component list of one directory.
class Builder {
 public:
  Builder(const fs::path& root, std::vector<Component>& out) : root_(root), out_(out) {}

  bool taken(const std::string& name) const {
    return std::any_of(out_.begin(), out_.end(), [&](const Component& c) { return c.name == name; });
  }

  // config.json in `folder`: a transformers model (plus its sub-configs) or a diffusers model.
  void add_model(Component c, const std::string& folder) {
    const std::string file = folder_prefix(folder) + "config.json";
    const JsonView cfg = load_json_object(root_ / file);
    c.folder = folder;
    c.config_file = file;
    c.weights = describe_weights(root_ / folder, folder_prefix(folder));
    if (c.library == "diffusers" || (!c.library && cfg.has("_class_name"))) {
      c.kind = ComponentKind::kDiffusersModel;
      if (!c.library) c.library = "diffusers";
      if (!c.class_name) c.class_name = cfg.get_optional<std::string>("_class_name");
      c.config = cfg;
      out_.push_back(std::move(c));
      return;
    }
    c.kind = ComponentKind::kTransformersModel;
    if (!c.library) c.library = "transformers";
    c.model_config = parse_model_config(cfg);
    if (!c.class_name && !c.model_config->architectures.empty()) c.class_name = c.model_config->architectures.front();
    c.config = cfg;
    const std::string parent = c.name;
    out_.push_back(std::move(c));
    for (const auto& key : nested_config_keys(cfg)) {
      Component s;
      s.name = parent == "model" ? key : parent + "." + key;
      s.kind = ComponentKind::kSubConfig;
      s.library = "transformers";
      s.folder = folder;
      s.config_file = file;
      s.config_key = key;
      s.parent = parent;
      s.config = *cfg.child(key);
      s.model_config = parse_model_config(*s.config);
      if (!s.model_config->architectures.empty()) s.class_name = s.model_config->architectures.front();
      out_.push_back(std::move(s));
    }
  }

  void add_scheduler(Component c, const std::string& folder) {
    c.kind = ComponentKind::kScheduler;
    c.folder = folder;
    c.config_file = folder_prefix(folder) + "scheduler_config.json";
    c.config = load_json_object(root_ / *c.config_file);
    if (!c.class_name) c.class_name = c.config->get_optional<std::string>("_class_name");
    out_.push_back(std::move(c));
  }

  void add_preprocessor(Component c, const std::string& folder) {
    c.folder = folder;
    c.config_file = folder_prefix(folder) + "preprocessor_config.json";
    c.config = load_json_object(root_ / *c.config_file);
    if (is_image_processor_config(*c.config)) {
      c.kind = ComponentKind::kImageProcessor;
      c.image_processor = parse_image_processor_config(*c.config);
      if (!c.class_name) c.class_name = c.image_processor->image_processor_type;
    } else {
      c.kind = ComponentKind::kFeatureExtractor;
      if (!c.class_name) c.class_name = c.config->get_optional<std::string>("feature_extractor_type");
    }
    if (c.name.empty()) c.name = c.kind == ComponentKind::kImageProcessor ? "image_processor" : "feature_extractor";
    out_.push_back(std::move(c));
  }

  // transformers 5 saves a processor's image processor inside processor_config.json
  // ("image_processor": {...}) rather than in preprocessor_config.json.
  bool add_processor_image_settings(const std::string& folder) {
    const std::string file = folder_prefix(folder) + "processor_config.json";
    const JsonView processor = load_json_object(root_ / file);
    const std::optional<JsonView> images = processor.child("image_processor");
    if (!images || !is_image_processor_config(*images)) return false;
    Component c;
    c.name = "image_processor";
    c.kind = ComponentKind::kImageProcessor;
    c.folder = folder;
    c.config_file = file;
    c.config = images;
    c.image_processor = parse_image_processor_config(*images);
    c.class_name = c.image_processor->image_processor_type;
    out_.push_back(std::move(c));
    return true;
  }

  void add_tokenizer(Component c, const std::string& folder, std::vector<std::string> files) {
    c.kind = ComponentKind::kTokenizer;
    c.folder = folder;
    c.tokenizer_files = std::move(files);
    const fs::path config = root_ / folder / "tokenizer_config.json";
    if (!c.class_name && fs::is_regular_file(config))
      c.class_name = load_json_object(config).get_optional<std::string>("tokenizer_class");
    if (!c.library) c.library = "transformers";
    out_.push_back(std::move(c));
  }

  // A lone .safetensors file (relative to the root): "checkpoint", plus one
  // component per component prefix its tensors carry.
  void add_single_file(const std::string& file, WeightsLayout weights) {
    Component whole;
    whole.name = "checkpoint";
    whole.kind = ComponentKind::kCheckpoint;
    whole.folder = relative_folder((root_ / file).parent_path(), root_);
    whole.weights = std::move(weights);
    std::vector<TensorGroup> groups;
    try {
      groups = group_by_component_prefix(Checkpoint::open(root_ / file).names());
    } catch (const Error& e) {
      whole.error = e.what();
    }
    const Component base = whole;
    out_.push_back(std::move(whole));
    for (const auto& g : groups) {
      if (g.prefix.empty()) continue;
      Component part = base;
      part.name = g.prefix.substr(0, g.prefix.size() - 1);
      part.parent = base.name;
      part.tensor_prefix = g.prefix;
      out_.push_back(std::move(part));
    }
  }

  // One model_index.json entry: its folder says what it is.
  void add_pipeline_entry(const PipelineEntry& e, const std::string& index_file) {
    Component c;
    c.name = e.name;
    c.library = e.library;
    c.class_name = e.class_name;
    c.folder = e.name;
    const fs::path dir = root_ / e.name;
    const std::string described = "\"" + e.name + "\" (" + e.library.value_or("?") + " " + e.class_name.value_or("?") + ")";
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
      c.kind = kind_from_class(e);
      c.error = index_file + " names " + described + ", but " + dir.string() + " is not a directory";
      out_.push_back(std::move(c));
      return;
    }
    if (fs::is_regular_file(dir / "scheduler_config.json", ec)) return add_scheduler(std::move(c), e.name);
    if (fs::is_regular_file(dir / "config.json", ec)) return add_model(std::move(c), e.name);
    if (fs::is_regular_file(dir / "preprocessor_config.json", ec)) return add_preprocessor(std::move(c), e.name);
    if (auto files = tokenizer_files_in(dir, e.name + "/"); !files.empty())
      return add_tokenizer(std::move(c), e.name, std::move(files));
    c.kind = kind_from_class(e);
    c.error = index_file + " names " + described + ", but " + dir.string() +
              " holds no config.json, scheduler_config.json, preprocessor_config.json or tokenizer files";
    out_.push_back(std::move(c));
  }

 private:
  const fs::path& root_;
  std::vector<Component>& out_;
};

}  // namespace

const char* component_kind_name(ComponentKind kind) noexcept {
  switch (kind) {
    case ComponentKind::kTransformersModel: return "transformers_model";
    case ComponentKind::kDiffusersModel: return "diffusers_model";
    case ComponentKind::kSubConfig: return "sub_config";
    case ComponentKind::kScheduler: return "scheduler";
    case ComponentKind::kTokenizer: return "tokenizer";
    case ComponentKind::kImageProcessor: return "image_processor";
    case ComponentKind::kFeatureExtractor: return "feature_extractor";
    case ComponentKind::kCheckpoint: return "checkpoint";
    case ComponentKind::kOther: return "other";
  }
  return "unknown";
}

ImageProcessorConfig parse_image_processor_config(const JsonView& j) {
  ImageProcessorConfig p;
  p.raw = j;
  p.image_processor_type = j.get_optional<std::string>("image_processor_type");
  if (!p.image_processor_type) p.image_processor_type = j.get_optional<std::string>("feature_extractor_type");
  p.processor_class = j.get_optional<std::string>("processor_class");
  p.do_resize = j.get_optional<bool>("do_resize");
  p.do_center_crop = j.get_optional<bool>("do_center_crop");
  p.do_rescale = j.get_optional<bool>("do_rescale");
  p.do_normalize = j.get_optional<bool>("do_normalize");
  p.do_convert_rgb = j.get_optional<bool>("do_convert_rgb");
  p.size = image_size(j, "size");
  p.crop_size = image_size(j, "crop_size");
  p.image_mean = channel_values(j, "image_mean", false);
  p.image_std = channel_values(j, "image_std", true);
  p.rescale_factor = j.get_optional<double>("rescale_factor");
  if (p.rescale_factor && !(std::isfinite(*p.rescale_factor) && *p.rescale_factor > 0))
    invalid(quoted(j.file(), "rescale_factor") + " must be a positive number, got " + show(j.json().at("rescale_factor")));
  p.resample = j.get_optional<std::int64_t>("resample");
  if (p.resample && (*p.resample < 0 || *p.resample > 5))
    invalid(quoted(j.file(), "resample") + " must be a PIL resampling filter (0 to 5), got " + std::to_string(*p.resample));
  return p;
}

bool is_image_processor_config(const JsonView& j) {
  if (j.has("image_processor_type")) return true;
  for (const char* key : {"image_mean", "image_std", "size", "crop_size", "do_resize", "do_center_crop"})
    if (j.has(key)) return true;
  const json* type = j.json().contains("feature_extractor_type") ? &j.json().at("feature_extractor_type") : nullptr;
  if (type == nullptr || !type->is_string()) return false;
  const std::string name = type->get<std::string>();
  // Audio extractors name no image field; an image model's extractor class does.
  return ends_with(name, "ImageProcessor") ||
         (ends_with(name, "FeatureExtractor") && !j.has("sampling_rate") && !j.has("feature_size"));
}

PipelineIndex parse_model_index(const JsonView& j) {
  PipelineIndex index;
  index.raw = j;
  index.class_name = j.get<std::string>("_class_name");
  index.diffusers_version = j.get_optional<std::string>("_diffusers_version");
  for (const auto& [key, value] : j.json().items()) {
    if (!key.empty() && key.front() == '_') continue;  // _class_name, _diffusers_version, _name_or_path
    const bool spec_like = value.is_array() && std::all_of(value.begin(), value.end(), [](const json& v) {
                             return v.is_string() || v.is_null();
                           });
    if (!spec_like || value.empty()) {
      index.options.emplace(key, value);
      continue;
    }
    const std::string where = quoted(j.file(), key);
    if (value.size() != 2)
      invalid(where + " must be [library, class] (two strings, or [null, null]), got " + show(value));
    if (value[0].is_null() != value[1].is_null())
      invalid(where + " must name both a library and a class, or neither, got " + show(value));
    if (key.empty() || key == "." || key == ".." || key.find_first_of("/\\") != std::string::npos)
      invalid(where + " is not a folder name, so it cannot be a component");
    PipelineEntry e;
    e.name = key;
    if (!value[0].is_null()) {
      e.library = value[0].get<std::string>();
      e.class_name = value[1].get<std::string>();
    }
    index.entries.push_back(std::move(e));
  }
  return index;
}

std::vector<std::string> nested_config_keys(const JsonView& j) {
  std::vector<std::string> keys;
  for (const auto& [key, value] : j.json().items()) {
    if (!value.is_object()) continue;
    const bool known = key == "text_config" || key == "vision_config" || key == "audio_config";
    const bool names_a_model = ends_with(key, "_config") && value.contains("model_type") && value["model_type"].is_string();
    if (known || names_a_model) keys.push_back(key);
  }
  std::sort(keys.begin(), keys.end());
  return keys;
}

const std::vector<std::string>& component_prefix_patterns() {
  static const std::vector<std::string> patterns = {
      // Stable Diffusion single files (original ldm layout): denoiser, VAE, text encoders, EMA copy.
      "model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.embedders.*.", "model_ema.",
      // Bundles of text encoders (SD3 / Flux single files: clip_l, clip_g, t5xxl).
      "text_encoders.*.",
      // Two-tower models (CLIP, SigLIP).
      "text_model.", "vision_model.",
      // Vision-language models, in both transformers layouts.
      "language_model.", "vision_tower.", "multi_modal_projector.", "model.language_model.", "model.vision_tower.",
      "model.multi_modal_projector.",
  };
  return patterns;
}

std::vector<TensorGroup> group_by_component_prefix(const std::vector<std::string>& names) {
  std::map<std::string, std::vector<std::string>> by_prefix;
  for (const auto& name : names) by_prefix[component_prefix(name)].push_back(name);
  if (by_prefix.empty() || (by_prefix.size() == 1 && by_prefix.count(""))) return {};
  std::vector<TensorGroup> groups;
  for (auto& [prefix, list] : by_prefix) {
    if (prefix.empty()) continue;
    std::sort(list.begin(), list.end());
    groups.push_back({prefix, std::move(list)});
  }
  if (auto it = by_prefix.find(""); it != by_prefix.end()) {
    std::sort(it->second.begin(), it->second.end());
    groups.push_back({"", std::move(it->second)});
  }
  return groups;
}

ModelDirectory ModelDirectory::open(const fs::path& dir_or_file) {
  ModelDirectory d;
  std::error_code ec;
  std::optional<std::string> lone_file;
  if (fs::is_directory(dir_or_file, ec)) {
    d.root_ = dir_or_file;
  } else if (fs::is_regular_file(dir_or_file, ec)) {
    if (dir_or_file.extension() != ".safetensors")
      invalid(dir_or_file.string() + ": is neither a model directory nor a .safetensors file");
    d.root_ = dir_or_file.has_parent_path() ? dir_or_file.parent_path() : fs::path(".");
    lone_file = dir_or_file.filename().string();
  } else {
    invalid(dir_or_file.string() + ": no such directory or file");
  }
  d.layout_ = describe_layout(d.root_);
  Builder b(d.root_, d.components_);

  if (lone_file) {
    WeightsLayout w;
    w.format = WeightsFormat::kSafetensors;
    w.files = {*lone_file};
    b.add_single_file(*lone_file, std::move(w));
    return d;
  }

  const fs::path index_path = d.root_ / "model_index.json";
  if (fs::is_regular_file(index_path, ec)) {
    d.pipeline_ = parse_model_index(load_json_object(index_path));
    for (const auto& e : d.pipeline_->entries)
      if (e.class_name) b.add_pipeline_entry(e, index_path.string());
    return d;
  }

  const ModelLayout& l = d.layout_;
  if (l.has_config) {
    Component model;
    model.name = "model";
    b.add_model(std::move(model), relative_folder(l.model_dir, d.root_));
  } else if (l.weights.format == WeightsFormat::kSafetensors && l.weights.files.size() == 1) {
    b.add_single_file(l.weights.files.front(), l.weights);
  } else if (l.weights.format != WeightsFormat::kNone) {
    Component whole;
    whole.name = "checkpoint";
    whole.kind = ComponentKind::kCheckpoint;
    whole.folder = relative_folder(l.model_dir, d.root_);
    whole.weights = l.weights;
    d.components_.push_back(std::move(whole));
  }

  // The root's tokenizer is what transformers loads from the root; tokenizer/ stands
  // in only when the root has none. tokenizer_2/ and tokenizer_3/ always count.
  std::vector<std::string> folders = {"tokenizer_2", "tokenizer_3"};
  if (!l.tokenizer_files.empty()) {
    Component t;
    t.name = "tokenizer";
    b.add_tokenizer(std::move(t), relative_folder(l.tokenizer_dir, d.root_), l.tokenizer_files);
  } else {
    folders.insert(folders.begin(), "tokenizer");
  }
  for (const auto& folder : folders) {
    auto files = tokenizer_files_in(d.root_ / folder, folder + "/");
    if (files.empty() || b.taken(folder)) continue;
    Component t;
    t.name = folder;
    b.add_tokenizer(std::move(t), folder, std::move(files));
  }

  bool preprocessor = false;
  for (const fs::path& dir : {d.root_, l.model_dir}) {
    if (!fs::is_regular_file(dir / "preprocessor_config.json", ec)) continue;
    b.add_preprocessor(Component{}, relative_folder(dir, d.root_));  // named by its kind
    preprocessor = true;
    break;
  }
  for (const fs::path& dir : {d.root_, l.model_dir}) {
    if (preprocessor || !fs::is_regular_file(dir / "processor_config.json", ec)) continue;
    preprocessor = b.add_processor_image_settings(relative_folder(dir, d.root_));
  }
  return d;
}

const Component* ModelDirectory::find(std::string_view name) const noexcept {
  for (const auto& c : components_)
    if (c.name == name) return &c;
  return nullptr;
}

const Component& ModelDirectory::require(std::string_view name) const {
  if (const Component* c = find(name)) return *c;
  std::string names;
  for (const auto& c : components_) names += (names.empty() ? "" : ", ") + c.name;
  invalid(root_.string() + ": no component \"" + std::string(name) + "\" (it has " +
          (names.empty() ? std::string("none") : names) + ")");
}

std::vector<const Component*> ModelDirectory::of_kind(ComponentKind kind) const {
  std::vector<const Component*> out;
  for (const auto& c : components_)
    if (c.kind == kind) out.push_back(&c);
  return out;
}

const ModelConfig& ModelDirectory::model_config(std::string_view name) const {
  const Component& c = require(name);
  if (!c.model_config)
    invalid(root_.string() + ": component \"" + c.name + "\" (" + component_kind_name(c.kind) +
            ") has no transformers config");
  return *c.model_config;
}

Checkpoint ModelDirectory::checkpoint(std::string_view name) const {
  const Component& c = require(name);
  const std::string who = root_.string() + ": component \"" + c.name + "\"";
  if (!c.weights || c.weights->format == WeightsFormat::kNone || c.weights->files.empty())
    invalid(who + " has no weights");
  const WeightsLayout& w = *c.weights;
  if (w.format != WeightsFormat::kSafetensors && w.format != WeightsFormat::kSafetensorsSharded) {
    const fs::path first = root_ / w.files.front();
    invalid(who + ": " + first.string() + " is " + unsupported_format_advice(first).value_or("not a safetensors file"));
  }
  const fs::path target = w.index ? root_ / *w.index : w.files.size() == 1 ? root_ / w.files.front() : path_of(c);
  const Checkpoint whole = Checkpoint::open(target);
  if (c.tensor_prefix && !c.tensor_prefix->empty()) return whole.with_prefix(*c.tensor_prefix);
  return whole;
}

namespace {

// What a transformers image processor class takes for a key its file leaves out
// (the class attributes), for the classes of the image families mpool serves.
struct ProcessorClassDefaults {
  ImageSize size;
  std::optional<ImageSize> crop_size;
  bool do_center_crop;
  std::vector<double> mean, std;
};

std::optional<ProcessorClassDefaults> processor_class_defaults(const std::optional<std::string>& type) {
  if (!type) return std::nullopt;
  std::string name = *type;
  if (ends_with(name, "Fast")) name.resize(name.size() - 4);
  const std::vector<double> clip_mean{0.48145466, 0.4578275, 0.40821073}, clip_std{0.26862954, 0.26130258, 0.27577711};
  ImageSize shortest_224, square_224;
  shortest_224.shortest_edge = 224;
  square_224.height = square_224.width = 224;
  if (name == "CLIPImageProcessor" || name == "CLIPFeatureExtractor" || name == "LlavaImageProcessor" ||
      name == "LlavaNextImageProcessor")
    return ProcessorClassDefaults{shortest_224, square_224, true, clip_mean, clip_std};
  if (name == "SiglipImageProcessor")
    return ProcessorClassDefaults{square_224, std::nullopt, false, {0.5, 0.5, 0.5}, {0.5, 0.5, 0.5}};
  return std::nullopt;
}

}  // namespace

imageio::PreprocessConfig preprocess_config(const ImageProcessorConfig& c, const std::string& where) {
  imageio::PreprocessConfig p;
  // A key the file leaves out takes its processor class's value, as transformers
  // does; for a class not known here only what the file says applies.
  const std::optional<ProcessorClassDefaults> defaults = processor_class_defaults(c.image_processor_type);
  std::optional<ImageSize> size = c.size ? c.size : defaults ? std::optional<ImageSize>(defaults->size) : std::nullopt;
  if (size && size->value) {
    // A bare integer: these classes read it as the shortest edge (transformers'
    // get_size_dict with default_to_square false).
    check(defaults.has_value(), ErrorCode::kInvalidInput,
          where + ": \"size\" is a bare integer, which transformers reads by the processor class, and class '" +
              c.image_processor_type.value_or("(none)") +
              "' is not one mpool knows (CLIP, LLaVA, LLaVA-NeXT or SigLIP image processors); write it as "
              "{\"shortest_edge\": n} or {\"height\": h, \"width\": w}");
    ImageSize edge;
    edge.shortest_edge = *size->value;
    size = edge;
  }
  std::optional<ImageSize> crop = c.crop_size ? c.crop_size : defaults ? defaults->crop_size : std::nullopt;
  if (crop && crop->value) {  // a bare integer crop is a square for every class
    ImageSize square;
    square.height = square.width = *crop->value;
    crop = square;
  }
  p.do_resize = c.do_resize.value_or(size.has_value());
  if (p.do_resize) {
    check(size.has_value(), ErrorCode::kInvalidInput, where + ": \"do_resize\" is set but \"size\" is missing");
    const ImageSize& s = *size;
    check(!s.longest_edge, ErrorCode::kInvalidInput,
          where + ": \"size\" must give \"shortest_edge\", or \"height\" and \"width\"");
    p.shortest_edge = s.shortest_edge;
    if (!s.shortest_edge) {
      p.height = s.height;
      p.width = s.width;
    }
  }
  p.resample = static_cast<imageio::Resample>(c.resample.value_or(3));
  p.do_center_crop = c.do_center_crop.value_or(defaults ? defaults->do_center_crop : crop.has_value());
  if (p.do_center_crop) {
    check(crop && crop->height && crop->width, ErrorCode::kInvalidInput,
          where + ": \"do_center_crop\" needs \"crop_size\" with \"height\" and \"width\"");
    p.crop_height = *crop->height;
    p.crop_width = *crop->width;
  }
  p.do_rescale = c.do_rescale.value_or(true);
  p.rescale_factor = c.rescale_factor.value_or(1.0 / 255.0);
  const std::vector<double>& mean = !c.image_mean.empty() || !defaults ? c.image_mean : defaults->mean;
  const std::vector<double>& stdev = !c.image_std.empty() || !defaults ? c.image_std : defaults->std;
  p.do_normalize = c.do_normalize.value_or(defaults.has_value() || !c.image_mean.empty());
  if (p.do_normalize) {
    auto three = [&](const std::vector<double>& v, const char* key) {
      check(v.size() == 3 || v.size() == 1, ErrorCode::kInvalidInput,
            where + ": \"" + key + "\" needs 3 values (one per RGB channel), got " + std::to_string(v.size()));
      return v.size() == 3 ? std::array<double, 3>{v[0], v[1], v[2]} : std::array<double, 3>{v[0], v[0], v[0]};
    };
    p.mean = three(mean, "image_mean");
    p.std = three(stdev, "image_std");
  }
  p.validate(where);
  return p;
}

}  // namespace mpool::loading
