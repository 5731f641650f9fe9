// The autoencoders' probes, for tests/python/test_native_vae.py. Options: "path",
// a diffusers folder (config.json and diffusion_pytorch_model.safetensors); with
// "checkpoint" (and "prefix"), the weights come from that single file instead,
// under the prefix ("first_stage_model" in an SD3 file), in either layout. Each
// probe also returns "unused_tensors": how many stored tensors (under the prefix)
// the model did not take, so a test proves the names cover the whole state dict.
#include "models/vae/autoencoder_kl.h"
#include "models/vae/autoencoder_tiny.h"
#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "mpool/loading/safetensors.h"
#include "mpool/models/families.h"
#include "mpool/models/kit.h"
#include "mpool/nn/probe.h"

namespace mpool::models::vae {

namespace {

struct Opened {
  loading::ModelConfig config;
  nn::Weights weights;
};

Opened open(const nn::ProbeInput& in) {
  if (!in.options.contains("checkpoint")) {
    kit::ProbedModel m = kit::open_probed_model(in);
    return Opened{std::move(m.config), std::move(m.weights)};
  }
  check(in.get_or<std::string>("dtype", "float32") == "float32", ErrorCode::kInvalidInput,
        "the autoencoder probes run in float32");
  // Opened under the prefix, so that the file's other components are not "unused".
  const std::string prefix = in.get_or<std::string>("prefix", "");
  loading::Checkpoint file = loading::Checkpoint::open(in.get<std::string>("checkpoint"));
  if (!prefix.empty()) file = file.with_prefix(prefix + ".");
  return Opened{loading::load_model_config(in.get<std::string>("path")),
                nn::Weights::open(std::move(file), at::kFloat, at::kCPU)};
}

// `out` plus the count of stored tensors nobody took.
nn::ProbeOutput with_unused(nn::ProbeOutput out, const nn::Weights& w) {
  const auto unused = static_cast<int64_t>(w.warnings().size() - w.checkpoint().warnings().size());
  out["unused_tensors"] = at::scalar_tensor(unused, at::kLong);
  return out;
}

}  // namespace

void register_probes() {
  // The latent distribution after quant_conv: mean and clamped logvar.
  nn::register_probe("vae.encode", [](const nn::ProbeInput& in) {
    const Opened m = open(in);
    const auto vae = AutoencoderKL::load(m.weights, AutoencoderKLConfig::from(m.config));
    const auto moments = vae.encode(in.tensor("images"));
    return with_unused({{"mean", moments.mean}, {"logvar", moments.logvar}}, m.weights);
  });
  // Unscaled latents to images, as AutoencoderKL.decode(z).sample.
  nn::register_probe("vae.decode", [](const nn::ProbeInput& in) {
    const Opened m = open(in);
    const auto vae = AutoencoderKL::load(m.weights, AutoencoderKLConfig::from(m.config));
    return with_unused({{"sample", vae.decode(in.tensor("latents"))}}, m.weights);
  });
  // As AutoencoderTiny.encode(x).latents.
  nn::register_probe("taesd.encode", [](const nn::ProbeInput& in) {
    const Opened m = open(in);
    const auto taesd = AutoencoderTiny::load(m.weights, AutoencoderTinyConfig::from(m.config));
    return with_unused({{"latents", taesd.encode(in.tensor("images"))}}, m.weights);
  });
  // As AutoencoderTiny.decode(z).sample.
  nn::register_probe("taesd.decode", [](const nn::ProbeInput& in) {
    const Opened m = open(in);
    const auto taesd = AutoencoderTiny::load(m.weights, AutoencoderTinyConfig::from(m.config));
    return with_unused({{"sample", taesd.decode(in.tensor("latents"))}}, m.weights);
  });
}

}  // namespace mpool::models::vae
