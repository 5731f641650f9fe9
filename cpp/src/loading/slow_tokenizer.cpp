#include "mpool/loading/slow_tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <unordered_map>
#include <vector>

#include "mpool/base/error.h"
#include "mpool/imageio/source.h"
#include "mpool/loading/config.h"
#include "mpool/loading/json.h"
#include "mpool/tokenizer/components.h"
#include "mpool/tokenizer/normalized.h"
#include "mpool/tokenizer/unicode.h"

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
// transformers 5's TikTokenConverter splits with this pattern unless told otherwise.
constexpr const char* kTiktokenDefaultPattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^
\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[
]*|\s*[
]+|\s+(?!\S)|\s+)";

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
// tokenizer_config.json's "added_tokens_decoder" by id, each with its flags.
std::map<std::int64_t, json> decoder_added_tokens(const TokenizerConfig& config) {
  std::map<std::int64_t, json> by_id;
  if (auto decoder = config.raw.child("added_tokens_decoder")) {
    for (const auto& [id, entry] : config.added_tokens) {
      const std::string key = std::to_string(id);
      const json& raw = decoder->json().at(key);
      by_id[id] = added_token(entry.first, raw.is_object() ? &raw : nullptr, decoder->where(key));
      by_id[id]["special"] = entry.second;
    }
  }
  return by_id;
}

// tokenizer.json's "added_tokens" list from tokens by id.
json added_tokens_list(std::map<std::int64_t, json>& by_id) {
  json out = json::array();
  for (auto& [id, token] : by_id) {
    json entry = {{"id", id}};
    entry.update(token);
    out.push_back(std::move(entry));
  }
  return out;
}

json compose_added_tokens(const TokenizerConfig& config, const std::map<std::string, json>& specials,
                          const std::vector<std::string>& additional, const json& vocab) {
  std::map<std::int64_t, json> by_id = decoder_added_tokens(config);
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
  return added_tokens_list(by_id);
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

// A rank file's bytes as a byte-level vocabulary key.
std::string byte_level_text(std::string_view bytes) {
  const std::vector<char32_t>& chars = tokenizer::bytes_to_chars();
  std::string out;
  for (unsigned char b : bytes) tokenizer::append_utf8(out, chars[b]);
  return out;
}

// Whether `path` starts like a rank file ("<base64> <rank>"), not a SentencePiece
// model (a protobuf, whose first byte is no base64 character).
bool looks_like_rank_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string line;
  if (!in || !std::getline(in, line)) return false;
  if (!line.empty() && line.back() == '\r') line.pop_back();
  const size_t space = line.find(' ');
  if (space == 0 || space == std::string::npos || space + 1 == line.size()) return false;
  for (size_t i = 0; i < line.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(line[i]);
    const bool ok = i < space ? (std::isalnum(c) || c == '+' || c == '/' || c == '=')
                              : (i == space || std::isdigit(c));
    if (!ok) return false;
  }
  return true;
}

// The rank file: one "<base64 bytes> <rank>" per line, as a byte-level
// vocabulary (text -> rank). Ranks and token bytes must be unique.
json read_rank_file(const fs::path& path, std::int64_t& size) {
  std::istringstream in(read_text(path));
  json vocab = json::object();
  std::unordered_map<std::int64_t, size_t> line_of_rank;
  std::unordered_map<std::string, size_t> line_of_token;
  std::string line;
  size = 0;
  for (size_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const std::string where = path.string() + ": line " + std::to_string(number);
    const size_t space = line.find(' ');
    check(space != std::string::npos && space > 0 && line.find(' ', space + 1) == std::string::npos,
          ErrorCode::kInvalidInput, where + " must be base64 token bytes, one space and a rank");
    const std::string rank_text = line.substr(space + 1);
    std::int64_t rank = 0;
    bool digits = !rank_text.empty() && rank_text.size() <= 10;
    for (char c : rank_text) {
      digits = digits && c >= '0' && c <= '9';
      if (digits) rank = rank * 10 + (c - '0');
    }
    check(digits && rank <= 0x7FFFFFFF, ErrorCode::kInvalidInput,
          where + ": rank '" + rank_text + "' is not an integer from 0 to 2147483647");
    const std::string bytes = imageio::decode_base64(std::string_view(line).substr(0, space), where);
    if (auto [it, fresh] = line_of_rank.emplace(rank, number); !fresh)
      throw Error(ErrorCode::kInvalidInput,
                  where + ": rank " + rank_text + " is also line " + std::to_string(it->second) + "'s");
    if (auto [it, fresh] = line_of_token.emplace(bytes, number); !fresh)
      throw Error(ErrorCode::kInvalidInput,
                  where + ": the token is also line " + std::to_string(it->second) + "'s");
    vocab[byte_level_text(bytes)] = rank;
    size = std::max(size, rank + 1);
  }
  check(!vocab.empty(), ErrorCode::kInvalidInput, path.string() + ": holds no ranks");
  return vocab;
}

// The split pattern of a rank file: tokenizer_config.json's "pat_str" (what the
// model was published with), else the caller's, else transformers'
// TikTokenConverter default (with a warning); compiled here so that a bad one
// fails with its source named.
std::string tiktoken_pattern(const fs::path& dir, const JsonView& config, const TokenizerOptions& options,
                             std::vector<std::string>& warnings) {
  const std::optional<std::string> configured = config.get_optional<std::string>("pat_str");
  std::string pattern, source;
  if (configured) {
    pattern = *configured;
    source = config.where("pat_str");
    if (options.pattern && *options.pattern != pattern)
      warnings.push_back(dir.string() + ": tokenizer_config.json names its split pattern (\"pat_str\"), which is "
                                        "used; the tokenizer_pattern option is not");
  } else if (options.pattern) {
    pattern = *options.pattern;
    source = "option tokenizer_pattern";
  } else {
    pattern = kTiktokenDefaultPattern;
    source = "the default tiktoken pattern";
    warnings.push_back(dir.string() +
                       ": tokenizer_config.json names no split pattern (\"pat_str\"), so the rank file is split "
                       "with transformers' default tiktoken pattern; pass register(..., tokenizer_pattern=...) "
                       "if the model was trained with another");
  }
  try {
    tokenizer::Regex compiled(pattern);
  } catch (const Error& e) {
    throw Error(ErrorCode::kInvalidInput, source + ": not a usable split pattern: " + e.what());
  }
  return pattern;
}

// The added tokens of a rank file of `size` ranks: "added_tokens_decoder" above
// the ranks, placeholders for the ids it skips (as transformers fills them), then
// the extra special tokens not among them.
json rank_file_added_tokens(const TokenizerConfig& config, std::int64_t size) {
  std::map<std::int64_t, json> by_id = decoder_added_tokens(config);
  if (!by_id.empty())
    check(by_id.begin()->first >= size, ErrorCode::kInvalidInput,
          config.raw.where("added_tokens_decoder") + ": id " + std::to_string(by_id.begin()->first) +
              " is a rank of the rank file (added tokens take ids from " + std::to_string(size) + ")");
  std::int64_t next = size;
  if (!by_id.empty()) {
    for (std::int64_t id = size; id < by_id.rbegin()->first; ++id)
      if (!by_id.count(id)) by_id[id] = added_token("<|reserved_token_" + std::to_string(id) + "|>", nullptr, "");
    next = by_id.rbegin()->first + 1;
  }
  std::set<std::string> present;
  for (const auto& [id, token] : by_id) present.insert(token["content"].get<std::string>());
  for (const auto& content : config.special.additional_special_tokens)
    if (present.insert(content).second) by_id[next++] = added_token(content, nullptr, "");
  return added_tokens_list(by_id);
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

std::optional<fs::path> find_tiktoken_file(const fs::path& dir) {
  std::error_code ec;
  if (fs::is_regular_file(dir / "tiktoken.model", ec)) return dir / "tiktoken.model";
  std::vector<fs::path> found;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (entry.path().extension() == ".tiktoken" && entry.is_regular_file(ec)) found.push_back(entry.path());
  std::sort(found.begin(), found.end());
  if (found.size() > 1) {
    std::string names;
    for (const auto& f : found) names += (names.empty() ? "" : ", ") + f.filename().string();
    throw Error(ErrorCode::kInvalidInput, dir.string() + ": several tiktoken rank files (" + names +
                                              "); mpool cannot tell which one the model uses");
  }
  if (found.size() == 1) return found.front();
  // transformers reads tokenizer.model as a rank file when it is not SentencePiece's.
  if (fs::is_regular_file(dir / "tokenizer.model", ec) && looks_like_rank_file(dir / "tokenizer.model"))
    return dir / "tokenizer.model";
  return std::nullopt;
}

TokenizerDocument tiktoken_tokenizer_json(const fs::path& dir, const fs::path& rank_file,
                                          const TokenizerOptions& options) {
  const std::optional<TokenizerConfig> loaded = load_tokenizer_config(dir);
  const TokenizerConfig parsed = loaded ? *loaded : TokenizerConfig{};
  TokenizerDocument out;
  const std::string pattern = tiktoken_pattern(dir, parsed.raw, options, out.warnings);
  std::int64_t size = 0;
  json vocab = read_rank_file(rank_file, size);
  const json added = rank_file_added_tokens(parsed, size);

  // Byte-level BPE by rank: the pair whose concatenation ranks lowest merges
  // first, and a piece that is itself a token is never split.
  json model = {{"type", "BPE"},       {"dropout", nullptr},     {"unk_token", nullptr},
                {"fuse_unk", false},   {"byte_fallback", false}, {"ignore_merges", true},
                {"merges_by_rank", true}, {"vocab", std::move(vocab)}, {"merges", json::array()}};
  json doc = {{"version", "1.0"}, {"truncation", nullptr}, {"padding", nullptr}, {"added_tokens", added},
              {"normalizer", nullptr}};
  json split = {{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", "Isolated"}, {"invert", false}};
  json bytes = byte_level(false);
  bytes["use_regex"] = false;
  doc["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", json::array({split, bytes})}};
  std::map<std::string, json> specials;
  read_specials(parsed.raw, specials);
  if (parsed.raw.get_or<bool>("add_bos_token", false) || parsed.raw.get_or<bool>("add_eos_token", false)) {
    doc["post_processor"] = bos_eos_template(parsed.raw, specials, added, model["vocab"], dir);
  } else {
    json post = byte_level(false);
    post["trim_offsets"] = false;
    doc["post_processor"] = post;
  }
  doc["decoder"] = byte_level(true);
  doc["model"] = std::move(model);
  out.json = doc.dump();
  out.source = rank_file.string();
  return out;
}

std::string prepend_lowercase(const std::string& doc, const std::string& source) {
  nlohmann::json j = parse_json_object(doc, source).json();
  nlohmann::json& normalizer = j["normalizer"];
  auto is_lowercase = [](const nlohmann::json& n) {
    return n.is_object() && n.contains("type") && n["type"] == "Lowercase";
  };
  nlohmann::json sequence = nlohmann::json::array({{{"type", "Lowercase"}}});
  if (is_lowercase(normalizer)) return doc;
  if (normalizer.is_object() && normalizer.contains("type") && normalizer["type"] == "Sequence" &&
      normalizer.contains("normalizers") && normalizer["normalizers"].is_array()) {
    for (const auto& n : normalizer["normalizers"]) {
      if (is_lowercase(n)) return doc;
      sequence.push_back(n);
    }
  } else if (!normalizer.is_null()) {
    sequence.push_back(normalizer);
  }
  normalizer = {{"type", "Sequence"}, {"normalizers", std::move(sequence)}};
  return j.dump();
}

namespace {

// The tokenizer.json document as the folder holds it (or converted from its slow files).
TokenizerDocument read_tokenizer_document_as_stored(const fs::path& dir, const TokenizerOptions& options) {
  const fs::path file = dir / "tokenizer.json";
  const bool has_json = fs::is_regular_file(file);
  const std::optional<fs::path> rank_file = has_json ? std::nullopt : find_tiktoken_file(dir);
  check(!options.pattern || rank_file, ErrorCode::kInvalidInput,
        dir.string() + ": the tokenizer_pattern option applies to a tiktoken rank file (tiktoken.model, *.tiktoken), "
                       "and this tokenizer is " + (has_json ? "tokenizer.json" : "not one"));
  if (has_json) return {read_text(file), file.string(), {}};
  if (rank_file) return tiktoken_tokenizer_json(dir, *rank_file, options);
  check(has_slow_bpe_files(dir), ErrorCode::kInvalidInput,
        file.string() + " is missing: mpool needs the tokenizer.json form of the tokenizer, vocab.json + "
                        "merges.txt of a byte-level BPE tokenizer, or a tiktoken rank file (tiktoken.model, "
                        "*.tiktoken)");
  return {slow_tokenizer_json(dir).dump(), dir.string() + " (vocab.json + merges.txt)", {}};
}

}  // namespace

TokenizerDocument read_tokenizer_document(const fs::path& dir, const TokenizerOptions& options) {
  TokenizerDocument doc = read_tokenizer_document_as_stored(dir, options);
  if (options.lowercase) doc.json = prepend_lowercase(doc.json, doc.source);
  return doc;
}

}  // namespace mpool::loading
