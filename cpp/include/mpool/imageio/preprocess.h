#pragma once
// Model-input preprocessing of RGB images, written once for every image family:
// resize (shortest edge or a fixed size) with PIL's resampling, center crop,
// rescale and normalize, as Hugging Face's image processors do it with their PIL
// backend (CLIPImageProcessor, SiglipImageProcessor). Torch-free; the float
// stage runs on Eigen.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mpool::imageio {

/// PIL's resampling filters, by PIL's codes (the "resample" of preprocessor_config.json).
enum class Resample { kNearest = 0, kLanczos = 1, kBilinear = 2, kBicubic = 3, kBox = 4, kHamming = 5 };

/// What an image processor does; the defaults are CLIP's.
struct PreprocessConfig {
  bool do_resize = true;
  std::optional<int64_t> shortest_edge;  ///< resize so the short side has this length (aspect kept)
  std::optional<int64_t> height, width;  ///< or resize to exactly this size
  Resample resample = Resample::kBicubic;
  bool do_center_crop = false;
  int64_t crop_height = 0, crop_width = 0;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<double, 3> mean{0.0, 0.0, 0.0};
  std::array<double, 3> std{1.0, 1.0, 1.0};

  /// InvalidInput naming `where` (the config file) when the settings cannot be
  /// applied: no size to resize to, a non-positive size, an unsupported filter.
  void validate(const std::string& where) const;
};

/// An 8-bit RGB image, rows of interleaved R, G, B.
struct Rgb8 {
  std::vector<std::uint8_t> pixels;
  int64_t height = 0, width = 0;
};

/// `image` resized to (out_height, out_width) exactly as PIL's Image.resize does
/// it for 8-bit images (bilinear, bicubic or lanczos): separable passes in Pillow 13's
/// order (horizontal first unless the height shrinks by more than twice what the
/// width does; Pillow 12 and older always go horizontal first), PIL's fixed-point
/// weights, and rounding to 8 bits after each pass.
Rgb8 resize(const std::uint8_t* rgb, int64_t height, int64_t width, int64_t out_height, int64_t out_width,
            Resample resample);

/// The (height, width) a resize step produces for an image of (height, width).
std::array<int64_t, 2> resized_size(int64_t height, int64_t width, const PreprocessConfig& config);

/// The model input of one RGB image: float32 (3, H, W) in channel-first order,
/// resized, center-cropped (zero padding where the image is smaller than the
/// crop, as transformers pads), rescaled and normalized per the config.
/// InvalidInput names `source` for an empty image.
std::vector<float> preprocess(const std::uint8_t* rgb, int64_t height, int64_t width, const PreprocessConfig& config,
                              const std::string& source, int64_t* out_height, int64_t* out_width);

}  // namespace mpool::imageio
