// The autoencoders' probes, for tests/python/test_native_vae.py. Options: "path",
// a diffusers folder (config.json and diffusion_pytorch_model.safetensors); with
// "checkpoint" (and "prefix"), the weights come from that single file instead,
// under the prefix ("first_stage_model." in an SD3 file), in either layout.
#include "models/vae/autoencoder_kl.h"
#include "models/vae/autoencoder_tiny.h"
#include "mpool/loading/config.h"
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
  if (in.options.contains("checkpoint"))
    return Opened{loading::load_model_config(in.get<std::string>("path")), in.weights()};
  kit::ProbedModel m = kit::open_probed_model(in);
  return Opened{std::move(m.config), std::move(m.weights)};
}

}  // namespace

void register_probes() {
  // The latent distribution after quant_conv: mean and clamped logvar.
  nn::register_probe("vae.encode", [](const nn::ProbeInput& in) {
    const Opened m = open(in);
    const auto vae = AutoencoderKL::load(m.weights, AutoencoderKLConfig::from(m.config));
    const auto moments = vae.encode(in.tensor("images"));
    return nn::ProbeOutput{{"mean", moments.mean}, {"logvar", moments.logvar}};
  });
  // Unscaled latents to images, as AutoencoderKL.decode(z).sample.
  nn::register_probe("vae.decode", [](const nn::ProbeInput& in) {
    const Opened m = open(in);
    const auto vae = AutoencoderKL::load(m.weights, AutoencoderKLConfig::from(m.config));
    return nn::ProbeOutput{{"sample", vae.decode(in.tensor("latents"))}};
  });
  // As AutoencoderTiny.encode(x).latents.
  nn::register_probe("taesd.encode", [](const nn::ProbeInput& in) {
    const Opened m = open(in);
    const auto taesd = AutoencoderTiny::load(m.weights, AutoencoderTinyConfig::from(m.config));
    return nn::ProbeOutput{{"latents", taesd.encode(in.tensor("images"))}};
  });
  // As AutoencoderTiny.decode(z).sample.
  nn::register_probe("taesd.decode", [](const nn::ProbeInput& in) {
    const Opened m = open(in);
    const auto taesd = AutoencoderTiny::load(m.weights, AutoencoderTinyConfig::from(m.config));
    return nn::ProbeOutput{{"sample", taesd.decode(in.tensor("latents"))}};
  });
}

}  // namespace mpool::models::vae
