#pragma once
// Autoregressive text generation written once for every family that produces
// text: sampling (penalties, temperature, top-k/top-p/min-p, seeds), stop ids and
// stop strings, incremental detokenization into stream pieces, and the step loop
// with cancellation. A family supplies only "logits for these new tokens".
#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "mpool/capabilities/generation_params.h"  // validate_generation_params
#include "mpool/capabilities/interfaces.h"
#include "mpool/tokenizer/tokenizer.h"

namespace mpool::models {

/// Picks the next token from logits, as transformers' logits processors do:
/// repetition penalty (prompt and output), presence/frequency penalties (output),
/// then greedy, or temperature, top-k, top-p and min-p followed by a draw from a
/// generator seeded per request.
class Sampler {
 public:
  Sampler(const capabilities::GenerationParams& params, const std::vector<int64_t>& prompt);

  /// The next token for float32 CPU logits of shape (vocab); records it as output.
  int64_t next(at::Tensor logits);
  /// The model's log-probability of `token` under `logits` (before any processing)
  /// and the `top` most likely tokens.
  static capabilities::TokenLogprob logprob(const at::Tensor& logits, int64_t token, int64_t top);

 private:
  capabilities::GenerationParams params_;
  std::vector<int64_t> seen_;                     // distinct prompt and output ids (repetition penalty)
  std::unordered_map<int64_t, int64_t> counts_;  // output id -> occurrences (presence/frequency)
  at::Generator generator_;
};

/// Turns generated ids into stream pieces: decodes incrementally (never half a
/// UTF-8 character), holds back text that may begin a stop string, and cuts the
/// text before the first stop string that completes. Ids travel with the first
/// piece whose text they completed.
class TextAssembler {
 public:
  TextAssembler(const tokenizer::Tokenizer& tokenizer, std::vector<std::string> stop_strings);

  /// Adds one token; returns true when a stop string completed (generation ends).
  bool push(int64_t id, std::optional<capabilities::TokenLogprob> logprob);
  /// The piece that can be sent now, if any.
  std::optional<capabilities::TextPiece> ready();
  /// Everything still held at the end of generation; `stopped` (if given) is set
  /// when the end of an unfinished character completed a stop string, cut there.
  std::optional<capabilities::TextPiece> flush(bool* stopped = nullptr);

 private:
  tokenizer::DecodeStream decoder_;
  std::vector<std::string> stops_;
  std::string held_;       // decoded text not yet sent
  size_t releasable_ = 0;  // bytes of held_ that cannot start a stop string
  bool mid_character_ = false;  // the last id left a UTF-8 character unfinished
  std::vector<int64_t> ids_;
  std::vector<capabilities::TokenLogprob> logprobs_;
};

/// Computes float32 logits (vocab) of the last position after appending `ids` to
/// the sequence the function keeps (its KV cache).
using StepFn = std::function<at::Tensor(const std::vector<int64_t>& ids)>;

/// What the generation loop needs besides the parameters.
struct GenerationSetup {
  std::vector<int64_t> prompt;    ///< token ids, non-empty
  int64_t max_new_tokens = 0;     ///< already bounded by the context left
  bool bounded_by_context = false;  ///< max_new_tokens was cut to fit the context
  std::vector<int64_t> eos_ids;   ///< the model's end tokens (ignored with ignore_eos)
};

/// One sequence's generation after its prompt, a step at a time: samples the
/// next token from the logits of its last position, stops at a stop token, a
/// stop string or max tokens, and sends the text that is ready. The loop below
/// and a continuous batch (TextGenerator::generate_batch) both step it, so a
/// sequence behaves the same alone or in a batch.
class SequenceState {
 public:
  SequenceState(const tokenizer::Tokenizer& tokenizer, const capabilities::GenerationParams& params,
                const GenerationSetup& setup);

  /// Takes float32 CPU logits (vocab) after the last input; samples a token and
  /// sends what is ready through `sink`. True when the sequence ended (its
  /// completion() says how; a closed sink also ends it).
  bool advance(const at::Tensor& logits, const capabilities::TextSink& sink);
  /// The token sampled last: the next input while it has not ended.
  int64_t last_token() const noexcept { return last_; }
  /// Its outcome so far ("length" until a stop; prompt_tokens from the setup).
  const capabilities::Completion& completion() const noexcept { return done_; }

 private:
  capabilities::GenerationParams params_;
  int64_t max_new_tokens_;
  std::unordered_set<int64_t> stop_ids_;
  Sampler sampler_;
  TextAssembler text_;
  capabilities::Completion done_;
  int64_t generated_ = 0;
  int64_t last_ = -1;
  bool open_ = true;
};

/// Prefills the prompt, then samples token by token until a stop token, a stop
/// string, max tokens, a closed sink or a stopped request; checks `ctx` every step.
capabilities::Completion run_generation(const StepFn& step, const tokenizer::Tokenizer& tokenizer,
                                        const capabilities::GenerationParams& params, const GenerationSetup& setup,
                                        const capabilities::TextSink& sink, capabilities::RequestContext& ctx);

}  // namespace mpool::models
