#include "mpool/models/text_generator.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "mpool/base/error.h"
#include "mpool/models/generation.h"
#include "mpool/nn/kernels.h"

namespace mpool::models {

namespace cap = capabilities;

SamplingDefaults SamplingDefaults::from(const std::optional<loading::GenerationConfig>& g) {
  SamplingDefaults d;
  if (!g) return d;
  d.present = true;
  d.do_sample = g->do_sample;
  d.temperature = g->temperature;
  d.top_p = g->top_p;
  d.top_k = g->top_k;
  d.repetition_penalty = g->repetition_penalty;
  d.min_p = g->raw.get_optional<double>("min_p");
  return d;
}

cap::GenerationParams SamplingDefaults::apply(cap::GenerationParams p) const {
  auto unset = [&](const char* name) {
    return std::find(p.explicitly_set.begin(), p.explicitly_set.end(), name) == p.explicitly_set.end();
  };
  if (unset("temperature")) {
    if (present && !do_sample.value_or(false))
      p.temperature = 0;  // transformers decodes greedily unless the config says do_sample
    else if (temperature)
      p.temperature = *temperature;
  }
  if (unset("top_p") && top_p) p.top_p = *top_p;
  if (unset("top_k") && top_k) p.top_k = *top_k;
  if (unset("min_p") && min_p) p.min_p = *min_p;
  if (unset("repetition_penalty") && repetition_penalty) p.repetition_penalty = *repetition_penalty;
  return p;
}

TextGenerator::TextGenerator(std::shared_ptr<const CausalLM> model, std::unique_ptr<tokenizer::Tokenizer> tokenizer,
                             TextGeneratorSettings settings)
    : model_(std::move(model)), tokenizer_(std::move(tokenizer)), settings_(std::move(settings)) {
  tokenizer_->set_truncation(std::nullopt);
  tokenizer_->set_padding(std::nullopt);
  const int64_t budget = settings_.kv_cache_tokens > 0 ? settings_.kv_cache_tokens : settings_.context;
  const int64_t bs = settings_.kv_block_size;
  check(bs >= 1, ErrorCode::kInvalidInput, "kv_block_size must be at least 1");
  blocks_ = model_->new_block_pool(bs, std::max<int64_t>(1, (budget + bs - 1) / bs), settings_.kv_cache_dtype);
  publish_usage(0);
}

void TextGenerator::publish_usage(int64_t sequences) const {
  usage_->in_use.store(blocks_->in_use());
  usage_->reserved.store(blocks_->reserved());
  usage_->cached.store(blocks_->cached());
  usage_->free.store(blocks_->available());
  usage_->sequences.store(sequences);
}

std::vector<int64_t> TextGenerator::prompt_ids(const std::variant<std::string, std::vector<int64_t>>& prompt,
                                               const cap::GenerationParams& params) const {
  std::vector<int64_t> ids;
  if (const auto* text = std::get_if<std::string>(&prompt)) {
    check(!text->empty(), ErrorCode::kInvalidInput, "the prompt is empty");
    auto enc = tokenizer_->encode(*text, std::nullopt, params.add_special_tokens);
    ids.assign(enc.ids.begin(), enc.ids.end());
    check(!ids.empty(), ErrorCode::kInvalidInput, "the prompt encodes to no tokens");
  } else {
    ids = std::get<std::vector<int64_t>>(prompt);
    check(!ids.empty(), ErrorCode::kInvalidInput, "the prompt has no token ids");
    const int64_t vocab = model_->vocab_size();
    for (size_t i = 0; i < ids.size(); ++i)
      check(ids[i] >= 0 && ids[i] < vocab, ErrorCode::kInvalidInput,
            "prompt token #" + std::to_string(i) + " is " + std::to_string(ids[i]) + ", outside the vocabulary [0, " +
                std::to_string(vocab) + ")");
  }
  return ids;
}

cap::Completion TextGenerator::generate(const std::variant<std::string, std::vector<int64_t>>& prompt,
                                        const cap::GenerationParams& requested, const cap::TextSink& sink,
                                        cap::RequestContext& ctx) const {
  validate_generation_params(requested);
  return generate(SplicedPrompt{prompt_ids(prompt, requested), {}}, requested, sink, ctx);
}

TextGenerator::Prepared TextGenerator::prepare(const SplicedPrompt& prompt,
                                               const cap::GenerationParams& requested) const {
  validate_generation_params(requested);
  Prepared out;
  out.params = settings_.defaults.apply(requested);
  validate_generation_params(out.params);
  // A stop token outside the vocabulary could never be sampled: a mistake, said so.
  const int64_t vocab = model_->vocab_size();
  for (size_t i = 0; i < out.params.stop_token_ids.size(); ++i) {
    const int64_t id = out.params.stop_token_ids[i];
    check(id >= 0 && id < vocab, ErrorCode::kInvalidInput,
          "stop_token_ids[" + std::to_string(i) + "] is " + std::to_string(id) + ", outside the vocabulary [0, " +
              std::to_string(vocab) + ")");
  }
  check(!prompt.ids.empty() || !prompt.inserts.empty(), ErrorCode::kInvalidInput, "the prompt is empty");
  int64_t prompt_len = static_cast<int64_t>(prompt.ids.size());
  for (const auto& [at, rows] : prompt.inserts) {
    check(at <= prompt.ids.size() && rows.dim() == 2 && rows.size(1) == model_->hidden_size(),
          ErrorCode::kInvalidInput, "an inserted embedding must be (m, hidden) at a position within the prompt");
    prompt_len += rows.size(0);
  }
  const int64_t context = settings_.context;
  check(prompt_len < context, ErrorCode::kInvalidInput,
        "the prompt has " + std::to_string(prompt_len) + " tokens but the context holds " + std::to_string(context) +
            " (prompt and output together)" +
            (context < settings_.max_context
                 ? "; register the model with a larger context_length (up to " +
                       std::to_string(settings_.max_context) + ")"
                 : std::string()));
  out.prompt_len = prompt_len;
  out.setup.prompt = prompt.ids;
  int64_t room = context - prompt_len;
  // max_tokens left at its default asks for no particular length: it stops where a
  // replica's KV cache (kv_cache_tokens, smaller than the context if so
  // registered) ends, rather than asking for more than the cache ever holds.
  const auto& set = out.params.explicitly_set;
  if (std::find(set.begin(), set.end(), "max_tokens") == set.end() && settings_.kv_cache_tokens > prompt_len)
    room = std::min(room, settings_.kv_cache_tokens - prompt_len);
  out.setup.max_new_tokens = std::min(out.params.max_tokens, room);
  out.setup.bounded_by_context = out.setup.max_new_tokens < out.params.max_tokens;
  out.setup.eos_ids = settings_.eos_ids;
  return out;
}

cap::Completion TextGenerator::generate(const SplicedPrompt& prompt, const cap::GenerationParams& requested,
                                        const cap::TextSink& sink, cap::RequestContext& ctx) const {
  const Prepared p = prepare(prompt, requested);
  // The cache holds exactly what this request can reach.
  nn::KvCache cache = model_->new_cache(p.prompt_len + p.setup.max_new_tokens, settings_.kv_cache_dtype);
  cache.prompt_length = p.prompt_len;
  const int64_t chunk = settings_.prefill_chunk;
  bool prefilled = false;
  StepFn step = [&](const std::vector<int64_t>& ids) {
    if (prefilled) return model_->extend(ids, cache);
    prefilled = true;
    // The prompt: token embeddings with the inserts spliced in, in chunks.
    const at::Tensor input = spliced_embeddings(*model_, prompt);
    at::Tensor logits;
    // With the prefix cache, each prompt row gets the bits it gets in any chunking
    // (a prefix the batch reads from the cache computes the same). Without it a
    // prompt always runs in the same chunks, and float32 and bfloat16 keep the GEMM.
    // Keyed on the option alone, not on whether this sequence may reuse blocks:
    // a prompt's numbers must not depend on its max_tokens.
    std::optional<nn::kernels::RowInvariant> invariant;
    if (settings_.prefix_cache) invariant.emplace(/*prompt=*/true);
    for (int64_t at = 0; at < input.size(0); at += chunk) {
      ctx.throw_if_stopped();
      logits = model_->extend_embeddings(input.narrow(0, at, std::min<int64_t>(chunk, input.size(0) - at)), cache);
    }
    return logits;
  };
  cap::Completion done = run_generation(step, *tokenizer_, p.params, p.setup, sink, ctx);
  done.prompt_tokens = p.prompt_len;
  return done;
}

namespace {

// One sequence of a continuous batch.
struct BatchSequence {
  std::shared_ptr<cap::GenerationRequest> request;
  std::unique_ptr<SequenceState> state;
  at::Tensor input;        // the prompt's embeddings until its prefill is done
  int64_t prompt_len = 0;  // positions of the prompt
  int64_t prefilled = 0;   // of them in the cache
  int64_t positions = 0;   // cache positions it holds: prompt + max new tokens
  int64_t image_tokens = 0;
  double image_time_s = 0;
  nn::KvCache cache;       // paged, in the generator's blocks
  bool decoding = false;   // past its prompt, last_token() is its next input
  // Prefix cache: the tokens of its positions as far as they are known tokens
  // (a vision prompt's stop at its first image), and its blocks published so far
  // (the last one is `chain`).
  std::vector<int64_t> ids;
  bool all_tokens = true;
  int64_t published = 0;
  nn::KvBlockPool::Link chain;

  bool stopped() const { return request->context->should_stop(); }
};

// Ends a sequence with its completion (its request reports the stop error if it stopped).
void complete(BatchSequence& s) {
  cap::Completion done = s.state ? s.state->completion() : cap::Completion{"length", 0, 0, 0, 0};
  done.prompt_tokens = s.prompt_len;
  done.image_tokens = s.image_tokens;
  done.image_time_s = s.image_time_s;
  s.cache = nn::KvCache();
  s.request->complete(done);
}

// Runs `body`; what it throws fails `request` alone.
template <class F>
bool guarded(cap::GenerationRequest& request, F&& body) {
  try {
    body();
    return true;
  } catch (const Error& e) {
    request.fail(e);
  } catch (const std::exception& e) {
    request.fail(Error(ErrorCode::kModelError, std::string("generation failed: ") + e.what()));
  } catch (...) {
    request.fail(Error(ErrorCode::kModelError, "generation threw a non-standard exception"));
  }
  return false;
}

}  // namespace

void TextGenerator::generate_batch(std::shared_ptr<cap::GenerationRequest> first, cap::GenerationFeed& feed,
                                   const VisionPromptFn& vision) const {
  const int64_t budget = settings_.kv_cache_tokens > 0 ? settings_.kv_cache_tokens : settings_.context;
  const auto max_batch = static_cast<size_t>(std::max<int64_t>(1, settings_.max_batch));
  struct FinalUsage {  // what the cache holds once the batch returns, however it does
    const TextGenerator& g;
    ~FinalUsage() { g.publish_usage(0); }
  } final_usage{*this};
  std::vector<std::unique_ptr<BatchSequence>> running;  // in admission order
  std::unique_ptr<BatchSequence> waiting;               // taken, waiting for cache room
  std::shared_ptr<cap::GenerationRequest> offered = std::move(first);

  // A request as a sequence (no cache yet); null when it failed (bad input).
  auto admit = [&](std::shared_ptr<cap::GenerationRequest> r) -> std::unique_ptr<BatchSequence> {
    auto s = std::make_unique<BatchSequence>();
    s->request = r;
    const bool ok = guarded(*r, [&] {
      SplicedPrompt prompt;
      if (r->vision) {
        check(static_cast<bool>(vision), ErrorCode::kInvalidInput, "this model does not take images");
        VisionPrompt v = vision(*r);
        prompt = std::move(v.prompt);
        s->image_tokens = v.image_tokens;
        s->image_time_s = v.image_time_s;
      } else {
        validate_generation_params(r->params);
        prompt = SplicedPrompt{prompt_ids(r->prompt, r->params), {}};
      }
      const Prepared p = prepare(prompt, r->params);
      s->prompt_len = p.prompt_len;
      s->positions = p.prompt_len + p.setup.max_new_tokens;
      check(s->positions <= budget, ErrorCode::kInvalidInput,
            "the request needs " + std::to_string(s->positions) + " cache positions (a prompt of " +
                std::to_string(p.prompt_len) + " tokens and up to " + std::to_string(p.setup.max_new_tokens) +
                " new ones) but a replica's KV cache holds " + std::to_string(budget) +
                " (option kv_cache_tokens); lower max_tokens or register the model with a larger kv_cache_tokens");
      s->state = std::make_unique<SequenceState>(*tokenizer_, p.params, p.setup);
      s->input = spliced_embeddings(*model_, prompt);
      s->all_tokens = prompt.inserts.empty();
      s->ids.assign(prompt.ids.begin(),
                    prompt.ids.begin() + static_cast<ptrdiff_t>(s->all_tokens ? prompt.ids.size()
                                                                               : prompt.inserts.front().first));
    });
    return ok ? std::move(s) : nullptr;
  };

  // What stats() reports, kept current at every change of what the batch holds.
  auto publish = [&] { publish_usage(static_cast<int64_t>(running.size())); };
  // With the prefix cache, a sequence reads and publishes shared blocks unless it
  // may outgrow the length up to which the model's cached positions do not
  // depend on the sequence's length.
  const int64_t reusable = model_->prefix_reusable_positions();
  auto reuses = [&](const BatchSequence& s) { return settings_.prefix_cache && s.positions <= reusable; };
  nn::KvBlockPool& pool = *blocks_;
  const int64_t bs = pool.block_size();
  // Publishes each of a sequence's blocks that is full of known tokens, chained
  // on the one before, so later prompts that start the same way share it.
  auto publish_blocks = [&](BatchSequence& s) {
    if (!reuses(s)) return;
    const auto& table = s.cache.table.blocks();
    while ((s.published + 1) * bs <= std::min<int64_t>(s.cache.length, static_cast<int64_t>(s.ids.size()))) {
      s.chain = pool.publish(s.chain, table[static_cast<size_t>(s.published)], s.ids.data() + s.published * bs);
      ++s.published;
    }
  };
  // Claims the cache for `w` if the blocks it needs are free: the blocks of its
  // prompt's longest published prefix are shared (all of it but its last token,
  // whose logits it needs: that block is copied before it is written), and the
  // rest is reserved.
  auto claim = [&](BatchSequence& w) -> bool {
    std::vector<int32_t> matched;
    if (reuses(w)) matched = pool.match(w.ids.data(), static_cast<int64_t>(w.ids.size()));
    const int64_t blocks_needed = (w.positions + bs - 1) / bs;
    for (bool copy_last : {true, false}) {
      if (!copy_last && !matched.empty() && static_cast<int64_t>(matched.size()) * bs >= w.prompt_len)
        matched.pop_back();  // no room for the copy: recompute the last shared block instead
      int64_t start = static_cast<int64_t>(matched.size()) * bs;
      const bool copies = start >= w.prompt_len;
      if (copies) start = w.prompt_len - 1;
      const int64_t fresh = blocks_needed - static_cast<int64_t>(matched.size()) + (copies ? 1 : 0);
      if (fresh > pool.available() - pool.unheld(matched)) continue;
      w.cache = nn::KvCache::paged_in(blocks_, w.positions);
      w.cache.prompt_length = w.prompt_len;
      w.cache.table.share(matched);
      w.cache.table.reserve(fresh);
      w.cache.length = start;
      w.prefilled = start;
      w.published = static_cast<int64_t>(matched.size());
      w.chain = matched.empty() ? nn::KvBlockPool::Link{} : pool.link(matched.back());
      usage_->prompt_tokens.fetch_add(w.prompt_len);
      usage_->hit_tokens.fetch_add(start);
      return true;
    }
    return false;
  };
  const int64_t chunk = settings_.prefill_chunk;
  while (true) {
    // Admission: new requests join while there is room; the first that does not
    // fit the cache waits (its deadline applies) and nothing passes it.
    while (running.size() < max_batch) {
      if (!waiting) {
        std::shared_ptr<cap::GenerationRequest> r = offered ? std::move(offered) : feed.next();
        offered.reset();
        if (!r) break;
        waiting = admit(std::move(r));
        if (!waiting) continue;
      }
      bool admitted = false;
      if (!guarded(*waiting->request, [&] { admitted = claim(*waiting); })) {
        waiting.reset();
        continue;
      }
      if (!admitted) break;
      running.push_back(std::move(waiting));
      publish();
    }
    if (waiting && waiting->stopped()) {
      complete(*waiting);
      waiting.reset();
      continue;
    }
    if (running.empty()) {
      if (!waiting) return;
      continue;  // (it fits once nothing runs: it was checked against the whole budget)
    }

    // Sequences whose request stopped leave; so do those a failure ended.
    auto leave = [&](size_t i, bool failed) {
      std::unique_ptr<BatchSequence> gone = std::move(running[i]);
      running.erase(running.begin() + static_cast<ptrdiff_t>(i));
      gone->cache = nn::KvCache();
      publish();  // its blocks are free before its reader hears of its end
      if (!failed) complete(*gone);
    };
    for (size_t i = running.size(); i-- > 0;)
      if (running[i]->stopped()) leave(i, false);

    bool stepped = false;
    // Prefill: whole chunks, at most `chunk` prompt tokens a step (at least one chunk).
    int64_t prefill_left = chunk;
    std::vector<BatchSequence*> ended, failed, sampled;
    for (auto& sp : running) {
      BatchSequence& s = *sp;
      if (s.decoding || prefill_left <= 0) continue;
      if (!s.request->can_send()) continue;
      const int64_t n = std::min(chunk, s.prompt_len - s.prefilled);
      if (n > prefill_left && prefill_left < chunk) break;
      prefill_left -= n;
      stepped = true;
      const bool ok = guarded(*s.request, [&] {
        // With the prefix cache, the bits of this prompt's rows in any chunking: a
        // prefix read from the cache (computed by another prompt's chunks) and
        // this rest agree with computing all of it here.
        // (On the option, not on reuses(s): the numbers must not depend on max_tokens.)
        std::optional<nn::kernels::RowInvariant> invariant;
        if (settings_.prefix_cache) invariant.emplace(/*prompt=*/true);
        const at::Tensor logits = model_->extend_embeddings(s.input.narrow(0, s.prefilled, n), s.cache);
        s.prefilled += n;
        publish_blocks(s);
        if (s.prefilled < s.prompt_len) return;
        s.input = at::Tensor();
        s.decoding = true;
        if (s.stopped() || s.state->advance(logits, s.request->sink)) ended.push_back(&s);
      });
      sampled.push_back(&s);  // one piece a step: it decodes from the next step on
      if (!ok) failed.push_back(&s);
    }

    // Decode: one row for each sequence past its prompt (not the ones that just
    // finished theirs: they sampled this step) whose stream has room.
    std::vector<BatchSequence*> rows;
    for (auto& sp : running) {
      BatchSequence& s = *sp;
      if (!s.decoding || s.stopped() || !s.request->can_send()) continue;
      if (std::find(sampled.begin(), sampled.end(), &s) != sampled.end()) continue;
      rows.push_back(&s);
    }
    if (!rows.empty()) {
      stepped = true;
      const nn::kernels::SerialTorchOps serial;  // the step's small torch ops off OpenMP's team
      const nn::kernels::RowInvariant invariant;  // past 16 sequences too, each row's bits are its own
      std::vector<int64_t> ids;
      std::vector<nn::KvCache*> caches;
      for (auto* s : rows) {
        ids.push_back(s->state->last_token());
        caches.push_back(&s->cache);
        if (s->all_tokens) s->ids.push_back(s->state->last_token());  // the token of its next position
      }
      at::Tensor logits;
      try {
        logits = model_->decode_batch(ids, caches);
      } catch (const Error& e) {
        for (auto* s : rows) s->request->fail(e), failed.push_back(s);
        rows.clear();
      } catch (const std::exception& e) {
        const Error error(ErrorCode::kModelError, std::string("generation failed: ") + e.what());
        for (auto* s : rows) s->request->fail(error), failed.push_back(s);
        rows.clear();
      }
      for (size_t i = 0; i < rows.size(); ++i) {
        BatchSequence& s = *rows[i];
        const bool ok = guarded(*s.request, [&] {
          publish_blocks(s);
          if (s.stopped() || s.state->advance(logits[static_cast<int64_t>(i)], s.request->sink)) ended.push_back(&s);
        });
        if (!ok) failed.push_back(&s);
      }
    }

    for (size_t i = running.size(); i-- > 0;) {
      BatchSequence* s = running[i].get();
      if (std::find(failed.begin(), failed.end(), s) != failed.end())
        leave(i, true);
      else if (std::find(ended.begin(), ended.end(), s) != ended.end())
        leave(i, false);
    }
    publish();
    // Every stream full: wait a little for the readers (deadlines still apply).
    if (!stepped) std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
}

std::map<std::string, double> TextGenerator::usage() const {
  const BatchUsage& u = *usage_;
  return {{"kv_cache_blocks_in_use", static_cast<double>(u.in_use.load())},
          {"kv_cache_blocks_reserved", static_cast<double>(u.reserved.load())},
          {"kv_cache_blocks_cached", static_cast<double>(u.cached.load())},
          {"kv_cache_blocks_free", static_cast<double>(u.free.load())},
          {"batch_sequences", static_cast<double>(u.sequences.load())},
          {"prefix_cache_prompt_tokens", static_cast<double>(u.prompt_tokens.load())},
          {"prefix_cache_hit_tokens", static_cast<double>(u.hit_tokens.load())}};
}

at::Tensor spliced_embeddings(const CausalLM& model, const SplicedPrompt& prompt) {
  if (prompt.inserts.empty()) return model.embed_tokens(prompt.ids);
  std::vector<at::Tensor> parts;
  size_t from = 0;
  auto tokens = [&](size_t to) {
    if (to > from)
      parts.push_back(model.embed_tokens(std::vector<int64_t>(prompt.ids.begin() + static_cast<ptrdiff_t>(from),
                                                              prompt.ids.begin() + static_cast<ptrdiff_t>(to))));
    from = to;
  };
  for (const auto& [at, rows] : prompt.inserts) {
    tokens(at);
    parts.push_back(rows);
  }
  tokens(prompt.ids.size());
  for (auto& p : parts) p = p.to(parts.front().device(), parts.front().scalar_type());
  return at::cat(parts);
}

}  // namespace mpool::models
