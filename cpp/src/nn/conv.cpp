#include "mpool/nn/conv.h"

#include "mpool/base/error.h"
#include "mpool/nn/mlp.h"

namespace mpool::nn {
namespace {

std::string shape_of(const at::Tensor& t) { return t.defined() ? c10::str(t.sizes()) : std::string("none"); }

// InvalidInput unless x is (b, channels, h, w).
void check_image(const at::Tensor& x, int64_t channels, const std::string& what) {
  check(x.defined() && x.dim() == 4 && x.size(1) == channels, ErrorCode::kInvalidInput,
        what + ": input must be (b, " + std::to_string(channels) + ", h, w), got " + shape_of(x));
}

// The scope's name without its trailing dot ("decoder.mid_block.resnets.0"), or
// `fallback` at the root.
std::string scope_name(const Weights& w, const char* fallback) {
  const std::string& p = w.prefix();
  return p.empty() ? std::string(fallback) : p.substr(0, p.size() - 1);
}

}  // namespace

Conv2d Conv2d::load(const Weights& w, std::string_view name, int64_t in, int64_t out, int64_t kernel, int64_t stride,
                    int64_t padding, bool bias) {
  check(in > 0 && out > 0 && kernel > 0 && stride > 0 && padding >= 0, ErrorCode::kInvalidInput,
        w.name(name) + ": channels, kernel and stride must be positive and padding non-negative");
  const Weights s = w.sub(name);
  Conv2d c;
  c.weight = s.get("weight", {out, in, kernel, kernel});
  if (bias) c.bias = s.get("bias", {out});
  c.stride = stride;
  c.padding = padding;
  c.name = w.name(name);
  return c;
}

at::Tensor Conv2d::operator()(const at::Tensor& x) const {
  check_image(x, in_channels(), name);
  return at::conv2d(x, weight, bias, {stride, stride}, {padding, padding});
}

// --- ResnetBlock2D

ResnetBlock2D ResnetBlock2D::load(const Weights& w, const ResnetBlockConfig& config) {
  ResnetBlock2D r;
  r.config_ = config;
  ResnetBlockConfig& c = r.config_;
  r.name_ = scope_name(w, "resnet block");
  check(c.in_channels > 0, ErrorCode::kInvalidInput, r.name_ + ": in_channels must be positive");
  if (c.out_channels == 0) c.out_channels = c.in_channels;
  if (c.groups_out == 0) c.groups_out = c.groups;
  check(c.out_channels > 0 && c.temb_channels >= 0, ErrorCode::kInvalidInput,
        r.name_ + ": out_channels must be positive and temb_channels non-negative");
  check(c.output_scale_factor != 0, ErrorCode::kInvalidInput, r.name_ + ": output_scale_factor must be non-zero");
  r.norm1_ = GroupNorm::load(w, "norm1", c.groups, c.in_channels, c.eps);
  r.conv1_ = Conv2d::load(w, "conv1", c.in_channels, c.out_channels, 3, 1, 1);
  if (c.temb_channels > 0) {
    const int64_t width = c.time_embedding_norm == TimeEmbeddingNorm::kScaleShift ? 2 * c.out_channels
                                                                                  : c.out_channels;
    r.time_emb_proj_ = Linear::load(w, "time_emb_proj", width, c.temb_channels, true);
  }
  check(c.temb_channels > 0 || c.time_embedding_norm != TimeEmbeddingNorm::kScaleShift, ErrorCode::kInvalidInput,
        r.name_ + ": a scale-shift time embedding needs temb_channels");
  r.norm2_ = GroupNorm::load(w, "norm2", c.groups_out, c.out_channels, c.eps);
  r.conv2_ = Conv2d::load(w, "conv2", c.out_channels, c.out_channels, 3, 1, 1);
  if (c.in_channels != c.out_channels)
    r.conv_shortcut_ = Conv2d::load(w, "conv_shortcut", c.in_channels, c.out_channels, 1, 1, 0, c.conv_shortcut_bias);
  return r;
}

at::Tensor ResnetBlock2D::operator()(const at::Tensor& x, const at::Tensor& temb) const {
  const auto& c = config_;
  check_image(x, c.in_channels, name_);
  if (time_emb_proj_) {
    check(temb.defined() && temb.dim() == 2 && temb.size(0) == x.size(0) && temb.size(1) == c.temb_channels,
          ErrorCode::kInvalidInput,
          name_ + ": temb must be (" + std::to_string(x.size(0)) + ", " + std::to_string(c.temb_channels) +
              "), got " + shape_of(temb));
  } else {
    check(!temb.defined(), ErrorCode::kInvalidInput, name_ + ": the block has no time_emb_proj, but a temb was given");
  }
  at::Tensor h = conv1_(activate(c.act, norm1_(x)));
  at::Tensor t;
  if (time_emb_proj_)
    t = (*time_emb_proj_)(c.skip_time_act ? temb : activate(c.act, temb)).unsqueeze(-1).unsqueeze(-1);
  if (t.defined() && c.time_embedding_norm == TimeEmbeddingNorm::kScaleShift) {
    auto parts = t.chunk(2, 1);
    h = norm2_(h) * (parts[0] + 1) + parts[1];
  } else {
    if (t.defined()) h = h + t;
    h = norm2_(h);
  }
  h = conv2_(activate(c.act, h));
  const at::Tensor skip = conv_shortcut_ ? (*conv_shortcut_)(x) : x;
  return (skip + h) / c.output_scale_factor;
}

// --- up / down

Upsample2D Upsample2D::load(const Weights& w, int64_t channels, bool use_conv, int64_t out_channels, int64_t kernel,
                            int64_t padding, std::string_view name) {
  check(channels > 0, ErrorCode::kInvalidInput, w.name(name) + ": upsample channels must be positive");
  Upsample2D u;
  u.channels = channels;
  if (use_conv) {
    u.conv = Conv2d::load(w, name, channels, out_channels > 0 ? out_channels : channels, kernel, 1, padding);
  } else {
    check(out_channels == 0 || out_channels == channels, ErrorCode::kInvalidInput,
          w.name(name) + ": an upsample without conv keeps its " + std::to_string(channels) + " channels");
  }
  return u;
}

at::Tensor Upsample2D::operator()(const at::Tensor& x, std::optional<std::pair<int64_t, int64_t>> size) const {
  check_image(x, channels, conv ? conv->name : std::string("upsample"));
  at::Tensor h;
  if (size) {
    check(size->first > 0 && size->second > 0, ErrorCode::kInvalidInput, "upsample: output size must be positive");
    h = at::upsample_nearest2d(x, at::IntArrayRef{size->first, size->second});
  } else {
    h = at::upsample_nearest2d(x, at::OptionalIntArrayRef(), std::optional<at::ArrayRef<double>>({2.0, 2.0}));
  }
  return conv ? (*conv)(h) : h;
}

Downsample2D Downsample2D::load(const Weights& w, int64_t channels, bool use_conv, int64_t out_channels,
                                int64_t kernel, int64_t padding, std::string_view name) {
  check(channels > 0, ErrorCode::kInvalidInput, w.name(name) + ": downsample channels must be positive");
  Downsample2D d;
  d.channels = channels;
  d.padding = padding;
  if (use_conv) {
    d.conv = Conv2d::load(w, name, channels, out_channels > 0 ? out_channels : channels, kernel, 2, padding);
  } else {
    check(out_channels == 0 || out_channels == channels, ErrorCode::kInvalidInput,
          w.name(name) + ": a downsample without conv (average pooling) keeps its " + std::to_string(channels) +
              " channels");
  }
  return d;
}

at::Tensor Downsample2D::operator()(const at::Tensor& x) const {
  if (!conv) {
    check_image(x, channels, "downsample");
    return at::avg_pool2d(x, {2, 2}, {2, 2});
  }
  check_image(x, channels, conv->name);
  // Padding 0: one zero row and column on the bottom and right, so that the
  // stride-2 kernel covers the last pixels (the VAE encoder's layout).
  return (*conv)(padding == 0 ? at::constant_pad_nd(x, {0, 1, 0, 1}) : x);
}

// --- SpatialAttention

SpatialAttention SpatialAttention::load(const Weights& w, int64_t channels, int64_t groups, double eps, int64_t heads,
                                        double rescale_output_factor) {
  SpatialAttention a;
  a.name_ = scope_name(w, "attention");
  check(channels > 0 && heads > 0 && channels % heads == 0, ErrorCode::kInvalidInput,
        a.name_ + ": " + std::to_string(heads) + " heads do not divide " + std::to_string(channels) + " channels");
  check(rescale_output_factor != 0, ErrorCode::kInvalidInput, a.name_ + ": rescale_output_factor must be non-zero");
  a.norm_ = GroupNorm::load(w, "group_norm", groups, channels, eps);
  AttentionShape shape;
  shape.hidden = channels;
  shape.heads = heads;
  shape.head_dim = channels / heads;
  shape.qkv_bias = true;
  shape.o_bias = true;
  AttentionNames names;
  names.q = "to_q";
  names.k = "to_k";
  names.v = "to_v";
  names.o = "to_out.0";
  names.fused_qkv = "";  // diffusers stores the three projections apart
  a.attention_ = Attention::load(w, shape, names);
  a.channels_ = channels;
  a.rescale_ = rescale_output_factor;
  return a;
}

at::Tensor SpatialAttention::operator()(const at::Tensor& x) const {
  check_image(x, channels_, name_);
  const int64_t b = x.size(0), h = x.size(2), w = x.size(3);
  // (b, c, h, w) -> (b, h*w, c): one token per pixel.
  at::Tensor tokens = norm_(x).view({b, channels_, h * w}).transpose(1, 2);
  at::Tensor out = attention_(tokens).transpose(1, 2).reshape({b, channels_, h, w});
  return (out + x) / rescale_;
}

}  // namespace mpool::nn
