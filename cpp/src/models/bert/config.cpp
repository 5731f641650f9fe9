#include "models/bert/config.h"

#include <algorithm>

#include "mpool/base/error.h"

namespace mpool::models::bert {

BertConfig BertConfig::from(const loading::ModelConfig& c) {
  BertConfig b;
  static_cast<loading::TransformerSizes&>(b) =
      loading::TransformerSizes::require(c, kModelTypes, "a BERT-family type");
  // The encoder adds an absolute position table; relative_key(_query) or ALiBi
  // (JinaBert, the jinabert family's) would be silently wrong without their terms.
  const std::string positions = c.raw.get_or<std::string>("position_embedding_type", "absolute");
  check(positions == "absolute", ErrorCode::kInvalidInput,
        "config.json: \"position_embedding_type\" is '" + positions + "'; the bert family serves \"absolute\" only" +
            (positions == "alibi" ? " (ALiBi BERTs are the jinabert family's)" : ""));
  b.type_vocab_size = c.raw.get_or<int64_t>("type_vocab_size", 2);
  b.layer_norm_eps = c.layer_norm_eps.value_or(1e-12);
  b.hidden_act = nn::parse_activation(c.hidden_act.value_or("gelu"), "config.json: \"hidden_act\"");
  b.padding_offset_positions = c.model_type != "bert";
  // Absent (or null), transformers' RobertaConfig and XLMRobertaConfig say 1, BertConfig 0.
  b.pad_token_id = c.pad_token_id.empty() ? (b.padding_offset_positions ? 1 : 0) : c.pad_token_id.front();
  check(b.type_vocab_size >= 0 && b.type_vocab_size <= loading::kMaxConfigDimension, ErrorCode::kInvalidInput,
        "config.json: \"type_vocab_size\" is " + std::to_string(b.type_vocab_size) + "; it must be in [0, " +
            std::to_string(loading::kMaxConfigDimension) + "]");
  // roberta numbers positions from pad_token_id + 1 (pad_token_id itself is the
  // padding's position): both must be embedding rows, and one token must fit.
  check(!b.padding_offset_positions || (b.pad_token_id >= 0 && b.pad_token_id < b.max_position_embeddings - 1),
        ErrorCode::kInvalidInput,
        "config.json: " + b.model_type + " numbers positions from pad_token_id + 1, so pad_token_id (" +
            std::to_string(b.pad_token_id) + ") must be in [0, max_position_embeddings - 1) = [0, " +
            std::to_string(b.max_position_embeddings - 1) + ")");
  check(b.hidden_size % b.num_heads == 0, ErrorCode::kInvalidInput,
        "config.json: hidden_size " + std::to_string(b.hidden_size) + " is not divisible by num_attention_heads " +
            std::to_string(b.num_heads));
  return b;
}

}  // namespace mpool::models::bert
