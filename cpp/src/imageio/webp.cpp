// Still WebP images (lossy, lossless, with or without alpha) with libwebp.
#include <webp/decode.h>

#include <cstring>

#include "internal.h"
#include "mpool/base/error.h"

namespace mpool::imageio::detail {

bool is_webp(const std::uint8_t* data, std::size_t size) {
  return size >= 12 && std::memcmp(data, "RIFF", 4) == 0 && std::memcmp(data + 8, "WEBP", 4) == 0;
}

namespace {
const char* status_text(VP8StatusCode s) {
  switch (s) {
    case VP8_STATUS_OK: return "ok";
    case VP8_STATUS_OUT_OF_MEMORY: return "out of memory";
    case VP8_STATUS_INVALID_PARAM: return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR: return "bitstream error";
    case VP8_STATUS_UNSUPPORTED_FEATURE: return "unsupported feature";
    case VP8_STATUS_SUSPENDED: return "suspended";
    case VP8_STATUS_USER_ABORT: return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA: return "truncated";
  }
  return "unknown error";
}
}  // namespace

RawImage decode_webp(const std::uint8_t* data, std::size_t size, const std::string& source, std::int64_t max_pixels) {
  WebPBitstreamFeatures features;
  const VP8StatusCode status = WebPGetFeatures(data, size, &features);
  check(status == VP8_STATUS_OK, ErrorCode::kInvalidInput,
        source + ": cannot decode WebP image (" + status_text(status) + ")");
  check(!features.has_animation, ErrorCode::kInvalidInput,
        source + ": animated WebP images are not supported; pass one frame (a PIL image, a PNG or a still WebP)");
  // The header's dimensions, before anything is allocated.
  check_dimensions(features.height, features.width, max_pixels, source);
  RawImage raw;
  raw.height = features.height;
  raw.width = features.width;
  raw.channels = features.has_alpha ? 4 : 3;
  const std::size_t stride = static_cast<std::size_t>(raw.width) * static_cast<std::size_t>(raw.channels);
  const std::size_t bytes = stride * static_cast<std::size_t>(raw.height);
  raw.pixels = allocate_pixels(bytes, source);
  const int int_stride = static_cast<int>(stride);  // width <= 16383 in WebP
  const std::uint8_t* ok =
      features.has_alpha ? WebPDecodeRGBAInto(data, size, raw.pixels.get(), bytes, int_stride)
                         : WebPDecodeRGBInto(data, size, raw.pixels.get(), bytes, int_stride);
  check(ok != nullptr, ErrorCode::kInvalidInput, source + ": cannot decode WebP image (corrupt or truncated data)");
  return raw;
}

}  // namespace mpool::imageio::detail
