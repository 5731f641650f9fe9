#pragma once
// A Hugging Face tokenizer.json pipeline in native code: normalize, split out
// added tokens, pre-tokenize, run the model, post-process, truncate and pad;
// and the reverse, decoding. Thread-safe for concurrent encode/decode calls;
// the configuration setters are not meant to race with them.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "mpool/tokenizer/encoding.h"

namespace mpool::tokenizer {

class Normalizer;
class PreTokenizer;
class Model;
class PostProcessor;
class Decoder;
class JsonNode;

/// How truncation shares the budget between a pair.
enum class TruncationStrategy { kLongestFirst, kOnlyFirst, kOnlySecond };

/// Truncation settings.
struct TruncationParams {
  size_t max_length = 512;                                      ///< tokens, special tokens included
  size_t stride = 0;                                            ///< overlap of overflowing windows (kept for parity)
  TruncationStrategy strategy = TruncationStrategy::kLongestFirst;  ///< how pairs are truncated
  Direction direction = Direction::kRight;                      ///< which end is cut
};

/// Padding settings.
struct PaddingParams {
  std::optional<size_t> fixed_length;            ///< pad to this; nullopt pads to the batch's longest
  std::optional<size_t> pad_to_multiple_of;      ///< round the target up to a multiple
  Direction direction = Direction::kRight;       ///< which end gets padding
  uint32_t pad_id = 0;                           ///< id of the pad token
  uint32_t pad_type_id = 0;                      ///< type id of padding
  std::string pad_token = "[PAD]";               ///< text of the pad token
};

/// A token added on top of the model's vocabulary.
struct AddedToken {
  uint32_t id = 0;            ///< its id
  std::string content;        ///< its text
  bool single_word = false;   ///< only matches as a whole word
  bool lstrip = false;        ///< swallows whitespace on its left
  bool rstrip = false;        ///< swallows whitespace on its right
  bool normalized = false;    ///< matched against normalized text
  bool special = false;       ///< skipped by decode(skip_special_tokens)
};

/// A loaded tokenizer.json.
class Tokenizer {
 public:
  /// Loads path; kInvalidInput naming the file and JSON path on any malformed field.
  static std::unique_ptr<Tokenizer> from_file(const std::string& path);
  /// Parses tokenizer.json text; source names it in error messages.
  static std::unique_ptr<Tokenizer> from_json(std::string_view json, const std::string& source = "<tokenizer.json>");
  /// Releases the pipeline.
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  /// Encodes text (and pair); kInvalidInput naming the byte offset on invalid UTF-8.
  Encoding encode(std::string_view text, std::optional<std::string_view> pair = std::nullopt,
                  bool add_special_tokens = true) const;
  /// Encodes many inputs in parallel (TBB); num_threads 0 uses every core.
  std::vector<Encoding> encode_batch(const std::vector<std::string>& texts,
                                     const std::vector<std::string>* pairs = nullptr, bool add_special_tokens = true,
                                     int num_threads = 0) const;
  /// Decodes ids to text; unknown ids are ignored.
  std::string decode(const std::vector<uint32_t>& ids, bool skip_special_tokens = true) const;
  /// The bytes the ids decode to, before any is replaced by U+FFFD: a byte-level
  /// token that holds part of a character gives that part (OpenAI's logprob `bytes`).
  std::string decode_bytes(const std::vector<uint32_t>& ids, bool skip_special_tokens = true) const;
  /// Decodes many id lists in parallel.
  std::vector<std::string> decode_batch(const std::vector<std::vector<uint32_t>>& ids, bool skip_special_tokens = true,
                                        int num_threads = 0) const;

  /// Id of a token (added tokens first, then the model).
  std::optional<uint32_t> token_to_id(std::string_view token) const;
  /// Token of an id.
  std::optional<std::string> id_to_token(uint32_t id) const;
  /// Vocabulary size, with or without the added tokens.
  size_t vocab_size(bool with_added_tokens = true) const;
  /// The added tokens.
  const std::vector<AddedToken>& added_tokens() const { return added_; }

  /// Current truncation, if any.
  const std::optional<TruncationParams>& truncation() const { return truncation_; }
  /// Current padding, if any.
  const std::optional<PaddingParams>& padding() const { return padding_; }
  /// Sets or clears truncation.
  void set_truncation(std::optional<TruncationParams> params) { truncation_ = std::move(params); }
  /// Sets or clears padding; kInvalidInput for lengths beyond 2^24 tokens.
  void set_padding(std::optional<PaddingParams> params);

 private:
  Tokenizer();
  void load(const JsonNode& root);
  void build_added_matchers();
  Encoding encode_single(std::string_view text, uint32_t type_id) const;
  Encoding post_process(Encoding a, std::optional<Encoding> b, bool add_special_tokens) const;
  void pad_batch(std::vector<Encoding>& encodings) const;
  std::string decode_with(const std::vector<uint32_t>& ids, bool skip_special_tokens, bool raw) const;

  struct Matcher;  // leftmost-longest matcher over added-token contents

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  std::vector<AddedToken> added_;
  std::vector<std::string> added_text_;  // per added token: content, normalized when it is normalized
  std::unordered_map<std::string, uint32_t> added_by_content_;
  std::unordered_map<uint32_t, size_t> added_by_id_;
  std::unordered_set<std::string> special_contents_;
  std::unique_ptr<Matcher> raw_matcher_;
  std::unique_ptr<Matcher> normalized_matcher_;
  std::optional<TruncationParams> truncation_;
  std::optional<PaddingParams> padding_;
};

/// Incremental detokenization: feed ids one at a time, get back completed text.
class DecodeStream {
 public:
  /// Streams with tokenizer (which must outlive this).
  explicit DecodeStream(const Tokenizer& tokenizer, bool skip_special_tokens = true)
      : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}
  /// The new text that id completes, or nullopt while a character is incomplete.
  std::optional<std::string> step(uint32_t id);
  /// The text of the ids that step() has not yet returned, written as decode()
  /// writes them (an unfinished character's bytes as U+FFFD): for the end of a
  /// stream, so that all it returned equals decode() of all its ids.
  std::string flush();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::vector<uint32_t> ids_;
  std::string prefix_;
  size_t prefix_index_ = 0;
};

}  // namespace mpool::tokenizer
