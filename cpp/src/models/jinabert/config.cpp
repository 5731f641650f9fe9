#include "models/jinabert/config.h"

#include <algorithm>

#include "mpool/base/error.h"

namespace mpool::models::jinabert {

bool is_jina_bert(const loading::ModelConfig& c) {
  if (c.model_type == "jina_bert") return true;
  if (c.model_type != "bert") return false;
  for (const auto& a : c.architectures)
    if (std::find(kArchitectures.begin(), kArchitectures.end(), a) != kArchitectures.end()) return true;
  return c.raw.get_or<std::string>("position_embedding_type", "absolute") == "alibi";
}

JinaBertConfig JinaBertConfig::from(const loading::ModelConfig& c) {
  JinaBertConfig j;
  static_cast<loading::TransformerSizes&>(j) =
      loading::TransformerSizes::require(c, kModelTypes, "a JinaBert type");
  check(is_jina_bert(c), ErrorCode::kInvalidInput,
        "config.json: model_type 'bert' is a JinaBert model only with \"position_embedding_type\": \"alibi\" or "
        "\"architectures\" naming JinaBertModel or JinaBertForMaskedLM");
  // The remote code's JinaBertConfig defaults to ALiBi; this family has no
  // position table, so any other kind is refused rather than ignored.
  const std::string positions = c.raw.get_or<std::string>("position_embedding_type", "alibi");
  check(positions == "alibi", ErrorCode::kInvalidInput,
        "config.json: \"position_embedding_type\" is '" + positions +
            "'; the jinabert family serves ALiBi positions only (\"alibi\")");
  const std::string ff = c.raw.get_or<std::string>("feed_forward_type", "original");
  if (ff == "original") j.feed_forward = FeedForwardType::kOriginal;
  else if (ff == "geglu") j.feed_forward = FeedForwardType::kGeglu;
  else if (ff == "reglu") j.feed_forward = FeedForwardType::kReglu;
  else
    throw Error(ErrorCode::kInvalidInput, "config.json: \"feed_forward_type\" is '" + ff +
                                              "'; the jinabert family takes original, geglu or reglu");
  const std::string pooler = c.raw.get_or<std::string>("emb_pooler", "mean");
  check(pooler == "mean", ErrorCode::kInvalidInput,
        "config.json: \"emb_pooler\" is '" + pooler + "'; JinaBert pools by the mean (\"mean\")");
  j.type_vocab_size = c.raw.get_or<int64_t>("type_vocab_size", 2);
  j.layer_norm_eps = c.layer_norm_eps.value_or(1e-12);
  j.hidden_act = nn::parse_activation(c.hidden_act.value_or("gelu"), "config.json: \"hidden_act\"");
  check(j.type_vocab_size >= 0 && j.type_vocab_size <= loading::kMaxConfigDimension, ErrorCode::kInvalidInput,
        "config.json: \"type_vocab_size\" is " + std::to_string(j.type_vocab_size) + "; it must be in [0, " +
            std::to_string(loading::kMaxConfigDimension) + "]");
  check(j.layer_norm_eps > 0, ErrorCode::kInvalidInput,
        "config.json: \"layer_norm_eps\" must be positive, got " + std::to_string(j.layer_norm_eps));
  check(j.hidden_size % j.num_heads == 0, ErrorCode::kInvalidInput,
        "config.json: hidden_size " + std::to_string(j.hidden_size) + " is not divisible by num_attention_heads " +
            std::to_string(j.num_heads));
  return j;
}

}  // namespace mpool::models::jinabert
