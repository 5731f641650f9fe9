#include "mpool/models/generation.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <unordered_set>

#include "mpool/base/error.h"

namespace mpool::models {

using capabilities::GenerationParams;
using capabilities::TextPiece;
using capabilities::TokenLogprob;

namespace {

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();
// At or above this temperature logits / T stays within float32 for any logit
// below 3.4e38 x T (3.4e18, beyond any model's); below it the sampler divides in
// float64 after shifting the top logit to 0 (in float32 the quotient overflows
// to inf, whose softmax is NaN, and a T under 1.4e-45 rounds to 0).
constexpr double kTinyTemperature = 1e-20;

}  // namespace

// ---------------------------------------------------------------------------
// Sampler

Sampler::Sampler(const GenerationParams& params, const std::vector<int64_t>& prompt) : params_(params) {
  if (params_.repetition_penalty != 1.0) {
    std::unordered_set<int64_t> distinct(prompt.begin(), prompt.end());
    seen_.assign(distinct.begin(), distinct.end());
  }
  uint64_t seed = params_.seed ? *params_.seed : (static_cast<uint64_t>(std::random_device{}()) << 32) ^
                                                     static_cast<uint64_t>(std::random_device{}());
  generator_ = at::make_generator<at::CPUGeneratorImpl>(seed);
}

int64_t Sampler::next(at::Tensor logits) {
  // Penalties: transformers' RepetitionPenaltyLogitsProcessor over prompt and
  // output, then OpenAI-style presence/frequency penalties over the output.
  if (params_.repetition_penalty != 1.0 && !seen_.empty()) {
    at::Tensor idx = at::tensor(seen_, at::kLong);
    at::Tensor score = logits.index_select(0, idx);
    score = at::where(score < 0, score * params_.repetition_penalty, score / params_.repetition_penalty);
    logits = logits.index_copy(0, idx, score);
  }
  if ((params_.presence_penalty != 0 || params_.frequency_penalty != 0) && !counts_.empty()) {
    std::vector<int64_t> ids;
    std::vector<float> penalty;
    for (auto [id, n] : counts_) {
      ids.push_back(id);
      penalty.push_back(static_cast<float>(params_.presence_penalty + params_.frequency_penalty * n));
    }
    logits = logits.index_add(0, at::tensor(ids, at::kLong), -at::tensor(penalty, at::kFloat));
  }

  int64_t token;
  if (params_.temperature == 0) {
    token = logits.argmax().item<int64_t>();
  } else {
    if (params_.temperature < kTinyTemperature) {
      // logits / T would overflow float32 (or T itself round to 0 in it): shift
      // the top logit to 0 first and divide in float64, where the others go to
      // large negatives or -inf and the distribution keeps its top tokens.
      const at::Tensor wide = logits.to(at::kDouble);
      logits = (wide - wide.max()) / params_.temperature;
    } else if (params_.temperature != 1.0) {
      logits = logits / params_.temperature;
    }
    const int64_t vocab = logits.size(0);
    if (params_.top_k && *params_.top_k > 0 && *params_.top_k < vocab) {
      at::Tensor kth = std::get<0>(logits.topk(*params_.top_k)).select(0, *params_.top_k - 1);
      logits = logits.masked_fill(logits < kth, kMinusInf);
    }
    if (params_.top_p && *params_.top_p < 1.0) {
      // Drop the least likely tokens whose total mass stays within 1 - top_p;
      // the most likely token always stays.
      auto [sorted, order] = logits.sort(/*dim=*/0, /*descending=*/false);
      at::Tensor cumulative = sorted.softmax(0).cumsum(0);
      at::Tensor drop_sorted = cumulative <= (1.0 - *params_.top_p);
      drop_sorted.index_put_({vocab - 1}, false);
      at::Tensor drop = at::zeros_like(drop_sorted).scatter(0, order, drop_sorted);
      logits = logits.masked_fill(drop, kMinusInf);
    }
    if (params_.min_p && *params_.min_p > 0) {
      at::Tensor probs = logits.softmax(0);
      at::Tensor drop = probs < probs.max() * *params_.min_p;
      logits = logits.masked_fill(drop, kMinusInf);
    }
    at::Tensor probs = logits.softmax(0);
    token = at::multinomial(probs, 1, /*replacement=*/false, generator_).item<int64_t>();
  }
  if (params_.repetition_penalty != 1.0 && std::find(seen_.begin(), seen_.end(), token) == seen_.end())
    seen_.push_back(token);
  ++counts_[token];
  return token;
}

TokenLogprob Sampler::logprob(const at::Tensor& logits, int64_t token, int64_t top) {
  at::Tensor lp = logits.log_softmax(0);
  TokenLogprob out;
  out.token_id = token;
  out.logprob = lp[token].item<double>();
  if (top > 0) {
    auto [values, ids] = lp.topk(std::min<int64_t>(top, lp.size(0)));
    auto v = values.accessor<float, 1>();
    auto i = ids.accessor<int64_t, 1>();
    for (int64_t k = 0; k < values.size(0); ++k) out.top.emplace_back(i[k], v[k]);
  }
  return out;
}

// ---------------------------------------------------------------------------
// TextAssembler

TextAssembler::TextAssembler(const tokenizer::Tokenizer& tokenizer, std::vector<std::string> stop_strings)
    : decoder_(tokenizer, /*skip_special_tokens=*/true), stops_(std::move(stop_strings)) {}

bool TextAssembler::push(int64_t id, std::optional<TokenLogprob> logprob) {
  ids_.push_back(id);
  if (logprob) logprobs_.push_back(std::move(*logprob));
  std::optional<std::string> text = id >= 0 ? decoder_.step(static_cast<uint32_t>(id)) : std::nullopt;
  mid_character_ = !text.has_value();
  if (mid_character_) return false;  // the id waits for the rest of its character
  held_ += *text;
  size_t cut = std::string::npos;
  for (const auto& s : stops_) cut = std::min(cut, held_.find(s));
  if (cut != std::string::npos) {
    held_.resize(cut);
    releasable_ = cut;
    return true;
  }
  // Hold back the longest tail that could still grow into a stop string.
  size_t hold = 0;
  for (const auto& s : stops_) {
    for (size_t k = std::min(s.size() - 1, held_.size()); k > hold; --k) {
      if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  releasable_ = held_.size() - hold;
  return false;
}

std::optional<TextPiece> TextAssembler::ready() {
  if (releasable_ == 0) {
    // Ids whose text is complete but empty (a skipped special token) go out on
    // their own; ids waiting for held text or an unfinished character wait.
    if (!held_.empty() || ids_.empty() || mid_character_) return std::nullopt;
  }
  TextPiece piece;
  piece.text = held_.substr(0, releasable_);
  held_.erase(0, releasable_);
  releasable_ = 0;
  piece.token_ids = std::move(ids_);
  piece.logprobs = std::move(logprobs_);
  ids_.clear();
  logprobs_.clear();
  return piece;
}

std::optional<TextPiece> TextAssembler::flush(bool* stopped) {
  if (stopped) *stopped = false;
  if (mid_character_) {
    // The generation ended inside a character: its bytes go out as U+FFFD, as
    // decoding all the ids writes them (and as transformers' streamer ends).
    mid_character_ = false;
    held_ += decoder_.flush();
    size_t cut = std::string::npos;
    for (const auto& s : stops_) cut = std::min(cut, held_.find(s));
    if (cut != std::string::npos) {
      held_.resize(cut);
      if (stopped) *stopped = true;
    }
  }
  releasable_ = held_.size();
  if (held_.empty() && ids_.empty()) return std::nullopt;
  return ready();
}

// ---------------------------------------------------------------------------
// The loop

SequenceState::SequenceState(const tokenizer::Tokenizer& tokenizer, const GenerationParams& params,
                             const GenerationSetup& setup)
    : params_(params),
      max_new_tokens_(setup.max_new_tokens),
      stop_ids_(params.stop_token_ids.begin(), params.stop_token_ids.end()),
      sampler_(params, setup.prompt),
      text_(tokenizer, params.stop) {
  if (!params.ignore_eos) stop_ids_.insert(setup.eos_ids.begin(), setup.eos_ids.end());
  done_.prompt_tokens = static_cast<int64_t>(setup.prompt.size());
  done_.completion_tokens = 0;
  done_.finish_reason = "length";
}

bool SequenceState::advance(const at::Tensor& logits, const capabilities::TextSink& sink) {
  auto send = [&](std::optional<TextPiece> piece) {
    if (piece && open_) open_ = sink(std::move(*piece));
    return open_;
  };
  std::optional<TokenLogprob> lp;
  int64_t token;
  if (params_.logprobs) {
    token = sampler_.next(logits);
    lp = Sampler::logprob(logits, token, *params_.logprobs);
  } else {
    token = sampler_.next(logits);
  }
  ++generated_;
  done_.completion_tokens = generated_;
  last_ = token;
  if (stop_ids_.count(token) || text_.push(token, std::move(lp))) {
    done_.finish_reason = "stop";
    send(text_.flush());
    return true;
  }
  if (generated_ >= max_new_tokens_) {
    // The last token and any text held back for a stop string that never came,
    // in one piece: as a piece of its own, the tail would count past max_tokens.
    bool stopped = false;
    std::optional<TextPiece> last = text_.flush(&stopped);
    done_.finish_reason = stopped ? "stop" : "length";
    send(std::move(last));
    return true;
  }
  if (!send(text_.ready())) return true;  // consumer gone, or max_tokens reached by the stream's count
  return false;
}

capabilities::Completion run_generation(const StepFn& step, const tokenizer::Tokenizer& tokenizer,
                                        const GenerationParams& params, const GenerationSetup& setup,
                                        const capabilities::TextSink& sink, capabilities::RequestContext& ctx) {
  SequenceState sequence(tokenizer, params, setup);
  if (ctx.should_stop()) return sequence.completion();
  at::Tensor logits = step(setup.prompt);
  while (true) {
    if (ctx.should_stop()) return sequence.completion();  // the request reports Timeout or Cancelled
    if (sequence.advance(logits, sink)) return sequence.completion();
    logits = step({sequence.last_token()});
  }
}

}  // namespace mpool::models
