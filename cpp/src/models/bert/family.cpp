// The BERT family as a pool model: recognizes bert/roberta/xlm-roberta
// directories and builds text_embedding specs whose replicas run the encoder.
#include <algorithm>
#include <filesystem>

#include "mpool/core/error.h"
#include "mpool/loading/tensors.h"
#include "mpool/models/bert/bert.h"
#include "mpool/models/families.h"
#include "mpool/models/sentence_embedder.h"

namespace mpool::models::bert {
namespace {

namespace fs = std::filesystem;

class BertBackbone final : public Backbone {
 public:
  BertBackbone(BertEncoder encoder, at::Device device) : encoder_(std::move(encoder)), device_(device) {}
  at::Tensor forward(const at::Tensor& ids, const at::Tensor& types, const at::Tensor& mask) const override {
    return encoder_.forward(ids, types, mask);
  }
  at::Device device() const override { return device_; }

 private:
  BertEncoder encoder_;
  at::Device device_;
};

EmbedderSettings settings_for(const loading::ModelLayout& layout, const BertConfig& config) {
  // Positions bound the length; roberta spends pad_token_id + 1 of them on the offset.
  int64_t positions = config.max_position_embeddings - (config.padding_offset_positions ? config.pad_token_id + 1 : 0);
  return embedder_settings(layout, config.hidden_size, static_cast<size_t>(positions), {PoolingMode::kMean});
}

NativeModel build(const loading::ModelLayout& layout, const loading::ModelConfig& model_config,
                  const NativeOptions& options) {
  BertConfig config = BertConfig::from(model_config);
  const fs::path tokenizer_file = layout.tokenizer_dir / "tokenizer.json";
  check(fs::is_regular_file(tokenizer_file), ErrorCode::kInvalidInput,
        tokenizer_file.string() + " is missing: mpool needs the tokenizer.json form of the tokenizer");
  std::string dtype_name = options.dtype.value_or("float32");
  auto dtype = loading::parse_scalar_type(dtype_name);
  check(dtype && (*dtype == at::kFloat || *dtype == at::kBFloat16 || *dtype == at::kHalf), ErrorCode::kInvalidInput,
        "dtype '" + dtype_name + "' is not supported for BERT models (float32, bfloat16, float16)");
  EmbedderSettings settings = settings_for(layout, config);

  // Memory: the weights at the target dtype, plus the activations of one forward
  // pass of tokens_per_forward tokens (hidden states, the MLP's inner layer, and
  // attention scores), plus the tokenizer and allocator slack.
  auto checkpoint = loading::Checkpoint::open(layout.model_dir);
  double weight_bytes = 0;
  const size_t elem = at::elementSize(*dtype);
  for (const auto& name : checkpoint.names()) {
    weight_bytes += static_cast<double>(checkpoint.require(name).info->numel()) * static_cast<double>(elem);
  }
  const double tokens = static_cast<double>(settings.tokens_per_forward);
  const double act_bytes = tokens * static_cast<double>(config.intermediate_size + 6 * config.hidden_size) * 4.0 +
                           tokens * static_cast<double>(std::min<size_t>(settings.max_seq_length, 512)) *
                               static_cast<double>(config.num_heads) * 4.0;
  const double weight_mb = weight_bytes / (1024.0 * 1024.0);
  const double memory_mb = weight_mb + act_bytes / (1024.0 * 1024.0) + 64.0;

  NativeModel model;
  model.weight_mb = weight_mb;
  model.warnings = checkpoint.warnings();
  core::ModelSpec& spec = model.spec;
  spec.capabilities = {capabilities::TextEmbedding::kName};
  spec.memory_mb = memory_mb;
  spec.devices = options.devices;
  spec.batch_budget = settings.tokens_per_forward;
  const fs::path model_dir = layout.model_dir;
  const at::ScalarType target = *dtype;
  spec.loader = [model_dir, tokenizer_file, config, settings, target](const std::string& device) {
    at::Device dev(device);
    auto ckpt = loading::Checkpoint::open(model_dir);
    BertEncoder encoder(config, ckpt, target, dev);
    auto tok = tokenizer::Tokenizer::from_file(tokenizer_file.string());
    return std::make_shared<SentenceEmbedder>(std::make_unique<BertBackbone>(std::move(encoder), dev), std::move(tok),
                                              settings);
  };
  return model;
}

}  // namespace

Family family() {
  Family f;
  f.name = "bert";
  f.capabilities = {capabilities::TextEmbedding::kName};
  f.supports = [](const loading::ModelConfig& c, const loading::ModelLayout& layout) {
    if (std::find(kModelTypes.begin(), kModelTypes.end(), c.model_type) == kModelTypes.end())
      return loading::FamilySupport::no("model_type '" + c.model_type + "' is not bert, roberta or xlm-roberta");
    if (layout.weights.format == loading::WeightsFormat::kNone)
      return loading::FamilySupport::no("no weights found in " + layout.model_dir.string());
    return loading::FamilySupport::yes();
  };
  f.build = build;
  return f;
}

}  // namespace mpool::models::bert
