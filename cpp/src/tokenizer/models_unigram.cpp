// Unigram language model (SentencePiece) with Viterbi decoding.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

#include "mpool/base/error.h"
#include "vocab.h"

namespace mpool::tokenizer {
namespace {

// A byte trie over the pieces, for enumerating the pieces that start at a position.
class PieceTrie {
 public:
  PieceTrie() { nodes_.emplace_back(); }
  void insert(std::string_view piece, uint32_t id) {
    uint32_t n = 0;
    for (unsigned char c : piece) {
      auto& kids = nodes_[n].children;
      auto it = std::lower_bound(kids.begin(), kids.end(), c, [](const auto& p, unsigned char v) { return p.first < v; });
      if (it != kids.end() && it->first == c) {
        n = it->second;
      } else {
        uint32_t fresh = static_cast<uint32_t>(nodes_.size());
        kids.insert(it, {c, fresh});
        nodes_.emplace_back();
        n = fresh;
      }
    }
    nodes_[n].id = static_cast<int64_t>(id);
  }
  // Calls fn(length, id) for each piece that prefixes s, shortest first.
  template <typename Fn>
  void prefixes(std::string_view s, Fn&& fn) const {
    uint32_t n = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      auto c = static_cast<unsigned char>(s[i]);
      const auto& kids = nodes_[n].children;
      auto it = std::lower_bound(kids.begin(), kids.end(), c, [](const auto& p, unsigned char v) { return p.first < v; });
      if (it == kids.end() || it->first != c) return;
      n = it->second;
      if (nodes_[n].id >= 0) fn(i + 1, static_cast<uint32_t>(nodes_[n].id));
    }
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, uint32_t>> children;
    int64_t id = -1;
  };
  std::vector<Node> nodes_;
};

// The reference reads scores with serde_json's default float parser, which is
// not correctly rounded: it builds a u64 significand, converts it to f64 and
// scales by one power of ten, so a score can land one ulp away from the exact
// value. Viterbi near-ties then break differently, so the same arithmetic is
// replayed here on the shortest decimal form of the (exactly parsed) value,
// which is the text a serializer of these files writes.
double reference_score(double exact) {
  if (!std::isfinite(exact)) return exact;
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), exact);
  std::string_view text(buf, static_cast<size_t>(res.ptr - buf));
  bool negative = !text.empty() && text[0] == '-';
  if (negative) text.remove_prefix(1);
  uint64_t significand = 0;
  int exponent = 0;
  bool overflowed = false, in_fraction = false;
  size_t i = 0;
  for (; i < text.size(); ++i) {
    char c = text[i];
    if (c == '.') {
      in_fraction = true;
      continue;
    }
    if (c < '0' || c > '9') break;
    auto digit = static_cast<uint64_t>(c - '0');
    if (!overflowed && significand > (std::numeric_limits<uint64_t>::max() - digit) / 10) overflowed = true;
    if (overflowed) {
      if (!in_fraction) ++exponent;
      continue;
    }
    significand = significand * 10 + digit;
    if (in_fraction) --exponent;
  }
  if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
    int e = 0;
    std::from_chars(text.data() + i + 1 + (text[i + 1] == '+' ? 1 : 0), text.data() + text.size(), e);
    exponent += e;
  }
  double f = static_cast<double>(significand);
  while (true) {
    int mag = exponent < 0 ? -exponent : exponent;
    if (mag <= 308) {
      static const std::vector<double> kPow10 = [] {
        // Correctly rounded 10^k, as the reference's literal table holds them.
        std::vector<double> t(309);
        for (int k = 0; k <= 308; ++k) {
          std::string lit = "1e" + std::to_string(k);
          std::from_chars(lit.data(), lit.data() + lit.size(), t[static_cast<size_t>(k)]);
        }
        return t;
      }();
      double pow = kPow10[static_cast<size_t>(mag)];
      f = exponent >= 0 ? f * pow : f / pow;
      break;
    }
    if (f == 0.0) break;
    if (exponent >= 0) return exact;
    f /= 1e308;
    exponent += 308;
  }
  return negative ? -f : f;
}

class UnigramModel : public Model {
 public:
  explicit UnigramModel(const JsonNode& node) {
    auto vocab = node.at("vocab");
    double min_score = std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < vocab.size(); ++i) {
      auto entry = vocab.at(i);
      if (entry.size() != 2) entry.fail("expected [piece, score]");
      std::string piece = entry.at(0).str();
      double score = reference_score(entry.at(1).number());
      if (!vocab_.id(piece)) vocab_.add(piece, static_cast<uint32_t>(i));
      scores_.push_back(score);
      trie_.insert(piece, static_cast<uint32_t>(i));
      min_score = std::min(min_score, score);
    }
    if (auto u = node.opt("unk_id")) {
      uint64_t id = u->uint();
      if (id >= scores_.size()) u->fail("unk_id is outside the vocabulary");
      unk_id_ = static_cast<uint32_t>(id);
    }
    byte_fallback_ = node.bool_or("byte_fallback", false);
    unk_score_ = min_score - 10.0;
  }

  std::vector<Token> tokenize(std::string_view s) const override {
    std::vector<Token> out;
    if (s.empty()) return out;
    struct Best {
      double score = 0;
      int64_t start = -1;
      uint32_t id = 0;
    };
    std::vector<Best> best(s.size() + 1);
    best[0].start = 0;
    for (size_t at = 0; at < s.size();) {
      size_t mblen = std::min(utf8_len(static_cast<unsigned char>(s[at])), s.size() - at);
      double here = best[at].score;
      bool single = false;
      trie_.prefixes(s.substr(at), [&](size_t len, uint32_t id) {
        Best& target = best[at + len];
        double cand = scores_[id] + here;
        if (target.start < 0 || cand > target.score) target = {cand, static_cast<int64_t>(at), id};
        if (len == mblen) single = true;
      });
      if (!single) {
        if (!unk_id_) throw Error(ErrorCode::kInvalidInput, "Unigram: text needs the unknown token but the model has no unk_id");
        Best& target = best[at + mblen];
        double cand = unk_score_ + here;
        if (target.start < 0 || cand > target.score) target = {cand, static_cast<int64_t>(at), *unk_id_};
      }
      at += mblen;
    }
    // Walk back the best path, fusing consecutive unknown pieces.
    std::vector<std::pair<size_t, size_t>> pieces;
    size_t end = s.size();
    std::optional<size_t> unk_end;
    while (end > 0) {
      const Best& node = best[end];
      size_t start = static_cast<size_t>(node.start);
      if (unk_id_ && node.id == *unk_id_) {
        if (!unk_end) unk_end = end;
      } else {
        if (unk_end) {
          pieces.emplace_back(end, *unk_end);
          unk_end.reset();
        }
        pieces.emplace_back(start, end);
      }
      end = start;
    }
    if (unk_end) pieces.emplace_back(0, *unk_end);
    std::reverse(pieces.begin(), pieces.end());
    for (auto [ps, pe] : pieces) {
      std::string_view piece = s.substr(ps, pe - ps);
      if (auto id = vocab_.id(piece)) {
        out.push_back({*id, std::string(piece), {ps, pe}});
        continue;
      }
      if (byte_fallback_) {
        std::vector<Token> bytes;
        static const char* hex = "0123456789ABCDEF";
        for (unsigned char b : piece) {
          std::string name{'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
          auto id = vocab_.id(name);
          if (!id) break;
          bytes.push_back({*id, name, {ps, pe}});
        }
        if (bytes.size() == piece.size()) {
          out.insert(out.end(), bytes.begin(), bytes.end());
          continue;
        }
      }
      if (!unk_id_) throw Error(ErrorCode::kInvalidInput, "Unigram: text needs the unknown token but the model has no unk_id");
      out.push_back({*unk_id_, std::string(piece), {ps, pe}});
    }
    return out;
  }

  std::optional<uint32_t> token_to_id(std::string_view token) const override { return vocab_.id(token); }
  std::optional<std::string> id_to_token(uint32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return scores_.size(); }

 private:
  Vocab vocab_;
  std::vector<double> scores_;
  PieceTrie trie_;
  std::optional<uint32_t> unk_id_;
  bool byte_fallback_ = false;
  double unk_score_ = 0;
};

}  // namespace

std::unique_ptr<Model> make_unigram_model(const JsonNode& node) { return std::make_unique<UnigramModel>(node); }

}  // namespace mpool::tokenizer
