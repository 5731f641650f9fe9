#pragma once
// The per-sequence cache of a decoder: what each layer keeps of past positions.
// Preallocated to a capacity, so a request never reallocates mid-generation.
#include <ATen/ATen.h>

#include <cstdint>
#include <list>
#include <memory>
#include <unordered_map>
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

class KvBlockPool;

/// A paged sequence's blocks: table[i] holds positions [i * block_size, (i + 1) *
/// block_size). Holds a reference on each of them and gives them back when it
/// is reset or destroyed. Move-only.
class BlockTable {
 public:
  BlockTable() = default;
  explicit BlockTable(std::shared_ptr<KvBlockPool> pool) : pool_(std::move(pool)) {}
  BlockTable(BlockTable&& other) noexcept;
  BlockTable& operator=(BlockTable&& other) noexcept;
  BlockTable(const BlockTable&) = delete;
  BlockTable& operator=(const BlockTable&) = delete;
  ~BlockTable() { reset(); }

  /// Gives every block back (and what is left of the reservation).
  void reset();
  KvBlockPool* pool() const noexcept { return pool_.get(); }
  const std::vector<int32_t>& blocks() const noexcept { return blocks_; }
  /// Starts the table with shared blocks (a matched prompt prefix): references them.
  void share(const std::vector<int32_t>& blocks);
  /// Reserves `blocks` blocks for this table's later writes: admission counts
  /// them as taken, so a running sequence never finds the pool empty.
  void reserve(int64_t blocks);
  int64_t reserved() const noexcept { return reserved_; }
  /// Makes positions [start, start + n) writable: a block past the table's end
  /// is allocated; a shared one (another sequence's or a published prefix
  /// block) is copied first (copy-on-write).
  void prepare_write(int64_t start, int64_t n);

 private:
  std::shared_ptr<KvBlockPool> pool_;
  std::vector<int32_t> blocks_;
  int64_t reserved_ = 0;
};

/// The cache of one sequence across every layer: contiguous (`layers`, up to
/// `capacity` positions) or paged (`table`, blocks of a KvBlockPool).
struct KvCache {
  CacheKind kind = CacheKind::kKeyValue;
  std::vector<LayerCache> layers;
  int64_t length = 0;    ///< positions filled
  int64_t capacity = 0;  ///< positions allocated
  /// The prompt's positions, where the caller knows them before its first chunk
  /// (0: unknown). A model whose rotation depends on the sequence's length
  /// (dynamic NTK RoPE) rotates every prompt chunk as the whole prompt at once
  /// would, so a prompt's chunking does not change its keys.
  int64_t prompt_length = 0;
  /// The input embeddings cached, kept only by a model that must recompute the
  /// whole sequence at some length (longrope, when it crosses to its long factors).
  std::vector<at::Tensor> replay;

  /// Paged: positions live in blocks of the table's pool (`layers` unused).
  BlockTable table;

  bool paged() const noexcept { return table.pool() != nullptr; }
  /// An empty paged cache in `pool`'s blocks for up to `capacity` positions.
  static KvCache paged_in(std::shared_ptr<KvBlockPool> pool, int64_t capacity);

  /// `layers` layers of keys and values (1, kv_heads, capacity, head_dim).
  static KvCache key_value(int64_t layers, int64_t kv_heads, int64_t head_dim, int64_t capacity,
                           const at::TensorOptions& options);
  /// `layers` layers of latents (1, capacity, latent_dim) and rotary keys (1, capacity, rope_dim).
  static KvCache latent(int64_t layers, int64_t latent_dim, int64_t rope_dim, int64_t capacity,
                        const at::TensorOptions& options);

  /// Writes k and v (1, kv_heads, n, d) of layer `layer` at positions [start, start + n)
  /// and returns the keys and values of positions [first, start + n), in k's
  /// and v's dtype (the cache may store another: its values, converted).
  std::pair<at::Tensor, at::Tensor> append(size_t layer, int64_t start, const at::Tensor& k, const at::Tensor& v,
                                           int64_t first = 0);
  /// Writes k and v (1, kv_heads, n, d) of layer `layer` at positions [start,
  /// start + n), returning nothing (for a reader of the blocks themselves:
  /// nn::attend_rows over caches). Layer 0's write claims the positions' blocks.
  void write(size_t layer, int64_t start, const at::Tensor& k, const at::Tensor& v);
  /// Keys and values (1, kv_heads, total - first, d) of positions [first, total)
  /// of layer `layer` (a paged cache's gathered out of its blocks), in the
  /// cache's dtype.
  std::pair<at::Tensor, at::Tensor> read(size_t layer, int64_t first, int64_t total) const;
  /// Writes a latent cache's `latent` (1, n, latent_dim) and `rope_key` (1, n, rope_dim)
  /// of layer `layer` at positions [start, start + n) and returns both for positions
  /// [0, start + n), in the dtypes they were given in.
  std::pair<at::Tensor, at::Tensor> append_latent(size_t layer, int64_t start, const at::Tensor& latent,
                                                  const at::Tensor& rope_key);
  /// Forgets everything (the allocation stays; a paged cache's blocks are
  /// copied before they are written again if they are shared).
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

/// The blocks of a paged KV cache, shared by the sequences of one replica, and
/// its prefix cache. Storage per layer: keys and values (blocks, kv_heads,
/// block_size, head_dim), or for latent attention latents (blocks, block_size,
/// latent_dim) and rotary keys (blocks, block_size, rope_dim). Allocated once
/// (the replica's KV budget); used from one thread (the replica's).
///
/// Prefix cache: a full block whose positions are all known tokens may be
/// published under its tokens and the block before it. A sequence whose prompt
/// starts with the same tokens then shares those blocks instead of computing
/// them. A published block is never written again (writers copy it first);
/// one no sequence holds stays cached until the pool needs it, least recently
/// used first. Lookups compare the tokens themselves, never only a hash.
class KvBlockPool {
 public:
  static std::shared_ptr<KvBlockPool> key_value(int64_t layers, int64_t kv_heads, int64_t head_dim,
                                                int64_t block_size, int64_t blocks, const at::TensorOptions& options);
  static std::shared_ptr<KvBlockPool> latent(int64_t layers, int64_t latent_dim, int64_t rope_dim, int64_t block_size,
                                             int64_t blocks, const at::TensorOptions& options);

  CacheKind kind() const noexcept { return kind_; }
  int64_t block_size() const noexcept { return block_size_; }
  int64_t blocks() const noexcept { return static_cast<int64_t>(meta_.size()); }
  const LayerCache& layer(size_t i) const { return layers_.at(i); }
  LayerCache& layer(size_t i) { return layers_.at(i); }

  /// A block for a writer: a free one, else the least recently used cached one
  /// (unpublished). Throws when every block is held.
  int32_t allocate();
  void retain(int32_t block);
  void release(int32_t block);
  /// Whether a writer must copy `block` first: another holder, or published.
  bool shared(int32_t block) const;
  /// A private copy of `block` (every layer), from allocate().
  int32_t copy(int32_t block);

  /// The longest run of published blocks that `ids` starts with (whole blocks).
  std::vector<int32_t> match(const int64_t* ids, int64_t n) const;
  /// A published block's handle, to chain the next block on (-1: the start).
  struct Link {
    int32_t block = -1;
    uint64_t generation = 0;
  };
  Link link(int32_t block) const;
  /// Publishes full block `block` holding `ids` (block_size tokens) after
  /// `parent`. Returns the block now published under that key (an earlier
  /// equal block wins: then `block` stays private) as the next parent.
  Link publish(Link parent, int32_t block, const int64_t* ids);

  /// Blocks some sequence holds.
  int64_t in_use() const noexcept { return in_use_; }
  /// Published blocks no sequence holds (the prefix cache; evictable).
  int64_t cached() const noexcept { return static_cast<int64_t>(lru_.size()); }
  /// Blocks promised to sequences' later writes.
  int64_t reserved() const noexcept { return reserved_; }
  /// Blocks a new sequence may still take: free or cached, less the promised.
  int64_t available() const noexcept { return blocks() - in_use_ - reserved_; }
  /// How many of `blocks` no sequence holds (sharing them takes them from available()).
  int64_t unheld(const std::vector<int32_t>& blocks) const;

 private:
  friend class BlockTable;
  KvBlockPool(CacheKind kind, int64_t block_size, int64_t blocks, std::vector<LayerCache> layers);
  /// Keys and values per layer: `key_row` and `value_row` are a position's
  /// shape, (kv_heads, d) or (dim); blocks put block_size before the last dim.
  static std::shared_ptr<KvBlockPool> make(CacheKind kind, int64_t layers, at::IntArrayRef key_row,
                                           at::IntArrayRef value_row, int64_t block_size, int64_t blocks,
                                           const at::TensorOptions& options);

  struct Key {
    int32_t parent;
    uint64_t parent_generation;
    std::vector<int64_t> ids;
    bool operator==(const Key& o) const {
      return parent == o.parent && parent_generation == o.parent_generation && ids == o.ids;
    }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const noexcept;
  };
  struct Meta {
    int32_t refs = 0;
    uint64_t generation = 0;  ///< bumped when the block is reused: links to it go stale
    bool published = false;
    Key key;
    std::list<int32_t>::iterator lru;
  };
  void unpublish(int32_t block);

  CacheKind kind_;
  int64_t block_size_;
  std::vector<LayerCache> layers_;
  std::vector<Meta> meta_;
  std::vector<int32_t> free_;
  std::list<int32_t> lru_;  ///< published, unheld: front = least recently used
  std::unordered_map<Key, int32_t, KeyHash> published_;
  int64_t in_use_ = 0, reserved_ = 0;
};

}  // namespace mpool::nn
