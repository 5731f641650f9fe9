#include "models/jinav3/config.h"

#include <cmath>
#include <set>

#include "mpool/base/error.h"

namespace mpool::models::jinav3 {

bool is_remote_code_layout(const loading::ModelConfig& c) {
  return c.model_type == "xlm-roberta" &&
         c.raw.get_or<std::string>("position_embedding_type", "absolute") == "rotary";
}

JinaV3Config JinaV3Config::from(const loading::ModelConfig& c) {
  JinaV3Config j;
  j.remote_code = is_remote_code_layout(c);
  static_cast<loading::TransformerSizes&>(j) = loading::TransformerSizes::require(
      c, j.remote_code ? std::vector<std::string>{"xlm-roberta"} : kModelTypes, "jina_embeddings_v3");
  j.type_vocab_size = c.raw.get_or<int64_t>("type_vocab_size", 1);
  j.layer_norm_eps = c.layer_norm_eps.value_or(1e-5);
  j.hidden_act = nn::parse_activation(c.hidden_act.value_or("gelu"), "config.json: \"hidden_act\"");
  check(j.type_vocab_size >= 0 && j.type_vocab_size <= loading::kMaxConfigDimension, ErrorCode::kInvalidInput,
        "config.json: \"type_vocab_size\" is " + std::to_string(j.type_vocab_size) + "; it must be in [0, " +
            std::to_string(loading::kMaxConfigDimension) + "]");
  check(j.layer_norm_eps > 0, ErrorCode::kInvalidInput,
        "config.json: \"layer_norm_eps\" must be positive, got " + std::to_string(j.layer_norm_eps));
  check(j.hidden_size % j.num_heads == 0, ErrorCode::kInvalidInput,
        "config.json: hidden_size " + std::to_string(j.hidden_size) + " is not divisible by num_attention_heads " +
            std::to_string(j.num_heads));
  j.head_dim = j.hidden_size / j.num_heads;
  j.rope = nn::read_rope_config(c, j.head_dim, j.max_position_embeddings);
  if (!c.rope_theta) j.rope.theta = kDefaultRopeTheta;
  if (j.remote_code) {
    // XLMRobertaFlashConfig: the rotary base is "rotary_emb_base" (its default 10000).
    j.rope.theta = c.raw.get_or<double>("rotary_emb_base", 10000.0);
    j.lora_adaptations = c.raw.get_or<std::vector<std::string>>("lora_adaptations", {});
    j.lora_rank = c.raw.get_or<int64_t>("lora_rank", 4);
    j.lora_alpha = c.raw.get_or<double>("lora_alpha", 1.0);
    check(j.lora_rank > 0 && j.lora_rank <= loading::kMaxConfigDimension, ErrorCode::kInvalidInput,
          "config.json: \"lora_rank\" must be positive, got " + std::to_string(j.lora_rank));
    check(std::isfinite(j.lora_alpha), ErrorCode::kInvalidInput, "config.json: \"lora_alpha\" must be a finite number");
    check(j.lora_adaptations.size() <= 64, ErrorCode::kInvalidInput,
          "config.json: \"lora_adaptations\" lists " + std::to_string(j.lora_adaptations.size()) +
              " tasks; at most 64 are supported");
    const std::set<std::string> distinct(j.lora_adaptations.begin(), j.lora_adaptations.end());
    check(distinct.size() == j.lora_adaptations.size(), ErrorCode::kInvalidInput,
          "config.json: \"lora_adaptations\" names a task twice");
  }
  // Only the plain rotary embedding over the whole head has been checked against
  // transformers here; scaled types are refused rather than served untested.
  check(j.rope.type == "default", ErrorCode::kInvalidInput,
        "config.json: \"rope_parameters\" has rope_type '" + j.rope.type + "'; the jinav3 family takes only 'default'");
  check(j.rope.rotary_dim == j.head_dim, ErrorCode::kInvalidInput,
        "config.json: \"partial_rotary_factor\" must be 1 for jina_embeddings_v3 (rotary over the whole head)");
  check(std::isfinite(j.rope.theta) && j.rope.theta > 0, ErrorCode::kInvalidInput,
        std::string("config.json: ") + (j.remote_code ? "\"rotary_emb_base\"" : "\"rope_theta\"") +
            " must be a finite number > 0, got " + std::to_string(j.rope.theta));
  if (auto tasks = c.raw.child("task_instructions")) {
    for (const auto& [task, text] : tasks->json().items()) {
      check(text.is_string(), ErrorCode::kInvalidInput,
            "config.json: \"task_instructions\"." + task + " must be a string");
      j.task_instructions.emplace(task, text.get<std::string>());
    }
  }
  return j;
}

}  // namespace mpool::models::jinav3
