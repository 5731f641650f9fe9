#include "mpool/loading/peft.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>

#include "mpool/base/error.h"
#include "mpool/loading/json.h"

namespace mpool::loading {
namespace {

namespace fs = std::filesystem;

// PEFT matches a pattern key against a module path as the regex "(.*\.)?key$".
// We take the keys literally (a dot is a dot) and refuse ones that use other
// regex syntax, rather than match them differently.
bool pattern_matches(std::string_view key, std::string_view module) {
  if (module.size() < key.size() || module.substr(module.size() - key.size()) != key) return false;
  return module.size() == key.size() || module[module.size() - key.size() - 1] == '.';
}

template <class Map>
const typename Map::mapped_type* longest_match(const Map& patterns, std::string_view module) {
  const typename Map::mapped_type* best = nullptr;
  size_t best_len = 0;
  for (const auto& [key, value] : patterns)
    if (pattern_matches(key, module) && (best == nullptr || key.size() > best_len)) {
      best = &value;
      best_len = key.size();
    }
  return best;
}

template <class T>
std::map<std::string, T> read_pattern(const JsonView& config, std::string_view key) {
  std::map<std::string, T> out;
  const auto node = config.get_optional<nlohmann::json>(key);
  if (!node) return out;
  check(node->is_object(), ErrorCode::kInvalidInput, config.where(key) + " must be an object");
  for (const auto& [pattern, value] : node->items()) {
    check(pattern.find_first_of("*+?[](){}|^$\\") == std::string::npos, ErrorCode::kInvalidInput,
          config.where(key) + ": the pattern '" + pattern +
              "' is a regular expression; only literal module names (or name suffixes) are supported");
    out[pattern] = json_as<T>(value, config.where(std::string(key) + "." + pattern));
  }
  return out;
}

}  // namespace

LoraAdapterConfig LoraAdapterConfig::load(const fs::path& dir) {
  const fs::path file = dir / "adapter_config.json";
  const JsonView c = load_json_object(file);
  LoraAdapterConfig a;
  a.name = dir.filename().string();
  a.dir = dir;
  const std::string peft_type = c.get_or<std::string>("peft_type", "");
  check(peft_type == "LORA", ErrorCode::kInvalidInput,
        c.where("peft_type") + " is '" + peft_type + "'; only LoRA adapters (\"LORA\") are supported");
  a.r = c.get<int64_t>("r");
  check(a.r > 0 && a.r <= (int64_t{1} << 20), ErrorCode::kInvalidInput,
        c.where("r") + " must be a positive rank, got " + std::to_string(a.r));
  a.alpha = c.get_or<double>("lora_alpha", 8.0);
  check(std::isfinite(a.alpha), ErrorCode::kInvalidInput, c.where("lora_alpha") + " must be a finite number");
  a.use_rslora = c.get_or<bool>("use_rslora", false);
  // The variants whose arithmetic is not W + scale * B A.
  auto refuse_true = [&](const char* key, const char* what) {
    check(!c.get_or<bool>(key, false), ErrorCode::kInvalidInput,
          c.where(key) + " is true: " + what + " is not supported; only the plain LoRA update is");
  };
  refuse_true("use_dora", "DoRA");
  refuse_true("lora_bias", "a LoRA bias");
  refuse_true("fan_in_fan_out", "a transposed (Conv1D) base layer");
  refuse_true("use_qalora", "QA-LoRA");
  const std::string bias = c.get_or<std::string>("bias", "none");
  check(bias == "none", ErrorCode::kInvalidInput,
        c.where("bias") + " is '" + bias + "': adapters that train biases are not supported");
  for (const char* key : {"modules_to_save", "target_parameters", "trainable_token_indices", "layer_replication"}) {
    const auto v = c.get_optional<nlohmann::json>(key);
    check(!v || v->empty(), ErrorCode::kInvalidInput,
          c.where(key) + " is set: adapters that replace whole modules or parameters are not supported");
  }
  a.rank_pattern = read_pattern<int64_t>(c, "rank_pattern");
  a.alpha_pattern = read_pattern<double>(c, "alpha_pattern");
  for (const auto& [k, r] : a.rank_pattern)
    check(r > 0, ErrorCode::kInvalidInput, c.where("rank_pattern." + k) + " must be a positive rank");
  a.weights = dir / "adapter_model.safetensors";
  check(fs::is_regular_file(a.weights), ErrorCode::kInvalidInput,
        "LoRA adapter '" + a.name + "' (" + dir.string() + ") has no adapter_model.safetensors");
  return a;
}

int64_t LoraAdapterConfig::rank(std::string_view module) const {
  const int64_t* r = longest_match(rank_pattern, module);
  return r ? *r : this->r;
}

double LoraAdapterConfig::scale(std::string_view module) const {
  const double* alpha_for = longest_match(alpha_pattern, module);
  const double a = alpha_for ? *alpha_for : alpha;
  const double r = static_cast<double>(rank(module));
  return use_rslora ? a / std::sqrt(r) : a / r;
}

std::vector<LoraAdapterConfig> find_lora_adapters(const fs::path& model_dir) {
  std::vector<LoraAdapterConfig> out;
  std::set<std::string> names;
  auto scan = [&](const fs::path& parent) {
    std::error_code ec;
    if (!fs::is_directory(parent, ec)) return;
    std::vector<fs::path> dirs;
    for (const auto& entry : fs::directory_iterator(parent, ec))
      if (entry.is_directory(ec) && fs::is_regular_file(entry.path() / "adapter_config.json", ec))
        dirs.push_back(entry.path());
    std::sort(dirs.begin(), dirs.end());
    for (const auto& d : dirs) {
      LoraAdapterConfig a = LoraAdapterConfig::load(d);
      check(names.insert(a.name).second, ErrorCode::kInvalidInput,
            "two LoRA adapters are named '" + a.name + "' under " + model_dir.string());
      out.push_back(std::move(a));
    }
  };
  scan(model_dir);
  scan(model_dir / "adapters");
  return out;
}

bool adapter_serves_task(std::string_view adapter, std::string_view task) {
  auto norm = [](std::string_view s) {
    std::string out;
    for (unsigned char c : s) out += std::isalnum(c) ? static_cast<char>(std::tolower(c)) : '_';
    return out;
  };
  return norm(adapter) == norm(task);
}

}  // namespace mpool::loading
