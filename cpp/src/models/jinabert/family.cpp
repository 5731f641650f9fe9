// The JinaBert family (jina-embeddings-v2) as a pool model: recognizes JinaBert
// directories (config.h: is_jina_bert) and builds text_embedding specs whose
// replicas run the encoder under the kit's SentenceEmbedder, mean-pooled unless
// the directory's sentence-transformers files say otherwise.
#include <algorithm>
#include <filesystem>

#include <c10/core/InferenceMode.h>

#include "models/jinabert/jinabert.h"
#include "mpool/base/error.h"
#include "mpool/models/families.h"
#include "mpool/models/kit.h"
#include "mpool/models/sentence_embedder.h"
#include "mpool/nn/probe.h"

namespace mpool::models::jinabert {
namespace {

namespace fs = std::filesystem;

NativeModel build(const loading::ModelDirectory& directory, const loading::ModelConfig& model_config,
                  const NativeOptions& options) {
  const JinaBertConfig config = JinaBertConfig::from(model_config);
  const kit::BuildInputs in = kit::build_inputs(directory, options, "JinaBert", /*allows_int8=*/true);
  const loading::ModelLayout& layout = in.layout;
  const fs::path tokenizer_file = in.tokenizer_file;
  const loading::TokenizerOptions tokenizer_options = in.tokenizer_options;
  const at::ScalarType dtype = in.dtype;
  EmbedderSettings settings =
      embedder_settings(layout, config.hidden_size, static_cast<size_t>(config.max_tokens()), {PoolingMode::kMean});
  settings.tokens_per_forward = kit::tokens_per_forward(options, settings.tokens_per_forward);

  // Memory: the weights it loads, plus the activations of one forward pass of
  // tokens_per_forward tokens (hidden states, the feed-forward's inner layer, twice
  // as wide when gated), and one query block's bias, mask and scores (at most
  // kDefaultScoreElements each, float32).
  NativeModel model;
  const double weight_bytes = kit::measure_weights(
      in.checkpoint, dtype, [&](const nn::Weights& w) { JinaBertEncoder(config, w); }, model.warnings, in.int8);
  const double tokens = static_cast<double>(settings.tokens_per_forward);
  const double inner = static_cast<double>(config.intermediate_size) *
                       (config.feed_forward == FeedForwardType::kOriginal ? 1.0 : 3.0);
  const double act_bytes = tokens * (inner + 6.0 * static_cast<double>(config.hidden_size)) * 4.0 +
                           3.0 * static_cast<double>(kDefaultScoreElements) * 4.0;
  const fs::path model_dir = layout.model_dir;
  const bool int8 = in.int8;
  fill_embedder_spec(model, settings, weight_bytes, act_bytes, options,
                     [model_dir, tokenizer_file, tokenizer_options, config, settings, dtype, int8](const std::string& device) {
    const at::Device dev(device);
    JinaBertEncoder encoder(config,
                            nn::Weights::open(loading::Checkpoint::open(model_dir), dtype, dev).with_int8_linears(int8));
    return std::make_shared<SentenceEmbedder>(std::make_unique<EncoderBackbone<JinaBertEncoder>>(std::move(encoder), dev),
                                              kit::open_tokenizer(tokenizer_file, tokenizer_options), settings);
  });
  return model;
}

}  // namespace

Family family() {
  auto serves = [types = kit::serves_model_types(kModelTypes, "bert or jina_bert")](
                    const loading::ModelConfig& c, const loading::ModelLayout& layout) {
    if (c.model_type == "bert" && !is_jina_bert(c))
      return loading::FamilySupport::no(
          "model_type 'bert' without \"position_embedding_type\": \"alibi\" or a JinaBert architecture is a plain "
          "BERT (the bert family's)");
    return types(c, layout);
  };
  return Family{"jinabert", {capabilities::TextEmbedding::kName}, serves, build,
                {{"tokens_per_forward", OptionSpec::Kind::kInt,
                  "padded tokens per forward pass (default 16384): bounds activation memory"}}};
}

void register_probes() {
  // The encoder's last hidden state for given inputs; "score_elements" bounds one
  // query block's attention scores (default kDefaultScoreElements), so a test can
  // run the blocked path on short inputs.
  nn::register_probe("jinabert.last_hidden_state", [](const nn::ProbeInput& in) {
    const kit::ProbedModel m = kit::open_probed_model(in);
    const JinaBertEncoder encoder(JinaBertConfig::from(m.config), m.weights,
                                  in.get_or<int64_t>("score_elements", kDefaultScoreElements));
    c10::InferenceMode inference;
    return nn::ProbeOutput{{"last_hidden_state", encoder.forward(in.tensor("input_ids").to(at::kLong),
                                                                 in.tensor("token_type_ids").to(at::kLong),
                                                                 in.tensor("attention_mask").to(at::kLong))}};
  });
}

}  // namespace mpool::models::jinabert
