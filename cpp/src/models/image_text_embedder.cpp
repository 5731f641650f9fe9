#include "mpool/models/image_text_embedder.h"

#include <c10/core/InferenceMode.h>

#include <exception>
#include <optional>

#include "mpool/base/error.h"
#include "mpool/nn/kernels.h"
#include "mpool/nn/stop.h"

namespace mpool::models {

at::Tensor rgb8(const capabilities::Image& image, const std::string& source) {
  at::Tensor img = image;
  check(img.defined() && img.dim() == 3 && img.scalar_type() == at::kByte &&
            (img.size(2) == 1 || img.size(2) == 3 || img.size(2) == 4),
        ErrorCode::kInvalidInput, source + " must be an HWC uint8 image with 1, 3 or 4 channels");
  if (img.size(2) == 1) img = img.expand({img.size(0), img.size(1), 3});
  if (img.size(2) == 4) img = img.narrow(2, 0, 3);
  return img.to(at::kCPU).contiguous();
}

at::Tensor pixel_values(const std::vector<capabilities::Image>& images, const ImageTowerSettings& settings,
                        int64_t first_index) {
  const int64_t n = static_cast<int64_t>(images.size()), s = settings.image_size;
  at::Tensor out = at::empty({n, 3, s, s}, at::kFloat);
  std::vector<std::exception_ptr> errors(images.size());
  float* dst = out.data_ptr<float>();
  // One image per task (the preprocessing of each is single-threaded), on TBB's
  // threads: tensors made there are plain ones, the result is written raw.
  nn::kernels::parallel_for(n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      try {
        const std::string source = "image #" + std::to_string(first_index + i);
        const at::Tensor img = rgb8(images[static_cast<size_t>(i)], source);
        int64_t oh = 0, ow = 0;
        std::vector<float> pixels = imageio::preprocess(img.data_ptr<std::uint8_t>(), img.size(0), img.size(1),
                                                        settings.preprocess, source, &oh, &ow);
        check(oh == s && ow == s, ErrorCode::kInvalidInput,
              settings.processor_file + " makes " + std::to_string(ow) + "x" + std::to_string(oh) + " pixel values of " +
                  source + ", but the model takes " + std::to_string(s) + "x" + std::to_string(s));
        std::copy(pixels.begin(), pixels.end(), dst + i * 3 * s * s);
      } catch (...) {
        errors[static_cast<size_t>(i)] = std::current_exception();
      }
    }
  });
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

ImageTextEmbedder::ImageTextEmbedder(std::unique_ptr<ImageTower> images, ImageTowerSettings settings,
                                     std::unique_ptr<SentenceEmbedder> texts,
                                     std::optional<capabilities::ContrastiveHead> head)
    : images_(std::move(images)), settings_(std::move(settings)), texts_(std::move(texts)), head_(head) {}

at::Tensor ImageTextEmbedder::embed(const std::vector<std::string>& texts, const capabilities::EmbedOptions& options,
                                    capabilities::RequestContext& ctx) {
  return texts_->embed(texts, options, ctx);
}

at::Tensor ImageTextEmbedder::embed_images(const std::vector<capabilities::Image>& images,
                                           const capabilities::ImageEmbedOptions& options,
                                           capabilities::RequestContext& ctx) {
  const nn::StopScope stop(ctx);  // a pass ends within a layer once the request stops
  const int64_t n = static_cast<int64_t>(images.size());
  at::Tensor out = at::empty({n, settings_.dimension}, at::kFloat);
  const bool normalize = options.normalize.value_or(settings_.normalize);
  const int64_t step = std::max<int64_t>(1, settings_.images_per_forward);
  for (int64_t start = 0; start < n; start += step) {
    ctx.throw_if_stopped();
    const int64_t end = std::min(n, start + step);
    const std::vector<capabilities::Image> chunk(images.begin() + start, images.begin() + end);
    at::Tensor pixels = pixel_values(chunk, settings_, start);
    c10::InferenceMode inference;
    at::Tensor e = images_->forward(pixels).to(at::kCPU, at::kFloat);
    if (normalize) e = e / e.norm(2, -1, true).clamp_min(1e-12);
    out.narrow(0, start, end - start).copy_(e);
  }
  return out;
}

namespace {

constexpr int64_t kDefaultImagesPerForward = 16;
constexpr int64_t kDefaultTokensPerForward = 16384;

int64_t bounded_option(const NativeOptions& options, const char* name, int64_t fallback, int64_t max) {
  const int64_t v = options.options.get_int(name, fallback);
  check(v >= 1 && v <= max, ErrorCode::kInvalidInput,
        std::string("option ") + name + " must be in [1, " + std::to_string(max) + "], got " + std::to_string(v));
  return v;
}

}  // namespace

double image_forward_bytes(const nn::VisionTowerConfig& vision, int64_t count) {
  const double images = static_cast<double>(count);
  const double patches = static_cast<double>(vision.num_patches() + 1);
  return images * patches * static_cast<double>(vision.intermediate_size + 6 * vision.hidden_size) * 4.0 +
         images * patches * patches * static_cast<double>(vision.num_heads) * 4.0 +
         images * 3.0 * static_cast<double>(vision.image_size * vision.image_size) * 4.0;
}

int64_t images_per_forward_option(const NativeOptions& options) {
  return bounded_option(options, "images_per_forward", kDefaultImagesPerForward, 4096);
}

ImageTowerSettings image_tower_settings(const loading::ModelDirectory& directory, const std::string& family,
                                        int64_t image_size) {
  const loading::Component* processor = directory.find("image_processor");
  if (!processor) processor = directory.find("feature_extractor");
  check(processor != nullptr && processor->image_processor.has_value(), ErrorCode::kInvalidInput,
        (directory.root() / "preprocessor_config.json").string() + " is missing (and processor_config.json holds no \"image_processor\"): a " + family +
            " model needs its image processor's settings to prepare images");
  ImageTowerSettings settings;
  const std::string where = processor->config_file.value_or("preprocessor_config.json");
  settings.processor_file = (directory.root() / where).string();
  settings.preprocess = loading::preprocess_config(*processor->image_processor, settings.processor_file);
  settings.image_size = image_size;
  return settings;
}

std::vector<OptionSpec> two_tower_options() {
  return {{"images_per_forward", OptionSpec::Kind::kInt,
           "images per forward pass of the image tower (default 16): bounds activation memory"},
          {"tokens_per_forward", OptionSpec::Kind::kInt,
           "padded tokens per forward pass of the text tower (default 16384): bounds activation memory"}};
}

TwoTowerPlan plan_two_tower(const loading::ModelDirectory& directory, const NativeOptions& options,
                            const std::string& family, const nn::VisionTowerConfig& vision,
                            const nn::TextTowerConfig& text, int64_t dimension) {
  TwoTowerPlan plan{kit::build_inputs(directory, options, family), {}, {}};
  plan.image = image_tower_settings(directory, family, vision.image_size);
  plan.image.dimension = dimension;
  plan.image.images_per_forward = images_per_forward_option(options);
  plan.text = embedder_settings(plan.inputs.layout, text.hidden_size, static_cast<size_t>(text.max_positions),
                                {PoolingMode::kMean}, dimension);
  plan.text.tokens_per_forward =
      static_cast<size_t>(bounded_option(options, "tokens_per_forward", kDefaultTokensPerForward, int64_t{1} << 24));
  return plan;
}

void fill_two_tower_spec(NativeModel& model, const TwoTowerPlan& plan, const nn::VisionTowerConfig& vision,
                         const nn::TextTowerConfig& text, double weight_bytes, const NativeOptions& options,
                         TwoTowerLoader loader) {
  weight_bytes += plan.text.dense_weight_bytes();
  // Activations of one forward pass in float32.
  const double image_bytes = image_forward_bytes(vision, plan.image.images_per_forward);
  const double tokens = static_cast<double>(plan.text.tokens_per_forward);
  const double text_bytes = tokens * static_cast<double>(text.intermediate_size + 6 * text.hidden_size) * 4.0 +
                            tokens * static_cast<double>(std::min<size_t>(plan.text.max_seq_length, 512)) *
                                static_cast<double>(text.num_heads) * 4.0;
  model.weight_mb = weight_bytes / (1024.0 * 1024.0);
  core::ModelSpec& spec = model.spec;
  spec.capabilities = {capabilities::ImageEmbedding::kName, capabilities::TextEmbedding::kName};
  spec.memory_mb = kit::replica_memory_mb(weight_bytes, std::max(image_bytes, text_bytes));
  spec.devices = options.devices;
  spec.batch_budget = plan.text.tokens_per_forward;
  spec.loader = [plan, loader = std::move(loader)](const std::string& device) { return loader(plan, device); };
}

std::shared_ptr<ImageTextEmbedder> make_two_tower(const TwoTowerPlan& plan, std::unique_ptr<ImageTower> image,
                                                  std::unique_ptr<Backbone> text, std::shared_ptr<const Pooler> pooler,
                                                  std::optional<capabilities::ContrastiveHead> head) {
  auto texts = std::make_unique<SentenceEmbedder>(
      std::move(text), kit::open_tokenizer(plan.inputs.tokenizer_file, plan.inputs.tokenizer_options), plan.text,
      std::move(pooler));
  return std::make_shared<ImageTextEmbedder>(std::move(image), plan.image, std::move(texts), head);
}

nn::ProbeOutput two_tower_probe(const nn::ProbeInput& in, const ImageTower& image, const Backbone& text,
                                const Pooler& pooler) {
  c10::InferenceMode inference;
  nn::ProbeOutput out;
  if (at::Tensor px = in.optional_tensor("pixel_values"); px.defined())
    out.emplace("image_embeds", image.forward(px.to(at::kFloat)).to(at::kFloat));
  if (at::Tensor input_ids = in.optional_tensor("input_ids"); input_ids.defined()) {
    const at::Tensor ids = input_ids.to(at::kLong);
    const at::Tensor mask = at::ones_like(ids);
    out.emplace("text_embeds", pooler(text.forward(ids, ids, mask), mask, ids));
  }
  return out;
}

double scalar_value(const at::Tensor& t) {
  if (t.is_meta()) return 0.0;
  check(t.numel() == 1, ErrorCode::kInvalidInput, "expected a one-element tensor, got shape " + std::string(c10::str(t.sizes())));
  return t.to(at::kCPU, at::kDouble).item<double>();
}

}  // namespace mpool::models
