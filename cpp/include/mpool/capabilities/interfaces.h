#pragma once
// The capability interfaces. A model implements the ones it has, next to
// mpool::core::Instance; the pool never sees these types. Each method runs on the
// replica's own thread and checks `ctx.should_stop()` between steps.
#include <functional>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "mpool/base/error.h"

#include "mpool/capabilities/types.h"
#include "mpool/core/request.h"

namespace mpool::capabilities {

using core::RequestContext;

/// Receives generated text as it completes; false means stop generating now.
using TextSink = std::function<bool(TextPiece piece)>;
/// Receives image progress; false means stop generating now.
using ProgressSink = std::function<bool(ImageProgress progress)>;

/// texts -> float32 (n, d).
class TextEmbedding {
 public:
  static constexpr const char* kName = "text_embedding";
  virtual ~TextEmbedding() = default;
  /// Embeds `texts` as `options` say (task prompt, truncation).
  virtual at::Tensor embed(const std::vector<std::string>& texts, const EmbedOptions& options,
                           RequestContext& ctx) = 0;
  /// Embedding width d.
  virtual int64_t dimension() const = 0;
  /// Whether rows come out unit-length when a request leaves `normalize` unset.
  virtual bool normalizes() const { return false; }
  /// The Matryoshka widths the model was trained for; empty: any width up to d.
  virtual std::vector<int64_t> supported_dimensions() const { return {}; }
};

/// prompt -> streamed text.
class TextToText {
 public:
  static constexpr const char* kName = "text_to_text";
  virtual ~TextToText() = default;
  /// Generates from a text prompt or from token ids, emitting text through `sink`.
  virtual Completion generate(const std::variant<std::string, std::vector<int64_t>>& prompt,
                              const GenerationParams& params, const TextSink& sink, RequestContext& ctx) = 0;
};

/// (query, document) pairs -> relevance scores: a cross-encoder.
class Reranking {
 public:
  static constexpr const char* kName = "rerank";
  virtual ~Reranking() = default;
  /// Scores each pair: float32 (n, labels), after the model's activation unless options.raw.
  virtual at::Tensor score(const std::vector<TextPair>& pairs, const ScoreOptions& options, RequestContext& ctx) = 0;
};

/// images -> float32 (n, d).
class ImageEmbedding {
 public:
  static constexpr const char* kName = "image_embedding";
  virtual ~ImageEmbedding() = default;
  /// Embeds decoded HWC uint8 images as `options` say.
  virtual at::Tensor embed_images(const std::vector<Image>& images, const ImageEmbedOptions& options,
                                  RequestContext& ctx) = 0;
  /// Embedding width d.
  virtual int64_t dimension() const = 0;
  /// How image-text pairs are scored, for a model that also implements
  /// TextEmbedding in the same space; nullopt when it has no such head.
  virtual std::optional<ContrastiveHead> contrastive_head() const { return std::nullopt; }
};

/// images + prompt -> streamed text.
class Vision {
 public:
  static constexpr const char* kName = "vision";
  virtual ~Vision() = default;
  /// Continues `prompt` about `images`, emitting text through `sink`. The prompt
  /// is the text the model reads, already rendered by its chat template (the
  /// Python layer renders it), with one image placeholder per image in order; a
  /// model without a template (a Python-defined one) gets the question as it was
  /// asked. params.add_special_tokens says whether tokenizing adds bos etc.
  virtual Completion describe(const std::vector<Image>& images, const std::string& prompt,
                              const GenerationParams& params, const TextSink& sink, RequestContext& ctx) = 0;
};

/// One request inside a continuous batch of generations (BatchGeneration): what
/// to generate, and where its text and its one outcome go.
struct GenerationRequest {
  bool vision = false;  ///< a Vision request (images + rendered prompt) or a TextToText one
  std::variant<std::string, std::vector<int64_t>> prompt;  ///< vision: the rendered prompt text
  std::vector<Image> images;                               ///< vision only
  GenerationParams params;
  RequestContext* context = nullptr;  ///< its deadline and cancellation
  /// Sends a piece of its stream; false: the sequence must end (the consumer is
  /// gone, or max_tokens was reached).
  TextSink sink;
  /// True when its stream has room for a piece and its end without waiting: a
  /// batch steps a sequence only then, so one slow reader stalls nobody else.
  std::function<bool()> can_send;
  /// Its end, called once: the Completion (stats, the final chunk) or, when its
  /// context stopped, the stop error.
  std::function<void(const Completion&)> complete;
  /// Or its error, called once instead.
  std::function<void(const Error&)> fail;
};

/// Where a batch takes further requests from (non-blocking; null when none can join now).
class GenerationFeed {
 public:
  virtual ~GenerationFeed() = default;
  virtual std::shared_ptr<GenerationRequest> next() = 0;
};

/// A model that runs many generations at once (continuous batching) implements
/// this next to TextToText and/or Vision; the pool then routes those requests
/// through it, and a replica's queued requests join its running batch.
class BatchGeneration {
 public:
  virtual ~BatchGeneration() = default;
  /// Runs `first` and the requests it takes from `feed` as they fit, until each
  /// has ended through exactly one of its complete() or fail().
  virtual void generate_batch(std::shared_ptr<GenerationRequest> first, GenerationFeed& feed) = 0;
};

/// prompt (+ optional init image) -> progress, then an image.
class TextToImage {
 public:
  static constexpr const char* kName = "text_to_image";
  virtual ~TextToImage() = default;
  /// Generates an image, reporting each step through `progress`.
  virtual Image generate_image(const std::string& prompt, const ImageConfig& config, const ProgressSink& progress,
                               RequestContext& ctx) = 0;
};

}  // namespace mpool::capabilities
