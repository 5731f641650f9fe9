#include "mpool/loading/slow_tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <vector>

#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "mpool/loading/json.h"

namespace mpool::loading {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

enum class SlowClass { kClip, kGpt2, kRoberta };

// CLIP's pre-tokenizer split, as transformers 5's CLIPTokenizer writes it (the
// two special tokens first, then clip's original word pattern).
constexpr const char* kClipSplit =
    R"(<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+)";

// What Python's str.strip() removes, at either end of the text.
constexpr const char* kPythonStrip = R"(\A[\s\x{1c}-\x{1f}]+|[\s\x{1c}-\x{1f}]+\z)";

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kInvalidInput, path.string() + ": cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

SlowClass slow_class(const fs::path& dir, const std::optional<std::string>& name) {
  check(name.has_value(), ErrorCode::kInvalidInput,
        (dir / "tokenizer_config.json").string() +
            ": \"tokenizer_class\" is missing: mpool needs it to convert vocab.json + merges.txt");
  std::string base = *name;
  if (base.size() > 4 && base.compare(base.size() - 4, 4, "Fast") == 0) base.resize(base.size() - 4);
  if (base == "CLIPTokenizer") return SlowClass::kClip;
  if (base == "GPT2Tokenizer") return SlowClass::kGpt2;
  if (base == "RobertaTokenizer") return SlowClass::kRoberta;
  throw Error(ErrorCode::kInvalidInput,
              dir.string() + ": tokenizer_class '" + *name +
                  "' has no conversion from vocab.json + merges.txt (mpool converts CLIPTokenizer, "
                  "GPT2Tokenizer and RobertaTokenizer); save the tokenizer.json form of this tokenizer");
}

// merges.txt: an optional "#version" line, then one "left right" pair per line.
json read_merges(const fs::path& path) {
  std::istringstream in(read_text(path));
  json merges = json::array();
  std::string line;
  for (size_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || (number == 1 && line.rfind("#version", 0) == 0)) continue;
    const size_t space = line.find(' ');
    check(space != std::string::npos && space > 0 && space + 1 < line.size() &&
              line.find(' ', space + 1) == std::string::npos,
          ErrorCode::kInvalidInput,
          path.string() + ": line " + std::to_string(number) + " must be two tokens separated by one space");
    merges.push_back(json::array({line.substr(0, space), line.substr(space + 1)}));
  }
  return merges;
}

// vocab.json: token -> non-negative integer id.
json read_vocab(const fs::path& path) {
  json vocab = load_json(path);
  check(vocab.is_object(), ErrorCode::kInvalidInput, path.string() + ": must hold an object of token -> id");
  for (const auto& [token, id] : vocab.items())
    check(id.is_number_unsigned() || (id.is_number_integer() && id.get<std::int64_t>() >= 0),
          ErrorCode::kInvalidInput, path.string() + ": \"" + token + "\" must map to a non-negative integer id");
  return vocab;
}

// The named special tokens in the order transformers keeps them.
constexpr const char* kSpecialKeys[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                        "pad_token", "cls_token", "mask_token"};

// An added token of tokenizer.json without its id: `content` with the flags of
// AddedToken object `flags` (tokenizers' defaults where absent: special, and
// normalized only when not special).
json added_token(const std::string& content, const json* flags, const std::string& where) {
  auto flag = [&](const char* key, bool fallback) {
    if (flags == nullptr || !flags->contains(key) || (*flags)[key].is_null()) return fallback;
    return json_as<bool>((*flags)[key], where + "." + key);
  };
  const bool special = flag("special", true);
  return json{{"content", content},          {"single_word", flag("single_word", false)},
              {"lstrip", flag("lstrip", false)}, {"rstrip", flag("rstrip", false)},
              {"normalized", flag("normalized", !special)}, {"special", special}};
}

// Special tokens of `file` (a JSON object) into `out` by key, later files
// overriding; an explicit null removes the class default.
void read_specials(const JsonView& file, std::map<std::string, json>& out) {
  for (const char* key : kSpecialKeys) {
    if (!file.has(key)) {
      if (file.json().contains(key)) out.erase(key);
      continue;
    }
    const json& v = file.json().at(key);
    const std::string where = file.where(key);
    if (v.is_object())
      out[key] = added_token(json_as<std::string>(v.value("content", json()), where + ".content"), &v, where);
    else
      out[key] = added_token(json_as<std::string>(v, where), nullptr, where);
  }
}

std::map<std::string, json> class_defaults(SlowClass kind) {
  auto token = [](const char* content) { return added_token(content, nullptr, ""); };
  switch (kind) {
    case SlowClass::kClip:
      return {{"bos_token", token("<|startoftext|>")}, {"eos_token", token("<|endoftext|>")},
              {"unk_token", token("<|endoftext|>")},   {"pad_token", token("<|endoftext|>")}};
    case SlowClass::kGpt2:
      return {{"bos_token", token("<|endoftext|>")}, {"eos_token", token("<|endoftext|>")},
              {"unk_token", token("<|endoftext|>")}};
    case SlowClass::kRoberta:
      return {{"bos_token", token("<s>")},   {"eos_token", token("</s>")},   {"sep_token", token("</s>")},
              {"cls_token", token("<s>")},   {"unk_token", token("<unk>")},  {"pad_token", token("<pad>")},
              {"mask_token", token("<mask>")}};
  }
  return {};
}

// The added tokens: tokenizer_config.json's "added_tokens_decoder" by id, then
// every special token not among them, with its vocabulary id or the next free one.
json compose_added_tokens(const TokenizerConfig& config, const std::map<std::string, json>& specials,
                          const std::vector<std::string>& additional, const json& vocab) {
  std::map<std::int64_t, json> by_id;
  if (auto decoder = config.raw.child("added_tokens_decoder")) {
    for (const auto& [id, entry] : config.added_tokens) {
      const std::string key = std::to_string(id);
      const json& raw = decoder->json().at(key);
      by_id[id] = added_token(entry.first, raw.is_object() ? &raw : nullptr, decoder->where(key));
      by_id[id]["special"] = entry.second;
    }
  }
  std::int64_t next = static_cast<std::int64_t>(vocab.size());
  for (const auto& [id, token] : by_id) next = std::max(next, id + 1);
  auto add = [&](const json& token) {
    const std::string content = token["content"].get<std::string>();
    for (const auto& [id, t] : by_id)
      if (t["content"] == content) return;
    const std::int64_t id = vocab.contains(content) ? vocab[content].get<std::int64_t>() : next++;
    by_id[id] = token;
  };
  for (const char* key : kSpecialKeys)
    if (auto it = specials.find(key); it != specials.end()) add(it->second);
  for (const auto& content : additional) add(added_token(content, nullptr, ""));
  json out = json::array();
  for (auto& [id, token] : by_id) {
    json entry = {{"id", id}};
    entry.update(token);
    out.push_back(std::move(entry));
  }
  return out;
}

// Special token `key` and its id (added tokens first, then the vocabulary), as a
// post-processor names it.
json token_with_id(const std::map<std::string, json>& specials, const json& added, const json& vocab,
                   const fs::path& dir, const char* key) {
  auto it = specials.find(key);
  check(it != specials.end(), ErrorCode::kInvalidInput,
        dir.string() + ": " + key + " is null, and the tokenizer adds it to every sequence");
  const std::string content = it->second["content"].get<std::string>();
  for (const auto& t : added)
    if (t["content"] == content) return json::array({content, t["id"]});
  if (vocab.contains(content)) return json::array({content, vocab[content]});
  throw Error(ErrorCode::kInvalidInput, dir.string() + ": " + key + " '" + content + "' has no id");
}

json byte_level(bool add_prefix_space) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", add_prefix_space}, {"trim_offsets", true}, {"use_regex", true}};
}

// transformers' TokenizersBackend.update_post_processor: bos and eos around each
// sequence, as add_bos_token / add_eos_token ask.
json bos_eos_template(const JsonView& config, const std::map<std::string, json>& specials, const json& added,
                      const json& vocab, const fs::path& dir) {
  const bool add_bos = config.get_or<bool>("add_bos_token", false) && specials.count("bos_token");
  const bool add_eos = config.get_or<bool>("add_eos_token", false) && specials.count("eos_token");
  json tokens = json::object();
  auto special = [&](const char* key, int type_id) {
    const json id = token_with_id(specials, added, vocab, dir, key);
    tokens[id[0].get<std::string>()] = {{"id", id[0]}, {"ids", json::array({id[1]})}, {"tokens", json::array({id[0]})}};
    return json{{"SpecialToken", {{"id", id[0]}, {"type_id", type_id}}}};
  };
  auto sequence = [&](const char* name, int type_id) {
    json seq = json::array();
    if (add_bos) seq.push_back(special("bos_token", type_id));
    seq.push_back({{"Sequence", {{"id", name}, {"type_id", type_id}}}});
    if (add_eos) seq.push_back(special("eos_token", type_id));
    return seq;
  };
  json single = sequence("A", 0), pair = single;
  for (auto& item : sequence("B", 1)) pair.push_back(item);
  return {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", tokens}};
}

}  // namespace

bool has_slow_bpe_files(const fs::path& dir) {
  std::error_code ec;
  return fs::is_regular_file(dir / "vocab.json", ec) && fs::is_regular_file(dir / "merges.txt", ec);
}

json slow_tokenizer_json(const fs::path& dir) {
  for (const char* name : {"vocab.json", "merges.txt", "tokenizer_config.json"})
    check(fs::is_regular_file(dir / name), ErrorCode::kInvalidInput,
          dir.string() + ": " + name + " is missing: mpool converts a tokenizer without tokenizer.json from "
          "vocab.json, merges.txt and tokenizer_config.json");
  const TokenizerConfig parsed = *load_tokenizer_config(dir);
  const JsonView& config = parsed.raw;
  const SlowClass kind = slow_class(dir, parsed.tokenizer_class);
  const json vocab = read_vocab(dir / "vocab.json");
  json merges = read_merges(dir / "merges.txt");

  std::map<std::string, json> specials = class_defaults(kind);
  std::vector<std::string> additional = parsed.special.additional_special_tokens;
  read_specials(config, specials);
  if (fs::is_regular_file(dir / "special_tokens_map.json")) {
    const JsonView map = load_json_object(dir / "special_tokens_map.json");
    read_specials(map, specials);
    const SpecialTokens parsed_map = parse_special_tokens_map(map);
    if (!parsed_map.additional_special_tokens.empty()) additional = parsed_map.additional_special_tokens;
  }
  const json added = compose_added_tokens(parsed, specials, additional, vocab);

  const bool clip = kind == SlowClass::kClip;
  const bool add_prefix_space = !clip && config.get_or<bool>("add_prefix_space", false);
  json model = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", ""},
                {"end_of_word_suffix", clip ? "</w>" : ""},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", false},
                {"vocab", vocab},
                {"merges", std::move(merges)}};
  json doc = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
              {"normalizer", nullptr}};
  if (clip) {
    // The unk token goes to the model only when the vocabulary holds it (as in
    // OpenAI's, where it is <|endoftext|>): every byte is in a byte-level vocabulary,
    // so it only stands for pieces the merges cannot reach.
    if (auto unk = specials.find("unk_token"); unk != specials.end()) {
      const std::string content = unk->second["content"].get<std::string>();
      if (vocab.contains(content)) model["unk_token"] = content;
    }
    doc["normalizer"] = {{"type", "Sequence"},
                         {"normalizers", json::array({{{"type", "NFC"}},
                                                      {{"type", "Replace"}, {"pattern", {{"Regex", R"(\s+)"}}},
                                                       {"content", " "}},
                                                      {{"type", "Lowercase"}}})}};
    doc["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers", json::array({{{"type", "Split"}, {"pattern", {{"Regex", kClipSplit}}},
                                        {"behavior", "Removed"}, {"invert", true}},
                                       byte_level(false)})}};
    doc["post_processor"] = {{"type", "RobertaProcessing"},
                             {"sep", token_with_id(specials, added, vocab, dir, "eos_token")},
                             {"cls", token_with_id(specials, added, vocab, dir, "bos_token")},
                             {"trim_offsets", false},
                             {"add_prefix_space", false}};
    // CLIPTokenizer's decode turns each "</w>" into a space, then Python's
    // str.strip() removes whitespace at both ends: Unicode's, plus the separators
    // U+001C..U+001F that Python also counts as whitespace.
    doc["decoder"] = {{"type", "Sequence"},
                      {"decoders", json::array({byte_level(true),
                                                {{"type", "Replace"}, {"pattern", {{"String", "</w>"}}},
                                                 {"content", " "}},
                                                {{"type", "Replace"}, {"pattern", {{"Regex", kPythonStrip}}},
                                                 {"content", ""}}})}};
  } else {
    doc["pre_tokenizer"] = byte_level(add_prefix_space);
    doc["decoder"] = byte_level(true);
    if (kind == SlowClass::kRoberta) {
      doc["post_processor"] = {{"type", "RobertaProcessing"},
                               {"sep", token_with_id(specials, added, vocab, dir, "sep_token")},
                               {"cls", token_with_id(specials, added, vocab, dir, "cls_token")},
                               {"trim_offsets", config.get_or<bool>("trim_offsets", true)},
                               {"add_prefix_space", add_prefix_space}};
    } else {
      doc["post_processor"] = bos_eos_template(config, specials, added, vocab, dir);
    }
  }
  doc["model"] = std::move(model);
  return doc;
}

TokenizerDocument read_tokenizer_document(const fs::path& dir) {
  const fs::path file = dir / "tokenizer.json";
  if (fs::is_regular_file(file)) return {read_text(file), file.string()};
  check(has_slow_bpe_files(dir), ErrorCode::kInvalidInput,
        file.string() + " is missing: mpool needs the tokenizer.json form of the tokenizer, or vocab.json + "
                        "merges.txt of a byte-level BPE tokenizer");
  return {slow_tokenizer_json(dir).dump(), dir.string() + " (vocab.json + merges.txt)"};
}

}  // namespace mpool::loading
