// Decoders of tokenizer.json.
#include "mpool/base/error.h"
#include "mpool/tokenizer/components.h"

namespace mpool::tokenizer {
namespace {

class ByteLevelDecoder : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    return {utf8_lossy(bytes_of(tokens))};
  }
  std::vector<std::string> decode_chain_raw(std::vector<std::string> tokens) const override {
    return {bytes_of(tokens)};
  }

 private:
  static std::string bytes_of(const std::vector<std::string>& tokens) {
    std::string bytes;
    for (const auto& t : tokens) {
      size_t mark = bytes.size();
      bool all = true;
      for (size_t i = 0; i < t.size();) {
        int b = char_to_byte(next_code_point(t, i));
        if (b < 0) {
          all = false;
          break;
        }
        bytes.push_back(static_cast<char>(b));
      }
      if (!all) {
        bytes.resize(mark);
        bytes += t;
      }
    }
    return bytes;
  }
};

void replace_all(std::string& s, std::string_view from, std::string_view to) {
  std::string out;
  size_t pos = 0;
  while (true) {
    size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  if (pos == 0) return;
  out.append(s, pos, std::string::npos);
  s = std::move(out);
}

// BPE with an end-of-word suffix ("</w>"): the suffix becomes a space, except
// on the last token, where it goes.
class BpeDecoder : public Decoder {
 public:
  explicit BpeDecoder(std::string suffix) : suffix_(std::move(suffix)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    if (suffix_.empty()) return tokens;
    for (size_t i = 0; i < tokens.size(); ++i) replace_all(tokens[i], suffix_, i + 1 == tokens.size() ? "" : " ");
    return tokens;
  }

 private:
  std::string suffix_;
};

class WordPieceDecoder : public Decoder {
 public:
  WordPieceDecoder(std::string prefix, bool cleanup) : prefix_(std::move(prefix)), cleanup_(cleanup) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      auto& t = tokens[i];
      if (i != 0) {
        if (t.compare(0, prefix_.size(), prefix_) == 0)
          t.erase(0, prefix_.size());
        else
          t.insert(0, " ");
      }
      if (cleanup_) {
        static const std::pair<const char*, const char*> rules[] = {
            {" .", "."},     {" ?", "?"},     {" !", "!"},           {" ,", ","},     {" ' ", "'"},     {" n't", "n't"},
            {" 'm", "'m"},   {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
        for (auto [from, to] : rules) replace_all(t, from, to);
      }
    }
    return tokens;
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

class MetaspaceDecoder : public Decoder {
 public:
  MetaspaceDecoder(char32_t replacement, bool strip_first) : replacement_(replacement), strip_first_(strip_first) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string out;
      const auto& t = tokens[i];
      for (size_t k = 0; k < t.size();) {
        size_t at = k;
        char32_t c = next_code_point(t, k);
        if (c == replacement_) {
          if (!(i == 0 && strip_first_)) out.push_back(' ');
        } else {
          out.append(t, at, k - at);
        }
      }
      tokens[i] = std::move(out);
    }
    return tokens;
  }

 private:
  char32_t replacement_;
  bool strip_first_;
};

class ByteFallbackDecoder : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    return chain(std::move(tokens), false);
  }
  std::vector<std::string> decode_chain_raw(std::vector<std::string> tokens) const override {
    return chain(std::move(tokens), true);
  }

 private:
  static std::vector<std::string> chain(std::vector<std::string> tokens, bool raw) {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (raw || find_invalid_utf8(pending) == std::string::npos) {
        out.push_back(pending);
      } else {
        for (size_t k = 0; k < pending.size(); ++k) out.emplace_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (auto& t : tokens) {
      int byte = -1;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
        auto hex = [](char c) {
          if (c >= '0' && c <= '9') return c - '0';
          if (c >= 'a' && c <= 'f') return c - 'a' + 10;
          if (c >= 'A' && c <= 'F') return c - 'A' + 10;
          return -1;
        };
        int hi = hex(t[3]), lo = hex(t[4]);
        if (hi >= 0 && lo >= 0) byte = hi * 16 + lo;
      }
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    return out;
  }
};

class FuseDecoder : public Decoder {
 public:
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    std::string all;
    for (auto& t : tokens) all += t;
    return {all};
  }
};

class StripDecoder : public Decoder {
 public:
  StripDecoder(char32_t content, size_t start, size_t stop) : content_(content), start_(start), stop_(stop) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (auto& t : tokens) {
      auto chars = to_u32(t);
      size_t begin = 0, end = chars.size();
      for (size_t k = 0; k < start_ && begin < end && chars[begin] == content_; ++k) ++begin;
      for (size_t k = 0; k < stop_ && end > begin && chars[end - 1] == content_; ++k) --end;
      std::string out;
      for (size_t k = begin; k < end; ++k) append_utf8(out, chars[k]);
      t = std::move(out);
    }
    return tokens;
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(std::unique_ptr<Pattern> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (auto& t : tokens) {
      std::string out;
      for (const auto& p : pattern_->find_matches(t)) {
        if (p.is_match)
          out += content_;
        else
          out.append(t, p.start, p.end - p.start);
      }
      t = std::move(out);
    }
    return tokens;
  }

 private:
  std::unique_ptr<Pattern> pattern_;
  std::string content_;
};

class SequenceDecoder : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps) : steps_(std::move(steps)) {}
  std::vector<std::string> decode_chain(std::vector<std::string> tokens) const override {
    for (const auto& d : steps_) tokens = d->decode_chain(std::move(tokens));
    return tokens;
  }
  std::vector<std::string> decode_chain_raw(std::vector<std::string> tokens) const override {
    for (const auto& d : steps_) tokens = d->decode_chain_raw(std::move(tokens));
    return tokens;
  }

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

}  // namespace

std::unique_ptr<Decoder> make_decoder(const JsonNode& node) {
  std::string type = node.type();
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "WordPiece")
    return std::make_unique<WordPieceDecoder>(node.str_or("prefix", "##"), node.bool_or("cleanup", true));
  if (type == "Metaspace") {
    bool strip_first = true;
    if (auto ps = node.opt("prepend_scheme")) {
      std::string v = ps->str();
      if (v != "always" && v != "never" && v != "first") ps->fail("unknown prepend_scheme '" + v + "'");
      strip_first = v != "never";
    } else if (node.has("add_prefix_space")) {
      strip_first = node.at("add_prefix_space").boolean();
    }
    return std::make_unique<MetaspaceDecoder>(node.at("replacement").character(), strip_first);
  }
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "BPEDecoder") return std::make_unique<BpeDecoder>(node.str_or("suffix", "</w>"));
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip")
    return std::make_unique<StripDecoder>(node.at("content").character(), node.uint_or("start", 0),
                                          node.uint_or("stop", 0));
  if (type == "Replace")
    return std::make_unique<ReplaceDecoder>(make_pattern(node.at("pattern")), node.at("content").str());
  if (type == "Sequence") {
    auto list = node.at("decoders");
    std::vector<std::unique_ptr<Decoder>> steps;
    for (size_t i = 0; i < list.size(); ++i) steps.push_back(make_decoder(list.at(i)));
    return std::make_unique<SequenceDecoder>(std::move(steps));
  }
  node.at("type").fail("unsupported decoder type '" + type + "'");
}

}  // namespace mpool::tokenizer
