#include "mpool/loading/json.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "mpool/base/error.h"

namespace mpool::loading {
namespace {

using nlohmann::json;

std::string show(const json& value) {
  std::string s = value.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

[[noreturn]] void wrong_type(const json& value, const std::string& where, const char* expected) {
  throw Error(ErrorCode::kInvalidInput, where + " must be " + expected + ", got " + show(value));
}

}  // namespace

template <>
bool json_as<bool>(const json& v, const std::string& where) {
  if (!v.is_boolean()) wrong_type(v, where, "true or false");
  return v.get<bool>();
}

template <>
std::int64_t json_as<std::int64_t>(const json& v, const std::string& where) {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX))
      wrong_type(v, where, "an integer below 2^63");
    return v.get<std::int64_t>();
  }
  // Some exporters write integral values as floats (512.0); accept exactly those.
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 9.0e18) return static_cast<std::int64_t>(d);
  }
  wrong_type(v, where, "an integer");
}

template <>
int json_as<int>(const json& v, const std::string& where) {
  const std::int64_t i = json_as<std::int64_t>(v, where);
  if (i < INT32_MIN || i > INT32_MAX) wrong_type(v, where, "a 32-bit integer");
  return static_cast<int>(i);
}

template <>
double json_as<double>(const json& v, const std::string& where) {
  if (!v.is_number()) wrong_type(v, where, "a number");
  return v.get<double>();
}

template <>
std::string json_as<std::string>(const json& v, const std::string& where) {
  if (!v.is_string()) wrong_type(v, where, "a string");
  return v.get<std::string>();
}

template <>
json json_as<json>(const json& v, const std::string&) {
  return v;
}

template <>
std::vector<std::int64_t> json_as<std::vector<std::int64_t>>(const json& v, const std::string& where) {
  if (!v.is_array()) wrong_type(v, where, "a list of integers");
  std::vector<std::int64_t> out;
  for (std::size_t i = 0; i < v.size(); ++i) out.push_back(json_as<std::int64_t>(v[i], where + "[" + std::to_string(i) + "]"));
  return out;
}

template <>
std::vector<double> json_as<std::vector<double>>(const json& v, const std::string& where) {
  if (!v.is_array()) wrong_type(v, where, "a list of numbers");
  std::vector<double> out;
  for (std::size_t i = 0; i < v.size(); ++i) out.push_back(json_as<double>(v[i], where + "[" + std::to_string(i) + "]"));
  return out;
}

template <>
std::vector<std::string> json_as<std::vector<std::string>>(const json& v, const std::string& where) {
  if (!v.is_array()) wrong_type(v, where, "a list of strings");
  std::vector<std::string> out;
  for (std::size_t i = 0; i < v.size(); ++i) out.push_back(json_as<std::string>(v[i], where + "[" + std::to_string(i) + "]"));
  return out;
}

template <>
std::map<std::string, std::string> json_as<std::map<std::string, std::string>>(const json& v,
                                                                             const std::string& where) {
  if (!v.is_object()) wrong_type(v, where, "an object of strings");
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : v.items()) out.emplace(key, json_as<std::string>(value, where + "." + key));
  return out;
}

JsonView::JsonView()
    : root_(std::make_shared<const nlohmann::json>(nlohmann::json::object())), node_(root_.get()) {}

JsonView::JsonView(std::shared_ptr<const nlohmann::json> root, const nlohmann::json* node, std::string file, std::string path)
    : root_(std::move(root)), node_(node), file_(std::move(file)), path_(std::move(path)) {}

const nlohmann::json* JsonView::find(std::string_view key) const {
  if (!node_->is_object()) return nullptr;
  const auto it = node_->find(key);
  return it == node_->end() ? nullptr : &*it;
}

const nlohmann::json& JsonView::require(std::string_view key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr || v->is_null())
    throw Error(ErrorCode::kInvalidInput, where(key) + " is required but missing");
  return *v;
}

std::string JsonView::where(std::string_view key) const {
  return file_ + ": \"" + (path_.empty() ? "" : path_ + ".") + std::string(key) + "\"";
}

bool JsonView::has(std::string_view key) const {
  const nlohmann::json* v = find(key);
  return v != nullptr && !v->is_null();
}

std::vector<std::int64_t> JsonView::get_token_ids(std::string_view key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr || v->is_null()) return {};
  if (v->is_array()) return json_as<std::vector<std::int64_t>>(*v, where(key));
  if (!v->is_number()) wrong_type(*v, where(key), "an integer or a list of integers");
  return {json_as<std::int64_t>(*v, where(key))};
}

std::optional<JsonView> JsonView::child(std::string_view key) const {
  const nlohmann::json* v = find(key);
  if (v == nullptr || v->is_null()) return std::nullopt;
  if (!v->is_object()) wrong_type(*v, where(key), "an object");
  return JsonView(root_, v, file_, (path_.empty() ? "" : path_ + ".") + std::string(key));
}

json parse_json(std::string_view text, const std::string& file) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    throw Error(ErrorCode::kInvalidInput, file + ": malformed JSON: " + e.what());
  }
}

json load_json(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kInvalidInput, path.string() + ": cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_json(text.str(), path.string());
}

JsonView parse_json_object(std::string_view text, std::string file) {
  auto root = std::make_shared<json>(parse_json(text, file));
  if (!root->is_object())
    throw Error(ErrorCode::kInvalidInput, file + ": must hold a JSON object, got " + show(*root));
  const json* node = root.get();
  return JsonView(std::move(root), node, std::move(file), "");
}

JsonView load_json_object(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kInvalidInput, path.string() + ": cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  return parse_json_object(text.str(), path.string());
}

}  // namespace mpool::loading
