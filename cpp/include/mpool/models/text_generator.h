#pragma once
// text_to_text over any CausalLM: the glue every generating family shares.
// Sampling defaults from generation_config.json, the prompt's ids, the context
// check, chunked prefill (with embeddings spliced in, for vision-language models),
// and the sampling loop (generation.h).
#include <ATen/ATen.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "mpool/capabilities/interfaces.h"
#include "mpool/loading/config.h"
#include "mpool/models/causal_lm.h"
#include "mpool/models/generation.h"
#include "mpool/tokenizer/tokenizer.h"

namespace mpool::models {

/// Sampling defaults from generation_config.json, as transformers' generate and
/// vLLM apply them: a parameter the request does not set takes the model's value.
struct SamplingDefaults {
  bool present = false;  ///< the model has a generation_config.json
  std::optional<bool> do_sample;
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  std::optional<int64_t> top_k;

  static SamplingDefaults from(const std::optional<loading::GenerationConfig>& config);
  capabilities::GenerationParams apply(capabilities::GenerationParams params) const;
};

/// What a TextGenerator needs besides the model and tokenizer.
struct TextGeneratorSettings {
  std::vector<int64_t> eos_ids;  ///< generation_config.json's, else config.json's
  int64_t context = 0;           ///< positions per sequence (prompt and output)
  int64_t max_context = 0;       ///< the most the model supports (named in errors)
  SamplingDefaults defaults;
  /// Prompt tokens per forward pass of a prefill: bounds activation memory and
  /// lets a long prefill notice cancellation between chunks. In a continuous
  /// batch, also the prompt tokens one step runs besides its decode rows.
  int64_t prefill_chunk = 512;
  /// Sequences a continuous batch runs at once.
  int64_t max_batch = 16;
  /// Cache positions (prompt plus max new tokens) the sequences of a batch hold
  /// together; 0 = one full context.
  int64_t kv_cache_tokens = 0;
  /// Positions per block of the batch's paged cache.
  int64_t kv_block_size = 16;
  /// Sequences share the blocks of a common prompt prefix (where the model allows).
  bool prefix_cache = true;
  /// The dtype the KV cache stores keys and values in; unset: the model's.
  std::optional<at::ScalarType> kv_cache_dtype;
};

/// A prompt with embeddings inserted: `inserts[i].first` is the index in `ids`
/// before which `inserts[i].second` (m, hidden) goes (ids.size() = at the end).
struct SplicedPrompt {
  std::vector<int64_t> ids;
  std::vector<std::pair<size_t, at::Tensor>> inserts;
};

/// A vision request's prompt with its image features spliced in, and what they cost.
struct VisionPrompt {
  SplicedPrompt prompt;
  int64_t image_tokens = 0;
  double image_time_s = 0;
};
/// Turns a vision request into its prompt (a vision-language family's).
using VisionPromptFn = std::function<VisionPrompt(const capabilities::GenerationRequest& request)>;

/// The prompt's input embeddings (positions, hidden) in the model's dtype and
/// device: token embeddings with the inserts spliced in at their places.
at::Tensor spliced_embeddings(const CausalLM& model, const SplicedPrompt& prompt);

/// Generates text with a CausalLM; one per replica, used from its thread.
class TextGenerator {
 public:
  TextGenerator(std::shared_ptr<const CausalLM> model, std::unique_ptr<tokenizer::Tokenizer> tokenizer,
                TextGeneratorSettings settings);

  /// The TextToText call: a text prompt (tokenized with the request's
  /// add_special_tokens) or token ids.
  capabilities::Completion generate(const std::variant<std::string, std::vector<int64_t>>& prompt,
                                    const capabilities::GenerationParams& params, const capabilities::TextSink& sink,
                                    capabilities::RequestContext& ctx) const;
  /// The same for a prompt with embeddings spliced in (image features); the
  /// Completion's prompt_tokens counts the inserted positions too.
  capabilities::Completion generate(const SplicedPrompt& prompt, const capabilities::GenerationParams& params,
                                    const capabilities::TextSink& sink, capabilities::RequestContext& ctx) const;

  /// Runs a continuous batch (a family's capabilities::BatchGeneration): `first`
  /// and the requests it takes from `feed` while there is room (settings'
  /// max_batch sequences, kv_cache_tokens cache positions), until each has ended
  /// through its complete() or fail(). Each step runs at most prefill_chunk prompt
  /// tokens (whole chunks, one sequence's chunks in the same places as alone) and
  /// one decode row for every sequence past its prompt whose stream has room.
  /// Cancellation, timeouts and errors end only their own sequence. `vision`
  /// turns vision requests into prompts (unset: they fail).
  void generate_batch(std::shared_ptr<capabilities::GenerationRequest> first, capabilities::GenerationFeed& feed,
                      const VisionPromptFn& vision = {}) const;

  const tokenizer::Tokenizer& tokenizer() const noexcept { return *tokenizer_; }
  const TextGeneratorSettings& settings() const noexcept { return settings_; }
  /// What its continuous batch holds now (safe from any thread), a family's
  /// Instance::usage(): blocks of the paged cache "kv_cache_blocks_in_use" (held
  /// by sequences), "kv_cache_blocks_reserved" (promised to their later
  /// positions), "kv_cache_blocks_cached" (prefix blocks no sequence holds,
  /// reused or evicted) and "kv_cache_blocks_free" (what admission may still
  /// give: free or cached); "batch_sequences"; and since the replica started,
  /// "prefix_cache_prompt_tokens" admitted and "prefix_cache_hit_tokens" of them
  /// read from shared blocks instead of computed.
  std::map<std::string, double> usage() const;

 private:
  // A request's effective parameters and generation setup, checked against the context.
  struct Prepared {
    capabilities::GenerationParams params;
    GenerationSetup setup;
    int64_t prompt_len = 0;
  };
  Prepared prepare(const SplicedPrompt& prompt, const capabilities::GenerationParams& requested) const;

  std::vector<int64_t> prompt_ids(const std::variant<std::string, std::vector<int64_t>>& prompt,
                                  const capabilities::GenerationParams& params) const;

  std::shared_ptr<const CausalLM> model_;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer_;
  TextGeneratorSettings settings_;
  struct BatchUsage {
    std::atomic<int64_t> in_use{0}, reserved{0}, cached{0}, free{0}, sequences{0};
    std::atomic<int64_t> prompt_tokens{0}, hit_tokens{0};
  };
  void publish_usage(int64_t sequences) const;
  std::shared_ptr<nn::KvBlockPool> blocks_;  // the batch's paged cache
  std::shared_ptr<BatchUsage> usage_ = std::make_shared<BatchUsage>();
};

}  // namespace mpool::models
