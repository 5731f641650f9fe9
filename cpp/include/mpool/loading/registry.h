#pragma once
// Model families register here what they can serve; inspect() and the loaders ask
// it which family takes a model. Families add themselves at start-up; the registry
// itself knows none.
#include <functional>
#include <map>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mpool/loading/config.h"
#include "mpool/loading/layout.h"

namespace mpool::loading {

/// A family's verdict on one model.
struct FamilySupport {
  /// Whether the family can serve the model.
  bool supported = false;
  /// Why not, when it cannot.
  std::string reason;
  /// What the family states about a model it serves (the decoder family:
  /// "parameters" and "active_parameters_per_token" of a mixture of experts).
  std::map<std::string, int64_t> details;
  /// The capabilities this model gets, when fewer than the family's (a BERT
  /// checkpoint with a classification head reranks and does not embed); empty: all.
  std::vector<std::string> capabilities;
  /// The family serves the model.
  static FamilySupport yes() { return {true, {}}; }
  /// The family cannot serve the model, because of `reason`.
  static FamilySupport no(std::string reason) { return {false, std::move(reason)}; }
};

/// Decides from the parsed config (and the directory layout) whether a family fits.
using SupportPredicate = std::function<FamilySupport(const ModelConfig&, const ModelLayout&)>;

/// One registered family.
struct FamilyInfo {
  /// Unique name ("bert_embedder", "llama_decoder", ...).
  std::string name;
  /// What its models can do ("embed", "generate", "classify", ...).
  std::vector<std::string> capabilities;
  /// Whether it supports a given model.
  SupportPredicate predicate;
  /// The diffusers pipelines (model_index.json "_class_name") it serves.
  std::vector<std::string> pipeline_classes;
};

/// One family's answer for one model.
struct FamilyMatch {
  /// The family's name.
  std::string name;
  /// Its capabilities.
  std::vector<std::string> capabilities;
  /// Whether it supports the model.
  bool supported = false;
  /// Why not, when it does not.
  std::string reason;
  /// FamilySupport::details, when it does.
  std::map<std::string, int64_t> details;
};

/// The set of families; thread-safe, and predicates run outside its lock so that a
/// predicate may itself consult the registry.
class FamilyRegistry {
 public:
  /// The process-wide registry the bindings use.
  static FamilyRegistry& global();

  /// Registers a family; throws Error(kInvalidInput) on an empty or duplicate name or a missing predicate.
  void add(FamilyInfo family);
  /// Unregisters a family; false when none has that name.
  bool remove(std::string_view name);
  /// Registered names, in registration order.
  std::vector<std::string> names() const;
  /// Every family's verdict, in registration order. A predicate that throws counts
  /// as "not supported" with the exception as the reason.
  std::vector<FamilyMatch> match(const ModelConfig& config, const ModelLayout& layout) const;
  /// Every family's verdict on a diffusers pipeline of class `pipeline_class`.
  std::vector<FamilyMatch> match_pipeline(const std::string& pipeline_class) const;

 private:
  mutable std::shared_mutex mutex_;
  std::vector<FamilyInfo> families_;
};

}  // namespace mpool::loading
