// WordPiece: greedy longest-match-first subwords.
#include "mpool/base/error.h"
#include "vocab.h"

namespace mpool::tokenizer {
namespace {

class WordPieceModel : public Model {
 public:
  explicit WordPieceModel(const JsonNode& node) {
    vocab_ = Vocab::from_object(node.at("vocab"));
    unk_token_ = node.str_or("unk_token", "[UNK]");
    prefix_ = node.str_or("continuing_subword_prefix", "##");
    max_chars_ = node.uint_or("max_input_chars_per_word", 100);
    unk_id_ = vocab_.id(unk_token_);
  }

  std::vector<Token> tokenize(std::string_view word) const override {
    std::vector<Token> out;
    size_t chars = 0;
    for (size_t i = 0; i < word.size(); i += utf8_len(static_cast<unsigned char>(word[i]))) ++chars;
    if (chars <= max_chars_) {
      std::string candidate;
      size_t start = 0;
      bool bad = false;
      while (start < word.size()) {
        size_t end = word.size();
        bool found = false;
        while (start < end) {
          candidate.clear();
          if (start > 0) candidate = prefix_;
          candidate.append(word.substr(start, end - start));
          if (auto id = vocab_.id(candidate)) {
            out.push_back({*id, candidate, {start, end}});
            found = true;
            break;
          }
          // Step back one character.
          do {
            --end;
          } while (end > start && (static_cast<unsigned char>(word[end]) & 0xC0) == 0x80);
        }
        if (!found) {
          bad = true;
          break;
        }
        start = end;
      }
      if (!bad) return out;
      out.clear();
    }
    if (!unk_id_) throw Error(ErrorCode::kInvalidInput, "WordPiece: unk_token '" + unk_token_ + "' is not in the vocabulary");
    out.push_back({*unk_id_, unk_token_, {0, word.size()}});
    return out;
  }

  std::optional<uint32_t> token_to_id(std::string_view token) const override { return vocab_.id(token); }
  std::optional<std::string> id_to_token(uint32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.size(); }

 private:
  Vocab vocab_;
  std::string unk_token_, prefix_;
  size_t max_chars_ = 100;
  std::optional<uint32_t> unk_id_;
};

}  // namespace

std::unique_ptr<Model> make_wordpiece_model(const JsonNode& node) { return std::make_unique<WordPieceModel>(node); }

}  // namespace mpool::tokenizer
