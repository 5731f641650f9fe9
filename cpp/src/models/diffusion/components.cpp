#include "models/diffusion/components.h"

#include <algorithm>

#include "mpool/base/error.h"
#include "mpool/capabilities/interfaces.h"
#include "mpool/loading/config.h"
#include "mpool/models/kit.h"

namespace mpool::models::diffusion {

namespace fs = std::filesystem;

nn::Weights open_weights(const WeightSource& source, at::ScalarType dtype, at::Device device) {
  return nn::Weights::open(loading::Checkpoint::open(source.path), dtype, device, source.prefix);
}

fs::path component_dir(const loading::ModelDirectory& d, const std::string& name) {
  const loading::Component& c = d.require(name);
  check(!c.error, ErrorCode::kInvalidInput, d.root().string() + ": component '" + name + "': " + c.error.value_or(""));
  return d.path_of(c);
}

PromptTokenizer prompt_tokenizer(const fs::path& dir, int64_t default_length, int64_t max_positions) {
  PromptTokenizer t;
  t.file = kit::require_tokenizer(dir);
  const auto tok = kit::open_tokenizer(t.file);
  t.pad_id = kit::pad_token_id(dir, *tok, 0);
  int64_t length = default_length;
  if (auto config = loading::load_tokenizer_config(dir))
    if (config->model_max_length && *config->model_max_length > 0 && *config->model_max_length < (int64_t{1} << 20))
      length = *config->model_max_length;
  t.max_length = max_positions > 0 ? std::min(length, max_positions) : length;
  return t;
}

at::Tensor tokenize(tokenizer::Tokenizer& tok, const PromptTokenizer& how, const std::vector<std::string>& texts,
                    int64_t length, at::Device device) {
  tokenizer::TruncationParams truncation;
  truncation.max_length = static_cast<size_t>(length);
  tok.set_truncation(truncation);
  const size_t len = static_cast<size_t>(length);
  std::vector<int64_t> ids(texts.size() * len, how.pad_id);
  for (size_t i = 0; i < texts.size(); ++i) {
    const tokenizer::Encoding e = tok.encode(texts[i]);
    std::copy_n(e.ids.begin(), std::min(e.ids.size(), len), ids.begin() + static_cast<std::ptrdiff_t>(i * len));
  }
  return at::tensor(ids, at::kLong).view({static_cast<int64_t>(texts.size()), length}).to(device);
}

double WeightMeter::measure(const WeightSource& source, at::ScalarType dtype,
                            const std::function<void(const nn::Weights&)>& load) {
  double bytes = 0;
  if (!single_file_) {
    bytes = kit::measure_weights(loading::Checkpoint::open(source.path), dtype, load, warnings_);
  } else {
    const nn::Weights w = open_weights(source, dtype, at::Device(at::kMeta));
    load(w);
    bytes = static_cast<double>(w.bytes_taken());
    for (auto& warning : w.warnings()) warnings_.push_back(std::move(warning));
  }
  total_ += bytes;
  return bytes;
}

void publish(NativeModel& model, const NativeOptions& options, const ImageModel& image,
             std::function<std::shared_ptr<core::Instance>(const std::string& device)> loader) {
  const double on_device = image.text_encoders_on_cpu ? image.weights - image.text_weights : image.weights;
  model.weight_mb = on_device / (1024.0 * 1024.0);
  core::ModelSpec& spec = model.spec;
  spec.capabilities = {capabilities::TextToImage::kName};
  spec.memory_mb = kit::replica_memory_mb(on_device, image.peak);
  spec.devices = options.devices;
  spec.max_replicas = 1;  // one pipeline is heavy; more replicas are the caller's explicit choice
  spec.defaults = image.defaults;
  if (image.text_encoders_on_cpu)
    model.warnings.push_back("text encoders on the CPU (" +
                             std::to_string(static_cast<int64_t>(image.text_weights / 1048576.0)) +
                             " MB of host memory, float32), outside the device budget");
  spec.loader = std::move(loader);
}

}  // namespace mpool::models::diffusion
