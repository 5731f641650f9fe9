#include "mpool/models/text_generator.h"

#include <algorithm>

#include "mpool/base/error.h"
#include "mpool/models/generation.h"

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

cap::Completion TextGenerator::generate(const SplicedPrompt& prompt, const cap::GenerationParams& requested,
                                        const cap::TextSink& sink, cap::RequestContext& ctx) const {
  validate_generation_params(requested);
  const cap::GenerationParams params = settings_.defaults.apply(requested);
  validate_generation_params(params);
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
  GenerationSetup setup;
  setup.prompt = prompt.ids;
  setup.max_new_tokens = std::min(params.max_tokens, context - prompt_len);
  setup.bounded_by_context = setup.max_new_tokens < params.max_tokens;
  setup.eos_ids = settings_.eos_ids;
  // The cache holds exactly what this request can reach.
  nn::KvCache cache = model_->new_cache(prompt_len + setup.max_new_tokens);
  const size_t chunk = static_cast<size_t>(settings_.prefill_chunk);
  bool prefilled = false;
  StepFn step = [&](const std::vector<int64_t>& ids) {
    if (prefilled) return model_->extend(ids, cache);
    prefilled = true;
    // The prompt: token embeddings with the inserts spliced in, in chunks.
    const at::Tensor input = spliced_embeddings(*model_, prompt);
    at::Tensor logits;
    for (int64_t at = 0; at < input.size(0); at += static_cast<int64_t>(chunk)) {
      ctx.throw_if_stopped();
      logits = model_->extend_embeddings(input.narrow(0, at, std::min<int64_t>(chunk, input.size(0) - at)), cache);
    }
    return logits;
  };
  cap::Completion done = run_generation(step, *tokenizer_, params, setup, sink, ctx);
  done.prompt_tokens = prompt_len;
  return done;
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
