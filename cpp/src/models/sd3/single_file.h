#pragma once
// Stable Diffusion 3 / 3.5 single-file checkpoints (Stability's original layout):
// the MMDiT under "model.diffusion_model." with the `mmdit` names (joint_blocks,
// fused attn.qkv, x_embedder, t_embedder, y_embedder, final_layer), the VAE under
// "first_stage_model." (LDM names), and optionally the text encoders under
// "text_encoders.{clip_l,clip_g,t5xxl}.transformer." with transformers' names.
// A file has no config.json: the MMDiT's and the VAE's configs are inferred from
// their tensors' shapes here, with SD3's fixed choices (64-wide attention heads,
// the SD3 VAE's scaling and shift) where no shape says it; the text encoders' in
// diffusion/single_file.h, shared with FLUX.
#include <cstdint>
#include <string>

#include "models/sd3/config.h"
#include "models/vae/config.h"
#include "mpool/loading/safetensors.h"
#include "mpool/nn/weights.h"

namespace mpool::models::sd3 {

/// The tensor that marks an SD3 single file (its first joint block's fused qkv).
inline constexpr const char* kSingleFileProbe = "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight";
inline constexpr const char* kMMDiTPrefix = "model.diffusion_model.";
inline constexpr const char* kVaePrefix = "first_stage_model.";

/// The MMDiT's config from the original names under `prefix` of `c`
/// (sample_size 128, 64-wide heads unless ln_q says otherwise).
MMDiTConfig infer_mmdit(const loading::Checkpoint& c, const std::string& prefix);

/// diffusers' SD3Transformer2DModel names (what MMDiT::load asks for) -> the
/// original names: q/k/v as thirds of attn.qkv, the last context block's and
/// final_layer's adaLN halves swapped back to (scale, shift).
nn::NameMap mmdit_original_names(const MMDiTConfig& config);

/// The SD3 VAE (16 latent channels, 32 norm groups, scaling 1.5305, shift 0.0609)
/// with its levels, widths, layers per level, latent channels and quant convs
/// read from the LDM names under `prefix`.
vae::AutoencoderKLConfig infer_sd3_vae(const loading::Checkpoint& c, const std::string& prefix);

}  // namespace mpool::models::sd3
