#include "mpool/nn/weights.h"

#include <charconv>

#include <algorithm>
#include <mutex>
#include <set>

#include "mpool/base/error.h"
#include "mpool/loading/tensors.h"

namespace mpool::nn {

struct Weights::State {
  State(loading::Checkpoint c, at::ScalarType t, at::Device d, std::string r)
      : checkpoint(std::move(c)), dtype(t), device(d), root(std::move(r)) {}
  loading::Checkpoint checkpoint;
  at::ScalarType dtype;
  at::Device device;
  std::string root;  // the prefix opened: unused tensors are reported under it only
  mutable std::mutex mutex;
  std::set<std::string, std::less<>> taken;
  std::set<std::string, std::less<>> counted;  // stored names, with the row ranges read of them
  size_t bytes = 0;
};

// A renamed view's translation: names under `base` go through `map`, then through
// the renaming of the view renamed() was called on (`outer`), if any.
struct Weights::Renaming {
  std::string base;
  NameMap map;
  std::shared_ptr<const Renaming> outer;
};

StoredName Weights::stored(const std::string& full) const {
  StoredName out{full, false};
  for (const Renaming* r = renaming_.get(); r != nullptr; r = r->outer.get()) {
    if (!out.name.starts_with(r->base)) continue;
    if (auto m = r->map(std::string_view(out.name).substr(r->base.size()))) {
      out.name = r->base + m->name;
      out.unit_trailing_dims = out.unit_trailing_dims || m->unit_trailing_dims;
      check(out.rows.empty() || m->rows.empty(), ErrorCode::kInvalidInput,
            "Weights: nested renamed views both read row ranges of '" + out.name + "'");
      if (!m->rows.empty()) out.rows = m->rows;
    }
  }
  return out;
}

Weights Weights::open(loading::Checkpoint checkpoint, at::ScalarType dtype, at::Device device, std::string_view prefix) {
  auto state = std::make_shared<State>(std::move(checkpoint), dtype, device, std::string(prefix));
  if (device.type() != at::kMeta) {
    std::vector<loading::TensorRef> refs;
    for (const auto& n : state->checkpoint.names())
      if (n.starts_with(prefix)) refs.push_back(state->checkpoint.require(n));
    loading::prefault(refs);
  }
  return Weights(std::move(state), std::string(prefix));
}

Weights Weights::sub(std::string_view name) const {
  if (name.empty()) return *this;
  return Weights(state_, prefix_ + std::string(name) + ".", renaming_, dtype_, int8_);
}

Weights Weights::sub(int64_t i) const {
  return Weights(state_, prefix_ + std::to_string(i) + ".", renaming_, dtype_, int8_);
}

Weights Weights::as(at::ScalarType dtype) const { return Weights(state_, prefix_, renaming_, dtype, int8_); }

Weights Weights::with_int8_linears(bool on) const { return Weights(state_, prefix_, renaming_, dtype_, on); }

Weights Weights::renamed(NameMap map) const {
  check(static_cast<bool>(map), ErrorCode::kInvalidInput, "Weights::renamed: no name map");
  return Weights(state_, prefix_, std::make_shared<const Renaming>(Renaming{prefix_, std::move(map), renaming_}),
                 dtype_, int8_);
}

bool Weights::has(std::string_view name) const {
  return state_->checkpoint.find(stored(this->name(name)).name).has_value();
}

namespace {

std::string rows_text(const std::vector<std::pair<int64_t, int64_t>>& rows) {
  std::string out;
  for (const auto& [b, e] : rows) out += (out.empty() ? "" : ", ") + std::to_string(b) + ":" + std::to_string(e);
  return "[" + out + "]";
}

}  // namespace

at::Tensor Weights::take(const std::string& full, const Shape& shape, bool count) const {
  const StoredName where = stored(full);
  const std::string& name = where.name;
  const std::string rows = where.rows.empty() ? std::string() : " from rows " + rows_text(where.rows);
  const std::string asked = name == full && rows.empty() ? std::string() : " (read as '" + full + "'" + rows + ")";
  const auto ref = state_->checkpoint.find(name);
  check(ref.has_value(), ErrorCode::kInvalidInput, "checkpoint has no tensor '" + name + "'" + asked);
  const Shape stored_shape(ref->info->shape.begin(), ref->info->shape.end());
  bool fits = stored_shape == shape;
  if (!where.rows.empty()) {
    // Row ranges: the asked shape is the ranges' rows by the stored trailing dimensions.
    int64_t total = 0;
    fits = !stored_shape.empty() && !shape.empty() && stored_shape.size() == shape.size() &&
           std::equal(shape.begin() + 1, shape.end(), stored_shape.begin() + 1);
    for (const auto& [b, e] : where.rows) {
      fits = fits && b >= 0 && b < e && e <= stored_shape.front();
      total += e - b;
    }
    fits = fits && total == shape.front();
  } else if (!fits && where.unit_trailing_dims && stored_shape.size() > shape.size()) {
    // A renamed view may read (out, in, 1, 1) as (out, in).
    fits = std::equal(shape.begin(), shape.end(), stored_shape.begin());
    for (size_t i = shape.size(); fits && i < stored_shape.size(); ++i) fits = stored_shape[i] == 1;
  }
  check(fits, ErrorCode::kInvalidInput,
        "tensor '" + name + "'" + asked + " has shape " + c10::str(at::IntArrayRef(stored_shape)) +
            " but the model's config implies " + c10::str(at::IntArrayRef(shape)));
  const at::ScalarType kind = loading::scalar_type(ref->info->dtype);
  const std::optional<at::ScalarType> target =
      at::isFloatingType(kind) ? std::optional<at::ScalarType>(dtype()) : std::nullopt;
  at::Tensor t;
  if (state_->device.type() == at::kMeta) {
    t = at::empty(shape, at::TensorOptions().dtype(target.value_or(kind)).device(at::kMeta));
  } else {
    t = loading::load_tensor(*ref, target, state_->device);
    if (!where.rows.empty()) {
      // A copy of the rows asked for: the slices do not keep the whole tensor alive.
      std::vector<at::Tensor> parts;
      for (const auto& [b, e] : where.rows) parts.push_back(t.narrow(0, b, e - b));
      t = at::cat(parts);
    } else if (stored_shape != shape) {
      t = t.reshape(shape);
    }
  }
  const std::string key = where.rows.empty() ? name : name + rows_text(where.rows);
  std::lock_guard lock(state_->mutex);
  state_->taken.insert(name);
  if (state_->counted.insert(key).second && count) state_->bytes += t.numel() * t.element_size();
  return t;
}

at::Tensor Weights::get(std::string_view name, const Shape& shape) const { return take(this->name(name), shape, true); }

at::Tensor Weights::get_optional(std::string_view name, const Shape& shape) const {
  return has(name) ? get(name, shape) : at::Tensor();
}

at::Tensor Weights::fused_parts(const std::vector<std::pair<std::string, Shape>>& parts) const {
  std::vector<at::Tensor> tensors;
  tensors.reserve(parts.size());
  for (const auto& [n, shape] : parts) tensors.push_back(take(this->name(n), shape, false));
  return at::cat(tensors);
}

at::Tensor Weights::fused(const std::vector<std::pair<std::string, Shape>>& parts) const {
  at::Tensor out = fused_parts(parts);
  std::lock_guard lock(state_->mutex);
  state_->bytes += out.numel() * out.element_size();
  return out;
}

at::Tensor Weights::fused_or_parts(std::string_view fused_name, const Shape& fused_shape,
                                   const std::vector<std::pair<std::string, Shape>>& parts) const {
  return has(fused_name) ? get(fused_name, fused_shape) : fused(parts);
}

LinearWeight Weights::quantized(const at::Tensor& t, const std::string& key, const std::string& what) const {
  LinearWeight out;
  // Rows along the last dimension; a stacked (experts, out, in) weight is one
  // (experts * out, in) matrix of rows, viewed back.
  out.int8 = int8::quantize_rows(t.reshape({-1, t.size(-1)}), what);
  out.int8.q = out.int8.q.view(t.sizes());
  out.int8.scales = out.int8.scales.view(t.sizes().slice(0, t.dim() - 1));
  std::lock_guard lock(state_->mutex);
  if (key.empty() || state_->counted.insert(key).second)
    state_->bytes += out.int8.q.numel() + out.int8.scales.numel() * out.int8.scales.element_size();
  return out;
}

LinearWeight Weights::linear_weight(std::string_view name, const Shape& shape) const {
  const std::string full = this->name(name);
  if (!int8_) return LinearWeight{take(full, shape, true), {}};
  // Counted under its own key (the stored name and the rows read, as take()
  // counts them, marked int8): a tensor also taken as a float (a tied
  // embedding) counts both.
  const StoredName where = stored(full);
  const std::string key = (where.rows.empty() ? where.name : where.name + rows_text(where.rows)) + "#int8";
  const std::string what = "'" + where.name + "'" + (where.rows.empty() ? "" : " rows " + rows_text(where.rows));
  return quantized(take(full, shape, false), key, what);
}

LinearWeight Weights::fused_linear_weight(std::string_view fused_name, const Shape& fused_shape,
                                          const std::vector<std::pair<std::string, Shape>>& parts) const {
  if (!fused_name.empty() && has(fused_name)) return linear_weight(fused_name, fused_shape);
  if (!int8_) return LinearWeight{fused(parts), {}};
  std::string what;  // the parts, in the order they are stacked
  for (const auto& part : parts) what += (what.empty() ? "'" : ", '") + stored(this->name(part.first)).name + "'";
  return quantized(fused_parts(parts), "", what + " (stacked in this order)");
}

Weights Weights::find_prefix(const std::vector<std::string>& candidates, std::string_view probe,
                             std::string_view what) const {
  std::string tried;
  for (const auto& c : candidates) {
    Weights view(state_, prefix_ + c, renaming_, dtype_, int8_);
    if (view.has(probe)) return view;
    tried += (tried.empty() ? "'" : ", '") + c + "'";
  }
  throw Error(ErrorCode::kInvalidInput, "checkpoint has no " + std::string(probe) + " (tried the prefixes " + tried +
                                            "); is this " + std::string(what) + "?");
}

size_t Weights::bytes_taken() const {
  std::lock_guard lock(state_->mutex);
  return state_->bytes;
}

std::vector<std::string> Weights::warnings() const {
  std::vector<std::string> taken;
  {
    std::lock_guard lock(state_->mutex);
    taken.assign(state_->taken.begin(), state_->taken.end());
  }
  std::vector<std::string> out = state_->checkpoint.warnings();
  // Tensors outside the opened prefix belong to other components: not ours to report.
  for (const auto& n : state_->checkpoint.names())
    if (!n.starts_with(state_->root)) taken.push_back(n);
  for (auto& w : state_->checkpoint.unexpected(taken)) out.push_back(std::move(w));
  return out;
}

at::ScalarType Weights::dtype() const { return dtype_.value_or(state_->dtype); }
at::Device Weights::device() const { return state_->device; }
const loading::Checkpoint& Weights::checkpoint() const { return state_->checkpoint; }

bool eat_name_prefix(std::string_view& s, std::string_view head) {
  if (!s.starts_with(head)) return false;
  s.remove_prefix(head.size());
  return true;
}

std::optional<int64_t> eat_name_index(std::string_view& s) {
  int64_t n = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  if (ec != std::errc() || end == s.data() + s.size() || *end != '.') return std::nullopt;
  s.remove_prefix(static_cast<size_t>(end - s.data()) + 1);
  return n;
}

}  // namespace mpool::nn
