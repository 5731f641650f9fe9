#include "mpool/loading/layout.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <set>

#include "mpool/base/error.h"
#include "mpool/loading/json.h"
#include "mpool/loading/safetensors.h"

namespace mpool::loading {
namespace {

namespace fs = std::filesystem;

bool valid_repo_part(std::string_view part) {
  if (part.empty() || part.front() == '.' || part.front() == '-') return false;
  return std::all_of(part.begin(), part.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.';
  });
}

// "org/name" or "name": what the hub accepts as a repo id.
bool looks_like_repo_id(std::string_view id) {
  const auto slash = id.find('/');
  if (slash == std::string_view::npos) return valid_repo_part(id);
  return valid_repo_part(id.substr(0, slash)) && valid_repo_part(id.substr(slash + 1));
}

std::optional<std::string> read_ref(const fs::path& path) {
  std::ifstream in(path);
  std::string commit;
  if (!(in >> commit)) return std::nullopt;
  return commit;
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : std::string(sep)) + p;
  return out;
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::vector<std::string> files_matching(const fs::path& dir, std::string_view suffix) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file(ec) && ends_with(name, suffix) && !is_training_artifact(name)) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> shards_of(const fs::path& index) {
  const JsonView view = load_json_object(index);
  const auto map = view.child("weight_map");
  if (!map) throw Error(ErrorCode::kInvalidInput, index.string() + ": \"weight_map\" is required but missing");
  std::set<std::string> files;
  for (const auto& [tensor, file] : map->json().items())
    files.insert(json_as<std::string>(file, index.string() + ": \"weight_map." + tensor + "\""));
  return {files.begin(), files.end()};
}

// The first of `names` that is a file in `dir`.
std::optional<std::string> first_file(const fs::path& dir, std::initializer_list<const char*> names) {
  std::error_code ec;
  for (const char* name : names)
    if (fs::is_regular_file(dir / name, ec)) return std::string(name);
  return std::nullopt;
}

}  // namespace

WeightsLayout describe_weights(const fs::path& dir, const std::string& prefix) {
  WeightsLayout w;
  auto rel = [&](const std::string& name) { return prefix + name; };
  const auto safetensors = files_matching(dir, ".safetensors");
  const auto bins = files_matching(dir, ".bin");
  const auto ggufs = files_matching(dir, ".gguf");
  std::vector<std::string> others;
  for (const char* ext : {".pt", ".pth", ".ckpt"})
    for (auto& f : files_matching(dir, ext)) others.push_back(f);

  // transformers' names first, then diffusers' (diffusion_pytorch_model.*).
  const auto safetensors_index =
      first_file(dir, {"model.safetensors.index.json", "diffusion_pytorch_model.safetensors.index.json"});
  const auto safetensors_main = first_file(dir, {"model.safetensors", "diffusion_pytorch_model.safetensors"});
  const auto bin_index = first_file(dir, {"pytorch_model.bin.index.json", "diffusion_pytorch_model.bin.index.json"});
  if (safetensors_index) {
    w.format = WeightsFormat::kSafetensorsSharded;
    w.index = rel(*safetensors_index);
    for (const auto& f : shards_of(dir / *safetensors_index)) w.files.push_back(rel(f));
  } else if (!safetensors.empty()) {
    w.format = WeightsFormat::kSafetensors;
    if (safetensors_main)
      w.files.push_back(rel(*safetensors_main));
    else
      for (const auto& f : safetensors) w.files.push_back(rel(f));
  } else if (bin_index) {
    w.format = WeightsFormat::kPytorchBinSharded;
    w.index = rel(*bin_index);
    for (const auto& f : shards_of(dir / *bin_index)) w.files.push_back(rel(f));
  } else if (!bins.empty()) {
    w.format = WeightsFormat::kPytorchBin;
    for (const auto& f : bins) w.files.push_back(rel(f));
  } else if (!ggufs.empty()) {
    w.format = WeightsFormat::kGguf;
    for (const auto& f : ggufs) w.files.push_back(rel(f));
  } else if (!others.empty()) {
    w.format = WeightsFormat::kOther;
    for (const auto& f : others) w.files.push_back(rel(f));
  }
  std::set<std::string> chosen(w.files.begin(), w.files.end());
  for (const std::vector<std::string>* group : {&safetensors, &bins, &ggufs, static_cast<const std::vector<std::string>*>(&others)})
    for (const auto& f : *group)
      if (!chosen.count(rel(f))) w.other_files.push_back(rel(f));
  return w;
}

namespace {

// sentence-transformers 6 writes "pooling_mode" (a name or a list of names);
// earlier releases wrote one pooling_mode_* flag per mode. With neither, or no
// flag true, sentence-transformers pools by the mean, and so does this.
std::string pooling_mode(const JsonView& j) {
  if (const auto mode = j.json().find("pooling_mode"); mode != j.json().end() && !mode->is_null()) {
    if (mode->is_string()) return mode->get<std::string>();
    std::vector<std::string> names;
    if (mode->is_array())
      for (const auto& m : *mode) {
        if (!m.is_string()) {
          names.clear();
          break;
        }
        names.push_back(m.get<std::string>());
      }
    if (names.empty())
      throw Error(ErrorCode::kInvalidInput,
                  j.where("pooling_mode") + " must be a mode name or a non-empty list of them, got " + mode->dump());
    return join(names, "+");
  }
  // In the order sentence-transformers concatenates them (its forward(), and
  // _LEGACY_POOLING_MODE_KWARGS): max before mean.
  static const std::pair<const char*, const char*> kModes[] = {
      {"pooling_mode_cls_token", "cls"},
      {"pooling_mode_max_tokens", "max"},
      {"pooling_mode_mean_tokens", "mean"},
      {"pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"},
      {"pooling_mode_weightedmean_tokens", "weightedmean"},
      {"pooling_mode_lasttoken", "lasttoken"},
  };
  std::vector<std::string> modes;
  for (const auto& [key, name] : kModes)
    if (j.get_or<bool>(key, false)) modes.emplace_back(name);
  return modes.empty() ? std::string("mean") : join(modes, "+");
}

DenseModuleConfig dense_config(const fs::path& root, const std::string& path) {
  const JsonView cfg = load_json_object(root / path / "config.json");
  DenseModuleConfig d;
  d.path = path;
  d.config_file = cfg.file();
  d.in_features = cfg.get<std::int64_t>("in_features");
  d.out_features = cfg.get<std::int64_t>("out_features");
  if (d.in_features < 1 || d.out_features < 1)
    throw Error(ErrorCode::kInvalidInput, cfg.file() + ": \"in_features\" and \"out_features\" must be >= 1, got " +
                                              std::to_string(d.in_features) + " and " + std::to_string(d.out_features));
  d.bias = cfg.get_or<bool>("bias", true);
  // sentence-transformers' Dense defaults to Tanh, and None to Identity.
  if (const auto act = cfg.json().find("activation_function"); act == cfg.json().end())
    d.activation = "torch.nn.modules.activation.Tanh";
  else if (act->is_null())
    d.activation = "torch.nn.modules.linear.Identity";
  else
    d.activation = cfg.get<std::string>("activation_function");
  d.use_residual = cfg.get_or<bool>("use_residual", false);
  d.input_name = cfg.get_or<std::string>("module_input_name", "sentence_embedding");
  d.output_name = cfg.get_or<std::string>("module_output_name", d.input_name);
  return d;
}

SentenceTransformersLayout describe_sentence_transformers(const fs::path& root) {
  SentenceTransformersLayout st;
  const fs::path modules_path = root / "modules.json";
  const nlohmann::json list = load_json(modules_path);
  if (!list.is_array())
    throw Error(ErrorCode::kInvalidInput, modules_path.string() + ": must hold a list of modules");
  for (std::size_t i = 0; i < list.size(); ++i) {
    const std::string at = modules_path.string() + ": \"[" + std::to_string(i) + "]";
    if (!list[i].is_object()) throw Error(ErrorCode::kInvalidInput, at + "\" must be an object");
    SentenceTransformersModule m;
    m.idx = list[i].contains("idx") ? json_as<std::int64_t>(list[i]["idx"], at + ".idx\"") : static_cast<std::int64_t>(i);
    m.name = list[i].contains("name") ? json_as<std::string>(list[i]["name"], at + ".name\"") : std::to_string(i);
    m.path = list[i].contains("path") ? json_as<std::string>(list[i]["path"], at + ".path\"") : "";
    m.type = json_as<std::string>(list[i].value("type", nlohmann::json()), at + ".type\"");
    st.modules.push_back(std::move(m));
  }
  std::sort(st.modules.begin(), st.modules.end(), [](const auto& a, const auto& b) { return a.idx < b.idx; });
  for (const auto& m : st.modules) {
    if (ends_with(m.type, ".Transformer")) {
      st.transformer_path = m.path;
    } else if (ends_with(m.type, ".Pooling")) {
      const JsonView cfg = load_json_object(root / m.path / "config.json");
      std::optional<std::int64_t> width = cfg.get_optional<std::int64_t>("embedding_dimension");
      if (!width) width = cfg.get_optional<std::int64_t>("word_embedding_dimension");
      st.pooling = PoolingConfig{pooling_mode(cfg), width, cfg.get_or<bool>("include_prompt", true)};
    } else if (ends_with(m.type, ".Dense")) {
      st.dense.push_back(dense_config(root, m.path));
    } else if (ends_with(m.type, ".Normalize")) {
      st.normalize = true;
    } else {
      st.other_modules.push_back(m.type);
    }
  }
  for (const fs::path& p : {root / st.transformer_path / "sentence_bert_config.json", root / "sentence_bert_config.json"}) {
    if (!fs::is_regular_file(p)) continue;
    const JsonView cfg = load_json_object(p);
    st.max_seq_length = cfg.get_optional<std::int64_t>("max_seq_length");
    if (st.max_seq_length && *st.max_seq_length < 1)
      throw Error(ErrorCode::kInvalidInput, cfg.where("max_seq_length") + " must be at least 1 (or null: the "
                                                "tokenizer's limit), got " + std::to_string(*st.max_seq_length));
    st.do_lower_case = cfg.get_optional<bool>("do_lower_case");
    break;
  }
  if (fs::is_regular_file(root / "config_sentence_transformers.json")) {
    const JsonView cfg = load_json_object(root / "config_sentence_transformers.json");
    st.prompts = cfg.get_or<std::map<std::string, std::string>>("prompts", {});
    st.default_prompt_name = cfg.get_optional<std::string>("default_prompt_name");
    st.similarity_fn_name = cfg.get_optional<std::string>("similarity_fn_name");
    if (st.default_prompt_name && !st.prompts.count(*st.default_prompt_name))
      throw Error(ErrorCode::kInvalidInput, cfg.file() + ": \"default_prompt_name\" names prompt \"" +
                                                *st.default_prompt_name + "\", which \"prompts\" does not define");
  }
  return st;
}

}  // namespace

fs::path hf_hub_cache_dir() {
  if (const char* v = std::getenv("HF_HUB_CACHE"); v != nullptr && *v != '\0') return v;
  if (const char* v = std::getenv("HF_HOME"); v != nullptr && *v != '\0') return fs::path(v) / "hub";
  const char* home = std::getenv("HOME");
  return fs::path(home != nullptr ? home : "") / ".cache" / "huggingface" / "hub";
}

ResolvedModel resolve_model(std::string_view spec) { return resolve_model(spec, hf_hub_cache_dir()); }

ResolvedModel resolve_model(std::string_view spec, const fs::path& hub_cache) {
  if (spec.empty()) throw Error(ErrorCode::kInvalidInput, "model path or repo id is empty");
  std::vector<std::string> searched;
  std::error_code ec;
  const fs::path local(spec);
  if (fs::is_directory(local, ec)) return {fs::absolute(local), "local_directory", std::nullopt, std::nullopt};
  searched.push_back(fs::absolute(local, ec).string() +
                     (fs::exists(local, ec) ? " (not a directory)" : " (no such directory)"));

  std::string_view repo = spec;
  std::optional<std::string> wanted_rev;
  if (const auto at = spec.rfind('@'); at != std::string_view::npos) {
    repo = spec.substr(0, at);
    wanted_rev = std::string(spec.substr(at + 1));
  }
  if (looks_like_repo_id(repo) && (!wanted_rev || valid_repo_part(*wanted_rev))) {
    std::string folder = "models--";
    for (char c : repo) folder += c == '/' ? std::string("--") : std::string(1, c);
    const fs::path repo_dir = hub_cache / folder;
    if (!fs::is_directory(repo_dir, ec)) {
      searched.push_back(repo_dir.string() + " (no such directory)");
    } else {
      const std::string ref = wanted_rev.value_or("main");
      std::optional<std::string> commit = read_ref(repo_dir / "refs" / ref);
      if (!commit && wanted_rev) commit = wanted_rev;  // a commit hash given directly
      const fs::path snapshots = repo_dir / "snapshots";
      if (commit) {
        const fs::path snap = snapshots / *commit;
        if (fs::is_directory(snap, ec)) return {snap, "hf_cache", std::string(repo), *commit};
        searched.push_back(snap.string() + " (no such snapshot" +
                           (wanted_rev ? std::string(")") : std::string(" for refs/main)")));
      } else {
        std::vector<std::string> revs;
        for (const auto& e : fs::directory_iterator(snapshots, ec))
          if (e.is_directory(ec)) revs.push_back(e.path().filename().string());
        std::sort(revs.begin(), revs.end());
        if (revs.size() == 1) return {snapshots / revs[0], "hf_cache", std::string(repo), revs[0]};
        if (revs.empty()) {
          searched.push_back(snapshots.string() + " (no snapshots)");
        } else {
          throw Error(ErrorCode::kInvalidInput,
                      "model \"" + std::string(spec) + "\": " + snapshots.string() + " holds several snapshots (" +
                          join(revs, ", ") + ") and " + (repo_dir / "refs" / "main").string() +
                          " does not say which is current; ask for one as \"" + std::string(repo) + "@<revision>\"");
        }
      }
    }
  } else {
    searched.push_back("the Hugging Face cache " + hub_cache.string() + " (skipped: \"" + std::string(spec) +
                       "\" is not a repo id)");
  }
  throw Error(ErrorCode::kInvalidInput,
              "model \"" + std::string(spec) + "\" not found; searched: " + join(searched, "; ") +
                  ". mpool never downloads: fetch it first (e.g. `huggingface-cli download " + std::string(repo) +
                  "`) or pass a local directory");
}

const char* weights_format_name(WeightsFormat format) noexcept {
  switch (format) {
    case WeightsFormat::kNone: return "none";
    case WeightsFormat::kSafetensors: return "safetensors";
    case WeightsFormat::kSafetensorsSharded: return "safetensors_sharded";
    case WeightsFormat::kPytorchBin: return "pytorch_bin";
    case WeightsFormat::kPytorchBinSharded: return "pytorch_bin_sharded";
    case WeightsFormat::kGguf: return "gguf";
    case WeightsFormat::kOther: return "other";
  }
  return "unknown";
}

std::vector<std::string> tokenizer_files_in(const fs::path& dir, const std::string& prefix) {
  static const char* kTokenizerFiles[] = {
      "tokenizer.json",  "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
      "vocab.txt",       "vocab.json",            "merges.txt",              "tokenizer.model",
      "spiece.model",    "sentencepiece.bpe.model", "chat_template.jinja",   "chat_template.json",
      "tiktoken.model",
  };
  std::vector<std::string> out;
  std::error_code ec;
  for (const char* name : kTokenizerFiles)
    if (fs::is_regular_file(dir / name, ec)) out.push_back(prefix + name);
  return out;
}

ModelLayout describe_layout(const fs::path& dir) {
  ModelLayout layout;
  layout.root = dir;
  layout.model_dir = dir;
  std::string prefix;
  if (fs::is_regular_file(dir / "modules.json")) {
    layout.sentence_transformers = describe_sentence_transformers(dir);
    if (!layout.sentence_transformers->transformer_path.empty()) {
      layout.model_dir = dir / layout.sentence_transformers->transformer_path;
      prefix = layout.sentence_transformers->transformer_path + "/";
    }
  }
  layout.has_config = fs::is_regular_file(layout.model_dir / "config.json");
  layout.has_generation_config = fs::is_regular_file(layout.model_dir / "generation_config.json");
  layout.weights = describe_weights(layout.model_dir, prefix);

  for (const fs::path& d : {layout.model_dir, dir}) {
    layout.tokenizer_files = tokenizer_files_in(d, d == dir ? std::string() : prefix);
    if (!layout.tokenizer_files.empty()) {
      layout.tokenizer_dir = d;
      break;
    }
  }
  return layout;
}

}  // namespace mpool::loading
