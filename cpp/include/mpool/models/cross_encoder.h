#pragma once
// rerank for any encoder with a sequence-classification head: the
// sentence-transformers CrossEncoder pipeline (tokenize the pair, truncate it
// longest-first, forward, activation) written once. Families supply the scorer.
#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "mpool/capabilities/interfaces.h"
#include "mpool/core/instance.h"
#include "mpool/loading/config.h"
#include "mpool/loading/layout.h"
#include "mpool/tokenizer/tokenizer.h"

namespace mpool::models {

/// token ids -> classifier logits: an encoder with its sequence-classification head.
class Scorer {
 public:
  virtual ~Scorer() = default;
  /// (b, labels) logits for right-padded (b, t) int64 ids, type ids and 0/1 mask on device().
  virtual at::Tensor forward(const at::Tensor& ids, const at::Tensor& type_ids, const at::Tensor& mask) const = 0;
  /// Where the inputs must live.
  virtual at::Device device() const = 0;
};

/// What predict() applies to the logits, as sentence-transformers' CrossEncoder.
enum class ScoreActivation { kIdentity, kSigmoid, kTanh };

/// How a cross-encoder scores pairs.
struct CrossEncoderSettings {
  size_t max_seq_length = 512;  ///< tokens of the pair, special tokens included
  int64_t num_labels = 1;
  ScoreActivation activation = ScoreActivation::kSigmoid;
  size_t tokens_per_forward = 16384;  ///< padded tokens per forward pass (bounds activation memory)
  /// Whether the pair's token type ids reach the model. transformers passes them
  /// only when the tokenizer's model_input_names has token_type_ids (BERT-style
  /// tokenizer classes; not RoBERTa's or the generic fast tokenizer's); zeros otherwise.
  bool type_ids = true;
  /// Cut too long a pair from the start (tokenizer_config.json's truncation_side "left").
  bool truncate_left = false;
  /// config_sentence_transformers.json's default prompt, put before each pair's
  /// first text (the query); empty when it names none.
  std::string prompt;
};

/// The settings of a classifier directory with `max_positions` positions:
/// labels from config.json (id2label, else num_labels, else transformers' 2);
/// the activation from config_sentence_transformers.json's or config.json's
/// sentence-transformers entry (older saves: sbert_ce_default_activation_function),
/// else sigmoid for one label and identity otherwise, as CrossEncoder does; the
/// length as sequence_limit() says; type ids as tokenizer_config.json's
/// model_input_names, else its tokenizer_class, say. An activation other than Sigmoid, Identity
/// or Tanh is InvalidInput naming the file.
CrossEncoderSettings cross_encoder_settings(const loading::ModelLayout& layout, const loading::ModelConfig& config,
                                            size_t max_positions);

/// Whether config.json names a sequence-classification architecture.
bool is_sequence_classifier(const loading::ModelConfig& config);

/// A loaded cross-encoder (reranker).
class CrossEncoder final : public core::Instance, public capabilities::Reranking {
 public:
  /// `tokenizer` must not pad: the encoder pads itself; its truncation is set per request.
  CrossEncoder(std::unique_ptr<Scorer> scorer, std::unique_ptr<tokenizer::Tokenizer> tokenizer,
               CrossEncoderSettings settings);

  at::Tensor score(const std::vector<capabilities::TextPair>& pairs, const capabilities::ScoreOptions& options,
                   capabilities::RequestContext& ctx) override;
  int64_t num_labels() const { return settings_.num_labels; }

 private:
  std::unique_ptr<Scorer> scorer_;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer_;
  CrossEncoderSettings settings_;
};

}  // namespace mpool::models
