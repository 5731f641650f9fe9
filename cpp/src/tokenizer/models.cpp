// The model factory: picks BPE, WordPiece, Unigram or WordLevel from the model node.
#include "mpool/tokenizer/components.h"

namespace mpool::tokenizer {

std::unique_ptr<Model> make_bpe_model(const JsonNode& node);
std::unique_ptr<Model> make_wordpiece_model(const JsonNode& node);
std::unique_ptr<Model> make_unigram_model(const JsonNode& node);
std::unique_ptr<Model> make_wordlevel_model(const JsonNode& node);

std::unique_ptr<Model> make_model(const JsonNode& node) {
  // Older files omit the model type; the fields tell which it is.
  std::string type;
  if (node.has("type")) {
    type = node.type();
  } else if (node.has("merges")) {
    type = "BPE";
  } else if (node.has("continuing_subword_prefix") || node.has("max_input_chars_per_word")) {
    type = "WordPiece";
  } else if (node.has("unk_id") || (node.has("vocab") && node.at("vocab").is_array())) {
    type = "Unigram";
  }
  if (type == "BPE") return make_bpe_model(node);
  if (type == "WordPiece") return make_wordpiece_model(node);
  if (type == "Unigram") return make_unigram_model(node);
  if (type == "WordLevel") return make_wordlevel_model(node);
  if (type.empty()) node.fail("cannot tell the model type");
  node.at("type").fail("unsupported model type '" + type + "'");
}

}  // namespace mpool::tokenizer
