// The EXIF orientation of JPEG, WebP and PNG bytes: this file finds the EXIF
// block of each container (bounds-checked walks of JPEG segments, RIFF chunks
// and PNG chunks) and libexif reads the Orientation tag (0x0112) of IFD0 from it.
#include <libexif/exif-data.h>

#include <cstring>
#include <string>
#include <string_view>

#include "internal.h"

namespace mpool::imageio {
namespace {

constexpr std::string_view kExifHeader{"Exif\0\0", 6};

std::uint32_t be16(const std::uint8_t* p) { return (std::uint32_t{p[0]} << 8) | p[1]; }
std::uint32_t be32(const std::uint8_t* p) { return (be16(p) << 16) | be16(p + 2); }
std::uint32_t le32(const std::uint8_t* p) {
  return std::uint32_t{p[0]} | (std::uint32_t{p[1]} << 8) | (std::uint32_t{p[2]} << 16) | (std::uint32_t{p[3]} << 24);
}

// The payload of the first APP1 "Exif\0\0" segment before the image data
// (SOS), header included; empty when there is none.
std::string_view jpeg_exif(const std::uint8_t* d, std::size_t n) {
  std::size_t i = 2;  // after SOI
  while (i + 4 <= n) {
    if (d[i] != 0xFF) return {};
    const std::uint8_t marker = d[i + 1];
    if (marker == 0xFF) {  // fill byte
      ++i;
      continue;
    }
    if (marker == 0xD8 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) {  // no length
      i += 2;
      continue;
    }
    if (marker == 0xDA || marker == 0xD9) return {};  // start of scan, end of image
    const std::size_t len = be16(d + i + 2);
    if (len < 2 || i + 2 + len > n) return {};
    const std::uint8_t* payload = d + i + 4;
    const std::size_t payload_len = len - 2;
    if (marker == 0xE1 && payload_len >= kExifHeader.size() &&
        std::memcmp(payload, kExifHeader.data(), kExifHeader.size()) == 0)
      return {reinterpret_cast<const char*>(payload), payload_len};
    i += 2 + len;
  }
  return {};
}

// The payload of the EXIF chunk of a WebP (RIFF) file.
std::string_view webp_exif(const std::uint8_t* d, std::size_t n) {
  std::size_t i = 12;
  while (i + 8 <= n) {
    const std::uint32_t len = le32(d + i + 4);
    if (len > n - i - 8) return {};
    if (std::memcmp(d + i, "EXIF", 4) == 0) return {reinterpret_cast<const char*>(d + i + 8), len};
    i += 8 + static_cast<std::size_t>(len) + (len & 1);  // chunks are padded to even sizes
  }
  return {};
}

// The payload of the (first) eXIf chunk of a PNG file.
std::string_view png_exif(const std::uint8_t* d, std::size_t n) {
  std::size_t i = 8;
  while (i + 12 <= n) {
    const std::uint32_t len = be32(d + i);
    if (len > n - i - 12) return {};
    if (std::memcmp(d + i + 4, "eXIf", 4) == 0) return {reinterpret_cast<const char*>(d + i + 8), len};
    if (std::memcmp(d + i + 4, "IEND", 4) == 0) return {};
    i += 12 + static_cast<std::size_t>(len);
  }
  return {};
}

int orientation_of(std::string_view block) {
  // libexif wants the "Exif\0\0" header in front of the TIFF data; WebP and
  // PNG usually store the TIFF data alone.
  std::string with_header;
  if (block.size() < kExifHeader.size() || block.substr(0, kExifHeader.size()) != kExifHeader) {
    with_header.reserve(kExifHeader.size() + block.size());
    with_header.append(kExifHeader).append(block);
    block = with_header;
  }
  if (block.size() > 0xFFFFFFF0u) return 1;
  ExifData* exif = exif_data_new();
  if (exif == nullptr) return 1;
  // Read only: no fix-ups of the data, no unknown tags kept.
  exif_data_unset_option(exif, EXIF_DATA_OPTION_FOLLOW_SPECIFICATION);
  exif_data_load_data(exif, reinterpret_cast<const unsigned char*>(block.data()),
                      static_cast<unsigned int>(block.size()));
  int orientation = 1;
  ExifEntry* entry = exif_content_get_entry(exif->ifd[EXIF_IFD_0], EXIF_TAG_ORIENTATION);
  if (entry != nullptr && entry->data != nullptr && entry->components >= 1) {
    const ExifByteOrder order = exif_data_get_byte_order(exif);
    if (entry->format == EXIF_FORMAT_SHORT && entry->size >= 2)
      orientation = exif_get_short(entry->data, order);
    else if (entry->format == EXIF_FORMAT_LONG && entry->size >= 4)
      orientation = static_cast<int>(exif_get_long(entry->data, order) & 0xFFFF);
  }
  exif_data_unref(exif);
  return orientation;
}

}  // namespace

int exif_orientation(const void* data, std::size_t size) {
  const auto* d = static_cast<const std::uint8_t*>(data);
  std::string_view block;
  if (size >= 4 && d[0] == 0xFF && d[1] == 0xD8)
    block = jpeg_exif(d, size);
  else if (detail::is_webp(d, size))
    block = webp_exif(d, size);
  else if (size >= 8 && std::memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0)
    block = png_exif(d, size);
  if (block.empty()) return 1;
  return orientation_of(block);
}

}  // namespace mpool::imageio
