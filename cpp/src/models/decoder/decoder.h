#pragma once
// The pre-norm RoPE decoder: grouped-query attention, RMSNorm, a gated MLP
// (SwiGLU) or a mixture of experts, and rotary positions, parameterized by
// config.json. It serves LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM,
// Qwen3ForCausalLM, Phi3ForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM and
// DeepseekV3ForCausalLM, which differ only in flags read from the config (biases,
// q/k norm, sliding windows, rope type, which layers hold experts and how they
// route, latent attention for DeepSeek-V3) and in whether q/k/v and gate/up are
// stored fused (Phi-3). Every block comes from mpool_nn; this file only wires them.
#include <ATen/ATen.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "models/decoder/config.h"
#include "mpool/models/causal_lm.h"
#include "mpool/models/families.h"
#include "mpool/models/text_generator.h"
#include "mpool/nn/attention.h"
#include "mpool/nn/linear.h"
#include "mpool/nn/mla.h"
#include "mpool/nn/mlp.h"
#include "mpool/nn/norm.h"
#include "mpool/nn/rope.h"
#include "mpool/nn/weights.h"

namespace mpool::models::decoder {

/// The decoder's weights and forward passes.
class Decoder final : public CausalLM {
 public:
  /// Takes every weight the config implies from `checkpoint` (a ForCausalLM
  /// checkpoint with "model." names, or a bare base model) as the view's dtype on
  /// its device; on the meta device nothing is read (measuring).
  Decoder(DecoderConfig config, const nn::Weights& checkpoint);
  /// The same from the base model's view (`base` holds "embed_tokens.", "layers.",
  /// "norm.") and the view holding "lm_head.weight" (`head`; absent: no head). A
  /// vision-language checkpoint keeps them apart ("model.language_model." and "",
  /// or "language_model.model." and "language_model.").
  Decoder(DecoderConfig config, const nn::Weights& base, const nn::Weights& head);

  nn::KvCache new_cache(int64_t capacity, std::optional<at::ScalarType> dtype) const override;
  std::shared_ptr<nn::KvBlockPool> new_block_pool(int64_t block_size, int64_t blocks,
                                                  std::optional<at::ScalarType> dtype) const override;
  /// Up to a length-dependent RoPE's trained length (dynamic NTK, longrope): past
  /// it a key's rotation depends on the length of the sequence that computed it.
  int64_t prefix_reusable_positions() const override { return config_.rope.length_independent_positions(); }
  at::Tensor embed_tokens(const std::vector<int64_t>& ids) const override;
  at::Tensor extend_embeddings(const at::Tensor& embeddings, nn::KvCache& cache) const override;
  /// The rows of a batch run through each projection together (the weights are
  /// read once for up to kernels::row_kernel_max_rows() rows, whose results are
  /// the same bits however many run), attention per sequence against its own
  /// cache. A longrope row that crosses to the long factors (it recomputes its
  /// sequence) and latent-attention models extend each sequence on its own.
  at::Tensor decode_batch(const std::vector<int64_t>& ids, const std::vector<nn::KvCache*>& caches) const override;
  int64_t vocab_size() const override { return config_.vocab_size; }
  int64_t hidden_size() const override { return config_.hidden_size; }

  /// Logits (n, vocab) float32 of every position of `ids` from an empty cache (probes).
  at::Tensor all_logits(const std::vector<int64_t>& ids) const;
  /// Last hidden state (b, t, hidden) after the final norm, for right-padded (b, t)
  /// ids and 0/1 mask, without a cache (the embedding backbone). `causal` false:
  /// every token sees every unpadded token and sliding windows do not apply (the
  /// bidirectional run of decoder-based embedders such as NV-Embed).
  at::Tensor hidden_states(const at::Tensor& ids, const at::Tensor& mask, bool causal = true) const;

  const DecoderConfig& config() const noexcept { return config_; }
  /// Layer `layer`'s feed-forward block (a dense MLP or an nn::MoeFeedForward).
  const nn::FeedForward& feed_forward(int64_t layer) const { return *layers_.at(static_cast<size_t>(layer)).feed_forward; }
  at::Device device() const noexcept { return device_; }
  /// Layer `layer`'s latent attention (DeepSeek-V3), or nullptr.
  const nn::LatentAttention* latent_attention(int64_t layer) const {
    const auto& mla = layers_.at(static_cast<size_t>(layer)).mla;
    return mla ? &*mla : nullptr;
  }
  /// Cos and sin for positions [start, start + n).
  std::pair<at::Tensor, at::Tensor> rope_tables(int64_t start, int64_t n) const { return rope_.tables(start, n); }
  const nn::Rope& rope() const noexcept { return rope_; }
  /// Whether it can produce logits (it has an output head or tied embeddings).
  bool has_lm_head() const noexcept { return lm_head_.defined(); }

 private:
  struct Layer {
    nn::RMSNorm input_norm, post_attention_norm;
    nn::Attention attention;                 // unless the layer has latent attention
    std::optional<nn::LatentAttention> mla;  // DeepSeek-V3
    std::shared_ptr<const nn::FeedForward> feed_forward;  // the slot an MoE block fills
  };
  // Runs the layers on x (b, n, hidden) at positions [start, start + n); keys and
  // values go to `cache` when given; `key_mask` (b, t) marks padding otherwise.
  // `causal` false (no cache): full attention over the unpadded keys.
  at::Tensor run(at::Tensor x, int64_t start, nn::KvCache* cache, const at::Tensor& key_mask,
                 bool causal = true) const;
  at::Tensor logits(const at::Tensor& hidden) const;
  // decode_batch for rows that run together: x (b, 1, hidden) at each cache's length.
  at::Tensor decode_rows(at::Tensor x, const std::vector<nn::KvCache*>& caches) const;

  DecoderConfig config_;
  at::ScalarType dtype_;
  at::Device device_;
  at::Tensor embed_;
  nn::Linear lm_head_;  // the embedding when tied (its own int8 copy in an int8 view)
  nn::RMSNorm norm_;
  nn::Rope rope_;
  std::vector<Layer> layers_;
};

// --- What every family that generates with this decoder shares (the decoder
// family itself, LLaVA's language model); in decoder/family.cpp.

/// The default prompt tokens per prefill pass (option "prefill_chunk").
inline constexpr int64_t kDefaultPrefillChunk = 512;
/// The default sequences of a continuous batch (option "max_batch").
inline constexpr int64_t kDefaultMaxBatch = 16;

/// Options "max_batch" and "kv_cache_tokens" (continuous batching), as every
/// family generating with this decoder declares them.
OptionSpec max_batch_option();
OptionSpec kv_cache_tokens_option();
/// Options "kv_block_size", "kv_cache_dtype" and "prefix_cache" (the paged
/// cache, the dtype it stores in, and its prefix reuse).
OptionSpec kv_block_size_option();
OptionSpec kv_cache_dtype_option();
OptionSpec prefix_cache_option();

/// The TextGenerator's settings: the context (options.context_length, checked
/// against the config's maximum), eos and sampling defaults from `model_dir`'s
/// generation_config.json (else config.json's eos), and options "prefill_chunk",
/// "max_batch", "kv_cache_tokens", "kv_block_size" and "prefix_cache".
TextGeneratorSettings generator_settings(const DecoderConfig& config, const std::filesystem::path& model_dir,
                                         const NativeOptions& options);

/// Bytes beyond the weights that a replica's generations need: the KV cache of
/// kv_cache_tokens positions (one context by default) and the activations of one prefill chunk of `tokens_per_forward`
/// tokens or more (logits included).
double generation_bytes(const DecoderConfig& config, const TextGeneratorSettings& settings, at::ScalarType dtype,
                        int64_t tokens_per_forward = 0);

}  // namespace mpool::models::decoder
