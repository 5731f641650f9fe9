#pragma once
// Native model families: each registers how to recognize its models (for
// mpool.inspect) and how to build a pool ModelSpec from a model directory. The
// pool never sees any of this; it gets a ModelSpec like any other.
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "mpool/core/model_spec.h"
#include "mpool/loading/config.h"
#include "mpool/loading/layout.h"
#include "mpool/loading/registry.h"

namespace mpool::models {

/// What the caller asks of a native model.
struct NativeOptions {
  std::optional<std::string> dtype;         ///< "float32", "bfloat16", "float16"; nullopt: the family's default
  std::vector<std::string> devices{"cpu"};  ///< where replicas may live
  std::optional<int64_t> context_length;    ///< decoders: longest prompt + output; nullopt: the model's maximum
};

/// A native model ready to register.
struct NativeModel {
  core::ModelSpec spec;
  std::string family;
  std::string path;                   ///< the resolved directory
  std::vector<std::string> warnings;  ///< things the caller should log
  double weight_mb = 0;               ///< part of spec.memory_mb that is weights
};

/// One family: recognizer and builder.
struct Family {
  std::string name;
  std::vector<std::string> capabilities;  ///< pool capability names
  /// Whether this family serves the model, or why not.
  std::function<loading::FamilySupport(const loading::ModelConfig&, const loading::ModelLayout&)> supports;
  /// Builds the spec (runs on the registering thread; the loader runs on replicas).
  std::function<NativeModel(const loading::ModelLayout&, const loading::ModelConfig&, const NativeOptions&)> build;
};

/// Registers the built-in families once (also in loading::FamilyRegistry, for inspect).
void register_builtin_families();

/// Resolves a directory or cached repo id and builds its ModelSpec through the
/// first family that supports it; InvalidInput says why none does.
NativeModel native_model(const std::string& path_or_repo_id, const NativeOptions& options);

namespace bert {
/// The BERT encoder family as a text_embedding model.
Family family();
}  // namespace bert

namespace llama {
/// The Llama-style decoder family (llama, mistral, qwen2, qwen3, phi3) as a
/// text_to_text and text_embedding model.
Family family();
}  // namespace llama

}  // namespace mpool::models
