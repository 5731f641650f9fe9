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
    a.name = config.name;
    a.config = config;
    a.names = checkpoint.names();
    a.weights = std::make_shared<Weights>(Weights::open(std::move(checkpoint), dtype, device));
    out.adapters_.push_back(std::move(a));
  }
  return out;
}

LoraAdapters LoraAdapters::stacked(const Weights& w, std::vector<std::string> tasks, int64_t rank, double alpha) {
  check(rank > 0, ErrorCode::kInvalidInput, "LoRA rank must be positive, got " + std::to_string(rank));
  LoraAdapters out;
  for (auto& t : tasks) out.adapters_.push_back(Adapter{std::move(t), {}, nullptr, {}});
  out.stacked_ = std::make_shared<Weights>(w);
  out.stacked_rank_ = rank;
  out.stacked_scale_ = alpha / static_cast<double>(rank);
  for (const auto& name : w.checkpoint().names()) {
    if (name.rfind(w.prefix(), 0) != 0) continue;
    const std::string rel = name.substr(w.prefix().size());
    if (rel.find(".parametrizations.weight.0.lora_") != std::string::npos) out.stacked_names_.push_back(rel);
  }
  return out;
}

at::Tensor LoraAdapters::take(size_t adapter, const std::string& name, const std::vector<int64_t>& shape) {
  taken_.insert({adapter, name});
  return adapters_[adapter].weights->get(name, shape);
}

at::Tensor LoraAdapters::take_stacked(const std::string& name, const std::vector<int64_t>& shape) {
  auto it = stacked_cache_.find(name);
  if (it != stacked_cache_.end()) return it->second;
  taken_.insert({adapters_.size(), name});
  return stacked_cache_[name] = stacked_->get(name, shape);
}

std::optional<LoraAdapters::Factors> LoraAdapters::factors(size_t i, const std::string& module, int64_t out,
                                                           int64_t in, bool embedding) {
  if (stacked_) {
    const std::string a_name = module + ".parametrizations.weight.0.lora_A",
                      b_name = module + ".parametrizations.weight.0.lora_B";
    if (!stacked_->has(a_name) && !stacked_->has(b_name)) return std::nullopt;
    const int64_t tasks = static_cast<int64_t>(adapters_.size()), r = stacked_rank_;
    const auto t = static_cast<int64_t>(i);
    if (embedding)  // in = vocab, out = dim: E + scale A[t] B[t]
      return Factors{take_stacked(a_name, {tasks, in, r})[t],
                     take_stacked(b_name, {tasks, r, out})[t].t() * stacked_scale_};
    return Factors{take_stacked(a_name, {tasks, r, in})[t], take_stacked(b_name, {tasks, out, r})[t] * stacked_scale_};
  }
  const Adapter& adapter = adapters_[i];
  const auto& c = adapter.config;
  const std::string a_name = module + (embedding ? ".lora_embedding_A" : ".lora_A.weight"),
                    b_name = module + (embedding ? ".lora_embedding_B" : ".lora_B.weight");
  if (!adapter.weights->has(a_name) && !adapter.weights->has(b_name)) return std::nullopt;
  const int64_t r = c.rank(module);
  if (embedding)  // lora_embedding_A (r, vocab), lora_embedding_B (dim, r)
    return Factors{take(i, a_name, {r, in}).t().contiguous(), take(i, b_name, {out, r}) * c.scale(module)};
  return Factors{take(i, a_name, {r, in}), take(i, b_name, {out, r}) * c.scale(module)};
}

std::shared_ptr<const LoraDeltas> LoraAdapters::fused(const std::vector<std::pair<std::string, int64_t>>& parts,
                                                      int64_t in) {
  auto deltas = std::make_shared<LoraDeltas>(adapters_.size());
  bool any = false;
  int64_t total_out = 0;
  for (const auto& [module, out] : parts) total_out += out;
  for (size_t i = 0; i < adapters_.size(); ++i) {
    std::vector<Factors> found;                       // per part with an update
    std::vector<std::pair<int64_t, int64_t>> blocks;  // its (row offset, rank)
    int64_t row = 0;
    for (const auto& [module, out] : parts) {
      if (auto f = factors(i, module, out, in, /*embedding=*/false)) {
        blocks.push_back({row, f->a.size(0)});
        found.push_back(std::move(*f));
      }
      row += out;
    }
    if (found.empty()) continue;
    any = true;
    LoraDelta d;
    if (parts.size() == 1) {
      d.a = found.front().a;
      d.b = found.front().b;
    } else {
      std::vector<at::Tensor> as;
      for (const auto& f : found) as.push_back(f.a);
      d.a = at::cat(as, 0);
      int64_t col = 0;
      d.b = at::zeros({total_out, d.a.size(0)}, d.a.options());
      for (size_t p = 0; p < found.size(); ++p) {
        d.b.narrow(0, blocks[p].first, found[p].b.size(0)).narrow(1, col, blocks[p].second).copy_(found[p].b);
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
    if (auto f = factors(i, module, dim, vocab, /*embedding=*/true)) {
      (*deltas)[i] = LoraDelta{std::move(f->a), std::move(f->b)};
      any = true;
    }
  }
  return any ? deltas : nullptr;
}

std::string LoraAdapters::find_prefix(const std::vector<std::string>& candidates) const {
  for (const auto& prefix : candidates) {
    if (prefix.empty()) continue;
    for (const auto& name : stacked_names_)
      if (name.rfind(prefix, 0) == 0) return prefix;
    for (const auto& a : adapters_)
      for (const auto& name : a.names)
        if (name.rfind(prefix, 0) == 0) return prefix;
  }
  return "";
}

void LoraAdapters::skip(const std::string& module) {
  const std::string under = module + ".";
  for (const auto& name : stacked_names_)
    if (name.rfind(under, 0) == 0) taken_.insert({adapters_.size(), name});
  for (size_t i = 0; i < adapters_.size(); ++i)
    for (const auto& name : adapters_[i].names)
      if (name.rfind(under, 0) == 0) taken_.insert({i, name});
}

void LoraAdapters::finish() const {
  for (const auto& name : stacked_names_)
    check(taken_.count({adapters_.size(), name}) > 0, ErrorCode::kInvalidInput,
          "the checkpoint has the LoRA tensor '" + stacked_->name(name) +
              "' for a module this model does not have or cannot adapt");
  for (size_t i = 0; i < adapters_.size() && !stacked_; ++i)
    for (const auto& name : adapters_[i].names)
      check(taken_.count({i, name}) > 0, ErrorCode::kInvalidInput,
            "LoRA adapter '" + adapters_[i].config.name + "' (" + adapters_[i].config.weights.string() +
                ") has the tensor '" + name + "' for a module this model does not have or cannot adapt");
}

size_t LoraAdapters::bytes() const {
  size_t total = 0;
  for (const auto& a : adapters_)
    if (a.weights) total += a.weights->bytes_taken();
  return total;
}

}  // namespace mpool::nn

namespace mpool::nn {

Weights without_parametrizations(const Weights& w) {
  return w.renamed([w](std::string_view name) -> std::optional<StoredName> {
    constexpr std::string_view kWeight = ".weight";
    if (name.size() <= kWeight.size() || name.substr(name.size() - kWeight.size()) != kWeight) return std::nullopt;
    std::string stored(name.substr(0, name.size() - kWeight.size()));
    stored += ".parametrizations.weight.original";
    if (!w.has(stored)) return std::nullopt;
    return StoredName{stored};
  });
}

}  // namespace mpool::nn
