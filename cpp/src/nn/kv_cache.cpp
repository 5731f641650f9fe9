#include "mpool/nn/kv_cache.h"

#include "mpool/base/error.h"

namespace mpool::nn {
namespace {

// Writes a and b at positions [start, start + n) along `axis` of the layer's two
// tensors and returns both for positions [first, start + n).
std::pair<at::Tensor, at::Tensor> write(LayerCache& c, int64_t axis, int64_t start, const at::Tensor& a,
                                        const at::Tensor& b, int64_t first, int64_t capacity) {
  const int64_t n = a.size(axis), total = start + n;
  check(total <= capacity, ErrorCode::kInvalidInput,
        "sequence of " + std::to_string(total) + " tokens exceeds the cache's " + std::to_string(capacity));
  c.keys.narrow(axis, start, n).copy_(a);
  c.values.narrow(axis, start, n).copy_(b);
  return {c.keys.narrow(axis, first, total - first), c.values.narrow(axis, first, total - first)};
}

}  // namespace

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
  return write(layers.at(layer), /*axis=*/2, start, k, v, first, capacity);
}

std::pair<at::Tensor, at::Tensor> KvCache::append_latent(size_t layer, int64_t start, const at::Tensor& latent,
                                                         const at::Tensor& rope_key) {
  check(kind == CacheKind::kLatent, ErrorCode::kInvalidInput, "append_latent() is for latent caches");
  return write(layers.at(layer), /*axis=*/1, start, latent, rope_key, 0, capacity);
}

}  // namespace mpool::nn
