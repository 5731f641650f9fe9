#pragma once
// text_embedding for any backbone that maps token ids to hidden states: the
// sentence-transformers pipeline (prompt, tokenize, truncate, forward, pool,
// normalize) written once. Families supply the backbone.
#include <ATen/ATen.h>

#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mpool/capabilities/interfaces.h"
#include "mpool/core/instance.h"
#include "mpool/loading/layout.h"
#include "mpool/models/families.h"
#include "mpool/models/pooling.h"
#include "mpool/nn/linear.h"
#include "mpool/tokenizer/tokenizer.h"

namespace mpool::models {

/// token ids -> last hidden state.
class Backbone {
 public:
  virtual ~Backbone() = default;
  /// (b, t, h) for right-padded (b, t) int64 ids, type ids and 0/1 mask on device().
  virtual at::Tensor forward(const at::Tensor& ids, const at::Tensor& type_ids, const at::Tensor& mask) const = 0;
  /// Where the inputs must live.
  virtual at::Device device() const = 0;
};

/// The Backbone of an encoder whose forward(ids, type_ids, mask) returns the last
/// hidden state (the BERT-style families).
template <class Encoder>
class EncoderBackbone final : public Backbone {
 public:
  EncoderBackbone(Encoder encoder, at::Device device) : encoder_(std::move(encoder)), device_(device) {}
  at::Tensor forward(const at::Tensor& ids, const at::Tensor& types, const at::Tensor& mask) const override {
    return encoder_.forward(ids, types, mask);
  }
  at::Device device() const override { return device_; }

 private:
  Encoder encoder_;
  at::Device device_;
};

/// The activations a sentence-transformers Dense module may name (its torch class).
enum class DenseActivation { kIdentity, kTanh, kRelu, kGelu, kSigmoid, kSilu };

/// A sentence-transformers Dense module after pooling, checked against the
/// embedding it receives: y = act(x W^T + b), plus x (or x R^T) with a residual.
struct DenseStep {
  std::filesystem::path dir;  ///< its folder: the weights (linear.weight, linear.bias, residual.weight)
  std::string config_file;    ///< for errors
  int64_t in_features = 0;
  int64_t out_features = 0;
  bool bias = true;
  DenseActivation activation = DenseActivation::kTanh;
  bool residual = false;
  /// Its float32 weights' size in bytes: the linear layer, its bias, and the
  /// residual projection when the widths differ.
  double weight_bytes() const;
};

/// A Dense module's weights on a device (float32), applied to pooled embeddings.
class DenseLayer {
 public:
  /// Loads `step`'s weights; InvalidInput names the file and tensor when one is
  /// missing or of the wrong shape (a meta device checks them without reading).
  static DenseLayer load(const DenseStep& step, at::Device device);
  /// (b, in_features) -> (b, out_features) float32.
  at::Tensor operator()(const at::Tensor& x) const;

 private:
  nn::Linear linear_;
  nn::Linear projection_;  ///< the residual's, when the widths differ
  DenseActivation activation_ = DenseActivation::kTanh;
  bool residual_ = false;
};

/// How a model turns hidden states into sentence embeddings (from the
/// sentence-transformers layout, or family defaults).
struct EmbedderSettings {
  std::vector<PoolingMode> pooling{PoolingMode::kMean};
  bool include_prompt = true;
  /// How many leading positions a prompt left out of pooling covers.
  enum class PromptSpan {
    kSentenceTransformers,  ///< the tokenized prompt, less a closing special token if it has one
    kPromptTokensOnly,      ///< len(tokenizer.tokenize(prompt)): the prompt's own tokens (NV-Embed's encode)
  };
  PromptSpan prompt_span = PromptSpan::kSentenceTransformers;
  bool normalize = false;
  size_t max_seq_length = 512;
  /// Cut too long an input from its start (tokenizer_config.json's
  /// truncation_side "left"), keeping its special tokens, as the tokenizer would.
  bool truncate_left = false;
  std::map<std::string, std::string> prompts;
  std::optional<std::string> default_prompt_name;
  /// Appended to every text (after its prompt and the text): NV-Embed's encode
  /// appends the tokenizer's eos_token.
  std::string suffix;
  int64_t dimension = 0;
  size_t tokens_per_forward = 16384;  ///< padded tokens per forward pass (bounds activation memory)
  /// Pad every text to max_seq_length with this id, and feed the padding as
  /// input (mask all ones): what SigLIP's processor does and its model expects.
  std::optional<int64_t> pad_to_max_length_with;
  /// config.json's "matryoshka_dimensions": the truncation widths the model supports.
  std::vector<int64_t> matryoshka_dimensions;
  /// The LoRA adapters the backbone has attached (nn/lora.h), by index: a task
  /// that names one (loading::adapter_serves_task) runs its forward passes with it.
  std::vector<std::string> adapters;
  /// sentence-transformers Dense modules, applied in order to the pooled
  /// embedding before it is normalized; `dimension` is the last one's width.
  std::vector<DenseStep> dense;
  /// The Dense modules' weights in bytes: what a replica holds beside the
  /// backbone's (each family adds it to its memory estimate).
  double dense_weight_bytes() const;
};

/// A text embedder's spec: its weights (the backbone's `backbone_bytes` plus
/// the Dense modules' of `settings`), one forward pass's `activation_bytes`,
/// the text_embedding capability, a batch budget of tokens_per_forward, the
/// devices `options` name, and `loader`.
void fill_embedder_spec(NativeModel& model, const EmbedderSettings& settings, double backbone_bytes,
                        double activation_bytes, const NativeOptions& options, core::Loader loader);

/// How inputs sorted by length (`widths`, ascending: each input's padded width)
/// split into forward passes: [begin, end) ranges in order. Each pass pads its
/// rows to its widest and holds at most `budget` padded tokens (a wider input
/// than the budget runs alone). The split minimizes padded tokens plus a fixed
/// cost per pass (`pass_cost`, in tokens: the per-call overhead), so a batch of
/// short texts never pads to one long one just because the budget allows it.
std::vector<std::pair<size_t, size_t>> plan_forward_passes(const std::vector<size_t>& widths, size_t budget,
                                                           size_t pass_cost = 64);

/// The longest input, in tokens, of a model with `max_positions` positions: also
/// bounded by tokenizer_config.json's model_max_length and the
/// sentence-transformers max_seq_length when the directory has them.
size_t sequence_limit(const loading::ModelLayout& layout, size_t max_positions);

/// The settings of a model directory: the sentence-transformers files (pooling,
/// Dense modules, normalize, max_seq_length, prompts) when `layout` has them,
/// over the family's `default_pooling`; the length is also bounded by
/// tokenizer_config.json. A modules.json that lists a module mpool does not run
/// (anything but Transformer, Pooling, Dense and Normalize, in that order) is an
/// InvalidInput naming it, never silently skipped. `pooled_dimension` is the
/// width of a family's own pooler (NV-Embed's latent attention, a text tower's
/// projection); by default hidden_size times the pooling modes. Dense modules
/// take it from there, and `dimension` is the last one's width.
EmbedderSettings embedder_settings(const loading::ModelLayout& layout, int64_t hidden_size, size_t max_seq_length,
                                   std::vector<PoolingMode> default_pooling,
                                   std::optional<int64_t> pooled_dimension = std::nullopt);

/// A loaded text-embedding model.
class SentenceEmbedder final : public core::Instance, public capabilities::TextEmbedding {
 public:
  /// `tokenizer` must not truncate or pad: the embedder does both itself.
  /// `pooler` null: the settings' pooling modes (ModePooler).
  SentenceEmbedder(std::unique_ptr<Backbone> backbone, std::unique_ptr<tokenizer::Tokenizer> tokenizer,
                   EmbedderSettings settings, std::shared_ptr<const Pooler> pooler = nullptr);

  at::Tensor embed(const std::vector<std::string>& texts, const capabilities::EmbedOptions& options,
                   capabilities::RequestContext& ctx) override;
  int64_t dimension() const override { return settings_.dimension; }
  bool normalizes() const override { return settings_.normalize; }
  std::vector<int64_t> supported_dimensions() const override { return settings_.matryoshka_dimensions; }

 private:
  std::unique_ptr<Backbone> backbone_;
  std::unique_ptr<tokenizer::Tokenizer> full_;
  EmbedderSettings settings_;
  std::shared_ptr<const Pooler> pooler_;
  std::vector<DenseLayer> dense_;
};

}  // namespace mpool::models
