#pragma once
// A string under normalization that remembers, for every byte it holds, which
// byte range of the original text it came from; and the pre-tokenized form
// made of such strings. Offsets everywhere are byte offsets.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mpool/tokenizer/unicode.h"

namespace mpool::tokenizer {

/// A half-open byte range.
using Offsets = std::pair<size_t, size_t>;

/// One piece found by a Pattern: its range, and whether it is a match (delimiter).
struct PatternPiece {
  size_t start;   ///< first byte
  size_t end;     ///< one past the last byte
  bool is_match;  ///< true for a delimiter
};

/// Something that splits a string into matching and non-matching pieces.
class Pattern {
 public:
  virtual ~Pattern() = default;
  /// Cover s with pieces, in order; an empty s gives one empty non-match.
  virtual std::vector<PatternPiece> find_matches(std::string_view s) const = 0;
};

/// A compiled PCRE2 regex (UTF + UCP), safe to share between threads.
class Regex : public Pattern {
 public:
  /// Compiles pattern; Oniguruma spellings of \w, \W are translated. Throws kInvalidInput.
  explicit Regex(const std::string& pattern, bool literal = false);
  /// Frees the compiled pattern.
  ~Regex() override;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  /// Matches in Oniguruma iteration order, as pieces covering s.
  std::vector<PatternPiece> find_matches(std::string_view s) const override;
  /// Every match range, skipping an empty match right after the previous match (Oniguruma iteration).
  std::vector<Offsets> find_all(std::string_view s) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
};

/// Matches every character satisfying a predicate, one character per match.
class CharPredicatePattern : public Pattern {
 public:
  /// Wraps pred.
  explicit CharPredicatePattern(std::function<bool(char32_t)> pred) : pred_(std::move(pred)) {}
  /// Each matching character is its own match.
  std::vector<PatternPiece> find_matches(std::string_view s) const override;

 private:
  std::function<bool(char32_t)> pred_;
};

/// Flips matches and non-matches of another pattern.
class InvertPattern : public Pattern {
 public:
  /// Wraps inner (not owned; must outlive this).
  explicit InvertPattern(const Pattern& inner) : inner_(inner) {}
  /// The inner pattern's pieces with is_match flipped.
  std::vector<PatternPiece> find_matches(std::string_view s) const override;

 private:
  const Pattern& inner_;
};

/// What a split does with the delimiters it finds.
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

/// Text with its original form and per-byte alignments to it.
class NormalizedString {
 public:
  /// Starts as the identity normalization of original.
  explicit NormalizedString(std::string original);
  /// An empty string.
  NormalizedString() = default;

  /// The normalized text.
  const std::string& get() const { return normalized_; }
  /// The original text (of this slice).
  const std::string& original() const { return original_; }
  /// Whether the normalized text is empty.
  bool empty() const { return normalized_.empty(); }
  /// Byte range of this slice in the whole original input.
  Offsets offsets_original() const { return {shift_, shift_ + original_.size()}; }

  /// Maps a normalized byte range to a range of this slice's original; nullopt when out of range.
  std::optional<Offsets> normalized_to_original(size_t start, size_t end) const;
  /// The sub-string covering normalized bytes [start, end) (on char boundaries).
  NormalizedString slice_normalized(size_t start, size_t end) const;

  /// Replaces normalized bytes [start, end) with dest; initial_offset chars are removed first.
  void transform_range(size_t start, size_t end, const std::vector<CharChange>& dest, size_t initial_offset);
  /// transform_range over the whole normalized text.
  void transform(const std::vector<CharChange>& dest, size_t initial_offset);

  /// Unicode normalization in the given form.
  void normalize(NormForm form);
  /// Keeps only the characters for which keep is true.
  void filter(const std::function<bool(char32_t)>& keep);
  /// Maps every character one to one.
  void map(const std::function<char32_t(char32_t)>& fn);
  /// Full lowercase.
  void lowercase();
  /// Prepends s when the text is not empty.
  void prepend(std::string_view s);
  /// Replaces every match of pattern with content.
  void replace(const Pattern& pattern, std::string_view content);
  /// Strips leading and/or trailing whitespace.
  void strip(bool left, bool right);
  /// Splits into pieces according to behavior; empty pieces are kept (callers drop them).
  std::vector<NormalizedString> split(const Pattern& pattern, SplitBehavior behavior) const;

 private:
  std::string original_;
  std::string normalized_;
  // Per normalized byte: its original range; 32 bits halve the memory traffic.
  std::vector<std::pair<uint32_t, uint32_t>> alignments_;
  size_t shift_ = 0;
};

/// A model output: id, token text, byte offsets within the model's input.
struct Token {
  uint32_t id;        ///< vocabulary id
  std::string value;  ///< token text
  Offsets offsets;    ///< byte range in the normalized piece
};

/// One piece of a pre-tokenized string, tokenized or not yet.
struct Split {
  NormalizedString normalized;               ///< the piece
  std::optional<std::vector<Token>> tokens;  ///< set once tokenized
};

/// The input as a sequence of pieces that pre-tokenizers refine and the model tokenizes.
class PreTokenizedString {
 public:
  /// One piece holding the whole of text.
  explicit PreTokenizedString(std::string text);
  /// Replaces each untokenized piece with fn(index, piece)'s non-empty results.
  void split(const std::function<std::vector<NormalizedString>(size_t, NormalizedString&&)>& fn);
  /// The pieces.
  std::vector<Split>& splits() { return splits_; }
  /// The pieces.
  const std::vector<Split>& splits() const { return splits_; }

 private:
  std::vector<Split> splits_;
};

}  // namespace mpool::tokenizer
