#pragma once
// Image inputs for the image capabilities: decode (stb_image), read files, fetch
// http(s) URLs (libcurl). All of it runs without the GIL. Every image comes out as
// an HWC uint8 RGB tensor. Decoding and file reading are the torch-free
// mpool/imageio/decode.h; this layer wraps their pixels into tensors.
#include <cstdint>
#include <string>

#include "mpool/capabilities/types.h"

namespace mpool::capabilities {

/// Decodes PNG/JPEG/BMP/GIF/TGA/PNM bytes to RGB; `source` names them in errors.
/// Images of more than imageio::kMaxPixels pixels are refused from their header.
Image decode_image(const std::string& bytes, const std::string& source);
/// Reads and decodes an image file: a regular file of at most
/// imageio::kMaxFileBytes bytes (devices, FIFOs and directories are refused).
Image read_image_file(const std::string& path);
/// Fetches an http(s) URL (at most `max_bytes`) and decodes it.
Image fetch_image(const std::string& url, double timeout_s, size_t max_bytes = 64u << 20);
/// Copies HWC uint8 pixels (1, 3 or 4 channels) into an RGB image.
Image image_from_pixels(const uint8_t* data, int64_t height, int64_t width, int64_t channels);

}  // namespace mpool::capabilities
