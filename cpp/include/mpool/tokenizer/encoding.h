#pragma once
// The result of encoding one input (or one pair of inputs).
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace mpool::tokenizer {

/// Which end truncation or padding applies to.
enum class Direction { kLeft, kRight };

/// Token ids with everything aligned to them, one entry per token.
struct Encoding {
  std::vector<uint32_t> ids;                               ///< token ids
  std::vector<uint32_t> type_ids;                          ///< segment ids
  std::vector<std::string> tokens;                         ///< token strings
  std::vector<std::pair<size_t, size_t>> offsets;          ///< byte offsets in the input
  std::vector<std::pair<size_t, size_t>> char_offsets;     ///< char offsets, as HF tokenizers reports them
  std::vector<int64_t> word_ids;                           ///< word index, -1 for none
  std::vector<uint32_t> special_tokens_mask;               ///< 1 for added special tokens
  std::vector<uint32_t> attention_mask;                    ///< 0 for padding

  /// Number of tokens.
  size_t size() const { return ids.size(); }
  /// Appends one token.
  void push(uint32_t id, std::string token, std::pair<size_t, size_t> bytes, std::pair<size_t, size_t> chars,
            int64_t word, uint32_t type_id, uint32_t special);
  /// Appends all of other.
  void append(const Encoding& other);
  /// Keeps max_len tokens, dropping from the given end.
  void truncate(size_t max_len, Direction direction);
  /// Pads to target_len tokens.
  void pad(size_t target_len, uint32_t pad_id, uint32_t pad_type_id, const std::string& pad_token,
           Direction direction);
  /// Sets every type id.
  void set_type_ids(uint32_t type_id) { type_ids.assign(ids.size(), type_id); }
};

}  // namespace mpool::tokenizer
