#pragma once
// Shared between the decoder's translation units; not installed.
#include <cstddef>
#include <cstdint>
#include <string>

#include "mpool/imageio/decode.h"

namespace mpool::imageio::detail {

/// Decoded 8-bit pixels with the channels the file has: 1 gray, 2 gray + alpha,
/// 3 RGB, 4 RGBA (tightly packed rows).
struct RawImage {
  std::int64_t height = 0, width = 0;
  int channels = 0;
  PixelBuffer pixels{nullptr, nullptr};
};

/// A malloc'd buffer of `bytes` bytes (released with free), or kInvalidInput naming `source`.
PixelBuffer allocate_pixels(std::size_t bytes, const std::string& source);

/// "<source>: image is WxH, N pixels; at most M pixels are decoded", or "has no
/// pixels". `height` and `width` must be below 2^32 (every header's are).
void check_dimensions(std::int64_t height, std::int64_t width, std::int64_t max_pixels, const std::string& source);

/// True when the bytes start like a WebP file (RIFF....WEBP).
bool is_webp(const std::uint8_t* data, std::size_t size);
/// A still WebP (lossy or lossless, with or without alpha): 3 or 4 channels.
/// The dimensions are checked against max_pixels from the header (WebPGetFeatures)
/// before anything is allocated; an animated WebP is refused.
RawImage decode_webp(const std::uint8_t* data, std::size_t size, const std::string& source, std::int64_t max_pixels);

/// RGB from `raw`: gray repeated, alpha composited over white (Pillow's arithmetic).
DecodedImage to_rgb(RawImage raw, const std::string& source);

}  // namespace mpool::imageio::detail
