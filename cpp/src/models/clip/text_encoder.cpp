#include "models/clip/text_encoder.h"

#include "mpool/base/error.h"
#include "mpool/models/pooling.h"

namespace mpool::models::clip {

ClipTextEncoder ClipTextEncoder::load(const nn::Weights& w, const ClipTextConfig& config, bool projected) {
  ClipTextEncoder e;
  e.config_ = config;
  // transformers writes CLIPTextModelWithProjection under text_model.; version 5
  // writes a bare CLIPTextModel without it.
  const bool nested = w.has("text_model.embeddings.token_embedding.weight");
  e.text_ = nn::TextTransformer::load(nested ? w.sub("text_model") : w, config.text);
  if (projected) e.projection_ = w.get("text_projection.weight", {config.projection_dim, config.text.hidden_size});
  return e;
}

ClipTextEncoder::Output ClipTextEncoder::encode(const at::Tensor& ids, int64_t hidden_index) const {
  check(ids.dim() == 2 && ids.scalar_type() == at::kLong, ErrorCode::kInvalidInput,
        "CLIP text encoder: ids must be (batch, tokens) int64, got " + c10::str(ids.sizes()));
  auto [last, hidden] = text_.with_hidden_state(ids, /*causal=*/true, hidden_index);
  // The pooled token: the first end-of-text id, or (configs from before
  // transformers fixed eos_token_id, which say 2) the largest id.
  const TokenPooler pooler(config_.pool_at_largest_id() ? TokenPick::kLargestId : TokenPick::kFirstId,
                           config_.eos_token_id, projection_, at::Tensor());
  const at::Tensor pooled = pooler(last, at::ones_like(ids), ids).to(last.scalar_type());
  return {hidden, pooled};
}

}  // namespace mpool::models::clip
