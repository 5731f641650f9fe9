#pragma once
// The original (latent-diffusion, "LDM") tensor layout of the KL autoencoder, as
// single-file checkpoints store it (Stable Diffusion 3's under
// "first_stage_model."): encoder.down.{i}.block.{j}, mid.block_1, mid.attn_1.q as
// 1x1 convolutions, nin_shortcut, norm_out, and decoder.up.{i} numbered from the
// lowest resolution. ldm_names() reads it through diffusers' names, so the
// autoencoder is built once.
#include <cstdint>

#include "mpool/nn/weights.h"

namespace mpool::models::vae {

/// How a KL autoencoder's tensors are named.
enum class VaeLayout { kDiffusers, kLdm };

/// Which layout the view `w` (the autoencoder's root) holds, from its tensor names;
/// InvalidInput names the tensors looked for when it holds neither.
VaeLayout detect_layout(const nn::Weights& w);

/// The diffusers name -> LDM name map for an autoencoder of `num_blocks` levels
/// (decoder.up_blocks.{i} is stored as decoder.up.{num_blocks - 1 - i}); the mid
/// attention's q/k/v/proj_out weights are read from (c, c, 1, 1) as (c, c).
nn::NameMap ldm_names(int64_t num_blocks);

}  // namespace mpool::models::vae
