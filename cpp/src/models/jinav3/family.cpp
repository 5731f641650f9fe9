// The jinav3 family (jina-embeddings-v3) as a pool model: serves the directories
// transformers saves for JinaEmbeddingsV3Model (model_type jina_embeddings_v3) as
// text_embedding specs whose replicas run the encoder under the kit's
// SentenceEmbedder, mean-pooled unless the sentence-transformers files say
// otherwise. Tasks (embed(task=...)) are the sentence-transformers prompts when the
// directory has them, else config.json's "task_instructions"; a task also selects
// the PEFT LoRA adapter of its name stored beside the model (loading/peft.h:
// "retrieval.query" is the adapter directory retrieval_query), applied unmerged
// at run time so the five tasks share one set of base weights. jina's own hub
// layout (XLMRobertaFlashConfig, remote code: model_type xlm-roberta with rotary
// positions, weights under torch parametrizations, every task's LoRA factors
// stacked in the checkpoint) is served too, its tasks being "lora_adaptations".
#include <filesystem>

#include <c10/core/InferenceMode.h>

#include "models/jinav3/jinav3.h"
#include "mpool/base/error.h"
#include "mpool/loading/peft.h"
#include "mpool/nn/lora.h"
#include "mpool/models/families.h"
#include "mpool/models/kit.h"
#include "mpool/models/sentence_embedder.h"
#include "mpool/nn/probe.h"

namespace mpool::models::jinav3 {
namespace {

namespace fs = std::filesystem;

NativeModel build(const loading::ModelDirectory& directory, const loading::ModelConfig& model_config,
                  const NativeOptions& options) {
  const JinaV3Config config = JinaV3Config::from(model_config);
  const kit::BuildInputs in = kit::build_inputs(directory, options, "jina-embeddings-v3", /*allows_int8=*/true);
  const loading::ModelLayout& layout = in.layout;
  const fs::path tokenizer_file = in.tokenizer_file;
  const loading::TokenizerOptions tokenizer_options = in.tokenizer_options;
  const at::ScalarType dtype = in.dtype;
  EmbedderSettings settings =
      embedder_settings(layout, config.hidden_size, static_cast<size_t>(config.max_tokens()), {PoolingMode::kMean});
  // The sentence-transformers prompts win; without them, the config's task
  // instructions are the tasks (the same names and texts in jina's own files).
  if (settings.prompts.empty())
    settings.prompts.insert(config.task_instructions.begin(), config.task_instructions.end());
  settings.tokens_per_forward = kit::tokens_per_forward(options, settings.tokens_per_forward);
  const std::vector<loading::LoraAdapterConfig> adapters = loading::find_lora_adapters(layout.model_dir);
  check(adapters.empty() || !config.remote_code, ErrorCode::kInvalidInput,
        "jina-embeddings-v3's remote-code checkpoint carries its task adapters itself; the PEFT adapters under " +
            layout.model_dir.string() + " cannot be added to it");
  for (const auto& a : adapters) settings.adapters.push_back(a.name);
  if (config.remote_code) settings.adapters = config.lora_adaptations;

  // Memory: the weights it loads, plus the activations of one forward pass of
  // tokens_per_forward tokens (hidden states, the MLP's inner layer, and attention
  // scores).
  NativeModel model;
  // Built on the meta device with its adapters attached: every adapter tensor's
  // name and shape is checked here, at registration, not in a replica.
  double adapter_bytes = 0;
  const double base_bytes = kit::measure_weights(
      in.checkpoint, dtype,
      [&](const nn::Weights& w) {
        JinaV3Encoder encoder(config, w);
        if (adapters.empty()) return;
        nn::LoraAdapters lora = nn::LoraAdapters::open(adapters, dtype, w.device());
        encoder.attach_lora(lora);
        adapter_bytes = static_cast<double>(lora.bytes());
      },
      model.warnings, in.int8);
  const double weight_bytes = base_bytes + adapter_bytes;
  const double tokens = static_cast<double>(settings.tokens_per_forward);
  const double act_bytes = tokens * static_cast<double>(config.intermediate_size + 6 * config.hidden_size) * 4.0 +
                           tokens * static_cast<double>(std::min<size_t>(settings.max_seq_length, 8192)) *
                               static_cast<double>(config.num_heads) * 4.0;
  const fs::path model_dir = layout.model_dir;
  const bool int8 = in.int8;
  fill_embedder_spec(model, settings, weight_bytes, act_bytes, options,
                     [model_dir, tokenizer_file, tokenizer_options, config, settings, dtype, adapters,
                      int8](const std::string& device) {
    const at::Device dev(device);
    JinaV3Encoder encoder(config,
                          nn::Weights::open(loading::Checkpoint::open(model_dir), dtype, dev).with_int8_linears(int8));
    if (!adapters.empty()) {
      nn::LoraAdapters lora = nn::LoraAdapters::open(adapters, dtype, dev);
      encoder.attach_lora(lora);
    }
    return std::make_shared<SentenceEmbedder>(std::make_unique<EncoderBackbone<JinaV3Encoder>>(std::move(encoder), dev),
                                              kit::open_tokenizer(tokenizer_file, tokenizer_options), settings);
  });
  return model;
}

}  // namespace

Family family() {
  auto serves = [types = kit::serves_model_types(kModelTypes, "jina_embeddings_v3")](
                    const loading::ModelConfig& c, const loading::ModelLayout& layout) {
    if (is_remote_code_layout(c)) return loading::FamilySupport::yes();
    return types(c, layout);
  };
  return Family{"jinav3", {capabilities::TextEmbedding::kName}, serves, build,
                {{"tokens_per_forward", OptionSpec::Kind::kInt,
                  "padded tokens per forward pass (default 16384): bounds activation memory"}}};
}

void register_probes() {
  // The encoder's last hidden state for given inputs.
  nn::register_probe("jinav3.last_hidden_state", [](const nn::ProbeInput& in) {
    const kit::ProbedModel m = kit::open_probed_model(in);
    const JinaV3Encoder encoder(JinaV3Config::from(m.config), m.weights);
    c10::InferenceMode inference;
    return nn::ProbeOutput{{"last_hidden_state", encoder.forward(in.tensor("input_ids").to(at::kLong),
                                                                 in.tensor("token_type_ids").to(at::kLong),
                                                                 in.tensor("attention_mask").to(at::kLong))}};
  });
}

}  // namespace mpool::models::jinav3
