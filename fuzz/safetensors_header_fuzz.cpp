// libFuzzer target: the safetensors header parser must reject any input with
// mpool::Error(kInvalidInput), never crash, hang or throw anything else, and what
// it accepts must satisfy every invariant the tensor code relies on.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "mpool/base/error.h"
#include "mpool/loading/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace mpool::loading;
  SafetensorsHeader header;
  try {
    header = parse_safetensors_header(reinterpret_cast<const std::byte*>(data), size, "fuzz.safetensors");
  } catch (const mpool::Error& e) {
    if (e.code() != mpool::ErrorCode::kInvalidInput) std::abort();
    return 0;
  }
  // Accepted: every tensor lies in the data section, has exactly shape x dtype
  // bytes, and no two non-empty tensors share a byte.
  if (header.data_offset + header.data_size != size) std::abort();
  std::vector<bool> used(header.data_size, false);
  for (const TensorInfo& t : header.tensors) {
    if (t.begin > t.end || t.end > header.data_size) std::abort();
    if (t.numel() * dtype_size(t.dtype) != t.end - t.begin) std::abort();
    for (std::uint64_t i = t.begin; i < t.end; ++i) {
      if (used[i]) std::abort();
      used[i] = true;
    }
  }
  return 0;
}
