#include "mpool/nn/kv_cache.h"

#include <algorithm>

#include "mpool/base/error.h"

namespace mpool::nn {
namespace {

// A paged cache's write: a and b at positions [start, start + n) along `axis`
// (the same axis in a block's storage as in a contiguous cache's).
void write_paged(KvCache& c, size_t layer, int64_t axis, int64_t start, const at::Tensor& a, const at::Tensor& b) {
  const int64_t n = a.size(axis), total = start + n;
  check(total <= c.capacity, ErrorCode::kInvalidInput,
        "sequence of " + std::to_string(total) + " tokens exceeds the cache's " + std::to_string(c.capacity));
  if (layer == 0) c.table.prepare_write(start, n);  // every layer writes the same positions
  KvBlockPool& pool = *c.table.pool();
  LayerCache& storage = pool.layer(layer);
  const int64_t bs = pool.block_size();
  const auto& blocks = c.table.blocks();
  check(static_cast<int64_t>(blocks.size()) * bs >= total, ErrorCode::kInternal,
        "a paged cache's layer " + std::to_string(layer) + " was written before layer 0");
  for (int64_t p = start; p < total;) {
    const int64_t off = p % bs, len = std::min(bs - off, total - p);
    const int64_t block = blocks[static_cast<size_t>(p / bs)];
    storage.keys.select(0, block).narrow(axis - 1, off, len).copy_(a.select(0, 0).narrow(axis - 1, p - start, len));
    storage.values.select(0, block).narrow(axis - 1, off, len).copy_(b.select(0, 0).narrow(axis - 1, p - start, len));
    p += len;
  }
}

// A paged cache's positions [first, total) of a layer, gathered out of their blocks.
std::pair<at::Tensor, at::Tensor> read_paged(const KvCache& c, size_t layer, int64_t axis, int64_t first,
                                             int64_t total) {
  const KvBlockPool& pool = *c.table.pool();
  const LayerCache& storage = pool.layer(layer);
  const int64_t bs = pool.block_size();
  const auto& blocks = c.table.blocks();
  check(first >= 0 && first < total && static_cast<int64_t>(blocks.size()) * bs >= total, ErrorCode::kInternal,
        "a paged cache was read outside what it holds");
  const int64_t b0 = first / bs, nb = (total - 1) / bs - b0 + 1;
  const at::Tensor index =
      at::tensor(std::vector<int64_t>(blocks.begin() + b0, blocks.begin() + b0 + nb), at::kLong)
          .to(storage.keys.device());
  auto gather = [&](const at::Tensor& st) {
    at::Tensor g = st.index_select(0, index);  // (nb, kv_heads, bs, d) or (nb, bs, dim)
    g = axis == 2 ? g.transpose(0, 1).reshape({1, st.size(1), nb * bs, st.size(3)}) : g.reshape({1, nb * bs, st.size(2)});
    return g.narrow(axis, first - b0 * bs, total - first);
  };
  return {gather(storage.keys), gather(storage.values)};
}

// Writes a and b at positions [start, start + n) along `axis` of the layer's two
// tensors and returns both for positions [first, start + n).
std::pair<at::Tensor, at::Tensor> write_contiguous(LayerCache& c, int64_t axis, int64_t start, const at::Tensor& a,
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
  auto [keys, values] = paged() ? (write_paged(*this, layer, /*axis=*/2, start, k, v),
                                   read_paged(*this, layer, /*axis=*/2, first, start + k.size(2)))
                                : write_contiguous(layers.at(layer), /*axis=*/2, start, k, v, first, capacity);
  return {keys.to(k.scalar_type()), values.to(v.scalar_type())};  // a no-op where the cache stores k's dtype
}

std::pair<at::Tensor, at::Tensor> KvCache::append_latent(size_t layer, int64_t start, const at::Tensor& latent,
                                                         const at::Tensor& rope_key) {
  check(kind == CacheKind::kLatent, ErrorCode::kInvalidInput, "append_latent() is for latent caches");
  auto [stored, rope] = paged() ? (write_paged(*this, layer, /*axis=*/1, start, latent, rope_key),
                                   read_paged(*this, layer, /*axis=*/1, 0, start + latent.size(1)))
                                : write_contiguous(layers.at(layer), /*axis=*/1, start, latent, rope_key, 0, capacity);
  return {stored.to(latent.scalar_type()), rope.to(rope_key.scalar_type())};
}

void KvCache::write(size_t layer, int64_t start, const at::Tensor& k, const at::Tensor& v) {
  check(kind == CacheKind::kKeyValue, ErrorCode::kInvalidInput, "write() is for key/value caches");
  if (paged())
    write_paged(*this, layer, /*axis=*/2, start, k, v);
  else
    write_contiguous(layers.at(layer), /*axis=*/2, start, k, v, start, capacity);
}

std::pair<at::Tensor, at::Tensor> KvCache::read(size_t layer, int64_t first, int64_t total) const {
  check(kind == CacheKind::kKeyValue, ErrorCode::kInvalidInput, "read() is for key/value caches");
  if (paged()) return read_paged(*this, layer, /*axis=*/2, first, total);
  const LayerCache& c = layers.at(layer);
  return {c.keys.narrow(2, first, total - first), c.values.narrow(2, first, total - first)};
}

KvCache KvCache::paged_in(std::shared_ptr<KvBlockPool> pool, int64_t capacity) {
  check(pool != nullptr, ErrorCode::kInvalidInput, "a paged cache needs a block pool");
  KvCache c;
  c.kind = pool->kind();
  c.capacity = capacity;
  c.table = BlockTable(std::move(pool));
  return c;
}

// --- BlockTable -------------------------------------------------------------------

BlockTable::BlockTable(BlockTable&& other) noexcept
    : pool_(std::move(other.pool_)), blocks_(std::move(other.blocks_)), reserved_(other.reserved_) {
  other.blocks_.clear();
  other.reserved_ = 0;
}

BlockTable& BlockTable::operator=(BlockTable&& other) noexcept {
  if (this != &other) {
    reset();
    pool_ = std::move(other.pool_);
    blocks_ = std::move(other.blocks_);
    reserved_ = other.reserved_;
    other.blocks_.clear();
    other.reserved_ = 0;
  }
  return *this;
}

void BlockTable::reset() {
  if (pool_) {
    // Last block first: the prefix cache then evicts a chain from its end, and
    // the start that other prompts share stays longest.
    for (auto it = blocks_.rbegin(); it != blocks_.rend(); ++it) pool_->release(*it);
    pool_->reserved_ -= reserved_;
  }
  blocks_.clear();
  reserved_ = 0;
  pool_.reset();
}

void BlockTable::share(const std::vector<int32_t>& blocks) {
  for (int32_t b : blocks) {
    pool_->retain(b);
    blocks_.push_back(b);
  }
}

void BlockTable::reserve(int64_t blocks) {
  reserved_ += blocks;
  pool_->reserved_ += blocks;
}

void BlockTable::prepare_write(int64_t start, int64_t n) {
  const int64_t bs = pool_->block_size();
  auto spend_reservation = [&] {
    if (reserved_ > 0) --reserved_, --pool_->reserved_;
  };
  for (int64_t bi = start / bs; bi <= (start + n - 1) / bs; ++bi) {
    const auto i = static_cast<size_t>(bi);
    if (i < blocks_.size()) {
      if (!pool_->shared(blocks_[i])) continue;
      const int32_t own = pool_->copy(blocks_[i]);
      spend_reservation();
      pool_->release(blocks_[i]);
      blocks_[i] = own;
    } else {
      check(i == blocks_.size(), ErrorCode::kInternal, "a paged cache was written past its end");
      blocks_.push_back(pool_->allocate());
      spend_reservation();
    }
  }
}

// --- KvBlockPool ------------------------------------------------------------------

KvBlockPool::KvBlockPool(CacheKind kind, int64_t block_size, int64_t blocks, std::vector<LayerCache> layers)
    : kind_(kind), block_size_(block_size), layers_(std::move(layers)), meta_(static_cast<size_t>(blocks)) {
  free_.reserve(static_cast<size_t>(blocks));
  for (int64_t b = blocks; b-- > 0;) free_.push_back(static_cast<int32_t>(b));  // block 0 is taken first
}

std::shared_ptr<KvBlockPool> KvBlockPool::make(CacheKind kind, int64_t layers, at::IntArrayRef key_row,
                                               at::IntArrayRef value_row, int64_t block_size, int64_t blocks,
                                               const at::TensorOptions& options) {
  check(block_size > 0 && blocks > 0 && blocks < (int64_t{1} << 31), ErrorCode::kInvalidInput,
        "a block pool needs a positive block size and block count");
  auto shape = [&](at::IntArrayRef row) {  // (blocks, [kv_heads,] block_size, dim)
    std::vector<int64_t> s{blocks};
    s.insert(s.end(), row.begin(), row.end() - 1);
    s.push_back(block_size);
    s.push_back(row.back());
    return s;
  };
  std::vector<LayerCache> storage;
  for (int64_t i = 0; i < layers; ++i)
    storage.push_back({at::empty(shape(key_row), options), at::empty(shape(value_row), options)});
  return std::shared_ptr<KvBlockPool>(new KvBlockPool(kind, block_size, blocks, std::move(storage)));
}

std::shared_ptr<KvBlockPool> KvBlockPool::key_value(int64_t layers, int64_t kv_heads, int64_t head_dim,
                                                    int64_t block_size, int64_t blocks,
                                                    const at::TensorOptions& options) {
  return make(CacheKind::kKeyValue, layers, {kv_heads, head_dim}, {kv_heads, head_dim}, block_size, blocks, options);
}

std::shared_ptr<KvBlockPool> KvBlockPool::latent(int64_t layers, int64_t latent_dim, int64_t rope_dim,
                                                 int64_t block_size, int64_t blocks,
                                                 const at::TensorOptions& options) {
  return make(CacheKind::kLatent, layers, {latent_dim}, {rope_dim}, block_size, blocks, options);
}

size_t KvBlockPool::KeyHash::operator()(const Key& k) const noexcept {
  uint64_t h = 1469598103934665603ull ^ static_cast<uint64_t>(static_cast<uint32_t>(k.parent));
  auto mix = [&](uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  };
  mix(k.parent_generation);
  for (int64_t id : k.ids) mix(static_cast<uint64_t>(id));
  return static_cast<size_t>(h);
}

int32_t KvBlockPool::allocate() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {
    check(!lru_.empty(), ErrorCode::kMemoryExhausted,
          "the paged KV cache has no free block: all " + std::to_string(blocks()) + " blocks of " +
              std::to_string(block_size_) + " positions are held (options kv_cache_tokens, kv_block_size)");
    b = lru_.front();
    lru_.pop_front();
    unpublish(b);
  }
  Meta& m = meta_[static_cast<size_t>(b)];
  m.refs = 1;
  ++in_use_;
  return b;
}

void KvBlockPool::retain(int32_t block) {
  Meta& m = meta_.at(static_cast<size_t>(block));
  if (m.refs++ == 0) {
    lru_.erase(m.lru);  // only published blocks are unheld and still in use
    ++in_use_;
  }
}

void KvBlockPool::release(int32_t block) {
  Meta& m = meta_.at(static_cast<size_t>(block));
  if (--m.refs > 0) return;
  --in_use_;
  if (m.published) {
    m.lru = lru_.insert(lru_.end(), block);
  } else {
    free_.push_back(block);
  }
}

bool KvBlockPool::shared(int32_t block) const {
  const Meta& m = meta_.at(static_cast<size_t>(block));
  return m.refs > 1 || m.published;
}

int32_t KvBlockPool::copy(int32_t block) {
  const int32_t own = allocate();
  for (auto& l : layers_) {
    l.keys.select(0, own).copy_(l.keys.select(0, block));
    l.values.select(0, own).copy_(l.values.select(0, block));
  }
  return own;
}

void KvBlockPool::unpublish(int32_t block) {
  Meta& m = meta_[static_cast<size_t>(block)];
  if (!m.published) return;
  published_.erase(m.key);
  m.key = Key{};
  m.published = false;
  ++m.generation;  // what was chained on it is stale
}

std::vector<int32_t> KvBlockPool::match(const int64_t* ids, int64_t n) const {
  std::vector<int32_t> out;
  Link parent;
  Key key{-1, 0, {}};
  for (int64_t at = 0; at + block_size_ <= n; at += block_size_) {
    key.parent = parent.block;
    key.parent_generation = parent.generation;
    key.ids.assign(ids + at, ids + at + block_size_);
    auto it = published_.find(key);
    if (it == published_.end()) break;
    out.push_back(it->second);
    parent = link(it->second);
  }
  return out;
}

KvBlockPool::Link KvBlockPool::link(int32_t block) const {
  return {block, meta_.at(static_cast<size_t>(block)).generation};
}

KvBlockPool::Link KvBlockPool::publish(Link parent, int32_t block, const int64_t* ids) {
  Key key{parent.block, parent.generation, std::vector<int64_t>(ids, ids + block_size_)};
  auto it = published_.find(key);
  if (it != published_.end()) return link(it->second);
  Meta& m = meta_.at(static_cast<size_t>(block));
  check(m.refs > 0 && !m.published, ErrorCode::kInternal, "only a held, unpublished block can be published");
  m.published = true;
  m.key = key;
  published_.emplace(std::move(key), block);
  return link(block);
}

int64_t KvBlockPool::unheld(const std::vector<int32_t>& blocks) const {
  int64_t n = 0;
  for (int32_t b : blocks) n += meta_.at(static_cast<size_t>(b)).refs == 0;
  return n;
}

}  // namespace mpool::nn
