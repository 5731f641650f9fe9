#pragma once
// Single-file checkpoints of text-to-image models (Stability's SD3 files,
// Black Forest Labs' FLUX files, and the text-encoder and autoencoder files
// that go with them) carry no config.json: each component's config is inferred
// from its tensors' shapes here, with the family's fixed choices where no shape
// says it. InvalidInput names the tensor when a shape contradicts another.
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/clip/config.h"
#include "models/diffusion/components.h"
#include "models/t5/config.h"
#include "models/vae/config.h"
#include "mpool/loading/json.h"
#include "mpool/loading/safetensors.h"
#include "mpool/models/families.h"

namespace mpool::models::diffusion {

using Shape = std::vector<int64_t>;

/// The stored shape of `name`, if it is there.
std::optional<Shape> shape_if(const loading::Checkpoint& c, const std::string& name);
/// The stored shape of `name`, which must exist with `rank` positive dimensions
/// (InvalidInput naming it and asking whether this is `what`).
Shape shape_of(const loading::Checkpoint& c, const std::string& name, size_t rank, std::string_view what);
/// How many of `<head>{i}<tail>` exist for i = 0, 1, ...
int64_t count(const loading::Checkpoint& c, const std::string& head, const std::string& tail);
/// InvalidInput "tensor '<tensor>': <why>" when `contradicts`.
void refuse_if(bool contradicts, const std::string& tensor, const std::string& why);
/// A config made from shapes, as a view whose errors say where it came from (`label`).
loading::JsonView inferred(nlohmann::json j, const std::string& label);

/// The prefix under which `c` stores `suffix` ("text_model.final_layer_norm.weight"
/// under "", "transformer.", "text_encoders.clip_l.transformer.", ...): the
/// shortest one; nullopt when no name ends with it.
std::optional<std::string> prefix_of(const loading::Checkpoint& c, const std::string& suffix);

/// An AutoencoderKL under the original (LDM) names below `prefix`: levels,
/// widths, layers per level, latent channels, quant convs and mid attention from
/// the shapes; 32 norm groups; the family's latent scaling and shift as given
/// (SD3 1.5305 / 0.0609, FLUX 0.3611 / 0.1159).
vae::AutoencoderKLConfig infer_ldm_vae(const loading::Checkpoint& c, const std::string& prefix, double scaling_factor,
                                       double shift_factor);

/// A CLIP text model under `prefix` (text_model., and text_projection.weight when
/// `projected`; else projection_dim is the width): widths, layers, positions and
/// vocabulary from the shapes, heads = width / 64, `act` (CLIP-L quick_gelu,
/// CLIP-G gelu) and `eos_token_id` as given.
clip::ClipTextConfig infer_clip_text(const loading::Checkpoint& c, const std::string& prefix, const std::string& act,
                                     int64_t eos_token_id, bool projected);

/// A T5 encoder under `prefix` (shared / encoder.block.N): widths, heads (from the
/// relative attention bias), layers, buckets, vocabulary and gating from the shapes.
t5::T5Config infer_t5(const loading::Checkpoint& c, const std::string& prefix);

/// The id CLIP's pooling looks for: the tokenizer's <|endoftext|>, else 2.
int64_t clip_eos_id(const std::filesystem::path& tokenizer_file);

/// A text encoder (or autoencoder) of a single-file model: the file named by
/// option `option` (its prefix found by the first of `suffixes` a tensor ends
/// in), else inside `file` under `inside` when a tensor `inside + suffix` is
/// there, else none.
std::optional<WeightSource> text_encoder_source(const std::filesystem::path& file,
                                                const loading::Checkpoint& checkpoint, const std::string& inside,
                                                const NativeOptions& options, const std::string& option,
                                                const std::vector<std::string>& suffixes);

/// What marks a CLIP text encoder: its final norm, under text_model. or bare.
inline const std::vector<std::string> kClipTextSuffixes = {"text_model.final_layer_norm.weight",
                                                           "final_layer_norm.weight"};

}  // namespace mpool::models::diffusion
