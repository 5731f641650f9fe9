// The T5 encoder's probe (probe.h): "t5.encoder" loads a T5EncoderModel from the
// directory in option "path" (config.json and its safetensors, tensors at the root
// or under Stable Diffusion 3's single-file prefix) and returns last_hidden_state
// for "input_ids" and an optional "attention_mask", as transformers'
// T5EncoderModel gives them.
#include "models/t5/t5.h"
#include "mpool/models/families.h"
#include "mpool/models/kit.h"
#include "mpool/nn/probe.h"

namespace mpool::models::t5 {

void register_probes() {
  nn::register_probe("t5.encoder", [](const nn::ProbeInput& in) {
    const kit::ProbedModel m = kit::open_probed_model(in);
    const T5Encoder encoder = T5Encoder::load(T5Encoder::root(m.weights), T5Config::from(m.config));
    return nn::ProbeOutput{
        {"last_hidden_state", encoder.forward(in.tensor("input_ids"), in.optional_tensor("attention_mask"))}};
  });
}

}  // namespace mpool::models::t5
