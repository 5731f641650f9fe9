#pragma once
// What every text-to-image family (sd3, flux) reads the same way: where a
// component's weights are (a diffusers folder or a prefix inside a single file),
// the prompt tokenizers padded to a fixed length, and the memory the components
// take. Single files' shape inference is in diffusion/single_file.h.
#include <ATen/ATen.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mpool/core/instance.h"
#include "mpool/loading/model_directory.h"
#include "mpool/models/families.h"
#include "mpool/nn/weights.h"
#include "mpool/tokenizer/tokenizer.h"

namespace mpool::models::diffusion {

/// Where one component's weights are: a folder or .safetensors file, and the
/// prefix its tensors carry there ("" for a diffusers folder,
/// "model.diffusion_model." in a single file).
struct WeightSource {
  std::filesystem::path path;
  std::string prefix;
};

/// A component's weights as a view under its prefix (floating point as `dtype`).
nn::Weights open_weights(const WeightSource& source, at::ScalarType dtype, at::Device device);

/// A pipeline folder's component `name` (InvalidInput naming it when absent or broken).
std::filesystem::path component_dir(const loading::ModelDirectory& d, const std::string& name);

/// One text encoder's tokenizer, padded and truncated to a fixed length.
struct PromptTokenizer {
  std::filesystem::path file;  ///< tokenizer.json, or the folder of slow files (kit::require_tokenizer)
  int64_t max_length = 77;
  int64_t pad_id = 0;
};

/// The tokenizer in `dir`: its pad id, and its model_max_length (else
/// `default_length`) capped at `max_positions` when that is positive.
PromptTokenizer prompt_tokenizer(const std::filesystem::path& dir, int64_t default_length, int64_t max_positions);

/// (texts, length) ids on `device`: truncated by the tokenizer as transformers
/// does (the post-processor's specials stay), then padded with the pad id.
at::Tensor tokenize(tokenizer::Tokenizer& tok, const PromptTokenizer& how, const std::vector<std::string>& texts,
                    int64_t length, at::Device device);

/// Adds up the bytes each component's weights take as loaded. A folder's
/// component is measured on the meta device from its files; a single file's
/// (whose configs came from its own shapes) is built there, so a tensor that
/// contradicts them is refused now. Unused tensors become the model's warnings.
class WeightMeter {
 public:
  WeightMeter(bool single_file, std::vector<std::string>& warnings) : single_file_(single_file), warnings_(warnings) {}
  /// Bytes of `source` as `load` takes them in `dtype`; returns them and adds them to total().
  double measure(const WeightSource& source, at::ScalarType dtype, const std::function<void(const nn::Weights&)>& load);
  double total() const noexcept { return total_; }

 private:
  bool single_file_;
  std::vector<std::string>& warnings_;
  double total_ = 0;
};

/// What a text-to-image family publishes once its components are measured.
struct ImageModel {
  double weights = 0;       ///< every component's bytes (WeightMeter::total)
  double text_weights = 0;  ///< the text encoders' share of them
  bool text_encoders_on_cpu = false;
  double peak = 0;          ///< bytes of one step's or the VAE decode's activations at the default size
  std::map<std::string, double> defaults;  ///< ModelSpec::defaults: size, steps, guidance, strength, latent shape
};

/// Fills `model`: the device's share of the weights (the text encoders' stay
/// on the host when text_encoders_on_cpu, said in a warning), the memory
/// budget, the text_to_image capability, one replica by default, the defaults
/// and `loader`.
void publish(NativeModel& model, const NativeOptions& options, const ImageModel& image,
             std::function<std::shared_ptr<core::Instance>(const std::string& device)> loader);

}  // namespace mpool::models::diffusion
