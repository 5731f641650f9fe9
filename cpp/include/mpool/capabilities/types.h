#pragma once
// Values that cross the capability interfaces: generation parameters, text and
// image stream chunks. Numeric payloads are ATen tensors (CPU unless a model says
// otherwise); the bindings turn them into numpy arrays.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace mpool::capabilities {

/// Options of one embedding request.
struct EmbedOptions {
  std::optional<std::string> task;  ///< selects a prompt (e.g. "query") when the model has them
  bool truncate = true;             ///< false: a text longer than the model's limit is InvalidInput
  /// true: unit-length rows; false: the model's raw output (a CLIP projection
  /// before its normalization); nullopt: the model's own default.
  std::optional<bool> normalize;
  /// Matryoshka truncation: keep the first `dimensions` of each row, then
  /// re-normalize when the rows are normalized (explicitly or by the model's
  /// default); nullopt keeps the model's full width.
  std::optional<int64_t> dimensions;
};

/// A (query, document) pair for a cross-encoder.
struct TextPair {
  std::string first;
  std::string second;
};

/// Options of one scoring (reranking) request.
struct ScoreOptions {
  bool truncate = true;  ///< false: a pair longer than the model's limit is InvalidInput
  bool raw = false;      ///< true: the classifier's logits, without the model's activation
};

/// Options of one image embedding request.
struct ImageEmbedOptions {
  /// As EmbedOptions::normalize.
  std::optional<bool> normalize;
};

/// How a model that embeds images and texts into one space scores a pair
/// (zero-shot classification): logit = scale * cos(image, text) + bias, then a
/// softmax over the labels (CLIP) or a sigmoid per label (SigLIP).
struct ContrastiveHead {
  double logit_scale = 1.0;  ///< already exponentiated (the checkpoint stores its log)
  double logit_bias = 0.0;
  bool sigmoid = false;
};

/// Sampling and stopping parameters of one text generation.
struct GenerationParams {
  int64_t max_tokens = 256;
  double temperature = 1.0;  ///< 0 = greedy
  std::optional<int64_t> top_k;
  std::optional<double> top_p;
  std::optional<double> min_p;
  double repetition_penalty = 1.0;
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;            ///< stop strings, never emitted
  std::vector<int64_t> stop_token_ids;      ///< in addition to the model's eos
  bool ignore_eos = false;
  std::optional<int64_t> logprobs;          ///< report each token's logprob and this many alternatives
  bool add_special_tokens = true;           ///< text prompts: let the tokenizer add bos etc. (chat turns it off)
  /// The names of the fields the caller set explicitly (Python models receive only these).
  std::vector<std::string> explicitly_set;
};

/// Counts and timings reported with the last chunk of a text stream.
struct GenerationStats {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  double time_to_first_token_s = 0;
  double tokens_per_second = 0;
  int64_t image_tokens = 0;  ///< prompt positions that image features filled (vision models)
  double image_time_s = 0;   ///< preparing the images: preprocessing, vision tower, projector
};

/// The log-probability of one generated token under the model, with the most
/// likely alternatives at that step.
struct TokenLogprob {
  int64_t token_id = 0;
  double logprob = 0;
  std::vector<std::pair<int64_t, double>> top;  ///< (token id, logprob), most likely first
};

/// What a text model emits at a time: text, the ids it came from, and their
/// logprobs when the request asked for them.
struct TextPiece {
  std::string text;
  std::vector<int64_t> token_ids;
  std::vector<TokenLogprob> logprobs;
};

/// One piece of a text stream; the last one has finish_reason and stats.
struct TextChunk {
  std::string text;
  std::vector<int64_t> token_ids;
  std::vector<TokenLogprob> logprobs;
  std::optional<std::string> finish_reason;  ///< "stop", "length", "cancelled", "error"
  std::optional<GenerationStats> stats;
};

/// What a text-producing model reports when it returns.
struct Completion {
  std::string finish_reason = "stop";  ///< "stop" or "length"
  int64_t prompt_tokens = 0;
  std::optional<int64_t> completion_tokens;  ///< counted from emitted ids when unset
  int64_t image_tokens = 0;  ///< a vision model's: prompt positions its image features filled
  double image_time_s = 0;   ///< a vision model's: time spent turning the images into features
};

/// An image: HWC uint8 tensor with 1, 3 or 4 channels.
using Image = at::Tensor;

/// Settings of one text-to-image generation. A model reads what it supports and
/// refuses (InvalidInput) settings it cannot honour.
struct ImageConfig {
  int64_t width = 512;
  int64_t height = 512;
  int64_t steps = 20;
  double guidance_scale = 7.0;
  /// Classifier-free guidance with two passes for a guidance-distilled model
  /// (FLUX's true_cfg_scale): above 1 with a negative prompt; 1 is off.
  double true_cfg_scale = 1.0;
  std::optional<std::string> negative_prompt;
  std::optional<uint64_t> seed;
  std::optional<Image> init_image;  ///< img2img source (HWC uint8)
  double strength = 0.8;            ///< img2img: the share of the steps that run (1: from pure noise)
  /// The initial latents (float32, the model's latent shape for width x height),
  /// instead of seeded noise: what diffusers' `latents=` takes.
  std::optional<at::Tensor> latents;
  /// Skip-layer guidance: the transformer blocks left out of the extra pass
  /// (empty: off), its scale, and the share of the steps where it applies.
  std::vector<int64_t> skip_layers;
  double skip_layer_scale = 2.8;
  double skip_layer_start = 0.01;
  double skip_layer_stop = 0.2;
  /// Longest tokenized prompt for the long-text encoder (T5); nullopt: the model's default.
  std::optional<int64_t> max_sequence_length;
  bool previews = true;        ///< attach a preview image to each progress report
  bool float_output = false;   ///< return float32 HWC in [0, 1] instead of uint8 (diffusers' output_type="np")
};

/// Progress of an image generation.
struct ImageProgress {
  int64_t step = 0;
  int64_t total = 0;
  std::optional<Image> preview;  ///< a small HWC uint8 image of the current estimate
  double elapsed_s = 0;          ///< seconds since the generation started on its replica
};

/// One item of an image stream: progress, then the final image.
using ImageEvent = std::variant<ImageProgress, Image>;

}  // namespace mpool::capabilities
