#include "mpool/loading/tensors.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include <tbb/parallel_for.h>

#include "mpool/base/error.h"

namespace mpool::loading {
namespace {

// safetensors stores little-endian data; viewing it in place needs the same order.
static_assert(std::endian::native == std::endian::little, "mpool loads safetensors on little-endian hosts only");

// A byte range of one mapping to prefault.
struct PopulateRange {
  const MappedFile* mapping;
  std::size_t offset;
  std::size_t length;
};

// Prefaulting is page-table work that scales with cores; chunks keep one huge
// file from serialising it.
void populate_parallel(const std::vector<PopulateRange>& ranges) {
  constexpr std::size_t kChunk = 64u << 20;
  std::vector<PopulateRange> chunks;
  for (const auto& r : ranges)
    for (std::size_t at = 0; at < r.length; at += kChunk)
      chunks.push_back({r.mapping, r.offset + at, std::min(kChunk, r.length - at)});
  tbb::parallel_for(std::size_t{0}, chunks.size(), [&](std::size_t i) {
    chunks[i].mapping->populate(chunks[i].offset, chunks[i].length);
  });
}

}  // namespace

at::ScalarType scalar_type(DType dtype) {
  switch (dtype) {
    case DType::kBool: return at::kBool;
    case DType::kU8: return at::kByte;
    case DType::kI8: return at::kChar;
    case DType::kU16: return at::kUInt16;
    case DType::kI16: return at::kShort;
    case DType::kU32: return at::kUInt32;
    case DType::kI32: return at::kInt;
    case DType::kU64: return at::kUInt64;
    case DType::kI64: return at::kLong;
    case DType::kF8E4M3: return at::kFloat8_e4m3fn;
    case DType::kF8E5M2: return at::kFloat8_e5m2;
    case DType::kF16: return at::kHalf;
    case DType::kBF16: return at::kBFloat16;
    case DType::kF32: return at::kFloat;
    case DType::kF64: return at::kDouble;
  }
  throw Error(ErrorCode::kInternal, "unhandled safetensors dtype");
}

std::optional<at::ScalarType> parse_scalar_type(std::string_view name) {
  if (name.starts_with("torch.")) name.remove_prefix(6);
  static const std::pair<std::string_view, at::ScalarType> kNames[] = {
      {"float32", at::kFloat},   {"float", at::kFloat},      {"f32", at::kFloat},     {"F32", at::kFloat},
      {"float16", at::kHalf},    {"half", at::kHalf},        {"f16", at::kHalf},      {"F16", at::kHalf},
      {"bfloat16", at::kBFloat16}, {"bf16", at::kBFloat16},  {"BF16", at::kBFloat16},
      {"float64", at::kDouble},  {"double", at::kDouble},    {"f64", at::kDouble},    {"F64", at::kDouble},
      {"int8", at::kChar},       {"I8", at::kChar},          {"uint8", at::kByte},    {"U8", at::kByte},
      {"int16", at::kShort},     {"I16", at::kShort},        {"int32", at::kInt},     {"I32", at::kInt},
      {"int64", at::kLong},      {"I64", at::kLong},         {"bool", at::kBool},     {"BOOL", at::kBool},
  };
  for (const auto& [n, t] : kNames)
    if (n == name) return t;
  return std::nullopt;
}

at::Tensor load_tensor(const TensorRef& ref, std::optional<at::ScalarType> dtype, at::Device device,
                       bool* zero_copy) {
  const TensorInfo& info = *ref.info;
  const at::ScalarType stored = scalar_type(info.dtype);
  const at::ScalarType target = dtype.value_or(stored);
  std::byte* data = ref.file->tensor_data(info);
  const bool aligned = reinterpret_cast<std::uintptr_t>(data) % dtype_size(info.dtype) == 0;
  const std::vector<std::int64_t>& sizes = info.shape;

  at::Tensor tensor;
  bool shares = false;
  if (aligned) {
    // The deleter owns a reference to the file, so the mapping outlives every view.
    auto keep = ref.file;
    tensor = at::from_blob(data, sizes, [keep](void*) mutable { keep.reset(); },
                           at::TensorOptions().dtype(stored));
    shares = true;
  } else {
    // Misaligned elements are undefined behaviour for typed kernels: copy the bytes out.
    tensor = at::empty(sizes, at::TensorOptions().dtype(stored));
    if (info.end > info.begin) std::memcpy(tensor.data_ptr(), data, info.end - info.begin);
  }
  if (target != stored || device != tensor.device()) {
    tensor = tensor.to(device, target, /*non_blocking=*/false, /*copy=*/shares);
    shares = false;
  }
  if (zero_copy != nullptr) *zero_copy = shares;
  return tensor;
}

void prefault(const std::vector<TensorRef>& refs) {
  std::vector<PopulateRange> ranges;
  ranges.reserve(refs.size());
  for (const auto& ref : refs)
    ranges.push_back({ref.file->mapping().get(), ref.file->header().data_offset + ref.info->begin,
                      ref.info->end - ref.info->begin});
  populate_parallel(ranges);
}

LoadResult load_checkpoint(const Checkpoint& checkpoint, const LoadOptions& options,
                           const std::optional<std::vector<std::string>>& expected) {
  LoadResult result;
  result.warnings = checkpoint.warnings();
  std::vector<std::string> names;
  if (expected) {
    names = *expected;
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    const auto extra = checkpoint.unexpected(names);
    result.warnings.insert(result.warnings.end(), extra.begin(), extra.end());
  } else {
    names = checkpoint.names();
  }
  std::vector<TensorRef> refs;
  refs.reserve(names.size());
  for (const auto& name : names) refs.push_back(checkpoint.require(name));  // fail before loading anything

  if (options.populate) {
    std::vector<PopulateRange> ranges;
    if (expected) {
      prefault(refs);
    } else {
      for (const auto& file : checkpoint.files())
        ranges.push_back({file->mapping().get(), file->header().data_offset, file->header().data_size});
      populate_parallel(ranges);
    }
  }
  result.tensors.reserve(refs.size());
  for (std::size_t i = 0; i < refs.size(); ++i) {
    const at::ScalarType stored = scalar_type(refs[i].info->dtype);
    const bool floating = at::isFloatingType(stored);
    LoadedTensor t{names[i], {}, false};
    t.tensor = load_tensor(refs[i], floating ? options.dtype : std::nullopt, options.device, &t.zero_copy);
    result.tensors.push_back(std::move(t));
  }
  return result;
}

}  // namespace mpool::loading
