#pragma once
// Image inputs for the image capabilities: decode (stb_image, libwebp), read
// files, fetch http(s) URLs (libcurl), convert pixel arrays. All of it runs
// without the GIL. Every image comes out as a contiguous HWC uint8 RGB tensor.
// The work is the torch-free mpool/imageio (decode.h, source.h, fetch.h); this
// layer wraps its pixels into tensors.
#include <cstdint>
#include <string>

#include "mpool/capabilities/types.h"
#include "mpool/imageio/fetch.h"

namespace mpool::capabilities {

/// Decodes encoded image bytes to upright RGB (imageio::decode); `source` names
/// them in errors. Images of more than imageio::kMaxPixels pixels are refused
/// from their header.
Image decode_image(const void* data, size_t size, const std::string& source);
/// Reads and decodes an image file: a regular file of at most `max_bytes`
/// bytes (devices, FIFOs and directories are refused).
Image read_image_file(const std::string& path, size_t max_bytes);
/// Fetches an http(s) URL (imageio::fetch_url) and decodes it.
Image fetch_image(const std::string& url, const imageio::FetchOptions& options);
/// Copies HWC uint8 pixels (1, 3 or 4 channels, any byte strides)
/// into an RGB image (imageio::pixels_to_rgb: gray repeated, RGBA over white).
Image image_from_pixels(const uint8_t* data, int64_t height, int64_t width, int64_t channels, int64_t row_stride,
                        int64_t pixel_stride, int64_t channel_stride, const std::string& source);

}  // namespace mpool::capabilities
