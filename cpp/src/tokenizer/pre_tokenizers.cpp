// Pre-tokenizers of tokenizer.json.
#include "mpool/base/error.h"
#include "mpool/tokenizer/components.h"

namespace mpool::tokenizer {

const std::vector<char32_t>& bytes_to_chars() {
  static const std::vector<char32_t> table = [] {
    std::vector<char32_t> t(256, 0);
    std::vector<bool> printable(256, false);
    for (int b = '!'; b <= '~'; ++b) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) t[b] = printable[b] ? static_cast<char32_t>(b) : next++;
    return t;
  }();
  return table;
}

int char_to_byte(char32_t c) {
  static const std::vector<int> inverse = [] {
    std::vector<int> inv(512, -1);
    const auto& t = bytes_to_chars();
    for (int b = 0; b < 256; ++b) inv[t[b]] = b;
    return inv;
  }();
  return c < inverse.size() ? inverse[c] : -1;
}

namespace {

bool is_bert_punctuation(char32_t c) { return is_punctuation(c); }

// The Whitespace pre-tokenizer's \w+|[^\w\s]+ (Rust regex semantics): maximal runs
// of word characters, and maximal runs of characters neither word nor space.
class WordRunsPattern : public Pattern {
 public:
  std::vector<PatternPiece> find_matches(std::string_view s) const override {
    if (s.empty()) return {{0, 0, false}};
    std::vector<PatternPiece> out;
    int run = 0;  // 0 none, 1 word run, 2 other run
    size_t last = 0;
    for (size_t i = 0; i < s.size();) {
      size_t b = i;
      char32_t c = next_code_point(s, i);
      int kind = is_regex_word(c) ? 1 : is_regex_space(c) ? 0 : 2;
      if (kind == run) continue;
      if (b > last) out.push_back({last, b, run != 0});
      last = b;
      run = kind;
    }
    out.push_back({last, s.size(), run != 0});
    return out;
  }
};

// A pre-tokenizer that splits every piece with one pattern and behaviour.
class PatternPreTokenizer : public PreTokenizer {
 public:
  PatternPreTokenizer(std::unique_ptr<Pattern> pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void pre_tokenize(PreTokenizedString& s) const override {
    s.split([this](size_t, NormalizedString&& n) {
      if (invert_) return n.split(InvertPattern(*pattern_), behavior_);
      return n.split(*pattern_, behavior_);
    });
  }

 private:
  std::unique_ptr<Pattern> pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class BertPreTokenizer : public PreTokenizer {
 public:
  void pre_tokenize(PreTokenizedString& s) const override {
    static const CharPredicatePattern space(is_whitespace);
    static const CharPredicatePattern punct(is_bert_punctuation);
    s.split([](size_t, NormalizedString&& n) { return n.split(space, SplitBehavior::kRemoved); });
    s.split([](size_t, NormalizedString&& n) { return n.split(punct, SplitBehavior::kIsolated); });
  }
};

constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, bool use_regex)
      : add_prefix_space_(add_prefix_space), use_regex_(use_regex) {}

  void pre_tokenize(PreTokenizedString& s) const override {
    static const Regex gpt2(kGpt2Pattern);
    s.split([this](size_t, NormalizedString&& n) {
      if (add_prefix_space_ && (n.get().empty() || n.get()[0] != ' ')) n.prepend(" ");
      if (use_regex_) return n.split(gpt2, SplitBehavior::kIsolated);
      std::vector<NormalizedString> one;
      one.push_back(std::move(n));
      return one;
    });
    const auto& table = bytes_to_chars();
    for (auto& split : s.splits()) {
      if (split.tokens) continue;
      const std::string& text = split.normalized.get();
      std::vector<CharChange> dest;
      dest.reserve(text.size());
      for (size_t i = 0; i < text.size();) {
        size_t n = utf8_len(static_cast<unsigned char>(text[i]));
        for (size_t k = 0; k < n; ++k) dest.push_back({table[static_cast<unsigned char>(text[i + k])], k > 0 ? 1 : 0});
        i += n;
      }
      split.normalized.transform(dest, 0);
    }
  }

 private:
  bool add_prefix_space_, use_regex_;
};

enum class PrependScheme { kAlways, kNever, kFirst };

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(char32_t replacement, PrependScheme scheme, bool split)
      : replacement_(to_utf8(replacement)),
        scheme_(scheme),
        split_(split),
        space_([](char32_t c) { return c == U' '; }),
        marker_([replacement](char32_t c) { return c == replacement; }) {}

  void pre_tokenize(PreTokenizedString& s) const override {
    s.split([this](size_t, NormalizedString&& n) {
      n.replace(space_, replacement_);
      bool starts = n.get().compare(0, replacement_.size(), replacement_) == 0;
      if (!starts && (scheme_ == PrependScheme::kAlways ||
                      (scheme_ == PrependScheme::kFirst && n.offsets_original().first == 0)))
        n.prepend(replacement_);
      if (split_) return n.split(marker_, SplitBehavior::kMergedWithNext);
      std::vector<NormalizedString> one;
      one.push_back(std::move(n));
      return one;
    });
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
  CharPredicatePattern space_;
  CharPredicatePattern marker_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps) : steps_(std::move(steps)) {}
  void pre_tokenize(PreTokenizedString& s) const override {
    for (const auto& p : steps_) p->pre_tokenize(s);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const JsonNode& node) {
  std::string type = node.type();
  if (type == "BertPreTokenizer") return std::make_unique<BertPreTokenizer>();
  if (type == "ByteLevel")
    return std::make_unique<ByteLevelPreTokenizer>(node.bool_or("add_prefix_space", true),
                                                   node.bool_or("use_regex", true));
  if (type == "Metaspace") {
    PrependScheme scheme = PrependScheme::kAlways;
    if (auto ps = node.opt("prepend_scheme")) {
      std::string v = ps->str();
      if (v == "always")
        scheme = PrependScheme::kAlways;
      else if (v == "never")
        scheme = PrependScheme::kNever;
      else if (v == "first")
        scheme = PrependScheme::kFirst;
      else
        ps->fail("unknown prepend_scheme '" + v + "'");
    } else if (node.has("add_prefix_space")) {
      scheme = node.at("add_prefix_space").boolean() ? PrependScheme::kAlways : PrependScheme::kNever;
    }
    return std::make_unique<MetaspacePreTokenizer>(node.at("replacement").character(), scheme,
                                                   node.bool_or("split", true));
  }
  if (type == "Whitespace")
    // The reference runs `\w+|[^\w\s]+` here with Rust regex semantics, whose \w
    // (UTS #18 Word) differs from Oniguruma's.
    return std::make_unique<PatternPreTokenizer>(std::make_unique<WordRunsPattern>(), SplitBehavior::kRemoved,
                                                 /*invert=*/true);
  if (type == "WhitespaceSplit")
    return std::make_unique<PatternPreTokenizer>(std::make_unique<CharPredicatePattern>(is_whitespace),
                                                 SplitBehavior::kRemoved, false);
  if (type == "Split")
    return std::make_unique<PatternPreTokenizer>(make_pattern(node.at("pattern")),
                                                 parse_split_behavior(node.at("behavior")),
                                                 node.bool_or("invert", false));
  if (type == "Digits") {
    bool individual = node.bool_or("individual_digits", false);
    return std::make_unique<PatternPreTokenizer>(std::make_unique<CharPredicatePattern>(is_numeric),
                                                 individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous,
                                                 false);
  }
  if (type == "Punctuation") {
    SplitBehavior behavior = SplitBehavior::kIsolated;
    if (auto b = node.opt("behavior")) behavior = parse_split_behavior(*b);
    return std::make_unique<PatternPreTokenizer>(std::make_unique<CharPredicatePattern>(is_bert_punctuation),
                                                 behavior, false);
  }
  if (type == "Sequence") {
    auto list = node.at("pretokenizers");
    std::vector<std::unique_ptr<PreTokenizer>> steps;
    for (size_t i = 0; i < list.size(); ++i) steps.push_back(make_pre_tokenizer(list.at(i)));
    return std::make_unique<SequencePreTokenizer>(std::move(steps));
  }
  node.at("type").fail("unsupported pre-tokenizer type '" + type + "'");
}

}  // namespace mpool::tokenizer
