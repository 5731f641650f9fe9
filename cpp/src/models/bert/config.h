#pragma once
// What the BERT family reads from config.json, as a plain struct. Torch-free
// (part of mpool_model_configs), so it runs under the sanitizers and is fuzzed
// (fuzz/config_json_fuzz.cpp).
#include <cstdint>
#include <string>
#include <vector>

#include "mpool/loading/config.h"
#include "mpool/nn/activation.h"

namespace mpool::models::bert {

/// The model_types this family serves.
inline const std::vector<std::string> kModelTypes = {"bert", "roberta", "xlm-roberta"};

/// Everything the encoder needs from config.json, beyond the common sizes.
struct BertConfig : loading::TransformerSizes {
  int64_t type_vocab_size = 0;
  double layer_norm_eps = 1e-12;
  nn::Activation hidden_act = nn::Activation::kGelu;
  int64_t pad_token_id = 0;
  bool padding_offset_positions = false;  ///< roberta: positions start after pad_token_id

  /// Tokens the position embeddings allow (roberta spends pad_token_id + 1 on the offset).
  int64_t max_tokens() const noexcept {
    return max_position_embeddings - (padding_offset_positions ? pad_token_id + 1 : 0);
  }

  /// Reads and checks the fields; errors name config.json and the key.
  static BertConfig from(const loading::ModelConfig& config);
};

}  // namespace mpool::models::bert
