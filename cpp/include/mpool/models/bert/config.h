#pragma once
// What the BERT family reads from config.json, as a plain struct. Torch-free
// (part of mpool_model_configs), so it runs under the sanitizers and is fuzzed
// (fuzz/config_json_fuzz.cpp).
#include <cstdint>
#include <string>
#include <vector>

#include "mpool/loading/config.h"

namespace mpool::models::bert {

/// The model_types this family serves.
inline const std::vector<std::string> kModelTypes = {"bert", "roberta", "xlm-roberta"};

/// Everything the encoder needs from config.json.
struct BertConfig {
  std::string model_type;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t intermediate_size = 0;
  int64_t max_position_embeddings = 0;
  int64_t type_vocab_size = 0;
  double layer_norm_eps = 1e-12;
  std::string hidden_act = "gelu";
  int64_t pad_token_id = 0;
  bool padding_offset_positions = false;  ///< roberta: positions start after pad_token_id

  /// Reads and checks the fields; errors name config.json and the key.
  static BertConfig from(const loading::ModelConfig& config);
};

}  // namespace mpool::models::bert
