#include "mpool/loading/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "mpool/base/error.h"

namespace mpool::loading {
namespace {

// Closes the descriptor on every path out of open(): the mapping outlives it.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

[[noreturn]] void fail(const std::filesystem::path& path, const char* what, int err) {
  throw Error(ErrorCode::kInvalidInput,
              path.string() + ": cannot " + what + ": " + std::strerror(err));
}

}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::filesystem::path& path) {
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) fail(path, "open", errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail(path, "stat", errno);
  if (!S_ISREG(st.st_mode))
    throw Error(ErrorCode::kInvalidInput, path.string() + ": not a regular file");
  const auto size = static_cast<std::size_t>(st.st_size);
  std::byte* data = nullptr;
  if (size > 0) {
    // MAP_PRIVATE + PROT_WRITE: copy-on-write, so an in-place tensor op never
    // segfaults and never reaches the file.
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd.get(), 0);
    if (p == MAP_FAILED) fail(path, "mmap", errno);
    data = static_cast<std::byte*>(p);
  }
  return std::shared_ptr<MappedFile>(new MappedFile(path, data, size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

void MappedFile::populate(std::size_t offset, std::size_t length) const noexcept {
  if (data_ == nullptr || length == 0 || offset >= size_) return;
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t begin = offset / page * page;
  const std::size_t end = std::min(size_, offset + length);
#ifdef MADV_POPULATE_READ
  // Read-populate maps the page-cache pages without breaking copy-on-write.
  if (::madvise(data_ + begin, end - begin, MADV_POPULATE_READ) == 0) return;
#endif
  // Older kernels: at least start the reads asynchronously.
  ::madvise(data_ + begin, end - begin, MADV_WILLNEED);
}

}  // namespace mpool::loading
