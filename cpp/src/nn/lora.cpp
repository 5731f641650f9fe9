#include "mpool/nn/lora.h"

#include <algorithm>

#include "mpool/base/error.h"

namespace mpool::nn {
namespace {

thread_local int t_active_adapter = -1;

const LoraDelta* active_delta(const LoraDeltas* deltas) {
  const int i = t_active_adapter;
  if (deltas == nullptr || i < 0 || static_cast<size_t>(i) >= deltas->size()) return nullptr;
  const LoraDelta& d = (*deltas)[static_cast<size_t>(i)];
  return d.a.defined() ? &d : nullptr;
}

}  // namespace

int active_adapter() noexcept { return t_active_adapter; }

ActiveAdapter::ActiveAdapter(int index) noexcept : previous_(t_active_adapter) { t_active_adapter = index; }
ActiveAdapter::~ActiveAdapter() { t_active_adapter = previous_; }

at::Tensor apply_lora(const LoraDeltas* deltas, const at::Tensor& x, const at::Tensor& y) {
  const LoraDelta* d = active_delta(deltas);
  if (d == nullptr) return y;
  return y + at::matmul(at::matmul(x.to(d->a.scalar_type()), d->a.t()), d->b.t()).to(y.scalar_type());
}

at::Tensor apply_lora_embedding(const LoraDeltas* deltas, const at::Tensor& ids, const at::Tensor& y) {
  const LoraDelta* d = active_delta(deltas);
  if (d == nullptr) return y;
  return y + at::matmul(at::embedding(d->a, ids), d->b.t()).to(y.scalar_type());
}

LoraAdapters LoraAdapters::open(const std::vector<loading::LoraAdapterConfig>& configs, at::ScalarType dtype,
                                at::Device device) {
  LoraAdapters out;
  for (const auto& config : configs) {
    loading::Checkpoint checkpoint = loading::Checkpoint::open(config.weights);
    // PeftModel saves every name under "base_model.model."; the module paths follow.
    const std::vector<std::string> stored = checkpoint.names();
    const bool wrapped = !stored.empty() && std::all_of(stored.begin(), stored.end(), [](const std::string& n) {
      return n.rfind("base_model.model.", 0) == 0;
    });
    if (wrapped) checkpoint = checkpoint.with_prefix("base_model.model.");
    Adapter a;
    a.config = config;
    a.names = checkpoint.names();
    a.weights = std::make_shared<Weights>(Weights::open(std::move(checkpoint), dtype, device));
    out.adapters_.push_back(std::move(a));
  }
  return out;
}

at::Tensor LoraAdapters::take(size_t adapter, const std::string& name, const std::vector<int64_t>& shape) {
  taken_.insert({adapter, name});
  return adapters_[adapter].weights->get(name, shape);
}

std::shared_ptr<const LoraDeltas> LoraAdapters::fused(const std::vector<std::pair<std::string, int64_t>>& parts,
                                                      int64_t in) {
  auto deltas = std::make_shared<LoraDeltas>(adapters_.size());
  bool any = false;
  int64_t total_out = 0;
  for (const auto& [module, out] : parts) total_out += out;
  for (size_t i = 0; i < adapters_.size(); ++i) {
    const Adapter& adapter = adapters_[i];
    std::vector<at::Tensor> as, bs;  // per part with an update: A (r, in), scaled B (out, r)
    std::vector<std::pair<int64_t, int64_t>> blocks;  // its (row offset, rank)
    int64_t row = 0;
    for (const auto& [module, out] : parts) {
      if (adapter.weights->has(module + ".lora_A.weight") || adapter.weights->has(module + ".lora_B.weight")) {
        const int64_t r = adapter.config.rank(module);
        as.push_back(take(i, module + ".lora_A.weight", {r, in}));
        bs.push_back(take(i, module + ".lora_B.weight", {out, r}) * adapter.config.scale(module));
        blocks.push_back({row, r});
      }
      row += out;
    }
    if (as.empty()) continue;
    any = true;
    LoraDelta d;
    d.a = at::cat(as, 0);
    if (parts.size() == 1) {
      d.b = bs.front();
    } else {
      int64_t rank = d.a.size(0), col = 0;
      d.b = at::zeros({total_out, rank}, d.a.options());
      for (size_t p = 0; p < bs.size(); ++p) {
        d.b.narrow(0, blocks[p].first, bs[p].size(0)).narrow(1, col, blocks[p].second).copy_(bs[p]);
        col += blocks[p].second;
      }
    }
    (*deltas)[i] = std::move(d);
  }
  return any ? deltas : nullptr;
}

std::shared_ptr<const LoraDeltas> LoraAdapters::linear(const std::string& module, int64_t out, int64_t in) {
  return fused({{module, out}}, in);
}

std::shared_ptr<const LoraDeltas> LoraAdapters::embedding(const std::string& module, int64_t vocab, int64_t dim) {
  auto deltas = std::make_shared<LoraDeltas>(adapters_.size());
  bool any = false;
  for (size_t i = 0; i < adapters_.size(); ++i) {
    const Adapter& adapter = adapters_[i];
    if (!adapter.weights->has(module + ".lora_embedding_A") && !adapter.weights->has(module + ".lora_embedding_B"))
      continue;
    const int64_t r = adapter.config.rank(module);
    LoraDelta d;
    d.a = take(i, module + ".lora_embedding_A", {r, vocab}).t().contiguous();
    d.b = take(i, module + ".lora_embedding_B", {dim, r}) * adapter.config.scale(module);
    (*deltas)[i] = std::move(d);
    any = true;
  }
  return any ? deltas : nullptr;
}

std::string LoraAdapters::find_prefix(const std::vector<std::string>& candidates) const {
  for (const auto& prefix : candidates) {
    if (prefix.empty()) continue;
    for (const auto& a : adapters_)
      for (const auto& name : a.names)
        if (name.rfind(prefix, 0) == 0) return prefix;
  }
  return "";
}

void LoraAdapters::finish() const {
  for (size_t i = 0; i < adapters_.size(); ++i)
    for (const auto& name : adapters_[i].names)
      check(taken_.count({i, name}) > 0, ErrorCode::kInvalidInput,
            "LoRA adapter '" + adapters_[i].config.name + "' (" + adapters_[i].config.weights.string() +
                ") has the tensor '" + name + "' for a module this model does not have or cannot adapt");
}

size_t LoraAdapters::bytes() const {
  size_t total = 0;
  for (const auto& a : adapters_) total += a.weights->bytes_taken();
  return total;
}

}  // namespace mpool::nn
