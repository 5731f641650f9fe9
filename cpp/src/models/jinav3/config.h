#pragma once
// What the jinav3 family (jina-embeddings-v3) reads from config.json, as a plain
// struct. Torch-free (part of mpool_model_configs), so it runs under the
// sanitizers and is fuzzed (fuzz/config_json_fuzz.cpp).
//
// It serves the directories transformers saves for JinaEmbeddingsV3Model
// (model_type "jina_embeddings_v3"): XLM-R's embeddings without a position table,
// post-norm layers with rotary attention (q/k/v/o_proj) and an fc1 -> act -> fc2
// MLP. The hub's remote-code layout (model_type "xlm-roberta" with
// "position_embedding_type": "rotary", XLMRobertaFlashConfig with LoRA task
// adapters) is recognized by is_remote_code_layout() and refused, by this family
// and the bert family alike.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "mpool/loading/config.h"
#include "mpool/nn/activation.h"
#include "mpool/nn/rope_config.h"

namespace mpool::models::jinav3 {

/// The model_types this family serves.
inline const std::vector<std::string> kModelTypes = {"jina_embeddings_v3"};

/// JinaEmbeddingsV3Config's rope base when the file names none.
inline constexpr double kDefaultRopeTheta = 20000.0;

/// Whether `config` is the hub's remote-code jina-embeddings-v3 layout: model_type
/// xlm-roberta with "position_embedding_type": "rotary". Throws InvalidInput
/// (naming the key) when position_embedding_type is not a string.
/// jina's own hub layout (XLMRobertaFlashConfig, remote code): model_type
/// "xlm-roberta" with "position_embedding_type": "rotary".
bool is_remote_code_layout(const loading::ModelConfig& config);

/// Everything the encoder needs from config.json, beyond the common sizes.
struct JinaV3Config : loading::TransformerSizes {
  int64_t type_vocab_size = 1;
  double layer_norm_eps = 1e-5;
  nn::Activation hidden_act = nn::Activation::kGelu;
  int64_t head_dim = 0;
  nn::RopeConfig rope;  ///< "default" rope over the whole head, base rope_parameters.rope_theta
  /// config.json's "task_instructions": task name -> instruction prefixed to the text.
  std::map<std::string, std::string> task_instructions;
  /// The remote-code layout: its "lora_adaptations" (task names, in the order of
  /// the stacked adapter tensors), "lora_rank" and "lora_alpha"; empty otherwise.
  bool remote_code = false;
  std::vector<std::string> lora_adaptations;
  int64_t lora_rank = 4;
  double lora_alpha = 1;

  /// Longest input: rotary positions have no table, max_position_embeddings is the cap.
  int64_t max_tokens() const noexcept { return max_position_embeddings; }

  /// Reads and checks the fields; errors name config.json and the key.
  static JinaV3Config from(const loading::ModelConfig& config);
};

}  // namespace mpool::models::jinav3
