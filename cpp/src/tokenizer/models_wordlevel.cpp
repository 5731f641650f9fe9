// WordLevel: each pre-tokenized word is one token, or the unknown token.
#include "mpool/base/error.h"
#include "vocab.h"

namespace mpool::tokenizer {
namespace {

class WordLevelModel : public Model {
 public:
  explicit WordLevelModel(const JsonNode& node) {
    vocab_ = Vocab::from_object(node.at("vocab"));
    unk_token_ = node.str_or("unk_token", "<unk>");
    unk_id_ = vocab_.id(unk_token_);
  }

  std::vector<Token> tokenize(std::string_view word) const override {
    if (auto id = vocab_.id(word)) return {{*id, std::string(word), {0, word.size()}}};
    if (!unk_id_)
      throw Error(ErrorCode::kInvalidInput, "WordLevel: \"" + std::string(word) + "\" is not in the vocabulary, and unk_token '" +
                                                unk_token_ + "' is not either");
    return {{*unk_id_, unk_token_, {0, word.size()}}};
  }

  std::optional<uint32_t> token_to_id(std::string_view token) const override { return vocab_.id(token); }
  std::optional<std::string> id_to_token(uint32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.size(); }

 private:
  Vocab vocab_;
  std::string unk_token_;
  std::optional<uint32_t> unk_id_;
};

}  // namespace

std::unique_ptr<Model> make_wordlevel_model(const JsonNode& node) { return std::make_unique<WordLevelModel>(node); }

}  // namespace mpool::tokenizer
