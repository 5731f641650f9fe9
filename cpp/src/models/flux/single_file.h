#pragma once
// FLUX.1 single-file checkpoints in Black Forest Labs' original layout (img_in,
// txt_in, time_in, vector_in, guidance_in, double_blocks.N with fused img/txt qkv,
// single_blocks.N with q, k, v and the MLP fused in linear1, final_layer), at the
// root or under "model.diffusion_model.". Such a file has no config.json: the
// config is inferred from the shapes, and the original names are read through a
// renamed nn::Weights view as the diffusers names FluxTransformer::load asks for.
#include <optional>
#include <string>

#include "models/flux/config.h"
#include "mpool/loading/safetensors.h"
#include "mpool/nn/weights.h"

namespace mpool::models::flux {

/// The prefix ("" or "model.diffusion_model.") under which `c` holds a FLUX
/// transformer in the original names (img_in.weight and vector_in.in_layer.weight);
/// nullopt when it holds none.
std::optional<std::string> flux_prefix(const loading::Checkpoint& c);

/// The transformer's config from the original names under `prefix`: widths,
/// channels and block counts from the shapes, guidance_embeds from guidance_in,
/// the head width from the q-norm scale. FLUX.1's rotary axes [16, 56, 56] are
/// assumed (a file does not store them), so heads of another width are refused.
/// InvalidInput names the tensor that is missing or contradicts another.
FluxConfig infer_flux(const loading::Checkpoint& c, const std::string& prefix);

/// diffusers' FluxTransformer2DModel names (what FluxTransformer::load asks for)
/// -> the original ones: q/k/v as row thirds of the fused qkv, the single blocks'
/// q, k, v and MLP rows of linear1, q/k norm weights as their scales, and the
/// final adaLN halves swapped back to (scale, shift).
nn::NameMap flux_original_names(const FluxConfig& config);

}  // namespace mpool::models::flux
