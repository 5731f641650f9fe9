#include "models/llava/anyres.h"

#include <cmath>
#include <limits>

#include "mpool/base/error.h"

namespace mpool::models::llava {

std::array<int64_t, 2> best_resolution(int64_t height, int64_t width, const Pinpoints& pinpoints) {
  check(height > 0 && width > 0 && !pinpoints.empty(), ErrorCode::kInvalidInput,
        "any-resolution tiling needs a non-empty picture and at least one grid pinpoint");
  std::array<int64_t, 2> best = pinpoints.front();
  int64_t most_effective = 0;
  double least_wasted = std::numeric_limits<double>::infinity();
  for (const auto& [h, w] : pinpoints) {
    const double scale = std::min(static_cast<double>(w) / static_cast<double>(width),
                                  static_cast<double>(h) / static_cast<double>(height));
    const auto dw = static_cast<int64_t>(static_cast<double>(width) * scale);
    const auto dh = static_cast<int64_t>(static_cast<double>(height) * scale);
    const int64_t effective = std::min(dw * dh, width * height);
    const double wasted = static_cast<double>(w * h - effective);
    if (effective > most_effective || (effective == most_effective && wasted < least_wasted)) {
      most_effective = effective;
      least_wasted = wasted;
      best = {h, w};
    }
  }
  return best;
}

namespace {

// One uint8 RGB tile of (size, size) at (top, left) of `image` (h, w).
std::vector<std::uint8_t> cut(const std::vector<std::uint8_t>& image, int64_t w, int64_t top, int64_t left,
                              int64_t size) {
  std::vector<std::uint8_t> tile(static_cast<size_t>(size * size * 3));
  for (int64_t y = 0; y < size; ++y)
    std::copy_n(image.begin() + ((top + y) * w + left) * 3, size * 3, tile.begin() + y * size * 3);
  return tile;
}

}  // namespace

at::Tensor anyres_tiles(const at::Tensor& rgb, const AnyresSettings& s, const std::string& source) {
  const int64_t h = rgb.size(0), w = rgb.size(1);
  check(h > 0 && w > 0, ErrorCode::kInvalidInput, source + " is empty");
  const std::uint8_t* pixels = rgb.data_ptr<std::uint8_t>();
  const auto [th, tw] = best_resolution(h, w, s.pinpoints);
  check(th % s.tile == 0 && tw % s.tile == 0, ErrorCode::kInvalidInput,
        "grid pinpoint " + std::to_string(th) + "x" + std::to_string(tw) + " is not a multiple of the tile size " +
            std::to_string(s.tile));
  // Resized into the grid keeping the aspect (get_patch_output_size), centred on black.
  const double sw = static_cast<double>(tw) / static_cast<double>(w), sh = static_cast<double>(th) / static_cast<double>(h);
  int64_t nh = th, nw = tw;
  if (sw < sh)
    nh = std::min<int64_t>(static_cast<int64_t>(std::ceil(static_cast<double>(h) * sw)), th);
  else
    nw = std::min<int64_t>(static_cast<int64_t>(std::ceil(static_cast<double>(w) * sh)), tw);
  const imageio::Rgb8 resized = imageio::resize(pixels, h, w, nh, nw, s.preprocess.resample);
  std::vector<std::uint8_t> canvas(static_cast<size_t>(th * tw * 3), 0);
  const int64_t top = (th - nh) / 2, left = (tw - nw) / 2;
  for (int64_t y = 0; y < nh; ++y)
    std::copy_n(resized.pixels.begin() + y * nw * 3, nw * 3, canvas.begin() + ((top + y) * tw + left) * 3);

  std::vector<std::vector<std::uint8_t>> tiles;
  std::vector<std::array<int64_t, 2>> sizes;
  const imageio::Rgb8 base = imageio::resize(pixels, h, w, s.base_height, s.base_width, s.preprocess.resample);
  tiles.push_back(base.pixels);
  sizes.push_back({s.base_height, s.base_width});
  for (int64_t y = 0; y < th; y += s.tile)
    for (int64_t x = 0; x < tw; x += s.tile) {
      tiles.push_back(cut(canvas, tw, y, x, s.tile));
      sizes.push_back({s.tile, s.tile});
    }
  at::Tensor out;
  for (size_t i = 0; i < tiles.size(); ++i) {
    int64_t oh = 0, ow = 0;
    const std::vector<float> v =
        imageio::preprocess(tiles[i].data(), sizes[i][0], sizes[i][1], s.preprocess, source, &oh, &ow);
    if (!out.defined()) out = at::empty({static_cast<int64_t>(tiles.size()), 3, oh, ow}, at::kFloat);
    check(out.size(2) == oh && out.size(3) == ow, ErrorCode::kInvalidInput,
          source + ": the processor makes tiles of different sizes");
    std::copy(v.begin(), v.end(), out[static_cast<int64_t>(i)].data_ptr<float>());
  }
  return out;
}

at::Tensor pack_tile_features(const at::Tensor& features, int64_t height, int64_t width, const Pinpoints& pinpoints,
                              int64_t tower_image_size, const at::Tensor& newline) {
  const at::Tensor base = features[0];
  if (features.size(0) == 1) return at::cat({base, newline.unsqueeze(0).to(base.scalar_type())});
  const auto [th, tw] = best_resolution(height, width, pinpoints);
  const int64_t rows = th / tower_image_size, cols = tw / tower_image_size;
  const auto side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(features.size(1)))));
  const int64_t hidden = features.size(2);
  check(features.size(0) == 1 + rows * cols && side * side == features.size(1), ErrorCode::kInvalidInput,
        "the tile features do not fit a " + std::to_string(rows) + "x" + std::to_string(cols) + " grid of " +
            std::to_string(side) + "x" + std::to_string(side) + " patches");
  // (rows, cols, side, side, hidden) -> (hidden, rows * side, cols * side)
  at::Tensor grid = features.narrow(0, 1, rows * cols)
                        .view({rows, cols, side, side, hidden})
                        .permute({4, 0, 2, 1, 3})
                        .reshape({hidden, rows * side, cols * side});
  // Unpadding: cut the rows or columns the processor's black border became.
  const int64_t ch = rows * side, cw = cols * side;
  const double original_aspect = static_cast<double>(width) / static_cast<double>(height);
  const double current_aspect = static_cast<double>(cw) / static_cast<double>(ch);
  auto rounded = [](double v) { return static_cast<int64_t>(std::round(v * 1e7) / 1e7); };
  if (original_aspect > current_aspect) {
    const int64_t nh = rounded(static_cast<double>(height) * (static_cast<double>(cw) / static_cast<double>(width)));
    const int64_t pad = (ch - nh) / 2;
    grid = grid.narrow(1, pad, ch - 2 * pad);
  } else {
    const int64_t nw = rounded(static_cast<double>(width) * (static_cast<double>(ch) / static_cast<double>(height)));
    const int64_t pad = (cw - nw) / 2;
    grid = grid.narrow(2, pad, cw - 2 * pad);
  }
  const at::Tensor column = newline.to(grid.scalar_type()).view({hidden, 1, 1}).expand({hidden, grid.size(1), 1});
  grid = at::cat({grid, column}, 2).flatten(1, 2).transpose(0, 1);
  return at::cat({base, grid});
}

}  // namespace mpool::models::llava
