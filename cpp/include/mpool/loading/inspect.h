#pragma once
// What a model directory holds and which registered family can serve it: the data
// behind mpool.inspect(). Torch-free; reads JSON files and safetensors headers only.
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpool/loading/config.h"
#include "mpool/loading/layout.h"
#include "mpool/loading/model_directory.h"
#include "mpool/loading/registry.h"

namespace mpool::loading {

/// The tensors of a checkpoint under one component prefix (group_by_component_prefix).
struct TensorGroupSummary {
  /// "text_model.", ...; "" for the tensors under no component prefix.
  std::string prefix;
  /// Number of tensors.
  std::size_t num_tensors = 0;
  /// Total number of elements.
  std::uint64_t num_parameters = 0;
  /// Total bytes of tensor data.
  std::uint64_t num_bytes = 0;
};

/// Summary of the safetensors headers of a checkpoint.
struct WeightsSummary {
  /// Number of tensors.
  std::size_t num_tensors = 0;
  /// Total number of elements.
  std::uint64_t num_parameters = 0;
  /// Total bytes of tensor data.
  std::uint64_t num_bytes = 0;
  /// Tensor count per stored dtype ("F32" -> 101).
  std::map<std::string, std::size_t> dtypes;
  /// Why the weights cannot be loaded, when they cannot (a malformed file, another format).
  std::optional<std::string> error;
  /// The tensors by component prefix, when their names carry any (a component's
  /// report only; empty for a component that is itself one prefix's tensors).
  std::vector<TensorGroupSummary> prefixes;
};

/// One component of the directory (ModelDirectory) as inspect() reports it.
struct ComponentReport {
  /// The component.
  Component component;
  /// Its weights' headers (only the tensors under its tensor_prefix), when it has weights.
  std::optional<WeightsSummary> weights;
  /// A tokenizer's tokenizer_config.json, when present.
  std::optional<TokenizerConfig> tokenizer_config;
};

/// Everything inspect() reports.
struct InspectReport {
  /// Where the model was found.
  ResolvedModel resolved;
  /// What the directory holds.
  ModelLayout layout;
  /// config.json, when present.
  std::optional<ModelConfig> config;
  /// generation_config.json, when present.
  std::optional<GenerationConfig> generation_config;
  /// tokenizer_config.json, when present.
  std::optional<TokenizerConfig> tokenizer_config;
  /// special_tokens_map.json, when present.
  std::optional<SpecialTokens> special_tokens_map;
  /// The tokenizer directory's chat templates (load_chat_templates), with or without tokenizer_config.json.
  std::map<std::string, ChatTemplateSource> chat_templates;
  /// The weights' headers.
  WeightsSummary weights;
  /// model_index.json, when the directory is a diffusers pipeline.
  std::optional<PipelineIndex> pipeline;
  /// Every component: models, nested configs, tokenizers, schedulers, image processors.
  std::vector<ComponentReport> components;
  /// Each registered family's verdict.
  std::vector<FamilyMatch> families;
  /// One sentence on who can serve the model, or why nobody can.
  std::string support;
  /// The report as JSON (what the Python binding returns as a dict).
  nlohmann::json to_json() const;
};

/// Resolves `path_or_repo_id` (offline) and reports on it, asking `registry` for support.
InspectReport inspect_model(std::string_view path_or_repo_id,
                            const FamilyRegistry& registry = FamilyRegistry::global());

}  // namespace mpool::loading
