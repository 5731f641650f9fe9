#include "mpool/capabilities/requests.h"

#include <ATen/ATen.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <mutex>

#include "mpool/core/fanout.h"
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

// Any exception as an Error: a foreign one is the model's failure.
Error as_error(const std::exception& e) {
  if (auto* err = dynamic_cast<const Error*>(&e)) return *err;
  return Error(ErrorCode::kModelError, std::string("model failed: ") + e.what());
}

// An embedding request (texts or images), or a scoring of pairs, that can share a forward pass with
// others of the same kind: the replica's batch runs as one model call, ordered by
// cost (length), and each request gets its own rows back. A sub-batch of a split
// call knows where its inputs sit in the caller's list (`origin`): its failure
// names the input that fails (each input is then tried alone to find it).
template <class Cap, class Input>
class EmbeddingJob final : public core::Job {
 public:
  using Embed = std::function<Tensor(Cap&, const std::vector<Input>&, RequestContext&)>;

  // `claim`: what the job counts against the batch budget; a sub-batch of a
  // split call claims the whole budget (see submit_embedding), others their cost.
  EmbeddingJob(std::shared_ptr<core::Pending<Tensor>> pending, std::vector<Input> inputs, std::string batch_key,
               size_t cost, Embed embed, const char* what, std::vector<size_t> origin = {}, size_t claim = 0)
      : Job(pending->context()),
        pending_(std::move(pending)),
        inputs_(std::move(inputs)),
        key_(std::move(batch_key)),
        cost_(cost),
        claim_(std::max(claim, cost)),
        embed_(std::move(embed)),
        what_(what),
        origin_(std::move(origin)) {}

  std::string_view batch_key() const override { return key_; }
  size_t batch_cost() const override { return claim_; }

  void run(Instance& instance) override {
    Tensor out;
    try {
      out = checked_embedding(guard_oom([&] { return embed_(as<Cap>(instance), inputs_, context()); }),
                              inputs_.size(), what_);
    } catch (const std::exception& e) {
      if (origin_.empty()) throw;
      throw located(instance, as_error(e));
    }
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
    if (context().should_stop()) {  // past the deadline or cancelled: not a success
      fail(context().stop_error());
      return;
    }
    // Counted before the value is out, so that a caller who reads stats() right
    // after its result sees its inputs.
    if (const auto& metrics = context().metrics()) metrics->record_inputs(inputs_.size(), cost_);
    pending_->set_value(rows);
  }

  // The failure of a sub-batch, naming the caller's index of the input that
  // fails alone (or the sub-batch's first input, when none does).
  Error located(Instance& instance, const Error& error) {
    if (context().should_stop()) return context().stop_error();
    switch (error.code()) {
      case ErrorCode::kTimeout:
      case ErrorCode::kCancelled:
      case ErrorCode::kShuttingDown: return error;
      default: break;
    }
    auto named = [&](size_t i, const Error& e) {
      return Error(e.code(), std::string(what_) + "[" + std::to_string(origin_[i]) + "]: " + e.what());
    };
    if (inputs_.size() == 1) return named(0, error);
    for (size_t i = 0; i < inputs_.size(); ++i) {
      if (context().should_stop()) return context().stop_error();
      try {
        checked_embedding(guard_oom([&] { return embed_(as<Cap>(instance), std::vector<Input>{inputs_[i]}, context()); }),
                          1, what_);
      } catch (const std::exception& e) {
        if (context().should_stop()) return context().stop_error();
        return named(i, as_error(e));
      }
    }
    return Error(error.code(), std::string(what_) + "[" + std::to_string(origin_[0]) + "] and the " +
                                   std::to_string(inputs_.size() - 1) +
                                   " others of its sub-batch (each succeeds alone): " + error.what());
  }

  std::shared_ptr<core::Pending<Tensor>> pending_;
  std::vector<Input> inputs_;
  std::string key_;
  size_t cost_;
  size_t claim_;
  Embed embed_;
  const char* what_;
  std::vector<size_t> origin_;  // the caller's index of each input (a split call's sub-batch only)
};

// Sub-batches of a call: each input in exactly one, cheapest inputs first (so
// that a sub-batch holds inputs of like length, as one model call would order
// them), each within `budget` unless one input alone exceeds it.
std::vector<std::vector<size_t>> plan_sub_batches(const std::vector<size_t>& costs, size_t budget) {
  std::vector<size_t> order(costs.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return costs[a] < costs[b]; });
  std::vector<std::vector<size_t>> parts;
  size_t used = 0;
  for (size_t i : order) {
    if (parts.empty() || (used + costs[i] > budget && !parts.back().empty())) {
      parts.emplace_back();
      used = 0;
    }
    parts.back().push_back(i);
    used += costs[i];
  }
  return parts;
}

// What a split call shares between its sub-batches' callbacks.
template <class Input>
struct SplitCall {
  std::shared_ptr<core::Pending<Tensor>> call;
  std::vector<std::vector<size_t>> parts;       // the caller's indices, per sub-batch
  std::vector<std::vector<Input>> part_inputs;  // moved out when the sub-batch is queued
  std::vector<size_t> part_costs;
  size_t inputs = 0;
  std::mutex mu;
  std::vector<Tensor> rows;  // per sub-batch, once it succeeded (mu)
  std::weak_ptr<core::Fanout> fanout;
};

// Puts the sub-batches' rows back in the caller's order.
template <class Input>
Tensor assemble(SplitCall<Input>& call) {
  std::lock_guard lock(call.mu);
  const int64_t width = call.rows.at(0).size(1);
  Tensor out = at::empty({static_cast<int64_t>(call.inputs), width}, at::kFloat);
  for (size_t k = 0; k < call.parts.size(); ++k) {
    const Tensor& rows = call.rows[k];
    check(rows.size(1) == width, ErrorCode::kModelError,
          "the model returned rows of " + std::to_string(rows.size(1)) + " and of " + std::to_string(width) +
              " columns for sub-batches of one call");
    std::vector<int64_t> index(call.parts[k].begin(), call.parts[k].end());
    out.index_copy_(0, at::tensor(index, at::kLong), rows.to(at::kFloat));
  }
  return out;
}

// Queues an embedding or scoring call. A call that fits one batch of the model
// (its batch budget, in batch-cost units) is one job. A larger one is split into
// sub-batches that any replica may take, at most one per serving replica queued
// or running at once (the next is queued when one finishes, so other requests of
// the model queue between them), and put back together in the caller's order.
// Deadlines: see embed() in requests.h.
template <class Cap, class Input>
std::shared_ptr<core::Pending<Tensor>> submit_embedding(core::Pool& pool, const std::string& key,
                                                        const core::RequestOptions& options, const BulkOptions& bulk,
                                                        std::vector<Input> inputs, const std::vector<size_t>& costs,
                                                        std::string batch_key,
                                                        typename EmbeddingJob<Cap, Input>::Embed embed,
                                                        const char* what) {
  using Job = EmbeddingJob<Cap, Input>;
  size_t cost = 0;
  for (size_t c : costs) cost += c;
  const size_t n = inputs.size();
  const core::SplitHint hint = pool.split_hint(key);
  std::shared_ptr<core::Progress> progress = bulk.progress;
  if (hint.batch_budget == 0 || cost <= hint.batch_budget || n == 1) {
    auto pending = std::make_shared<core::Pending<Tensor>>(pool.make_context(key, options));
    if (progress)
      pending->on_done([progress, n, context = std::weak_ptr<RequestContext>(pending->context())] {
        auto c = context.lock();
        if (c && c->outcome() == core::Outcome::kSucceeded) progress->advance(n);
        progress->finish();
      });
    pool.submit(key, Cap::kName,
                std::make_shared<Job>(pending, std::move(inputs), std::move(batch_key), cost, std::move(embed), what));
    return pending;
  }

  // The call's own deadline: the caller's timeout when given; otherwise each
  // sub-batch has the pool's request timeout, and the call a backstop of one
  // such timeout per sub-batch.
  const bool whole = bulk.whole_call_timeout.value_or(options.timeout_s.has_value());
  auto state = std::make_shared<SplitCall<Input>>();
  state->parts = plan_sub_batches(costs, hint.batch_budget);
  const size_t parts = state->parts.size();
  Clock::time_point deadline;
  {
    auto probe = pool.make_context(key, whole ? options : core::RequestOptions{});  // checks the key and timeout
    const double per_part = std::chrono::duration<double>(probe->deadline() - probe->created()).count();
    deadline = whole ? probe->deadline() : core::deadline_after(per_part * static_cast<double>(parts));  // clamped
  }
  state->call = std::make_shared<core::Pending<Tensor>>(std::make_shared<RequestContext>(deadline, nullptr));
  state->inputs = n;
  state->rows.resize(parts);
  for (auto& part : state->parts) {
    std::vector<Input> mine;
    size_t part_cost = 0;
    mine.reserve(part.size());
    for (size_t i : part) {
      mine.push_back(std::move(inputs[i]));
      part_cost += costs[i];
    }
    state->part_inputs.push_back(std::move(mine));
    state->part_costs.push_back(part_cost);
  }

  core::Pool* p = &pool;
  core::Fanout::Hooks hooks;
  hooks.window = [p, key] {
    try {
      return static_cast<size_t>(std::max(1, p->split_hint(key).replicas));
    } catch (const std::exception&) {  // unregistered meanwhile: the next start says so
      return size_t{1};
    }
  };
  const size_t budget = hint.batch_budget;
  hooks.start = [p, key, state, whole, progress, batch_key, embed, what, budget](size_t k) -> std::function<void()> {
    core::RequestOptions part_options;
    if (whole) {
      const double left = std::chrono::duration<double>(state->call->context()->deadline() - Clock::now()).count();
      if (left <= 0) throw Error(ErrorCode::kTimeout, "request timed out");
      part_options.timeout_s = left;
    }
    auto sub = std::make_shared<core::Pending<Tensor>>(p->make_context(key, part_options));
    sub->on_done([state, k, progress, weak = std::weak_ptr<core::Pending<Tensor>>(sub)] {
      auto part = weak.lock();
      auto fanout = state->fanout.lock();
      if (!part || !fanout) return;
      Tensor rows;
      try {
        rows = part->get();
      } catch (const Error& e) {
        fanout->part_failed(k, e);
        return;
      }
      {
        std::lock_guard lock(state->mu);
        state->rows[k] = rows;
      }
      if (progress) progress->advance(state->parts[k].size());
      fanout->part_succeeded(k);
    });
    // A sub-batch claims the whole budget: the replica that takes it runs it
    // alone and never holds the next sub-batch back (the one-slot prefetch)
    // from a replica that is free.
    p->submit(key, Cap::kName,
              std::make_shared<Job>(sub, std::move(state->part_inputs[k]), batch_key, state->part_costs[k], embed,
                                    what, state->parts[k], budget));
    return [sub] { sub->cancel(); };
  };
  hooks.complete = [state] {
    try {
      state->call->set_value(assemble(*state));
    } catch (const Error& e) {
      state->call->set_error(e);
    } catch (const std::exception& e) {
      state->call->set_error(Error(ErrorCode::kInternal, std::string("assembling the call's rows failed: ") + e.what()));
    }
  };
  hooks.fail = [state](const Error& e) { state->call->set_error(e); };
  auto fanout = core::Fanout::create(parts, std::move(hooks));
  state->fanout = fanout;
  // The call ending any way (a timeout or cancel of its own included) stops its sub-batches.
  state->call->on_done([fanout, progress] {
    fanout->close();
    if (progress) progress->finish();
  });
  auto call = state->call;
  fanout->begin();
  return call;
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

// Counts a text stream's tokens against max_tokens (from the ids the model
// reports, or one per chunk when it reports none), times it, and ends it with the
// final chunk: finish_reason and stats.
class TextStreamWriter {
 public:
  TextStreamWriter(TextStream& out, int64_t max_tokens) : out_(out), max_tokens_(max_tokens) {}

  bool push(TextPiece piece) {
    if ((ids_ > 0 ? ids_ : chunks_) >= max_tokens_) {  // one more than allowed: drop it, stop
      hit_limit_ = true;
      return false;
    }
    if (!first_) first_ = Clock::now();
    ids_ += static_cast<int64_t>(piece.token_ids.size());
    ++chunks_;
    return out_.push(TextChunk{std::move(piece.text), std::move(piece.token_ids), std::move(piece.logprobs),
                               std::nullopt, std::nullopt});
  }
  // Room for a piece and the final chunk without waiting (or the stream ended).
  bool can_send() const { return out_.room() >= 2; }
  void finish(Completion done) {
    if (hit_limit_) done.finish_reason = "length";
    if (done.finish_reason != "stop" && done.finish_reason != "length")
      throw Error(ErrorCode::kModelError, "model finished with finish_reason '" + done.finish_reason +
                                              "'; expected 'stop' or 'length'");
    GenerationStats stats;
    stats.prompt_tokens = done.prompt_tokens;
    stats.completion_tokens = done.completion_tokens.value_or(ids_ > 0 ? ids_ : chunks_);
    stats.image_tokens = done.image_tokens;
    stats.image_time_s = done.image_time_s;
    const auto end = Clock::now();
    stats.time_to_first_token_s = first_ ? seconds(*first_ - start_) : seconds(end - start_);
    const double decode_s = first_ ? seconds(end - *first_) : 0;
    stats.tokens_per_second = decode_s > 0 && stats.completion_tokens > 1
                                  ? static_cast<double>(stats.completion_tokens - 1) / decode_s
                                  : 0;
    out_.push(TextChunk{"", {}, {}, done.finish_reason, stats});
  }

 private:
  TextStream& out_;
  const int64_t max_tokens_;
  const Clock::time_point start_ = Clock::now();
  std::optional<Clock::time_point> first_;
  int64_t ids_ = 0, chunks_ = 0;
  bool hit_limit_ = false;
};

// A text_to_text or vision request: streamed text. Generation requests of a
// model share one batch key, so a model that implements BatchGeneration runs
// them as a continuous batch (requests join and leave between its steps); any
// other runs each through its TextToText or Vision method.
class GenerationJob final : public core::Job {
 public:
  static constexpr const char* kBatchKey = "generation";

  GenerationJob(std::shared_ptr<TextStream> channel, GenerationRequest what)
      : Job(channel->context()), channel_(std::move(channel)), what_(std::move(what)) {}

  std::string_view batch_key() const override { return kBatchKey; }
  bool continuous() const override { return true; }

  void run(Instance& instance) override {
    TextStreamWriter writer(*channel_, what_.params.max_tokens);
    RequestContext& ctx = context();
    TextSink sink = [&](TextPiece piece) { return writer.push(std::move(piece)); };
    Completion done = guard_oom([&] {
      return what_.vision ? as<Vision>(instance).describe(what_.images, std::get<std::string>(what_.prompt),
                                                          what_.params, sink, ctx)
                          : as<TextToText>(instance).generate(what_.prompt, what_.params, sink, ctx);
    });
    end(writer, done);
  }

  void run_continuous(Instance& instance, core::JobFeed& feed) override {
    auto* batcher = dynamic_cast<BatchGeneration*>(&instance);
    if (!batcher) {
      core::run_isolated(*this, instance, "model");
      feed.finished(*this);
      return;
    }
    // Requests of the feed's jobs; a job of the key that is not a generation
    // (none is) would run on its own.
    class Feed final : public GenerationFeed {
     public:
      Feed(Instance& instance, core::JobFeed& feed) : instance_(instance), feed_(feed) {}
      std::shared_ptr<GenerationRequest> next() override {
        while (auto job = feed_.take()) {
          if (auto* g = dynamic_cast<GenerationJob*>(job.get())) return g->request(feed_);
          core::run_isolated(*job, instance_, "model");
          feed_.finished(*job);
        }
        return nullptr;
      }

     private:
      Instance& instance_;
      core::JobFeed& feed_;
    } more(instance, feed);
    guard_oom([&] {
      batcher->generate_batch(request(feed), more);
      return 0;
    });
  }

  void fail(const Error& error) noexcept override {
    try {
      channel_->fail(error);
    } catch (...) {  // allocation failure while storing the error: nothing left to tell
    }
  }

 private:
  // Ends the stream: the stop error once the request stopped, else the final chunk.
  void end(TextStreamWriter& writer, const Completion& done) {
    if (context().should_stop()) {
      channel_->fail(context().stop_error());
      return;
    }
    writer.finish(done);
    if (context().should_stop())
      channel_->fail(context().stop_error());
    else
      channel_->finish();
  }

  // This job as a batch request; its end leaves `feed` (the job may go then).
  std::shared_ptr<GenerationRequest> request(core::JobFeed& feed) {
    auto r = std::make_shared<GenerationRequest>(what_);
    auto writer = std::make_shared<TextStreamWriter>(*channel_, what_.params.max_tokens);
    r->context = &context();
    r->sink = [writer](TextPiece piece) { return writer->push(std::move(piece)); };
    r->can_send = [writer] { return writer->can_send(); };
    auto once = std::make_shared<std::atomic<bool>>(false);
    r->complete = [this, writer, once, &feed](const Completion& done) {
      if (once->exchange(true)) return;
      try {
        end(*writer, done);
      } catch (const Error& e) {
        fail(e);
      }
      feed.finished(*this);
    };
    r->fail = [this, once, &feed](const Error& error) {
      if (once->exchange(true)) return;
      fail(error);
      feed.finished(*this);
    };
    return r;
  }

  std::shared_ptr<TextStream> channel_;
  GenerationRequest what_;
};

std::shared_ptr<TextStream> submit_generation(core::Pool& pool, const std::string& key,
                                              const core::RequestOptions& options, const char* capability,
                                              GenerationRequest what) {
  auto channel = std::make_shared<TextStream>(pool.make_context(key, options), kStreamBuffer);
  pool.submit(key, capability, std::make_shared<GenerationJob>(channel, std::move(what)));
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
                                             EmbedOptions embed_options, const core::RequestOptions& options,
                                             const BulkOptions& bulk) {
  check(!texts.empty(), ErrorCode::kInvalidInput, "embed() needs at least one text");
  check(!embed_options.dimensions || *embed_options.dimensions >= 1, ErrorCode::kInvalidInput,
        "dimensions must be at least 1");
  std::vector<size_t> costs;
  costs.reserve(texts.size());
  for (auto& t : texts) costs.push_back(t.size() / 4 + 2);  // about a token per 4 bytes, plus special tokens
  // Requests batch together only when they ask for the same task (prompt),
  // truncation and normalization.
  std::string batch_key = std::string(TextEmbedding::kName) + (embed_options.truncate ? "" : "/strict") +
                          normalize_key(embed_options.normalize) +
                          (embed_options.dimensions ? "#" + std::to_string(*embed_options.dimensions) : std::string()) +
                          (embed_options.task ? ":" + *embed_options.task : std::string());
  return submit_embedding<TextEmbedding, std::string>(
      pool, key, options, bulk, std::move(texts), costs, std::move(batch_key),
      [embed_options = std::move(embed_options)](TextEmbedding& model, const std::vector<std::string>& all,
                                                 RequestContext& ctx) {
        Tensor rows = model.embed(all, embed_options, ctx);
        if (embed_options.dimensions) return truncated(rows, *embed_options.dimensions, model, embed_options.normalize);
        return normalized_if(embed_options.normalize, rows);
      },
      "texts");
}

std::shared_ptr<core::Pending<Tensor>> score(core::Pool& pool, const std::string& key, std::vector<TextPair> pairs,
                                             ScoreOptions score_options, const core::RequestOptions& options,
                                             const BulkOptions& bulk) {
  check(!pairs.empty(), ErrorCode::kInvalidInput, "score() needs at least one pair");
  std::vector<size_t> costs;
  costs.reserve(pairs.size());
  for (auto& p : pairs) costs.push_back((p.first.size() + p.second.size()) / 4 + 3);  // [CLS] a [SEP] b [SEP]
  std::string batch_key = std::string(Reranking::kName) + (score_options.truncate ? "" : "/strict") +
                          (score_options.raw ? "/raw" : "");
  return submit_embedding<Reranking, TextPair>(
      pool, key, options, bulk, std::move(pairs), costs, std::move(batch_key),
      [score_options](Reranking& model, const std::vector<TextPair>& all, RequestContext& ctx) {
        return model.score(all, score_options, ctx);
      },
      "pairs");
}

std::shared_ptr<core::Pending<Tensor>> embed_images(core::Pool& pool, const std::string& key,
                                                    std::vector<Image> images, ImageEmbedOptions image_options,
                                                    const core::RequestOptions& options, const BulkOptions& bulk) {
  check(!images.empty(), ErrorCode::kInvalidInput, "embed_images() needs at least one image");
  const std::vector<size_t> costs(images.size(), kImageBatchCost);
  return submit_embedding<ImageEmbedding, Image>(
      pool, key, options, bulk, std::move(images), costs,
      std::string(ImageEmbedding::kName) + normalize_key(image_options.normalize),
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
  GenerationRequest what;
  what.prompt = std::move(prompt);
  what.params = std::move(params);
  return submit_generation(pool, key, options, TextToText::kName, std::move(what));
}

std::shared_ptr<TextStream> describe(core::Pool& pool, const std::string& key, std::vector<Image> images,
                                     std::string prompt, GenerationParams params, const core::RequestOptions& options) {
  check(!images.empty(), ErrorCode::kInvalidInput, "describe() needs at least one image");
  GenerationRequest what;
  what.vision = true;
  what.prompt = std::move(prompt);
  what.images = std::move(images);
  what.params = std::move(params);
  return submit_generation(pool, key, options, Vision::kName, std::move(what));
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
