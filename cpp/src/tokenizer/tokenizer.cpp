#include "mpool/tokenizer/tokenizer.h"

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <thread>

#include "mpool/base/error.h"
#include "mpool/tokenizer/components.h"

namespace mpool::tokenizer {

// ---------------------------------------------------------------- added-token matching

// Leftmost-longest, non-overlapping search over a set of literal strings (the
// semantics of the Aho-Corasick matcher of the reference), via a byte trie.
struct Tokenizer::Matcher {
  struct Node {
    std::vector<std::pair<unsigned char, uint32_t>> children;
    int64_t pattern = -1;
  };
  std::vector<Node> nodes{Node{}};
  std::vector<uint32_t> ids;  // token id of each pattern
  bool first_byte[256] = {};

  void add(std::string_view s, uint32_t id) {
    if (s.empty()) return;
    uint32_t n = 0;
    for (unsigned char c : s) {
      auto& kids = nodes[n].children;
      auto it = std::find_if(kids.begin(), kids.end(), [c](const auto& p) { return p.first == c; });
      if (it != kids.end()) {
        n = it->second;
      } else {
        uint32_t fresh = static_cast<uint32_t>(nodes.size());
        kids.emplace_back(c, fresh);
        nodes.emplace_back();
        n = fresh;
      }
    }
    if (nodes[n].pattern < 0) {
      nodes[n].pattern = static_cast<int64_t>(ids.size());
      ids.push_back(id);
    }
    first_byte[static_cast<unsigned char>(s[0])] = true;
  }

  bool empty() const { return ids.empty(); }

  struct Hit {
    uint32_t id;
    size_t start, end;
  };
  std::vector<Hit> find(std::string_view s) const {
    std::vector<Hit> out;
    for (size_t i = 0; i < s.size();) {
      if (!first_byte[static_cast<unsigned char>(s[i])]) {
        ++i;
        continue;
      }
      uint32_t n = 0;
      int64_t best = -1;
      size_t best_end = 0;
      for (size_t k = i; k < s.size(); ++k) {
        auto c = static_cast<unsigned char>(s[k]);
        const auto& kids = nodes[n].children;
        auto it = std::find_if(kids.begin(), kids.end(), [c](const auto& p) { return p.first == c; });
        if (it == kids.end()) break;
        n = it->second;
        if (nodes[n].pattern >= 0) {
          best = nodes[n].pattern;
          best_end = k + 1;
        }
      }
      if (best >= 0) {
        out.push_back({ids[static_cast<size_t>(best)], i, best_end});
        i = best_end;
      } else {
        ++i;
      }
    }
    return out;
  }
};

namespace {

struct AddedSplit {
  std::optional<uint32_t> id;
  size_t start, end;
};

// Where added tokens cut sentence, honoring single_word, lstrip and rstrip.
std::vector<AddedSplit> find_added(std::string_view sentence, const std::vector<AddedToken>& added,
                                   const std::unordered_map<uint32_t, size_t>& by_id,
                                   const std::vector<std::pair<uint32_t, std::pair<size_t, size_t>>>& hits) {
  std::vector<AddedSplit> out;
  if (sentence.empty()) return {{std::nullopt, 0, 0}};
  size_t start_offset = 0;
  for (const auto& [id, range] : hits) {
    auto [start, stop] = range;
    const AddedToken& tok = added[by_id.at(id)];
    if (tok.single_word) {
      bool start_space = true, stop_space = true;
      if (start > 0) {
        size_t k = start - 1;
        while (k > 0 && (static_cast<unsigned char>(sentence[k]) & 0xC0) == 0x80) --k;
        size_t j = k;
        start_space = !is_added_word_char(next_code_point(sentence, j));
      }
      if (stop < sentence.size()) {
        size_t j = stop;
        stop_space = !is_added_word_char(next_code_point(sentence, j));
      }
      if (!start_space || !stop_space) continue;
    }
    if (tok.lstrip) {
      size_t k = start;
      while (k > 0) {
        size_t p = k - 1;
        while (p > 0 && (static_cast<unsigned char>(sentence[p]) & 0xC0) == 0x80) --p;
        size_t j = p;
        if (!is_whitespace(next_code_point(sentence, j))) break;
        k = p;
      }
      start = std::max(k, start_offset);
    }
    if (tok.rstrip) {
      size_t k = stop;
      while (k < sentence.size()) {
        size_t j = k;
        if (!is_whitespace(next_code_point(sentence, j))) break;
        k = j;
      }
      stop = k;
    }
    if (start_offset < start) out.push_back({std::nullopt, start_offset, start});
    out.push_back({id, start, stop});
    start_offset = stop;
  }
  if (start_offset != sentence.size()) out.push_back({std::nullopt, start_offset, sentence.size()});
  return out;
}

TruncationParams parse_truncation(const JsonNode& n) {
  TruncationParams p;
  p.max_length = n.uint_or("max_length", 512);
  p.stride = n.uint_or("stride", 0);
  std::string s = n.str_or("strategy", "LongestFirst");
  if (s == "LongestFirst")
    p.strategy = TruncationStrategy::kLongestFirst;
  else if (s == "OnlyFirst")
    p.strategy = TruncationStrategy::kOnlyFirst;
  else if (s == "OnlySecond")
    p.strategy = TruncationStrategy::kOnlySecond;
  else
    n.at("strategy").fail("unknown truncation strategy '" + s + "'");
  std::string d = n.str_or("direction", "Right");
  if (d != "Left" && d != "Right") n.at("direction").fail("unknown direction '" + d + "'");
  p.direction = d == "Left" ? Direction::kLeft : Direction::kRight;
  return p;
}

// Padding allocates the target length per encoding; a bound turns a corrupt
// file into an error instead of an out-of-memory abort.
constexpr size_t kMaxPadLength = size_t{1} << 24;

PaddingParams parse_padding(const JsonNode& n) {
  PaddingParams p;
  if (auto s = n.opt("strategy")) {
    if (s->is_string()) {
      if (s->str() != "BatchLongest") s->fail("unknown padding strategy '" + s->str() + "'");
    } else {
      p.fixed_length = s->at("Fixed").uint();
      if (*p.fixed_length > kMaxPadLength) s->at("Fixed").fail("padding length is unreasonably large");
    }
  }
  if (auto m = n.opt("pad_to_multiple_of")) {
    p.pad_to_multiple_of = m->uint();
    if (*p.pad_to_multiple_of > kMaxPadLength) m->fail("pad_to_multiple_of is unreasonably large");
  }
  std::string d = n.str_or("direction", "Right");
  if (d != "Left" && d != "Right") n.at("direction").fail("unknown direction '" + d + "'");
  p.direction = d == "Left" ? Direction::kLeft : Direction::kRight;
  p.pad_id = static_cast<uint32_t>(n.uint_or("pad_id", 0));
  p.pad_type_id = static_cast<uint32_t>(n.uint_or("pad_type_id", 0));
  p.pad_token = n.str_or("pad_token", "[PAD]");
  return p;
}

}  // namespace

// ---------------------------------------------------------------- parallelism

namespace {

// Runs fn(i) for i in [0, n) on up to num_threads threads (0: all cores).
// Under ThreadSanitizer, plain std::threads replace TBB: libtbb.so is not
// instrumented, so its task-pool hand-offs are invisible to the sanitizer and
// every parallel_for reports false races inside TBB. The std::thread path keeps
// the sanitizer's verdict on our own code meaningful.
template <typename Fn>
void parallel_index(size_t n, int num_threads, const Fn& fn) {
#if defined(__SANITIZE_THREAD__)
  size_t workers = num_threads > 0 ? static_cast<size_t>(num_threads) : std::max(1u, std::thread::hardware_concurrency());
  workers = std::max<size_t>(1, std::min(workers, n));
  std::vector<std::exception_ptr> errors(workers);
  std::vector<std::thread> threads;
  for (size_t w = 0; w < workers; ++w) {
    threads.emplace_back([&, w] {
      try {
        for (size_t i = w; i < n; i += workers) fn(i);
      } catch (...) {
        errors[w] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
#else
  auto body = [&] {
    tbb::parallel_for(tbb::blocked_range<size_t>(0, n, 16), [&](const tbb::blocked_range<size_t>& r) {
      for (size_t i = r.begin(); i != r.end(); ++i) fn(i);
    });
  };
  if (num_threads > 0) {
    tbb::task_arena arena(num_threads);
    arena.execute(body);
  } else {
    body();
  }
#endif
}

}  // namespace

// ---------------------------------------------------------------- loading

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

std::unique_ptr<Tokenizer> Tokenizer::from_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorCode::kInvalidInput, path + ": cannot open tokenizer file");
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json(ss.str(), path);
}

std::unique_ptr<Tokenizer> Tokenizer::from_json(std::string_view json, const std::string& source) {
  nlohmann::json doc = nlohmann::json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    // Re-parse with exceptions only to get the parser's position message.
    try {
      const nlohmann::json reparsed = nlohmann::json::parse(json.begin(), json.end());  // throws here
      static_cast<void>(reparsed);
    } catch (const std::exception& e) {
      throw Error(ErrorCode::kInvalidInput, source + ": $: not valid JSON: " + e.what());
    }
    throw Error(ErrorCode::kInvalidInput, source + ": $: not valid JSON");
  }
  auto file = std::make_shared<const std::string>(source);
  JsonNode root(doc, "$", file);
  std::unique_ptr<Tokenizer> tok(new Tokenizer());
  try {
    tok->load(root);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorCode::kInvalidInput, source + ": malformed field: " + e.what());
  }
  return tok;
}

void Tokenizer::load(const JsonNode& root) {
  if (!root.is_object()) root.fail("expected an object");
  model_ = make_model(root.at("model"));
  if (auto n = root.opt("normalizer")) normalizer_ = make_normalizer(*n);
  if (auto n = root.opt("pre_tokenizer")) pre_tokenizer_ = make_pre_tokenizer(*n);
  if (auto n = root.opt("post_processor")) post_processor_ = make_post_processor(*n);
  if (auto n = root.opt("decoder")) decoder_ = make_decoder(*n);
  if (auto n = root.opt("truncation")) truncation_ = parse_truncation(*n);
  if (auto n = root.opt("padding")) padding_ = parse_padding(*n);
  if (auto list = root.opt("added_tokens")) {
    for (size_t i = 0; i < list->size(); ++i) {
      auto t = list->at(i);
      AddedToken a;
      uint64_t id = t.at("id").uint();
      if (id > 0x7FFFFFFF) t.at("id").fail("token id out of range");
      a.id = static_cast<uint32_t>(id);
      a.content = t.at("content").str();
      if (find_invalid_utf8(a.content) != std::string::npos) t.at("content").fail("invalid UTF-8");
      a.single_word = t.bool_or("single_word", false);
      a.lstrip = t.bool_or("lstrip", false);
      a.rstrip = t.bool_or("rstrip", false);
      a.special = t.bool_or("special", false);
      a.normalized = t.bool_or("normalized", !a.special);
      added_by_id_[a.id] = added_.size();
      added_by_content_[a.content] = a.id;
      if (a.special) special_contents_.insert(a.content);
      added_.push_back(std::move(a));
    }
  }
  build_added_matchers();
}

void Tokenizer::build_added_matchers() {
  // A normalized added token reads back (id_to_token, decode) in its normalized form.
  added_text_.clear();
  for (const auto& a : added_) added_text_.push_back(a.content);
  raw_matcher_ = std::make_unique<Matcher>();
  normalized_matcher_ = std::make_unique<Matcher>();
  // Special tokens first, then the others, as the reference orders its patterns.
  for (int pass = 0; pass < 2; ++pass) {
    for (const auto& a : added_) {
      if (a.special != (pass == 0)) continue;
      if (a.normalized && normalizer_) {
        NormalizedString n(a.content);
        normalizer_->normalize(n);
        normalized_matcher_->add(n.get(), a.id);
        added_text_[added_by_id_.at(a.id)] = n.get();
      } else if (a.normalized) {
        normalized_matcher_->add(a.content, a.id);
      } else {
        raw_matcher_->add(a.content, a.id);
      }
    }
  }
}

void Tokenizer::set_padding(std::optional<PaddingParams> params) {
  if (params && ((params->fixed_length && *params->fixed_length > kMaxPadLength) ||
                 (params->pad_to_multiple_of && *params->pad_to_multiple_of > kMaxPadLength)))
    throw Error(ErrorCode::kInvalidInput, "padding length is unreasonably large (limit " +
                                              std::to_string(kMaxPadLength) + " tokens)");
  padding_ = std::move(params);
}

// ---------------------------------------------------------------- encoding

Encoding Tokenizer::encode_single(std::string_view text, uint32_t type_id) const {
  PreTokenizedString pre{std::string(text)};
  auto split_added = [this](const Matcher& matcher, NormalizedString&& n) {
    std::vector<NormalizedString> out;
    std::vector<std::pair<uint32_t, std::pair<size_t, size_t>>> hits;
    if (!matcher.empty())
      for (auto& h : matcher.find(n.get())) hits.push_back({h.id, {h.start, h.end}});
    if (hits.empty()) {
      out.push_back(std::move(n));
      return std::make_pair(std::move(out), std::vector<std::optional<uint32_t>>{std::nullopt});
    }
    std::vector<std::optional<uint32_t>> ids;
    for (auto& s : find_added(n.get(), added_, added_by_id_, hits)) {
      out.push_back(n.slice_normalized(s.start, s.end));
      ids.push_back(s.id);
    }
    return std::make_pair(std::move(out), std::move(ids));
  };
  // Splits whose whole text is an added token get their token right away.
  auto apply = [&](const Matcher& matcher, bool normalize) {
    std::vector<Split> next;
    for (auto& split : pre.splits()) {
      if (split.tokens) {
        next.push_back(std::move(split));
        continue;
      }
      if (normalize && normalizer_) normalizer_->normalize(split.normalized);
      auto [pieces, ids] = split_added(matcher, std::move(split.normalized));
      for (size_t i = 0; i < pieces.size(); ++i) {
        if (pieces[i].empty()) continue;
        Split s{std::move(pieces[i]), std::nullopt};
        // The token's text is what matched, stripped whitespace and normalization included.
        if (ids[i]) s.tokens = std::vector<Token>{{*ids[i], s.normalized.get(), {0, s.normalized.get().size()}}};
        next.push_back(std::move(s));
      }
    }
    pre.splits() = std::move(next);
  };
  apply(*raw_matcher_, false);
  apply(*normalized_matcher_, true);
  if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(pre);
  for (auto& split : pre.splits())
    if (!split.tokens) split.tokens = model_->tokenize(split.normalized.get());

  // Byte index -> char index of the original text, for the char offsets.
  std::vector<uint32_t> char_of_byte(text.size());
  {
    uint32_t ci = 0;
    for (size_t i = 0; i < text.size();) {
      size_t n = utf8_len(static_cast<unsigned char>(text[i]));
      for (size_t k = 0; k < n && i + k < text.size(); ++k) char_of_byte[i + k] = ci;
      i += n;
      ++ci;
    }
  }
  auto to_chars = [&](std::pair<size_t, size_t> o) -> std::pair<size_t, size_t> {
    if (o.first >= text.size() || o.second > text.size()) return o;
    if (o.second < text.size()) return {char_of_byte[o.first], char_of_byte[o.second]};
    if (o.second == 0) return {char_of_byte[o.first], char_of_byte[o.first] + 1};
    return {char_of_byte[o.first], static_cast<size_t>(char_of_byte[o.second - 1]) + 1};
  };

  Encoding e;
  const auto& splits = pre.splits();
  for (size_t idx = 0; idx < splits.size(); ++idx) {
    const auto& n = splits[idx].normalized;
    size_t shift = n.offsets_original().first;
    for (const auto& t : *splits[idx].tokens) {
      std::pair<size_t, size_t> o = t.offsets;
      if (auto r = n.normalized_to_original(t.offsets.first, t.offsets.second))
        o = {shift + r->first, shift + r->second};
      e.push(t.id, t.value, o, to_chars(o), static_cast<int64_t>(idx), type_id, 0);
    }
  }
  return e;
}

namespace {

void truncate_pair(Encoding& a, std::optional<Encoding>& b, const TruncationParams& p) {
  if (p.max_length == 0) {
    a.truncate(0, p.direction);
    if (b) b->truncate(0, p.direction);
    return;
  }
  size_t total = a.size() + (b ? b->size() : 0);
  if (total <= p.max_length) return;
  size_t to_remove = total - p.max_length;
  if (p.strategy == TruncationStrategy::kLongestFirst) {
    if (!b) {
      a.truncate(total - to_remove, p.direction);
      return;
    }
    size_t n1 = a.size(), n2 = b->size();
    bool swap = n1 > n2;
    if (swap) std::swap(n1, n2);
    if (n1 > p.max_length)
      n2 = n1;
    else
      n2 = std::max(n1, p.max_length - n1);
    if (n1 + n2 > p.max_length) {
      n1 = p.max_length / 2;
      n2 = n1 + p.max_length % 2;
    }
    if (swap) std::swap(n1, n2);
    a.truncate(n1, p.direction);
    b->truncate(n2, p.direction);
    return;
  }
  Encoding* target = p.strategy == TruncationStrategy::kOnlyFirst ? &a : (b ? &*b : nullptr);
  if (target == nullptr)
    throw Error(ErrorCode::kInvalidInput, "truncation strategy only_second needs a second sequence");
  if (target->size() <= to_remove)
    throw Error(ErrorCode::kInvalidInput,
                "truncation error: sequence to truncate is too short to respect the provided max_length");
  target->truncate(target->size() - to_remove, p.direction);
}

}  // namespace

Encoding Tokenizer::post_process(Encoding a, std::optional<Encoding> b, bool add_special_tokens) const {
  if (truncation_) {
    TruncationParams p = *truncation_;
    size_t added = post_processor_ ? post_processor_->added_tokens(b.has_value()) : 0;
    if (add_special_tokens && added > 0) p.max_length = p.max_length > added ? p.max_length - added : 0;
    truncate_pair(a, b, p);
  }
  std::vector<Encoding> parts;
  parts.push_back(std::move(a));
  if (b) parts.push_back(std::move(*b));
  if (post_processor_) post_processor_->process(parts, add_special_tokens);
  Encoding out;
  for (auto& p : parts) out.append(p);
  if (padding_) {
    std::vector<Encoding> one;
    one.push_back(std::move(out));
    pad_batch(one);
    out = std::move(one[0]);
  }
  return out;
}

void Tokenizer::pad_batch(std::vector<Encoding>& encodings) const {
  if (!padding_ || encodings.empty()) return;
  const PaddingParams& p = *padding_;
  size_t target = 0;
  if (p.fixed_length) {
    target = *p.fixed_length;
  } else {
    for (const auto& e : encodings) target = std::max(target, e.size());
  }
  if (p.pad_to_multiple_of && *p.pad_to_multiple_of > 0 && target % *p.pad_to_multiple_of != 0)
    target += *p.pad_to_multiple_of - target % *p.pad_to_multiple_of;
  for (auto& e : encodings) e.pad(target, p.pad_id, p.pad_type_id, p.pad_token, p.direction);
}

Encoding Tokenizer::encode(std::string_view text, std::optional<std::string_view> pair, bool add_special_tokens) const {
  require_utf8(text, "input text");
  if (pair) require_utf8(*pair, "input pair text");
  Encoding a = encode_single(text, 0);
  std::optional<Encoding> b;
  if (pair) b = encode_single(*pair, 1);
  return post_process(std::move(a), std::move(b), add_special_tokens);
}

std::vector<Encoding> Tokenizer::encode_batch(const std::vector<std::string>& texts,
                                              const std::vector<std::string>* pairs, bool add_special_tokens,
                                              int num_threads) const {
  if (pairs && pairs->size() != texts.size())
    throw Error(ErrorCode::kInvalidInput, "encode_batch: texts and pairs differ in length");
  // Fail on invalid input before any work, naming the item.
  for (size_t i = 0; i < texts.size(); ++i) {
    require_utf8(texts[i], "input text " + std::to_string(i));
    if (pairs) require_utf8((*pairs)[i], "input pair text " + std::to_string(i));
  }
  std::vector<Encoding> out(texts.size());
  parallel_index(texts.size(), num_threads, [&](size_t i) {
    Encoding a = encode_single(texts[i], 0);
    std::optional<Encoding> b;
    if (pairs) b = encode_single((*pairs)[i], 1);
    out[i] = post_process(std::move(a), std::move(b), add_special_tokens);
  });
  pad_batch(out);
  return out;
}

// ---------------------------------------------------------------- decoding and vocabulary

std::string Tokenizer::decode(const std::vector<uint32_t>& ids, bool skip_special_tokens) const {
  return decode_with(ids, skip_special_tokens, /*raw=*/false);
}

std::string Tokenizer::decode_bytes(const std::vector<uint32_t>& ids, bool skip_special_tokens) const {
  return decode_with(ids, skip_special_tokens, /*raw=*/true);
}

std::string Tokenizer::decode_with(const std::vector<uint32_t>& ids, bool skip_special_tokens, bool raw) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (uint32_t id : ids) {
    // Skipping looks the token's text up among the special contents, so a
    // special token whose normalized form differs is kept, as in the reference.
    auto t = id_to_token(id);
    if (!t || (skip_special_tokens && special_contents_.count(*t))) continue;
    tokens.push_back(std::move(*t));
  }
  if (!decoder_) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out.push_back(' ');
      out += tokens[i];
    }
    return out;
  }
  std::string out;
  for (auto& t : raw ? decoder_->decode_chain_raw(std::move(tokens)) : decoder_->decode_chain(std::move(tokens)))
    out += t;
  return out;
}

std::vector<std::string> Tokenizer::decode_batch(const std::vector<std::vector<uint32_t>>& ids,
                                                 bool skip_special_tokens, int num_threads) const {
  std::vector<std::string> out(ids.size());
  parallel_index(ids.size(), num_threads, [&](size_t i) { out[i] = decode(ids[i], skip_special_tokens); });
  return out;
}

std::optional<uint32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = added_by_content_.find(std::string(token));
  if (it != added_by_content_.end()) return it->second;
  return model_->token_to_id(token);
}

std::optional<std::string> Tokenizer::id_to_token(uint32_t id) const {
  auto it = added_by_id_.find(id);
  if (it != added_by_id_.end()) return added_text_[it->second];
  return model_->id_to_token(id);
}

size_t Tokenizer::vocab_size(bool with_added_tokens) const {
  size_t n = model_->vocab_size();
  if (!with_added_tokens) return n;
  for (const auto& a : added_)
    if (!model_->id_to_token(a.id)) ++n;
  return n;
}

// ---------------------------------------------------------------- streaming

std::optional<std::string> DecodeStream::step(uint32_t id) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  auto incomplete = [](const std::string& s) {
    return s.size() >= 3 && std::string_view(s).substr(s.size() - 3) == kReplacement;
  };
  if (prefix_.empty() && !ids_.empty()) {
    std::string p = tokenizer_.decode(ids_, skip_special_);
    if (!incomplete(p)) {
      prefix_ = std::move(p);
      prefix_index_ = ids_.size();
    }
  }
  ids_.push_back(id);
  std::string text = tokenizer_.decode(ids_, skip_special_);
  if (text.size() <= prefix_.size() || incomplete(text)) return std::nullopt;
  if (text.compare(0, prefix_.size(), prefix_) != 0)
    throw Error(ErrorCode::kInvalidInput, "decode stream: the decoder changed already emitted text");
  std::string fresh = text.substr(prefix_.size());
  size_t new_prefix_index = ids_.size() - prefix_index_;
  ids_.erase(ids_.begin(), ids_.begin() + static_cast<long>(prefix_index_));
  prefix_ = tokenizer_.decode(ids_, skip_special_);
  prefix_index_ = new_prefix_index;
  return fresh;
}

std::string DecodeStream::flush() {
  if (ids_.size() <= prefix_index_) return {};
  std::string text = tokenizer_.decode(ids_, skip_special_);
  if (text.size() <= prefix_.size() || text.compare(0, prefix_.size(), prefix_) != 0) return {};
  std::string fresh = text.substr(prefix_.size());
  prefix_ = std::move(text);  // all of ids_ is returned now
  prefix_index_ = ids_.size();
  return fresh;
}

}  // namespace mpool::tokenizer
