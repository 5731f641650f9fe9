#pragma once
// Typed access to the JSON files of a model directory. Every error names the file
// and the key, e.g. `config.json: "hidden_size" must be an integer, got "abc"`,
// so a family's own config struct can be a few lines of get<T>() calls.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace mpool::loading {

/// A node of a parsed JSON file that knows where it came from, for error messages.
class JsonView {
 public:
  /// An empty object, so config structs can be default-constructed and filled in.
  JsonView();
  /// Views `node` of the file called `file`; `path` is the dotted key path to it ("" at the root).
  JsonView(std::shared_ptr<const nlohmann::json> root, const nlohmann::json* node, std::string file,
           std::string path);

  /// The file label used in messages ("config.json").
  const std::string& file() const noexcept { return file_; }
  /// The raw node.
  const nlohmann::json& json() const noexcept { return *node_; }
  /// True when the node is an object with `key` set to something other than null.
  bool has(std::string_view key) const;
  /// The value of `key` as T; throws Error(kInvalidInput) if it is absent, null or another type.
  template <typename T>
  T get(std::string_view key) const;
  /// The value of `key` as T, or nullopt if absent or null; throws if it has another type.
  template <typename T>
  std::optional<T> get_optional(std::string_view key) const;
  /// The value of `key` as T, or `fallback` if absent or null; throws if it has another type.
  template <typename T>
  T get_or(std::string_view key, T fallback) const {
    auto v = get_optional<T>(key);
    return v ? std::move(*v) : std::move(fallback);
  }
  /// Token ids stored as one integer or a list of integers (eos_token_id and friends);
  /// empty when absent or null.
  std::vector<std::int64_t> get_token_ids(std::string_view key) const;
  /// The object under `key`; nullopt when absent or null; throws if not an object.
  std::optional<JsonView> child(std::string_view key) const;
  /// How messages name `key` of this node: `config.json: "vision_config.patch_size"`.
  std::string where(std::string_view key) const;

 private:
  const nlohmann::json* find(std::string_view key) const;
  const nlohmann::json& require(std::string_view key) const;

  std::shared_ptr<const nlohmann::json> root_;  // keeps node_ valid
  const nlohmann::json* node_;
  std::string file_;
  std::string path_;
};

/// Parses any JSON document; `file` labels the error on malformed JSON.
nlohmann::json parse_json(std::string_view text, const std::string& file);
/// Reads and parses any JSON file (modules.json is a list, for one); errors name the path.
nlohmann::json load_json(const std::filesystem::path& path);

/// Parses `text`; `file` labels errors. Throws Error(kInvalidInput) on malformed JSON
/// or when the document is not an object.
JsonView parse_json_object(std::string_view text, std::string file);
/// Reads and parses a JSON object file; errors name the path.
JsonView load_json_object(const std::filesystem::path& path);

/// Converts one JSON value to T; `where` names it in the error (`config.json: "x"`).
/// Specialised for bool, std::int64_t, int, double, std::string, the vectors of
/// std::int64_t/double/std::string, std::map<std::string, std::string> and nlohmann::json.
template <typename T>
T json_as(const nlohmann::json& value, const std::string& where);

template <> bool json_as<bool>(const nlohmann::json&, const std::string&);
template <> std::int64_t json_as<std::int64_t>(const nlohmann::json&, const std::string&);
template <> int json_as<int>(const nlohmann::json&, const std::string&);
template <> double json_as<double>(const nlohmann::json&, const std::string&);
template <> std::string json_as<std::string>(const nlohmann::json&, const std::string&);
template <> nlohmann::json json_as<nlohmann::json>(const nlohmann::json&, const std::string&);
template <> std::vector<std::int64_t> json_as<std::vector<std::int64_t>>(const nlohmann::json&, const std::string&);
template <> std::vector<double> json_as<std::vector<double>>(const nlohmann::json&, const std::string&);
template <> std::vector<std::string> json_as<std::vector<std::string>>(const nlohmann::json&, const std::string&);
template <> std::map<std::string, std::string> json_as<std::map<std::string, std::string>>(
    const nlohmann::json&, const std::string&);

template <typename T>
T JsonView::get(std::string_view key) const {
  return json_as<T>(require(key), where(key));
}

template <typename T>
std::optional<T> JsonView::get_optional(std::string_view key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr || v->is_null()) return std::nullopt;
  return json_as<T>(*v, where(key));
}

}  // namespace mpool::loading
