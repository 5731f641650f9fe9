#pragma once
// Capability calls as pool requests: each builds one generic job (unary or
// streaming) around the interface method and submits it. This is the only place
// that knows both the pool and the capability interfaces.
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "mpool/capabilities/interfaces.h"
#include "mpool/core/channel.h"
#include "mpool/core/pending.h"
#include "mpool/core/pool.h"

namespace mpool::capabilities {

using TextStream = core::Channel<TextChunk>;
using ImageStream = core::Channel<ImageEvent>;
using Tensor = at::Tensor;

/// Chunks a stream buffers before its producer waits for the consumer.
inline constexpr size_t kStreamBuffer = 64;

/// What one image counts against a batch budget, in the same (approximate token) units as text.
inline constexpr size_t kImageBatchCost = 256;

/// Queues an embedding of `texts`; the result is float32 (n, d) on the CPU.
std::shared_ptr<core::Pending<Tensor>> embed(core::Pool& pool, const std::string& key, std::vector<std::string> texts,
                                             EmbedOptions embed_options, const core::RequestOptions& options);
/// Queues an embedding of decoded images; float32 (n, d) on the CPU.
std::shared_ptr<core::Pending<Tensor>> embed_images(core::Pool& pool, const std::string& key,
                                                    std::vector<Image> images, ImageEmbedOptions image_options,
                                                    const core::RequestOptions& options);
/// Queues a scoring of (query, document) pairs by a cross-encoder; float32
/// (n, labels) on the CPU. Requests batch with other scoring requests of the same
/// options, never with embeddings.
std::shared_ptr<core::Pending<Tensor>> score(core::Pool& pool, const std::string& key, std::vector<TextPair> pairs,
                                             ScoreOptions score_options, const core::RequestOptions& options);
/// Zero-shot classification on one replica of an image-and-text model: each
/// image scored against each text (the labels, already templated) through the
/// model's ContrastiveHead; float32 (images, texts) probabilities (rows sum to
/// one under a softmax head; independent sigmoids otherwise).
std::shared_ptr<core::Pending<Tensor>> zero_shot(core::Pool& pool, const std::string& key, std::vector<Image> images,
                                                 std::vector<std::string> texts, const core::RequestOptions& options);
/// Streams a generation from a text prompt or token ids.
std::shared_ptr<TextStream> generate(core::Pool& pool, const std::string& key,
                                     std::variant<std::string, std::vector<int64_t>> prompt, GenerationParams params,
                                     const core::RequestOptions& options);
/// Streams a continuation of `prompt` (one image placeholder per image) about `images` (at least one).
std::shared_ptr<TextStream> describe(core::Pool& pool, const std::string& key, std::vector<Image> images,
                                     std::string prompt, GenerationParams params, const core::RequestOptions& options);
/// Streams progress, then the final image.
std::shared_ptr<ImageStream> generate_image(core::Pool& pool, const std::string& key, std::string prompt,
                                            ImageConfig config, const core::RequestOptions& options);

}  // namespace mpool::capabilities
