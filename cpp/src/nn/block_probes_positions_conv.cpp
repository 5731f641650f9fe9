// Probes (probe.h) of the position blocks (positions.h) and the convolutional
// blocks (conv.h), for the tests that compare them with transformers' ALiBi and
// T5 code and diffusers' embeddings, ResnetBlock2D, Upsample2D, Downsample2D and
// mid-block attention. Blocks with weights read them from a safetensors file the
// test wrote ("checkpoint", with an optional "prefix").
#include <string>
#include <utility>
#include <vector>

#include "mpool/base/error.h"
#include "mpool/loading/json.h"
#include "mpool/nn/conv.h"
#include "mpool/nn/flow_match.h"
#include "mpool/nn/positions.h"
#include "mpool/nn/probe.h"

namespace mpool::nn {
namespace {

TimeEmbeddingNorm time_embedding_norm_of(const ProbeInput& in) {
  const auto name = in.get_or<std::string>("time_embedding_norm", "default");
  if (name == "default") return TimeEmbeddingNorm::kDefault;
  check(name == "scale_shift", ErrorCode::kInvalidInput, "time_embedding_norm must be default or scale_shift");
  return TimeEmbeddingNorm::kScaleShift;
}

void register_positions() {
  // Slopes of "heads" (with "max_bias"), and the bias of optional
  // "query_positions" / "key_positions", (n), (t) or (b, n), (b, t); "symmetric":
  // the encoder's -slope x |distance| (alibi_symmetric_bias).
  register_probe("nn.alibi", [](const ProbeInput& in) {
    at::Tensor slopes = alibi_slopes(in.get<int64_t>("heads"), in.get_or<double>("max_bias", 8.0));
    ProbeOutput out{{"slopes", slopes}};
    if (in.tensors.count("query_positions") || in.tensors.count("key_positions"))
      out["bias"] = in.get_or<bool>("symmetric", false)
                        ? alibi_symmetric_bias(slopes, in.tensor("query_positions"), in.tensor("key_positions"))
                        : alibi_bias(slopes, in.tensor("query_positions"), in.tensor("key_positions"));
    return out;
  });
  register_probe("nn.t5_buckets", [](const ProbeInput& in) {
    return ProbeOutput{{"buckets", t5_relative_buckets(in.tensor("relative_position"), in.get<bool>("bidirectional"),
                                                       in.get<int64_t>("num_buckets"),
                                                       in.get<int64_t>("max_distance"))}};
  });
  // The bias of "n" queries from position "start" over "t" keys, from the
  // embedding "scope".weight (default relative_attention_bias).
  register_probe("nn.t5_bias", [](const ProbeInput& in) {
    const Weights w = in.weights();
    T5RelativeBias b = T5RelativeBias::load(w, in.get_or<std::string>("scope", "relative_attention_bias"),
                                            in.get<int64_t>("num_buckets"), in.get<int64_t>("heads"),
                                            in.get<int64_t>("max_distance"), in.get<bool>("bidirectional"));
    return ProbeOutput{{"bias", b(in.get<int64_t>("n"), in.get<int64_t>("t"), in.get_or<int64_t>("start", 0))}};
  });
  register_probe("nn.timestep_embedding", [](const ProbeInput& in) {
    TimestepOptions o;
    o.flip_sin_to_cos = in.get_or<bool>("flip_sin_to_cos", o.flip_sin_to_cos);
    o.downscale_freq_shift = in.get_or<double>("downscale_freq_shift", o.downscale_freq_shift);
    o.scale = in.get_or<double>("scale", o.scale);
    o.max_period = in.get_or<double>("max_period", o.max_period);
    return ProbeOutput{{"out", timestep_embedding(in.tensor("timesteps"), in.get<int64_t>("dim"), o)}};
  });
  register_probe("nn.timestep_mlp", [](const ProbeInput& in) {
    const Weights w = in.weights();
    TimestepEmbedding e = TimestepEmbedding::load(w, in.get<int64_t>("in_channels"), in.get<int64_t>("time_embed_dim"),
                                                  parse_activation(in.get_or<std::string>("act", "silu"), "probe"),
                                                  in.get_or<int64_t>("out_dim", 0), in.get_or<bool>("bias", true));
    return ProbeOutput{{"out", e(in.tensor("sample"))}};
  });
  // The (grid_h x grid_w) table, or with "max_size" SD3's centered crop of h x w.
  register_probe("nn.sincos_2d", [](const ProbeInput& in) {
    const int64_t dim = in.get<int64_t>("dim");
    const double base = in.get_or<double>("base_size", 16.0), scale = in.get_or<double>("interpolation_scale", 1.0);
    if (in.options.contains("max_size")) {
      PatchPositionTable table(dim, in.get<int64_t>("max_size"), base, scale);
      return ProbeOutput{{"out", table.crop(in.get<int64_t>("h"), in.get<int64_t>("w"))}};
    }
    return ProbeOutput{
        {"out", sincos_2d_embedding(dim, in.get<int64_t>("grid_h"), in.get<int64_t>("grid_w"), base, scale)}};
  });
}

void register_conv() {
  register_probe("nn.conv2d", [](const ProbeInput& in) {
    const Weights w = in.weights();
    Conv2d c = Conv2d::load(w, in.get_or<std::string>("scope", "conv"), in.get<int64_t>("in_channels"),
                            in.get<int64_t>("out_channels"), in.get<int64_t>("kernel"),
                            in.get_or<int64_t>("stride", 1), in.get_or<int64_t>("padding", 0),
                            in.get_or<bool>("bias", true));
    return ProbeOutput{{"out", c(in.tensor("x"))}};
  });
  register_probe("nn.resnet_block", [](const ProbeInput& in) {
    const Weights w = in.weights();
    ResnetBlockConfig c;
    c.in_channels = in.get<int64_t>("in_channels");
    c.out_channels = in.get_or<int64_t>("out_channels", 0);
    c.temb_channels = in.get_or<int64_t>("temb_channels", 0);
    c.groups = in.get_or<int64_t>("groups", c.groups);
    c.groups_out = in.get_or<int64_t>("groups_out", 0);
    c.eps = in.get_or<double>("eps", c.eps);
    c.act = parse_activation(in.get_or<std::string>("act", "silu"), "probe");
    c.output_scale_factor = in.get_or<double>("output_scale_factor", 1.0);
    c.time_embedding_norm = time_embedding_norm_of(in);
    c.skip_time_act = in.get_or<bool>("skip_time_act", false);
    c.conv_shortcut_bias = in.get_or<bool>("conv_shortcut_bias", true);
    ResnetBlock2D r = ResnetBlock2D::load(w, c);
    return ProbeOutput{{"out", r(in.tensor("x"), in.optional_tensor("temb"))}};
  });
  // Optional "size": [h, w] instead of 2x.
  register_probe("nn.upsample", [](const ProbeInput& in) {
    const Weights w = in.weights();
    Upsample2D u = Upsample2D::load(w, in.get<int64_t>("channels"), in.get_or<bool>("use_conv", true),
                                    in.get_or<int64_t>("out_channels", 0), in.get_or<int64_t>("kernel", 3),
                                    in.get_or<int64_t>("padding", 1), in.get_or<std::string>("scope", "conv"));
    std::optional<std::pair<int64_t, int64_t>> size;
    if (in.options.contains("size")) {
      const auto hw = in.get<std::vector<int64_t>>("size");
      check(hw.size() == 2, ErrorCode::kInvalidInput, "probe option 'size' must be [h, w]");
      size = std::make_pair(hw[0], hw[1]);
    }
    return ProbeOutput{{"out", u(in.tensor("x"), size)}};
  });
  register_probe("nn.downsample", [](const ProbeInput& in) {
    const Weights w = in.weights();
    Downsample2D d = Downsample2D::load(w, in.get<int64_t>("channels"), in.get_or<bool>("use_conv", true),
                                        in.get_or<int64_t>("out_channels", 0), in.get_or<int64_t>("kernel", 3),
                                        in.get_or<int64_t>("padding", 1), in.get_or<std::string>("scope", "conv"));
    return ProbeOutput{{"out", d(in.tensor("x"))}};
  });
  register_probe("nn.vae_attention", [](const ProbeInput& in) {
    const Weights w = in.weights();
    SpatialAttention a = SpatialAttention::load(w, in.get<int64_t>("channels"), in.get<int64_t>("groups"),
                                                in.get_or<double>("eps", 1e-6), in.get_or<int64_t>("heads", 1),
                                                in.get_or<double>("rescale_output_factor", 1.0));
    return ProbeOutput{{"out", a(in.tensor("x"))}};
  });
}

void register_sampler() {
  // The flow-matching schedule of a scheduler_config.json (option "config", an
  // object) for "steps" steps and an optional "mu"; with "strength", also the
  // first step img2img runs.
  register_probe("nn.flow_match_schedule", [](const ProbeInput& in) {
    const FlowMatchConfig config =
        FlowMatchConfig::from(loading::parse_json_object(in.options.at("config").dump(), "scheduler_config.json"));
    const std::optional<double> mu =
        in.options.contains("mu") ? std::optional<double>(in.get<double>("mu")) : std::nullopt;
    // Option "linear_sigmas": the levels given as linspace(1, 1 / steps, steps), as FLUX's pipelines give them.
    const int64_t steps = in.get<int64_t>("steps");
    const FlowMatchSchedule s = in.get_or<bool>("linear_sigmas", false)
                                    ? config.schedule_from_sigmas(linspace(1.0, 1.0 / static_cast<double>(steps), steps), mu)
                                    : config.schedule(steps, mu);
    ProbeOutput out{{"sigmas", at::tensor(s.sigmas)}, {"timesteps", at::tensor(s.timesteps)}};
    if (in.options.contains("strength"))
      out.emplace("start", at::scalar_tensor(img2img_start_step(steps, in.get<double>("strength")), at::kLong));
    if (in.options.contains("image_seq_len"))
      out.emplace("mu", at::scalar_tensor(config.mu_for(in.get<int64_t>("image_seq_len")), at::kDouble));
    return out;
  });
}

}  // namespace

/// Called once from register_block_probes (block_probes.cpp).
void register_position_and_conv_probes() {
  register_positions();
  register_conv();
  register_sampler();
}

}  // namespace mpool::nn
