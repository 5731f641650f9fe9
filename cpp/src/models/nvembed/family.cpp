// The NV-Embed family as a pool model: recognizes nvembed directories
// (NVEmbedModel) and builds text_embedding specs whose replicas run the
// bidirectional decoder and the latent-attention pooler under the kit's
// SentenceEmbedder. A task's prompt (config_sentence_transformers.json's
// "prompts", e.g. "Instruct: ...\nQuery: ") prefixes the text and its tokens are
// left out of the pooling; every text ends with the tokenizer's eos_token, as
// NV-Embed's encode appends it.
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <filesystem>

#include "models/nvembed/nvembed.h"
#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "mpool/models/families.h"
#include "mpool/models/kit.h"
#include "mpool/models/sentence_embedder.h"
#include "mpool/nn/probe.h"

namespace mpool::models::nvembed {
namespace {

namespace fs = std::filesystem;
namespace cap = capabilities;

// The decoder's attention scores are counted for this many queries at a time
// against the longest text (as the decoder family counts a prefill chunk's).
constexpr double kScoreRows = 512.0;

// The tokenizer's eos_token, from tokenizer_config.json or special_tokens_map.json.
std::string eos_token(const fs::path& tokenizer_dir) {
  if (auto tc = loading::load_tokenizer_config(tokenizer_dir); tc && tc->special.eos_token)
    return *tc->special.eos_token;
  if (auto sm = loading::load_special_tokens_map(tokenizer_dir); sm && sm->eos_token) return *sm->eos_token;
  throw Error(ErrorCode::kInvalidInput,
              (tokenizer_dir / "tokenizer_config.json").string() +
                  ": no eos_token (nor in special_tokens_map.json); NV-Embed appends it to every text");
}

// Bytes beyond the weights for one forward pass of `tokens` tokens: the decoder's
// residual stream and MLP, its attention scores, the pooler's queries, scores
// against the latents and GEGLU, and the latents' keys and values.
double activation_bytes(const NvEmbedConfig& c, double tokens, double max_seq_length) {
  const auto& t = c.text;
  const auto& l = c.latent;
  const double per_token = static_cast<double>(2 * t.intermediate_size + 6 * t.hidden_size +
                                               2 * l.heads * l.head_dim + l.heads * l.num_latents +
                                               3 * l.ff_mult * l.hidden_dim);
  const double scores = std::min(kScoreRows, tokens) * max_seq_length * static_cast<double>(t.num_heads);
  const double latent_kv = static_cast<double>(2 * l.heads * l.head_dim * l.num_latents);
  return (tokens * per_token + scores + latent_kv) * 4.0;
}

NativeModel build(const loading::ModelDirectory& directory, const loading::ModelConfig& model_config,
                  const NativeOptions& options) {
  const NvEmbedConfig config = NvEmbedConfig::from(model_config);
  const kit::BuildInputs in = kit::build_inputs(directory, options, "NV-Embed", /*allows_int8=*/true);
  const loading::ModelLayout& layout = in.layout;
  EmbedderSettings settings =
      embedder_settings(layout, config.text.hidden_size, static_cast<size_t>(config.text.max_position_embeddings),
                        {PoolingMode::kMean}, config.latent.hidden_dim);
  // NV-Embed's own pooling; the instruction's tokens are masked out of it.
  settings.include_prompt = false;
  settings.prompt_span = EmbedderSettings::PromptSpan::kPromptTokensOnly;
  settings.normalize = settings.normalize || config.latent.output_normalize;  // or a 2_Normalize module
  settings.suffix = eos_token(layout.tokenizer_dir);
  settings.tokens_per_forward = kit::tokens_per_forward(options, settings.tokens_per_forward);

  NativeModel model;
  model.warnings = in.warnings;
  const double weight_bytes = kit::measure_weights(
      in.checkpoint, in.dtype, [&](const nn::Weights& w) { NvEmbedNetwork(config, w); }, model.warnings, in.int8);
  const double act_bytes = activation_bytes(config, static_cast<double>(settings.tokens_per_forward),
                                            static_cast<double>(settings.max_seq_length));
  const fs::path model_dir = layout.model_dir, tokenizer_file = in.tokenizer_file;
  const loading::TokenizerOptions tokenizer_options = in.tokenizer_options;
  const at::ScalarType dtype = in.dtype;
  const bool int8 = in.int8;
  fill_embedder_spec(model, settings, weight_bytes, act_bytes, options,
                     [model_dir, tokenizer_file, tokenizer_options, config, settings, dtype,
                      int8](const std::string& device) {
    const NvEmbedNetwork net(config, nn::Weights::open(loading::Checkpoint::open(model_dir), dtype, at::Device(device))
                                         .with_int8_linears(int8));
    return std::make_shared<SentenceEmbedder>(std::make_unique<BidirectionalBackbone>(net.decoder),
                                              kit::open_tokenizer(tokenizer_file, tokenizer_options), settings,
                                              net.pooler);
  });
  return model;
}

}  // namespace

Family family() {
  return Family{"nvembed", {cap::TextEmbedding::kName}, kit::serves_model_types(kModelTypes, "nvembed"), build,
                {{"tokens_per_forward", OptionSpec::Kind::kInt,
                  "padded tokens per forward pass (default 16384): bounds activation memory"},
                 kit::tokenizer_pattern_option()}};
}

void register_probes() {
  // For right-padded "input_ids" and "attention_mask" (b, t): the bidirectional
  // decoder's last hidden state ("hidden") and the pooler's mean over
  // "pool_mask" (default: the attention mask) before normalizing ("pooled"), float32.
  nn::register_probe("nvembed.forward", [](const nn::ProbeInput& in) {
    const kit::ProbedModel m = kit::open_probed_model(in);
    const NvEmbedNetwork net(NvEmbedConfig::from(m.config), m.weights);
    c10::InferenceMode inference;
    const at::Tensor ids = in.tensor("input_ids").to(at::kLong), mask = in.tensor("attention_mask").to(at::kLong);
    at::Tensor pool_mask = in.optional_tensor("pool_mask");
    if (!pool_mask.defined()) pool_mask = mask;
    const at::Tensor hidden = net.decoder->hidden_states(ids, mask, /*causal=*/false);
    return nn::ProbeOutput{{"hidden", hidden.to(at::kFloat)}, {"pooled", (*net.pooler)(hidden, pool_mask, ids)}};
  });
}

}  // namespace mpool::models::nvembed
