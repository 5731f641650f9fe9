#include "mpool/tokenizer/unicode.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdio>
#include <optional>

#include "mpool/base/error.h"

namespace mpool::tokenizer {

char32_t next_code_point(std::string_view s, size_t& i) {
  auto b = static_cast<unsigned char>(s[i]);
  size_t n = utf8_len(b);
  if (i + n > s.size()) n = 1;
  char32_t c = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
  for (size_t k = 1; k < n; ++k) c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += n;
  return c;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string to_utf8(char32_t c) {
  std::string s;
  append_utf8(s, c);
  return s;
}

std::u32string to_u32(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) out.push_back(next_code_point(s, i));
  return out;
}

namespace {

// Length of the valid UTF-8 sequence at s[i], or the length of its maximal
// invalid subpart negated (at least 1) when it is not valid. The ranges are
// those of the Unicode standard's well-formed byte sequences table.
long sequence_at(std::string_view s, size_t i) {
  auto at = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char b = at(i);
  if (b < 0x80) return 1;
  int need;
  unsigned char lo = 0x80, hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) {
    need = 1;
  } else if (b >= 0xE0 && b <= 0xEF) {
    need = 2;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    need = 3;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  size_t k = i + 1;
  for (int n = 0; n < need; ++n, ++k) {
    if (k >= s.size()) return -static_cast<long>(k - i);
    unsigned char c = at(k);
    unsigned char l = n == 0 ? lo : 0x80, h = n == 0 ? hi : 0xBF;
    if (c < l || c > h) return -static_cast<long>(k - i);
  }
  return static_cast<long>(need + 1);
}

}  // namespace

size_t find_invalid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    // ASCII runs dominate real text; skip them eight bytes at a time would be
    // premature, a byte loop is already memory bound here.
    if (static_cast<unsigned char>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    long n = sequence_at(s, i);
    if (n < 0) return i;
    i += static_cast<size_t>(n);
  }
  return std::string_view::npos;
}

void require_utf8(std::string_view s, std::string_view what) {
  size_t bad = find_invalid_utf8(s);
  if (bad != std::string_view::npos)
    throw Error(ErrorCode::kInvalidInput, std::string(what) + " is not valid UTF-8: invalid byte 0x" +
                                              [&] {
                                                static const char* hex = "0123456789ABCDEF";
                                                auto b = static_cast<unsigned char>(s[bad]);
                                                return std::string{hex[b >> 4], hex[b & 15]};
                                              }() +
                                              " at byte offset " + std::to_string(bad));
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    long n = sequence_at(bytes, i);
    if (n > 0) {
      out.append(bytes.substr(i, static_cast<size_t>(n)));
      i += static_cast<size_t>(n);
    } else {
      out.append("\xEF\xBF\xBD");
      i += static_cast<size_t>(-n);
    }
  }
  return out;
}

namespace {
utf8proc_category_t category(char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)); }
}  // namespace

// The predicates the reference's components use, probed from it on every code
// point by scripts/gen_unicode_tables.py: each of its components follows the
// tables of its own dependency (Rust's char, unicode_categories, the regex crate,
// Oniguruma), and models were trained on exactly that behaviour.
namespace tables {
#include "unicode_tables.inc"
}  // namespace tables

namespace {
inline uint16_t flags(char32_t c) {
  return c < 0x110000 ? tables::kFlagStage2[tables::kFlagStage1[c >> 8]][c & 0xFF] : 0;
}
}  // namespace

bool is_whitespace(char32_t c) { return (flags(c) & tables::kWhitespace) != 0; }

bool is_numeric(char32_t c) { return (flags(c) & tables::kNumeric) != 0; }

bool is_punctuation(char32_t c) { return (flags(c) & tables::kPunctuation) != 0; }

bool is_bert_control(char32_t c) { return (flags(c) & tables::kBertControl) != 0; }

bool is_mark_nonspacing(char32_t c) { return (flags(c) & tables::kBertMarkNonspacing) != 0; }

bool is_mark(char32_t c) { return (flags(c) & tables::kCombiningMark) != 0; }

bool is_regex_word(char32_t c) { return (flags(c) & tables::kRegexWord) != 0; }

bool is_regex_space(char32_t c) { return (flags(c) & tables::kRegexSpace) != 0; }

bool is_added_word_char(char32_t c) { return (flags(c) & tables::kAddedWordChar) != 0; }

std::vector<std::pair<char32_t, char32_t>> class_body_ranges(const std::string& body) {
  std::vector<std::pair<char32_t, char32_t>> out;
  for (size_t i = 0; i < body.size();) {
    auto read = [&] {
      size_t close = body.find('}', i);
      auto v = static_cast<char32_t>(std::stoul(body.substr(i + 3, close - i - 3), nullptr, 16));
      i = close + 1;
      return v;
    };
    char32_t lo = read(), hi = lo;
    if (i < body.size() && body[i] == '-') {
      ++i;
      hi = read();
    }
    out.emplace_back(lo, hi);
  }
  return out;
}

std::string oniguruma_class(std::string_view name, bool negated) {
  for (const auto& cls : tables::kOnigClasses) {
    if (name != cls.name) continue;
    if (!negated) return cls.body;
    // Complement of the body's ranges, each written \x{LO}-\x{HI} or \x{C}.
    std::string body = cls.body, out;
    char32_t next = 0;
    auto emit = [&](char32_t lo, char32_t hi) {
      auto hex = [](char32_t v) {
        char buf[16];
        std::snprintf(buf, sizeof(buf), "\\x{%X}", static_cast<unsigned>(v));
        return std::string(buf);
      };
      // PCRE2 rejects surrogates in UTF mode; none occurs in text anyway.
      if (lo <= 0xDFFF && hi >= 0xD800) {
        if (lo < 0xD800) out += hex(lo) + "-" + hex(0xD7FF);
        if (hi > 0xDFFF) out += hex(0xE000) + "-" + hex(hi);
        return;
      }
      out += hex(lo) + "-" + hex(hi);
    };
    for (auto [lo, hi] : class_body_ranges(body)) {
      if (lo > next) emit(next, lo - 1);
      next = hi + 1;
    }
    if (next <= 0x10FFFF) emit(next, 0x10FFFF);
    return out;
  }
  return {};
}

bool is_letter(char32_t c) {
  auto cat = category(c);
  return cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
}


namespace {
// The reference's full mapping of c in table, or nullptr (and n = 0) when it leaves c alone.
template <size_t N>
const char32_t* mapped(const tables::Mapping (&table)[N], const char32_t* pool, char32_t c, size_t& n) {
  auto it = std::lower_bound(std::begin(table), std::end(table), c,
                             [](const tables::Mapping& m, char32_t v) { return m.c < v; });
  if (it == std::end(table) || it->c != c) {
    n = 0;
    return nullptr;
  }
  n = it->length;
  return pool + it->offset;
}

bool is_hangul_syllable(char32_t c) { return c >= 0xAC00 && c <= 0xD7A3; }
}  // namespace

// Classes are utf8proc's, but only for the marks the reference's normalization
// tables (an older Unicode version) give a class at all.
int combining_class(char32_t c) {
  if (c < 0x300 || (flags(c) & tables::kCombiningClassNonzero) == 0) return 0;
  return utf8proc_get_property(static_cast<utf8proc_int32_t>(c))->combining_class;
}

void append_lowercase(std::u32string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
    return;
  }
  size_t n = 0;
  const char32_t* m = mapped(tables::kLowercase, tables::kLowercasePool, c, n);
  if (m == nullptr) {
    out.push_back(c);
    return;
  }
  out.insert(out.end(), m, m + n);
}

char32_t to_upper(char32_t c) {
  return static_cast<char32_t>(utf8proc_toupper(static_cast<utf8proc_int32_t>(c)));
}

namespace {

struct Item {
  int ccc;
  char32_t c;
  int tag;
};

// Canonical (or compatibility) decomposition with canonical reordering; tags
// travel with their characters, as the reference alignment-tracking
// implementation does.
std::vector<Item> decompose(std::u32string_view s, bool compat) {
  std::vector<Item> out;
  out.reserve(s.size() + 8);
  size_t run_start = 0;
  auto close_run = [&] {
    std::stable_sort(out.begin() + static_cast<long>(run_start), out.end(),
                     [](const Item& a, const Item& b) { return a.ccc < b.ccc; });
  };
  auto push = [&](char32_t c, int tag) {
    int ccc = combining_class(c);
    if (ccc == 0) {
      close_run();
      out.push_back({0, c, tag});
      run_start = out.size();
    } else {
      out.push_back({ccc, c, tag});
    }
  };
  utf8proc_int32_t buf[32];
  utf8proc_option_t opts = static_cast<utf8proc_option_t>(UTF8PROC_DECOMPOSE | (compat ? UTF8PROC_COMPAT : 0));
  for (char32_t c : s) {
    if (c < 0xA0) {
      push(c, 0);
      continue;
    }
    if (!is_hangul_syllable(c)) {
      // The reference's decompositions (tables probed from it), not utf8proc's newer ones.
      size_t n = 0;
      const char32_t* m = compat ? mapped(tables::kCompatibility, tables::kCompatibilityPool, c, n)
                                 : mapped(tables::kCanonical, tables::kCanonicalPool, c, n);
      if (m == nullptr) {
        push(c, 0);
      } else {
        for (size_t k = 0; k < n; ++k) push(m[k], k == 0 ? 0 : 1);
      }
      continue;
    }
    int boundclass = 0;
    auto n = utf8proc_decompose_char(static_cast<utf8proc_int32_t>(c), buf, 32, opts, &boundclass);
    if (n <= 0 || n > 32) {
      push(c, 0);
      continue;
    }
    for (long k = 0; k < n; ++k) push(static_cast<char32_t>(buf[k]), k == 0 ? 0 : 1);
  }
  close_run();
  return out;
}

std::optional<char32_t> compose_pair(char32_t a, char32_t b) {
  // Every second character of a primary composite is at or above U+0300.
  if (b < 0x300) return std::nullopt;
  utf8proc_int32_t buf[2] = {static_cast<utf8proc_int32_t>(a), static_cast<utf8proc_int32_t>(b)};
  auto n = utf8proc_normalize_utf32(buf, 2, UTF8PROC_COMPOSE);
  if (n != 1) return std::nullopt;
  auto r = static_cast<char32_t>(buf[0]);
  // Only what the reference's tables compose (not newer composites, not exclusions).
  if (!is_hangul_syllable(r) && (flags(r) & tables::kPrimaryComposite) == 0) return std::nullopt;
  return r;
}

}  // namespace

std::vector<CharChange> normalize_with_changes(std::u32string_view s, NormForm form) {
  bool compat = form == NormForm::kNfkd || form == NormForm::kNfkc;
  auto items = decompose(s, compat);
  std::vector<CharChange> out;
  out.reserve(items.size());
  if (form == NormForm::kNfd || form == NormForm::kNfkd) {
    for (auto& it : items) out.push_back({it.c, it.tag});
    return out;
  }
  std::optional<CharChange> composee;
  std::optional<int> last_ccc;
  std::vector<CharChange> blocked;
  auto try_compose = [&](char32_t c, int tag) {
    auto r = compose_pair(composee->c, c);
    if (!r) return false;
    composee = CharChange{*r, composee->change + tag - 1};
    return true;
  };
  for (auto& it : items) {
    if (!composee) {
      if (it.ccc != 0) {
        out.push_back({it.c, it.tag});
      } else {
        composee = CharChange{it.c, it.tag};
      }
      continue;
    }
    if (!last_ccc) {
      if (try_compose(it.c, it.tag)) continue;
      if (it.ccc == 0) {
        out.push_back(*composee);
        composee = CharChange{it.c, it.tag};
        continue;
      }
      blocked.push_back({it.c, it.tag});
      last_ccc = it.ccc;
      continue;
    }
    if (*last_ccc >= it.ccc) {
      if (it.ccc == 0) {
        out.push_back(*composee);
        out.insert(out.end(), blocked.begin(), blocked.end());
        blocked.clear();
        composee = CharChange{it.c, it.tag};
        last_ccc.reset();
        continue;
      }
      blocked.push_back({it.c, it.tag});
      last_ccc = it.ccc;
      continue;
    }
    if (try_compose(it.c, it.tag)) continue;
    blocked.push_back({it.c, it.tag});
    last_ccc = it.ccc;
  }
  if (composee) out.push_back(*composee);
  out.insert(out.end(), blocked.begin(), blocked.end());
  return out;
}

std::vector<std::pair<size_t, size_t>> graphemes(std::string_view s) {
  std::vector<std::pair<size_t, size_t>> out;
  utf8proc_int32_t state = 0;
  size_t start = 0;
  char32_t prev = 0;
  for (size_t i = 0; i < s.size();) {
    size_t at = i;
    char32_t c = next_code_point(s, i);
    if (at > 0 && utf8proc_grapheme_break_stateful(static_cast<utf8proc_int32_t>(prev),
                                                   static_cast<utf8proc_int32_t>(c), &state)) {
      out.emplace_back(start, at);
      start = at;
    }
    prev = c;
  }
  if (!s.empty()) out.emplace_back(start, s.size());
  return out;
}

}  // namespace mpool::tokenizer
