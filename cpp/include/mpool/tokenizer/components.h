#pragma once
// The pipeline stages of a tokenizer.json, each an interface with one factory
// that builds it from its JSON node. Unknown or unsupported component types
// are rejected with kInvalidInput naming the file and the JSON path.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpool/tokenizer/encoding.h"
#include "mpool/tokenizer/normalized.h"

namespace mpool::tokenizer {

/// A JSON value with its location, for precise error messages.
class JsonNode {
 public:
  /// Wraps value found at path inside file.
  JsonNode(const nlohmann::json& value, std::string path, std::shared_ptr<const std::string> file)
      : value_(&value), path_(std::move(path)), file_(std::move(file)) {}
  /// The raw value.
  const nlohmann::json& raw() const { return *value_; }
  /// The JSON path of this value ("$.model.vocab").
  const std::string& path() const { return path_; }
  /// Throws kInvalidInput naming file and path.
  [[noreturn]] void fail(const std::string& message) const;
  /// Whether key exists with a non-null value.
  bool has(const std::string& key) const;
  /// The member key; fails when absent.
  JsonNode at(const std::string& key) const;
  /// The member key, or nullopt when absent or null.
  std::optional<JsonNode> opt(const std::string& key) const;
  /// Element i of an array.
  JsonNode at(size_t i) const;
  /// Array size; fails when not an array.
  size_t size() const;
  /// Whether this is an object.
  bool is_object() const { return value_->is_object(); }
  /// Whether this is an array.
  bool is_array() const { return value_->is_array(); }
  /// Whether this is a string.
  bool is_string() const { return value_->is_string(); }
  /// Whether this is null.
  bool is_null() const { return value_->is_null(); }
  /// The string value; fails on another type.
  std::string str() const;
  /// The boolean value; fails on another type.
  bool boolean() const;
  /// The numeric value; fails on another type.
  double number() const;
  /// The non-negative integer value; fails on another type.
  uint64_t uint() const;
  /// A one-character string.
  char32_t character() const;
  /// Member key as a string, dflt when absent or null.
  std::string str_or(const std::string& key, const std::string& dflt) const;
  /// Member key as a boolean, dflt when absent or null.
  bool bool_or(const std::string& key, bool dflt) const;
  /// Member key as a non-negative integer, dflt when absent or null.
  uint64_t uint_or(const std::string& key, uint64_t dflt) const;
  /// The "type" member.
  std::string type() const { return at("type").str(); }
  /// Iterates an object's members.
  std::vector<std::pair<std::string, JsonNode>> items() const;

 private:
  const nlohmann::json* value_;
  std::string path_;
  std::shared_ptr<const std::string> file_;
};

/// Rewrites the normalized form of a string.
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  /// Normalizes s in place.
  virtual void normalize(NormalizedString& s) const = 0;
};

/// Splits a string into the words the model sees.
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  /// Refines the untokenized pieces of s.
  virtual void pre_tokenize(PreTokenizedString& s) const = 0;
};

/// Turns a word into tokens.
class Model {
 public:
  virtual ~Model() = default;
  /// Tokens of word, offsets relative to it.
  virtual std::vector<Token> tokenize(std::string_view word) const = 0;
  /// Id of token, if known.
  virtual std::optional<uint32_t> token_to_id(std::string_view token) const = 0;
  /// Token of id, if known.
  virtual std::optional<std::string> id_to_token(uint32_t id) const = 0;
  /// Number of entries of the vocabulary.
  virtual size_t vocab_size() const = 0;
};

/// Adds special tokens and merges pair encodings.
class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  /// How many tokens process adds to a single sequence or a pair.
  virtual size_t added_tokens(bool is_pair) const = 0;
  /// Transforms the encodings (one or two); the caller merges them.
  virtual void process(std::vector<Encoding>& encodings, bool add_special_tokens) const = 0;
};

/// Turns tokens back into text.
class Decoder {
 public:
  virtual ~Decoder() = default;
  /// One step of the decoding chain.
  virtual std::vector<std::string> decode_chain(std::vector<std::string> tokens) const = 0;
  /// The same, keeping bytes that are not (yet) valid UTF-8 as they are where
  /// decode_chain writes U+FFFD: what a byte-level token alone stands for.
  virtual std::vector<std::string> decode_chain_raw(std::vector<std::string> tokens) const {
    return decode_chain(std::move(tokens));
  }
};

/// Builds a normalizer from its JSON node.
std::unique_ptr<Normalizer> make_normalizer(const JsonNode& node);
/// Builds a pre-tokenizer from its JSON node.
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const JsonNode& node);
/// Builds a model from its JSON node.
std::unique_ptr<Model> make_model(const JsonNode& node);
/// Builds a post-processor from its JSON node.
std::unique_ptr<PostProcessor> make_post_processor(const JsonNode& node);
/// Builds a decoder from its JSON node.
std::unique_ptr<Decoder> make_decoder(const JsonNode& node);

/// Parses a split behaviour name ("Isolated", ...).
SplitBehavior parse_split_behavior(const JsonNode& node);
/// Builds a Pattern from {"String": s} or {"Regex": r}.
std::unique_ptr<Pattern> make_pattern(const JsonNode& node);

/// The GPT-2 byte to printable character table.
const std::vector<char32_t>& bytes_to_chars();
/// Byte of a byte-level character, or -1.
int char_to_byte(char32_t c);

/// Trims the byte-level space characters from the offsets of encoding's tokens.
void trim_byte_level_offsets(Encoding& encoding, bool add_prefix_space);

}  // namespace mpool::tokenizer
