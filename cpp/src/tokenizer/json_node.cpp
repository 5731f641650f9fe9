#include "mpool/base/error.h"
#include "mpool/tokenizer/components.h"

namespace mpool::tokenizer {

void JsonNode::fail(const std::string& message) const {
  throw Error(ErrorCode::kInvalidInput, (file_ ? *file_ : std::string("<tokenizer.json>")) + ": " + path_ + ": " +
                                            message);
}

bool JsonNode::has(const std::string& key) const {
  if (!value_->is_object()) return false;
  auto it = value_->find(key);
  return it != value_->end() && !it->is_null();
}

namespace {
// Component factories recurse into Sequence members; bound the depth so a
// hostile file cannot exhaust the stack.
constexpr size_t kMaxPathLength = 2048;
}  // namespace

JsonNode JsonNode::at(const std::string& key) const {
  if (!value_->is_object()) fail("expected an object");
  if (path_.size() > kMaxPathLength) fail("nesting too deep");
  auto it = value_->find(key);
  if (it == value_->end()) fail("missing field '" + key + "'");
  return JsonNode(*it, path_ + "." + key, file_);
}

std::optional<JsonNode> JsonNode::opt(const std::string& key) const {
  if (!value_->is_object()) fail("expected an object");
  auto it = value_->find(key);
  if (it == value_->end() || it->is_null()) return std::nullopt;
  return JsonNode(*it, path_ + "." + key, file_);
}

JsonNode JsonNode::at(size_t i) const {
  if (path_.size() > kMaxPathLength) fail("nesting too deep");
  if (!value_->is_array() || i >= value_->size()) fail("expected an array with element " + std::to_string(i));
  return JsonNode((*value_)[i], path_ + "[" + std::to_string(i) + "]", file_);
}

size_t JsonNode::size() const {
  if (!value_->is_array()) fail("expected an array");
  return value_->size();
}

std::string JsonNode::str() const {
  if (!value_->is_string()) fail("expected a string");
  return value_->get<std::string>();
}

bool JsonNode::boolean() const {
  if (!value_->is_boolean()) fail("expected a boolean");
  return value_->get<bool>();
}

double JsonNode::number() const {
  if (!value_->is_number()) fail("expected a number");
  return value_->get<double>();
}

uint64_t JsonNode::uint() const {
  if (!value_->is_number_unsigned()) fail("expected a non-negative integer");
  return value_->get<uint64_t>();
}

char32_t JsonNode::character() const {
  std::string s = str();
  if (find_invalid_utf8(s) != std::string::npos) fail("invalid UTF-8");
  auto u = to_u32(s);
  if (u.size() != 1) fail("expected exactly one character");
  return u[0];
}

std::string JsonNode::str_or(const std::string& key, const std::string& dflt) const {
  auto n = opt(key);
  return n ? n->str() : dflt;
}

bool JsonNode::bool_or(const std::string& key, bool dflt) const {
  auto n = opt(key);
  return n ? n->boolean() : dflt;
}

uint64_t JsonNode::uint_or(const std::string& key, uint64_t dflt) const {
  auto n = opt(key);
  return n ? n->uint() : dflt;
}

std::vector<std::pair<std::string, JsonNode>> JsonNode::items() const {
  if (!value_->is_object()) fail("expected an object");
  std::vector<std::pair<std::string, JsonNode>> out;
  for (auto it = value_->begin(); it != value_->end(); ++it)
    out.emplace_back(it.key(), JsonNode(it.value(), path_ + "." + it.key(), file_));
  return out;
}

SplitBehavior parse_split_behavior(const JsonNode& node) {
  std::string s = node.str();
  if (s == "Removed") return SplitBehavior::kRemoved;
  if (s == "Isolated") return SplitBehavior::kIsolated;
  if (s == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (s == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (s == "Contiguous") return SplitBehavior::kContiguous;
  node.fail("unknown split behavior '" + s + "'");
}

std::unique_ptr<Pattern> make_pattern(const JsonNode& node) {
  try {
    if (node.has("String")) return std::make_unique<Regex>(node.at("String").str(), /*literal=*/true);
    if (node.has("Regex")) return std::make_unique<Regex>(node.at("Regex").str());
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kInvalidInput && std::string(e.what()).rfind("invalid regex", 0) == 0)
      node.fail(e.what());
    throw;
  }
  node.fail("expected {\"String\": ...} or {\"Regex\": ...}");
}

}  // namespace mpool::tokenizer
