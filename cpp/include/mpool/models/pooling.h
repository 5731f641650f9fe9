#pragma once
// Sentence-embedding pooling over a model's last hidden state, as
// sentence-transformers' Pooling module does it. Shared by every family that
// serves text_embedding (encoders, and decoders used as embedders).
#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace mpool::models {

/// One pooling strategy.
enum class PoolingMode { kCls, kMean, kMax, kMeanSqrtLen, kWeightedMean, kLastToken };

/// Parses a mode string ("mean", "cls", "max", "mean_sqrt_len_tokens",
/// "weightedmean", "lasttoken"; several joined by "+" are concatenated, as
/// sentence-transformers does).
std::vector<PoolingMode> parse_pooling_modes(const std::string& modes, const std::string& source);

/// (b, t, h) hidden states and (b, t) 0/1 mask -> (b, h * modes) float32, as
/// sentence-transformers 6 pools right-padded rows: "cls" takes the first
/// position the mask keeps and "lasttoken" the last (so prompt tokens masked
/// out are skipped), "weightedmean" weighs position p (from 1) by p.
at::Tensor pool(const at::Tensor& hidden, const at::Tensor& mask, const std::vector<PoolingMode>& modes);

/// How an embedder turns a batch's hidden states into sentence vectors. The
/// sentence-transformers modes are one implementation; a learned pooler (such as
/// NV-Embed's latent attention) is another, with weights of its own.
class Pooler {
 public:
  virtual ~Pooler() = default;
  /// (b, t, h) hidden states, (b, t) 0/1 mask (prompt tokens already masked out
  /// when the model excludes them) and the (b, t) int64 input ids (right-padded)
  /// -> (b, dimension) float32.
  virtual at::Tensor operator()(const at::Tensor& hidden, const at::Tensor& mask, const at::Tensor& ids) const = 0;
  /// The output width for hidden states of width `hidden`.
  virtual int64_t dimension(int64_t hidden) const = 0;
};

/// sentence-transformers' Pooling module: the modes, concatenated.
class ModePooler final : public Pooler {
 public:
  explicit ModePooler(std::vector<PoolingMode> modes) : modes_(std::move(modes)) {}
  at::Tensor operator()(const at::Tensor& hidden, const at::Tensor& mask, const at::Tensor&) const override {
    return pool(hidden, mask, modes_);
  }
  int64_t dimension(int64_t hidden) const override { return hidden * static_cast<int64_t>(modes_.size()); }

 private:
  std::vector<PoolingMode> modes_;
};

/// Which token a two-tower text encoder's pooled output is read at.
enum class TokenPick {
  kFirstId,    ///< the first position holding `id` (CLIP's eos_token_id; position 0 when absent)
  kLargestId,  ///< the first position of the largest id (CLIP configs whose eos_token_id is 2)
  kLast,       ///< the last position (SigLIP, whose texts are padded to the model's length)
};

/// The hidden state at one token per row, then an optional linear projection
/// (CLIP's text_projection, SigLIP's head): the text towers' pooling.
class TokenPooler final : public Pooler {
 public:
  /// `weight` (out, h) and `bias` (out) may be undefined (no projection / no bias).
  TokenPooler(TokenPick pick, int64_t id, at::Tensor weight, at::Tensor bias)
      : pick_(pick), id_(id), weight_(std::move(weight)), bias_(std::move(bias)) {}
  at::Tensor operator()(const at::Tensor& hidden, const at::Tensor& mask, const at::Tensor& ids) const override;
  int64_t dimension(int64_t hidden) const override { return weight_.defined() ? weight_.size(0) : hidden; }

 private:
  TokenPick pick_;
  int64_t id_;
  at::Tensor weight_, bias_;
};

}  // namespace mpool::models
