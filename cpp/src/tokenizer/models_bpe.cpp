// Byte-pair encoding model.
#include <array>
#include <mutex>
#include <queue>

#include "mpool/base/error.h"
#include "vocab.h"

namespace mpool::tokenizer {
namespace {

struct PairHash {
  size_t operator()(uint64_t k) const noexcept { return std::hash<uint64_t>{}(k * 0x9E3779B97F4A7C15ull); }
};

class BpeModel : public Model {
 public:
  explicit BpeModel(const JsonNode& node) {
    if (auto d = node.opt("dropout")) {
      double p = d->number();
      if (p != 0.0) d->fail("BPE dropout is not supported (must be null or 0), got " + std::to_string(p));
    }
    vocab_ = Vocab::from_object(node.at("vocab"));
    if (auto u = node.opt("unk_token")) unk_token_ = u->str();
    if (auto p = node.opt("continuing_subword_prefix")) prefix_ = p->str();
    if (auto s = node.opt("end_of_word_suffix")) suffix_ = s->str();
    fuse_unk_ = node.bool_or("fuse_unk", false);
    byte_fallback_ = node.bool_or("byte_fallback", false);
    ignore_merges_ = node.bool_or("ignore_merges", false);
    // mpool's own key, for rank files (tiktoken): every pair of tokens whose
    // concatenation is a token merges, its priority that token's id (its rank).
    if (node.bool_or("merges_by_rank", false)) {
      if (prefix_ || (suffix_ && !suffix_->empty()) || node.at("merges").size() != 0)
        node.fail("merges_by_rank takes no merges, continuing_subword_prefix or end_of_word_suffix");
      merges_by_rank();
      return;
    }
    auto merges = node.at("merges");
    size_t prefix_len = prefix_ ? prefix_->size() : 0;
    for (size_t i = 0; i < merges.size(); ++i) {
      auto m = merges.at(i);
      std::string a, b;
      if (m.is_string()) {
        std::string s = m.str();
        size_t sp = s.find(' ');
        if (sp == std::string::npos) m.fail("merge must be two tokens separated by a space");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else {
        if (m.size() != 2) m.fail("merge must be a pair of tokens");
        a = m.at(0).str();
        b = m.at(1).str();
      }
      auto ida = vocab_.id(a), idb = vocab_.id(b);
      if (!ida) m.fail("merge token '" + a + "' is not in the vocabulary");
      if (!idb) m.fail("merge token '" + b + "' is not in the vocabulary");
      std::string joined = a + (b.size() >= prefix_len ? b.substr(prefix_len) : std::string());
      auto idn = vocab_.id(joined);
      if (!idn) m.fail("merged token '" + joined + "' is not in the vocabulary");
      merges_[key(*ida, *idb)] = {static_cast<uint32_t>(i), *idn};
    }
    if (unk_token_ && !vocab_.id(*unk_token_))
      node.at("unk_token").fail("unk_token '" + *unk_token_ + "' is not in the vocabulary");
  }

  std::vector<Token> tokenize(std::string_view word) const override {
    std::vector<Token> out;
    if (word.empty()) return out;
    if (ignore_merges_) {
      if (auto id = vocab_.id(word)) {
        out.push_back({*id, std::string(word), {0, word.size()}});
        return out;
      }
    }
    // Words repeat heavily in real text; the merge result of a word is cached.
    if (word.size() <= kMaxCachedWordBytes) {
      auto& shard = cache_[std::hash<std::string_view>{}(word) % cache_.size()];
      std::lock_guard<std::mutex> lock(shard.mutex);
      auto it = shard.words.find(word);
      if (it != shard.words.end()) {
        size_t offset = 0;
        for (auto [id, len] : it->second) {
          out.push_back({id, vocab_.known(id), {offset, offset + len}});
          offset += len;
        }
        return out;
      }
    }
    std::vector<Symbol> syms;
    syms.reserve(word.size());
    auto add = [&](uint32_t id, size_t len) {
      int idx = static_cast<int>(syms.size());
      syms.push_back({id, idx - 1, -1, len});
      if (idx > 0) syms[idx - 1].next = idx;
    };
    std::optional<std::pair<uint32_t, size_t>> unk;
    std::string s;
    for (size_t i = 0; i < word.size();) {
      size_t start = i;
      next_code_point(word, i);
      bool first = start == 0, last = i >= word.size();
      size_t byte_len = i - start;
      s.assign(word.substr(start, byte_len));
      if (!first && prefix_) s.insert(0, *prefix_);
      if (last && suffix_) s += *suffix_;
      if (auto id = vocab_.id(s)) {
        if (unk) {
          add(unk->first, unk->second);
          unk.reset();
        }
        add(*id, byte_len);
        continue;
      }
      if (byte_fallback_) {
        std::vector<uint32_t> ids;
        static const char* hex = "0123456789ABCDEF";
        for (unsigned char b : s) {
          char name[7] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>', 0};
          auto id = vocab_.id(std::string_view(name, 6));
          if (!id) break;
          ids.push_back(*id);
        }
        if (ids.size() == s.size()) {
          for (uint32_t id : ids) add(id, 1);
          continue;
        }
      }
      if (unk_token_) {
        uint32_t unk_id = *vocab_.id(*unk_token_);
        if (unk && fuse_unk_) {
          unk->second += byte_len;
        } else {
          if (unk) add(unk->first, unk->second);
          unk = std::pair<uint32_t, size_t>{unk_id, byte_len};
        }
      }
    }
    if (unk) add(unk->first, unk->second);
    merge_all(syms);
    std::vector<std::pair<uint32_t, size_t>> pieces;
    size_t offset = 0;
    for (const auto& sym : syms) {
      if (sym.len == 0) continue;
      out.push_back({sym.id, vocab_.known(sym.id), {offset, offset + sym.len}});
      pieces.emplace_back(sym.id, sym.len);
      offset += sym.len;
    }
    if (word.size() <= kMaxCachedWordBytes) {
      auto& shard = cache_[std::hash<std::string_view>{}(word) % cache_.size()];
      std::lock_guard<std::mutex> lock(shard.mutex);
      if (shard.words.size() < kCacheEntriesPerShard) shard.words.emplace(std::string(word), std::move(pieces));
    }
    return out;
  }

  std::optional<uint32_t> token_to_id(std::string_view token) const override { return vocab_.id(token); }
  std::optional<std::string> id_to_token(uint32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.size(); }

 private:
  struct Symbol {
    uint32_t id;
    int prev, next;
    size_t len;
  };
  struct Merge {
    uint32_t rank;
    uint32_t new_id;
  };
  struct Candidate {
    uint32_t rank;
    int pos;
    uint32_t new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };

  // The merges of a rank vocabulary: each token split at every character
  // boundary into two tokens.
  void merges_by_rank() {
    for (const auto& [token, id] : vocab_.entries()) {
      const std::string_view t = token;
      size_t cut = 0;
      next_code_point(t, cut);
      while (cut < t.size()) {
        auto left = vocab_.id(t.substr(0, cut)), right = vocab_.id(t.substr(cut));
        if (left && right) merges_[key(*left, *right)] = {id, id};
        next_code_point(t, cut);
      }
    }
  }

  static uint64_t key(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }

  const Merge* find_merge(uint32_t a, uint32_t b) const {
    auto it = merges_.find(key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }

  // Applies merges lowest rank first, leftmost first among equals.
  void merge_all(std::vector<Symbol>& syms) const {
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
    for (size_t i = 0; i + 1 < syms.size(); ++i)
      if (auto m = find_merge(syms[i].id, syms[i + 1].id)) queue.push({m->rank, static_cast<int>(i), m->new_id});
    while (!queue.empty()) {
      Candidate top = queue.top();
      queue.pop();
      Symbol& cur = syms[static_cast<size_t>(top.pos)];
      if (cur.len == 0 || cur.next < 0) continue;
      Symbol& nxt = syms[static_cast<size_t>(cur.next)];
      auto m = find_merge(cur.id, nxt.id);
      if (m == nullptr || m->new_id != top.new_id) continue;
      cur.id = top.new_id;
      cur.len += nxt.len;
      nxt.len = 0;
      cur.next = nxt.next;
      if (cur.next >= 0) syms[static_cast<size_t>(cur.next)].prev = top.pos;
      if (cur.prev >= 0)
        if (auto pm = find_merge(syms[static_cast<size_t>(cur.prev)].id, cur.id))
          queue.push({pm->rank, cur.prev, pm->new_id});
      if (cur.next >= 0)
        if (auto nm = find_merge(cur.id, syms[static_cast<size_t>(cur.next)].id))
          queue.push({nm->rank, top.pos, nm->new_id});
    }
  }

  static constexpr size_t kMaxCachedWordBytes = 256;
  static constexpr size_t kCacheEntriesPerShard = 4096;
  struct CacheShard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<std::pair<uint32_t, size_t>>, StringHash, std::equal_to<>> words;
  };

  Vocab vocab_;
  mutable std::array<CacheShard, 16> cache_;
  std::unordered_map<uint64_t, Merge, PairHash> merges_;
  std::optional<std::string> unk_token_, prefix_, suffix_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
};

}  // namespace

std::unique_ptr<Model> make_bpe_model(const JsonNode& node) { return std::make_unique<BpeModel>(node); }

}  // namespace mpool::tokenizer
