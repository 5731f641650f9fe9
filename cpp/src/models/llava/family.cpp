// The LLaVA family as a pool model: recognizes LlavaForConditionalGeneration
// and LlavaNextForConditionalGeneration directories and builds vision +
// text_to_text specs. A replica runs the CLIP
// vision tower and the projector on the request's images, splices the features
// in at the prompt's image placeholders (SplicedPrompt), and generates with the
// decoder family's Decoder through the kit's TextGenerator.
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <optional>

#include "models/decoder/decoder.h"
#include "models/llava/anyres.h"
#include "models/llava/llava.h"
#include "mpool/base/error.h"
#include "mpool/models/families.h"
#include "mpool/models/generation.h"
#include "mpool/models/image_text_embedder.h"
#include "mpool/models/kit.h"
#include "mpool/models/text_generator.h"
#include "mpool/nn/probe.h"
#include "mpool/nn/stop.h"

namespace mpool::models::llava {
namespace {

namespace fs = std::filesystem;
namespace cap = capabilities;

// `ids` without its image placeholders, and where each image's features go.
SplicedPrompt splice(const std::vector<int64_t>& ids, int64_t image_token, const std::vector<at::Tensor>& features) {
  SplicedPrompt prompt;
  size_t image = 0;
  for (int64_t id : ids) {
    if (id != image_token) {
      prompt.ids.push_back(id);
      continue;
    }
    if (image < features.size()) prompt.inserts.push_back({prompt.ids.size(), features[image]});
    ++image;
  }
  return prompt;
}

int64_t count_placeholders(const std::vector<int64_t>& ids, int64_t image_token) {
  return static_cast<int64_t>(std::count(ids.begin(), ids.end(), image_token));
}

class LlavaModel final : public core::Instance, public cap::Vision, public cap::TextToText, public cap::BatchGeneration {
 public:
  LlavaModel(const LlavaConfig& config, LlavaVision vision, ImageTowerSettings images,
             std::optional<AnyresSettings> anyres, TextGenerator generator)
      : image_token_(config.image_token_id),
        tower_image_size_(config.vision.image_size),
        vision_(std::move(vision)),
        images_(std::move(images)),
        anyres_(std::move(anyres)),
        generator_(std::move(generator)) {}

  cap::Completion generate(const std::variant<std::string, std::vector<int64_t>>& prompt,
                           const cap::GenerationParams& params, const cap::TextSink& sink,
                           cap::RequestContext& ctx) override {
    return generator_.generate(prompt, params, sink, ctx);
  }

  cap::Completion describe(const std::vector<cap::Image>& images, const std::string& prompt,
                           const cap::GenerationParams& params, const cap::TextSink& sink,
                           cap::RequestContext& ctx) override {
    const VisionPrompt v = vision_prompt(images, prompt, params, ctx);
    cap::Completion done = generator_.generate(v.prompt, params, sink, ctx);
    done.image_tokens = v.image_tokens;
    done.image_time_s = v.image_time_s;
    return done;
  }

  std::map<std::string, double> usage() const override { return generator_.usage(); }
  void generate_batch(std::shared_ptr<cap::GenerationRequest> first, cap::GenerationFeed& feed) override {
    generator_.generate_batch(std::move(first), feed, [this](const cap::GenerationRequest& r) {
      return vision_prompt(r.images, std::get<std::string>(r.prompt), r.params, *r.context);
    });
  }

 private:
  // The prompt with each image's features spliced in at its placeholder.
  VisionPrompt vision_prompt(const std::vector<cap::Image>& images, const std::string& prompt,
                             const cap::GenerationParams& params, cap::RequestContext& ctx) const {
    validate_generation_params(params);
    check(!prompt.empty(), ErrorCode::kInvalidInput, "the prompt is empty");
    // Tokenized as LlavaProcessor tokenizes it: the image token is an added token,
    // so each placeholder is one id, wherever the text around it falls.
    const auto enc = generator_.tokenizer().encode(prompt, std::nullopt, params.add_special_tokens);
    const std::vector<int64_t> ids(enc.ids.begin(), enc.ids.end());
    const int64_t placeholders = count_placeholders(ids, image_token_);
    check(placeholders == static_cast<int64_t>(images.size()), ErrorCode::kInvalidInput,
          "the prompt has " + std::to_string(placeholders) + " image placeholder" + (placeholders == 1 ? "" : "s") +
              " (token id " + std::to_string(image_token_) + ") but " + std::to_string(images.size()) + " image" +
              (images.size() == 1 ? " was" : "s were") + " given; each image needs one placeholder");
    const auto start = std::chrono::steady_clock::now();
    const std::vector<at::Tensor> features = anyres_ ? tiled_features(images, ctx) : image_features(images, ctx);
    VisionPrompt out;
    for (const auto& f : features) out.image_tokens += f.size(0);
    out.image_time_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    out.prompt = splice(ids, image_token_, features);
    return out;
  }

  // LLaVA-1.5: one tower input per image, images_per_forward at a time.
  std::vector<at::Tensor> image_features(const std::vector<cap::Image>& images, cap::RequestContext& ctx) const {
    const nn::StopScope stop(ctx);  // the vision tower ends within a layer once the request stops
    std::vector<at::Tensor> features;
    const int64_t n = static_cast<int64_t>(images.size());
    const int64_t step = std::max<int64_t>(1, images_.images_per_forward);
    for (int64_t first = 0; first < n; first += step) {
      ctx.throw_if_stopped();
      const int64_t end = std::min(n, first + step);
      const at::Tensor pixels =
          pixel_values(std::vector<cap::Image>(images.begin() + first, images.begin() + end), images_, first);
      c10::InferenceMode inference;
      const at::Tensor f = vision_(pixels);
      for (int64_t i = 0; i < f.size(0); ++i) features.push_back(f[i]);
    }
    return features;
  }

  // LLaVA-NeXT: each image tiled at its best grid, images_per_forward tiles at a
  // time, the tiles' features packed into one sequence per image.
  std::vector<at::Tensor> tiled_features(const std::vector<cap::Image>& images, cap::RequestContext& ctx) const {
    const nn::StopScope stop(ctx);
    std::vector<at::Tensor> features;
    const int64_t step = std::max<int64_t>(1, images_.images_per_forward);
    for (size_t i = 0; i < images.size(); ++i) {
      ctx.throw_if_stopped();
      const std::string source = "image #" + std::to_string(i);
      const at::Tensor rgb = rgb8(images[i], source);
      const at::Tensor tiles = anyres_tiles(rgb, *anyres_, source);
      std::vector<at::Tensor> parts;
      for (int64_t first = 0; first < tiles.size(0); first += step) {
        ctx.throw_if_stopped();
        c10::InferenceMode inference;
        parts.push_back(vision_(tiles.narrow(0, first, std::min(step, tiles.size(0) - first))));
      }
      c10::InferenceMode inference;
      features.push_back(pack_tile_features(at::cat(parts), rgb.size(0), rgb.size(1), anyres_->pinpoints,
                                            tower_image_size_, vision_.image_newline()));
    }
    return features;
  }

  int64_t image_token_;
  int64_t tower_image_size_;
  LlavaVision vision_;
  ImageTowerSettings images_;
  std::optional<AnyresSettings> anyres_;
  TextGenerator generator_;
};

// LLaVA-NeXT's tiling from the image processor's settings: tiles of the crop
// size (else the resize size), a base tile of the resize size, the model's grid.
AnyresSettings anyres_settings(const LlavaConfig& config, const ImageTowerSettings& images) {
  const imageio::PreprocessConfig& p = images.preprocess;
  AnyresSettings s;
  s.pinpoints = config.grid_pinpoints;
  s.preprocess = p;
  s.tile = p.do_center_crop && p.crop_height > 0 ? p.crop_height : p.height.value_or(p.shortest_edge.value_or(0));
  s.base_height = p.height.value_or(p.shortest_edge.value_or(0));
  s.base_width = p.width.value_or(p.shortest_edge.value_or(0));
  check(s.tile == config.vision.image_size, ErrorCode::kInvalidInput,
        images.processor_file + " makes " + std::to_string(s.tile) + "-pixel tiles, but the vision tower takes " +
            std::to_string(config.vision.image_size));
  return s;
}

NativeModel build(const loading::ModelDirectory& directory, const loading::ModelConfig& model_config,
                  const NativeOptions& options) {
  const LlavaConfig config = LlavaConfig::from(model_config);
  const kit::BuildInputs in = kit::build_inputs(directory, options, "llava", /*allows_int8=*/true);
  ImageTowerSettings images = image_tower_settings(directory, "LLaVA", config.vision.image_size);
  images.images_per_forward = images_per_forward_option(options);
  std::optional<AnyresSettings> anyres;
  if (config.anyres) anyres = anyres_settings(config, images);
  const TextGeneratorSettings gen = decoder::generator_settings(config.text, in.layout.model_dir, options);

  // Memory: the vision tower, projector and language model it loads, the KV cache
  // of a full context (image positions included), and the larger of one prefill
  // chunk's and one image pass's activations.
  NativeModel model;
  model.warnings = in.warnings;
  const double weight_bytes = kit::measure_weights(
      in.checkpoint, in.dtype,
      [&](const nn::Weights& w) {
        const LlavaParts parts = LlavaParts::locate(w);
        LlavaVision(config, parts, w.device());
        decoder::Decoder(config.text, parts.language, parts.head);
      },
      model.warnings, in.int8);
  const double image_bytes =
      image_forward_bytes(config.vision, images.images_per_forward) +
      static_cast<double>(images.images_per_forward * config.image_tokens() * 2 * config.text.hidden_size) * 4.0;
  model.weight_mb = weight_bytes / (1024.0 * 1024.0);
  core::ModelSpec& spec = model.spec;
  spec.capabilities = {cap::Vision::kName, cap::TextToText::kName};
  spec.memory_mb = kit::replica_memory_mb(weight_bytes, decoder::generation_bytes(config.text, gen, in.dtype) + image_bytes);
  spec.devices = options.devices;
  const fs::path model_dir = in.layout.model_dir, tokenizer_file = in.tokenizer_file;
  const loading::TokenizerOptions tokenizer_options = in.tokenizer_options;
  const at::ScalarType dtype = in.dtype;
  const bool int8 = in.int8;
  spec.loader = [model_dir, tokenizer_file, tokenizer_options, config, images, anyres, gen, dtype,
                 int8](const std::string& device) {
    const at::Device dev(device);
    const nn::Weights weights =
        nn::Weights::open(loading::Checkpoint::open(model_dir), dtype, dev).with_int8_linears(int8);
    const LlavaParts parts = LlavaParts::locate(weights);
    auto language = std::make_shared<const decoder::Decoder>(config.text, parts.language, parts.head);
    check(language->has_lm_head(), ErrorCode::kInvalidInput,
          model_dir.string() + ": the LLaVA checkpoint has no lm_head.weight");
    LlavaVision vision(config, parts, dev);
    return std::make_shared<LlavaModel>(config, std::move(vision), images, anyres,
                                        TextGenerator(language, kit::open_tokenizer(tokenizer_file, tokenizer_options), gen));
  };
  return model;
}

}  // namespace

Family family() {
  std::vector<OptionSpec> options = {
      {"prefill_chunk", OptionSpec::Kind::kInt,
       "prompt positions per forward pass of a prefill (default 512): bounds activation memory"},
      {"images_per_forward", OptionSpec::Kind::kInt,
       "images per forward pass of the vision tower (default 16): bounds activation memory"},
      decoder::max_batch_option(), decoder::kv_cache_tokens_option(), decoder::kv_block_size_option(),
      decoder::kv_cache_dtype_option(), decoder::prefix_cache_option(), kit::tokenizer_pattern_option()};
  return Family{"llava", {cap::Vision::kName, cap::TextToText::kName},
                kit::serves_model_types(kModelTypes, "llava or llava_next"),
                build, std::move(options)};
}

void register_probes() {
  // The image side as transformers' LlavaModel computes it: the projector's output
  // ("image_features", (images, image_tokens, hidden)) for processor-made
  // "pixel_values", and, given the processor's "input_ids" (each image token
  // already repeated image_tokens times), the merged input embeddings
  // ("inputs_embeds", (positions, hidden)) the language model receives.
  //
  // LLaVA-NeXT: "pixel_values" (images, tiles, 3, S, S) padded with empty tiles
  // and "image_sizes" (images, 2), as LlavaNextImageProcessor makes them;
  // "image_features" is then every image's packed features, concatenated.
  nn::register_probe("llava.features", [](const nn::ProbeInput& in) {
    const kit::ProbedModel m = kit::open_probed_model(in);
    const LlavaConfig config = LlavaConfig::from(m.config);
    const LlavaParts parts = LlavaParts::locate(m.weights);
    const LlavaVision vision(config, parts, at::kCPU);
    const decoder::Decoder language(config.text, parts.language, parts.head);
    c10::InferenceMode inference;
    const at::Tensor pixels = in.tensor("pixel_values").to(at::kFloat);
    std::vector<at::Tensor> per_image;
    at::Tensor features;
    if (config.anyres) {
      const at::Tensor sizes = in.tensor("image_sizes").to(at::kLong);
      check(pixels.dim() == 5 && sizes.dim() == 2 && sizes.size(0) == pixels.size(0), ErrorCode::kInvalidInput,
            "llava_next needs pixel_values (images, tiles, 3, S, S) and image_sizes (images, 2)");
      for (int64_t i = 0; i < pixels.size(0); ++i) {
        const int64_t h = sizes[i][0].item<int64_t>(), w = sizes[i][1].item<int64_t>();
        const auto [th, tw] = best_resolution(h, w, config.grid_pinpoints);
        const int64_t tiles = 1 + (th / config.vision.image_size) * (tw / config.vision.image_size);
        per_image.push_back(pack_tile_features(vision(pixels[i].narrow(0, 0, tiles)), h, w, config.grid_pinpoints,
                                               config.vision.image_size, vision.image_newline()));
      }
      features = at::cat(per_image);
    } else {
      features = vision(pixels);
      for (int64_t i = 0; i < features.size(0); ++i) per_image.push_back(features[i]);
    }
    nn::ProbeOutput out{{"image_features", features}};
    if (at::Tensor input_ids = in.optional_tensor("input_ids"); input_ids.defined()) {
      const at::Tensor flat = input_ids.to(at::kLong).reshape({-1}).contiguous();
      std::vector<int64_t> ids(flat.data_ptr<int64_t>(), flat.data_ptr<int64_t>() + flat.numel());
      // One placeholder per image: image i's run of image tokens is as long as its features.
      std::vector<int64_t> collapsed;
      int64_t run = 0;
      size_t image = 0;
      bool fits = true;
      for (int64_t id : ids) {
        if (id != config.image_token_id) {
          run = 0;
          collapsed.push_back(id);
          continue;
        }
        if (run == 0) {
          fits = fits && image < per_image.size();
          collapsed.push_back(id);
        }
        if (fits && ++run == per_image[image].size(0)) {
          run = 0;
          ++image;
        }
      }
      check(fits && image == per_image.size(), ErrorCode::kInvalidInput,
            "input_ids hold " + std::to_string(count_placeholders(ids, config.image_token_id)) +
                " image tokens, which are not the " + std::to_string(per_image.size()) + " images' features");
      out.emplace("inputs_embeds", spliced_embeddings(language, splice(collapsed, config.image_token_id, per_image)));
    }
    return out;
  });

  // LLaVA-NeXT's tiles of one picture ("image", HWC uint8) as the model's
  // processor settings make them: (tiles, 3, S, S), the base tile first.
  nn::register_probe("llava.anyres_tiles", [](const nn::ProbeInput& in) {
    const std::string path = in.get<std::string>("path");
    const loading::ModelDirectory directory = loading::ModelDirectory::open(path);
    const LlavaConfig config = LlavaConfig::from(loading::load_model_config(directory.layout().model_dir));
    check(config.anyres, ErrorCode::kInvalidInput, path + " is not a llava_next model");
    const ImageTowerSettings images = image_tower_settings(directory, "LLaVA", config.vision.image_size);
    const at::Tensor rgb = rgb8(in.tensor("image").to(at::kByte), "image");
    return nn::ProbeOutput{{"pixel_values", anyres_tiles(rgb, anyres_settings(config, images), "image")}};
  });
}

}  // namespace mpool::models::llava
