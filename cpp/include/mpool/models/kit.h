#pragma once
// The family kit: what every native family needs besides its own blocks,
// written once. A family folder (cpp/src/models/<family>/) holds its config
// reader, its network (on mpool_nn) and a family.cpp that uses these.
#include <ATen/ATen.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mpool/loading/layout.h"
#include "mpool/loading/registry.h"
#include "mpool/loading/slow_tokenizer.h"
#include "mpool/models/families.h"
#include "mpool/nn/probe.h"
#include "mpool/nn/weights.h"
#include "mpool/tokenizer/tokenizer.h"

namespace mpool::models::kit {

/// The dtype policy, the same for every family: the caller's choice when given
/// (float32, bfloat16, float16), else float32 on the CPU and bfloat16 on CUDA.
/// InvalidInput names the family and the accepted names.
/// InvalidInput also for "int8", naming the families that quantize (they take
/// their dtype from build_inputs with `allows_int8`).
at::ScalarType pick_dtype(const NativeOptions& options, const std::string& family);

/// Where the tokenizer of folder `dir` loads from: `dir`/tokenizer.json when
/// present, else `dir` itself when it holds a tiktoken rank file or a byte-level
/// BPE tokenizer's slow files (vocab.json + merges.txt), converted by
/// loading::read_tokenizer_document, which runs here once so an unsupported
/// tokenizer_class, a malformed rank file or a bad pattern fails at registration;
/// its warnings go to `warnings` when given. Else InvalidInput naming
/// `dir`/tokenizer.json.
std::filesystem::path require_tokenizer(const std::filesystem::path& dir,
                                        const loading::TokenizerOptions& options = {},
                                        std::vector<std::string>* warnings = nullptr);

/// The tokenizer at `path` as require_tokenizer returns it: a tokenizer.json file,
/// or a folder converted to the same pipeline (with the same `options`).
std::unique_ptr<tokenizer::Tokenizer> open_tokenizer(const std::filesystem::path& path,
                                                     const loading::TokenizerOptions& options = {});

/// The "tokenizer_pattern" family option (a string: the split regex of a tiktoken
/// rank file), for the families whose models may ship one.
OptionSpec tokenizer_pattern_option();

/// What `options` say about the model's tokenizer (the "tokenizer_pattern" option).
loading::TokenizerOptions tokenizer_options(const NativeOptions& options);

/// The id texts are padded with: the pad token that tokenizer_config.json (else
/// special_tokens_map.json) in `dir` names, when the vocabulary has it, else `fallback`.
int64_t pad_token_id(const std::filesystem::path& dir, const tokenizer::Tokenizer& tok, int64_t fallback);

/// The support predicate of a family that serves `model_types`, described as
/// `what` ("bert, roberta or xlm-roberta"): the type must match and weights exist.
loading::SupportPredicate serves_model_types(std::vector<std::string> model_types, std::string what);

/// An encoder family's predicate: `serves`, and a model it serves gets rerank when
/// config.json names a *ForSequenceClassification architecture, text_embedding otherwise.
loading::SupportPredicate embeds_or_reranks(loading::SupportPredicate serves);

/// The "tokens_per_forward" option (padded tokens per forward pass), else
/// `fallback`; InvalidInput outside [1, 2^24].
size_t tokens_per_forward(const NativeOptions& options, size_t fallback);

/// What every family's build step starts from: the single-model layout of the
/// directory, its tokenizer (require_tokenizer; open it with open_tokenizer), the dtype by the policy above, and
/// the checkpoint's headers (for measuring).
struct BuildInputs {
  loading::ModelLayout layout;
  std::filesystem::path tokenizer_file;  ///< tokenizer.json, or the folder of slow files or a rank file
  loading::TokenizerOptions tokenizer_options;  ///< pass to open_tokenizer with tokenizer_file
  std::vector<std::string> warnings;            ///< the tokenizer's, for NativeModel::warnings
  at::ScalarType dtype;
  loading::Checkpoint checkpoint;
  bool int8 = false;  ///< int8 linear weights (only when `allows_int8`)
};
/// `allows_int8`: the family quantizes linear weights (nn/int8.h), so the policy
/// also takes "int8": `dtype` float32 and `int8` set, for the CPU only
/// (InvalidInput naming another device). Else the dtype is pick_dtype's.
BuildInputs build_inputs(const loading::ModelDirectory& directory, const NativeOptions& options,
                         const std::string& family, bool allows_int8 = false);

/// Fixed allowance per replica for the tokenizer, allocator slack and small buffers.
inline constexpr double kReplicaOverheadMb = 64.0;

/// A replica's memory estimate: weights, plus caches and activations, plus the overhead.
double replica_memory_mb(double weight_bytes, double other_bytes);

/// A spec that serves one `capability`: its weights (`weight_bytes`, also
/// model.weight_mb) and one forward pass's `activation_bytes` in the replica
/// estimate, `batch_budget`, the devices `options` name, and `loader`.
void fill_spec(NativeModel& model, const char* capability, double weight_bytes, double activation_bytes,
               size_t batch_budget, const NativeOptions& options, core::Loader loader);

/// The bytes of weights a model takes from `checkpoint` as `dtype`: `build` runs
/// the model's constructor on a meta-device view (nothing is read), so the count
/// covers exactly the tensors the model loads and checks every name and shape at
/// registration. Returns the bytes, and appends the unused-tensor warnings. When
/// the checkpoint does not fit the config, registration still succeeds (loading
/// will fail with the same error): it warns so and counts every stored tensor.
/// `int8`: measured as Weights::with_int8_linears.
double measure_weights(const loading::Checkpoint& checkpoint, at::ScalarType dtype,
                       const std::function<void(const nn::Weights&)>& build, std::vector<std::string>& warnings,
                       bool int8 = false);

/// What a family's probe runs on: the model directory in option "path", its
/// config.json, and its weights as option "dtype" (default float32; "int8": float32
/// with int8 linear weights) on the CPU.
struct ProbedModel {
  loading::ModelLayout layout;
  loading::ModelConfig config;
  nn::Weights weights;
};
ProbedModel open_probed_model(const nn::ProbeInput& input);

}  // namespace mpool::models::kit
