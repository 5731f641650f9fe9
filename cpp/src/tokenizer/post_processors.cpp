// Post-processors of tokenizer.json: special tokens, type ids, offset trimming.
#include "mpool/base/error.h"
#include "mpool/tokenizer/components.h"

namespace mpool::tokenizer {

void trim_byte_level_offsets(Encoding& e, bool add_prefix_space) {
  for (size_t i = 0; i < e.size(); ++i) {
    auto chars = to_u32(e.tokens[i]);
    auto space = [](char32_t c) { return c == 0x120 || is_whitespace(c); };
    size_t lead = 0, trail = 0;
    while (lead < chars.size() && space(chars[lead])) ++lead;
    while (trail < chars.size() && space(chars[chars.size() - 1 - trail])) ++trail;
    if (lead == 0 && trail == 0) continue;
    for (auto* offs : {&e.offsets[i], &e.char_offsets[i]}) {
      size_t l = lead;
      if (l > 0) {
        bool first = i == 0 || offs->first == 0;
        if (first && add_prefix_space && l == 1) l = 0;
        offs->first = std::min(offs->first + l, offs->second);
      }
      if (trail > 0 && offs->second >= trail) offs->second = std::max(offs->second - trail, offs->first);
    }
  }
}

namespace {

Encoding special_encoding(const std::vector<uint32_t>& ids, const std::vector<std::string>& tokens, uint32_t type_id) {
  Encoding e;
  for (size_t i = 0; i < ids.size(); ++i) e.push(ids[i], tokens[i], {0, 0}, {0, 0}, -1, type_id, 1);
  return e;
}

class TemplateProcessor : public PostProcessor {
 public:
  explicit TemplateProcessor(const JsonNode& node) {
    for (auto& [name, spec] : node.at("special_tokens").items()) {
      Special s;
      auto ids = spec.at("ids");
      auto tokens = spec.at("tokens");
      if (ids.size() != tokens.size()) spec.fail("ids and tokens differ in length");
      for (size_t i = 0; i < ids.size(); ++i) {
        s.ids.push_back(static_cast<uint32_t>(ids.at(i).uint()));
        s.tokens.push_back(tokens.at(i).str());
      }
      specials_[name] = std::move(s);
    }
    single_ = parse(node.at("single"));
    pair_ = parse(node.at("pair"));
  }

  size_t added_tokens(bool is_pair) const override {
    size_t n = 0;
    for (const auto& p : is_pair ? pair_ : single_)
      if (p.special) n += specials_.at(p.name).ids.size();
    return n;
  }

  void process(std::vector<Encoding>& encodings, bool add_special_tokens) const override {
    const auto& tmpl = encodings.size() == 2 ? pair_ : single_;
    std::vector<Encoding> out;
    for (const auto& p : tmpl) {
      if (p.special) {
        if (!add_special_tokens) continue;
        const auto& s = specials_.at(p.name);
        out.push_back(special_encoding(s.ids, s.tokens, p.type_id));
      } else {
        size_t i = p.name == "A" ? 0 : 1;
        if (i >= encodings.size()) continue;
        Encoding e = encodings[i];
        e.set_type_ids(p.type_id);
        out.push_back(std::move(e));
      }
    }
    encodings = std::move(out);
  }

 private:
  struct Piece {
    bool special;
    std::string name;
    uint32_t type_id;
  };
  struct Special {
    std::vector<uint32_t> ids;
    std::vector<std::string> tokens;
  };

  std::vector<Piece> parse(const JsonNode& list) const {
    std::vector<Piece> out;
    for (size_t i = 0; i < list.size(); ++i) {
      auto item = list.at(i);
      if (item.has("SpecialToken")) {
        auto s = item.at("SpecialToken");
        std::string id = s.at("id").str();
        if (!specials_.count(id)) s.at("id").fail("special token '" + id + "' is not in special_tokens");
        out.push_back({true, id, static_cast<uint32_t>(s.uint_or("type_id", 0))});
      } else if (item.has("Sequence")) {
        auto s = item.at("Sequence");
        std::string id = s.at("id").str();
        if (id != "A" && id != "B") s.at("id").fail("sequence id must be A or B");
        out.push_back({false, id, static_cast<uint32_t>(s.uint_or("type_id", 0))});
      } else {
        item.fail("expected SpecialToken or Sequence");
      }
    }
    return out;
  }

  std::unordered_map<std::string, Special> specials_;
  std::vector<Piece> single_, pair_;
};

std::pair<std::string, uint32_t> token_pair(const JsonNode& n) {
  if (n.size() != 2) n.fail("expected [token, id]");
  return {n.at(0).str(), static_cast<uint32_t>(n.at(1).uint())};
}

// BERT and RoBERTa style: [CLS] A [SEP] (B [SEP]) and <s> A </s> (</s> B </s>).
class ClsSepProcessor : public PostProcessor {
 public:
  ClsSepProcessor(const JsonNode& node, bool roberta) : roberta_(roberta) {
    sep_ = token_pair(node.at("sep"));
    cls_ = token_pair(node.at("cls"));
    if (roberta) {
      trim_offsets_ = node.bool_or("trim_offsets", true);
      add_prefix_space_ = node.bool_or("add_prefix_space", true);
    }
  }

  size_t added_tokens(bool is_pair) const override {
    if (!is_pair) return 2;
    return roberta_ ? 4 : 3;
  }

  void process(std::vector<Encoding>& encodings, bool add_special_tokens) const override {
    if (trim_offsets_)
      for (auto& e : encodings) trim_byte_level_offsets(e, add_prefix_space_);
    if (!add_special_tokens) return;
    std::vector<Encoding> out;
    out.push_back(special_encoding({cls_.second}, {cls_.first}, 0));
    Encoding a = encodings[0];
    a.set_type_ids(0);
    out.push_back(std::move(a));
    out.push_back(special_encoding({sep_.second}, {sep_.first}, 0));
    if (encodings.size() == 2) {
      uint32_t type = roberta_ ? 0 : 1;
      if (roberta_) out.push_back(special_encoding({sep_.second}, {sep_.first}, type));
      Encoding b = encodings[1];
      b.set_type_ids(type);
      out.push_back(std::move(b));
      out.push_back(special_encoding({sep_.second}, {sep_.first}, type));
    }
    encodings = std::move(out);
  }

 private:
  bool roberta_;
  bool trim_offsets_ = false, add_prefix_space_ = false;
  std::pair<std::string, uint32_t> sep_, cls_;
};

class ByteLevelProcessor : public PostProcessor {
 public:
  explicit ByteLevelProcessor(const JsonNode& node)
      : trim_offsets_(node.bool_or("trim_offsets", true)), add_prefix_space_(node.bool_or("add_prefix_space", true)) {}
  size_t added_tokens(bool) const override { return 0; }
  void process(std::vector<Encoding>& encodings, bool) const override {
    if (trim_offsets_)
      for (auto& e : encodings) trim_byte_level_offsets(e, add_prefix_space_);
  }

 private:
  bool trim_offsets_, add_prefix_space_;
};

class SequenceProcessor : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> steps) : steps_(std::move(steps)) {}
  size_t added_tokens(bool is_pair) const override {
    size_t n = 0;
    for (const auto& s : steps_) n += s->added_tokens(is_pair);
    return n;
  }
  void process(std::vector<Encoding>& encodings, bool add_special_tokens) const override {
    for (const auto& s : steps_) s->process(encodings, add_special_tokens);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> steps_;
};

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const JsonNode& node) {
  std::string type = node.type();
  if (type == "TemplateProcessing") return std::make_unique<TemplateProcessor>(node);
  if (type == "BertProcessing") return std::make_unique<ClsSepProcessor>(node, false);
  if (type == "RobertaProcessing") return std::make_unique<ClsSepProcessor>(node, true);
  if (type == "ByteLevel") return std::make_unique<ByteLevelProcessor>(node);
  if (type == "Sequence") {
    auto list = node.at("processors");
    std::vector<std::unique_ptr<PostProcessor>> steps;
    for (size_t i = 0; i < list.size(); ++i) steps.push_back(make_post_processor(list.at(i)));
    return std::make_unique<SequenceProcessor>(std::move(steps));
  }
  node.at("type").fail("unsupported post-processor type '" + type + "'");
}

}  // namespace mpool::tokenizer
