#include "mpool/nn/positions.h"

#include <cmath>
#include <string>

#include "mpool/base/error.h"
#include "mpool/nn/mlp.h"

namespace mpool::nn {
namespace {

std::string str(double v) {
  std::string s = std::to_string(v);
  s.erase(s.find_last_not_of('0') + 1);
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

// sin then cos of pos (m) times dim / 2 frequencies 10000^(-k / (dim / 2)): (m, dim) float64.
at::Tensor sincos_1d(const at::Tensor& pos, int64_t dim) {
  const int64_t half = dim / 2;
  at::Tensor omega = at::arange(half, at::TensorOptions().dtype(at::kDouble)) / (static_cast<double>(dim) / 2.0);
  omega = 1.0 / at::pow(10000.0, omega);
  at::Tensor angles = at::outer(pos.reshape({-1}).to(at::kDouble), omega);
  return at::cat({at::sin(angles), at::cos(angles)}, 1);
}

}  // namespace

// --- ALiBi

at::Tensor alibi_slopes(int64_t heads, double max_bias) {
  check(heads >= 1, ErrorCode::kInvalidInput, "alibi: heads must be at least 1, got " + std::to_string(heads));
  check(max_bias > 0 && std::isfinite(max_bias), ErrorCode::kInvalidInput,
        "alibi: max_bias must be a positive number, got " + str(max_bias));
  int64_t p = 1;
  while (p * 2 <= heads) p *= 2;
  std::vector<double> slopes;
  slopes.reserve(heads);
  for (int64_t i = 1; i <= p; ++i) slopes.push_back(std::exp2(-max_bias * static_cast<double>(i) / p));
  for (int64_t j = 0; j < heads - p; ++j)
    slopes.push_back(std::exp2(-max_bias * static_cast<double>(2 * j + 1) / (2.0 * p)));
  return at::tensor(slopes, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat);
}

namespace {

// key - query, (n, t) or (b, n, t), after alibi_bias's checks; exact in int64 when
// the positions are integers.
at::Tensor alibi_distance(const at::Tensor& slopes, const at::Tensor& query_positions,
                          const at::Tensor& key_positions) {
  check(slopes.defined() && slopes.dim() == 1, ErrorCode::kInvalidInput, "alibi: slopes must be 1-D (heads)");
  check(query_positions.defined() && key_positions.defined(), ErrorCode::kInvalidInput,
        "alibi: query_positions and key_positions are required");
  const int64_t dims = query_positions.dim();
  check((dims == 1 || dims == 2) && key_positions.dim() == dims, ErrorCode::kInvalidInput,
        "alibi: query_positions and key_positions must both be 1-D (n), (t) or both 2-D (b, n), (b, t); got " +
            c10::str(query_positions.sizes()) + " and " + c10::str(key_positions.sizes()));
  check(dims == 1 || query_positions.size(0) == key_positions.size(0), ErrorCode::kInvalidInput,
        "alibi: query_positions and key_positions have different batch sizes: " +
            c10::str(query_positions.sizes()) + " and " + c10::str(key_positions.sizes()));
  const bool integral = !at::isFloatingType(query_positions.scalar_type()) &&
                        !at::isFloatingType(key_positions.scalar_type());
  const at::ScalarType kind = integral ? at::kLong : at::kFloat;
  return key_positions.to(kind).unsqueeze(-2) - query_positions.to(kind).unsqueeze(-1);
}

// slopes (heads) times distance (n, t) or (b, n, t): (heads, n, t) or (b, heads, n, t).
at::Tensor times_slopes(const at::Tensor& slopes, const at::Tensor& distance) {
  const at::Tensor s = slopes.to(at::kFloat).to(distance.device()).view({slopes.size(0), 1, 1});
  return s * distance.to(at::kFloat).unsqueeze(-3);
}

}  // namespace

at::Tensor alibi_bias(const at::Tensor& slopes, const at::Tensor& query_positions, const at::Tensor& key_positions) {
  return times_slopes(slopes, alibi_distance(slopes, query_positions, key_positions));
}

at::Tensor alibi_symmetric_bias(const at::Tensor& slopes, const at::Tensor& query_positions,
                                const at::Tensor& key_positions) {
  return times_slopes(slopes, -at::abs(alibi_distance(slopes, query_positions, key_positions)));
}

// --- T5

at::Tensor t5_relative_buckets(const at::Tensor& relative_position, bool bidirectional, int64_t num_buckets,
                               int64_t max_distance) {
  check(relative_position.defined() && !at::isFloatingType(relative_position.scalar_type()) &&
            relative_position.scalar_type() != at::kBool,
        ErrorCode::kInvalidInput, "t5 relative positions must be an integer tensor");
  int64_t buckets = num_buckets;
  at::Tensor rel = relative_position.to(at::kLong);
  at::Tensor out = at::zeros_like(rel);
  if (bidirectional) {
    buckets /= 2;
    out = out + (rel > 0).to(at::kLong) * buckets;  // keys after the query: the upper half
    rel = at::abs(rel);
  } else {
    rel = -at::clamp_max(rel, 0);  // keys after the query collapse to distance 0
  }
  const int64_t exact = buckets / 2;
  check(exact >= 1, ErrorCode::kInvalidInput,
        "t5 relative buckets: num_buckets " + std::to_string(num_buckets) + " leaves no exact bucket" +
            (bidirectional ? " per direction" : ""));
  check(max_distance > exact, ErrorCode::kInvalidInput,
        "t5 relative buckets: max_distance " + std::to_string(max_distance) + " must exceed the " +
            std::to_string(exact) + " exact buckets");
  // Distances from `exact` on: logarithmic bins up to max_distance, in float32 as
  // T5 computes them (the bin edges depend on that rounding). The clamp keeps the
  // log finite where the exact branch is taken anyway.
  at::Tensor far = at::clamp_min(rel, exact).to(at::kFloat) / exact;
  far = at::log(far) / std::log(static_cast<double>(max_distance) / static_cast<double>(exact)) *
        static_cast<double>(buckets - exact);
  far = at::clamp_max(far.to(at::kLong) + exact, buckets - 1);
  return out + at::where(rel < exact, rel, far);
}

T5RelativeBias T5RelativeBias::load(const Weights& w, std::string_view name, int64_t num_buckets, int64_t heads,
                                    int64_t max_distance, bool bidirectional) {
  check(num_buckets > 0 && heads > 0, ErrorCode::kInvalidInput,
        w.name(name) + ": num_buckets and heads must be positive");
  // Validates the bucket settings once, at load.
  t5_relative_buckets(at::zeros({1}, at::kLong), bidirectional, num_buckets, max_distance);
  T5RelativeBias b;
  b.embedding = w.sub(name).get("weight", {num_buckets, heads});
  b.bidirectional = bidirectional;
  b.max_distance = max_distance;
  return b;
}

at::Tensor T5RelativeBias::operator()(int64_t n, int64_t t, int64_t start) const {
  check(n >= 0 && t >= 0 && start >= 0, ErrorCode::kInvalidInput,
        "t5 relative bias: lengths and start must be non-negative");
  const auto longs = at::TensorOptions().dtype(at::kLong).device(embedding.device());
  at::Tensor query = (at::arange(n, longs) + start).view({n, 1});
  at::Tensor key = at::arange(t, longs).view({1, t});
  at::Tensor buckets = t5_relative_buckets(key - query, bidirectional, num_buckets(), max_distance);
  return at::embedding(embedding, buckets).permute({2, 0, 1}).unsqueeze(0);  // (1, heads, n, t)
}

// --- timesteps

at::Tensor timestep_embedding(const at::Tensor& timesteps, int64_t dim, const TimestepOptions& options) {
  check(timesteps.defined() && timesteps.dim() == 1, ErrorCode::kInvalidInput,
        "timestep embedding: timesteps must be 1-D (n), got " +
            (timesteps.defined() ? c10::str(timesteps.sizes()) : std::string("none")));
  const int64_t half = dim / 2;
  check(dim >= 2 && static_cast<double>(half) != options.downscale_freq_shift, ErrorCode::kInvalidInput,
        "timestep embedding: dim " + std::to_string(dim) + " with downscale_freq_shift " +
            str(options.downscale_freq_shift) + " gives no frequencies (dim / 2 - shift must be non-zero)");
  check(options.max_period > 0, ErrorCode::kInvalidInput, "timestep embedding: max_period must be positive");
  const auto floats = at::TensorOptions().dtype(at::kFloat).device(timesteps.device());
  at::Tensor exponent = at::arange(half, floats) * -std::log(options.max_period);
  at::Tensor freqs = at::exp(exponent / (static_cast<double>(half) - options.downscale_freq_shift));
  at::Tensor args = timesteps.to(at::kFloat).unsqueeze(1) * freqs.unsqueeze(0);
  args = args * options.scale;
  at::Tensor emb = options.flip_sin_to_cos ? at::cat({at::cos(args), at::sin(args)}, -1)
                                           : at::cat({at::sin(args), at::cos(args)}, -1);
  if (dim % 2 == 1) emb = at::constant_pad_nd(emb, {0, 1});
  return emb;
}

TimestepEmbedding TimestepEmbedding::load(const Weights& w, int64_t in, int64_t hidden, Activation act, int64_t out,
                                          bool bias) {
  TimestepEmbedding e;
  e.linear_1 = Linear::load(w, "linear_1", hidden, in, bias);
  e.linear_2 = Linear::load(w, "linear_2", out > 0 ? out : hidden, hidden, bias);
  e.act = act;
  return e;
}

at::Tensor TimestepEmbedding::operator()(const at::Tensor& x) const {
  check(x.defined() && x.dim() >= 1 && x.size(-1) == linear_1.in_features(), ErrorCode::kInvalidInput,
        "timestep embedding MLP: input must end in " + std::to_string(linear_1.in_features()) + " features, got " +
            (x.defined() ? c10::str(x.sizes()) : std::string("none")));
  return linear_2(activate(act, linear_1(x)));
}

// --- 2-D sin-cos

at::Tensor sincos_2d_embedding(int64_t dim, int64_t grid_h, int64_t grid_w, double base_size,
                               double interpolation_scale) {
  check(dim > 0 && dim % 4 == 0, ErrorCode::kInvalidInput,
        "2-D sin-cos embedding: dim must be a positive multiple of 4, got " + std::to_string(dim));
  check(grid_h > 0 && grid_w > 0, ErrorCode::kInvalidInput,
        "2-D sin-cos embedding: the grid must be positive, got " + std::to_string(grid_h) + " x " +
            std::to_string(grid_w));
  check(base_size > 0 && interpolation_scale > 0, ErrorCode::kInvalidInput,
        "2-D sin-cos embedding: base_size and interpolation_scale must be positive");
  // Coordinates in float32, as diffusers computes them; the sinusoids in float64.
  const auto floats = at::TensorOptions().dtype(at::kFloat);
  at::Tensor rows = at::arange(grid_h, floats) / (static_cast<double>(grid_h) / base_size) / interpolation_scale;
  at::Tensor cols = at::arange(grid_w, floats) / (static_cast<double>(grid_w) / base_size) / interpolation_scale;
  at::Tensor col_of = cols.view({1, grid_w}).expand({grid_h, grid_w});
  at::Tensor row_of = rows.view({grid_h, 1}).expand({grid_h, grid_w});
  return at::cat({sincos_1d(col_of, dim / 2), sincos_1d(row_of, dim / 2)}, 1).to(at::kFloat);
}

PatchPositionTable::PatchPositionTable(int64_t dim, int64_t max_size, double base_size, double interpolation_scale,
                                       at::ScalarType dtype, at::Device device)
    : table_(sincos_2d_embedding(dim, max_size, max_size, base_size, interpolation_scale)
                 .view({max_size, max_size, dim})
                 .to(device, dtype)),
      max_size_(max_size) {}

at::Tensor PatchPositionTable::crop(int64_t h, int64_t w) const {
  check(table_.defined(), ErrorCode::kInvalidInput, "patch position table: not built");
  check(h >= 1 && h <= max_size_ && w >= 1 && w <= max_size_, ErrorCode::kInvalidInput,
        "patch position table: a latent of " + std::to_string(h) + " x " + std::to_string(w) +
            " patches does not fit pos_embed_max_size " + std::to_string(max_size_));
  const int64_t top = (max_size_ - h) / 2, left = (max_size_ - w) / 2;
  return table_.narrow(0, top, h).narrow(1, left, w).reshape({h * w, table_.size(2)});
}

}  // namespace mpool::nn
