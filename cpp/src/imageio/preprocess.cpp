#include "mpool/imageio/preprocess.h"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>

#include "mpool/base/error.h"

namespace mpool::imageio {
namespace {

// PIL's 8-bit resampling works in fixed point: weights scaled by 2^22.
constexpr int kPrecisionBits = 32 - 8 - 2;

double bilinear(double x) {
  x = std::abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

double bicubic(double x) {  // Keys' cubic with a = -0.5, as PIL
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double sinc(double x) {
  if (x == 0.0) return 1.0;
  x *= 3.14159265358979323846;
  return std::sin(x) / x;
}

double lanczos(double x) {  // Lanczos-3, as PIL
  return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3.0) : 0.0;
}

// One axis' weights: for each output index, the first input index, how many
// inputs, and their fixed-point weights (ksize per output).
struct Coefficients {
  int64_t ksize = 0;
  std::vector<int64_t> first, count;
  std::vector<int32_t> weights;
};

Coefficients coefficients(int64_t in_size, int64_t out_size, Resample resample) {
  double (*filter)(double) = resample == Resample::kBilinear ? bilinear
                             : resample == Resample::kLanczos ? lanczos
                                                              : bicubic;
  const double filter_support = resample == Resample::kBilinear ? 1.0 : resample == Resample::kLanczos ? 3.0 : 2.0;
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double filterscale = std::max(scale, 1.0);
  const double support = filter_support * filterscale;
  Coefficients c;
  c.ksize = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  c.first.resize(static_cast<size_t>(out_size));
  c.count.resize(static_cast<size_t>(out_size));
  c.weights.assign(static_cast<size_t>(out_size * c.ksize), 0);
  std::vector<double> k(static_cast<size_t>(c.ksize));
  for (int64_t xx = 0; xx < out_size; ++xx) {
    const double center = (static_cast<double>(xx) + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int64_t xmin = static_cast<int64_t>(center - support + 0.5);  // truncation, as PIL's (int) cast
    xmin = std::max<int64_t>(xmin, 0);
    int64_t xmax = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), in_size) - xmin;
    double ww = 0.0;
    for (int64_t x = 0; x < xmax; ++x) {
      const double w = filter((static_cast<double>(x + xmin) - center + 0.5) * ss);
      k[static_cast<size_t>(x)] = w;
      ww += w;
    }
    for (int64_t x = 0; x < xmax; ++x) {
      const double w = ww != 0.0 ? k[static_cast<size_t>(x)] / ww : k[static_cast<size_t>(x)];
      const double scaled = w * static_cast<double>(1 << kPrecisionBits);
      c.weights[static_cast<size_t>(xx * c.ksize + x)] = static_cast<int32_t>(w < 0 ? -0.5 + scaled : 0.5 + scaled);
    }
    c.first[static_cast<size_t>(xx)] = xmin;
    c.count[static_cast<size_t>(xx)] = xmax;
  }
  return c;
}

std::uint8_t clip8(int64_t v) {
  if (v >= (int64_t{1} << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<std::uint8_t>(v >> kPrecisionBits);
}

// One pass along an axis: `stride_in` / `stride_out` step between taps and
// outputs along it, `lines` parallel lines, `line_in` / `line_out` between lines.
void pass(const std::uint8_t* in, std::uint8_t* out, const Coefficients& c, int64_t out_size, int64_t lines,
          int64_t line_in, int64_t line_out, int64_t stride_in, int64_t stride_out) {
  for (int64_t l = 0; l < lines; ++l) {
    const std::uint8_t* src = in + l * line_in;
    std::uint8_t* dst = out + l * line_out;
    for (int64_t xx = 0; xx < out_size; ++xx) {
      const int32_t* k = &c.weights[static_cast<size_t>(xx * c.ksize)];
      const int64_t first = c.first[static_cast<size_t>(xx)], n = c.count[static_cast<size_t>(xx)];
      for (int ch = 0; ch < 3; ++ch) {
        int64_t ss = int64_t{1} << (kPrecisionBits - 1);
        for (int64_t x = 0; x < n; ++x) ss += static_cast<int64_t>(src[(first + x) * stride_in + ch]) * k[x];
        dst[xx * stride_out + ch] = clip8(ss);
      }
    }
  }
}

}  // namespace

void PreprocessConfig::validate(const std::string& where) const {
  if (do_resize) {
    check(shortest_edge.has_value() != (height.has_value() && width.has_value()), ErrorCode::kInvalidInput,
          where + ": resizing needs \"size\" with \"shortest_edge\", or with \"height\" and \"width\"");
    check(shortest_edge.value_or(1) > 0 && height.value_or(1) > 0 && width.value_or(1) > 0, ErrorCode::kInvalidInput,
          where + ": \"size\" must be positive");
    check(resample == Resample::kBilinear || resample == Resample::kBicubic || resample == Resample::kLanczos,
          ErrorCode::kInvalidInput,
          where + ": \"resample\" " + std::to_string(static_cast<int>(resample)) +
              " is not supported (1 = lanczos, 2 = bilinear, 3 = bicubic)");
  }
  check(!do_center_crop || (crop_height > 0 && crop_width > 0), ErrorCode::kInvalidInput,
        where + ": center cropping needs a positive \"crop_size\"");
  for (int c = 0; c < 3; ++c)
    check(!do_normalize || (std::isfinite(mean[c]) && std::isfinite(std[c]) && std[c] > 0), ErrorCode::kInvalidInput,
          where + ": \"image_mean\" must be finite and \"image_std\" positive");
}

namespace {

// Height-only resize of an (h, w) image to out_h rows: lines are columns.
std::vector<std::uint8_t> vertical(const std::uint8_t* src, int64_t h, int64_t w, int64_t out_h, Resample r) {
  const Coefficients c = coefficients(h, out_h, r);
  std::vector<std::uint8_t> out(static_cast<size_t>(out_h * w * 3));
  pass(src, out.data(), c, out_h, w, 3, 3, w * 3, w * 3);
  return out;
}

// Width-only resize of an (h, w) image to out_w columns: lines are rows.
std::vector<std::uint8_t> horizontal(const std::uint8_t* src, int64_t h, int64_t w, int64_t out_w, Resample r) {
  const Coefficients c = coefficients(w, out_w, r);
  std::vector<std::uint8_t> out(static_cast<size_t>(h * out_w * 3));
  pass(src, out.data(), c, out_w, h, w * 3, out_w * 3, 3, 3);
  return out;
}

}  // namespace

Rgb8 resize(const std::uint8_t* rgb, int64_t height, int64_t width, int64_t out_height, int64_t out_width,
            Resample resample) {
  check(height > 0 && width > 0 && out_height > 0 && out_width > 0, ErrorCode::kInvalidInput,
        "resize: sizes must be positive");
  Rgb8 out;
  out.height = out_height;
  out.width = out_width;
  const bool along_width = out_width != width, along_height = out_height != height;
  if (along_width && along_height) {
    // Two passes, each rounding to 8 bits, in Pillow's order (13.0): horizontal
    // first, unless the height shrinks by more than twice what the width does.
    const int64_t shrink_h = height - out_height, shrink_w = width - out_width;
    if (!(shrink_h > 0 && shrink_h > shrink_w * 2)) {
      const auto h = horizontal(rgb, height, width, out_width, resample);
      out.pixels = vertical(h.data(), height, out_width, out_height, resample);
    } else {
      const auto v = vertical(rgb, height, width, out_height, resample);
      out.pixels = horizontal(v.data(), out_height, width, out_width, resample);
    }
  } else if (along_width) {
    out.pixels = horizontal(rgb, height, width, out_width, resample);
  } else if (along_height) {
    out.pixels = vertical(rgb, height, width, out_height, resample);
  } else {
    out.pixels.assign(rgb, rgb + height * width * 3);
  }
  return out;
}

std::array<int64_t, 2> resized_size(int64_t height, int64_t width, const PreprocessConfig& c) {
  if (!c.do_resize) return {height, width};
  if (c.height && c.width) return {*c.height, *c.width};
  // transformers' get_resize_output_image_size(default_to_square=False).
  const int64_t s = *c.shortest_edge;
  const bool portrait = width <= height;
  const int64_t short_side = portrait ? width : height, long_side = portrait ? height : width;
  const auto new_long = static_cast<int64_t>(static_cast<double>(s) * static_cast<double>(long_side) /
                                             static_cast<double>(short_side));
  return portrait ? std::array<int64_t, 2>{new_long, s} : std::array<int64_t, 2>{s, new_long};
}

std::vector<float> preprocess(const std::uint8_t* rgb, int64_t height, int64_t width, const PreprocessConfig& c,
                              const std::string& source, int64_t* out_height, int64_t* out_width) {
  check(height > 0 && width > 0, ErrorCode::kInvalidInput, source + ": the image is empty (0 pixels)");
  const auto [rh, rw] = resized_size(height, width, c);
  check(rh > 0 && rw > 0, ErrorCode::kInvalidInput,
        source + ": resizing " + std::to_string(width) + "x" + std::to_string(height) + " gives an empty image");
  Rgb8 resized;
  const std::uint8_t* pixels = rgb;
  if (rh != height || rw != width) {
    resized = resize(rgb, height, width, rh, rw, c.resample);
    pixels = resized.pixels.data();
  }
  // Center crop, with transformers' zero padding where the image is smaller.
  int64_t h = rh, w = rw, top = 0, left = 0;
  if (c.do_center_crop) {
    h = c.crop_height;
    w = c.crop_width;
    top = (rh - h) >= 0 ? (rh - h) / 2 : -static_cast<int64_t>(std::ceil(static_cast<double>(h - rh) / 2.0));
    left = (rw - w) >= 0 ? (rw - w) / 2 : -static_cast<int64_t>(std::ceil(static_cast<double>(w - rw) / 2.0));
  }
  // Channel-first float planes: rescale then normalize, on Eigen arrays.
  std::vector<float> out(static_cast<size_t>(3 * h * w));
  for (int ch = 0; ch < 3; ++ch) {
    Eigen::Map<Eigen::Array<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> plane(
        out.data() + static_cast<size_t>(ch * h * w), h, w);
    for (int64_t y = 0; y < h; ++y) {
      const int64_t sy = y + top;
      for (int64_t x = 0; x < w; ++x) {
        const int64_t sx = x + left;
        const bool inside = sy >= 0 && sy < rh && sx >= 0 && sx < rw;
        plane(y, x) = inside ? static_cast<float>(pixels[(sy * rw + sx) * 3 + ch]) : 0.0f;
      }
    }
    if (c.do_rescale) plane = (plane.cast<double>() * c.rescale_factor).cast<float>();
    if (c.do_normalize)
      plane = (plane - static_cast<float>(c.mean[static_cast<size_t>(ch)])) / static_cast<float>(c.std[static_cast<size_t>(ch)]);
  }
  *out_height = h;
  *out_width = w;
  return out;
}

}  // namespace mpool::imageio
