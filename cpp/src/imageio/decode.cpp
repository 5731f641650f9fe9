#include "mpool/imageio/decode.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

#include "internal.h"
#include "mpool/base/error.h"

// stb_image, compiled here with internal linkage (no symbol can clash with another
// copy in the process) and only the formats mpool documents. Built as part of
// this library, it gets the sanitizer and fuzzer instrumentation of the build.
// mpool_stb_image.h is the system's stb_image.h with the fixes listed in
// cpp/src/imageio/CMakeLists.txt applied at configure time.
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_NO_STDIO
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_ONLY_GIF
#define STBI_ONLY_TGA
#define STBI_ONLY_PNM
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wunused-function"
#elif defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#endif
#include "mpool_stb_image.h"
#if defined(__clang__)
#pragma clang diagnostic pop
#elif defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

namespace mpool::imageio {
namespace {

constexpr const char* kFormats = "supported: PNG, JPEG, WebP, BMP, GIF, TGA, PNM";

void free_pixels(void* p) { stbi_image_free(p); }

[[noreturn]] void undecodable(const std::string& source) {
  const char* why = stbi_failure_reason();
  throw Error(ErrorCode::kInvalidInput, source + ": cannot decode image (" + (why ? why : "unknown format") +
                                            "); " + kFormats);
}

std::string errno_text(int err) { return std::strerror(err); }

// Closes the descriptor on every path.
struct Fd {
  int fd;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};


// stb_image's pixels with the file's own channels (1 gray, 2 gray + alpha,
// 3 RGB, 4 RGBA; PNG tRNS and GIF transparency come as an alpha channel).
// 16-bit samples become 8-bit as Pillow loads them: the high byte, except for
// 16-bit gray without alpha, which Pillow opens as I;16 and converts to RGB by
// clipping at 255 (min(v, 255), not v >> 8).
detail::RawImage decode_stb(const stbi_uc* bytes, int len, const std::string& source, std::int64_t max_pixels) {
  // The header first: refuse absurd dimensions before any pixel is allocated.
  // A PNG's IHDR is read here, so a size stb_image's own header check refuses
  // (more than 2^30 bytes of pixels) is reported as what it is.
  if (len >= 24 && std::memcmp(bytes, "\x89PNG\r\n\x1a\n", 8) == 0 && std::memcmp(bytes + 12, "IHDR", 4) == 0) {
    auto be32 = [&](int at) {
      return (std::int64_t{bytes[at]} << 24) | (std::int64_t{bytes[at + 1]} << 16) | (std::int64_t{bytes[at + 2]} << 8) |
             std::int64_t{bytes[at + 3]};
    };
    const std::int64_t pw = be32(16), ph = be32(20);
    if (pw > 0 && ph > 0) detail::check_dimensions(ph, pw, max_pixels, source);
  }
  int w = 0, h = 0, n = 0;
  if (!stbi_info_from_memory(bytes, len, &w, &h, &n)) undecodable(source);
  detail::check_dimensions(h, w, max_pixels, source);

  detail::RawImage raw;
  w = h = n = 0;
  if (stbi_is_16_bit_from_memory(bytes, len)) {
    PixelBuffer wide(reinterpret_cast<std::uint8_t*>(stbi_load_16_from_memory(bytes, len, &w, &h, &n, 0)),
                     free_pixels);
    if (!wide) undecodable(source);
    detail::check_dimensions(h, w, max_pixels, source);
    check(n >= 1 && n <= 4, ErrorCode::kInternal, source + ": decoder returned " + std::to_string(n) + " channels");
    const std::size_t count = static_cast<std::size_t>(w) * static_cast<std::size_t>(h) * static_cast<std::size_t>(n);
    raw.pixels = detail::allocate_pixels(count, source);
    const auto* in = reinterpret_cast<const std::uint16_t*>(wide.get());
    std::uint8_t* out = raw.pixels.get();
    if (n == 1) {
      for (std::size_t i = 0; i < count; ++i) out[i] = static_cast<std::uint8_t>(in[i] > 255 ? 255 : in[i]);
    } else {
      for (std::size_t i = 0; i < count; ++i) out[i] = static_cast<std::uint8_t>(in[i] >> 8);
    }
  } else {
    raw.pixels = PixelBuffer(stbi_load_from_memory(bytes, len, &w, &h, &n, 0), free_pixels);
    if (!raw.pixels) undecodable(source);
    // The decoder's own dimensions are checked again: they are what the buffer holds.
    detail::check_dimensions(h, w, max_pixels, source);
    check(n >= 1 && n <= 4, ErrorCode::kInternal, source + ": decoder returned " + std::to_string(n) + " channels");
  }
  raw.height = h;
  raw.width = w;
  raw.channels = n;
  return raw;
}

}  // namespace

DecodedImage decode(const void* data, std::size_t size, const std::string& source, std::int64_t max_pixels) {
  check(size > 0, ErrorCode::kInvalidInput, source + ": image data is empty");
  check(size <= static_cast<std::size_t>(INT_MAX), ErrorCode::kInvalidInput,
        source + ": image data is larger than 2 GiB");
  const auto* bytes = static_cast<const stbi_uc*>(data);
  detail::RawImage raw = detail::is_webp(bytes, size)
                             ? detail::decode_webp(bytes, size, source, max_pixels)
                             : decode_stb(bytes, static_cast<int>(size), source, max_pixels);
  DecodedImage image = detail::to_rgb(std::move(raw), source);
  return apply_orientation(std::move(image), exif_orientation(data, size));
}

std::string read_file(const std::string& path, std::size_t max_bytes) {
  // O_NONBLOCK: opening a FIFO for reading must not wait for a writer. It only
  // matters for what is refused below; a regular file reads the same with it.
  Fd file{::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)};
  check(file.fd >= 0, ErrorCode::kInvalidInput,
        path + ": cannot open image file (" + errno_text(errno) + ")");
  struct stat st {};
  check(::fstat(file.fd, &st) == 0, ErrorCode::kInvalidInput,
        path + ": cannot stat image file (" + errno_text(errno) + ")");
  const char* kind = S_ISDIR(st.st_mode)    ? "a directory"
                     : S_ISCHR(st.st_mode)  ? "a character device"
                     : S_ISBLK(st.st_mode)  ? "a block device"
                     : S_ISFIFO(st.st_mode) ? "a FIFO"
                     : S_ISSOCK(st.st_mode) ? "a socket"
                                            : "not a regular file";
  check(S_ISREG(st.st_mode), ErrorCode::kInvalidInput,
        path + ": not a regular file (" + kind + "); an image path must name a regular file");
  const std::string over_cap = path + ": image file is larger than " + std::to_string(max_bytes) + " bytes (" +
                               std::to_string(max_bytes >> 20) + " MiB), the most mpool reads";
  check(static_cast<std::uint64_t>(st.st_size) <= max_bytes, ErrorCode::kInvalidInput, over_cap);

  // Read at most max_bytes + 1 bytes: a file that grew since fstat is refused, not read whole.
  std::string data;
  data.resize(static_cast<std::size_t>(st.st_size) + 1 <= max_bytes ? static_cast<std::size_t>(st.st_size) + 1
                                                                    : max_bytes + 1);
  std::size_t got = 0;
  while (got < data.size()) {
    ssize_t r = ::read(file.fd, data.data() + got, data.size() - got);
    if (r < 0 && errno == EINTR) continue;
    check(r >= 0, ErrorCode::kInvalidInput, path + ": cannot read image file (" + errno_text(errno) + ")");
    if (r == 0) break;
    got += static_cast<std::size_t>(r);
    if (got == data.size() && got <= max_bytes) data.resize(std::min(data.size() * 2, max_bytes + 1));
  }
  check(got <= max_bytes, ErrorCode::kInvalidInput, over_cap);
  data.resize(got);
  return data;
}

DecodedImage decode_file(const std::string& path, std::size_t max_bytes, std::int64_t max_pixels) {
  const std::string bytes = read_file(path, max_bytes);
  return decode(bytes.data(), bytes.size(), path, max_pixels);
}

}  // namespace mpool::imageio
