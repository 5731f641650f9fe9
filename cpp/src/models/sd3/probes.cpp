// The Stable Diffusion 3 family's probes, for the parity tests against diffusers.
#include <c10/core/InferenceMode.h>

#include "models/sd3/mmdit.h"
#include "mpool/loading/safetensors.h"
#include "mpool/models/families.h"
#include "mpool/nn/probe.h"

namespace mpool::models::sd3 {

void register_probes() {
  // The MMDiT's output for given latents, timesteps, context and pooled text:
  // option "path" is a diffusers transformer/ folder (config.json + weights),
  // "skip_layers" an optional list of block indices to leave out.
  nn::register_probe("sd3.transformer", [](const nn::ProbeInput& in) {
    const std::filesystem::path dir = in.get<std::string>("path");
    const MMDiTConfig config = MMDiTConfig::from(loading::load_json_object(dir / "config.json"));
    const nn::Weights w = nn::Weights::open(loading::Checkpoint::open(dir), at::kFloat, at::kCPU);
    const MMDiT model = MMDiT::load(w, config);
    c10::InferenceMode guard;
    const auto skip = in.get_or<std::vector<int64_t>>("skip_layers", {});
    return nn::ProbeOutput{{"sample", model(in.tensor("latents"), in.tensor("timestep"), in.tensor("context"),
                                            in.tensor("pooled"), skip)}};
  });
}

}  // namespace mpool::models::sd3
