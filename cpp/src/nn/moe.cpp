#include "mpool/nn/moe.h"

#include <algorithm>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "mpool/nn/int8.h"
#include "mpool/nn/kernels.h"

namespace mpool::nn {

Router Router::load(const Weights& in, std::string_view name, const MoeShape& shape) {
  const Weights w = in.with_int8_linears(false);
  Router r;
  r.top_k = shape.top_k;
  r.normalize = shape.normalize_top_k;
  r.kind = shape.router;
  if (r.kind == RouterKind::kSoftmax) {
    r.gate = Linear::load(w, name, shape.num_experts, shape.hidden, /*bias=*/false);
    return r;
  }
  // DeepSeek keeps the router in float32 whatever the model's dtype.
  const Weights f = w.as(at::kFloat);
  r.gate = Linear::load(f, name, shape.num_experts, shape.hidden, /*bias=*/false);
  r.bias = f.sub(name).get("e_score_correction_bias", {shape.num_experts});
  r.groups = shape.groups;
  r.top_groups = shape.top_groups;
  r.scale = shape.scale;
  return r;
}

Routing Router::grouped_sigmoid(const at::Tensor& x) const {
  const at::Tensor scores = sigmoid_per_element(gate(x.to(at::kFloat)));
  const int64_t tokens = scores.size(0), experts = scores.size(1), per_group = experts / groups;
  const at::Tensor choice = scores + bias;
  const at::Tensor group_scores = std::get<0>(at::topk(choice.view({tokens, groups, per_group}), 2, -1)).sum(-1);
  const at::Tensor best_groups = std::get<1>(at::topk(group_scores, top_groups, -1));
  const at::Tensor keep = at::zeros({tokens, groups, 1}, scores.options().dtype(at::kBool))
                              .scatter_(1, best_groups.unsqueeze(-1), true)
                              .expand({tokens, groups, per_group})
                              .reshape({tokens, experts});
  const at::Tensor chosen =
      std::get<1>(at::topk(choice.masked_fill(keep.logical_not(), -std::numeric_limits<float>::infinity()), top_k, -1));
  at::Tensor weights = scores.gather(1, chosen);
  if (normalize) weights = weights / (weights.sum(-1, /*keepdim=*/true) + 1e-20);
  return Routing{chosen, (weights * scale).to(x.scalar_type())};
}

Routing Router::operator()(const at::Tensor& x) const {
  if (kind == RouterKind::kGroupedSigmoid) return grouped_sigmoid(x);
  const at::Tensor logits = gate(x);
  const at::Tensor probs = at::softmax(logits, -1, at::kFloat);
  auto [top, experts] = at::topk(probs, top_k, -1);
  if (normalize) top = top / top.sum(-1, /*keepdim=*/true);
  return Routing{experts, top.to(logits.scalar_type())};
}

Experts Experts::load(const Weights& w, std::string_view name, const MoeShape& shape) {
  const Weights e = w.sub(name);
  const int64_t n = shape.num_experts, inner = shape.expert_inner, hidden = shape.hidden;
  Experts out;
  out.inner = inner;
  out.num_experts = n;
  if (e.has("gate_up_proj")) {  // stacked, as transformers 5 holds them in memory
    out.gate_up = e.linear_weight("gate_up_proj", {n, 2 * inner, hidden});
    out.down = e.linear_weight("down_proj", {n, hidden, inner});
    return out;
  }
  std::vector<std::pair<std::string, Shape>> gate_up, down;
  for (int64_t i = 0; i < n; ++i) {
    const std::string p = std::to_string(i) + ".";
    gate_up.push_back({p + "gate_proj.weight", {inner, hidden}});
    gate_up.push_back({p + "up_proj.weight", {inner, hidden}});
    down.push_back({p + "down_proj.weight", {hidden, inner}});
  }
  auto stacked = [](LinearWeight w, const Shape& shape) {
    if (w.weight.defined()) w.weight = w.weight.view(shape);
    if (w.int8.q.defined()) {
      w.int8.q = w.int8.q.view(shape);
      w.int8.scales = w.int8.scales.view({shape[0], shape[1]});
    }
    return w;
  };
  out.gate_up = stacked(e.fused_linear_weight("", {n * 2 * inner, hidden}, gate_up), {n, 2 * inner, hidden});
  out.down = stacked(e.fused_linear_weight("", {n * hidden, inner}, down), {n, hidden, inner});
  return out;
}

namespace {

// Expert `e`'s projection of x, float or int8.
at::Tensor project(const LinearWeight& w, int64_t e, const at::Tensor& x) {
  if (w.int8.q.defined()) return int8::linear(x, {w.int8.q.select(0, e), w.int8.scales.select(0, e)}, {});
  return kernels::linear(x, w.weight.select(0, e));
}

}  // namespace

at::Tensor Experts::run(int64_t expert, const at::Tensor& x) const {
  const at::Tensor h = project(gate_up, expert, x);
  return project(down, expert, at::silu(h.narrow(-1, 0, inner)) * h.narrow(-1, inner, inner));
}

at::Tensor Experts::operator()(const at::Tensor& x, const Routing& routing) const {
  const int64_t top_k = routing.experts.size(1);
  at::Tensor out = at::zeros_like(x);
  // Each token's expert outputs are added in ascending expert order.
  if (x.size(0) == 1) {
    const at::Tensor ids = routing.experts.view(-1).to(at::kCPU);
    std::vector<std::pair<int64_t, int64_t>> chosen;  // (expert, slot)
    for (int64_t s = 0; s < top_k; ++s) chosen.push_back({ids[s].item<int64_t>(), s});
    std::sort(chosen.begin(), chosen.end());
    const at::Tensor weights = routing.weights.view({top_k, 1});
    for (const auto& [expert, slot] : chosen) out.add_(run(expert, x) * weights[slot]);
    return out;
  }
  // Slots sorted by expert: each expert's tokens form one contiguous run.
  const at::Tensor flat = routing.experts.reshape(-1);
  const at::Tensor order = std::get<1>(at::sort(flat, /*stable=*/true, 0, /*descending=*/false));
  const at::Tensor tokens = order.div(top_k, "floor");
  const at::Tensor weights = routing.weights.reshape(-1).index_select(0, order).unsqueeze(1);
  const at::Tensor counts = at::bincount(flat, {}, num_experts).to(at::kCPU);
  const auto count = counts.accessor<int64_t, 1>();
  int64_t offset = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    const int64_t c = count[e];
    if (c == 0) continue;
    const at::Tensor rows = tokens.narrow(0, offset, c);
    out.index_add_(0, rows, run(e, x.index_select(0, rows)) * weights.narrow(0, offset, c));
    offset += c;
  }
  return out;
}

MoeFeedForward MoeFeedForward::load(const Weights& w, const MoeShape& shape) {
  MoeFeedForward m;
  m.router_ = Router::load(w, "gate", shape);
  m.experts_ = Experts::load(w, "experts", shape);
  if (shape.shared_inner > 0) {
    m.shared_ = Mlp::load(w.sub("shared_expert"), shape.hidden, shape.shared_inner, Activation::kSilu,
                          /*gated=*/true, /*bias=*/false);
    m.shared_gate_ = Linear::load(w, "shared_expert_gate", 1, shape.hidden, /*bias=*/false);
  }
  if (shape.shared_experts_inner > 0)
    m.shared_experts_ = Mlp::load(w.sub("shared_experts"), shape.hidden, shape.shared_experts_inner,
                                  Activation::kSilu, /*gated=*/true, /*bias=*/false);
  return m;
}

Routing MoeFeedForward::route(const at::Tensor& x) const { return router_(x.reshape({-1, x.size(-1)})); }

at::Tensor MoeFeedForward::operator()(const at::Tensor& x) const {
  const at::Tensor flat = x.reshape({-1, x.size(-1)});
  at::Tensor out = experts_(flat, router_(flat));
  if (shared_) out = out + sigmoid_per_element(shared_gate_(flat)) * (*shared_)(flat);
  if (shared_experts_) out = out + (*shared_experts_)(flat);
  return out.view(x.sizes());
}

}  // namespace mpool::nn
