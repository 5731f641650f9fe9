#pragma once
// What the JinaBert family (jina-embeddings-v2) reads from config.json, as a plain
// struct. Torch-free (part of mpool_model_configs), so it runs under the
// sanitizers and is fuzzed (fuzz/config_json_fuzz.cpp).
//
// The hub's configs are written for remote code: model_type "bert" with
// architectures ["JinaBertForMaskedLM"] (or JinaBertModel), an auto_map, and
// "position_embedding_type": "alibi"; model_type "jina_bert" is accepted too.
// is_jina_bert() is what tells them from a plain BERT, which the bert family
// refuses for them.
#include <cstdint>
#include <string>
#include <vector>

#include "mpool/loading/config.h"
#include "mpool/nn/activation.h"

namespace mpool::models::jinabert {

/// The model_types a JinaBert config may carry.
inline const std::vector<std::string> kModelTypes = {"bert", "jina_bert"};
/// The remote code's class names that mark a JinaBert config.
inline const std::vector<std::string> kArchitectures = {"JinaBertModel", "JinaBertForMaskedLM",
                                                        "JinaBertForSequenceClassification"};

/// Whether `config` describes a JinaBert model: model_type jina_bert, or model_type
/// bert whose architectures name a JinaBert class or whose position_embedding_type
/// is "alibi". Throws InvalidInput (naming the key) when position_embedding_type
/// is not a string.
bool is_jina_bert(const loading::ModelConfig& config);

/// The feed-forward block of a layer ("feed_forward_type").
enum class FeedForwardType {
  kOriginal,  ///< BERT's intermediate.dense -> hidden_act -> output.dense, output.LayerNorm
  kGeglu,     ///< mlp.gated_layers (no bias) -> gelu(first half) * second half -> mlp.wo, mlp.layernorm
  kReglu,     ///< the same with relu
};

/// Everything the encoder needs from config.json, beyond the common sizes.
struct JinaBertConfig : loading::TransformerSizes {
  int64_t type_vocab_size = 0;
  double layer_norm_eps = 1e-12;
  nn::Activation hidden_act = nn::Activation::kGelu;  ///< the original feed-forward's activation
  FeedForwardType feed_forward = FeedForwardType::kOriginal;

  /// Longest input: ALiBi has no position table, so max_position_embeddings is
  /// only the cap the config states (8192 for jina-embeddings-v2).
  int64_t max_tokens() const noexcept { return max_position_embeddings; }

  /// Reads and checks the fields; errors name config.json and the key.
  static JinaBertConfig from(const loading::ModelConfig& config);
};

}  // namespace mpool::models::jinabert
