#include "mpool/models/families.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <mutex>

#include "mpool/base/error.h"
#include "mpool/capabilities/interfaces.h"
#include "mpool/loading/registry.h"
#include "mpool/nn/probe.h"

namespace mpool::models {
namespace {

// The builders and option specs of the built-in families, by name. Recognition
// lives in loading::FamilyRegistry alone.
struct Builders {
  std::map<std::string, Family> by_name;
};

Builders& builders() {
  static Builders b;
  return b;
}

const char* kind_name(OptionSpec::Kind kind) {
  switch (kind) {
    case OptionSpec::Kind::kBool: return "a bool";
    case OptionSpec::Kind::kInt: return "an int";
    case OptionSpec::Kind::kFloat: return "a float";
    case OptionSpec::Kind::kString: return "a str";
  }
  return "?";
}

bool fits(const OptionValue& v, OptionSpec::Kind kind) {
  switch (kind) {
    case OptionSpec::Kind::kBool: return std::holds_alternative<bool>(v);
    case OptionSpec::Kind::kInt: return std::holds_alternative<int64_t>(v);
    case OptionSpec::Kind::kFloat: return std::holds_alternative<double>(v) || std::holds_alternative<int64_t>(v);
    case OptionSpec::Kind::kString: return std::holds_alternative<std::string>(v);
  }
  return false;
}

void check_options(const Family& f, const NativeOptions& native) {
  // context_length bounds a generated sequence: a family that generates no text
  // would ignore it, so it is refused rather than dropped.
  const bool generates = std::find(f.capabilities.begin(), f.capabilities.end(),
                                   capabilities::TextToText::kName) != f.capabilities.end();
  if (native.context_length && !generates) {
    std::string served;
    for (const auto& c : f.capabilities) served += (served.empty() ? "" : ", ") + c;
    throw Error(ErrorCode::kInvalidInput, "context_length applies to models that generate text; the " + f.name +
                                              " family does not (it serves " + served + ")");
  }
  const FamilyOptions& options = native.options;
  for (const auto& [name, value] : options.values) {
    const OptionSpec* spec = nullptr;
    for (const auto& s : f.options)
      if (s.name == name) spec = &s;
    if (!spec) {
      std::string known;
      for (const auto& s : f.options) known += (known.empty() ? "" : ", ") + s.name;
      throw Error(ErrorCode::kInvalidInput, "option '" + name + "' is not one the " + f.name + " family takes (" +
                                                (known.empty() ? std::string("it takes none") : known) + ")");
    }
    check(fits(value, spec->kind), ErrorCode::kInvalidInput,
          "option '" + name + "' must be " + kind_name(spec->kind) + " for the " + f.name + " family");
  }
}

template <class T>
const T* option(const FamilyOptions& o, const std::string& name) {
  auto it = o.values.find(name);
  return it == o.values.end() ? nullptr : std::get_if<T>(&it->second);
}

}  // namespace

bool FamilyOptions::get_bool(const std::string& name, bool fallback) const {
  const bool* v = option<bool>(*this, name);
  return v ? *v : fallback;
}

int64_t FamilyOptions::get_int(const std::string& name, int64_t fallback) const {
  const int64_t* v = option<int64_t>(*this, name);
  return v ? *v : fallback;
}

double FamilyOptions::get_float(const std::string& name, double fallback) const {
  if (const double* v = option<double>(*this, name)) return *v;
  if (const int64_t* v = option<int64_t>(*this, name)) return static_cast<double>(*v);
  return fallback;
}

std::string FamilyOptions::get_string(const std::string& name, const std::string& fallback) const {
  const std::string* v = option<std::string>(*this, name);
  return v ? *v : fallback;
}

void register_builtin_families() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (Family f :
         {bert::family(), decoder::family(), clip::family(), siglip::family(), llava::family(), sd3::family(),
          modernbert::family(), flux::family(), jinabert::family(), nvembed::family(), jinav3::family()}) {
      loading::FamilyRegistry::global().add(loading::FamilyInfo{f.name, f.capabilities, f.supports, f.pipeline_classes});
      builders().by_name.emplace(f.name, std::move(f));
    }
  });
}

void register_builtin_probes() {
  static std::once_flag once;
  std::call_once(once, [] {
    nn::register_block_probes();
    bert::register_probes();
    modernbert::register_probes();
    decoder::register_probes();
    flux::register_probes();
    jinabert::register_probes();
    jinav3::register_probes();
    clip::register_probes();
    siglip::register_probes();
    llava::register_probes();
    sd3::register_probes();
    nvembed::register_probes();
    t5::register_probes();
    vae::register_probes();
  });
}

NativeModel native_model(const std::string& path_or_repo_id, const NativeOptions& options) {
  register_builtin_families();
  // A lone .safetensors file is a single-file checkpoint (families that name
  // marker tensors in Family::single_file_tensors build it); anything else
  // resolves to a directory.
  std::error_code ec;
  const std::filesystem::path as_file(path_or_repo_id);
  loading::ResolvedModel resolved =
      std::filesystem::is_regular_file(as_file, ec) && as_file.extension() == ".safetensors"
          ? loading::ResolvedModel{std::filesystem::absolute(as_file), "local_file", std::nullopt, std::nullopt}
          : loading::resolve_model(path_or_repo_id);
  const loading::ModelDirectory directory = loading::ModelDirectory::open(resolved.path);
  if (const auto& pipeline = directory.pipeline()) {
    // A diffusers pipeline folder: the family that builds its class.
    std::string known;
    for (const auto& [name, f] : builders().by_name)
      for (const std::string& cls : f.pipeline_classes) {
        known += (known.empty() ? "" : ", ") + cls;
        if (cls != pipeline->class_name) continue;
        check_options(f, options);
        NativeModel model = f.build(directory, loading::ModelConfig{}, options);
        model.family = f.name;
        model.path = resolved.path.string();
        return model;
      }
    throw Error(ErrorCode::kInvalidInput, resolved.path.string() + ": model_index.json names the pipeline '" +
                                              pipeline->class_name + "', which no native family builds (" + known +
                                              ")");
  }
  const loading::ModelLayout& layout = directory.layout();
  const loading::Component* single = directory.find("checkpoint");
  if (!layout.has_config && single && !single->error && single->weights && single->weights->files.size() == 1) {
    // A single file without config.json: the family whose marker tensors it holds.
    const loading::Checkpoint checkpoint = directory.checkpoint("checkpoint");
    for (const auto& [name, f] : builders().by_name)
      for (const std::string& tensor : f.single_file_tensors) {
        if (!checkpoint.find(tensor)) continue;
        check_options(f, options);
        NativeModel model = f.build(directory, loading::ModelConfig{}, options);
        model.family = f.name;
        model.path = resolved.path.string();
        return model;
      }
  }
  check(layout.has_config, ErrorCode::kInvalidInput,
        (layout.model_dir / "config.json").string() + " is missing: not a transformers model directory");
  loading::ModelConfig config = loading::load_model_config(layout.model_dir);
  std::string reasons;
  for (const auto& match : loading::FamilyRegistry::global().match(config, layout)) {
    auto it = builders().by_name.find(match.name);
    if (it == builders().by_name.end()) continue;  // registered by someone else: recognizes, cannot build
    if (match.supported) {
      const Family& f = it->second;
      check_options(f, options);
      NativeModel model = f.build(directory, config, options);
      model.family = f.name;
      model.path = resolved.path.string();
      return model;
    }
    reasons += "; " + match.name + ": " + match.reason;
  }
  throw Error(ErrorCode::kInvalidInput, resolved.path.string() + ": no native family supports model_type '" +
                                            config.model_type + "'" + reasons);
}

}  // namespace mpool::models
