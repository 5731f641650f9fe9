// libFuzzer target: arbitrary bytes to the torch-free image decoder
// (mpool::imageio::decode: stb_image compiled into mpool_imageio with this
// build's coverage and ASan + UBSan; libwebp for WebP and libexif for the EXIF
// orientation, the system's uninstrumented builds, with mpool's container walks
// that find the EXIF block instrumented; then the conversion to RGB and the
// orientation, also instrumented). Any failure must be
// mpool::Error(kInvalidInput) naming the source; a decoded image must have
// positive dimensions within the pixel cap and a buffer of at least
// height * width * 3 bytes, every one of them readable. The cap is 2^22 pixels
// here instead of the production 2^28 so that one input never allocates more
// than libFuzzer's default malloc limit; the cap check itself is the same code.
#include <sanitizer/allocator_interface.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "mpool/base/error.h"
#include "mpool/imageio/decode.h"

namespace {
constexpr std::int64_t kFuzzMaxPixels = std::int64_t{1} << 22;
const std::string kSource = "fuzz.img";
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  mpool::imageio::DecodedImage image;
  try {
    image = mpool::imageio::decode(data, size, kSource, kFuzzMaxPixels);
  } catch (const mpool::Error& e) {
    if (e.code() != mpool::ErrorCode::kInvalidInput) std::abort();
    if (std::string(e.what()).rfind(kSource + ": ", 0) != 0) std::abort();
    return 0;
  }
  if (image.height <= 0 || image.width <= 0 || image.height * image.width > kFuzzMaxPixels) std::abort();
  if (!image.pixels) std::abort();
  const std::size_t bytes = image.size_bytes();
  if (bytes != static_cast<std::size_t>(image.height * image.width * 3)) std::abort();
  if (__sanitizer_get_allocated_size(image.pixels.get()) < bytes) std::abort();
  // Read every byte: ASan reports any that lies outside the allocation.
  unsigned sum = 0;
  for (std::size_t i = 0; i < bytes; ++i) sum += image.pixels[i];
  volatile unsigned sink = sum;
  (void)sink;
  return 0;
}
