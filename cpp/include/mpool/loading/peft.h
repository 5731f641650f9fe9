#pragma once
// PEFT LoRA adapters stored beside a model: a directory holding
// adapter_config.json (peft_type "LORA") and adapter_model.safetensors, as
// PeftModel.save_pretrained writes them. Torch-free: the config and where the
// tensors are; nn/lora.h reads the tensors. Only the plain LoRA update is
// accepted (W + scale * B A, scale = lora_alpha / r, or / sqrt(r) with
// use_rslora, per-module r and alpha from rank_pattern / alpha_pattern); the
// variants that change the arithmetic (DoRA, LoRA biases, fan_in_fan_out,
// modules_to_save, target_parameters, trainable tokens) are refused naming the key.
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace mpool::loading {

struct LoraAdapterConfig {
  std::string name;               ///< the adapter's directory name
  std::filesystem::path dir;      ///< the directory holding adapter_config.json
  std::filesystem::path weights;  ///< adapter_model.safetensors
  int64_t r = 8;
  double alpha = 8;
  bool use_rslora = false;
  std::map<std::string, int64_t> rank_pattern;  ///< module-name suffix -> r
  std::map<std::string, double> alpha_pattern;  ///< module-name suffix -> alpha

  /// Reads `dir`/adapter_config.json; errors name the file and the key.
  static LoraAdapterConfig load(const std::filesystem::path& dir);
  /// The factor of B A for `module` (a dotted module path, "layers.0.mlp.fc1").
  double scale(std::string_view module) const;
  /// The rank of `module`'s matrices.
  int64_t rank(std::string_view module) const;
};

/// The LoRA adapters beside the model in `model_dir`: every subdirectory, or
/// subdirectory of "adapters", holding an adapter_config.json, by name. Two with
/// one name, or a config that is not a plain LoRA, are errors.
std::vector<LoraAdapterConfig> find_lora_adapters(const std::filesystem::path& model_dir);

/// Whether an adapter named `adapter` serves the task `task`: equal after
/// lowercasing and mapping every character other than a letter or digit to '_'
/// (PEFT adapter names cannot hold '.', so "retrieval.query" is "retrieval_query").
bool adapter_serves_task(std::string_view adapter, std::string_view task);

}  // namespace mpool::loading
