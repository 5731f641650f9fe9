#pragma once
// The safetensors format without libtorch: header parsing and validation, mapped
// files, and sharded checkpoints. The torch-linked tensors.h turns the entries
// found here into tensors.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mpool/loading/mapped_file.h"

namespace mpool::loading {

/// Element types the safetensors format names.
enum class DType { kBool, kU8, kI8, kU16, kI16, kU32, kI32, kU64, kI64, kF8E4M3, kF8E5M2, kF16, kBF16, kF32, kF64 };

/// Bytes per element of a dtype.
std::size_t dtype_size(DType dtype) noexcept;
/// The format's spelling of a dtype ("F32", "BF16", ...).
const char* dtype_name(DType dtype) noexcept;
/// Parses a dtype spelling; nullopt when the format has no such dtype.
std::optional<DType> parse_dtype(std::string_view name) noexcept;

/// One tensor as the header describes it; offsets are relative to the data section.
struct TensorInfo {
  /// Tensor name as stored.
  std::string name;
  /// Stored element type.
  DType dtype = DType::kF32;
  /// Dimensions (empty for a scalar).
  std::vector<std::int64_t> shape;
  /// First byte, relative to the start of the data section.
  std::uint64_t begin = 0;
  /// One past the last byte, relative to the start of the data section.
  std::uint64_t end = 0;
  /// Number of elements (1 for a scalar).
  std::uint64_t numel() const noexcept;
};

/// A validated header: every tensor lies inside the data section, none overlap,
/// and each byte range is exactly shape x dtype.
struct SafetensorsHeader {
  /// Tensors in header order.
  std::vector<TensorInfo> tensors;
  /// The optional "__metadata__" string map.
  std::map<std::string, std::string> metadata;
  /// Offset of the data section from the start of the file (8 + header length).
  std::uint64_t data_offset = 0;
  /// Size of the data section in bytes.
  std::uint64_t data_size = 0;
};

/// Largest header accepted; the format's reference implementation has the same cap,
/// and it keeps a corrupt length from asking for gigabytes of JSON.
inline constexpr std::uint64_t kMaxHeaderBytes = 100u << 20;

/// Parses and validates the header of a whole file image. `label` (usually the path)
/// starts every error message; errors are Error(kInvalidInput) naming the tensor.
SafetensorsHeader parse_safetensors_header(const std::byte* file, std::size_t size,
                                           std::string_view label);

/// One mapped .safetensors file with its validated header.
class SafetensorsFile {
 public:
  /// Maps and validates `path`; refuses other checkpoint formats with conversion advice.
  static std::shared_ptr<const SafetensorsFile> open(const std::filesystem::path& path);

  /// The file's path.
  const std::filesystem::path& path() const noexcept { return mapping_->path(); }
  /// The validated header.
  const SafetensorsHeader& header() const noexcept { return header_; }
  /// The mapping, shared with every tensor that views it.
  const std::shared_ptr<MappedFile>& mapping() const noexcept { return mapping_; }
  /// Address of a tensor's first byte inside the mapping.
  std::byte* tensor_data(const TensorInfo& info) const noexcept {
    return mapping_->mutable_data() + header_.data_offset + info.begin;
  }
  /// The tensor called `name`, or nullptr.
  const TensorInfo* find(std::string_view name) const noexcept;

 private:
  SafetensorsFile(std::shared_ptr<MappedFile> mapping, SafetensorsHeader header);

  std::shared_ptr<MappedFile> mapping_;
  SafetensorsHeader header_;
  std::map<std::string, std::size_t, std::less<>> index_;
};

/// A tensor located in one file of a checkpoint.
struct TensorRef {
  /// The file holding it (keeps its mapping alive).
  std::shared_ptr<const SafetensorsFile> file;
  /// Its header entry inside that file.
  const TensorInfo* info = nullptr;
};

/// All the tensors of a model: one .safetensors file, or the shards that
/// model.safetensors.index.json lists.
class Checkpoint {
 public:
  /// Opens a .safetensors file, an index file, or a directory holding either.
  /// Other formats (pytorch_model.bin, .pt, .gguf) fail with conversion advice.
  static Checkpoint open(const std::filesystem::path& file_or_dir);

  /// The files, in index order (one for an unsharded checkpoint).
  const std::vector<std::shared_ptr<const SafetensorsFile>>& files() const noexcept { return files_; }
  /// Every tensor name, sorted.
  std::vector<std::string> names() const;
  /// The tensor called `name`, or nullopt.
  std::optional<TensorRef> find(std::string_view name) const;
  /// The tensor called `name`; throws Error(kInvalidInput) naming it and the files searched.
  TensorRef require(std::string_view name) const;
  /// One warning per stored tensor not in `expected` (callers log them; extra
  /// tensors are common, e.g. unused pooler weights, and not an error).
  std::vector<std::string> unexpected(const std::vector<std::string>& expected) const;
  /// Inconsistencies found while opening that do not prevent loading.
  const std::vector<std::string>& warnings() const noexcept { return warnings_; }
  /// The index file, when the checkpoint is sharded.
  const std::optional<std::filesystem::path>& index_path() const noexcept { return index_path_; }
  /// The tensors stored under `prefix` ("text_model.", "first_stage_model."), named
  /// without it: a component of a checkpoint that holds several. Only the files that
  /// hold one of them are kept; warnings are the whole checkpoint's. Reads no tensor
  /// data. Throws Error(kInvalidInput) naming the prefix and the files when no stored
  /// name starts with it. Prefixes compose: a view's view adds its prefix to this one's.
  Checkpoint with_prefix(std::string_view prefix) const;
  /// What with_prefix() removed from every stored name ("" for a whole checkpoint).
  const std::string& prefix() const noexcept { return prefix_; }

 private:
  std::vector<std::shared_ptr<const SafetensorsFile>> files_;
  std::map<std::string, TensorRef, std::less<>> tensors_;
  std::vector<std::string> warnings_;
  std::optional<std::filesystem::path> index_path_;
  std::string searched_;
  std::string prefix_;
};

/// True for files training leaves beside a model that hold no model weights
/// (training_args.bin, optimizer.pt, rng_state.pth, ...).
bool is_training_artifact(std::string_view filename) noexcept;

/// Advice for a checkpoint file mpool cannot read (pickle, .pt, GGUF), or nullopt
/// when `path` does not look like one.
std::optional<std::string> unsupported_format_advice(const std::filesystem::path& path);

}  // namespace mpool::loading
