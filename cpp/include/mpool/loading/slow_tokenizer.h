#pragma once
// Tokenizer folders without tokenizer.json: byte-level BPE tokenizers saved as
// their "slow" files (vocab.json + merges.txt + tokenizer_config.json, and
// special_tokens_map.json when present), as the CLIP tokenizers of Stable
// Diffusion, SDXL and FLUX repositories are. The tokenizer.json document
// transformers would build for them is composed here, so the one tokenizer.json
// pipeline (mpool::tokenizer::Tokenizer::from_json) runs them; tiktoken rank
// files (tiktoken.model, *.tiktoken) likewise. Torch-free.
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

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
  std::string source;  ///< `dir`/tokenizer.json, `dir` (vocab.json + merges.txt), or the rank file
  std::vector<std::string> warnings;  ///< what the caller should log (a guessed split pattern)
};

/// What the caller may say about a tokenizer folder.
struct TokenizerOptions {
  /// The split pattern of a tiktoken rank file (over tokenizer_config.json's
  /// "pat_str"); InvalidInput for any other tokenizer.
  std::optional<std::string> pattern;
  /// Lowercase the input before the tokenizer's own normalizer, as
  /// sentence-transformers does for sentence_bert_config.json's do_lower_case:
  /// a Lowercase normalizer goes first unless the normalizer is a Lowercase or a
  /// Sequence holding one (prepend_lowercase).
  bool lowercase = false;
};

/// `doc` (a tokenizer.json document) with a Lowercase normalizer ahead of its own,
/// unless its normalizer is a Lowercase or a Sequence that holds one.
std::string prepend_lowercase(const std::string& doc, const std::string& source);

/// The tiktoken rank file of `dir`: tiktoken.model, else its one *.tiktoken file
/// (several: InvalidInput), else tokenizer.model when it is a rank file rather
/// than a SentencePiece model; nullopt when there is none.
std::optional<std::filesystem::path> find_tiktoken_file(const std::filesystem::path& dir);

/// The tokenizer.json document of tiktoken rank file `rank_file` (one "<base64
/// token bytes> <rank>" per line) in folder `dir`: byte-level BPE whose merge
/// priority is the rank of the merged bytes (the BPE model's "merges_by_rank"),
/// a piece that is a token kept whole; the split pattern from `options`, else
/// tokenizer_config.json's "pat_str", else transformers' TikTokenConverter default
/// with a warning; "added_tokens_decoder" as added tokens (ids above the ranks;
/// skipped ids become "<|reserved_token_N|>" as transformers does), then
/// "extra_special_tokens"; ByteLevel decoding. InvalidInput names the file and line
/// of a malformed line (bad base64, a rank that is no integer, a rank or token
/// given twice) or the source of a pattern that does not compile.
TokenizerDocument tiktoken_tokenizer_json(const std::filesystem::path& dir, const std::filesystem::path& rank_file,
                                          const TokenizerOptions& options = {});

/// `dir`/tokenizer.json when present, else the rank file's document when `dir` has
/// one (find_tiktoken_file), else slow_tokenizer_json(dir) when `dir` has
/// vocab.json and merges.txt, else InvalidInput naming `dir`/tokenizer.json.
/// `options.pattern` with anything but a rank file is InvalidInput.
TokenizerDocument read_tokenizer_document(const std::filesystem::path& dir, const TokenizerOptions& options = {});

}  // namespace mpool::loading
