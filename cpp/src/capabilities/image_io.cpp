#include "mpool/capabilities/image_io.h"

#include <ATen/ATen.h>

#include "mpool/imageio/decode.h"

namespace mpool::capabilities {
namespace {

// The decoder's buffer becomes the tensor's storage, without a copy.
Image to_tensor(imageio::DecodedImage decoded) {
  const int64_t h = decoded.height, w = decoded.width;
  auto deleter = decoded.pixels.get_deleter();
  std::uint8_t* data = decoded.pixels.release();
  return at::from_blob(data, {h, w, 3}, [deleter](void* p) { deleter(p); }, at::TensorOptions().dtype(at::kByte));
}

}  // namespace

Image image_from_pixels(const uint8_t* data, int64_t height, int64_t width, int64_t channels, int64_t row_stride,
                        int64_t pixel_stride, int64_t channel_stride, const std::string& source) {
  return to_tensor(
      imageio::pixels_to_rgb(data, height, width, channels, row_stride, pixel_stride, channel_stride, source));
}

Image decode_image(const void* data, size_t size, const std::string& source) {
  return to_tensor(imageio::decode(data, size, source));
}

Image read_image_file(const std::string& path, size_t max_bytes) {
  return to_tensor(imageio::decode_file(path, max_bytes));
}

Image fetch_image(const std::string& url, const imageio::FetchOptions& options) {
  const std::string body = imageio::fetch_url(url, options);
  return decode_image(body.data(), body.size(), url);
}

}  // namespace mpool::capabilities
