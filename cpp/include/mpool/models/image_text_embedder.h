#pragma once
// image_embedding and text_embedding in one space (CLIP, SigLIP): the pipeline
// written once. An image is preprocessed as the model's preprocessor_config.json
// says (imageio::preprocess, PIL-exact), batched through the family's image
// tower, and normalized unless the request says otherwise; texts go through a
// SentenceEmbedder over the family's text tower. Families supply the towers.
#include <ATen/ATen.h>

#include <memory>
#include <optional>

#include "mpool/capabilities/interfaces.h"
#include "mpool/core/instance.h"
#include "mpool/imageio/preprocess.h"
#include "mpool/models/families.h"
#include "mpool/models/kit.h"
#include "mpool/models/pooling.h"
#include "mpool/models/sentence_embedder.h"
#include "mpool/nn/encoder_config.h"
#include "mpool/nn/probe.h"
#include "mpool/nn/vit.h"

namespace mpool::models {

/// pixel values -> image embeddings.
class ImageTower {
 public:
  virtual ~ImageTower() = default;
  /// (b, channels, H, W) float32 on the CPU, as the image processor makes them ->
  /// (b, d) (any float dtype, on any device).
  virtual at::Tensor forward(const at::Tensor& pixels) const = 0;
};

/// A text tower (nn::TextTransformer) as a SentenceEmbedder backbone. CLIP's is
/// causal: a token never sees the right padding after it, so the padding needs
/// no mask for the pooled token. SigLIP's attends both ways over texts padded to
/// full length, as it was trained.
class TextTowerBackbone final : public Backbone {
 public:
  TextTowerBackbone(nn::TextTransformer tower, bool causal, at::Device device)
      : tower_(std::move(tower)), causal_(causal), device_(device) {}
  at::Tensor forward(const at::Tensor& ids, const at::Tensor&, const at::Tensor&) const override {
    return tower_(ids, causal_);
  }
  at::Device device() const override { return device_; }

 private:
  nn::TextTransformer tower_;
  bool causal_;
  at::Device device_;
};

/// A two-tower family's probe output: "image_embeds" for the probe's
/// "pixel_values" and "text_embeds" (pooled, projected, not normalized) for its
/// "input_ids" (already padded as the model's processor pads), each when given.
nn::ProbeOutput two_tower_probe(const nn::ProbeInput& in, const ImageTower& image, const Backbone& text,
                                const Pooler& pooler);

/// How the image side runs.
struct ImageTowerSettings {
  imageio::PreprocessConfig preprocess;
  int64_t image_size = 224;        ///< the square the tower takes; the processor must produce it
  int64_t images_per_forward = 32; ///< bounds activation memory
  int64_t dimension = 0;           ///< embedding width (the projection's)
  bool normalize = true;           ///< unit-length embeddings unless a request says otherwise
  std::string processor_file;      ///< names the preprocessor config in errors
};

/// A loaded image-and-text model.
class ImageTextEmbedder final : public core::Instance,
                                public capabilities::TextEmbedding,
                                public capabilities::ImageEmbedding {
 public:
  /// `head`: the pair scoring for zero-shot classification (nullopt: none).
  ImageTextEmbedder(std::unique_ptr<ImageTower> images, ImageTowerSettings settings,
                    std::unique_ptr<SentenceEmbedder> texts, std::optional<capabilities::ContrastiveHead> head);

  at::Tensor embed(const std::vector<std::string>& texts, const capabilities::EmbedOptions& options,
                   capabilities::RequestContext& ctx) override;
  at::Tensor embed_images(const std::vector<capabilities::Image>& images,
                          const capabilities::ImageEmbedOptions& options, capabilities::RequestContext& ctx) override;
  int64_t dimension() const override { return settings_.dimension; }
  bool normalizes() const override { return texts_->normalizes(); }
  std::vector<int64_t> supported_dimensions() const override { return texts_->supported_dimensions(); }
  std::optional<capabilities::ContrastiveHead> contrastive_head() const override { return head_; }

 private:
  std::unique_ptr<ImageTower> images_;
  ImageTowerSettings settings_;
  std::unique_ptr<SentenceEmbedder> texts_;
  std::optional<capabilities::ContrastiveHead> head_;
};

/// `image` (HWC uint8 with 1, 3 or 4 channels) as contiguous CPU RGB: grey
/// repeated, alpha dropped. InvalidInput names `source` ("image #2") otherwise.
at::Tensor rgb8(const capabilities::Image& image, const std::string& source);

/// The pixel values of `images` (HWC uint8 with 1, 3 or 4 channels; 4 keeps RGB)
/// as `settings` preprocess them: float32 (n, 3, S, S). InvalidInput names the
/// image ("image #2") when it is empty, or when the processor's output is not the
/// tower's square (naming the processor file).
at::Tensor pixel_values(const std::vector<capabilities::Image>& images, const ImageTowerSettings& settings,
                        int64_t first_index = 0);

/// The image side of a model directory, for a tower that takes `image_size`
/// squares: its image processor's settings (preprocessor_config.json, required:
/// InvalidInput says a `family` model needs it to prepare images). Two-tower and
/// vision-language families (LLaVA) read it alike.
ImageTowerSettings image_tower_settings(const loading::ModelDirectory& directory, const std::string& family,
                                        int64_t image_size);

/// Activation bytes of one float32 forward pass of a ViT tower over `images`
/// images: hidden states, the MLP's inner layer, every head's attention scores
/// and the pixel values.
double image_forward_bytes(const nn::VisionTowerConfig& vision, int64_t images);

/// The option "images_per_forward" (default 16, at most 4096) for passes of the image tower.
int64_t images_per_forward_option(const NativeOptions& options);

// --- What a two-tower family's build step shares (CLIP, SigLIP).

/// The settings of a two-tower model directory, before its weights are read.
struct TwoTowerPlan {
  kit::BuildInputs inputs;  ///< layout, tokenizer.json, dtype, checkpoint headers
  ImageTowerSettings image;
  EmbedderSettings text;
};

/// Reads the image processor (preprocessor_config.json, required: InvalidInput
/// says so), the tokenizer and the options "images_per_forward" and
/// "tokens_per_forward" (two_tower_options()) into a plan for embeddings of
/// width `dimension`; texts are cut at the text tower's positions (and the
/// tokenizer's model_max_length). `family` names the family in errors.
TwoTowerPlan plan_two_tower(const loading::ModelDirectory& directory, const NativeOptions& options,
                            const std::string& family, const nn::VisionTowerConfig& vision,
                            const nn::TextTowerConfig& text, int64_t dimension);

/// The options two_tower families take.
std::vector<OptionSpec> two_tower_options();

/// Makes a replica's instance from a plan on a device.
using TwoTowerLoader = std::function<std::shared_ptr<core::Instance>(const TwoTowerPlan&, const std::string& device)>;

/// Fills `model`'s spec: both capabilities, the memory estimate (weights plus the
/// larger of one image forward and one text forward), devices, batch budget and
/// the loader.
void fill_two_tower_spec(NativeModel& model, const TwoTowerPlan& plan, const nn::VisionTowerConfig& vision,
                         const nn::TextTowerConfig& text, double weight_bytes, const NativeOptions& options,
                         TwoTowerLoader loader);

/// The instance of a plan: the image tower, and the text backbone under a
/// SentenceEmbedder with `pooler`.
std::shared_ptr<ImageTextEmbedder> make_two_tower(const TwoTowerPlan& plan, std::unique_ptr<ImageTower> image,
                                                  std::unique_ptr<Backbone> text, std::shared_ptr<const Pooler> pooler,
                                                  std::optional<capabilities::ContrastiveHead> head);

/// The value of a one-element tensor (a logit scale); 0 for a meta tensor (measuring).
double scalar_value(const at::Tensor& t);

}  // namespace mpool::models
