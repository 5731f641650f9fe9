#pragma once
// A read-only view of a whole file through mmap. Tensors made from it keep a
// shared_ptr to it, so the mapping lives exactly as long as anything views it.
#include <cstddef>
#include <filesystem>
#include <memory>
#include <utility>

namespace mpool::loading {

/// A file mapped copy-on-write: readers share the page cache, and a write through a
/// tensor copies only the touched page instead of faulting or changing the file.
class MappedFile {
 public:
  /// Maps the whole file; throws Error(kInvalidInput) naming the path on failure.
  static std::shared_ptr<MappedFile> open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  /// The file this maps.
  const std::filesystem::path& path() const noexcept { return path_; }
  /// First byte of the file (nullptr for an empty file).
  const std::byte* data() const noexcept { return data_; }
  /// Same bytes, writable copy-on-write (for tensors that may be written in place).
  std::byte* mutable_data() const noexcept { return data_; }
  /// Size of the file in bytes.
  std::size_t size() const noexcept { return size_; }
  /// Asks the kernel to map [offset, offset+length) now, so first use does not fault;
  /// best effort, since failing here only costs later page faults.
  void populate(std::size_t offset, std::size_t length) const noexcept;

 private:
  MappedFile(std::filesystem::path path, std::byte* data, std::size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::filesystem::path path_;
  std::byte* data_;
  std::size_t size_;
};

}  // namespace mpool::loading
