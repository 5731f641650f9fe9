// The FLUX transformer's probes, for tests/python/test_native_flux.py.
#include <c10/core/InferenceMode.h>

#include "models/flux/single_file.h"
#include "models/flux/transformer.h"
#include "mpool/base/error.h"
#include "mpool/loading/json.h"
#include "mpool/loading/safetensors.h"
#include "mpool/loading/tensors.h"
#include "mpool/models/families.h"
#include "mpool/nn/probe.h"

namespace mpool::models::flux {
namespace {

struct Opened {
  FluxConfig config;
  nn::Weights weights;
};

// A diffusers transformer folder ("path"), or a single file in the original names
// ("file", at the root or under model.diffusion_model.), in option "dtype".
Opened open(const nn::ProbeInput& in) {
  const std::string dtype_name = in.get_or<std::string>("dtype", "float32");
  const auto dtype = loading::parse_scalar_type(dtype_name);
  check(dtype.has_value(), ErrorCode::kInvalidInput, "unknown dtype '" + dtype_name + "'");
  if (!in.options.contains("file")) {
    const std::filesystem::path dir = in.get<std::string>("path");
    return Opened{FluxConfig::from(loading::load_json_object(dir / "config.json")),
                  nn::Weights::open(loading::Checkpoint::open(dir), *dtype, at::kCPU)};
  }
  const std::string file = in.get<std::string>("file");
  loading::Checkpoint c = loading::Checkpoint::open(file);
  const auto prefix = flux_prefix(c);
  check(prefix.has_value(), ErrorCode::kInvalidInput,
        file + " holds no FLUX transformer in the original names (img_in.weight, vector_in.in_layer.weight)");
  const FluxConfig config = infer_flux(c, *prefix);
  if (!prefix->empty()) c = c.with_prefix(*prefix);
  return Opened{config, nn::Weights::open(std::move(c), *dtype, at::kCPU).renamed(flux_original_names(config))};
}

at::Tensor scalar(int64_t v) { return at::scalar_tensor(v, at::kLong); }

}  // namespace

void register_probes() {
  // The transformer's output for latents, timestep, guidance (dev models only),
  // pooled, context, image_ids and text_ids; also "unused_tensors", how many
  // stored tensors the model did not take.
  nn::register_probe("flux.transformer", [](const nn::ProbeInput& in) {
    const Opened m = open(in);
    const FluxTransformer model = FluxTransformer::load(m.weights, m.config);
    c10::InferenceMode guard;
    const at::Tensor sample =
        model(in.tensor("latents"), in.tensor("timestep"), in.optional_tensor("guidance"), in.tensor("pooled"),
              in.tensor("context"), in.tensor("image_ids"), in.tensor("text_ids"));
    const auto unused = static_cast<int64_t>(m.weights.warnings().size() - m.weights.checkpoint().warnings().size());
    return nn::ProbeOutput{{"sample", sample}, {"unused_tensors", scalar(unused)}};
  });
  // The config inferred from a single file's shapes (option "file"), one output per key.
  nn::register_probe("flux.single_file_config", [](const nn::ProbeInput& in) {
    const loading::Checkpoint c = loading::Checkpoint::open(in.get<std::string>("file"));
    const auto prefix = flux_prefix(c);
    check(prefix.has_value(), ErrorCode::kInvalidInput, "the file holds no FLUX transformer in the original names");
    const FluxConfig f = infer_flux(c, *prefix);
    return nn::ProbeOutput{{"patch_size", scalar(f.patch_size)},
                           {"in_channels", scalar(f.in_channels)},
                           {"out_channels", scalar(f.out_channels)},
                           {"num_layers", scalar(f.num_layers)},
                           {"num_single_layers", scalar(f.num_single_layers)},
                           {"attention_head_dim", scalar(f.attention_head_dim)},
                           {"num_attention_heads", scalar(f.num_attention_heads)},
                           {"joint_attention_dim", scalar(f.joint_attention_dim)},
                           {"pooled_projection_dim", scalar(f.pooled_projection_dim)},
                           {"guidance_embeds", scalar(f.guidance_embeds ? 1 : 0)},
                           {"axes_dims_rope", at::tensor(f.axes_dims_rope)},
                           {"prefix_length", scalar(static_cast<int64_t>(prefix->size()))}};
  });
}

}  // namespace mpool::models::flux
