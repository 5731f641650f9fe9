#pragma once
// Capability calls as pool requests: each builds one generic job (unary or
// streaming) around the interface method and submits it. This is the only place
// that knows both the pool and the capability interfaces.
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "mpool/capabilities/interfaces.h"
#include "mpool/core/channel.h"
#include "mpool/core/pending.h"
#include "mpool/core/pool.h"
#include "mpool/core/progress.h"

namespace mpool::capabilities {

using TextStream = core::Channel<TextChunk>;
using ImageStream = core::Channel<ImageEvent>;
using Tensor = at::Tensor;

/// Chunks a stream buffers before its producer waits for the consumer.
inline constexpr size_t kStreamBuffer = 64;

/// What one image counts against a batch budget, in the same (approximate token) units as text.
inline constexpr size_t kImageBatchCost = 256;

/// How an embedding or scoring call over many inputs runs.
///
/// A call whose inputs cost more than the model's batch budget (the batch-cost
/// units of cross-request batching: about a token per 4 bytes of text, plus
/// special tokens; kImageBatchCost per image) is split into sub-batches, each
/// within the budget, queued as separate jobs that any replica of the model may
/// take. At most one sub-batch per serving replica is queued or running at once;
/// the next is queued when one succeeds, so a request of another caller queued
/// meanwhile runs after at most that many sub-batches. Rows come back in the
/// caller's order; the first failing sub-batch fails the call, naming the
/// caller's index of the input that fails ("texts[1234]: ..."), and the call
/// ending any way (failure, timeout, cancel) cancels every sub-batch still out.
///
/// Deadlines: a timeout the caller gave bounds the whole call. Without one, the
/// pool's request_timeout bounds each sub-batch, from its queueing to the end of
/// its compute (queue wait plus compute), and the call as a whole is bounded
/// only by one such timeout per sub-batch. A call that is not split is one
/// request: its timeout, given or the pool's, bounds it.
struct BulkOptions {
  /// Whether `options.timeout_s` is the caller's own (bounds the whole call) or
  /// the pool's default passed along (image calls pass their effective timeout);
  /// unset: whether `options.timeout_s` is set.
  std::optional<bool> whole_call_timeout;
  /// Advanced by each sub-batch's inputs as it succeeds (by all the inputs at
  /// once for a call that is not split); finished when the call ends.
  std::shared_ptr<core::Progress> progress;
};

/// Queues an embedding of `texts`; the result is float32 (n, d) on the CPU.
/// Large calls are split (see BulkOptions).
std::shared_ptr<core::Pending<Tensor>> embed(core::Pool& pool, const std::string& key, std::vector<std::string> texts,
                                             EmbedOptions embed_options, const core::RequestOptions& options,
                                             const BulkOptions& bulk = {});
/// Queues an embedding of decoded images; float32 (n, d) on the CPU. Large calls
/// are split (see BulkOptions).
std::shared_ptr<core::Pending<Tensor>> embed_images(core::Pool& pool, const std::string& key,
                                                    std::vector<Image> images, ImageEmbedOptions image_options,
                                                    const core::RequestOptions& options, const BulkOptions& bulk = {});
/// Queues a scoring of (query, document) pairs by a cross-encoder; float32
/// (n, labels) on the CPU. Requests batch with other scoring requests of the same
/// options, never with embeddings. Large calls are split (see BulkOptions).
std::shared_ptr<core::Pending<Tensor>> score(core::Pool& pool, const std::string& key, std::vector<TextPair> pairs,
                                             ScoreOptions score_options, const core::RequestOptions& options,
                                             const BulkOptions& bulk = {});
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
