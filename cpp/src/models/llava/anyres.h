#pragma once
// LLaVA-NeXT's any-resolution images: the grid a picture is tiled into
// (image_grid_pinpoints), its tiles as LlavaNextImageProcessor makes them (the
// picture resized into the best grid keeping its aspect, zero-padded, cut into
// tower-sized tiles, after a base tile of the whole picture), and the packing of
// the tiles' features back into one sequence (unpadded, with image_newline
// closing each row), as LlavaNextModel does.
#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "models/llava/config.h"
#include "mpool/imageio/preprocess.h"

namespace mpool::models::llava {

/// transformers' select_best_resolution: the pinpoint that keeps the most of a
/// (height, width) picture's resolution, then wastes the least.
std::array<int64_t, 2> best_resolution(int64_t height, int64_t width, const Pinpoints& pinpoints);

/// How the processor tiles: each tile is `tile` square; the base tile is the
/// picture resized to (base_height, base_width); every tile then goes through
/// `preprocess` (its resize, crop, rescale, normalize).
struct AnyresSettings {
  Pinpoints pinpoints;
  int64_t tile = 336;
  int64_t base_height = 336, base_width = 336;
  imageio::PreprocessConfig preprocess;
};

/// The pixel values of one RGB picture (HWC uint8, contiguous): float32
/// (1 + rows * cols, 3, tile, tile), the base tile first, then the grid row by row.
at::Tensor anyres_tiles(const at::Tensor& rgb, const AnyresSettings& settings, const std::string& source);

/// One picture's projected tile features (tiles, grid * grid, hidden) packed as
/// LlavaNextModel packs them: the base tile's, then the grid's laid out as one
/// feature map, cut back to the picture's aspect (unpadding), each row closed by
/// `newline` (hidden). `tower_image_size`: the tower's input side (the
/// pinpoints' unit); (height, width): the original picture's.
at::Tensor pack_tile_features(const at::Tensor& features, int64_t height, int64_t width, const Pinpoints& pinpoints,
                              int64_t tower_image_size, const at::Tensor& newline);

}  // namespace mpool::models::llava
