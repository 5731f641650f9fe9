#pragma once
// Tokenizer folders without tokenizer.json: byte-level BPE tokenizers saved as
// their "slow" files (vocab.json + merges.txt + tokenizer_config.json, and
// special_tokens_map.json when present), as the CLIP tokenizers of Stable
// Diffusion, SDXL and FLUX repositories are. The tokenizer.json document
// transformers would build for them is composed here, so the one tokenizer.json
// pipeline (mpool::tokenizer::Tokenizer::from_json) runs them. Torch-free.
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

namespace mpool::loading {

/// Whether tokenizer folder `dir` holds vocab.json and merges.txt.
bool has_slow_bpe_files(const std::filesystem::path& dir);

/// The tokenizer.json document equivalent to the slow files of `dir`, composed as
/// transformers 5 builds the backend of tokenizer_config.json's "tokenizer_class":
///  - CLIPTokenizer: NFC, whitespace runs to one space, lowercase; CLIP's split
///    regex then ByteLevel; BPE with the "</w>" end-of-word suffix and the unk
///    token; RobertaProcessing with bos ... eos; ByteLevel decoding followed by
///    CLIPTokenizer's own "</w>" to space and strip.
///  - GPT2Tokenizer: ByteLevel with "add_prefix_space"; BPE without suffix; bos /
///    eos added per "add_bos_token" / "add_eos_token".
///  - RobertaTokenizer: as GPT2Tokenizer, with RobertaProcessing (cls ... sep).
/// ("...Fast" class names are the same.) Special tokens are the class defaults,
/// overridden by tokenizer_config.json, overridden by special_tokens_map.json;
/// added tokens are "added_tokens_decoder" plus any special token not among them.
/// InvalidInput naming the folder and the file, key or class when a file is
/// missing or malformed or the class has no such conversion.
nlohmann::json slow_tokenizer_json(const std::filesystem::path& dir);

/// The tokenizer of folder `dir` as tokenizer.json text, and how messages name it.
struct TokenizerDocument {
  std::string json;    ///< the tokenizer.json document
  std::string source;  ///< `dir`/tokenizer.json, or `dir` (vocab.json + merges.txt)
};

/// `dir`/tokenizer.json when present, else slow_tokenizer_json(dir) when `dir` has
/// vocab.json and merges.txt, else InvalidInput naming `dir`/tokenizer.json.
TokenizerDocument read_tokenizer_document(const std::filesystem::path& dir);

}  // namespace mpool::loading
