#pragma once
// The BERT encoder family: bert (MiniLM, BGE, GTE, E5 checkpoints), roberta and
// xlm-roberta. One implementation read entirely from config.json; roberta-style
// models differ only in where positions start.
#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "mpool/loading/safetensors.h"
#include "mpool/models/bert/config.h"

namespace mpool::models::bert {

/// The encoder's weights and forward pass.
class BertEncoder {
 public:
  /// Loads every weight the config implies from `checkpoint`, as `dtype` on `device`.
  BertEncoder(BertConfig config, const loading::Checkpoint& checkpoint, at::ScalarType dtype, at::Device device);

  /// Last hidden state (b, t, hidden) for right-padded (b, t) int64 inputs.
  at::Tensor forward(const at::Tensor& input_ids, const at::Tensor& token_type_ids,
                     const at::Tensor& attention_mask) const;

  /// The config.
  const BertConfig& config() const noexcept { return config_; }
  /// Bytes of weights held.
  size_t weight_bytes() const noexcept { return weight_bytes_; }
  /// Warnings from loading (unexpected extra tensors, ...).
  const std::vector<std::string>& warnings() const noexcept { return warnings_; }
  /// The weight names the config implies, with `prefix`.
  static std::vector<std::string> weight_names(const BertConfig& config, const std::string& prefix);

 private:
  struct Layer {
    at::Tensor qkv_w, qkv_b, out_w, out_b, ln1_w, ln1_b, in_w, in_b, down_w, down_b, ln2_w, ln2_b;
  };
  at::Tensor activation(const at::Tensor& x) const;

  BertConfig config_;
  at::Tensor word_, position_, token_type_, emb_ln_w_, emb_ln_b_;
  std::vector<Layer> layers_;
  size_t weight_bytes_ = 0;
  std::vector<std::string> warnings_;
};

}  // namespace mpool::models::bert
