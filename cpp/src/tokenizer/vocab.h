#pragma once
// Token <-> id tables shared by the models (private to the library).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mpool/tokenizer/components.h"

namespace mpool::tokenizer {

/// Hash that lets std::string keys be looked up with string_views.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

/// A bidirectional vocabulary.
class Vocab {
 public:
  /// Adds token with id. Ids may be sparse: far-out ids go to a map, so a
  /// hostile id cannot make the dense table huge.
  void add(const std::string& token, uint32_t id) {
    to_id_[token] = id;
    if (id < to_token_.size() || id < 2 * to_id_.size() + 1024) {
      if (id >= to_token_.size()) to_token_.resize(static_cast<size_t>(id) + 1);
      to_token_[id] = token;
    } else {
      sparse_[id] = token;
    }
  }
  /// Id of token.
  std::optional<uint32_t> id(std::string_view token) const {
    auto it = to_id_.find(token);
    if (it == to_id_.end()) return std::nullopt;
    return it->second;
  }
  /// Token of id.
  std::optional<std::string> token(uint32_t id) const {
    if (const std::string* t = find(id)) return *t;
    return std::nullopt;
  }
  /// Token of an id known to be present.
  const std::string& known(uint32_t id) const { return *find(id); }
  /// Number of tokens.
  size_t size() const { return to_id_.size(); }
  /// Every token with its id, in no particular order.
  const std::unordered_map<std::string, uint32_t, StringHash, std::equal_to<>>& entries() const { return to_id_; }
  /// Loads {"token": id, ...}.
  static Vocab from_object(const JsonNode& node) {
    Vocab v;
    for (auto& [k, n] : node.items()) {
      uint64_t id = n.uint();
      if (id > 0x7FFFFFFF) n.fail("token id out of range");
      v.add(k, static_cast<uint32_t>(id));
    }
    return v;
  }

 private:
  std::unordered_map<std::string, uint32_t, StringHash, std::equal_to<>> to_id_;
  const std::string* find(uint32_t id) const {
    if (id < to_token_.size() && to_token_[id]) return &*to_token_[id];
    auto it = sparse_.find(id);
    return it == sparse_.end() ? nullptr : &it->second;
  }

  std::vector<std::optional<std::string>> to_token_;
  std::unordered_map<uint32_t, std::string> sparse_;
};

}  // namespace mpool::tokenizer
