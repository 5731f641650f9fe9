#pragma once
// LoRA adapters applied at run time, unmerged: a Linear (or an embedding table)
// with adapters attached adds scale * (x A^T) B^T of the adapter that is active
// on the calling thread, so one set of base weights serves every adapter, and
// an adapter costs its own few MB. Which adapter is active is chosen per forward
// pass with an ActiveAdapter guard (by the capability, from the request's task);
// none active: the base model. Families attach adapters by the module paths the
// adapters were trained on (PEFT's names, which follow transformers' modules),
// whatever names their checkpoint stores the base weights under.
#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "mpool/loading/peft.h"
#include "mpool/nn/weights.h"

namespace mpool::nn {

/// One adapter's update of one projection: y += (x a^T) b^T, the scale folded into b.
struct LoraDelta {
  at::Tensor a;  ///< (r, in); for an embedding table: (vocab, r), looked up by id
  at::Tensor b;  ///< (out, r), times the adapter's scale
};
/// Per adapter index: its delta, or an undefined one where the adapter does not touch the projection.
using LoraDeltas = std::vector<LoraDelta>;

/// The adapter active on this thread (-1: none).
int active_adapter() noexcept;

/// Makes adapter `index` (-1: none) active on this thread for its lifetime.
class ActiveAdapter {
 public:
  explicit ActiveAdapter(int index) noexcept;
  ~ActiveAdapter();
  ActiveAdapter(const ActiveAdapter&) = delete;
  ActiveAdapter& operator=(const ActiveAdapter&) = delete;

 private:
  int previous_;
};

/// `y` plus the active adapter's update of `x` (y itself when none applies).
at::Tensor apply_lora(const LoraDeltas* deltas, const at::Tensor& x, const at::Tensor& y);
/// The embedding rows `y` of `ids` plus the active adapter's embedding update.
at::Tensor apply_lora_embedding(const LoraDeltas* deltas, const at::Tensor& ids, const at::Tensor& y);

/// Every adapter of a model, read from PEFT directories as `dtype` on `device`.
/// The family takes each projection's deltas by module path; finish() then
/// refuses any adapter tensor nobody took (a module the family does not know
/// would otherwise be silently dropped).
class LoraAdapters {
 public:
  LoraAdapters() = default;
  static LoraAdapters open(const std::vector<loading::LoraAdapterConfig>& configs, at::ScalarType dtype,
                           at::Device device);
  /// Adapters stored stacked inside the model's checkpoint `w`, one per task of
  /// `tasks`, as torch.nn.utils.parametrize saves jina's multi-task LoRA: module M
  /// has M.parametrizations.weight.0.lora_A and lora_B holding every task's factor
  /// (a linear's (tasks, rank, in) and (tasks, out, rank), W + scale B A; an
  /// embedding's (tasks, vocab, rank) and (tasks, rank, dim), E + scale A B), with
  /// scale = alpha / rank.
  static LoraAdapters stacked(const Weights& w, std::vector<std::string> tasks, int64_t rank, double alpha);

  bool empty() const noexcept { return adapters_.empty(); }
  size_t size() const noexcept { return adapters_.size(); }
  const std::string& name(size_t i) const { return adapters_.at(i).name; }

  /// The deltas of one projection `module` (out, in); null when no adapter touches it.
  std::shared_ptr<const LoraDeltas> linear(const std::string& module, int64_t out, int64_t in);
  /// The deltas of projections stored fused (q, k, v as one weight): `parts` are
  /// (module, out) in the fused order; each adapter's update is block diagonal.
  std::shared_ptr<const LoraDeltas> fused(const std::vector<std::pair<std::string, int64_t>>& parts, int64_t in);
  /// The deltas of the embedding table `module` (vocab, dim).
  std::shared_ptr<const LoraDeltas> embedding(const std::string& module, int64_t vocab, int64_t dim);

  /// The first of `candidates` ("", "roberta.") under which the adapters store
  /// module paths (PEFT names modules from the class it wrapped); "" when none has any.
  std::string find_prefix(const std::vector<std::string>& candidates) const;
  /// Marks the adapter tensors of `module` as deliberately unused: a module off
  /// the path the capability runs (an encoder's pooler under an embedder), whose
  /// update cannot change the result.
  void skip(const std::string& module);
  /// Throws InvalidInput naming the first adapter tensor no projection took.
  void finish() const;
  /// Bytes of every adapter tensor stored apart from the model (PEFT directories).
  size_t bytes() const;

 private:
  struct Adapter {
    std::string name;
    loading::LoraAdapterConfig config;  // PEFT only
    std::shared_ptr<Weights> weights;   // PEFT: under "base_model.model."
    std::vector<std::string> names;     // PEFT: every tensor, as named in that view
  };
  struct Factors {
    at::Tensor a, b;  // as LoraDelta: a (r, in) or, for an embedding, (vocab, r); b (out, r), scaled
  };
  // Adapter `i`'s factors of `module` (out, in; an embedding: vocab, dim), or none.
  std::optional<Factors> factors(size_t i, const std::string& module, int64_t out, int64_t in, bool embedding);
  at::Tensor take(size_t adapter, const std::string& name, const std::vector<int64_t>& shape);
  at::Tensor take_stacked(const std::string& name, const std::vector<int64_t>& shape);
  std::vector<Adapter> adapters_;
  std::set<std::pair<size_t, std::string>> taken_;
  // The stacked form: the model's own view, its LoRA tensor names, rank and scale.
  std::shared_ptr<Weights> stacked_;
  std::vector<std::string> stacked_names_;
  std::map<std::string, at::Tensor> stacked_cache_;
  int64_t stacked_rank_ = 0;
  double stacked_scale_ = 1;
};

/// `w` reading a checkpoint saved under torch.nn.utils.parametrize: "M.weight"
/// is read from "M.parametrizations.weight.original" where that is stored.
Weights without_parametrizations(const Weights& w);

}  // namespace mpool::nn
