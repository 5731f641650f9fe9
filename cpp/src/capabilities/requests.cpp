#include "mpool/capabilities/requests.h"

#include <ATen/ATen.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>

#include "mpool/core/faults.h"

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

// Runs a model call; the allocator running out of memory (torch's
// OutOfMemoryError, or the out_of_memory fault) becomes MemoryExhausted.
template <class F>
auto guard_oom(F&& call) -> decltype(call()) {
  try {
    if (core::faults::fire(core::faults::Fault::kOutOfMemory, core::faults::current_model()))
      throw c10::OutOfMemoryError(c10::SourceLocation{__func__, __FILE__, __LINE__}, "injected fault out_of_memory");
    return call();
  } catch (const c10::OutOfMemoryError& e) {
    throw Error(ErrorCode::kMemoryExhausted,
                std::string("the model ran out of memory during the request: ") + e.what_without_backtrace());
  }
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

// An embedding request (texts or images), or a scoring of pairs, that can share a forward pass with
// others of the same kind: the replica's batch runs as one model call, ordered by
// cost (length), and each request gets its own rows back.
template <class Cap, class Input>
class EmbeddingJob final : public core::Job {
 public:
  using Embed = std::function<Tensor(Cap&, const std::vector<Input>&, RequestContext&)>;

  EmbeddingJob(std::shared_ptr<core::Pending<Tensor>> pending, std::vector<Input> inputs, std::string batch_key,
               size_t cost, Embed embed, const char* what)
      : Job(pending->context()),
        pending_(std::move(pending)),
        inputs_(std::move(inputs)),
        key_(std::move(batch_key)),
        cost_(cost),
        embed_(std::move(embed)),
        what_(what) {}

  std::string_view batch_key() const override { return key_; }
  size_t batch_cost() const override { return cost_; }

  void run(Instance& instance) override {
    Tensor out = checked_embedding(guard_oom([&] { return embed_(as<Cap>(instance), inputs_, context()); }),
                                   inputs_.size(), what_);
    deliver(out);
  }

  void run_batch(Instance& instance, const std::vector<std::shared_ptr<core::Job>>& batch) override {
    std::vector<EmbeddingJob*> jobs;
    for (auto& j : batch) jobs.push_back(static_cast<EmbeddingJob*>(j.get()));  // same key: same type
    std::stable_sort(jobs.begin(), jobs.end(), [](auto* a, auto* b) { return a->cost_ < b->cost_; });
    std::vector<Input> all;
    for (auto* j : jobs) all.insert(all.end(), j->inputs_.begin(), j->inputs_.end());
    // The merged call stops only when every request in it should stop.
    std::vector<std::shared_ptr<RequestContext>> contexts;
    for (auto* j : jobs) contexts.push_back(j->context_ptr());
    auto group = RequestContext::group(std::move(contexts));
    Tensor out;
    try {
      out = checked_embedding(guard_oom([&] { return embed_(as<Cap>(instance), all, *group); }), all.size(), what_);
    } catch (const std::exception&) {
      // One bad input must fail only its own request: retry them one by one.
      for (auto* j : jobs) core::run_isolated(*j, instance, "model");
      return;
    }
    int64_t row = 0;
    for (auto* j : jobs) {
      auto n = static_cast<int64_t>(j->inputs_.size());
      j->deliver(out.narrow(0, row, n));
      row += n;
    }
  }

  void fail(const Error& error) noexcept override {
    try {
      pending_->set_error(error);
    } catch (...) {  // allocation failure while storing the error: nothing left to tell
    }
  }

 private:
  void deliver(const Tensor& rows) {
    if (context().should_stop())  // past the deadline or cancelled: not a success
      fail(context().stop_error());
    else
      pending_->set_value(rows);
  }

  std::shared_ptr<core::Pending<Tensor>> pending_;
  std::vector<Input> inputs_;
  std::string key_;
  size_t cost_;
  Embed embed_;
  const char* what_;
};

template <class Cap, class Input>
std::shared_ptr<core::Pending<Tensor>> submit_embedding(core::Pool& pool, const std::string& key,
                                                        const core::RequestOptions& options, std::vector<Input> inputs,
                                                        std::string batch_key, size_t cost,
                                                        typename EmbeddingJob<Cap, Input>::Embed embed,
                                                        const char* what) {
  auto pending = std::make_shared<core::Pending<Tensor>>(pool.make_context(key, options));
  pool.submit(key, Cap::kName,
              std::make_shared<EmbeddingJob<Cap, Input>>(pending, std::move(inputs), std::move(batch_key), cost,
                                                         std::move(embed), what));
  return pending;
}

// The batch-key suffix of a normalize option: requests batch only with their like.
std::string normalize_key(std::optional<bool> normalize) {
  return !normalize ? std::string() : *normalize ? "/unit" : "/raw";
}

// normalize == true: the model's rows scaled to unit length, whatever the model
// does by default (a shape the model got wrong is left for checked_embedding).
Tensor normalized_if(std::optional<bool> normalize, Tensor out) {
  if (normalize.value_or(false) && out.defined() && out.dim() == 2 && out.is_floating_point()) {
    out = out.to(at::kFloat);
    out = out / out.norm(2, -1, true).clamp_min(1e-12);
  }
  return out;
}

// A request that runs once on one replica and yields one tensor.
class ValueJob final : public core::Job {
 public:
  using Run = std::function<Tensor(Instance&, RequestContext&)>;
  ValueJob(std::shared_ptr<core::Pending<Tensor>> pending, Run run)
      : Job(pending->context()), pending_(std::move(pending)), run_(std::move(run)) {}
  void run(Instance& instance) override {
    Tensor out = run_(instance, context());
    if (context().should_stop())
      fail(context().stop_error());
    else
      pending_->set_value(out);
  }
  void fail(const Error& error) noexcept override {
    try {
      pending_->set_error(error);
    } catch (...) {  // allocation failure while storing the error: nothing left to tell
    }
  }

 private:
  std::shared_ptr<core::Pending<Tensor>> pending_;
  Run run_;
};

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
    TextSink sink = [&](TextPiece piece) {
      if ((ids > 0 ? ids : chunks) >= max_tokens) {  // one more than allowed: drop it, stop
        hit_limit = true;
        return false;
      }
      if (!first) first = Clock::now();
      ids += static_cast<int64_t>(piece.token_ids.size());
      ++chunks;
      return out.push(TextChunk{std::move(piece.text), std::move(piece.token_ids), std::move(piece.logprobs),
                                std::nullopt, std::nullopt});
    };
    Completion done = guard_oom([&] { return run(as<Cap>(inst), sink, ctx); });
    if (ctx.should_stop()) return;  // the job reports Timeout or Cancelled
    if (hit_limit) done.finish_reason = "length";
    if (done.finish_reason != "stop" && done.finish_reason != "length")
      throw Error(ErrorCode::kModelError, "model finished with finish_reason '" + done.finish_reason +
                                              "'; expected 'stop' or 'length'");
    GenerationStats stats;
    stats.prompt_tokens = done.prompt_tokens;
    stats.completion_tokens = done.completion_tokens.value_or(ids > 0 ? ids : chunks);
    stats.image_tokens = done.image_tokens;
    stats.image_time_s = done.image_time_s;
    auto end = Clock::now();
    stats.time_to_first_token_s = first ? seconds(*first - start) : seconds(end - start);
    double decode_s = first ? seconds(end - *first) : 0;
    stats.tokens_per_second = decode_s > 0 && stats.completion_tokens > 1
                                  ? static_cast<double>(stats.completion_tokens - 1) / decode_s
                                  : 0;
    out.push(TextChunk{"", {}, {}, done.finish_reason, stats});
  };
  pool.submit(key, Cap::kName, std::make_shared<core::StreamJob<TextChunk>>(channel, std::move(fn)));
  return channel;
}

// Matryoshka truncation of a model's rows to their first `dimensions`, then
// unit length again when the rows are normalized (asked for, or the model's
// default). InvalidInput when the model is narrower or was not trained for it.
Tensor truncated(const Tensor& rows, int64_t dimensions, const TextEmbedding& model, std::optional<bool> normalize) {
  check(rows.dim() != 2 || dimensions <= rows.size(1), ErrorCode::kInvalidInput,
        "dimensions=" + std::to_string(dimensions) + " is more than the model's " + std::to_string(rows.size(1)));
  const std::vector<int64_t> supported = model.supported_dimensions();
  if (!supported.empty() && std::find(supported.begin(), supported.end(), dimensions) == supported.end()) {
    std::string listed;
    for (int64_t d : supported) listed += (listed.empty() ? "" : ", ") + std::to_string(d);
    throw Error(ErrorCode::kInvalidInput, "dimensions=" + std::to_string(dimensions) +
                                              " is not a width this model was trained for (" + listed + ")");
  }
  if (!rows.defined() || rows.dim() != 2 || !rows.is_floating_point()) return rows;  // checked_embedding says why
  Tensor out = rows.narrow(1, 0, dimensions).to(at::kFloat);
  if (normalize.value_or(model.normalizes())) out = out / out.norm(2, -1, true).clamp_min(1e-12);
  return out.contiguous();
}

}  // namespace

std::shared_ptr<core::Pending<Tensor>> embed(core::Pool& pool, const std::string& key, std::vector<std::string> texts,
                                             EmbedOptions embed_options, const core::RequestOptions& options) {
  check(!texts.empty(), ErrorCode::kInvalidInput, "embed() needs at least one text");
  check(!embed_options.dimensions || *embed_options.dimensions >= 1, ErrorCode::kInvalidInput,
        "dimensions must be at least 1");
  size_t cost = 0;
  for (auto& t : texts) cost += t.size() / 4 + 2;  // about a token per 4 bytes, plus special tokens
  // Requests batch together only when they ask for the same task (prompt),
  // truncation and normalization.
  std::string batch_key = std::string(TextEmbedding::kName) + (embed_options.truncate ? "" : "/strict") +
                          normalize_key(embed_options.normalize) +
                          (embed_options.dimensions ? "#" + std::to_string(*embed_options.dimensions) : std::string()) +
                          (embed_options.task ? ":" + *embed_options.task : std::string());
  return submit_embedding<TextEmbedding, std::string>(
      pool, key, options, std::move(texts), std::move(batch_key), cost,
      [embed_options = std::move(embed_options)](TextEmbedding& model, const std::vector<std::string>& all,
                                                 RequestContext& ctx) {
        Tensor rows = model.embed(all, embed_options, ctx);
        if (embed_options.dimensions) return truncated(rows, *embed_options.dimensions, model, embed_options.normalize);
        return normalized_if(embed_options.normalize, rows);
      },
      "texts");
}

std::shared_ptr<core::Pending<Tensor>> score(core::Pool& pool, const std::string& key, std::vector<TextPair> pairs,
                                             ScoreOptions score_options, const core::RequestOptions& options) {
  check(!pairs.empty(), ErrorCode::kInvalidInput, "score() needs at least one pair");
  size_t cost = 0;
  for (auto& p : pairs) cost += (p.first.size() + p.second.size()) / 4 + 3;  // [CLS] a [SEP] b [SEP]
  std::string batch_key = std::string(Reranking::kName) + (score_options.truncate ? "" : "/strict") +
                          (score_options.raw ? "/raw" : "");
  return submit_embedding<Reranking, TextPair>(
      pool, key, options, std::move(pairs), std::move(batch_key), cost,
      [score_options](Reranking& model, const std::vector<TextPair>& all, RequestContext& ctx) {
        return model.score(all, score_options, ctx);
      },
      "pairs");
}

std::shared_ptr<core::Pending<Tensor>> embed_images(core::Pool& pool, const std::string& key,
                                                    std::vector<Image> images, ImageEmbedOptions image_options,
                                                    const core::RequestOptions& options) {
  check(!images.empty(), ErrorCode::kInvalidInput, "embed_images() needs at least one image");
  size_t cost = images.size() * kImageBatchCost;
  return submit_embedding<ImageEmbedding, Image>(
      pool, key, options, std::move(images), std::string(ImageEmbedding::kName) + normalize_key(image_options.normalize),
      cost,
      [image_options](ImageEmbedding& model, const std::vector<Image>& all, RequestContext& ctx) {
        return normalized_if(image_options.normalize, model.embed_images(all, image_options, ctx));
      },
      "images");
}

std::shared_ptr<core::Pending<Tensor>> zero_shot(core::Pool& pool, const std::string& key, std::vector<Image> images,
                                                 std::vector<std::string> texts, const core::RequestOptions& options) {
  check(!images.empty(), ErrorCode::kInvalidInput, "zero_shot() needs at least one image");
  check(!texts.empty(), ErrorCode::kInvalidInput, "zero_shot() needs at least one label");
  const std::vector<std::string> caps = pool.model_stats(key).capabilities;
  std::string listed;
  for (const auto& c : caps) listed += (listed.empty() ? "" : ", ") + c;
  check(std::find(caps.begin(), caps.end(), TextEmbedding::kName) != caps.end() &&
            std::find(caps.begin(), caps.end(), ImageEmbedding::kName) != caps.end(),
        ErrorCode::kInvalidInput,
        "zero_shot() needs a model that embeds images and texts into one space (CLIP, SigLIP); '" + key +
            "' does not embed " + (std::find(caps.begin(), caps.end(), TextEmbedding::kName) == caps.end() ? "texts" : "images") +
            " (its capabilities: " + listed + ")");
  auto pending = std::make_shared<core::Pending<Tensor>>(pool.make_context(key, options));
  auto run = [images = std::move(images), texts = std::move(texts)](Instance& inst, RequestContext& ctx) {
    ImageEmbedding& vision = as<ImageEmbedding>(inst);
    auto* text = dynamic_cast<TextEmbedding*>(&inst);
    const std::optional<ContrastiveHead> head = vision.contrastive_head();
    check(text != nullptr && head.has_value(), ErrorCode::kInvalidInput,
          "zero_shot() needs a model that embeds images and texts into one space with a contrastive head "
          "(CLIP, SigLIP); this one " +
              std::string(text == nullptr ? "does not embed texts" : "has no contrastive head"));
    return guard_oom([&] {
      Tensor img = checked_embedding(vision.embed_images(images, ImageEmbedOptions{true}, ctx), images.size(), "images");
      ctx.throw_if_stopped();
      EmbedOptions text_options;
      text_options.normalize = true;
      Tensor txt = checked_embedding(text->embed(texts, text_options, ctx), texts.size(), "labels");
      check(img.size(1) == txt.size(1), ErrorCode::kModelError,
            "the model's image embeddings have " + std::to_string(img.size(1)) + " dimensions and its text embeddings " +
                std::to_string(txt.size(1)) + "; zero-shot needs one space");
      img = img / img.norm(2, -1, true).clamp_min(1e-12);
      txt = txt / txt.norm(2, -1, true).clamp_min(1e-12);
      Tensor logits = at::matmul(img.to(at::kDouble), txt.to(at::kDouble).t()) * head->logit_scale + head->logit_bias;
      return (head->sigmoid ? at::sigmoid(logits) : at::softmax(logits, -1)).to(at::kFloat).contiguous();
    });
  };
  pool.submit(key, ImageEmbedding::kName, std::make_shared<ValueJob>(pending, std::move(run)));
  return pending;
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

std::shared_ptr<TextStream> describe(core::Pool& pool, const std::string& key, std::vector<Image> images,
                                     std::string prompt, GenerationParams params, const core::RequestOptions& options) {
  check(!images.empty(), ErrorCode::kInvalidInput, "describe() needs at least one image");
  const int64_t max_tokens = params.max_tokens;
  return submit_text_stream<Vision>(
      pool, key, options, max_tokens,
      [images = std::move(images), prompt = std::move(prompt), params = std::move(params)](
          Vision& model, const TextSink& sink, RequestContext& ctx) {
        return model.describe(images, prompt, params, sink, ctx);
      });
}

std::shared_ptr<ImageStream> generate_image(core::Pool& pool, const std::string& key, std::string prompt,
                                            ImageConfig config, const core::RequestOptions& options) {
  auto channel = std::make_shared<ImageStream>(pool.make_context(key, options), kStreamBuffer);
  auto fn = [prompt = std::move(prompt), config = std::move(config)](Instance& inst, RequestContext& ctx,
                                                                     ImageStream& out) {
    const auto started = std::chrono::steady_clock::now();
    ProgressSink progress = [&](ImageProgress p) {
      p.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      return out.push(ImageEvent(std::move(p)));
    };
    Image image = guard_oom([&] { return as<TextToImage>(inst).generate_image(prompt, config, progress, ctx); });
    if (ctx.should_stop()) return;
    // A model that only makes 8-bit images still answers a float request.
    if (config.float_output && image.defined() && image.scalar_type() == at::kByte) image = image.to(at::kFloat) / 255.0;
    const at::ScalarType expected = config.float_output ? at::kFloat : at::kByte;
    if (!image.defined() || image.dim() != 3 || image.scalar_type() != expected ||
        (image.size(2) != 1 && image.size(2) != 3 && image.size(2) != 4))
      throw Error(ErrorCode::kModelError, "model returned " +
                                              (image.defined() ? "a tensor of shape " + std::string(c10::str(image.sizes())) +
                                                                     " and dtype " + std::string(c10::toString(image.scalar_type()))
                                                               : std::string("no image")) +
                                              "; expected an HWC " + (config.float_output ? "float32" : "uint8") +
                                              " image with 1, 3 or 4 channels");
    out.push(ImageEvent(image.to(at::kCPU).contiguous()));
  };
  pool.submit(key, TextToImage::kName, std::make_shared<core::StreamJob<ImageEvent>>(channel, std::move(fn)));
  return channel;
}

}  // namespace mpool::capabilities
