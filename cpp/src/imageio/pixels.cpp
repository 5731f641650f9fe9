// Pixel conversions of the decoder: to RGB (transparency over white, gray
// repeated) and the EXIF orientations, each matching what Pillow does.
#include <array>
#include <cstdlib>
#include <cstring>

#include "internal.h"
#include "mpool/base/error.h"

namespace mpool::imageio {
namespace detail {

PixelBuffer allocate_pixels(std::size_t bytes, const std::string& source) {
  auto* p = static_cast<std::uint8_t*>(std::malloc(bytes == 0 ? 1 : bytes));
  check(p != nullptr, ErrorCode::kInvalidInput,
        source + ": cannot allocate " + std::to_string(bytes) + " bytes for the image's pixels");
  return PixelBuffer(p, std::free);
}

void check_dimensions(std::int64_t height, std::int64_t width, std::int64_t max_pixels, const std::string& source) {
  check(width > 0 && height > 0, ErrorCode::kInvalidInput,
        source + ": image has no pixels (" + std::to_string(width) + "x" + std::to_string(height) + ")");
  // Compared by division: a PNG header declares up to 2^32 - 1 per side, whose
  // product overflows int64 (found by image_decode_fuzz). Both sides are below
  // 2^32 here, so the count in the message fits in uint64.
  if (width > max_pixels / height)
    throw Error(ErrorCode::kInvalidInput,
                source + ": image is " + std::to_string(width) + "x" + std::to_string(height) + ", " +
                    std::to_string(static_cast<std::uint64_t>(height) * static_cast<std::uint64_t>(width)) +
                    " pixels; at most " + std::to_string(max_pixels) + " pixels are decoded");
}

DecodedImage to_rgb(RawImage raw, const std::string& source) {
  DecodedImage out;
  out.height = raw.height;
  out.width = raw.width;
  if (raw.channels == 3) {
    out.pixels = std::move(raw.pixels);
    return out;
  }
  const std::size_t n = static_cast<std::size_t>(raw.height * raw.width);
  out.pixels = allocate_pixels(n * 3, source);
  const std::uint8_t* in = raw.pixels.get();
  std::uint8_t* o = out.pixels.get();
  switch (raw.channels) {
    case 1:
      for (std::size_t i = 0; i < n; ++i) o[3 * i] = o[3 * i + 1] = o[3 * i + 2] = in[i];
      break;
    case 2:
      for (std::size_t i = 0; i < n; ++i)
        o[3 * i] = o[3 * i + 1] = o[3 * i + 2] = composite_over_white(in[2 * i], in[2 * i + 1]);
      break;
    case 4:
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint8_t a = in[4 * i + 3];
        for (int c = 0; c < 3; ++c) o[3 * i + c] = composite_over_white(in[4 * i + c], a);
      }
      break;
    default:
      throw Error(ErrorCode::kInternal, source + ": decoder returned " + std::to_string(raw.channels) + " channels");
  }
  return out;
}

}  // namespace detail

namespace {

// Pillow's ImagingAlphaComposite for a source pixel (value, alpha) over an
// opaque white destination, in its fixed-point arithmetic (7 fraction bits,
// division by 255 as ((x >> 8) + x) >> 8), so every (value, alpha) pair comes
// out as Pillow computes it; tests/python/test_image_io.py checks all 65536.
std::array<std::uint8_t, 256 * 256> make_composite_table() {
  std::array<std::uint8_t, 256 * 256> t{};
  constexpr std::uint32_t kBits = 7, kDst = 255, kDstAlpha = 255;
  for (std::uint32_t a = 0; a < 256; ++a) {
    for (std::uint32_t v = 0; v < 256; ++v) {
      std::uint8_t out = kDst;
      if (a != 0) {
        const std::uint32_t blend = kDstAlpha * (255 - a);
        const std::uint32_t outa255 = a * 255 + blend;
        const std::uint32_t coef1 = a * 255 * 255 * (1u << kBits) / outa255;
        const std::uint32_t coef2 = 255 * (1u << kBits) - coef1;
        const std::uint32_t tmp = v * coef1 + kDst * coef2 + (0x80u << kBits);
        out = static_cast<std::uint8_t>((((tmp >> 8) + tmp) >> 8) >> kBits);
      }
      t[a * 256 + v] = out;
    }
  }
  return t;
}

const std::array<std::uint8_t, 256 * 256>& composite_table() {
  static const auto table = make_composite_table();
  return table;
}

}  // namespace

std::uint8_t composite_over_white(std::uint8_t value, std::uint8_t alpha) noexcept {
  return composite_table()[alpha * 256u + value];
}

DecodedImage apply_orientation(DecodedImage image, int orientation) {
  if (orientation < 2 || orientation > 8) return image;
  const std::int64_t h = image.height, w = image.width;
  const bool swap = orientation >= 5;  // transpose, rotate 270, transverse, rotate 90
  DecodedImage out;
  out.height = swap ? w : h;
  out.width = swap ? h : w;
  out.pixels = detail::allocate_pixels(image.size_bytes(), "image");
  const std::uint8_t* src = image.pixels.get();
  std::uint8_t* dst = out.pixels.get();
  for (std::int64_t y = 0; y < out.height; ++y) {
    for (std::int64_t x = 0; x < out.width; ++x) {
      std::int64_t sy = y, sx = x;
      switch (orientation) {
        case 2: sx = w - 1 - x; break;                   // FLIP_LEFT_RIGHT
        case 3: sy = h - 1 - y; sx = w - 1 - x; break;   // ROTATE_180
        case 4: sy = h - 1 - y; break;                   // FLIP_TOP_BOTTOM
        case 5: sy = x; sx = y; break;                   // TRANSPOSE
        case 6: sy = h - 1 - x; sx = y; break;           // ROTATE_270 (90 clockwise)
        case 7: sy = h - 1 - x; sx = w - 1 - y; break;   // TRANSVERSE
        case 8: sy = x; sx = w - 1 - y; break;           // ROTATE_90 (90 counter-clockwise)
      }
      std::memcpy(dst + (y * out.width + x) * 3, src + (sy * w + sx) * 3, 3);
    }
  }
  return out;
}

DecodedImage pixels_to_rgb(const std::uint8_t* data, std::int64_t height, std::int64_t width, std::int64_t channels,
                           std::int64_t row_stride, std::int64_t pixel_stride, std::int64_t channel_stride,
                           const std::string& source) {
  check(height > 0 && width > 0, ErrorCode::kInvalidInput,
        source + ": the image is empty (" + std::to_string(height) + "x" + std::to_string(width) + ")");
  check(channels == 1 || channels == 3 || channels == 4, ErrorCode::kInvalidInput,
        source + ": an image array must have 1, 3 or 4 channels, got " + std::to_string(channels));
  DecodedImage out;
  out.height = height;
  out.width = width;
  out.pixels = detail::allocate_pixels(static_cast<std::size_t>(height * width * 3), source);
  std::uint8_t* o = out.pixels.get();
  for (std::int64_t y = 0; y < height; ++y) {
    const std::uint8_t* row = data + y * row_stride;
    for (std::int64_t x = 0; x < width; ++x, o += 3) {
      const std::uint8_t* p = row + x * pixel_stride;
      if (channels == 1) {
        o[0] = o[1] = o[2] = p[0];
      } else if (channels == 3) {
        o[0] = p[0];
        o[1] = p[channel_stride];
        o[2] = p[2 * channel_stride];
      } else {
        const std::uint8_t a = p[3 * channel_stride];
        for (int c = 0; c < 3; ++c) o[c] = composite_over_white(p[c * channel_stride], a);
      }
    }
  }
  return out;
}

}  // namespace mpool::imageio
