// The ModernBERT family as a pool model: recognizes modernbert directories and
// builds text_embedding specs whose replicas run the encoder under the kit's
// SentenceEmbedder (the sentence-transformers layout: pooling, normalize,
// max_seq_length, prompts; mean pooling when the folder has none), or, for a
// ModernBertForSequenceClassification, rerank specs under the kit's CrossEncoder.
#include <algorithm>
#include <filesystem>

#include <c10/core/InferenceMode.h>

#include "models/modernbert/modernbert.h"
#include "mpool/base/error.h"
#include "mpool/models/cross_encoder.h"
#include "mpool/models/families.h"
#include "mpool/models/kit.h"
#include "mpool/models/sentence_embedder.h"
#include "mpool/nn/probe.h"

namespace mpool::models::modernbert {
namespace {

namespace fs = std::filesystem;

class ModernBertBackbone final : public Backbone {
 public:
  ModernBertBackbone(ModernBertEncoder encoder, at::Device device) : encoder_(std::move(encoder)), device_(device) {}
  at::Tensor forward(const at::Tensor& ids, const at::Tensor& /*types: ModernBERT has none*/,
                     const at::Tensor& mask) const override {
    return encoder_.forward(ids, mask);
  }
  at::Device device() const override { return device_; }

 private:
  ModernBertEncoder encoder_;
  at::Device device_;
};

class ModernBertScorer final : public Scorer {
 public:
  ModernBertScorer(ModernBertEncoder encoder, ModernBertClassifier head, at::Device device)
      : encoder_(std::move(encoder)), head_(std::move(head)), device_(device) {}
  at::Tensor forward(const at::Tensor& ids, const at::Tensor& /*types: ModernBERT has none*/,
                     const at::Tensor& mask) const override {
    return head_(encoder_.forward(ids, mask), mask);
  }
  at::Device device() const override { return device_; }

 private:
  ModernBertEncoder encoder_;
  ModernBertClassifier head_;
  at::Device device_;
};

// Activation bytes of one forward pass of `tokens` tokens: hidden states, q/k/v
// and the GeGLU's two halves, the local layers' mask or key windows, and
// attention scores where a backend materializes them (bounded as the BERT family's).
double activation_bytes(const ModernBertConfig& config, double tokens, size_t max_seq_length) {
  const double window = static_cast<double>(std::min<int64_t>(
      static_cast<int64_t>(max_seq_length), std::max<int64_t>(4 * config.local_attention, 64)));
  return tokens * static_cast<double>(3 * config.intermediate_size + 10 * config.hidden_size) * 4.0 +
         tokens * window + tokens * static_cast<double>(std::min<size_t>(max_seq_length, 512)) *
                               static_cast<double>(config.num_heads) * 4.0;
}

// A ModernBertForSequenceClassification checkpoint: a cross-encoder serving rerank.
NativeModel build_reranker(const ModernBertConfig& config, const loading::ModelConfig& model_config,
                           const kit::BuildInputs& in, const NativeOptions& options) {
  CrossEncoderSettings settings =
      cross_encoder_settings(in.layout, model_config, static_cast<size_t>(config.max_position_embeddings));
  settings.tokens_per_forward = kit::tokens_per_forward(options, settings.tokens_per_forward);
  const int64_t labels = settings.num_labels;
  NativeModel model;
  const double weight_bytes = kit::measure_weights(
      in.checkpoint, in.dtype,
      [&](const nn::Weights& w) {
        ModernBertEncoder(config, w);
        ModernBertClassifier(config, w, labels);
      },
      model.warnings, in.int8);
  const double act_bytes =
      activation_bytes(config, static_cast<double>(settings.tokens_per_forward), settings.max_seq_length);
  const fs::path model_dir = in.layout.model_dir, tokenizer_file = in.tokenizer_file;
  const loading::TokenizerOptions tokenizer_options = in.tokenizer_options;
  const at::ScalarType dtype = in.dtype;
  const bool int8 = in.int8;
  kit::fill_spec(model, capabilities::Reranking::kName, weight_bytes, act_bytes, settings.tokens_per_forward, options,
                 [model_dir, tokenizer_file, tokenizer_options, config, settings, dtype,
                  int8](const std::string& device) {
    const at::Device dev(device);
    const nn::Weights w = nn::Weights::open(loading::Checkpoint::open(model_dir), dtype, dev).with_int8_linears(int8);
    auto scorer = std::make_unique<ModernBertScorer>(ModernBertEncoder(config, w),
                                                     ModernBertClassifier(config, w, settings.num_labels), dev);
    return std::make_shared<CrossEncoder>(std::move(scorer), kit::open_tokenizer(tokenizer_file, tokenizer_options),
                                          settings);
  });
  return model;
}

NativeModel build(const loading::ModelDirectory& directory, const loading::ModelConfig& model_config,
                  const NativeOptions& options) {
  const ModernBertConfig config = ModernBertConfig::from(model_config);
  const kit::BuildInputs in = kit::build_inputs(directory, options, "ModernBERT", /*allows_int8=*/true);
  if (is_sequence_classifier(model_config)) return build_reranker(config, model_config, in, options);
  const loading::ModelLayout& layout = in.layout;
  const fs::path tokenizer_file = in.tokenizer_file;
  const at::ScalarType dtype = in.dtype;
  EmbedderSettings settings = embedder_settings(layout, config.hidden_size,
                                                static_cast<size_t>(config.max_position_embeddings), {PoolingMode::kMean});
  settings.tokens_per_forward = kit::tokens_per_forward(options, settings.tokens_per_forward);

  // Memory: the weights it loads, plus the activations of one forward pass of
  // tokens_per_forward tokens: hidden states, q/k/v and the GeGLU's two halves,
  // the local layers' mask or key windows, and attention scores where a
  // backend materializes them (bounded as the BERT family's).
  NativeModel model;
  const double weight_bytes = kit::measure_weights(
      in.checkpoint, dtype, [&](const nn::Weights& w) { ModernBertEncoder(config, w); }, model.warnings, in.int8);
  const double act_bytes =
      activation_bytes(config, static_cast<double>(settings.tokens_per_forward), settings.max_seq_length);
  const fs::path model_dir = layout.model_dir;
  const loading::TokenizerOptions tokenizer_options = in.tokenizer_options;
  const bool int8 = in.int8;
  fill_embedder_spec(model, settings, weight_bytes, act_bytes, options,
                     [model_dir, tokenizer_file, tokenizer_options, config, settings, dtype,
                      int8](const std::string& device) {
    const at::Device dev(device);
    ModernBertEncoder encoder(config,
                              nn::Weights::open(loading::Checkpoint::open(model_dir), dtype, dev).with_int8_linears(int8));
    return std::make_shared<SentenceEmbedder>(std::make_unique<ModernBertBackbone>(std::move(encoder), dev),
                                              kit::open_tokenizer(tokenizer_file, tokenizer_options), settings);
  });
  return model;
}

LocalAttention parse_local_mode(const std::string& name) {
  if (name == "auto") return LocalAttention::kAuto;
  if (name == "dense") return LocalAttention::kDense;
  if (name == "blocked") return LocalAttention::kBlocked;
  throw Error(ErrorCode::kInvalidInput, "local_attention must be 'auto', 'dense' or 'blocked', got '" + name + "'");
}

}  // namespace

Family family() {
  return Family{"modernbert", {capabilities::TextEmbedding::kName, capabilities::Reranking::kName},
                kit::embeds_or_reranks(kit::serves_model_types(kModelTypes, "modernbert")), build,
                {{"tokens_per_forward", OptionSpec::Kind::kInt,
                  "padded tokens per forward pass (default 16384): bounds activation memory"}}};
}

void register_probes() {
  // The encoder's last hidden state (float32; zeros at padded positions) for
  // given inputs; option "local_attention" ("auto", "dense", "blocked") picks how
  // the local layers attend.
  nn::register_probe("modernbert.last_hidden_state", [](const nn::ProbeInput& in) {
    const kit::ProbedModel m = kit::open_probed_model(in);
    ModernBertEncoder encoder(ModernBertConfig::from(m.config), m.weights);
    encoder.set_local_attention(parse_local_mode(in.get_or<std::string>("local_attention", "auto")));
    const at::Tensor mask = in.optional_tensor("attention_mask");
    c10::InferenceMode inference;
    return nn::ProbeOutput{{"last_hidden_state", encoder.forward(in.tensor("input_ids").to(at::kLong),
                                                                 mask.defined() ? mask.to(at::kLong) : mask)}};
  });
}

}  // namespace mpool::models::modernbert
