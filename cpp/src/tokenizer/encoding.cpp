#include "mpool/tokenizer/encoding.h"

namespace mpool::tokenizer {

void Encoding::push(uint32_t id, std::string token, std::pair<size_t, size_t> bytes, std::pair<size_t, size_t> chars,
                    int64_t word, uint32_t type_id, uint32_t special) {
  ids.push_back(id);
  type_ids.push_back(type_id);
  tokens.push_back(std::move(token));
  offsets.push_back(bytes);
  char_offsets.push_back(chars);
  word_ids.push_back(word);
  special_tokens_mask.push_back(special);
  attention_mask.push_back(1);
}

void Encoding::append(const Encoding& o) {
  ids.insert(ids.end(), o.ids.begin(), o.ids.end());
  type_ids.insert(type_ids.end(), o.type_ids.begin(), o.type_ids.end());
  tokens.insert(tokens.end(), o.tokens.begin(), o.tokens.end());
  offsets.insert(offsets.end(), o.offsets.begin(), o.offsets.end());
  char_offsets.insert(char_offsets.end(), o.char_offsets.begin(), o.char_offsets.end());
  word_ids.insert(word_ids.end(), o.word_ids.begin(), o.word_ids.end());
  special_tokens_mask.insert(special_tokens_mask.end(), o.special_tokens_mask.begin(), o.special_tokens_mask.end());
  attention_mask.insert(attention_mask.end(), o.attention_mask.begin(), o.attention_mask.end());
}

namespace {
template <typename T>
void keep(std::vector<T>& v, size_t n, Direction d) {
  if (v.size() <= n) return;
  if (d == Direction::kRight)
    v.resize(n);
  else
    v.erase(v.begin(), v.end() - static_cast<long>(n));
}

template <typename T>
void grow(std::vector<T>& v, size_t n, const T& value, Direction d) {
  if (v.size() >= n) return;
  if (d == Direction::kRight)
    v.resize(n, value);
  else
    v.insert(v.begin(), n - v.size(), value);
}
}  // namespace

void Encoding::truncate(size_t n, Direction d) {
  keep(ids, n, d);
  keep(type_ids, n, d);
  keep(tokens, n, d);
  keep(offsets, n, d);
  keep(char_offsets, n, d);
  keep(word_ids, n, d);
  keep(special_tokens_mask, n, d);
  keep(attention_mask, n, d);
}

void Encoding::pad(size_t n, uint32_t pad_id, uint32_t pad_type_id, const std::string& pad_token, Direction d) {
  grow(ids, n, pad_id, d);
  grow(type_ids, n, pad_type_id, d);
  grow(tokens, n, pad_token, d);
  grow(offsets, n, std::pair<size_t, size_t>{0, 0}, d);
  grow(char_offsets, n, std::pair<size_t, size_t>{0, 0}, d);
  grow(word_ids, n, int64_t{-1}, d);
  grow(special_tokens_mask, n, uint32_t{1}, d);
  grow(attention_mask, n, uint32_t{0}, d);
}

}  // namespace mpool::tokenizer
