#pragma once
// Image bytes to RGB pixels, without libtorch: stb_image (PNG, JPEG, BMP, GIF,
// TGA, PNM) and libwebp (WebP) decoding with the dimensions checked before any
// pixel buffer is allocated, then the conversion to RGB that Hugging Face's
// image processors make (transformers' convert_to_rgb after
// PIL.ImageOps.exif_transpose): the EXIF orientation applied, transparency
// composited over white with Pillow's alpha_composite arithmetic, gray
// repeated, 16-bit gray clipped to 255 as Pillow's I;16 -> RGB conversion does
// (docs/images.md has the whole list). Also the reading of image files, which
// refuses anything but a regular file under a byte cap. mpool_capabilities
// wraps the pixels into an at::Tensor; this part builds in seconds, runs under
// the sanitizers and is fuzzed (fuzz/image_decode_fuzz.cpp).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace mpool::imageio {

/// Largest image decoded, in pixels (height x width): 2^28, a 16384 x 16384
/// image, 768 MiB of RGB pixels.
inline constexpr std::int64_t kMaxPixels = std::int64_t{1} << 28;
/// Largest image file read, in bytes: 64 MiB, the same default cap as an image URL's body.
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

/// Decodes PNG/JPEG/BMP/GIF (first frame)/TGA/PNM/WebP (still) bytes to upright
/// RGB as described above. Empty, malformed or truncated data, an animated
/// WebP, and images of more than `max_pixels` pixels (checked from the header,
/// before decoding) raise Error(kInvalidInput) whose message starts with `source`.
DecodedImage decode(const void* data, std::size_t size, const std::string& source,
                    std::int64_t max_pixels = kMaxPixels);

/// The EXIF orientation (1..8) of JPEG (first APP1 "Exif" segment), WebP (EXIF
/// chunk) or PNG (eXIf chunk) bytes, read with libexif from IFD0; 1 when there
/// is none or it cannot be read. Values outside 2..8 leave the image as it is,
/// as PIL.ImageOps.exif_transpose does.
int exif_orientation(const void* data, std::size_t size);

/// `image` turned upright for an EXIF `orientation` (2..8; anything else leaves
/// it unchanged), pixel for pixel what PIL.ImageOps.exif_transpose does.
DecodedImage apply_orientation(DecodedImage image, int orientation);

/// HWC uint8 pixels with 1 (gray), 3 (RGB) or 4 (RGBA) channels at any byte
/// strides (negative ones too, as numpy has them), copied into an RGB image: gray repeated, RGBA
/// composited over white exactly as a PIL RGBA image is by the image
/// processors. InvalidInput (naming `source`) for an empty image or another
/// channel count.
DecodedImage pixels_to_rgb(const std::uint8_t* data, std::int64_t height, std::int64_t width, std::int64_t channels,
                           std::int64_t row_stride, std::int64_t pixel_stride, std::int64_t channel_stride,
                           const std::string& source);

/// Pillow's Image.alpha_composite of a pixel value `value` with alpha `alpha`
/// over an opaque white background (what the processors' convert_to_rgb does).
std::uint8_t composite_over_white(std::uint8_t value, std::uint8_t alpha) noexcept;

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
