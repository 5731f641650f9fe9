#include "mpool/nn/kv_cache.h"

#include "mpool/base/error.h"

namespace mpool::nn {

KvCache KvCache::key_value(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t capacity,
                           const at::TensorOptions& options) {
  KvCache c;
  c.capacity = capacity;
  for (int64_t i = 0; i < layers; ++i)
    c.layers.push_back({at::empty({1, kv_heads, capacity, head_dim}, options),
                        at::empty({1, kv_heads, capacity, head_dim}, options)});
  return c;
}

KvCache KvCache::latent(int64_t layers, int64_t latent_dim, int64_t rope_dim, int64_t capacity,
                        const at::TensorOptions& options) {
  KvCache c;
  c.kind = CacheKind::kLatent;
  c.capacity = capacity;
  for (int64_t i = 0; i < layers; ++i)
    c.layers.push_back({at::empty({1, capacity, latent_dim}, options), at::empty({1, capacity, rope_dim}, options)});
  return c;
}

std::pair<at::Tensor, at::Tensor> KvCache::append(size_t layer, int64_t start, const at::Tensor& k,
                                                  const at::Tensor& v, int64_t first) {
  check(kind == CacheKind::kKeyValue, ErrorCode::kInvalidInput, "append() is for key/value caches");
  const int64_t n = k.size(2), total = start + n;
  check(total <= capacity, ErrorCode::kInvalidInput,
        "sequence of " + std::to_string(total) + " tokens exceeds the cache's " + std::to_string(capacity));
  LayerCache& c = layers.at(layer);
  c.keys.narrow(2, start, n).copy_(k);
  c.values.narrow(2, start, n).copy_(v);
  return {c.keys.narrow(2, first, total - first), c.values.narrow(2, first, total - first)};
}

}  // namespace mpool::nn
