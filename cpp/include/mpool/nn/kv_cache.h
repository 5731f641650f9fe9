#pragma once
// The per-sequence cache of a decoder: what each layer keeps of past positions.
// Preallocated to a capacity, so a request never reallocates mid-generation.
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace mpool::nn {

/// One layer's cached state: keys and values (b, kv_heads, capacity, head_dim),
/// or, for latent attention (DeepSeek's MLA), one compressed latent
/// (b, capacity, latent_dim) plus its shared rotary key (b, capacity, rope_dim)
/// in `keys` and `values` respectively.
struct LayerCache {
  at::Tensor keys, values;
};

/// What a cache stores per layer.
enum class CacheKind {
  kKeyValue,  ///< per-head keys and values
  kLatent,    ///< a compressed latent per position (multi-head latent attention)
};

/// The cache of one sequence across every layer.
struct KvCache {
  CacheKind kind = CacheKind::kKeyValue;
  std::vector<LayerCache> layers;
  int64_t length = 0;    ///< positions filled
  int64_t capacity = 0;  ///< positions allocated
  /// The input embeddings cached, kept only by a model that must recompute the
  /// whole sequence at some length (longrope, when it crosses to its long factors).
  std::vector<at::Tensor> replay;

  /// `layers` layers of keys and values (1, kv_heads, capacity, head_dim).
  static KvCache key_value(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t capacity,
                           const at::TensorOptions& options);
  /// `layers` layers of latents (1, capacity, latent_dim) and rotary keys (1, capacity, rope_dim).
  static KvCache latent(int64_t layers, int64_t latent_dim, int64_t rope_dim, int64_t capacity,
                        const at::TensorOptions& options);

  /// Writes k and v (1, kv_heads, n, d) of layer `layer` at positions [start, start + n)
  /// and returns the keys and values of positions [first, start + n).
  std::pair<at::Tensor, at::Tensor> append(size_t layer, int64_t start, const at::Tensor& k, const at::Tensor& v,
                                           int64_t first = 0);
  /// Writes a latent cache's `latent` (1, n, latent_dim) and `rope_key` (1, n, rope_dim)
  /// of layer `layer` at positions [start, start + n) and returns both for positions
  /// [0, start + n).
  std::pair<at::Tensor, at::Tensor> append_latent(size_t layer, int64_t start, const at::Tensor& latent,
                                                  const at::Tensor& rope_key);
  /// Forgets everything (the allocation stays).
  void clear() {
    length = 0;
    replay.clear();
  }
  /// Bytes per cached position of a key/value cache (what a family budgets for).
  static double bytes_per_position(int64_t layers, int64_t kv_heads, int64_t head_dim, size_t element_size) {
    return 2.0 * static_cast<double>(layers) * static_cast<double>(kv_heads) * static_cast<double>(head_dim) *
           static_cast<double>(element_size);
  }
  /// Bytes per cached position of a latent cache.
  static double latent_bytes_per_position(int64_t layers, int64_t latent_dim, int64_t rope_dim, size_t element_size) {
    return static_cast<double>(layers) * static_cast<double>(latent_dim + rope_dim) * static_cast<double>(element_size);
  }
};

}  // namespace mpool::nn
