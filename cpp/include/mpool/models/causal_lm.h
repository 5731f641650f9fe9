#pragma once
// The interface every text-producing model implements for the shared generation
// loop (text_generator.h): extend a sequence by token ids or by embeddings, and
// get the logits of its last position. A dense decoder, a mixture-of-experts
// decoder or a latent-attention (MLA) decoder plugs in the same way; a vision
// model splices image features in through extend_embeddings.
#include <ATen/ATen.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "mpool/nn/kv_cache.h"

namespace mpool::models {

class CausalLM {
 public:
  virtual ~CausalLM() = default;
  /// An empty per-sequence cache for up to `capacity` positions, storing in
  /// `dtype` (unset: the model's dtype). The cache hands keys and values back in
  /// the dtype they were written in.
  virtual nn::KvCache new_cache(int64_t capacity, std::optional<at::ScalarType> dtype) const = 0;
  /// The blocks of a paged cache (KvCache::paged_in) for a replica's sequences.
  virtual std::shared_ptr<nn::KvBlockPool> new_block_pool(int64_t block_size, int64_t blocks,
                                                          std::optional<at::ScalarType> dtype) const = 0;
  /// Sequences of up to this many positions (prompt and output) may share a
  /// prompt prefix's blocks: a position's cached state depends only on the tokens
  /// up to it. Past it a sequence's length changes its positions' state (a
  /// length-dependent RoPE past its trained length: dynamic NTK's base, longrope's
  /// long factors), and a sequence that may grow past it neither reads nor
  /// publishes shared blocks.
  virtual int64_t prefix_reusable_positions() const { return std::numeric_limits<int64_t>::max(); }
  /// Input embeddings (n, hidden) of `ids`, in the model's dtype and device.
  virtual at::Tensor embed_tokens(const std::vector<int64_t>& ids) const = 0;
  /// Runs `embeddings` (n, hidden) after the cache's contents, appends them to the
  /// cache, and returns float32 CPU logits (vocab) of the last position.
  virtual at::Tensor extend_embeddings(const at::Tensor& embeddings, nn::KvCache& cache) const = 0;
  /// The same for token ids.
  virtual at::Tensor extend(const std::vector<int64_t>& ids, nn::KvCache& cache) const {
    return extend_embeddings(embed_tokens(ids), cache);
  }
  /// One decode step of a batch: appends ids[i] to the sequence of caches[i] for
  /// every i and returns float32 CPU logits (n, vocab) of the new positions. Row i
  /// depends on sequence i alone, to the bit: a sequence decodes the same alone or
  /// with others. The default extends each sequence in turn.
  virtual at::Tensor decode_batch(const std::vector<int64_t>& ids, const std::vector<nn::KvCache*>& caches) const {
    std::vector<at::Tensor> rows;
    for (size_t i = 0; i < ids.size(); ++i) rows.push_back(extend({ids[i]}, *caches.at(i)));
    return at::stack(rows);
  }
  virtual int64_t vocab_size() const = 0;
  virtual int64_t hidden_size() const = 0;
};

}  // namespace mpool::models
