#pragma once
// A scoped view of a checkpoint: how every block takes its tensors.
//   Weights w = Weights::open(checkpoint, at::kBFloat16, device);
//   Weights layer = w.sub("model.layers").sub(3);
//   at::Tensor q = layer.get("self_attn.q_proj.weight", {q_out, hidden});
// A tensor is read (converted to the dtype, moved to the device) when a block
// takes it, with its shape checked against what the config implies; errors name
// the full tensor name. What nobody took is reported as warnings. On the meta
// device nothing is read: a model built that way measures its weights exactly
// (the family kit's memory estimate) and checks every name and shape up front.
// A renamed() view reads a checkpoint stored under another naming (an original,
// pre-diffusers layout) through the names the blocks ask for; a name may also be
// read from row ranges of a stored tensor (a third of a fused qkv, two halves of
// an adaLN projection in swapped order).
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mpool/loading/safetensors.h"
#include "mpool/nn/int8.h"

namespace mpool::nn {

using Shape = std::vector<int64_t>;

/// Where a renamed view finds a tensor the blocks ask for.
struct StoredName {
  /// The stored name, relative to the view renamed() was called on.
  std::string name;
  /// Stored with trailing dimensions of 1 beyond the shape asked for (a 1x1
  /// convolution read as a linear weight); the tensor is viewed without them.
  bool unit_trailing_dims = false;
  /// When not empty: the tensor asked for is these [begin, end) row ranges (along
  /// dim 0) of the stored tensor, concatenated in this order; its other dimensions
  /// are the stored ones. One range reads a slice (q of a fused qkv), several
  /// reorder row blocks (shift, scale -> scale, shift).
  std::vector<std::pair<int64_t, int64_t>> rows;
};
/// A linear layer's weight as a view stores it: `weight` (out, in) in the view's
/// dtype, or, in a view with int8_linears(), `int8` (rows and scales) with
/// `weight` undefined.
struct LinearWeight {
  at::Tensor weight;
  int8::Quantized int8;
};

/// Maps a name asked for (relative to the renamed view) to where it is stored;
/// nullopt: stored under the same name.
using NameMap = std::function<std::optional<StoredName>(std::string_view name)>;

// Parsing the names a NameMap is asked for, one dotted segment at a time.
/// Takes `head` off the front of `s`; false (s untouched) when s does not start with it.
bool eat_name_prefix(std::string_view& s, std::string_view head);
/// Takes "<n>." off the front of `s` and returns n; nullopt (s untouched) otherwise.
std::optional<int64_t> eat_name_index(std::string_view& s);

class Weights {
 public:
  /// The whole of `checkpoint`; floating-point tensors become `dtype` on `device`
  /// (integer and bool tensors keep theirs). The file pages under `prefix` are
  /// faulted in up front unless the device is meta.
  static Weights open(loading::Checkpoint checkpoint, at::ScalarType dtype, at::Device device,
                      std::string_view prefix = "");

  /// The view under `name` ("encoder" -> "encoder."); an empty name is this view.
  Weights sub(std::string_view name) const;
  /// The view under index `i` ("layers" then sub(3) -> "layers.3.").
  Weights sub(int64_t i) const;
  /// This view, with every name asked under it translated by `map` first; views
  /// taken from it keep the translation. Errors name the stored tensor and the
  /// name asked for; unused-tensor warnings name stored tensors.
  Weights renamed(NameMap map) const;
  /// The full name of `name` in this view.
  std::string name(std::string_view name) const { return prefix_ + std::string(name); }
  const std::string& prefix() const noexcept { return prefix_; }
  /// This view with floating-point tensors taken as `dtype` instead of the dtype
  /// the checkpoint was opened with; accounting and warnings stay shared (T5
  /// keeps its feed-forward output projection in float32 under float16).
  Weights as(at::ScalarType dtype) const;

  /// This view with linear weights (linear_weight, and so nn::Linear) quantized to
  /// int8 rows at load (int8.h); other tensors keep dtype(). Views taken from it
  /// keep the setting. The bytes counted are the int8 ones.
  Weights with_int8_linears(bool on = true) const;
  bool int8_linears() const noexcept { return int8_; }

  /// The linear weight `name` (out, in), as this view stores linear weights; a
  /// stacked one (experts, out, in) is quantized row by row alike.
  LinearWeight linear_weight(std::string_view name, const Shape& shape) const;
  /// fused_or_parts() (fused() when `fused_name` is empty) as a linear weight.
  LinearWeight fused_linear_weight(std::string_view fused_name, const Shape& fused_shape,
                                   const std::vector<std::pair<std::string, Shape>>& parts) const;

  /// Whether the checkpoint holds `name` in this view.
  bool has(std::string_view name) const;
  /// The tensor `name`, which must have `shape`; InvalidInput names it otherwise.
  at::Tensor get(std::string_view name, const Shape& shape) const;
  /// The tensor when present (shape checked), else an undefined tensor.
  at::Tensor get_optional(std::string_view name, const Shape& shape) const;
  /// `parts` concatenated along dim 0 (q/k/v into one projection, gate/up into one):
  /// costs one copy of the parts, which then no longer view the file mapping.
  at::Tensor fused(const std::vector<std::pair<std::string, Shape>>& parts) const;
  /// The stored fused tensor `fused_name` when the checkpoint has it (Phi-3's
  /// qkv_proj), else `parts` fused: one weight whatever the checkpoint stores.
  at::Tensor fused_or_parts(std::string_view fused_name, const Shape& fused_shape,
                            const std::vector<std::pair<std::string, Shape>>& parts) const;

  /// The first of `candidates` (prefixes such as "", "model.", "bert.") under which
  /// `probe` exists, as a view; InvalidInput lists what was tried and `what`.
  Weights find_prefix(const std::vector<std::string>& candidates, std::string_view probe, std::string_view what) const;

  /// Bytes of every distinct tensor taken so far (fused parts count as the fused tensor).
  size_t bytes_taken() const;
  /// Warnings: the checkpoint's own, then one per stored tensor nobody took.
  std::vector<std::string> warnings() const;
  /// The dtype floating-point tensors are taken as in this view.
  at::ScalarType dtype() const;
  at::Device device() const;
  const loading::Checkpoint& checkpoint() const;

 private:
  struct State;
  struct Renaming;
  Weights(std::shared_ptr<State> state, std::string prefix, std::shared_ptr<const Renaming> renaming = nullptr,
          std::optional<at::ScalarType> dtype = std::nullopt, bool int8 = false)
      : state_(std::move(state)), prefix_(std::move(prefix)), renaming_(std::move(renaming)), dtype_(dtype),
        int8_(int8) {}
  at::Tensor take(const std::string& full, const Shape& shape, bool count) const;
  at::Tensor fused_parts(const std::vector<std::pair<std::string, Shape>>& parts) const;
  /// `t` as int8 rows, counting their bytes once under `key` (none: always);
  /// errors name it as `what`.
  LinearWeight quantized(const at::Tensor& t, const std::string& key, const std::string& what) const;
  StoredName stored(const std::string& full) const;

  std::shared_ptr<State> state_;
  std::string prefix_;
  std::shared_ptr<const Renaming> renaming_;
  std::optional<at::ScalarType> dtype_;  // unset: the state's
  bool int8_ = false;
};

}  // namespace mpool::nn
