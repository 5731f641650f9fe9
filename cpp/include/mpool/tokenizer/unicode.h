#pragma once
// UTF-8 and Unicode-property helpers shared by the tokenizer components. The
// predicates read tables probed from the reference; categories, case and normalization
// come from utf8proc.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mpool::tokenizer {

/// Number of bytes of the UTF-8 sequence that starts with lead byte b (1 for invalid leads).
inline size_t utf8_len(unsigned char b) {
  if (b < 0x80) return 1;
  if ((b >> 5) == 0x6) return 2;
  if ((b >> 4) == 0xE) return 3;
  if ((b >> 3) == 0x1E) return 4;
  return 1;
}

/// Decodes the (valid) UTF-8 code point at s[i], advancing i past it.
char32_t next_code_point(std::string_view s, size_t& i);

/// Appends the UTF-8 encoding of c to out.
void append_utf8(std::string& out, char32_t c);

/// Encodes one code point as UTF-8.
std::string to_utf8(char32_t c);

/// Decodes a whole (valid) UTF-8 string into code points.
std::u32string to_u32(std::string_view s);

/// Byte offset of the first invalid UTF-8 sequence in s, or npos when s is valid.
size_t find_invalid_utf8(std::string_view s);

/// Throws kInvalidInput naming the byte offset when s is not valid UTF-8.
void require_utf8(std::string_view s, std::string_view what);

/// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// The predicates below follow the reference tokenizers implementation exactly,
// on every code point: they read tables that scripts/gen_unicode_tables.py
// probes from it (see docs/loading.md for the Unicode version of each).
/// Rust char::is_whitespace.
bool is_whitespace(char32_t c);
/// Rust char::is_numeric (Digits).
bool is_numeric(char32_t c);
/// A word character for single_word added tokens (Rust char::is_alphanumeric or
/// '_', probed from the reference): next to one, such a token does not match.
bool is_added_word_char(char32_t c);
/// ASCII punctuation or the unicode_categories crate's is_punctuation (BertPreTokenizer, Punctuation).
bool is_punctuation(char32_t c);
/// Removed by BertNormalizer's clean_text: NUL, U+FFFD and its controls (unicode_categories "other"
/// except tab, newline, carriage return; unassigned code points are kept).
bool is_bert_control(char32_t c);
/// Removed by BertNormalizer's strip_accents after its NFD (unicode_categories Mn).
bool is_mark_nonspacing(char32_t c);
/// Removed by the StripAccents normalizer (its combining-mark table).
bool is_mark(char32_t c);
/// \w of the Rust regex crate (the Whitespace pre-tokenizer).
bool is_regex_word(char32_t c);
/// \s of the Rust regex crate (the Whitespace pre-tokenizer).
bool is_regex_space(char32_t c);
/// Oniguruma's class for a property name (L, Lu, ..., Cn) or for "\\s", "\\w", "\\d", as the body
/// of a PCRE2 character class (complemented when negated); empty for names it has no table for.
std::string oniguruma_class(std::string_view name, bool negated);
/// The [lo, hi] ranges of a class body written as \x{LO}-\x{HI} / \x{C} items, in order.
std::vector<std::pair<char32_t, char32_t>> class_body_ranges(const std::string& body);
/// Letter category (L*).
bool is_letter(char32_t c);
/// Canonical combining class.
int combining_class(char32_t c);
/// Full lowercase mapping as Rust char::to_lowercase yields it.
void append_lowercase(std::u32string& out, char32_t c);
/// Full uppercase mapping (simple mapping from utf8proc).
char32_t to_upper(char32_t c);

/// Normalization forms.
enum class NormForm { kNfd, kNfkd, kNfc, kNfkc };

/// One produced character and its alignment change (see NormalizedString::transform).
struct CharChange {
  char32_t c;  ///< produced character
  int change;  ///< 1 inserted, 0 replaces, -n replaces and removes n following
};

/// Normalizes s, reporting for each produced char how it aligns with the input chars.
std::vector<CharChange> normalize_with_changes(std::u32string_view s, NormForm form);

/// Splits s into extended grapheme clusters (byte ranges).
std::vector<std::pair<size_t, size_t>> graphemes(std::string_view s);

}  // namespace mpool::tokenizer
