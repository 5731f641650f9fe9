#include "mpool/tokenizer/normalized.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <mutex>
#include <optional>

#include "mpool/base/error.h"
#include "mpool/tokenizer/unicode.h"

namespace mpool::tokenizer {

// ---------------------------------------------------------------- Regex

namespace {

// The code points PCRE2's class `cls` (UTF, UCP) matches, found by running it
// over every code point (surrogates never); nullopt when it does not compile.
std::optional<std::vector<bool>> pcre_members(const std::string& cls) {
  static const std::string every = [] {
    std::string t;
    for (char32_t c = 0; c < 0x110000; ++c)
      if (c < 0xD800 || c > 0xDFFF) append_utf8(t, c);
    return t;
  }();
  std::vector<bool> in(0x110000, false);
  const std::string run = cls + "+";
  int err = 0;
  PCRE2_SIZE err_off = 0;
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(run.data()), run.size(), PCRE2_UTF | PCRE2_UCP, &err,
                             &err_off, nullptr);
  if (code == nullptr) return std::nullopt;
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  size_t pos = 0;
  while (pos < every.size() &&
         pcre2_match(code, reinterpret_cast<PCRE2_SPTR>(every.data()), every.size(), pos, PCRE2_NO_UTF_CHECK, md,
                     nullptr) > 0) {
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    for (size_t i = ov[0]; i < ov[1];) in[next_code_point(every, i)] = true;
    pos = ov[1] > ov[0] ? ov[1] : ov[1] + 1;
  }
  pcre2_match_data_free(md);
  pcre2_code_free(code);
  return in;
}

// Oniguruma's class `name` as a PCRE2 class body that is quick to match: PCRE2
// checks a long explicit range list one range after another, but its own
// property lookup in one step. So where Oniguruma's set only adds code points to
// PCRE2's class of the same spelling (newer characters), the body is PCRE2's
// class plus the added ranges; otherwise the full explicit set. Computed once per
// name by running PCRE2's class over every code point.
std::string quick_class_body(const std::string& name) {
  static std::mutex mu;
  static std::map<std::string, std::string> cache;
  std::lock_guard<std::mutex> lock(mu);
  if (auto it = cache.find(name); it != cache.end()) return it->second;
  std::string full = oniguruma_class(name, false);
  if (full.empty()) return cache[name] = full;
  std::string own = name[0] == '\\' ? name : "\\p{" + name + "}";
  const std::optional<std::vector<bool>> probed = pcre_members("[" + own + "]");
  if (!probed) return cache[name] = full;
  const std::vector<bool>& pcre = *probed;
  std::vector<bool> onig(0x110000, false);
  for (auto [lo, hi] : class_body_ranges(full))
    for (char32_t c = lo; c <= hi; ++c) onig[c] = true;
  std::string body = own;
  for (char32_t c = 0; c < 0x110000; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    if (pcre[c] && !onig[c]) return cache[name] = full;
    if (!onig[c] || pcre[c]) continue;
    char32_t hi = c;
    while (hi + 1 < 0x110000 && onig[hi + 1] && !pcre[hi + 1] && !(hi + 1 >= 0xD800 && hi + 1 <= 0xDFFF)) ++hi;
    char buf[48];
    std::snprintf(buf, sizeof(buf), hi == c ? "\\x{%X}" : "\\x{%X}-\\x{%X}", static_cast<unsigned>(c),
                  static_cast<unsigned>(hi));
    body += buf;
    c = hi;
  }
  return cache[name] = body;
}

std::string translate_oniguruma(const std::string& p);

// Oniguruma's bracket class opening at p[open]: the index of its closing ']', or
// npos. Nested classes and POSIX brackets ([:alpha:]) are skipped whole.
constexpr int kMaxClassNesting = 16;

size_t onig_class_end(const std::string& p, size_t open, int depth = 0) {
  if (depth > kMaxClassNesting)
    throw Error(ErrorCode::kInvalidInput, "regex classes nested deeper than " + std::to_string(kMaxClassNesting) +
                                              " at offset " + std::to_string(open));
  size_t j = open + 1;
  if (j < p.size() && p[j] == '^') ++j;
  if (j < p.size() && p[j] == ']') ++j;  // a literal ']' first
  while (j < p.size()) {
    if (p[j] == '\\') {
      j += 2;
      continue;
    }
    if (p[j] == '[') {
      if (p.compare(j, 2, "[:") == 0) {
        size_t e = p.find(":]", j + 2);
        if (e != std::string::npos) {
          j = e + 2;
          continue;
        }
      }
      size_t e = onig_class_end(p, j, depth + 1);
      if (e == std::string::npos) return e;
      j = e + 1;
      continue;
    }
    if (p[j] == ']') return j;
    ++j;
  }
  return std::string::npos;
}

// Whether the class p[open..close] uses what PCRE2 10.42 reads otherwise: an
// intersection (&&) or a nested class.
bool onig_class_needs_sets(const std::string& p, size_t open, size_t close) {
  for (size_t j = open + 1; j < close; ++j) {
    if (p[j] == '\\') {
      ++j;
    } else if (p.compare(j, 2, "&&") == 0) {
      return true;
    } else if (p[j] == '[') {
      if (p.compare(j, 2, "[:") != 0 || p.find(":]", j + 2) == std::string::npos) return true;
      j = p.find(":]", j + 2) + 1;
    }
  }
  return false;
}

// The code points of Oniguruma's class p[open..close]: each &&-separated part is
// the union of its plain items (one PCRE2 class, after translation) and its
// nested classes; the class is the intersection of its parts, complemented by a
// leading '^'.
std::vector<bool> onig_class_set(const std::string& p, size_t open, size_t close) {
  std::vector<bool> result, part(0x110000, false);
  bool have_result = false, part_used = false;
  std::string plain;
  auto add_plain = [&] {
    if (plain.empty()) return;
    std::string cls = translate_oniguruma("[" + std::string(plain[0] == '^' ? "\\" : "") + plain + "]");
    auto in = pcre_members(cls);
    if (!in) throw Error(ErrorCode::kInvalidInput, "invalid regex class [" + plain + "]");
    for (size_t c = 0; c < part.size(); ++c)
      if ((*in)[c]) part[c] = true;
    plain.clear();
    part_used = true;
  };
  auto end_part = [&] {
    add_plain();
    if (!part_used) return;  // an empty side of && constrains nothing
    if (!have_result) {
      result = part;
      have_result = true;
    } else {
      for (size_t c = 0; c < result.size(); ++c) result[c] = result[c] && part[c];
    }
    part.assign(0x110000, false);
    part_used = false;
  };
  size_t j = open + 1;
  const bool negate = j < close && p[j] == '^';
  if (negate) ++j;
  if (j < close && p[j] == ']') {
    plain += "\\]";
    ++j;
  }
  while (j < close) {
    if (p[j] == '\\' && j + 1 < close) {
      plain += p.substr(j, 2);
      j += 2;
    } else if (p.compare(j, 2, "&&") == 0) {
      end_part();
      j += 2;
    } else if (p[j] == '[' && p.compare(j, 2, "[:") == 0 && p.find(":]", j + 2) < close) {
      size_t e = p.find(":]", j + 2) + 2;
      plain += p.substr(j, e - j);
      j = e;
    } else if (p[j] == '[') {
      size_t e = onig_class_end(p, j);
      std::vector<bool> nested = onig_class_set(p, j, e);
      for (size_t c = 0; c < part.size(); ++c)
        if (nested[c]) part[c] = true;
      part_used = true;
      j = e + 1;
    } else {
      plain += p[j++];
    }
  }
  end_part();
  if (!have_result) result.assign(0x110000, false);
  if (negate)
    for (size_t c = 0; c < result.size(); ++c) result[c] = !result[c] && !(c >= 0xD800 && c <= 0xDFFF);
  return result;
}

// A set of code points as an explicit PCRE2 class (one that matches nothing when empty).
std::string explicit_class(const std::vector<bool>& in) {
  std::string body;
  for (char32_t c = 0; c < 0x110000; ++c) {
    if (!in[c]) continue;
    char32_t hi = c;
    while (hi + 1 < 0x110000 && in[hi + 1]) ++hi;
    char buf[48];
    std::snprintf(buf, sizeof(buf), hi == c ? "\\x{%X}" : "\\x{%X}-\\x{%X}", static_cast<unsigned>(c),
                  static_cast<unsigned>(hi));
    body += buf;
    c = hi;
  }
  return body.empty() ? "(?!)" : "[" + body + "]";
}

// Oniguruma's class p[open..close] with && or nesting, as PCRE2 reads it: an
// explicit set, computed once per class.
std::string onig_class_as_set(const std::string& p, size_t open, size_t close) {
  static std::mutex mu;
  static std::map<std::string, std::string> cache;
  const std::string key = p.substr(open, close + 1 - open);
  {
    std::lock_guard<std::mutex> lock(mu);
    if (auto it = cache.find(key); it != cache.end()) return it->second;
  }
  std::string out = explicit_class(onig_class_set(p, open, close));
  std::lock_guard<std::mutex> lock(mu);
  return cache[key] = out;
}

// The reference matches with Oniguruma, whose property tables are of another
// Unicode version and whose \w and \s differ from PCRE2's. So every \p{..},
// \P{..}, \w, \s, \d (and negations) with an Oniguruma table probed from the
// reference (see oniguruma_class) is rewritten into an explicit code point set;
// other property names are left to PCRE2.
std::string translate_oniguruma(const std::string& p) {
  std::string out;
  bool in_class = false;
  auto emit = [&](std::string_view name, bool negated, const std::string& original) {
    std::string body;
    if (in_class && (name == "\\w")) {
      body = oniguruma_class(negated ? "[\\W]" : "[\\w]", false);  // Oniguruma's in-class \w is its own set
    } else {
      body = in_class && negated ? oniguruma_class(name, true) : quick_class_body(std::string(name));
    }
    if (body.empty()) {
      out += original;
    } else if (in_class) {
      out += body;
    } else {
      out += (negated ? "[^" : "[") + body + "]";
    }
  };
  for (size_t i = 0; i < p.size(); ++i) {
    char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      char n = p[i + 1];
      if (n == 'w' || n == 's' || n == 'd' || n == 'W' || n == 'S' || n == 'D') {
        char lower = static_cast<char>(n | 0x20);
        emit(std::string("\\") + lower, n != lower, p.substr(i, 2));
        ++i;
        continue;
      }
      // Ruby syntax: \h is a hex digit (PCRE2: horizontal space), \v only U+000B.
      if (n == 'h' || n == 'H') {
        out += in_class ? (n == 'h' ? "0-9A-Fa-f" : "\\x{0}-\\x{2F}\\x{3A}-\\x{40}\\x{47}-\\x{60}\\x{67}-\\x{10FFFF}")
                        : (n == 'h' ? "[0-9A-Fa-f]" : "[^0-9A-Fa-f]");
        ++i;
        continue;
      }
      if (n == 'v') {
        out += "\\x{B}";
        ++i;
        continue;
      }
      if ((n == 'p' || n == 'P') && i + 2 < p.size() && p[i + 2] == '{') {
        size_t close = p.find('}', i + 3);
        if (close != std::string::npos) {
          std::string name = p.substr(i + 3, close - i - 3);
          bool negated = n == 'P';
          if (!name.empty() && name[0] == '^') {
            negated = !negated;
            name.erase(0, 1);
          }
          emit(name, negated, p.substr(i, close + 1 - i));
          i = close;
          continue;
        }
      }
      out.push_back('\\');
      out.push_back(n);
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      const size_t close = onig_class_end(p, i);
      if (close != std::string::npos && onig_class_needs_sets(p, i, close)) {
        out += onig_class_as_set(p, i, close);
        i = close;
        continue;
      }
      in_class = true;
      out.push_back(c);
      // A ']' right after '[' or '[^' is a literal member, not the end.
      if (i + 1 < p.size() && p[i + 1] == '^') out.push_back(p[++i]);
      if (i + 1 < p.size() && p[i + 1] == ']') out.push_back(p[++i]);
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out.push_back(c);
  }
  return out;
}

struct MatchDataDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};

}  // namespace

Regex::Regex(const std::string& pattern, bool literal) {
  std::string source = literal ? pattern : translate_oniguruma(pattern);
  int err = 0;
  PCRE2_SIZE err_off = 0;
  // PCRE2_LITERAL admits UTF but not UCP, which a literal does not need anyway.
  // Oniguruma's Ruby syntax makes ^ and $ line anchors.
  uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP | PCRE2_MULTILINE);
  auto* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(source.data()), source.size(), opts, &err, &err_off,
                             nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof(buf));
    throw Error(ErrorCode::kInvalidInput, "invalid regex '" + pattern + "' at offset " + std::to_string(err_off) +
                                              ": " + reinterpret_cast<char*>(buf));
  }
  // JIT is an optimization only; the interpreter is used when it is unavailable.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

std::vector<Offsets> Regex::find_all(std::string_view s) const {
  std::vector<Offsets> out;
  auto* code = static_cast<pcre2_code*>(code_);
  // One match block per thread, reused by every regex: only the whole-match
  // pair is read, so a small ovector suffices whatever the pattern's groups.
  thread_local std::unique_ptr<pcre2_match_data, MatchDataDeleter> tls_md(pcre2_match_data_create(16, nullptr));
  pcre2_match_data* md = tls_md.get();
  if (md == nullptr) throw Error(ErrorCode::kInternal, "pcre2: out of memory");
  auto subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  std::optional<size_t> last_end;
  while (pos <= s.size()) {
    // rc == 0 means the ovector was too small for all groups; the whole match is still set.
    int rc = pcre2_match(code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(rc, buf, sizeof(buf));
      throw Error(ErrorCode::kInvalidInput, std::string("regex match failed: ") + reinterpret_cast<char*>(buf));
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t ms = ov[0], me = ov[1];
    bool empty = ms == me;
    if (empty && last_end && *last_end == me) {
      if (me >= s.size()) break;
      pos = me + utf8_len(static_cast<unsigned char>(s[me]));
      continue;
    }
    out.emplace_back(ms, me);
    last_end = me;
    if (empty) {
      if (me >= s.size()) break;
      pos = me + utf8_len(static_cast<unsigned char>(s[me]));
    } else {
      pos = me;
    }
  }
  return out;
}

std::vector<PatternPiece> Regex::find_matches(std::string_view s) const {
  if (s.empty()) return {{0, 0, false}};
  std::vector<PatternPiece> out;
  size_t prev = 0;
  for (auto [ms, me] : find_all(s)) {
    if (prev != ms) out.push_back({prev, ms, false});
    out.push_back({ms, me, true});
    prev = me;
  }
  if (prev != s.size()) out.push_back({prev, s.size(), false});
  return out;
}

std::vector<PatternPiece> CharPredicatePattern::find_matches(std::string_view s) const {
  if (s.empty()) return {{0, 0, false}};
  std::vector<PatternPiece> out;
  size_t last_offset = 0;
  for (size_t i = 0; i < s.size();) {
    size_t b = i;
    char32_t c = next_code_point(s, i);
    if (pred_(c)) {
      if (last_offset < b) out.push_back({last_offset, b, false});
      out.push_back({b, i, true});
      last_offset = i;
    }
  }
  if (s.size() > last_offset) out.push_back({last_offset, s.size(), false});
  return out;
}

std::vector<PatternPiece> InvertPattern::find_matches(std::string_view s) const {
  auto v = inner_.find_matches(s);
  for (auto& p : v) p.is_match = !p.is_match;
  return v;
}

// ---------------------------------------------------------------- NormalizedString

NormalizedString::NormalizedString(std::string original) : original_(std::move(original)) {
  normalized_ = original_;
  alignments_.reserve(original_.size());
  for (size_t i = 0; i < original_.size();) {
    size_t n = std::min(utf8_len(static_cast<unsigned char>(original_[i])), original_.size() - i);
    for (size_t k = 0; k < n; ++k) alignments_.emplace_back(static_cast<uint32_t>(i), static_cast<uint32_t>(i + n));
    i += n;
  }
}

std::optional<Offsets> NormalizedString::normalized_to_original(size_t start, size_t end) const {
  if (start == end) return Offsets{start, end};
  if (start > end || end > alignments_.size()) return std::nullopt;
  return Offsets{alignments_[start].first, alignments_[end - 1].second};
}

NormalizedString NormalizedString::slice_normalized(size_t start, size_t end) const {
  NormalizedString out;
  auto orig = normalized_to_original(start, end).value_or(Offsets{0, 0});
  orig.first = std::min(orig.first, original_.size());
  orig.second = std::clamp(orig.second, orig.first, original_.size());
  out.original_ = original_.substr(orig.first, orig.second - orig.first);
  out.normalized_ = normalized_.substr(start, end - start);
  out.alignments_.reserve(end - start);
  for (size_t i = start; i < end; ++i)
    out.alignments_.emplace_back(
        static_cast<uint32_t>(alignments_[i].first - std::min<size_t>(alignments_[i].first, orig.first)),
        static_cast<uint32_t>(alignments_[i].second - std::min<size_t>(alignments_[i].second, orig.first)));
  out.shift_ = shift_ + orig.first;
  return out;
}

void NormalizedString::transform_range(size_t start, size_t end, const std::vector<CharChange>& dest,
                                       size_t initial_offset) {
  // Sizes of the characters being replaced, consumed as dest says.
  std::vector<size_t> sizes;
  for (size_t i = start; i < end;) {
    size_t n = utf8_len(static_cast<unsigned char>(normalized_[i]));
    sizes.push_back(n);
    i += n;
  }
  size_t next = 0;
  auto take = [&]() -> size_t { return next < sizes.size() ? sizes[next++] : 0; };
  size_t offset = start;
  for (size_t k = 0; k < initial_offset; ++k) offset += take();

  std::string text;
  std::vector<std::pair<uint32_t, uint32_t>> aligns;
  text.reserve(dest.size());
  aligns.reserve(dest.size());
  for (const auto& [c, change] : dest) {
    std::pair<uint32_t, uint32_t> align{0, 0};
    if (change > 0) {
      if (offset >= 1 && offset - 1 < alignments_.size()) align = alignments_[offset - 1];
    } else if (offset < alignments_.size()) {
      align = alignments_[offset];
    } else if (!alignments_.empty()) {
      // Only reachable with inconsistent change counts; stay in bounds.
      align = alignments_.back();
    }
    if (change <= 0) offset += take();
    if (change < 0)
      for (int r = 0; r < -change; ++r) offset += take();
    size_t before = text.size();
    append_utf8(text, c);
    aligns.insert(aligns.end(), text.size() - before, align);
  }
  normalized_.replace(start, end - start, text);
  alignments_.erase(alignments_.begin() + static_cast<long>(start), alignments_.begin() + static_cast<long>(end));
  alignments_.insert(alignments_.begin() + static_cast<long>(start), aligns.begin(), aligns.end());
}

void NormalizedString::transform(const std::vector<CharChange>& dest, size_t initial_offset) {
  transform_range(0, normalized_.size(), dest, initial_offset);
}

namespace {
bool is_ascii(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}
}  // namespace

void NormalizedString::normalize(NormForm form) {
  // ASCII is invariant under every normalization form.
  if (is_ascii(normalized_)) return;
  transform(normalize_with_changes(to_u32(normalized_), form), 0);
}

void NormalizedString::filter(const std::function<bool(char32_t)>& keep) {
  auto chars = to_u32(normalized_);
  std::vector<CharChange> rev;
  rev.reserve(chars.size());
  int removed = 0;
  for (auto it = chars.rbegin(); it != chars.rend(); ++it) {
    if (keep(*it)) {
      rev.push_back({*it, -removed});
      removed = 0;
    } else {
      ++removed;
    }
  }
  if (rev.size() == chars.size()) return;
  std::vector<CharChange> dest(rev.rbegin(), rev.rend());
  transform(dest, static_cast<size_t>(removed));
}

void NormalizedString::map(const std::function<char32_t(char32_t)>& fn) {
  auto chars = to_u32(normalized_);
  std::vector<CharChange> dest;
  dest.reserve(chars.size());
  bool changed = false;
  for (char32_t c : chars) {
    char32_t m = fn(c);
    changed |= m != c;
    dest.push_back({m, 0});
  }
  if (changed) transform(dest, 0);
}

void NormalizedString::lowercase() {
  auto chars = to_u32(normalized_);
  std::vector<CharChange> dest;
  dest.reserve(chars.size());
  std::u32string buf;
  bool changed = false;
  for (char32_t c : chars) {
    buf.clear();
    append_lowercase(buf, c);
    changed |= buf.size() != 1 || buf[0] != c;
    for (size_t k = 0; k < buf.size(); ++k) dest.push_back({buf[k], k == 0 ? 0 : 1});
  }
  if (changed) transform(dest, 0);
}

void NormalizedString::prepend(std::string_view s) {
  if (normalized_.empty() || s.empty()) return;
  size_t i = 0;
  char32_t first = next_code_point(normalized_, i);
  std::vector<CharChange> dest;
  bool head = true;
  for (char32_t c : to_u32(s)) {
    dest.push_back({c, head ? 0 : 1});
    head = false;
  }
  dest.push_back({first, 1});
  transform_range(0, i, dest, 0);
}

void NormalizedString::replace(const Pattern& pattern, std::string_view content) {
  auto pieces = pattern.find_matches(normalized_);
  auto content_chars = to_u32(content);
  std::vector<CharChange> dest;
  for (char32_t c : content_chars) dest.push_back({c, 1});
  long shift = 0;
  for (const auto& p : pieces) {
    if (!p.is_match) continue;
    size_t s = static_cast<size_t>(static_cast<long>(p.start) + shift);
    size_t e = static_cast<size_t>(static_cast<long>(p.end) + shift);
    size_t removed_chars = 0;
    for (size_t i = s; i < e; i += utf8_len(static_cast<unsigned char>(normalized_[i]))) ++removed_chars;
    transform_range(s, e, dest, removed_chars);
    shift += static_cast<long>(content.size()) - static_cast<long>(p.end - p.start);
  }
}

void NormalizedString::strip(bool left, bool right) {
  auto chars = to_u32(normalized_);
  size_t lead = 0, trail = 0;
  if (left)
    while (lead < chars.size() && is_whitespace(chars[lead])) ++lead;
  if (right)
    while (trail < chars.size() && is_whitespace(chars[chars.size() - 1 - trail])) ++trail;
  if (lead == 0 && trail == 0) return;
  std::vector<CharChange> dest;
  size_t n = chars.size();
  for (size_t i = 0; i < n; ++i) {
    if (i < lead || i + trail >= n) continue;
    dest.push_back({chars[i], i + trail + 1 == n ? -static_cast<int>(trail) : 0});
  }
  transform(dest, lead);
}

std::vector<NormalizedString> NormalizedString::split(const Pattern& pattern, SplitBehavior behavior) const {
  auto matches = pattern.find_matches(normalized_);
  struct Piece {
    size_t start, end;
    bool remove;
  };
  std::vector<Piece> splits;
  splits.reserve(matches.size());
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (auto& m : matches) splits.push_back({m.start, m.end, false});
      break;
    case SplitBehavior::kRemoved:
      for (auto& m : matches) splits.push_back({m.start, m.end, m.is_match});
      break;
    case SplitBehavior::kContiguous: {
      bool prev = false;
      for (auto& m : matches) {
        if (m.is_match == prev && !splits.empty())
          splits.back().end = m.end;
        else
          splits.push_back({m.start, m.end, false});
        prev = m.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool prev = false;
      for (auto& m : matches) {
        if (m.is_match && !prev && !splits.empty())
          splits.back().end = m.end;
        else
          splits.push_back({m.start, m.end, false});
        prev = m.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool prev = false;
      for (auto it = matches.rbegin(); it != matches.rend(); ++it) {
        if (it->is_match && !prev && !splits.empty())
          splits.back().start = it->start;
        else
          splits.push_back({it->start, it->end, false});
        prev = it->is_match;
      }
      std::reverse(splits.begin(), splits.end());
      break;
    }
  }
  std::vector<NormalizedString> out;
  out.reserve(splits.size());
  for (auto& p : splits)
    if (!p.remove) out.push_back(slice_normalized(p.start, p.end));
  return out;
}

// ---------------------------------------------------------------- PreTokenizedString

PreTokenizedString::PreTokenizedString(std::string text) {
  splits_.push_back({NormalizedString(std::move(text)), std::nullopt});
}

void PreTokenizedString::split(const std::function<std::vector<NormalizedString>(size_t, NormalizedString&&)>& fn) {
  std::vector<Split> next;
  next.reserve(splits_.size());
  for (size_t i = 0; i < splits_.size(); ++i) {
    if (splits_[i].tokens) {
      next.push_back(std::move(splits_[i]));
      continue;
    }
    for (auto& n : fn(i, std::move(splits_[i].normalized)))
      if (!n.empty()) next.push_back({std::move(n), std::nullopt});
  }
  splits_ = std::move(next);
}

}  // namespace mpool::tokenizer
