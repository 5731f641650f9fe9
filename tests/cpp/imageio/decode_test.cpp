// The torch-free image decoder and file reader: good images of every family of
// formats (written here by hand, or embedded bytes made with Pillow), and every
// way bytes or paths can be wrong.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <webp/encode.h>
#include <webp/types.h>

#include "mpool/base/error.h"
#include "mpool/imageio/decode.h"

namespace mpool::imageio {
namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<std::uint8_t>;

void put16(Bytes& b, std::uint32_t v) {
  b.push_back(v & 0xff);
  b.push_back((v >> 8) & 0xff);
}
void put32(Bytes& b, std::uint32_t v) {
  put16(b, v & 0xffff);
  put16(b, v >> 16);
}
void put32be(Bytes& b, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back((v >> s) & 0xff);
}

// A 24-bit bottom-up BMP of `rgb` rows (top row first), width x height.
Bytes bmp(int width, int height, const std::vector<std::array<std::uint8_t, 3>>& rgb) {
  const int row = (width * 3 + 3) / 4 * 4;
  Bytes b = {'B', 'M'};
  put32(b, 54 + row * height);
  put32(b, 0);
  put32(b, 54);
  put32(b, 40);  // BITMAPINFOHEADER
  put32(b, static_cast<std::uint32_t>(width));
  put32(b, static_cast<std::uint32_t>(height));
  put16(b, 1);
  put16(b, 24);
  put32(b, 0);  // BI_RGB
  put32(b, row * height);
  put32(b, 2835);
  put32(b, 2835);
  put32(b, 0);
  put32(b, 0);
  for (int y = height - 1; y >= 0; --y) {
    for (int x = 0; x < width; ++x) {
      const auto& p = rgb[static_cast<std::size_t>(y * width + x)];
      b.push_back(p[2]);
      b.push_back(p[1]);
      b.push_back(p[0]);
    }
    for (int pad = width * 3; pad < row; ++pad) b.push_back(0);
  }
  return b;
}

std::uint32_t crc32(const std::uint8_t* p, std::size_t n) {
  std::uint32_t c = 0xffffffffu;
  for (std::size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
  }
  return c ^ 0xffffffffu;
}

void chunk(Bytes& png, const char* type, const Bytes& data) {
  put32be(png, static_cast<std::uint32_t>(data.size()));
  Bytes typed(type, type + 4);
  typed.insert(typed.end(), data.begin(), data.end());
  png.insert(png.end(), typed.begin(), typed.end());
  put32be(png, crc32(typed.data(), typed.size()));
}

// A PNG of `width` x `height` declared size with `color_type` (0 gray, 2 RGB, 6
// RGBA) at 8 bits, whose IDAT holds `rows` (filter byte 0 per row is added) as
// one stored deflate block; `with_data` false writes the header only.
Bytes png(std::uint32_t width, std::uint32_t height, std::uint8_t color_type, const Bytes& rows,
          bool with_data = true) {
  Bytes out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  Bytes ihdr;
  put32be(ihdr, width);
  put32be(ihdr, height);
  ihdr.insert(ihdr.end(), {8, color_type, 0, 0, 0});
  chunk(out, "IHDR", ihdr);
  if (with_data) {
    const std::size_t channels = color_type == 0 ? 1 : color_type == 2 ? 3 : 4;
    const std::size_t stride = width * channels;
    Bytes raw;
    for (std::uint32_t y = 0; y < height; ++y) {
      raw.push_back(0);
      raw.insert(raw.end(), rows.begin() + static_cast<std::ptrdiff_t>(y * stride),
                 rows.begin() + static_cast<std::ptrdiff_t>((y + 1) * stride));
    }
    Bytes z = {0x78, 0x01, 0x01};  // zlib header, final stored block
    put16(z, static_cast<std::uint32_t>(raw.size()));
    put16(z, static_cast<std::uint32_t>(~raw.size() & 0xffff));
    z.insert(z.end(), raw.begin(), raw.end());
    std::uint32_t a = 1, b = 0;
    for (std::uint8_t c : raw) {
      a = (a + c) % 65521;
      b = (b + a) % 65521;
    }
    put32be(z, (b << 16) | a);
    chunk(out, "IDAT", z);
  }
  chunk(out, "IEND", {});
  return out;
}

// Made with Pillow 13: Image.new("RGB", (8, 8), (200, 30, 40)).save(buf, "JPEG", quality=95).
const std::vector<std::uint8_t> kRedJpeg = {
    0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01,
    0x00, 0x01, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x02, 0x01, 0x01, 0x01, 0x01, 0x01, 0x02,
    0x01, 0x01, 0x01, 0x02, 0x02, 0x02, 0x02, 0x02, 0x04, 0x03, 0x02, 0x02, 0x02, 0x02, 0x05, 0x04,
    0x04, 0x03, 0x04, 0x06, 0x05, 0x06, 0x06, 0x06, 0x05, 0x06, 0x06, 0x06, 0x07, 0x09, 0x08, 0x06,
    0x07, 0x09, 0x07, 0x06, 0x06, 0x08, 0x0b, 0x08, 0x09, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x06, 0x08,
    0x0b, 0x0c, 0x0b, 0x0a, 0x0c, 0x09, 0x0a, 0x0a, 0x0a, 0xff, 0xdb, 0x00, 0x43, 0x01, 0x02, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x05, 0x03, 0x03, 0x05, 0x0a, 0x07, 0x06, 0x07, 0x0a, 0x0a, 0x0a, 0x0a,
    0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a,
    0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a,
    0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0xff, 0xc0,
    0x00, 0x11, 0x08, 0x00, 0x08, 0x00, 0x08, 0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11,
    0x01, 0xff, 0xc4, 0x00, 0x1f, 0x00, 0x00, 0x01, 0x05, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09,
    0x0a, 0x0b, 0xff, 0xc4, 0x00, 0xb5, 0x10, 0x00, 0x02, 0x01, 0x03, 0x03, 0x02, 0x04, 0x03, 0x05,
    0x05, 0x04, 0x04, 0x00, 0x00, 0x01, 0x7d, 0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21,
    0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23,
    0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17,
    0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a,
    0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a,
    0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
    0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
    0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7,
    0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5,
    0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1,
    0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xff, 0xc4, 0x00, 0x1f, 0x01, 0x00, 0x03,
    0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
    0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0xff, 0xc4, 0x00, 0xb5, 0x11, 0x00,
    0x02, 0x01, 0x02, 0x04, 0x04, 0x03, 0x04, 0x07, 0x05, 0x04, 0x04, 0x00, 0x01, 0x02, 0x77, 0x00,
    0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13,
    0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0, 0x15,
    0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27,
    0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88,
    0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6,
    0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4,
    0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe2,
    0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9,
    0xfa, 0xff, 0xda, 0x00, 0x0c, 0x03, 0x01, 0x00, 0x02, 0x11, 0x03, 0x11, 0x00, 0x3f, 0x00, 0xf9,
    0x1e, 0x8a, 0x28, 0xaf, 0xc7, 0xcf, 0xf5, 0x40, 0xff, 0xd9,
};
// Made with Pillow 13: a 3x2 "P" image, palette red, green, blue, pixels 0 1 2 / 2 1 0, saved as GIF.
const std::vector<std::uint8_t> kRgbGif = {
    0x47, 0x49, 0x46, 0x38, 0x37, 0x61, 0x03, 0x00, 0x02, 0x00, 0x81, 0x00, 0x00, 0xff, 0x00, 0x00,
    0x00, 0xff, 0x00, 0x00, 0x00, 0xff, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00,
    0x02, 0x00, 0x00, 0x08, 0x09, 0x00, 0x01, 0x04, 0x10, 0x20, 0x20, 0x00, 0x80, 0x80, 0x00, 0x3b,
};

DecodedImage decode_bytes(const Bytes& b, const std::string& source = "test.img",
                          std::int64_t max_pixels = kMaxPixels) {
  return decode(b.data(), b.size(), source, max_pixels);
}

std::vector<std::uint8_t> pixels_of(const DecodedImage& img) {
  return {img.pixels.get(), img.pixels.get() + img.size_bytes()};
}

// Runs `f`, expects Error(kInvalidInput) whose message starts with `prefix` and contains `part`.
template <typename F>
void expect_invalid(F f, const std::string& prefix, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << part << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind(prefix, 0), 0u) << e.what();
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

// A scratch directory, removed at the end of the test.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "mpool-imageio-XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path write(const std::string& name, const Bytes& b) const {
    std::ofstream(path / name, std::ios::binary).write(reinterpret_cast<const char*>(b.data()),
                                                        static_cast<std::streamsize>(b.size()));
    return path / name;
  }
};

const std::vector<std::array<std::uint8_t, 3>> kSixPixels = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255},
                                                            {10, 20, 30}, {40, 50, 60}, {70, 80, 90}};

TEST(ImageDecode, BmpDecodesExactly) {
  DecodedImage img = decode_bytes(bmp(3, 2, kSixPixels));
  EXPECT_EQ(img.height, 2);
  EXPECT_EQ(img.width, 3);
  Bytes expected;
  for (const auto& p : kSixPixels) expected.insert(expected.end(), p.begin(), p.end());
  EXPECT_EQ(pixels_of(img), expected);
}

TEST(ImageDecode, PngRgbRgbaAndGrayComeOutAsRgb) {
  const Bytes rgb = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};  // 2x2
  DecodedImage a = decode_bytes(png(2, 2, 2, rgb));
  EXPECT_EQ(a.height, 2);
  EXPECT_EQ(a.width, 2);
  EXPECT_EQ(pixels_of(a), rgb);

  // Alpha is composited over white: opaque stays, transparent becomes white.
  DecodedImage b = decode_bytes(png(2, 1, 6, {1, 2, 3, 255, 4, 5, 6, 0}));
  EXPECT_EQ(pixels_of(b), (Bytes{1, 2, 3, 255, 255, 255}));

  DecodedImage c = decode_bytes(png(3, 1, 0, {0, 128, 255}));  // gray is repeated
  EXPECT_EQ(pixels_of(c), (Bytes{0, 0, 0, 128, 128, 128, 255, 255, 255}));
}

TEST(ImageDecode, PngWithAnEmptyFirstIdatChunkDecodes) {
  // stb_image 2.27 read the empty chunk with memcpy(NULL, src, 0), undefined
  // behaviour that the asan test build aborts on (found by image_decode_fuzz).
  const Bytes rgb = {1, 2, 3, 4, 5, 6};  // 2x1
  Bytes data = png(2, 1, 2, rgb);
  Bytes empty_idat;
  chunk(empty_idat, "IDAT", {});
  data.insert(data.begin() + 33, empty_idat.begin(), empty_idat.end());  // after the signature and IHDR
  EXPECT_EQ(pixels_of(decode_bytes(data)), rgb);
}

TEST(ImageDecode, PngIdatLongerThanTheDataIsRefusedBeforeAllocating) {
  // The IDAT chunk claims 2 GiB - 64 KiB; stb_image 2.27 grew its buffer to
  // that before finding the bytes missing (found by image_decode_fuzz).
  Bytes data = png(2, 1, 2, {1, 2, 3, 4, 5, 6});
  const std::size_t idat = 33;  // the IDAT chunk's length field
  ASSERT_EQ(std::string(data.begin() + idat + 4, data.begin() + idat + 8), "IDAT");
  data[idat] = 0x7f;
  data[idat + 1] = 0xff;
  expect_invalid([&] { decode_bytes(data, "long-idat.png"); }, "long-idat.png: ",
                 "cannot decode image (IDAT past the end)");
}

TEST(ImageDecode, JpegDecodesToItsColor) {
  DecodedImage img = decode_bytes(kRedJpeg);
  ASSERT_EQ(img.height, 8);
  ASSERT_EQ(img.width, 8);
  const Bytes px = pixels_of(img);
  for (std::size_t i = 0; i < px.size(); i += 3) {  // lossy: Pillow reads (200, 30, 39)
    EXPECT_NEAR(px[i], 200, 3);
    EXPECT_NEAR(px[i + 1], 30, 3);
    EXPECT_NEAR(px[i + 2], 40, 3);
  }
}

TEST(ImageDecode, GifDecodesItsPalette) {
  DecodedImage img = decode_bytes(kRgbGif);
  EXPECT_EQ(img.height, 2);
  EXPECT_EQ(img.width, 3);
  EXPECT_EQ(pixels_of(img), (Bytes{255, 0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 255, 0, 255, 0, 255, 0, 0}));
}

TEST(ImageDecode, EmptyDataIsRefused) {
  expect_invalid([] { decode_bytes({}, "empty.png"); }, "empty.png: ", "image data is empty");
  expect_invalid([] { decode(nullptr, 0, "null", kMaxPixels); }, "null: ", "image data is empty");
}

TEST(ImageDecode, GarbageIsRefusedNamingTheSource) {
  const std::string text = "not an image at all";
  expect_invalid([&] { decode(text.data(), text.size(), "image #3 (bytes)", kMaxPixels); },
                 "image #3 (bytes): ", "cannot decode image");
  expect_invalid([] { decode_bytes(Bytes(100, 0), "zeros"); }, "zeros: ", "supported: PNG, JPEG, WebP, BMP, GIF, TGA, PNM");
}

TEST(ImageDecode, TruncatedDataIsRefused) {
  const Bytes good_png = png(2, 2, 2, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  for (std::size_t keep : {std::size_t{4}, std::size_t{20}, good_png.size() / 2, good_png.size() - 20}) {
    Bytes cut(good_png.begin(), good_png.begin() + static_cast<std::ptrdiff_t>(keep));
    expect_invalid([&] { decode_bytes(cut, "cut.png"); }, "cut.png: ", "cannot decode image");
  }
  Bytes cut_jpeg(kRedJpeg.begin(), kRedJpeg.begin() + 200);  // inside the tables
  expect_invalid([&] { decode_bytes(cut_jpeg, "cut.jpg"); }, "cut.jpg: ", "cannot decode image");
  Bytes cut_bmp = bmp(3, 2, kSixPixels);
  cut_bmp.resize(30);  // inside the info header
  expect_invalid([&] { decode_bytes(cut_bmp, "cut.bmp"); }, "cut.bmp: ", "cannot decode image");
}

TEST(ImageDecode, JpegHuffmanTableWithTooManyCodesIsRefused) {
  // stb_image 2.27 wrote past its 257-entry code-size table for such a DHT
  // (found by image_decode_fuzz); the configure-time fix refuses it.
  Bytes jpeg = kRedJpeg;
  std::size_t dht = 0;
  for (std::size_t i = 2; i + 1 < jpeg.size(); ++i)
    if (jpeg[i] == 0xff && jpeg[i + 1] == 0xc4) {
      dht = i;
      break;
    }
  ASSERT_GT(dht, 0u);
  for (std::size_t i = dht + 5; i < dht + 21; ++i) jpeg[i] = 0xff;  // 16 counts of 255 codes
  expect_invalid([&] { decode_bytes(jpeg, "dht.jpg"); }, "dht.jpg: ", "cannot decode image (bad DHT header)");
}

TEST(ImageDecode, PnmHeaderIntegerOverflowIsRefused) {
  // stb_image 2.27 overflowed an int parsing such a width (undefined behaviour,
  // found by image_decode_fuzz); the configure-time fix stops at 2^31 - 1.
  const std::string ppm = "P6\n44444444444 1\n255\n" + std::string(12, '\x7f');
  // The header then reads as width 0: refused by stb or by the zero-size check.
  expect_invalid([&] { decode(ppm.data(), ppm.size(), "long.ppm", kMaxPixels); }, "long.ppm: ", "");
}

TEST(ImageDecode, SixteenBitPgmDecodesAndTruncatedIsRefused) {
  // maxval 65535: two bytes per sample. stb_image 2.27 converted gray to RGB as
  // if the samples were 8-bit, then read past the buffer (found by
  // image_decode_fuzz), and accepted a short file.
  std::string pgm = "P5\n3 1\n65535\n";
  pgm += std::string("\x00\x00\x80\x80\xff\xff", 6);  // byte-symmetric: 2.27 reads them in host order
  DecodedImage img = decode(pgm.data(), pgm.size(), "wide.pgm", kMaxPixels);
  ASSERT_EQ(img.width, 3);
  // 16-bit gray is clipped at 255 as Pillow converts it (mode I -> RGB), not scaled.
  EXPECT_EQ(pixels_of(img), (Bytes{0, 0, 0, 255, 255, 255, 255, 255, 255}));
  pgm.resize(pgm.size() - 1);
  expect_invalid([&] { decode(pgm.data(), pgm.size(), "short.pgm", kMaxPixels); }, "short.pgm: ",
                 "cannot decode image (bad PNM)");
}

TEST(ImageDecode, HugeDeclaredDimensionsAreRefusedFromTheHeader) {
  // 17000 x 17000 gray = 289e6 pixels: a valid header with no pixel data. The cap
  // is checked from the header, so the message is about size, not truncation.
  expect_invalid([] { decode_bytes(png(17000, 17000, 0, {}, false), "huge.png"); }, "huge.png: ",
                 "image is 17000x17000, 289000000 pixels; at most 268435456 pixels are decoded");
  // stb_image itself refuses a header whose pixels would pass 2^30 bytes; the
  // PNG header is read first, so the message says why.
  expect_invalid([] { decode_bytes(png(20000, 20000, 2, {}, false), "huger.png"); }, "huger.png: ",
                 "image is 20000x20000, 400000000 pixels; at most 268435456 pixels are decoded");
  // The largest sizes a PNG header can declare: their product does not fit in
  // int64 (signed overflow found by image_decode_fuzz), so the cap is checked by division.
  expect_invalid([] { decode_bytes(png(0xffffffffu, 0xffffffffu, 2, {}, false), "max.png"); }, "max.png: ",
                 "image is 4294967295x4294967295, 18446744065119617025 pixels; at most 268435456 pixels");
  // Within stb's per-side limit and under the cap: then the missing data is what fails.
  expect_invalid([] { decode_bytes(png(10000, 10000, 2, {}, false), "big.png"); }, "big.png: ", "cannot decode image");
  // A caller's own cap.
  expect_invalid([] { decode_bytes(bmp(3, 2, kSixPixels), "small.bmp", 5); }, "small.bmp: ",
                 "image is 3x2, 6 pixels; at most 5 pixels are decoded");
  EXPECT_EQ(decode_bytes(bmp(3, 2, kSixPixels), "small.bmp", 6).width, 3);
}

TEST(ImageDecode, ZeroDimensionsAreRefused) {
  expect_invalid([] { decode_bytes(png(0, 4, 2, {}, false), "zero.png"); }, "zero.png: ", "");
  expect_invalid([] { decode_bytes(bmp(0, 0, {}), "zero.bmp"); }, "zero.bmp: ", "");
}

TEST(ImageFile, ReadsAndDecodesARegularFile) {
  TempDir dir;
  const Bytes b = bmp(3, 2, kSixPixels);
  const fs::path path = dir.write("six.bmp", b);
  EXPECT_EQ(read_file(path.string()), std::string(b.begin(), b.end()));
  DecodedImage img = decode_file(path.string());
  EXPECT_EQ(img.height, 2);
  EXPECT_EQ(img.width, 3);
  // Exactly at the cap is allowed, one byte over is not.
  EXPECT_EQ(read_file(path.string(), b.size()).size(), b.size());
  expect_invalid([&] { read_file(path.string(), b.size() - 1); }, path.string() + ": ",
                 "image file is larger than " + std::to_string(b.size() - 1) + " bytes");
}

TEST(ImageFile, AMissingFileNamesThePath) {
  expect_invalid([] { read_file("/no/such/dir/x.png"); }, "/no/such/dir/x.png: ",
                 "cannot open image file (No such file or directory)");
}

TEST(ImageFile, DevZeroIsRefusedBeforeReading) {
  expect_invalid([] { decode_file("/dev/zero"); }, "/dev/zero: ",
                 "not a regular file (a character device); an image path must name a regular file");
}

TEST(ImageFile, ADirectoryIsRefused) {
  TempDir dir;
  expect_invalid([&] { decode_file(dir.path.string()); }, dir.path.string() + ": ", "not a regular file (a directory)");
}

TEST(ImageFile, AFifoIsRefusedWithoutWaitingForAWriter) {
  TempDir dir;
  const fs::path fifo = dir.path / "pipe.png";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // A blocking open would wait here forever for a writer (and the test time out).
  expect_invalid([&] { decode_file(fifo.string()); }, fifo.string() + ": ", "not a regular file (a FIFO)");
}

TEST(ImageFile, AFileOverTheCapIsRefusedBeforeReading) {
  TempDir dir;
  const fs::path path = dir.path / "sparse.png";
  { std::ofstream(path, std::ios::binary).put('x'); }
  fs::resize_file(path, kMaxFileBytes + 1);  // sparse: nothing is written
  expect_invalid([&] { decode_file(path.string()); }, path.string() + ": ",
                 "image file is larger than 67108864 bytes (64 MiB), the most mpool reads");
  fs::resize_file(path, std::uintmax_t{1} << 40);  // 1 TiB, still sparse
  expect_invalid([&] { read_file(path.string()); }, path.string() + ": ", "larger than 67108864 bytes");
}

// --- transparency, 16 bits, WebP, EXIF orientation ------------------------------

TEST(ImageDecode, CompositeOverWhiteMatchesPillowsArithmetic) {
  // A few values Pillow 13's Image.alpha_composite gives over opaque white
  // (tests/python/test_image_io.py checks all 65536 pairs against Pillow itself).
  EXPECT_EQ(composite_over_white(0, 0), 255);
  EXPECT_EQ(composite_over_white(123, 255), 123);
  EXPECT_EQ(composite_over_white(0, 128), 127);
  EXPECT_EQ(composite_over_white(9, 9), 246);
  EXPECT_EQ(composite_over_white(200, 1), 255);
}

TEST(ImageDecode, PartlyTransparentPngIsCompositedOverWhite) {
  DecodedImage img = decode_bytes(png(2, 1, 6, {0, 0, 0, 128, 50, 50, 50, 0}));
  EXPECT_EQ(pixels_of(img), (Bytes{127, 127, 127, 255, 255, 255}));
}

Bytes webp_lossless(int width, int height, const Bytes& rgba) {
  std::uint8_t* out = nullptr;
  const std::size_t n = WebPEncodeLosslessRGBA(rgba.data(), width, height, width * 4, &out);
  Bytes b(out, out + n);
  WebPFree(out);
  return b;
}

TEST(ImageDecode, WebpLosslessWithAlphaDecodesExactlyOverWhite) {
  const Bytes rgba = {10, 20, 30, 255, 40, 50, 60, 0, 0, 0, 0, 128, 255, 0, 0, 255, 0, 255, 0, 255, 0, 0, 255, 255};
  DecodedImage img = decode_bytes(webp_lossless(3, 2, rgba), "x.webp");
  ASSERT_EQ(img.height, 2);
  ASSERT_EQ(img.width, 3);
  EXPECT_EQ(pixels_of(img), (Bytes{10, 20, 30, 255, 255, 255, 127, 127, 127, 255, 0, 0, 0, 255, 0, 0, 0, 255}));
}

TEST(ImageDecode, WebpLossyDecodesNearItsColor) {
  Bytes rgb;
  for (int i = 0; i < 16 * 16; ++i) rgb.insert(rgb.end(), {200, 30, 40});
  std::uint8_t* out = nullptr;
  const std::size_t n = WebPEncodeRGB(rgb.data(), 16, 16, 16 * 3, 90.0f, &out);
  const Bytes b(out, out + n);
  WebPFree(out);
  DecodedImage img = decode_bytes(b);
  ASSERT_EQ(img.height, 16);
  const Bytes px = pixels_of(img);
  for (std::size_t i = 0; i < px.size(); i += 3) {  // lossy: within a few levels
    EXPECT_NEAR(px[i], 200, 4);
    EXPECT_NEAR(px[i + 1], 30, 4);
    EXPECT_NEAR(px[i + 2], 40, 4);
  }
}

TEST(ImageDecode, WebpHugeDeclaredSizeIsRefusedFromTheHeader) {
  Bytes b = webp_lossless(2, 2, Bytes(16, 255));
  // The VP8L header packs width-1 and height-1 in 14 bits each after the 0x2f signature.
  const std::size_t sig = 20;
  ASSERT_EQ(b[sig], 0x2f);
  const std::uint32_t w = 16000 - 1, h = 16000 - 1;
  const std::uint32_t bits = w | (h << 14) | (std::uint32_t{b[sig + 4]} >> 4 << 28);
  for (int i = 0; i < 4; ++i) b[sig + 1 + i] = static_cast<std::uint8_t>(bits >> (8 * i));
  expect_invalid([&] { decode_bytes(b, "big.webp", 1 << 20); }, "big.webp: ",
                 "image is 16000x16000, 256000000 pixels; at most 1048576 pixels are decoded");
}

TEST(ImageDecode, TruncatedWebpIsRefused) {
  const Bytes b = webp_lossless(3, 2, Bytes(24, 7));
  const Bytes cut(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(b.size() - 4));
  expect_invalid([&] { decode_bytes(cut, "cut.webp"); }, "cut.webp: ", "cannot decode WebP image");
}

// TIFF data (little-endian) whose IFD0 holds one Orientation tag.
Bytes tiff_orientation(std::uint16_t orientation, bool motorola = false) {
  Bytes t = motorola ? Bytes{'M', 'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1}
                     : Bytes{'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0};
  if (motorola)
    t.insert(t.end(), {static_cast<std::uint8_t>(orientation >> 8), static_cast<std::uint8_t>(orientation), 0, 0});
  else
    t.insert(t.end(), {static_cast<std::uint8_t>(orientation), static_cast<std::uint8_t>(orientation >> 8), 0, 0});
  t.insert(t.end(), {0, 0, 0, 0});  // no next IFD
  return t;
}

// `png_bytes` with an eXIf chunk before IEND.
Bytes with_exif_chunk(Bytes png_bytes, const Bytes& tiff) {
  png_bytes.resize(png_bytes.size() - 12);  // IEND
  chunk(png_bytes, "eXIf", tiff);
  chunk(png_bytes, "IEND", {});
  return png_bytes;
}

TEST(ImageDecode, EveryExifOrientationTurnsTheImageAsPillowsExifTranspose) {
  // 3x2 image, pixels numbered a..f row by row (gray value = letter index * 10).
  //   a b c
  //   d e f
  const Bytes gray = {10, 20, 30, 40, 50, 60};
  const Bytes base = png(3, 2, 0, gray);
  // Expected gray values (rows top to bottom) and size for orientations 1..8,
  // written out from PIL's Image.transpose for each method.
  struct Case {
    int orientation, height, width;
    Bytes values;
  };
  const std::vector<Case> cases = {
      {1, 2, 3, {10, 20, 30, 40, 50, 60}},  // none
      {2, 2, 3, {30, 20, 10, 60, 50, 40}},  // FLIP_LEFT_RIGHT
      {3, 2, 3, {60, 50, 40, 30, 20, 10}},  // ROTATE_180
      {4, 2, 3, {40, 50, 60, 10, 20, 30}},  // FLIP_TOP_BOTTOM
      {5, 3, 2, {10, 40, 20, 50, 30, 60}},  // TRANSPOSE
      {6, 3, 2, {40, 10, 50, 20, 60, 30}},  // ROTATE_270 (90 clockwise)
      {7, 3, 2, {60, 30, 50, 20, 40, 10}},  // TRANSVERSE
      {8, 3, 2, {30, 60, 20, 50, 10, 40}},  // ROTATE_90 (90 counter-clockwise)
  };
  for (const Case& c : cases) {
    for (bool motorola : {false, true}) {
      const Bytes b = with_exif_chunk(base, tiff_orientation(static_cast<std::uint16_t>(c.orientation), motorola));
      EXPECT_EQ(exif_orientation(b.data(), b.size()), c.orientation);
      DecodedImage img = decode_bytes(b);
      EXPECT_EQ(img.height, c.height) << c.orientation;
      EXPECT_EQ(img.width, c.width) << c.orientation;
      Bytes expected;
      for (std::uint8_t v : c.values) expected.insert(expected.end(), {v, v, v});
      EXPECT_EQ(pixels_of(img), expected) << "orientation " << c.orientation;
    }
  }
}

TEST(ImageDecode, OrientationOutsideOneToEightOrUnreadableExifLeavesTheImage) {
  const Bytes base = png(3, 2, 0, {10, 20, 30, 40, 50, 60});
  for (std::uint16_t o : {0, 9, 300}) {
    const Bytes b = with_exif_chunk(base, tiff_orientation(o));
    EXPECT_EQ(pixels_of(decode_bytes(b)), pixels_of(decode_bytes(base))) << o;
  }
  const Bytes garbage = with_exif_chunk(base, Bytes{'I', 'I', 42, 0, 0xff, 0xff, 0xff, 0x7f});
  EXPECT_EQ(exif_orientation(garbage.data(), garbage.size()), 1);
  EXPECT_EQ(pixels_of(decode_bytes(garbage)), pixels_of(decode_bytes(base)));
}

TEST(ImageDecode, JpegExifSegmentIsFoundAfterOtherAppSegments) {
  Bytes b = kRedJpeg;
  Bytes app1 = {0xff, 0xe1, 0, 0, 'E', 'x', 'i', 'f', 0, 0};
  const Bytes tiff = tiff_orientation(6);
  app1.insert(app1.end(), tiff.begin(), tiff.end());
  const std::size_t len = app1.size() - 2;
  app1[2] = static_cast<std::uint8_t>(len >> 8);
  app1[3] = static_cast<std::uint8_t>(len);
  b.insert(b.begin() + 20, app1.begin(), app1.end());  // after SOI and the JFIF APP0
  EXPECT_EQ(exif_orientation(b.data(), b.size()), 6);
  EXPECT_EQ(decode_bytes(b).height, 8);
  EXPECT_EQ(exif_orientation(kRedJpeg.data(), kRedJpeg.size()), 1);
}

TEST(ImageDecode, WebpExifChunkGivesTheOrientation) {
  // An extended (VP8X) WebP: header chunk with the EXIF flag, the image, the EXIF chunk.
  const Bytes simple = webp_lossless(3, 2, {1, 1, 1, 255, 2, 2, 2, 255, 3, 3, 3, 255,
                                            4, 4, 4, 255, 5, 5, 5, 255, 6, 6, 6, 255});
  Bytes body = {'W', 'E', 'B', 'P', 'V', 'P', '8', 'X', 10, 0, 0, 0, 0x08, 0, 0, 0, 2, 0, 0, 1, 0, 0};
  body.insert(body.end(), simple.begin() + 12, simple.end());  // the VP8L chunk
  if (body.size() % 2) body.push_back(0);
  const Bytes tiff = tiff_orientation(8);
  body.insert(body.end(), {'E', 'X', 'I', 'F'});
  put32(body, static_cast<std::uint32_t>(tiff.size()));
  body.insert(body.end(), tiff.begin(), tiff.end());
  Bytes b = {'R', 'I', 'F', 'F'};
  put32(b, static_cast<std::uint32_t>(body.size()));
  b.insert(b.end(), body.begin(), body.end());
  EXPECT_EQ(exif_orientation(b.data(), b.size()), 8);
  DecodedImage img = decode_bytes(b, "exif.webp");
  ASSERT_EQ(img.height, 3);
  ASSERT_EQ(img.width, 2);
  const Bytes px = pixels_of(img);
  EXPECT_EQ((Bytes{px[0], px[3], px[6], px[9], px[12], px[15]}), (Bytes{3, 6, 2, 5, 1, 4}));
}

TEST(ImagePixels, ArraysOfOneThreeAndFourChannelsAtAnyStridesBecomeRgb) {
  const Bytes gray = {1, 2, 3, 4};
  EXPECT_EQ(pixels_of(pixels_to_rgb(gray.data(), 2, 2, 1, 2, 1, 1, "a")),
            (Bytes{1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4}));
  // RGBX rows (4 bytes a pixel) read as 3 channels, and bottom-up (negative row stride).
  const Bytes rgbx = {1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0, 10, 11, 12, 0};
  EXPECT_EQ(pixels_of(pixels_to_rgb(rgbx.data(), 2, 2, 3, 8, 4, 1, "a")),
            (Bytes{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}));
  EXPECT_EQ(pixels_of(pixels_to_rgb(rgbx.data() + 8, 2, 2, 3, -8, 4, 1, "a")),
            (Bytes{7, 8, 9, 10, 11, 12, 1, 2, 3, 4, 5, 6}));
  const Bytes rgba = {9, 9, 9, 9, 50, 60, 70, 255};
  EXPECT_EQ(pixels_of(pixels_to_rgb(rgba.data(), 1, 2, 4, 8, 4, 1, "a")), (Bytes{246, 246, 246, 50, 60, 70}));
  expect_invalid([&] { pixels_to_rgb(gray.data(), 0, 2, 1, 2, 1, 1, "image #4"); }, "image #4: ", "empty");
  expect_invalid([&] { pixels_to_rgb(gray.data(), 1, 2, 2, 2, 1, 1, "image #4"); }, "image #4: ",
                 "1, 3 or 4 channels, got 2");
}

}  // namespace
}  // namespace mpool::imageio
