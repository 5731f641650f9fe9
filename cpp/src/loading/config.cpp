#include "mpool/loading/config.h"

#include <fstream>
#include <sstream>

#include "mpool/base/error.h"

namespace mpool::loading {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// A special token is a plain string or an AddedToken object {"content": ...}.
std::optional<std::string> token_content(const JsonView& view, std::string_view key) {
  if (!view.has(key)) return std::nullopt;
  const json& v = view.json().at(std::string(key));
  if (v.is_object()) return view.child(key)->get<std::string>("content");
  return view.get<std::string>(key);
}

SpecialTokens parse_special(const JsonView& view) {
  SpecialTokens s;
  s.bos_token = token_content(view, "bos_token");
  s.eos_token = token_content(view, "eos_token");
  s.unk_token = token_content(view, "unk_token");
  s.sep_token = token_content(view, "sep_token");
  s.pad_token = token_content(view, "pad_token");
  s.cls_token = token_content(view, "cls_token");
  s.mask_token = token_content(view, "mask_token");
  if (view.has("additional_special_tokens")) {
    const json& list = view.json().at("additional_special_tokens");
    const std::string where = view.file() + ": \"additional_special_tokens\"";
    if (!list.is_array())
      throw Error(ErrorCode::kInvalidInput, where + " must be a list of tokens");
    for (std::size_t i = 0; i < list.size(); ++i) {
      const json& t = list[i];
      const std::string at = where + "[" + std::to_string(i) + "]";
      s.additional_special_tokens.push_back(
          t.is_object() && t.contains("content") ? json_as<std::string>(t["content"], at + ".content")
                                                 : json_as<std::string>(t, at));
    }
  }
  return s;
}

// A chat template file's text; InvalidInput naming it when it cannot be read.
std::string read_template_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  if (in) text << in.rdbuf();
  if (!in || in.bad()) throw Error(ErrorCode::kInvalidInput, path.string() + ": cannot be read");
  return text.str();
}

// A "chat_template" value of `file`: a template string ("default") or the
// multi-template form [{"name": "default", "template": "..."}, {"name": "tool_use", ...}].
void read_chat_templates(const json& value, const std::string& file,
                         std::map<std::string, ChatTemplateSource>& out) {
  const std::string where = file + ": \"chat_template\"";
  if (value.is_string()) {
    out["default"] = {value.get<std::string>(), file, file};
    return;
  }
  if (!value.is_array())
    throw Error(ErrorCode::kInvalidInput,
                where + " must be a template string or a list of {name, template}");
  for (std::size_t i = 0; i < value.size(); ++i) {
    const std::string at = where + "[" + std::to_string(i) + "]";
    if (!value[i].is_object())
      throw Error(ErrorCode::kInvalidInput, at + " must be an object with \"name\" and \"template\"");
    const std::string name = json_as<std::string>(value[i].value("name", json()), at + ".name");
    out[name] = {json_as<std::string>(value[i].value("template", json()), at + ".template"), file,
                 file + " (template '" + name + "')"};
  }
}

// load_chat_templates() with tokenizer_config.json already parsed (`config`;
// nullptr when the directory has none). Without a directory, the config's own.
std::map<std::string, ChatTemplateSource> chat_templates_in(const std::optional<fs::path>& dir,
                                                            const JsonView* config) {
  std::map<std::string, ChatTemplateSource> out;
  if (!dir) {
    if (config != nullptr && config->has("chat_template"))
      read_chat_templates(config->json().at("chat_template"), config->file(), out);
    return out;
  }
  // 1. The template files. transformers reads chat_template.jinja first, then each
  //    additional template, so additional_chat_templates/default.jinja would win.
  const fs::path jinja = *dir / "chat_template.jinja";
  if (fs::is_regular_file(jinja)) out["default"] = {read_template_file(jinja), jinja, jinja.string()};
  const fs::path extra = *dir / "additional_chat_templates";
  if (fs::is_directory(extra)) {
    std::error_code ec;
    std::vector<fs::path> files;
    for (fs::directory_iterator it(extra, ec), end; !ec && it != end; it.increment(ec)) files.push_back(it->path());
    if (ec) throw Error(ErrorCode::kInvalidInput, extra.string() + ": cannot be listed (" + ec.message() + ")");
    constexpr std::string_view kSuffix = ".jinja";
    for (const fs::path& file : files) {
      const std::string name = file.filename().string();
      if (!name.ends_with(kSuffix) || !fs::is_regular_file(file)) continue;
      out[name.substr(0, name.size() - kSuffix.size())] = {read_template_file(file), file, file.string()};
    }
  }
  if (!out.empty()) return out;
  // 2. tokenizer_config.json's own.
  if (config != nullptr && config->has("chat_template")) {
    read_chat_templates(config->json().at("chat_template"), config->file(), out);
    return out;
  }
  // 3. The legacy processor file.
  const fs::path legacy = *dir / "chat_template.json";
  if (fs::is_regular_file(legacy)) {
    const JsonView file = load_json_object(legacy);
    if (file.has("chat_template")) read_chat_templates(file.json().at("chat_template"), file.file(), out);
  }
  return out;
}

}  // namespace

ModelConfig parse_model_config(const JsonView& j) {
  ModelConfig c;
  c.raw = j;
  c.model_type = j.get_or<std::string>("model_type", "");
  c.architectures = j.get_or<std::vector<std::string>>("architectures", {});
  c.torch_dtype = j.get_optional<std::string>("torch_dtype");
  if (!c.torch_dtype) c.torch_dtype = j.get_optional<std::string>("dtype");
  c.vocab_size = j.get_optional<std::int64_t>("vocab_size");
  c.hidden_size = j.get_optional<std::int64_t>("hidden_size");
  c.num_hidden_layers = j.get_optional<std::int64_t>("num_hidden_layers");
  c.num_attention_heads = j.get_optional<std::int64_t>("num_attention_heads");
  c.num_key_value_heads = j.get_optional<std::int64_t>("num_key_value_heads");
  c.head_dim = j.get_optional<std::int64_t>("head_dim");
  c.intermediate_size = j.get_optional<std::int64_t>("intermediate_size");
  c.max_position_embeddings = j.get_optional<std::int64_t>("max_position_embeddings");
  c.hidden_act = j.get_optional<std::string>("hidden_act");
  c.rope_theta = j.get_optional<double>("rope_theta");
  c.partial_rotary_factor = j.get_optional<double>("partial_rotary_factor");
  c.layer_norm_eps = j.get_optional<double>("layer_norm_eps");
  c.rms_norm_eps = j.get_optional<double>("rms_norm_eps");
  c.tie_word_embeddings = j.get_optional<bool>("tie_word_embeddings");
  c.bos_token_id = j.get_token_ids("bos_token_id");
  c.eos_token_id = j.get_token_ids("eos_token_id");
  c.pad_token_id = j.get_token_ids("pad_token_id");
  // Newer transformers moved rope settings (theta included) into rope_parameters.
  if (auto rope = rope_parameters_node(j)) {
    RopeScaling r;
    r.type = rope->has("rope_type") ? rope->get<std::string>("rope_type") : rope->get_or<std::string>("type", "");
    r.factor = rope->get_optional<double>("factor");
    r.original_max_position_embeddings = rope->get_optional<std::int64_t>("original_max_position_embeddings");
    r.low_freq_factor = rope->get_optional<double>("low_freq_factor");
    r.high_freq_factor = rope->get_optional<double>("high_freq_factor");
    if (!c.rope_theta) c.rope_theta = rope->get_optional<double>("rope_theta");
    c.rope_scaling = std::move(r);
  }
  return c;
}

GenerationConfig parse_generation_config(const JsonView& j) {
  GenerationConfig g;
  g.raw = j;
  g.bos_token_id = j.get_token_ids("bos_token_id");
  g.eos_token_id = j.get_token_ids("eos_token_id");
  g.pad_token_id = j.get_token_ids("pad_token_id");
  g.max_length = j.get_optional<std::int64_t>("max_length");
  g.max_new_tokens = j.get_optional<std::int64_t>("max_new_tokens");
  g.do_sample = j.get_optional<bool>("do_sample");
  g.temperature = j.get_optional<double>("temperature");
  g.top_p = j.get_optional<double>("top_p");
  g.top_k = j.get_optional<std::int64_t>("top_k");
  g.repetition_penalty = j.get_optional<double>("repetition_penalty");
  return g;
}

TokenizerConfig parse_tokenizer_config(const JsonView& j, const std::optional<fs::path>& dir) {
  TokenizerConfig t;
  t.raw = j;
  t.tokenizer_class = j.get_optional<std::string>("tokenizer_class");
  t.special = parse_special(j);
  if (j.has("model_max_length")) {
    // transformers writes int(1e30) for "no limit": treat anything that large as absent.
    const json& v = j.json().at("model_max_length");
    if (!(v.is_number() && v.get<double>() >= 1e18))
      t.model_max_length = json_as<std::int64_t>(v, j.file() + ": \"model_max_length\"");
  }
  t.add_bos_token = j.get_optional<bool>("add_bos_token");
  t.add_eos_token = j.get_optional<bool>("add_eos_token");
  t.do_lower_case = j.get_optional<bool>("do_lower_case");
  t.padding_side = j.get_optional<std::string>("padding_side");
  t.truncation_side = j.get_optional<std::string>("truncation_side");
  check(!t.truncation_side || *t.truncation_side == "left" || *t.truncation_side == "right", ErrorCode::kInvalidInput,
        j.where("truncation_side") + " must be \"left\" or \"right\", got \"" + t.truncation_side.value_or("") + "\"");
  for (const auto& [name, source] : chat_templates_in(dir, &j)) t.chat_templates[name] = source.text;
  if (auto added = j.child("added_tokens_decoder")) {
    for (const auto& [id_text, token] : added->json().items()) {
      const std::string at = j.file() + ": \"added_tokens_decoder." + id_text + "\"";
      std::int64_t id = 0;
      try {
        std::size_t used = 0;
        id = std::stoll(id_text, &used);
        if (used != id_text.size()) throw std::invalid_argument(id_text);
      } catch (const std::exception&) {
        throw Error(ErrorCode::kInvalidInput, at + ": the key must be a token id");
      }
      if (!token.is_object()) throw Error(ErrorCode::kInvalidInput, at + " must be an object");
      t.added_tokens[id] = {json_as<std::string>(token.value("content", json()), at + ".content"),
                            token.contains("special") && json_as<bool>(token["special"], at + ".special")};
    }
  }
  return t;
}

SpecialTokens parse_special_tokens_map(const JsonView& j) { return parse_special(j); }

std::optional<JsonView> rope_parameters_node(const JsonView& j) {
  if (auto r = j.child("rope_parameters")) return r;
  return j.child("rope_scaling");
}

std::int64_t require_positive(const std::optional<std::int64_t>& value, const char* key, std::int64_t max) {
  if (!value || *value <= 0)
    throw Error(ErrorCode::kInvalidInput, std::string("config.json: \"") + key + "\" must be a positive integer");
  if (*value > max)
    throw Error(ErrorCode::kInvalidInput, std::string("config.json: \"") + key + "\" is " + std::to_string(*value) +
                                              ", more than the " + std::to_string(max) + " mpool accepts");
  return *value;
}

TransformerSizes TransformerSizes::require(const ModelConfig& c, const std::vector<std::string>& model_types,
                                           const std::string& what, std::int64_t default_max_positions) {
  TransformerSizes s;
  s.model_type = c.model_type;
  bool known = false;
  std::string list;
  for (const auto& t : model_types) {
    known = known || t == c.model_type;
    list += (list.empty() ? "" : ", ") + t;
  }
  if (!known)
    throw Error(ErrorCode::kInvalidInput,
                "config.json: model_type '" + c.model_type + "' is not " + what + " (" + list + ")");
  s.vocab_size = require_positive(c.vocab_size, "vocab_size");
  s.hidden_size = require_positive(c.hidden_size, "hidden_size");
  s.num_layers = require_positive(c.num_hidden_layers, "num_hidden_layers", kMaxConfigLayers);
  s.num_heads = require_positive(c.num_attention_heads, "num_attention_heads");
  s.intermediate_size = require_positive(c.intermediate_size, "intermediate_size");
  const auto positions =
      c.max_position_embeddings || default_max_positions <= 0 ? c.max_position_embeddings
                                                              : std::optional<std::int64_t>(default_max_positions);
  s.max_position_embeddings = require_positive(positions, "max_position_embeddings");
  return s;
}

ModelConfig load_model_config(const fs::path& dir) {
  const fs::path path = dir / "config.json";
  if (!fs::is_regular_file(path))
    throw Error(ErrorCode::kInvalidInput, path.string() + ": no such file; a model directory needs its config.json");
  return parse_model_config(load_json_object(path));
}

std::optional<GenerationConfig> load_generation_config(const fs::path& dir) {
  const fs::path path = dir / "generation_config.json";
  if (!fs::is_regular_file(path)) return std::nullopt;
  return parse_generation_config(load_json_object(path));
}

std::optional<TokenizerConfig> load_tokenizer_config(const fs::path& dir) {
  const fs::path path = dir / "tokenizer_config.json";
  if (!fs::is_regular_file(path)) return std::nullopt;
  return parse_tokenizer_config(load_json_object(path), dir);
}

std::optional<SpecialTokens> load_special_tokens_map(const fs::path& dir) {
  const fs::path path = dir / "special_tokens_map.json";
  if (!fs::is_regular_file(path)) return std::nullopt;
  return parse_special_tokens_map(load_json_object(path));
}

std::map<std::string, ChatTemplateSource> load_chat_templates(const fs::path& dir) {
  const fs::path config = dir / "tokenizer_config.json";
  if (!fs::is_regular_file(config)) return chat_templates_in(dir, nullptr);
  const JsonView view = load_json_object(config);
  return chat_templates_in(dir, &view);
}

}  // namespace mpool::loading
