#pragma once
// Native model families: each registers how to recognize its models (for
// mpool.inspect) and how to build a pool ModelSpec from a model directory. The
// pool never sees any of this; it gets a ModelSpec like any other.
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "mpool/core/model_spec.h"
#include "mpool/loading/config.h"
#include "mpool/loading/layout.h"
#include "mpool/loading/model_directory.h"
#include "mpool/loading/registry.h"

namespace mpool::models {

/// One family-specific option's value.
using OptionValue = std::variant<bool, int64_t, double, std::string>;

/// An option a family takes beyond NativeOptions' common fields.
struct OptionSpec {
  enum class Kind { kBool, kInt, kFloat, kString };
  std::string name;
  Kind kind = Kind::kBool;
  std::string help;  ///< one line: what it does and its default
};

/// The typed options bag: family-specific settings by name (for example "keep
/// the text encoders on CPU"). native_model() checks it against the chosen
/// family's OptionSpecs before building, so a family reads only names it declared,
/// with the kind it declared (an int is accepted where a float is declared).
struct FamilyOptions {
  std::map<std::string, OptionValue> values;
  bool get_bool(const std::string& name, bool fallback) const;
  int64_t get_int(const std::string& name, int64_t fallback) const;
  double get_float(const std::string& name, double fallback) const;
  std::string get_string(const std::string& name, const std::string& fallback) const;
};

/// What the caller asks of a native model.
struct NativeOptions {
  std::optional<std::string> dtype;         ///< "float32", "bfloat16", "float16"; nullopt: the kit's policy
  std::vector<std::string> devices{"cpu"};  ///< where replicas may live
  std::optional<int64_t> context_length;    ///< decoders: longest prompt + output; nullopt: the model's maximum
  FamilyOptions options;                    ///< family-specific options (Family::options)
};

/// A native model ready to register.
struct NativeModel {
  core::ModelSpec spec;
  std::string family;
  std::string path;                   ///< the resolved directory
  std::vector<std::string> warnings;  ///< things the caller should log
  double weight_mb = 0;               ///< part of spec.memory_mb that is weights
};

/// One family: recognizer and builder.
struct Family {
  std::string name;
  std::vector<std::string> capabilities;  ///< pool capability names
  /// Whether this family serves the model, or why not (kit::serves_model_types).
  loading::SupportPredicate supports;
  /// Builds the spec (runs on the registering thread; the loader runs on replicas).
  /// The directory gives every component (model_index.json folders, nested
  /// text/vision configs, tokenizers, image processor); `config` is the root config.json.
  std::function<NativeModel(const loading::ModelDirectory&, const loading::ModelConfig&, const NativeOptions&)> build;
  /// The options it takes in NativeOptions::options.
  std::vector<OptionSpec> options;
  /// The diffusers pipelines it builds (model_index.json's "_class_name"). Such a
  /// directory has no root config.json: `build` gets an empty ModelConfig and
  /// reads the components from the directory.
  std::vector<std::string> pipeline_classes;
  /// Tensors that mark a single .safetensors file (without config.json) this
  /// family builds ("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"):
  /// such a file goes to `build` with an empty ModelConfig when it holds any of them.
  std::vector<std::string> single_file_tensors;
};

/// Registers the built-in families once: their recognizers go to the one
/// registry (loading::FamilyRegistry, which inspect asks too), their builders
/// are kept by name.
void register_builtin_families();

/// Registers the built-in families' probes (probe.h) once.
void register_builtin_probes();

/// Resolves a directory or cached repo id and builds its ModelSpec through the
/// first family that supports it; InvalidInput says why none does.
NativeModel native_model(const std::string& path_or_repo_id, const NativeOptions& options);

namespace bert {
/// The BERT encoder family as a text_embedding model.
Family family();
/// Its probes ("bert.last_hidden_state").
void register_probes();
}  // namespace bert

namespace modernbert {
/// The ModernBERT encoder family (ModernBertModel) as a text_embedding model.
Family family();
/// Its probes ("modernbert.last_hidden_state").
void register_probes();
}  // namespace modernbert
namespace jinabert {
/// The JinaBert encoder family (jina-embeddings-v2: ALiBi, GEGLU) as a text_embedding model.
Family family();
/// Its probes ("jinabert.last_hidden_state").
void register_probes();
}  // namespace jinabert
namespace jinav3 {
/// The jina-embeddings-v3 encoder family (JinaEmbeddingsV3Model: rotary XLM-R) as a text_embedding model.
Family family();
/// Its probes ("jinav3.last_hidden_state").
void register_probes();
}  // namespace jinav3

namespace clip {
/// The CLIP family (CLIPModel) as an image_embedding and text_embedding model.
Family family();
/// Its probes ("clip.features").
void register_probes();
}  // namespace clip

namespace siglip {
/// The SigLIP family (SiglipModel) as an image_embedding and text_embedding model.
Family family();
/// Its probes ("siglip.features").
void register_probes();
}  // namespace siglip

namespace decoder {
/// The decoder family, published as "llama" (llama, mistral, qwen2, qwen3, phi3)
/// as a text_to_text and text_embedding model.
Family family();
/// Its probes ("decoder.logits").
void register_probes();
}  // namespace decoder

namespace flux {
/// FLUX.1 schnell and dev (FluxPipeline folders, Black Forest Labs' single
/// files) as a text_to_image model.
Family family();
/// Its probes ("flux.transformer", "flux.single_file_config").
void register_probes();
}  // namespace flux

namespace llava {
/// The LLaVA family (LlavaForConditionalGeneration: a CLIP vision tower, a
/// projector and a decoder-family language model) as a vision and text_to_text model.
Family family();
/// Its probes ("llava.features").
void register_probes();
}  // namespace llava

namespace nvembed {
/// NV-Embed (NVEmbedModel: a bidirectional Mistral and a latent-attention pooler) as a text_embedding model.
Family family();
/// Its probes ("nvembed.forward").
void register_probes();
}  // namespace nvembed

namespace sd3 {
/// Stable Diffusion 3 / 3.5 (StableDiffusion3Pipeline folders) as a text_to_image model.
Family family();
/// Its probes ("sd3.transformer": the MMDiT's velocity).
void register_probes();
}  // namespace sd3

namespace t5 {
/// The T5 encoder's probes ("t5.encoder"); the encoder itself is a component of
/// the text-to-image families, not a family of its own.
void register_probes();
}  // namespace t5

namespace vae {
/// The diffusers autoencoders' probes ("vae.encode", "vae.decode", "taesd.encode",
/// "taesd.decode"); not a family of their own: pipelines build them.
void register_probes();
}  // namespace vae

}  // namespace mpool::models
