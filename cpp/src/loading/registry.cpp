#include "mpool/loading/registry.h"

#include <algorithm>
#include <mutex>

#include "mpool/base/error.h"

namespace mpool::loading {

FamilyRegistry& FamilyRegistry::global() {
  static FamilyRegistry registry;
  return registry;
}

void FamilyRegistry::add(FamilyInfo family) {
  if (family.name.empty()) throw Error(ErrorCode::kInvalidInput, "a model family needs a name");
  if (!family.predicate)
    throw Error(ErrorCode::kInvalidInput, "model family \"" + family.name + "\" has no support predicate");
  std::unique_lock lock(mutex_);
  for (const auto& f : families_)
    if (f.name == family.name)
      throw Error(ErrorCode::kInvalidInput, "model family \"" + family.name + "\" is already registered");
  families_.push_back(std::move(family));
}

bool FamilyRegistry::remove(std::string_view name) {
  std::unique_lock lock(mutex_);
  const auto it = std::find_if(families_.begin(), families_.end(), [&](const auto& f) { return f.name == name; });
  if (it == families_.end()) return false;
  families_.erase(it);
  return true;
}

std::vector<std::string> FamilyRegistry::names() const {
  std::shared_lock lock(mutex_);
  std::vector<std::string> out;
  for (const auto& f : families_) out.push_back(f.name);
  return out;
}

std::vector<FamilyMatch> FamilyRegistry::match_pipeline(const std::string& pipeline_class) const {
  std::shared_lock lock(mutex_);
  std::vector<FamilyMatch> out;
  for (const auto& f : families_) {
    const bool yes = std::find(f.pipeline_classes.begin(), f.pipeline_classes.end(), pipeline_class) !=
                     f.pipeline_classes.end();
    out.push_back(FamilyMatch{f.name, f.capabilities, yes,
                              yes ? std::string() : "does not build " + pipeline_class + " pipelines"});
  }
  return out;
}

std::vector<FamilyMatch> FamilyRegistry::match(const ModelConfig& config, const ModelLayout& layout) const {
  std::vector<FamilyInfo> families;
  {
    std::shared_lock lock(mutex_);
    families = families_;
  }
  std::vector<FamilyMatch> out;
  for (const auto& f : families) {
    FamilyMatch m{f.name, f.capabilities, false, {}};
    try {
      const FamilySupport s = f.predicate(config, layout);
      m.supported = s.supported;
      m.reason = s.supported ? std::string() : s.reason;
      if (s.supported) m.details = s.details;
      if (s.supported && !s.capabilities.empty()) m.capabilities = s.capabilities;
    } catch (const std::exception& e) {
      m.reason = std::string("support check failed: ") + e.what();
    }
    out.push_back(std::move(m));
  }
  return out;
}

}  // namespace mpool::loading
