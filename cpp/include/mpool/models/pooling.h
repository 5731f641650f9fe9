#pragma once
// Sentence-embedding pooling over a model's last hidden state, as
// sentence-transformers' Pooling module does it. Shared by every family that
// serves text_embedding (encoders, and decoders used as embedders).
#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace mpool::models {

/// One pooling strategy.
enum class PoolingMode { kCls, kMean, kMax, kMeanSqrtLen, kLastToken };

/// Parses a mode string ("mean", "cls", "max", "mean_sqrt_len_tokens", "lasttoken";
/// several joined by "+" are concatenated, as sentence-transformers does).
std::vector<PoolingMode> parse_pooling_modes(const std::string& modes, const std::string& source);

/// (b, t, h) hidden states and (b, t) 0/1 mask -> (b, h * modes) float32.
at::Tensor pool(const at::Tensor& hidden, const at::Tensor& mask, const std::vector<PoolingMode>& modes);

}  // namespace mpool::models
