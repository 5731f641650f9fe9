#pragma once
// Tensors from safetensors checkpoints. A tensor whose stored dtype, device and
// alignment already fit views the file mapping (zero-copy) and keeps it alive;
// anything else is copied and converted once, at load.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/ATen.h>

#include "mpool/loading/safetensors.h"

namespace mpool::loading {

/// How to load.
struct LoadOptions {
  /// Target dtype for floating-point tensors; integer and bool tensors keep theirs
  /// (ids and masks must not become floats). nullopt keeps every stored dtype.
  std::optional<at::ScalarType> dtype;
  /// Target device; anything but CPU means a copy.
  at::Device device = at::kCPU;
  /// Prefault the mapped pages at load, so the first inference does not pay for them.
  bool populate = true;
};

/// One loaded tensor.
struct LoadedTensor {
  /// Its name in the checkpoint.
  std::string name;
  /// The tensor.
  at::Tensor tensor;
  /// Whether it views the file mapping rather than owning a copy.
  bool zero_copy = false;
};

/// A loaded checkpoint.
struct LoadResult {
  /// The tensors, sorted by name.
  std::vector<LoadedTensor> tensors;
  /// Things the caller should log: unexpected extra tensors, index inconsistencies.
  std::vector<std::string> warnings;
};

/// The torch dtype of a safetensors dtype.
at::ScalarType scalar_type(DType dtype);
/// Parses "float32"/"f32"/"F32", "float16"/"half", "bfloat16"/"bf16", "float64",
/// "int8", ..., "bool" (also torch_dtype values of config.json); nullopt if unknown.
std::optional<at::ScalarType> parse_scalar_type(std::string_view name);

/// Loads one tensor converted to `dtype` (nullopt: as stored) on `device`.
/// `zero_copy` (optional) tells whether the result views the mapping.
at::Tensor load_tensor(const TensorRef& ref, std::optional<at::ScalarType> dtype, at::Device device,
                       bool* zero_copy = nullptr);

/// Faults in the file pages of `refs` in parallel, so that the first inference
/// does not pay for them (what LoadOptions::populate does).
void prefault(const std::vector<TensorRef>& refs);

/// Loads the tensors of `checkpoint`: all of them, or exactly `expected`. A name in
/// `expected` that is missing throws Error(kInvalidInput) naming it and the files
/// searched; stored tensors not in `expected` become warnings and are not loaded.
LoadResult load_checkpoint(const Checkpoint& checkpoint, const LoadOptions& options,
                           const std::optional<std::vector<std::string>>& expected = std::nullopt);

}  // namespace mpool::loading
