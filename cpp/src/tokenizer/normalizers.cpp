// Normalizers of tokenizer.json.
#include <cstring>

#include "mpool/base/error.h"
#include "mpool/tokenizer/components.h"

namespace mpool::tokenizer {
namespace {

bool is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

class BertNormalizer : public Normalizer {
 public:
  BertNormalizer(bool clean, bool chinese, bool strip_accents, bool lowercase)
      : clean_(clean), chinese_(chinese), strip_accents_(strip_accents), lowercase_(lowercase) {}

  void normalize(NormalizedString& s) const override {
    if (clean_) {
      s.filter([](char32_t c) { return !is_bert_control(c); });
      s.map([](char32_t c) { return (c == '\t' || c == '\n' || c == '\r' || is_whitespace(c)) ? U' ' : c; });
    }
    if (chinese_) {
      auto chars = to_u32(s.get());
      bool any = false;
      std::vector<CharChange> dest;
      dest.reserve(chars.size());
      for (char32_t c : chars) {
        if (is_chinese_char(c)) {
          any = true;
          // As HF: the first space stands for c, and c and the second space are
          // inserted after it, so all three take c's alignment.
          dest.push_back({U' ', 0});
          dest.push_back({c, 1});
          dest.push_back({U' ', 1});
        } else {
          dest.push_back({c, 0});
        }
      }
      if (any) s.transform(dest, 0);
    }
    if (strip_accents_) {
      s.normalize(NormForm::kNfd);
      s.filter([](char32_t c) { return !is_mark_nonspacing(c); });
    }
    if (lowercase_) s.lowercase();
  }

 private:
  bool clean_, chinese_, strip_accents_, lowercase_;
};

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormForm form) : form_(form) {}
  void normalize(NormalizedString& s) const override { s.normalize(form_); }

 private:
  NormForm form_;
};

class LowercaseNormalizer : public Normalizer {
 public:
  void normalize(NormalizedString& s) const override { s.lowercase(); }
};

class StripAccentsNormalizer : public Normalizer {
 public:
  void normalize(NormalizedString& s) const override {
    s.filter([](char32_t c) { return !is_mark(c); });
  }
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void normalize(NormalizedString& s) const override { s.strip(left_, right_); }

 private:
  bool left_, right_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::unique_ptr<Pattern> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  void normalize(NormalizedString& s) const override { s.replace(*pattern_, content_); }

 private:
  std::unique_ptr<Pattern> pattern_;
  std::string content_;
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  void normalize(NormalizedString& s) const override { s.prepend(prefix_); }

 private:
  std::string prefix_;
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps) : steps_(std::move(steps)) {}
  void normalize(NormalizedString& s) const override {
    for (const auto& n : steps_) n->normalize(s);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

std::string base64_decode(const JsonNode& node) {
  std::string in = node.str();
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    if (c == '=') break;
    int v = value(c);
    if (v < 0) node.fail("invalid base64");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

// SentencePiece's precompiled normalization: a darts-clone double array that
// maps byte strings to offsets of NUL-terminated replacements.
class PrecompiledNormalizer : public Normalizer {
 public:
  explicit PrecompiledNormalizer(const JsonNode& node) {
    std::string blob = base64_decode(node);
    if (blob.size() < 4) node.fail("precompiled_charsmap is too short");
    uint32_t trie_size = 0;
    std::memcpy(&trie_size, blob.data(), 4);
    if (trie_size % 4 != 0 || 4 + static_cast<size_t>(trie_size) > blob.size())
      node.fail("precompiled_charsmap has an invalid trie size");
    units_.resize(trie_size / 4);
    std::memcpy(units_.data(), blob.data() + 4, trie_size);
    normalized_ = blob.substr(4 + trie_size);
    if (units_.empty()) node.fail("precompiled_charsmap has an empty trie");
  }

  void normalize(NormalizedString& s) const override {
    const std::string& text = s.get();
    std::vector<CharChange> dest;
    dest.reserve(text.size());
    bool modified = false;
    for (auto [gs, ge] : graphemes(text)) {
      std::string_view g(text.data() + gs, ge - gs);
      if (g.size() < 6) {
        if (auto norm = lookup(g)) {
          modified = true;
          replace(dest, g, *norm);
          continue;
        }
      }
      for (size_t i = 0; i < g.size();) {
        size_t at = i;
        char32_t c = next_code_point(g, i);
        std::string_view part = g.substr(at, i - at);
        if (auto norm = lookup(part)) {
          modified = true;
          replace(dest, part, *norm);
        } else {
          dest.push_back({c, 0});
        }
      }
    }
    if (modified) s.transform(dest, 0);
  }

 private:
  // The replacement of the shortest key that prefixes chunk, as the reference does.
  std::optional<std::string_view> lookup(std::string_view chunk) const {
    auto offset = [](uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); };
    auto label = [](uint32_t u) { return u & ((1u << 31) | 0xFF); };
    auto has_leaf = [](uint32_t u) { return ((u >> 8) & 1) == 1; };
    auto value = [](uint32_t u) { return u & ((1u << 31) - 1); };
    size_t pos = offset(units_[0]);
    for (unsigned char c : chunk) {
      pos ^= c;
      if (pos >= units_.size()) return std::nullopt;
      uint32_t u = units_[pos];
      if (label(u) != c) return std::nullopt;
      pos ^= offset(u);
      if (pos >= units_.size()) return std::nullopt;
      if (has_leaf(u)) {
        size_t start = value(units_[pos]);
        if (start >= normalized_.size()) return std::nullopt;
        size_t end = normalized_.find('\0', start);
        if (end == std::string::npos) end = normalized_.size();
        std::string_view r(normalized_.data() + start, end - start);
        if (find_invalid_utf8(r) != std::string_view::npos) return std::nullopt;
        return r;
      }
    }
    return std::nullopt;
  }

  static void replace(std::vector<CharChange>& dest, std::string_view old_part, std::string_view new_part) {
    long old_count = static_cast<long>(to_u32(old_part).size());
    auto chars = to_u32(new_part);
    long diff = static_cast<long>(chars.size()) - old_count;
    for (char32_t c : chars) dest.push_back({c, 0});
    if (diff > 0) {
      for (long k = 0; k < diff && k < static_cast<long>(dest.size()); ++k) dest[dest.size() - 1 - k].change = 1;
    } else if (diff < 0 && !dest.empty()) {
      dest.back().change += static_cast<int>(diff);
    }
  }

  std::vector<uint32_t> units_;
  std::string normalized_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const JsonNode& node) {
  std::string type = node.type();
  if (type == "BertNormalizer") {
    bool lowercase = node.bool_or("lowercase", true);
    bool strip = node.has("strip_accents") ? node.at("strip_accents").boolean() : lowercase;
    return std::make_unique<BertNormalizer>(node.bool_or("clean_text", true), node.bool_or("handle_chinese_chars", true),
                                            strip, lowercase);
  }
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(NormForm::kNfc);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(NormForm::kNfd);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(NormForm::kNfkc);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(NormForm::kNfkd);
  if (type == "Lowercase") return std::make_unique<LowercaseNormalizer>();
  if (type == "StripAccents") return std::make_unique<StripAccentsNormalizer>();
  if (type == "Strip")
    return std::make_unique<StripNormalizer>(node.bool_or("strip_left", true), node.bool_or("strip_right", true));
  if (type == "Replace")
    return std::make_unique<ReplaceNormalizer>(make_pattern(node.at("pattern")), node.at("content").str());
  if (type == "Prepend") return std::make_unique<PrependNormalizer>(node.at("prepend").str());
  if (type == "Precompiled") return std::make_unique<PrecompiledNormalizer>(node.at("precompiled_charsmap"));
  if (type == "Sequence") {
    auto list = node.at("normalizers");
    std::vector<std::unique_ptr<Normalizer>> steps;
    for (size_t i = 0; i < list.size(); ++i) steps.push_back(make_normalizer(list.at(i)));
    return std::make_unique<SequenceNormalizer>(std::move(steps));
  }
  node.at("type").fail("unsupported normalizer type '" + type + "'");
}

}  // namespace mpool::tokenizer
