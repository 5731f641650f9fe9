#include "mpool/capabilities/requests.h"

#include <ATen/ATen.h>

#include <chrono>

namespace mpool::capabilities {
namespace {

using core::Clock;
using core::Instance;
using core::RequestContext;

// The instance's Cap interface; the pool already checked that the spec declares
// it, so a mismatch is the model author's bug and says so.
template <class Cap>
Cap& as(Instance& instance) {
  if (auto* cap = dynamic_cast<Cap*>(&instance)) return *cap;
  throw Error(ErrorCode::kModelError,
              std::string("the loaded instance does not implement ") + Cap::kName + " although its spec declares it");
}

// Checks an embedding the model returned and brings it to float32 on the CPU.
Tensor checked_embedding(const Tensor& out, size_t rows, const char* what) {
  if (!out.defined() || out.dim() != 2 || out.size(0) != static_cast<int64_t>(rows))
    throw Error(ErrorCode::kModelError,
                std::string("model returned ") +
                    (out.defined() ? "a tensor of shape " + std::string(c10::str(out.sizes())) : "no tensor") +
                    " for " + std::to_string(rows) + " " + what + "; expected (" + std::to_string(rows) + ", d)");
  return out.to(at::kCPU, at::kFloat).contiguous();
}

template <class Cap>
std::shared_ptr<core::Pending<Tensor>> submit_unary(core::Pool& pool, const std::string& key,
                                                    const core::RequestOptions& options,
                                                    std::function<Tensor(Cap&, RequestContext&)> fn) {
  auto pending = std::make_shared<core::Pending<Tensor>>(pool.make_context(key, options));
  pool.submit(key, Cap::kName,
              std::make_shared<core::UnaryJob<Tensor>>(
                  pending, [fn = std::move(fn)](Instance& inst, RequestContext& ctx) { return fn(as<Cap>(inst), ctx); }));
  return pending;
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// A text stream around `run`, which calls the model with a sink; adds the final
// chunk with finish_reason and stats.
template <class Cap>
std::shared_ptr<TextStream> submit_text_stream(
    core::Pool& pool, const std::string& key, const core::RequestOptions& options, int64_t max_tokens,
    std::function<Completion(Cap&, const TextSink&, RequestContext&)> run) {
  auto channel = std::make_shared<TextStream>(pool.make_context(key, options), kStreamBuffer);
  auto fn = [run = std::move(run), max_tokens](Instance& inst, RequestContext& ctx, TextStream& out) {
    auto start = Clock::now();
    std::optional<Clock::time_point> first;
    int64_t ids = 0, chunks = 0;
    bool hit_limit = false;
    // max_tokens holds whatever the model does: tokens are counted from the ids it
    // reports, or one per chunk when it reports none.
    TextSink sink = [&](std::string text, std::vector<int64_t> token_ids) {
      if ((ids > 0 ? ids : chunks) >= max_tokens) {  // one more than allowed: drop it, stop
        hit_limit = true;
        return false;
      }
      if (!first) first = Clock::now();
      ids += static_cast<int64_t>(token_ids.size());
      ++chunks;
      return out.push(TextChunk{std::move(text), std::move(token_ids), std::nullopt, std::nullopt});
    };
    Completion done = run(as<Cap>(inst), sink, ctx);
    if (ctx.should_stop()) return;  // the job reports Timeout or Cancelled
    if (hit_limit) done.finish_reason = "length";
    if (done.finish_reason != "stop" && done.finish_reason != "length")
      throw Error(ErrorCode::kModelError, "model finished with finish_reason '" + done.finish_reason +
                                              "'; expected 'stop' or 'length'");
    GenerationStats stats;
    stats.prompt_tokens = done.prompt_tokens;
    stats.completion_tokens = done.completion_tokens.value_or(ids > 0 ? ids : chunks);
    auto end = Clock::now();
    stats.time_to_first_token_s = first ? seconds(*first - start) : seconds(end - start);
    double decode_s = first ? seconds(end - *first) : 0;
    stats.tokens_per_second = decode_s > 0 && stats.completion_tokens > 1
                                  ? static_cast<double>(stats.completion_tokens - 1) / decode_s
                                  : 0;
    out.push(TextChunk{"", {}, done.finish_reason, stats});
  };
  pool.submit(key, Cap::kName, std::make_shared<core::StreamJob<TextChunk>>(channel, std::move(fn)));
  return channel;
}

}  // namespace

std::shared_ptr<core::Pending<Tensor>> embed(core::Pool& pool, const std::string& key, std::vector<std::string> texts,
                                             std::optional<std::string> task, const core::RequestOptions& options) {
  check(!texts.empty(), ErrorCode::kInvalidInput, "embed() needs at least one text");
  return submit_unary<TextEmbedding>(
      pool, key, options,
      [texts = std::move(texts), task = std::move(task)](TextEmbedding& model, RequestContext& ctx) {
        return checked_embedding(model.embed(texts, task, ctx), texts.size(), "texts");
      });
}

std::shared_ptr<core::Pending<Tensor>> embed_images(core::Pool& pool, const std::string& key,
                                                    std::vector<Image> images, const core::RequestOptions& options) {
  check(!images.empty(), ErrorCode::kInvalidInput, "embed_images() needs at least one image");
  return submit_unary<ImageEmbedding>(pool, key, options,
                                      [images = std::move(images)](ImageEmbedding& model, RequestContext& ctx) {
                                        return checked_embedding(model.embed_images(images, ctx), images.size(),
                                                                 "images");
                                      });
}

std::shared_ptr<TextStream> generate(core::Pool& pool, const std::string& key,
                                     std::variant<std::string, std::vector<int64_t>> prompt, GenerationParams params,
                                     const core::RequestOptions& options) {
  const int64_t max_tokens = params.max_tokens;
  return submit_text_stream<TextToText>(
      pool, key, options, max_tokens,
      [prompt = std::move(prompt), params = std::move(params)](TextToText& model, const TextSink& sink,
                                                               RequestContext& ctx) {
        return model.generate(prompt, params, sink, ctx);
      });
}

std::shared_ptr<TextStream> describe(core::Pool& pool, const std::string& key, Image image, std::string query,
                                     GenerationParams params, const core::RequestOptions& options) {
  const int64_t max_tokens = params.max_tokens;
  return submit_text_stream<Vision>(
      pool, key, options, max_tokens,
      [image = std::move(image), query = std::move(query), params = std::move(params)](
          Vision& model, const TextSink& sink, RequestContext& ctx) {
        return model.describe(image, query, params, sink, ctx);
      });
}

std::shared_ptr<ImageStream> generate_image(core::Pool& pool, const std::string& key, std::string prompt,
                                            ImageConfig config, const core::RequestOptions& options) {
  auto channel = std::make_shared<ImageStream>(pool.make_context(key, options), kStreamBuffer);
  auto fn = [prompt = std::move(prompt), config = std::move(config)](Instance& inst, RequestContext& ctx,
                                                                     ImageStream& out) {
    ProgressSink progress = [&](ImageProgress p) { return out.push(ImageEvent(std::move(p))); };
    Image image = as<TextToImage>(inst).generate_image(prompt, config, progress, ctx);
    if (ctx.should_stop()) return;
    if (!image.defined() || image.dim() != 3 || image.scalar_type() != at::kByte ||
        (image.size(2) != 1 && image.size(2) != 3 && image.size(2) != 4))
      throw Error(ErrorCode::kModelError, "model returned " +
                                              (image.defined() ? "a tensor of shape " + std::string(c10::str(image.sizes())) +
                                                                     " and dtype " + std::string(c10::toString(image.scalar_type()))
                                                               : std::string("no image")) +
                                              "; expected an HWC uint8 image with 1, 3 or 4 channels");
    out.push(ImageEvent(image.to(at::kCPU).contiguous()));
  };
  pool.submit(key, TextToImage::kName, std::make_shared<core::StreamJob<ImageEvent>>(channel, std::move(fn)));
  return channel;
}

}  // namespace mpool::capabilities
