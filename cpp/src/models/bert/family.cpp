// The BERT family as a pool model: recognizes bert/roberta/xlm-roberta
// directories and builds text_embedding specs whose replicas run the encoder
// under the kit's SentenceEmbedder, or, for a *ForSequenceClassification
// checkpoint, rerank specs under the kit's CrossEncoder.
#include <algorithm>
#include <filesystem>

#include <c10/core/InferenceMode.h>

#include "models/bert/bert.h"
#include "models/jinabert/config.h"
#include "models/jinav3/config.h"
#include "mpool/base/error.h"
#include "mpool/models/cross_encoder.h"
#include "mpool/models/families.h"
#include "mpool/models/kit.h"
#include "mpool/models/sentence_embedder.h"
#include "mpool/nn/probe.h"

namespace mpool::models::bert {
namespace {

namespace fs = std::filesystem;

class BertScorer final : public Scorer {
 public:
  BertScorer(BertEncoder encoder, BertClassifier head, at::Device device)
      : encoder_(std::move(encoder)), head_(std::move(head)), device_(device) {}
  at::Tensor forward(const at::Tensor& ids, const at::Tensor& types, const at::Tensor& mask) const override {
    return head_(encoder_.forward(ids, types, mask));
  }
  at::Device device() const override { return device_; }

 private:
  BertEncoder encoder_;
  BertClassifier head_;
  at::Device device_;
};

// A *ForSequenceClassification checkpoint: a cross-encoder serving rerank.
NativeModel build_reranker(const BertConfig& config, const loading::ModelConfig& model_config,
                           const kit::BuildInputs& in, const NativeOptions& options) {
  CrossEncoderSettings settings =
      cross_encoder_settings(in.layout, model_config, static_cast<size_t>(config.max_tokens()));
  settings.tokens_per_forward = kit::tokens_per_forward(options, settings.tokens_per_forward);
  if (settings.type_ids) {
    // The tokenizer's type ids for a pair must be rows of the model's table (a
    // BERT tokenizer gives the document type 1, which type_vocab_size 1 lacks).
    const tokenizer::Encoding pair =
        kit::open_tokenizer(in.tokenizer_file, in.tokenizer_options)->encode("query", "document");
    for (uint32_t type : pair.type_ids)
      check(static_cast<int64_t>(type) < config.type_vocab_size, ErrorCode::kInvalidInput,
            "config.json: \"type_vocab_size\" is " + std::to_string(config.type_vocab_size) + ", but the tokenizer (" +
                in.tokenizer_file.filename().string() + ") gives a query-document pair token type id " +
                std::to_string(type) + ", which the model has no embedding for");
  }
  const int64_t labels = settings.num_labels;
  NativeModel model;
  const double weight_bytes = kit::measure_weights(
      in.checkpoint, in.dtype,
      [&](const nn::Weights& w) {
        BertEncoder(config, w);
        BertClassifier(config, w, labels);
      },
      model.warnings, in.int8);
  const double tokens = static_cast<double>(settings.tokens_per_forward);
  const double act_bytes = tokens * static_cast<double>(config.intermediate_size + 6 * config.hidden_size) * 4.0 +
                           tokens * static_cast<double>(std::min<size_t>(settings.max_seq_length, 512)) *
                               static_cast<double>(config.num_heads) * 4.0;
  const fs::path model_dir = in.layout.model_dir, tokenizer_file = in.tokenizer_file;
  const loading::TokenizerOptions tokenizer_options = in.tokenizer_options;
  const at::ScalarType dtype = in.dtype;
  const bool int8 = in.int8;
  kit::fill_spec(model, capabilities::Reranking::kName, weight_bytes, act_bytes, settings.tokens_per_forward, options,
                 [model_dir, tokenizer_file, tokenizer_options, config, settings, dtype, int8](const std::string& device) {
    const at::Device dev(device);
    const nn::Weights w = nn::Weights::open(loading::Checkpoint::open(model_dir), dtype, dev).with_int8_linears(int8);
    auto scorer = std::make_unique<BertScorer>(BertEncoder(config, w), BertClassifier(config, w, settings.num_labels), dev);
    return std::make_shared<CrossEncoder>(std::move(scorer), kit::open_tokenizer(tokenizer_file, tokenizer_options), settings);
  });
  return model;
}

NativeModel build(const loading::ModelDirectory& directory, const loading::ModelConfig& model_config,
                  const NativeOptions& options) {
  const BertConfig config = BertConfig::from(model_config);
  const kit::BuildInputs in = kit::build_inputs(directory, options, "BERT", /*allows_int8=*/true);
  if (is_sequence_classifier(model_config)) return build_reranker(config, model_config, in, options);
  const loading::ModelLayout& layout = in.layout;
  const fs::path tokenizer_file = in.tokenizer_file;
  const loading::TokenizerOptions tokenizer_options = in.tokenizer_options;
  const at::ScalarType dtype = in.dtype;
  EmbedderSettings settings =
      embedder_settings(layout, config.hidden_size, static_cast<size_t>(config.max_tokens()), {PoolingMode::kMean});
  settings.tokens_per_forward = kit::tokens_per_forward(options, settings.tokens_per_forward);

  // Memory: the weights it loads, plus the activations of one forward pass of
  // tokens_per_forward tokens (hidden states, the MLP's inner layer, and attention
  // scores).
  NativeModel model;
  const double weight_bytes = kit::measure_weights(
      in.checkpoint, dtype, [&](const nn::Weights& w) { BertEncoder(config, w); }, model.warnings, in.int8);
  const double tokens = static_cast<double>(settings.tokens_per_forward);
  const double act_bytes = tokens * static_cast<double>(config.intermediate_size + 6 * config.hidden_size) * 4.0 +
                           tokens * static_cast<double>(std::min<size_t>(settings.max_seq_length, 512)) *
                               static_cast<double>(config.num_heads) * 4.0;
  const fs::path model_dir = layout.model_dir;
  const bool int8 = in.int8;
  fill_embedder_spec(model, settings, weight_bytes, act_bytes, options,
                     [model_dir, tokenizer_file, tokenizer_options, config, settings, dtype, int8](const std::string& device) {
    const at::Device dev(device);
    BertEncoder encoder(config,
                        nn::Weights::open(loading::Checkpoint::open(model_dir), dtype, dev).with_int8_linears(int8));
    return std::make_shared<SentenceEmbedder>(std::make_unique<EncoderBackbone<BertEncoder>>(std::move(encoder), dev),
                                              kit::open_tokenizer(tokenizer_file, tokenizer_options), settings);
  });
  return model;
}

}  // namespace

Family family() {
  // A JinaBert config says model_type "bert" (its remote code's convention): it
  // goes to the jinabert family. A classifier checkpoint reranks instead of embedding.
  auto serves = [types = kit::embeds_or_reranks(kit::serves_model_types(kModelTypes, "bert, roberta or xlm-roberta"))](
                    const loading::ModelConfig& config, const loading::ModelLayout& layout) {
    if (jinabert::is_jina_bert(config))
      return loading::FamilySupport::no(
          "a JinaBert config (ALiBi positions, or architectures naming JinaBert): the jinabert family's");
    if (jinav3::is_remote_code_layout(config))
      return loading::FamilySupport::no(
          "an xlm-roberta config with rotary positions is jina-embeddings-v3, not a plain XLM-R (see jinav3)");
    return types(config, layout);
  };
  return Family{"bert", {capabilities::TextEmbedding::kName, capabilities::Reranking::kName}, serves, build,
                {{"tokens_per_forward", OptionSpec::Kind::kInt,
                  "padded tokens per forward pass (default 16384): bounds activation memory"}}};
}

void register_probes() {
  // The encoder's last hidden state (float32) for given inputs.
  nn::register_probe("bert.last_hidden_state", [](const nn::ProbeInput& in) {
    const kit::ProbedModel m = kit::open_probed_model(in);
    const BertEncoder encoder(BertConfig::from(m.config), m.weights);
    c10::InferenceMode inference;
    return nn::ProbeOutput{{"last_hidden_state", encoder.forward(in.tensor("input_ids").to(at::kLong),
                                                                 in.tensor("token_type_ids").to(at::kLong),
                                                                 in.tensor("attention_mask").to(at::kLong))}};
  });
}

}  // namespace mpool::models::bert
