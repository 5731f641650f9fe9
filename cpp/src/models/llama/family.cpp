// The Llama-style decoder family as a pool model: recognizes llama, mistral,
// qwen2, qwen3 and phi3 directories and builds specs whose replicas generate text
// (text_to_text) and embed by last-token pooling (text_embedding).
#include <algorithm>
#include <filesystem>

#include "mpool/core/error.h"
#include "mpool/loading/tensors.h"
#include "mpool/models/families.h"
#include "mpool/models/generation.h"
#include "mpool/models/llama/llama.h"
#include "mpool/models/sentence_embedder.h"

namespace mpool::models::llama {
namespace {

namespace fs = std::filesystem;
namespace cap = capabilities;

// Prompt tokens per forward pass of a prefill: bounds activation memory and lets
// a long prefill notice cancellation between chunks.
constexpr int64_t kPrefillChunk = 512;

class DecoderBackbone final : public Backbone {
 public:
  explicit DecoderBackbone(std::shared_ptr<const LlamaDecoder> decoder) : decoder_(std::move(decoder)) {}
  at::Tensor forward(const at::Tensor& ids, const at::Tensor&, const at::Tensor& mask) const override {
    return decoder_->hidden_states(ids, mask);
  }
  at::Device device() const override { return decoder_->device(); }

 private:
  std::shared_ptr<const LlamaDecoder> decoder_;
};

// Sampling defaults from generation_config.json, as transformers' generate and
// vLLM apply them: a parameter the request does not set takes the model's value.
struct SamplingDefaults {
  bool present = false;  // the model has a generation_config.json
  std::optional<bool> do_sample;
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  std::optional<int64_t> top_k;

  static SamplingDefaults from(const std::optional<loading::GenerationConfig>& g) {
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

  cap::GenerationParams apply(cap::GenerationParams p) const {
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
};

class LlamaModel final : public core::Instance, public cap::TextToText, public cap::TextEmbedding {
 public:
  LlamaModel(std::shared_ptr<const LlamaDecoder> decoder, std::unique_ptr<tokenizer::Tokenizer> tokenizer,
             std::unique_ptr<SentenceEmbedder> embedder, std::vector<int64_t> eos_ids, int64_t context_length,
             int64_t max_context, SamplingDefaults defaults)
      : decoder_(std::move(decoder)),
        tokenizer_(std::move(tokenizer)),
        embedder_(std::move(embedder)),
        eos_ids_(std::move(eos_ids)),
        context_(context_length),
        max_context_(max_context),
        defaults_(defaults) {
    tokenizer_->set_truncation(std::nullopt);
    tokenizer_->set_padding(std::nullopt);
  }

  cap::Completion generate(const std::variant<std::string, std::vector<int64_t>>& prompt,
                           const cap::GenerationParams& requested, const cap::TextSink& sink,
                           cap::RequestContext& ctx) override {
    validate_generation_params(requested);
    const cap::GenerationParams params = defaults_.apply(requested);
    validate_generation_params(params);
    GenerationSetup setup;
    setup.prompt = prompt_ids(prompt, params);
    const auto prompt_len = static_cast<int64_t>(setup.prompt.size());
    check(prompt_len < context_, ErrorCode::kInvalidInput,
          "the prompt has " + std::to_string(prompt_len) + " tokens but the context holds " +
              std::to_string(context_) + " (prompt and output together)" +
              (context_ < max_context_
                   ? "; register the model with a larger context_length (up to " + std::to_string(max_context_) + ")"
                   : std::string()));
    setup.max_new_tokens = std::min(params.max_tokens, context_ - prompt_len);
    setup.bounded_by_context = setup.max_new_tokens < params.max_tokens;
    setup.eos_ids = eos_ids_;
    // The cache holds exactly what this request can reach.
    KvCache cache = decoder_->new_cache(prompt_len + setup.max_new_tokens);
    StepFn step = [&](const std::vector<int64_t>& ids) {
      at::Tensor logits;
      for (size_t at = 0; at < ids.size(); at += kPrefillChunk) {
        ctx.throw_if_stopped();
        size_t end = std::min(ids.size(), at + static_cast<size_t>(kPrefillChunk));
        logits = decoder_->extend(std::vector<int64_t>(ids.begin() + static_cast<std::ptrdiff_t>(at),
                                                       ids.begin() + static_cast<std::ptrdiff_t>(end)),
                                  cache);
      }
      return logits;
    };
    return run_generation(step, *tokenizer_, params, setup, sink, ctx);
  }

  at::Tensor embed(const std::vector<std::string>& texts, const cap::EmbedOptions& options,
                   cap::RequestContext& ctx) override {
    return embedder_->embed(texts, options, ctx);
  }
  int64_t dimension() const override { return embedder_->dimension(); }

 private:
  std::vector<int64_t> prompt_ids(const std::variant<std::string, std::vector<int64_t>>& prompt,
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
      const int64_t vocab = decoder_->config().vocab_size;
      for (size_t i = 0; i < ids.size(); ++i)
        check(ids[i] >= 0 && ids[i] < vocab, ErrorCode::kInvalidInput,
              "prompt token #" + std::to_string(i) + " is " + std::to_string(ids[i]) +
                  ", outside the vocabulary [0, " + std::to_string(vocab) + ")");
    }
    return ids;
  }

  std::shared_ptr<const LlamaDecoder> decoder_;
  std::unique_ptr<tokenizer::Tokenizer> tokenizer_;
  std::unique_ptr<SentenceEmbedder> embedder_;
  std::vector<int64_t> eos_ids_;
  int64_t context_;
  int64_t max_context_;
  SamplingDefaults defaults_;
};

at::ScalarType pick_dtype(const NativeOptions& options) {
  const bool cuda = !options.devices.empty() && options.devices.front().rfind("cuda", 0) == 0;
  std::string name = options.dtype.value_or(cuda ? "bfloat16" : "float32");
  auto dtype = loading::parse_scalar_type(name);
  check(dtype && (*dtype == at::kFloat || *dtype == at::kBFloat16 || *dtype == at::kHalf), ErrorCode::kInvalidInput,
        "dtype '" + name + "' is not supported for decoder models (float32, bfloat16, float16)");
  return *dtype;
}

NativeModel build(const loading::ModelLayout& layout, const loading::ModelConfig& model_config,
                  const NativeOptions& options) {
  LlamaConfig config = LlamaConfig::from(model_config);
  const fs::path tokenizer_file = layout.tokenizer_dir / "tokenizer.json";
  check(fs::is_regular_file(tokenizer_file), ErrorCode::kInvalidInput,
        tokenizer_file.string() + " is missing: mpool needs the tokenizer.json form of the tokenizer");
  const at::ScalarType dtype = pick_dtype(options);
  // Dynamic NTK scaling exists to run past the trained length, up to factor times it.
  const int64_t max_context =
      config.rope.type == "dynamic"
          ? static_cast<int64_t>(static_cast<double>(config.max_position_embeddings) * config.rope.factor)
          : config.max_position_embeddings;
  int64_t context = options.context_length.value_or(max_context);
  check(context > 1 && context <= max_context, ErrorCode::kInvalidInput,
        "context_length " + std::to_string(context) + " must be in [2, " + std::to_string(max_context) + "]" +
            (config.rope.type == "dynamic" ? " (max_position_embeddings times the dynamic rope factor)"
                                           : " (max_position_embeddings)"));

  // End of generation: generation_config.json's eos, else config.json's.
  std::vector<int64_t> eos = config.eos_token_id;
  const auto gen = loading::load_generation_config(layout.model_dir);
  if (gen && !gen->eos_token_id.empty()) eos = gen->eos_token_id;
  const SamplingDefaults defaults = SamplingDefaults::from(gen);

  EmbedderSettings settings =
      embedder_settings(layout, config.hidden_size, static_cast<size_t>(context), {PoolingMode::kLastToken});

  // Memory: weights at the target dtype, the KV cache of one full context, and
  // the activations of one prefill chunk (or one embedding forward pass).
  auto checkpoint = loading::Checkpoint::open(layout.model_dir);
  const double elem = static_cast<double>(at::elementSize(dtype));
  double weight_bytes = 0;
  const WeightLayout weights = WeightLayout::detect(checkpoint, config);
  for (const auto& name : LlamaDecoder::weight_names(config, weights))
    if (auto ref = checkpoint.find(name)) weight_bytes += static_cast<double>(ref->info->numel()) * elem;
  const double kv_bytes = 2.0 * static_cast<double>(config.num_layers) * static_cast<double>(config.num_kv_heads) *
                          static_cast<double>(config.head_dim) *
                          static_cast<double>(context) * elem;
  const double tokens = static_cast<double>(std::max<size_t>(kPrefillChunk, settings.tokens_per_forward));
  const double act_bytes =
      tokens * static_cast<double>(2 * config.intermediate_size + 4 * config.hidden_size) * 4.0 +
      static_cast<double>(kPrefillChunk) * static_cast<double>(context) * static_cast<double>(config.num_heads) * 4.0 +
      static_cast<double>(config.vocab_size) * 4.0 * 4.0;
  const double mb = 1024.0 * 1024.0;

  NativeModel model;
  model.weight_mb = weight_bytes / mb;
  model.warnings = checkpoint.warnings();
  core::ModelSpec& spec = model.spec;
  // A base model without an output head (an embedder's checkpoint) only embeds.
  if (weights.has_lm_head)
    spec.capabilities = {cap::TextToText::kName, cap::TextEmbedding::kName};
  else
    spec.capabilities = {cap::TextEmbedding::kName};
  spec.memory_mb = (weight_bytes + kv_bytes + act_bytes) / mb + 64.0;
  spec.devices = options.devices;
  spec.batch_budget = settings.tokens_per_forward;
  const fs::path model_dir = layout.model_dir;
  spec.loader = [model_dir, tokenizer_file, config, settings, dtype, eos, context, max_context,
                 defaults](const std::string& device) {
    auto ckpt = loading::Checkpoint::open(model_dir);
    auto decoder = std::make_shared<const LlamaDecoder>(config, ckpt, dtype, at::Device(device));
    auto embedder = std::make_unique<SentenceEmbedder>(std::make_unique<DecoderBackbone>(decoder),
                                                       tokenizer::Tokenizer::from_file(tokenizer_file.string()),
                                                       settings);
    return std::make_shared<LlamaModel>(decoder, tokenizer::Tokenizer::from_file(tokenizer_file.string()),
                                        std::move(embedder), eos, context, max_context, defaults);
  };
  return model;
}

}  // namespace

Family family() {
  Family f;
  f.name = "llama";
  f.capabilities = {cap::TextToText::kName, cap::TextEmbedding::kName};
  f.supports = [](const loading::ModelConfig& c, const loading::ModelLayout& layout) {
    if (std::find(kModelTypes.begin(), kModelTypes.end(), c.model_type) == kModelTypes.end())
      return loading::FamilySupport::no("model_type '" + c.model_type +
                                        "' is not llama, mistral, qwen2, qwen3 or phi3");
    if (layout.weights.format == loading::WeightsFormat::kNone)
      return loading::FamilySupport::no("no weights found in " + layout.model_dir.string());
    return loading::FamilySupport::yes();
  };
  f.build = build;
  return f;
}

}  // namespace mpool::models::llama
