// The decoder family as a pool model: recognizes llama, mistral, qwen2, qwen3,
// phi3, qwen2_moe, qwen3_moe, deepseek_v3 and kimi_k2 directories and builds specs whose replicas generate text (text_to_text,
// through the kit's TextGenerator) and embed by last-token pooling
// (text_embedding, through the kit's SentenceEmbedder).
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <filesystem>

#include "models/decoder/decoder.h"
#include "mpool/base/error.h"
#include "mpool/loading/safetensors.h"
#include "mpool/loading/tensors.h"
#include "mpool/models/families.h"
#include "mpool/models/kit.h"
#include "mpool/models/sentence_embedder.h"
#include "mpool/models/text_generator.h"
#include "mpool/nn/kernels.h"
#include "mpool/nn/moe.h"
#include "mpool/nn/probe.h"

namespace mpool::models::decoder {
namespace {

namespace fs = std::filesystem;
namespace cap = capabilities;

class DecoderBackbone final : public Backbone {
 public:
  explicit DecoderBackbone(std::shared_ptr<const Decoder> decoder) : decoder_(std::move(decoder)) {}
  at::Tensor forward(const at::Tensor& ids, const at::Tensor&, const at::Tensor& mask) const override {
    return decoder_->hidden_states(ids, mask);
  }
  at::Device device() const override { return decoder_->device(); }

 private:
  std::shared_ptr<const Decoder> decoder_;
};

class DecoderModel final : public core::Instance,
                           public cap::TextToText,
                           public cap::BatchGeneration,
                           public cap::TextEmbedding {
 public:
  DecoderModel(TextGenerator generator, std::unique_ptr<SentenceEmbedder> embedder)
      : generator_(std::move(generator)), embedder_(std::move(embedder)) {}

  cap::Completion generate(const std::variant<std::string, std::vector<int64_t>>& prompt,
                           const cap::GenerationParams& params, const cap::TextSink& sink,
                           cap::RequestContext& ctx) override {
    return generator_.generate(prompt, params, sink, ctx);
  }
  std::map<std::string, double> usage() const override { return generator_.usage(); }
  void generate_batch(std::shared_ptr<cap::GenerationRequest> first, cap::GenerationFeed& feed) override {
    generator_.generate_batch(std::move(first), feed);
  }
  at::Tensor embed(const std::vector<std::string>& texts, const cap::EmbedOptions& options,
                   cap::RequestContext& ctx) override {
    return embedder_->embed(texts, options, ctx);
  }
  int64_t dimension() const override { return embedder_->dimension(); }
  bool normalizes() const override { return embedder_->normalizes(); }
  std::vector<int64_t> supported_dimensions() const override { return embedder_->supported_dimensions(); }

 private:
  TextGenerator generator_;
  std::unique_ptr<SentenceEmbedder> embedder_;
};

}  // namespace

OptionSpec max_batch_option() {
  return {"max_batch", OptionSpec::Kind::kInt,
          "sequences one replica decodes together in its continuous batch (default 16)"};
}

OptionSpec kv_cache_tokens_option() {
  return {"kv_cache_tokens", OptionSpec::Kind::kInt,
          "cache positions (prompt plus max new tokens) a replica's sequences hold together; reserved with the "
          "replica (default: one context_length)"};
}

OptionSpec kv_block_size_option() {
  return {"kv_block_size", OptionSpec::Kind::kInt,
          "positions per block of a replica's paged KV cache (default 16, in [1, 1024])"};
}

OptionSpec kv_cache_dtype_option() {
  return {"kv_cache_dtype", OptionSpec::Kind::kString,
          "the dtype the KV cache stores keys and values in: auto (the model's, the default), float32 or bfloat16 "
          "(half the cache's memory and bytes read a decode step of a float32 or int8 model; attention then sees "
          "keys and values rounded to bfloat16)"};
}

OptionSpec prefix_cache_option() {
  return {"prefix_cache", OptionSpec::Kind::kBool,
          "sequences whose prompts start alike share the cache blocks of that prefix, computed once (default true)"};
}

TextGeneratorSettings generator_settings(const DecoderConfig& config, const fs::path& model_dir,
                                         const NativeOptions& options) {
  // Dynamic NTK scaling exists to run past the trained length, up to factor times it.
  const int64_t max_context =
      config.rope.type == "dynamic"
          ? static_cast<int64_t>(static_cast<double>(config.max_position_embeddings) * config.rope.factor)
          : config.max_position_embeddings;
  const int64_t context = options.context_length.value_or(max_context);
  check(context > 1 && context <= max_context, ErrorCode::kInvalidInput,
        "context_length " + std::to_string(context) + " must be in [2, " + std::to_string(max_context) + "]" +
            (config.rope.type == "dynamic" ? " (max_position_embeddings times the dynamic rope factor)"
                                           : " (max_position_embeddings)"));
  const int64_t prefill_chunk = options.options.get_int("prefill_chunk", kDefaultPrefillChunk);
  check(prefill_chunk >= 1 && prefill_chunk <= 1 << 20, ErrorCode::kInvalidInput,
        "option prefill_chunk must be in [1, 1048576], got " + std::to_string(prefill_chunk));

  // End of generation: generation_config.json's eos, else config.json's.
  TextGeneratorSettings gen;
  gen.eos_ids = config.eos_token_id;
  const auto generation_config = loading::load_generation_config(model_dir);
  if (generation_config && !generation_config->eos_token_id.empty()) gen.eos_ids = generation_config->eos_token_id;
  gen.defaults = SamplingDefaults::from(generation_config);
  gen.context = context;
  gen.max_context = max_context;
  gen.prefill_chunk = prefill_chunk;
  gen.max_batch = options.options.get_int("max_batch", kDefaultMaxBatch);
  check(gen.max_batch >= 1 && gen.max_batch <= 1024, ErrorCode::kInvalidInput,
        "option max_batch must be in [1, 1024], got " + std::to_string(gen.max_batch));
  gen.kv_cache_tokens = options.options.get_int("kv_cache_tokens", context);
  check(gen.kv_cache_tokens >= 2 && gen.kv_cache_tokens <= (int64_t{1} << 30), ErrorCode::kInvalidInput,
        "option kv_cache_tokens must be in [2, 1073741824], got " + std::to_string(gen.kv_cache_tokens));
  gen.kv_block_size = options.options.get_int("kv_block_size", gen.kv_block_size);
  check(gen.kv_block_size >= 1 && gen.kv_block_size <= 1024, ErrorCode::kInvalidInput,
        "option kv_block_size must be in [1, 1024], got " + std::to_string(gen.kv_block_size));
  gen.prefix_cache = options.options.get_bool("prefix_cache", gen.prefix_cache);
  const std::string kv_dtype = options.options.get_string("kv_cache_dtype", "auto");
  if (kv_dtype == "float32")
    gen.kv_cache_dtype = at::kFloat;
  else if (kv_dtype == "bfloat16")
    gen.kv_cache_dtype = at::kBFloat16;
  else
    check(kv_dtype == "auto", ErrorCode::kInvalidInput,
          "option kv_cache_dtype must be auto, float32 or bfloat16, got '" + kv_dtype + "'");
  return gen;
}

double generation_bytes(const DecoderConfig& config, const TextGeneratorSettings& gen, at::ScalarType dtype,
                        int64_t tokens_per_forward) {
  const size_t element = at::elementSize(gen.kv_cache_dtype.value_or(dtype));
  // The paged cache's blocks: kv_cache_tokens positions rounded up to whole blocks.
  const int64_t budget = gen.kv_cache_tokens > 0 ? gen.kv_cache_tokens : gen.context, bs = gen.kv_block_size;
  const int64_t kv_positions = (budget + bs - 1) / bs * bs;
  const double kv_bytes =
      (config.is_mla() ? nn::KvCache::latent_bytes_per_position(config.num_layers, config.mla.kv_lora_rank,
                                                                config.mla.qk_rope_head_dim, element)
                       : nn::KvCache::bytes_per_position(config.num_layers, config.num_kv_heads, config.head_dim,
                                                         element)) *
      static_cast<double>(kv_positions);
  const double chunk = static_cast<double>(gen.prefill_chunk);
  const double tokens = std::max(chunk, static_cast<double>(tokens_per_forward));
  // Per token: the widest feed-forward activation, the residual stream, and the
  // router's logits and probabilities in an MoE layer.
  const double act_bytes = tokens *
                               static_cast<double>(2 * config.feed_forward_width() + 4 * config.hidden_size +
                                                   2 * config.moe.num_experts) *
                               4.0 +
                           chunk * static_cast<double>(gen.context) * static_cast<double>(config.num_heads) * 4.0 +
                           static_cast<double>(config.vocab_size) * 4.0 * 4.0;
  return kv_bytes + act_bytes;
}

namespace {

NativeModel build(const loading::ModelDirectory& directory, const loading::ModelConfig& model_config,
                  const NativeOptions& options) {
  const DecoderConfig config = DecoderConfig::from(model_config);
  const kit::BuildInputs in = kit::build_inputs(directory, options, "decoder", /*allows_int8=*/true);
  const loading::ModelLayout& layout = in.layout;
  const fs::path tokenizer_file = in.tokenizer_file;
  const loading::TokenizerOptions tokenizer_options = in.tokenizer_options;
  const at::ScalarType dtype = in.dtype;
  const TextGeneratorSettings gen = generator_settings(config, layout.model_dir, options);
  const EmbedderSettings settings = embedder_settings(layout, config.hidden_size, static_cast<size_t>(gen.context),
                                                      {PoolingMode::kLastToken});

  // Memory: the weights it loads, the KV cache of one full context, and the
  // activations of one prefill chunk (or one embedding forward pass).
  NativeModel model;
  model.warnings = in.warnings;
  const loading::Checkpoint& checkpoint = in.checkpoint;
  // The head sits outside the base model: tied embeddings, or lm_head.weight.
  const bool has_head = config.tie_word_embeddings || checkpoint.find("lm_head.weight").has_value();
  const double weight_bytes = kit::measure_weights(
      checkpoint, dtype, [&](const nn::Weights& w) { Decoder(config, w); }, model.warnings, in.int8) +
      settings.dense_weight_bytes();

  model.weight_mb = weight_bytes / (1024.0 * 1024.0);
  core::ModelSpec& spec = model.spec;
  // A base model without an output head (an embedder's checkpoint) only embeds.
  if (has_head)
    spec.capabilities = {cap::TextToText::kName, cap::TextEmbedding::kName};
  else
    spec.capabilities = {cap::TextEmbedding::kName};
  spec.memory_mb =
      kit::replica_memory_mb(weight_bytes, generation_bytes(config, gen, dtype, static_cast<int64_t>(settings.tokens_per_forward)));
  spec.devices = options.devices;
  spec.batch_budget = settings.tokens_per_forward;
  const fs::path model_dir = layout.model_dir;
  const bool int8 = in.int8;
  spec.loader = [model_dir, tokenizer_file, tokenizer_options, config, settings, dtype, int8,
                 gen](const std::string& device) {
    const nn::Weights weights =
        nn::Weights::open(loading::Checkpoint::open(model_dir), dtype, at::Device(device)).with_int8_linears(int8);
    auto decoder = std::make_shared<const Decoder>(config, weights);
    auto embedder = std::make_unique<SentenceEmbedder>(std::make_unique<DecoderBackbone>(decoder),
                                                       kit::open_tokenizer(tokenizer_file, tokenizer_options),
                                                       settings);
    return std::make_shared<DecoderModel>(
        TextGenerator(decoder, kit::open_tokenizer(tokenizer_file, tokenizer_options), gen), std::move(embedder));
  };
  return model;
}

// A mixture of experts' sizes for inspect: every stored parameter, and those a
// token runs through (each MoE layer's experts count as top-k of their number).
// Dense models and configs the family refuses state nothing.
std::map<std::string, int64_t> moe_details(const loading::ModelConfig& c, const loading::ModelLayout& layout) {
  try {
    const DecoderConfig config = DecoderConfig::from(c);
    if (config.moe.num_experts == 0) return {};
    const loading::Checkpoint checkpoint = loading::Checkpoint::open(layout.model_dir);
    int64_t total = 0, experts = 0;
    for (const auto& name : checkpoint.names()) {
      const auto n = static_cast<int64_t>(checkpoint.find(name)->info->numel());
      total += n;
      if (name.find(".experts.") != std::string::npos) experts += n;
    }
    const double unchosen = 1.0 - static_cast<double>(config.moe.num_experts_per_tok) /
                                      static_cast<double>(config.moe.num_experts);
    return {{"parameters", total},
            {"active_parameters_per_token", total - static_cast<int64_t>(static_cast<double>(experts) * unchosen)},
            {"experts", config.moe.num_experts},
            {"experts_per_token", config.moe.num_experts_per_tok}};
  } catch (const Error&) {
    return {};  // loading says what is wrong with the files or the config
  }
}

}  // namespace

Family family() {
  // kimi_k2 is served when its config names DeepSeek-V3's architecture.
  auto serves = [types = kit::serves_model_types(
                     kModelTypes, "llama, mistral, qwen2, qwen3, phi3, qwen2_moe, qwen3_moe, deepseek_v3 or kimi_k2")](
                    const loading::ModelConfig& c, const loading::ModelLayout& layout) {
    if (c.model_type == "kimi_k2" && std::find(c.architectures.begin(), c.architectures.end(),
                                               kDeepseekV3Architecture) == c.architectures.end())
      return loading::FamilySupport::no(std::string("model_type 'kimi_k2' is served only when its architectures name ") +
                                        kDeepseekV3Architecture);
    loading::FamilySupport support = types(c, layout);
    if (support.supported) support.details = moe_details(c, layout);
    return support;
  };
  return Family{"llama", {cap::TextToText::kName, cap::TextEmbedding::kName}, serves, build,
                {{"prefill_chunk", OptionSpec::Kind::kInt,
                  "prompt tokens per forward pass of a prefill (default 512): bounds activation memory, and "
                  "the prompt tokens one step of a continuous batch runs besides its decode rows"},
                 max_batch_option(), kv_cache_tokens_option(), kv_block_size_option(), kv_cache_dtype_option(),
                 prefix_cache_option(), kit::tokenizer_pattern_option()}};
}

void register_probes() {
  // Greedy token ids from the TextGenerator for `ids` with ids[from, to) passed
  // as embeddings spliced into the prompt (the path a vision model's image
  // features take), or as plain ids when from == to.
  nn::register_probe("decoder.generate_spliced", [](const nn::ProbeInput& in) {
    const auto ids = in.get<std::vector<int64_t>>("ids");
    const auto from = static_cast<size_t>(in.get<int64_t>("from")), to = static_cast<size_t>(in.get<int64_t>("to"));
    check(from <= to && to <= ids.size(), ErrorCode::kInvalidInput, "need 0 <= from <= to <= len(ids)");
    const kit::ProbedModel m = kit::open_probed_model(in);
    const DecoderConfig config = DecoderConfig::from(m.config);
    auto decoder = std::make_shared<const Decoder>(config, m.weights);
    TextGeneratorSettings settings;
    settings.context = settings.max_context = config.max_position_embeddings;
    settings.prefill_chunk = in.get_or<int64_t>("prefill_chunk", kDefaultPrefillChunk);
    const TextGenerator generator(decoder, kit::open_tokenizer(kit::require_tokenizer(m.layout.tokenizer_dir)),
                                  settings);
    SplicedPrompt prompt;
    prompt.ids.assign(ids.begin(), ids.begin() + static_cast<ptrdiff_t>(from));
    prompt.ids.insert(prompt.ids.end(), ids.begin() + static_cast<ptrdiff_t>(to), ids.end());
    if (to > from)
      prompt.inserts.push_back(
          {from, decoder->embed_tokens(std::vector<int64_t>(ids.begin() + static_cast<ptrdiff_t>(from),
                                                            ids.begin() + static_cast<ptrdiff_t>(to)))});
    cap::GenerationParams params;
    params.max_tokens = in.get<int64_t>("max_tokens");
    params.temperature = 0;
    params.ignore_eos = true;
    std::vector<int64_t> out;
    core::RequestContext ctx(core::Clock::time_point::max(), nullptr);
    generator.generate(prompt, params, [&](cap::TextPiece piece) {
      out.insert(out.end(), piece.token_ids.begin(), piece.token_ids.end());
      return true;
    }, ctx);
    return nn::ProbeOutput{{"ids", at::tensor(out, at::kLong)}};
  });

  // The routing of an MoE layer (option "layer") for hidden states "hidden"
  // (tokens, hidden): the chosen experts (tokens, top_k) and their weights.
  nn::register_probe("moe.route", [](const nn::ProbeInput& in) {
    const int64_t layer = in.get<int64_t>("layer");
    const kit::ProbedModel m = kit::open_probed_model(in);
    const DecoderConfig config = DecoderConfig::from(m.config);
    check(layer >= 0 && layer < config.num_layers && config.is_moe_layer(layer), ErrorCode::kInvalidInput,
          "layer " + std::to_string(layer) + " is not a mixture-of-experts layer of this model");
    const Decoder decoder(config, m.weights);
    c10::InferenceMode guard;
    const auto& moe = dynamic_cast<const nn::MoeFeedForward&>(decoder.feed_forward(layer));
    const nn::Routing routing = moe.route(in.tensor("hidden").to(decoder.device(), m.weights.dtype()));
    return nn::ProbeOutput{{"experts", routing.experts.cpu()}, {"weights", routing.weights.to(at::kCPU, at::kFloat)}};
  });

  // A latent-attention layer (option "layer") on "hidden" (1, n, hidden), the
  // input of its attention at positions [0, n), causal: the output through the
  // absorbed form the decoder runs, the same as a prompt runs it under
  // kernels::RowInvariant with the prefix cache ("rows": row-by-row maps,
  // attention as decode steps), and through the expanded per-head keys and values.
  nn::register_probe("mla.attend", [](const nn::ProbeInput& in) {
    const int64_t layer = in.get<int64_t>("layer");
    const kit::ProbedModel m = kit::open_probed_model(in);
    const DecoderConfig config = DecoderConfig::from(m.config);
    check(config.is_mla() && layer >= 0 && layer < config.num_layers, ErrorCode::kInvalidInput,
          "layer " + std::to_string(layer) + " is not a latent-attention layer of this model");
    const Decoder decoder(config, m.weights);
    c10::InferenceMode guard;
    const nn::LatentAttention& mla = *decoder.latent_attention(layer);
    const at::Tensor hidden = in.tensor("hidden").to(decoder.device(), m.weights.dtype());
    const nn::LatentProjection p = mla.project(hidden);
    auto [cos, sin] = decoder.rope_tables(0, hidden.size(1));
    const at::Tensor q_rope = decoder.rope().apply(p.q_rope, cos, sin);
    const at::Tensor k_rope = decoder.rope().apply(p.k_rope, cos, sin).squeeze(1);
    auto out = [&](const at::Tensor& attended) { return mla.output(attended).to(at::kCPU, at::kFloat); };
    at::Tensor rows;
    {
      const nn::kernels::RowInvariant prompt(/*prompt=*/true);
      rows = out(mla.attend(p.q_nope, q_rope, p.latent, k_rope, {}, true, /*prompt_start=*/0));
    }
    return nn::ProbeOutput{{"absorbed", out(mla.attend(p.q_nope, q_rope, p.latent, k_rope, {}, true))},
                           {"rows", rows},
                           {"expanded", out(mla.attend_expanded(p.q_nope, q_rope, p.latent, k_rope, {}, true))}};
  });

  // (positions, float32 logits) of the decoder for `ids`: all at once (chunk 0)
  // or through the KV cache `chunk` tokens at a time.
  nn::register_probe("decoder.logits", [](const nn::ProbeInput& in) {
    const auto ids = in.get<std::vector<int64_t>>("ids");
    const int64_t chunk = in.get_or<int64_t>("chunk", 0);
    const kit::ProbedModel m = kit::open_probed_model(in);
    const Decoder decoder(DecoderConfig::from(m.config), m.weights);
    if (chunk <= 0)
      return nn::ProbeOutput{{"logits", decoder.all_logits(ids)},
                             {"positions", at::arange(static_cast<int64_t>(ids.size()), at::kLong)}};
    // Option kv_cache_dtype ("auto", "float32", "bfloat16"): what the cache stores in.
    const std::string kv_dtype = in.get_or<std::string>("kv_cache_dtype", "auto");
    check(kv_dtype == "auto" || kv_dtype == "float32" || kv_dtype == "bfloat16", ErrorCode::kInvalidInput,
          "probe option kv_cache_dtype must be auto, float32 or bfloat16");
    const std::optional<at::ScalarType> stored =
        kv_dtype == "auto" ? std::nullopt : std::optional(kv_dtype == "float32" ? at::kFloat : at::kBFloat16);
    nn::KvCache cache = decoder.new_cache(static_cast<int64_t>(ids.size()), stored);
    // Option whole_prompt (bool): the chunks are one prompt's (KvCache::prompt_length:
    // a length-dependent RoPE rotates them as all the ids at once), not decode steps.
    if (in.get_or<bool>("whole_prompt", false)) cache.prompt_length = static_cast<int64_t>(ids.size());
    std::vector<at::Tensor> rows;
    std::vector<int64_t> positions;
    const nn::kernels::RowInvariant prompt_rows(/*prompt=*/true);  // as the generator's prompts run
    for (size_t i = 0; i < ids.size(); i += static_cast<size_t>(chunk)) {
      const size_t end = std::min(ids.size(), i + static_cast<size_t>(chunk));
      rows.push_back(decoder.extend(std::vector<int64_t>(ids.begin() + static_cast<ptrdiff_t>(i),
                                                         ids.begin() + static_cast<ptrdiff_t>(end)),
                                    cache));
      positions.push_back(static_cast<int64_t>(end) - 1);
    }
    return nn::ProbeOutput{{"logits", at::stack(rows)}, {"positions", at::tensor(positions, at::kLong)}};
  });
}

}  // namespace mpool::models::decoder
