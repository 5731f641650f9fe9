#include "mpool/models/families.h"

#include <mutex>

#include "mpool/core/error.h"
#include "mpool/loading/registry.h"

namespace mpool::models {
namespace {

std::vector<Family>& families() {
  static std::vector<Family> all;
  return all;
}

}  // namespace

void register_builtin_families() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (Family f : {bert::family(), llama::family()}) {
      loading::FamilyRegistry::global().add(loading::FamilyInfo{f.name, f.capabilities, f.supports});
      families().push_back(std::move(f));
    }
  });
}

NativeModel native_model(const std::string& path_or_repo_id, const NativeOptions& options) {
  register_builtin_families();
  loading::ResolvedModel resolved = loading::resolve_model(path_or_repo_id);
  loading::ModelLayout layout = loading::describe_layout(resolved.path);
  check(layout.has_config, ErrorCode::kInvalidInput,
        (layout.model_dir / "config.json").string() + " is missing: not a transformers model directory");
  loading::ModelConfig config = loading::load_model_config(layout.model_dir);
  std::string reasons;
  for (const auto& f : families()) {
    auto support = f.supports(config, layout);
    if (support.supported) {
      NativeModel model = f.build(layout, config, options);
      model.family = f.name;
      model.path = resolved.path.string();
      return model;
    }
    reasons += "; " + f.name + ": " + support.reason;
  }
  throw Error(ErrorCode::kInvalidInput, resolved.path.string() + ": no native family supports model_type '" +
                                            config.model_type + "'" + reasons);
}

}  // namespace mpool::models
