#include "mpool/models/pooling.h"

#include <sstream>

#include "mpool/base/error.h"

namespace mpool::models {

std::vector<PoolingMode> parse_pooling_modes(const std::string& modes, const std::string& source) {
  std::vector<PoolingMode> out;
  std::stringstream list(modes);
  std::string m;
  while (std::getline(list, m, '+')) {
    if (m == "cls") out.push_back(PoolingMode::kCls);
    else if (m == "mean") out.push_back(PoolingMode::kMean);
    else if (m == "max") out.push_back(PoolingMode::kMax);
    else if (m == "mean_sqrt_len_tokens") out.push_back(PoolingMode::kMeanSqrtLen);
    else if (m == "weightedmean") out.push_back(PoolingMode::kWeightedMean);
    else if (m == "lasttoken") out.push_back(PoolingMode::kLastToken);
    else
      throw Error(ErrorCode::kInvalidInput, source + ": pooling mode '" + m +
                                                "' is not supported (supported: cls, mean, max, "
                                                "mean_sqrt_len_tokens, weightedmean, lasttoken)");
  }
  check(!out.empty(), ErrorCode::kInvalidInput, source + ": no pooling mode");
  return out;
}

at::Tensor pool(const at::Tensor& hidden_in, const at::Tensor& mask_in, const std::vector<PoolingMode>& modes) {
  at::Tensor hidden = hidden_in.to(at::kFloat);
  at::Tensor mask = mask_in.to(hidden.device(), at::kFloat).unsqueeze(-1);  // (b, t, 1)
  at::Tensor counts = mask.sum(1).clamp_min(1e-9);                           // (b, 1)
  std::vector<at::Tensor> parts;
  const int64_t width = hidden.size(2);
  auto at_positions = [&](const at::Tensor& index) {  // (b) -> (b, h)
    return hidden.gather(1, index.to(at::kLong).view({-1, 1, 1}).expand({-1, 1, width})).squeeze(1);
  };
  for (auto mode : modes) {
    switch (mode) {
      case PoolingMode::kCls:
        // argmax gives the first of equal maxima: the first kept position.
        parts.push_back(at_positions(mask.squeeze(-1).argmax(1)));
        break;
      case PoolingMode::kMean:
        parts.push_back((hidden * mask).sum(1) / counts);
        break;
      case PoolingMode::kMeanSqrtLen:
        parts.push_back((hidden * mask).sum(1) / counts.sqrt());
        break;
      case PoolingMode::kWeightedMean: {
        const at::Tensor weights = at::arange(1, hidden.size(1) + 1, hidden.options()).view({1, -1, 1}) * mask;
        parts.push_back((hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9));
        break;
      }
      case PoolingMode::kMax:
        // Padding must never win the max: sentence-transformers uses -1e9 there.
        parts.push_back(hidden.masked_fill(mask.eq(0), -1e9).amax(1));
        break;
      case PoolingMode::kLastToken: {
        // The last kept position of each row; a row that keeps none gives zeros.
        const at::Tensor kept = mask.squeeze(-1);
        auto [any, from_end] = kept.flip(1).max(1);
        const at::Tensor last = (hidden.size(1) - 1) - from_end;
        parts.push_back(at_positions(last) * any.unsqueeze(1));
        break;
      }
    }
  }
  return parts.size() == 1 ? parts[0] : at::cat(parts, 1);
}

at::Tensor TokenPooler::operator()(const at::Tensor& hidden, const at::Tensor& mask, const at::Tensor& ids) const {
  at::Tensor index;
  switch (pick_) {
    // argmax returns the first of equal maxima, as transformers relies on.
    case TokenPick::kFirstId: index = ids.eq(id_).to(at::kInt).argmax(1); break;
    case TokenPick::kLargestId: index = ids.masked_fill(mask.eq(0), -1).argmax(1); break;
    case TokenPick::kLast: index = at::full({hidden.size(0)}, hidden.size(1) - 1, ids.options()); break;
  }
  at::Tensor picked = hidden.gather(1, index.to(at::kLong).view({-1, 1, 1}).expand({-1, 1, hidden.size(2)})).squeeze(1);
  if (weight_.defined()) picked = at::linear(picked, weight_, bias_);
  return picked.to(at::kFloat);
}

}  // namespace mpool::models
