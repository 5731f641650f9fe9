#pragma once
// Image bytes to RGB pixels, without libtorch: stb_image decoding (PNG, JPEG,
// BMP, GIF, TGA, PNM) with the dimensions checked before any pixel buffer is
// allocated, and the reading of image files, which refuses anything but a
// regular file under a byte cap. mpool_capabilities wraps the pixels into an
// at::Tensor; this part builds in seconds, runs under the sanitizers and is
// fuzzed (fuzz/image_decode_fuzz.cpp).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace mpool::imageio {

/// Largest image decoded, in pixels (height x width): 2^28, a 16384 x 16384
/// image, 768 MiB of RGB pixels.
inline constexpr std::int64_t kMaxPixels = std::int64_t{1} << 28;
/// Largest image file read, in bytes: 64 MiB, the same cap as an image URL's body.
inline constexpr std::size_t kMaxFileBytes = std::size_t{64} << 20;

/// Decoded pixels: height x width x 3 bytes (RGB, row-major), owned by the
/// decoder's allocator; get_deleter() releases them.
using PixelBuffer = std::unique_ptr<std::uint8_t[], void (*)(void*)>;

/// One decoded image.
struct DecodedImage {
  std::int64_t height = 0;
  std::int64_t width = 0;
  PixelBuffer pixels{nullptr, nullptr};
  /// Bytes held by `pixels`: height * width * 3.
  std::size_t size_bytes() const noexcept { return static_cast<std::size_t>(height * width * 3); }
};

/// Decodes PNG/JPEG/BMP/GIF/TGA/PNM bytes to RGB. Empty, malformed or truncated
/// data, and images of more than `max_pixels` pixels (checked from the header,
/// before decoding), raise Error(kInvalidInput) whose message starts with `source`.
DecodedImage decode(const void* data, std::size_t size, const std::string& source,
                    std::int64_t max_pixels = kMaxPixels);

/// Reads the file at `path`: it must be a regular file (not a device such as
/// /dev/zero, a FIFO or a directory) of at most `max_bytes` bytes. Refusals and
/// IO errors raise Error(kInvalidInput) naming the path. The checks are made on
/// the opened descriptor, and at most max_bytes + 1 bytes are ever read, so a
/// file swapped or growing after the check is refused too.
std::string read_file(const std::string& path, std::size_t max_bytes = kMaxFileBytes);

/// read_file, then decode, with errors naming the path.
DecodedImage decode_file(const std::string& path, std::size_t max_bytes = kMaxFileBytes,
                         std::int64_t max_pixels = kMaxPixels);

}  // namespace mpool::imageio
