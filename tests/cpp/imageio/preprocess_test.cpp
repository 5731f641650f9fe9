// imageio::preprocess without Python: sizes, padding, the float stage, and the
// refusals (the parity with Hugging Face's processors is tests/python/test_image_preprocess.py).
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "mpool/base/error.h"
#include "mpool/imageio/preprocess.h"

namespace mpool::imageio {
namespace {

std::vector<std::uint8_t> solid(int64_t h, int64_t w, std::uint8_t r, std::uint8_t g, std::uint8_t b) {
  std::vector<std::uint8_t> px;
  for (int64_t i = 0; i < h * w; ++i) px.insert(px.end(), {r, g, b});
  return px;
}

TEST(Preprocess, ShortestEdgeKeepsTheAspectRatioAsTransformersRoundsIt) {
  PreprocessConfig c;
  c.shortest_edge = 224;
  EXPECT_EQ(resized_size(480, 640, c), (std::array<int64_t, 2>{224, 298}));  // int(224 * 640 / 480)
  EXPECT_EQ(resized_size(640, 480, c), (std::array<int64_t, 2>{298, 224}));
  EXPECT_EQ(resized_size(100, 100, c), (std::array<int64_t, 2>{224, 224}));
  c.shortest_edge.reset();
  c.height = 30;
  c.width = 40;
  EXPECT_EQ(resized_size(480, 640, c), (std::array<int64_t, 2>{30, 40}));
}

TEST(Preprocess, ResizingASolidImageKeepsItsColourWithEitherFilter) {
  const auto px = solid(37, 53, 10, 128, 250);
  for (Resample r : {Resample::kBilinear, Resample::kBicubic}) {
    const Rgb8 out = resize(px.data(), 37, 53, 90, 20, r);
    ASSERT_EQ(out.pixels.size(), static_cast<size_t>(90 * 20 * 3));
    for (size_t i = 0; i < out.pixels.size(); i += 3) {
      EXPECT_EQ(out.pixels[i], 10);
      EXPECT_EQ(out.pixels[i + 1], 128);
      EXPECT_EQ(out.pixels[i + 2], 250);
    }
  }
}

TEST(Preprocess, BilinearHalvingWeighsThreeInputsAsPil) {
  // One row, four pixels -> two. PIL widens the triangle filter by the scale (2):
  // output 0 is centred on input 1.0 and weighs inputs 0, 1, 2 by 3:3:1
  // (0 x 3/7 + 100 x 3/7 + 200 x 1/7 = 71.4); output 1 weighs 1, 2, 3 by 1:3:3.
  const std::vector<std::uint8_t> px = {0, 0, 0, 100, 100, 100, 200, 200, 200, 250, 250, 250};
  const Rgb8 out = resize(px.data(), 1, 4, 1, 2, Resample::kBilinear);
  EXPECT_EQ(out.pixels[0], 71);
  EXPECT_EQ(out.pixels[3], 207);
}

TEST(Preprocess, CropLargerThanTheImagePadsWithZerosBeforeNormalizing) {
  PreprocessConfig c;
  c.do_resize = false;
  c.do_center_crop = true;
  c.crop_height = 4;
  c.crop_width = 4;
  c.mean = {0.5, 0.5, 0.5};
  c.std = {0.5, 0.5, 0.5};
  const auto px = solid(2, 2, 255, 255, 255);
  int64_t h = 0, w = 0;
  const auto out = preprocess(px.data(), 2, 2, c, "img", &h, &w);
  ASSERT_EQ(h, 4);
  ASSERT_EQ(w, 4);
  // Channel 0: the 2 x 2 image sits at rows 1-2, columns 1-2; padding is 0 -> -1.
  EXPECT_FLOAT_EQ(out[0], -1.0f);
  EXPECT_FLOAT_EQ(out[1 * 4 + 1], 1.0f);
  EXPECT_FLOAT_EQ(out[2 * 4 + 2], 1.0f);
  EXPECT_FLOAT_EQ(out[3 * 4 + 3], -1.0f);
}

TEST(Preprocess, RefusalsAreInvalidInputNamingTheSource) {
  PreprocessConfig c;
  c.shortest_edge = 8;
  int64_t h = 0, w = 0;
  try {
    preprocess(nullptr, 0, 5, c, "photo.jpg", &h, &w);
    ADD_FAILURE() << "an empty image was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("photo.jpg: the image is empty"), std::string::npos);
  }
  c.resample = Resample::kBox;
  EXPECT_THROW(c.validate("preprocessor_config.json"), Error);
  c.resample = Resample::kBicubic;
  c.shortest_edge.reset();
  EXPECT_THROW(c.validate("preprocessor_config.json"), Error);  // nothing to resize to
}

}  // namespace
}  // namespace mpool::imageio
