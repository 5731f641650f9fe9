#include "mpool/models/sentence_embedder.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <numeric>

#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "mpool/loading/peft.h"
#include "mpool/loading/safetensors.h"
#include "mpool/models/kit.h"
#include "mpool/nn/weights.h"
#include "mpool/nn/lora.h"
#include "mpool/nn/stop.h"

namespace mpool::models {

std::vector<std::pair<size_t, size_t>> plan_forward_passes(const std::vector<size_t>& widths, size_t budget,
                                                           size_t pass_cost) {
  const size_t n = widths.size();
  // best[i]: the least cost of running the first i inputs; from[i]: where its last pass starts.
  std::vector<double> best(n + 1, 0.0);
  std::vector<size_t> from(n + 1, 0);
  for (size_t i = 1; i <= n; ++i) {
    const double width = static_cast<double>(widths[i - 1]);  // the widest of any pass ending at i
    best[i] = best[i - 1] + width + static_cast<double>(pass_cost);
    from[i] = i - 1;
    for (size_t j = i - 1; j-- > 0;) {
      const double rows = static_cast<double>(i - j);
      if (rows * width > static_cast<double>(budget)) break;
      const double cost = best[j] + rows * width + static_cast<double>(pass_cost);
      if (cost < best[i]) {
        best[i] = cost;
        from[i] = j;
      }
    }
  }
  std::vector<std::pair<size_t, size_t>> passes;
  for (size_t i = n; i > 0; i = from[i]) passes.emplace_back(from[i], i);
  std::reverse(passes.begin(), passes.end());
  return passes;
}

size_t sequence_limit(const loading::ModelLayout& layout, size_t max_positions) {
  // As sentence-transformers: sentence_bert_config.json's max_seq_length when
  // there is one (it overrides the tokenizer's), else the tokenizer's
  // model_max_length; never past the model's positions.
  if (const auto& st = layout.sentence_transformers; st && st->max_seq_length && *st->max_seq_length > 0)
    return std::min<size_t>(max_positions, static_cast<size_t>(*st->max_seq_length));
  size_t limit = max_positions;
  if (auto tc = loading::load_tokenizer_config(layout.tokenizer_dir); tc && tc->model_max_length)
    limit = std::min<size_t>(limit, static_cast<size_t>(*tc->model_max_length));
  return limit;
}

namespace {

bool ends_with(const std::string& s, std::string_view tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// modules.json, in order: a Transformer, then at most one Pooling, any Dense
// modules, at most one Normalize. Anything else would be skipped, and the
// embeddings would silently differ from the model's: it is refused.
void check_modules(const loading::ModelLayout& layout, const loading::SentenceTransformersLayout& st) {
  const std::string file = (layout.root / "modules.json").string();
  static const char* kStages[] = {"Transformer", "Pooling", "Dense", "Normalize"};
  int stage = -1;
  for (const auto& m : st.modules) {
    int s = -1;
    for (int k = 0; k < 4; ++k)
      if (ends_with(m.type, std::string(".") + kStages[k])) s = k;
    if (s < 0)
      throw Error(ErrorCode::kInvalidInput,
                  file + ": module \"" + m.name + "\" is a " + m.type +
                      ", which mpool does not run (it runs Transformer, Pooling, Dense and Normalize modules)");
    if (s < stage || (s == stage && s != 2))
      throw Error(ErrorCode::kInvalidInput,
                  file + ": module \"" + m.name + "\" (" + kStages[s] + ") follows a " + kStages[stage] +
                      " module; mpool runs a Transformer, then a Pooling, Dense modules and a Normalize, in that order");
    stage = s;
  }
}

DenseActivation dense_activation(const loading::DenseModuleConfig& d) {
  static const std::pair<const char*, DenseActivation> kNames[] = {
      {"Identity", DenseActivation::kIdentity}, {"Tanh", DenseActivation::kTanh},
      {"ReLU", DenseActivation::kRelu},         {"GELU", DenseActivation::kGelu},
      {"Sigmoid", DenseActivation::kSigmoid},   {"SiLU", DenseActivation::kSilu},
  };
  const std::string& a = d.activation;
  if (a.rfind("torch.", 0) == 0) {
    const std::string name = a.substr(a.rfind('.') + 1);
    for (const auto& [n, act] : kNames)
      if (name == n) return act;
  }
  throw Error(ErrorCode::kInvalidInput, d.config_file + ": \"activation_function\" is \"" + a +
                                            "\"; mpool runs torch.nn's Identity, Tanh, ReLU, GELU, Sigmoid and SiLU");
}

// The Dense modules, each checked against the width it receives (`width`: the
// pooled embedding's, then each module's output); their weights are checked on
// the meta device, without reading them.
std::vector<DenseStep> dense_steps(const loading::ModelLayout& layout, const loading::SentenceTransformersLayout& st,
                                   int64_t width) {
  std::vector<DenseStep> steps;
  for (const auto& d : st.dense) {
    for (const auto* name : {&d.input_name, &d.output_name})
      check(*name == "sentence_embedding", ErrorCode::kInvalidInput,
            d.config_file + ": this Dense module reads or writes \"" + *name +
                "\"; mpool runs Dense modules over the pooled \"sentence_embedding\" only");
    check(d.in_features == width, ErrorCode::kInvalidInput,
          d.config_file + ": \"in_features\" is " + std::to_string(d.in_features) + ", but the embedding it receives is " +
              std::to_string(width) + " wide");
    DenseStep step{layout.root / d.path, d.config_file, d.in_features, d.out_features, d.bias, dense_activation(d),
                   d.use_residual};
    (void)DenseLayer::load(step, at::Device(at::kMeta));
    steps.push_back(std::move(step));
    width = d.out_features;
  }
  return steps;
}

}  // namespace

double DenseStep::weight_bytes() const {
  const double matrix = static_cast<double>(out_features) * static_cast<double>(in_features);
  const double projection = residual && in_features != out_features ? matrix : 0.0;
  return 4.0 * (matrix + (bias ? static_cast<double>(out_features) : 0.0) + projection);
}

double EmbedderSettings::dense_weight_bytes() const {
  double bytes = 0;
  for (const DenseStep& step : dense) bytes += step.weight_bytes();
  return bytes;
}

void fill_embedder_spec(NativeModel& model, const EmbedderSettings& settings, double backbone_bytes,
                        double activation_bytes, const NativeOptions& options, core::Loader loader) {
  kit::fill_spec(model, capabilities::TextEmbedding::kName, backbone_bytes + settings.dense_weight_bytes(),
                 activation_bytes, settings.tokens_per_forward, options, std::move(loader));
}

DenseLayer DenseLayer::load(const DenseStep& step, at::Device device) {
  const nn::Weights w = nn::Weights::open(loading::Checkpoint::open(step.dir), at::kFloat, device);
  DenseLayer layer;
  layer.linear_ = nn::Linear::load(w, "linear", step.out_features, step.in_features, step.bias);
  if (step.residual && step.in_features != step.out_features)
    layer.projection_ = nn::Linear::load(w, "residual", step.out_features, step.in_features, /*bias=*/false);
  layer.activation_ = step.activation;
  layer.residual_ = step.residual;
  return layer;
}

at::Tensor DenseLayer::operator()(const at::Tensor& x_in) const {
  const at::Tensor x = x_in.to(at::kFloat);
  at::Tensor y = linear_(x);
  switch (activation_) {
    case DenseActivation::kIdentity: break;
    case DenseActivation::kTanh: y = at::tanh(y); break;
    case DenseActivation::kRelu: y = at::relu(y); break;
    case DenseActivation::kGelu: y = at::gelu(y); break;
    case DenseActivation::kSigmoid: y = at::sigmoid(y); break;
    case DenseActivation::kSilu: y = at::silu(y); break;
  }
  if (residual_) y = y + (projection_.defined() ? projection_(x) : x);
  return y;
}

EmbedderSettings embedder_settings(const loading::ModelLayout& layout, int64_t hidden_size, size_t max_seq_length,
                                   std::vector<PoolingMode> default_pooling, std::optional<int64_t> pooled_dimension) {
  EmbedderSettings s;
  s.pooling = std::move(default_pooling);
  s.max_seq_length = sequence_limit(layout, max_seq_length);
  if (auto tc = loading::load_tokenizer_config(layout.tokenizer_dir); tc && tc->truncation_side == "left")
    s.truncate_left = true;
  if (const auto& st = layout.sentence_transformers) {
    check_modules(layout, *st);
    if (st->pooling) {
      s.pooling = parse_pooling_modes(st->pooling->mode, "1_Pooling/config.json");
      s.include_prompt = st->pooling->include_prompt;
    }
    s.normalize = st->normalize;
    s.prompts = st->prompts;
    s.default_prompt_name = st->default_prompt_name;
  }
  s.dimension = pooled_dimension.value_or(hidden_size * static_cast<int64_t>(s.pooling.size()));
  if (const auto& st = layout.sentence_transformers; st && !st->dense.empty()) {
    s.dense = dense_steps(layout, *st, s.dimension);
    s.dimension = s.dense.back().out_features;
  }
  if (layout.has_config) {
    const loading::ModelConfig config = loading::load_model_config(layout.model_dir);
    const auto dims = config.raw.get_optional<std::vector<int64_t>>("matryoshka_dimensions");
    for (int64_t d : dims.value_or(std::vector<int64_t>{})) {
      check(d >= 1 && d <= s.dimension, ErrorCode::kInvalidInput,
            config.raw.where("matryoshka_dimensions") + " lists " + std::to_string(d) +
                ", not a width in [1, " + std::to_string(s.dimension) + "]");
      s.matryoshka_dimensions.push_back(d);
    }
  }
  return s;
}

SentenceEmbedder::SentenceEmbedder(std::unique_ptr<Backbone> backbone, std::unique_ptr<tokenizer::Tokenizer> tok,
                                   EmbedderSettings settings, std::shared_ptr<const Pooler> pooler)
    : backbone_(std::move(backbone)),
      full_(std::move(tok)),
      settings_(std::move(settings)),
      pooler_(pooler ? std::move(pooler) : std::make_shared<ModePooler>(settings_.pooling)) {
  full_->set_truncation(std::nullopt);
  full_->set_padding(std::nullopt);
  for (const DenseStep& step : settings_.dense) dense_.push_back(DenseLayer::load(step, backbone_->device()));
}

at::Tensor SentenceEmbedder::embed(const std::vector<std::string>& texts, const capabilities::EmbedOptions& options,
                                   capabilities::RequestContext& ctx) {
  const nn::StopScope stop(ctx);  // a pass ends within a layer once the request stops
  // The task: the request's, else the model's default prompt, else none. It
  // selects the prompt and, where the model has LoRA adapters, the adapter.
  std::string prompt;
  int adapter = -1;
  std::optional<std::string> task = options.task ? options.task : settings_.default_prompt_name;
  if (task) {
    for (size_t i = 0; i < settings_.adapters.size(); ++i)
      if (loading::adapter_serves_task(settings_.adapters[i], *task)) adapter = static_cast<int>(i);
    auto it = settings_.prompts.find(*task);
    if (it != settings_.prompts.end()) {
      prompt = it->second;
    } else if (adapter < 0) {
      std::string known;
      for (auto& [name, _] : settings_.prompts) known += (known.empty() ? "" : ", ") + name;
      for (auto& name : settings_.adapters) known += (known.empty() ? "" : ", ") + name + " (adapter)";
      throw Error(ErrorCode::kInvalidInput, "unknown task '" + *task + "'; this model's tasks: " +
                                                (known.empty() ? std::string("none (it has no prompts)") : known));
    }
  }
  // "text #i" among several; alone (a split call's sub-batch retries each input
  // alone, and the pool names the caller's index) just "the text".
  auto text_name = [&](size_t i) { return texts.size() == 1 ? std::string("the text") : "text #" + std::to_string(i); };
  std::vector<std::string> inputs;
  inputs.reserve(texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    check(!texts[i].empty(), ErrorCode::kInvalidInput, text_name(i) + " is empty");
    inputs.push_back(prompt + texts[i] + settings_.suffix);
  }
  // Tokenize without truncation, then cut to max_seq_length keeping the closing
  // special token(s), exactly as truncation before post-processing would.
  std::vector<tokenizer::Encoding> enc = full_->encode_batch(inputs, nullptr, true, 1);
  const size_t limit = settings_.max_seq_length;
  for (size_t i = 0; i < enc.size(); ++i) {
    if (enc[i].size() <= limit) continue;
    if (!options.truncate)
      throw Error(ErrorCode::kInvalidInput, text_name(i) + " has " + std::to_string(enc[i].size()) +
                                                " tokens; the model takes at most " + std::to_string(limit) +
                                                " (pass truncate=True to cut it)");
    auto& e = enc[i];
    size_t head = 0, tail = 0;  // leading ([CLS], <s>) and trailing ([SEP], </s>) special tokens stay
    while (tail < e.size() && e.special_tokens_mask[e.size() - 1 - tail]) ++tail;
    while (head < e.size() - tail && e.special_tokens_mask[head]) ++head;
    std::vector<size_t> keep(limit);
    if (settings_.truncate_left && head + tail < limit) {
      // The head, then the last tokens before the tail.
      std::iota(keep.begin(), keep.begin() + static_cast<std::ptrdiff_t>(head), 0);
      std::iota(keep.begin() + static_cast<std::ptrdiff_t>(head), keep.end() - static_cast<std::ptrdiff_t>(tail),
                e.size() - tail - (limit - head - tail));
    } else {
      std::iota(keep.begin(), keep.end() - static_cast<std::ptrdiff_t>(tail), 0);
    }
    for (size_t k = 0; k < tail; ++k) keep[limit - tail + k] = e.size() - tail + k;
    tokenizer::Encoding cut;
    for (size_t k : keep)
      cut.push(e.ids[k], e.tokens[k], e.offsets[k], e.char_offsets[k], e.word_ids[k], e.type_ids[k],
               e.special_tokens_mask[k]);
    e = std::move(cut);
  }
  // The leading positions masked out of pooling when include_prompt is false. As
  // sentence-transformers measures them: the tokenized prompt with its leading
  // special tokens ([CLS], <s>), truncated as a text is, less a closing one
  // ([SEP], </s>) if what is left ends with one. (A prompt longer than
  // max_seq_length so leaves the closing token to pool, as there.)
  size_t prompt_tokens = 0;
  if (!prompt.empty() && !settings_.include_prompt) {
    if (settings_.prompt_span == EmbedderSettings::PromptSpan::kPromptTokensOnly) {
      prompt_tokens = std::min(full_->encode(prompt, std::nullopt, /*add_special_tokens=*/false).size(), limit);
    } else {
      const tokenizer::Encoding p = full_->encode(prompt);
      size_t n = p.size();
      bool ends_special = n > 0 && p.special_tokens_mask.back();
      if (n > limit) {
        // Cut as the texts are: closing special tokens stay at the end; without
        // any, the last kept token is the limit-th (or the last, cut on the left).
        const bool closing = ends_special;
        n = limit;
        if (!closing && !settings_.truncate_left) ends_special = limit > 0 && p.special_tokens_mask[limit - 1];
      }
      prompt_tokens = n - (n > 0 && ends_special ? 1 : 0);
    }
  }

  // Shortest first, split where padding would cost more than another pass.
  std::vector<size_t> order(enc.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return enc[a].size() < enc[b].size(); });
  at::Tensor out = at::empty({static_cast<int64_t>(enc.size()), settings_.dimension}, at::kFloat);
  c10::InferenceMode inference;
  const nn::ActiveAdapter active(adapter);
  std::vector<size_t> widths(order.size());
  for (size_t i = 0; i < order.size(); ++i)
    widths[i] = settings_.pad_to_max_length_with ? settings_.max_seq_length : enc[order[i]].size();
  for (const auto& [start, end] : plan_forward_passes(widths, settings_.tokens_per_forward)) {
    ctx.throw_if_stopped();
    const int64_t rows = static_cast<int64_t>(end - start);
    const std::optional<int64_t> pad = settings_.pad_to_max_length_with;
    const int64_t width =
        pad ? static_cast<int64_t>(settings_.max_seq_length) : static_cast<int64_t>(enc[order[end - 1]].size());
    at::Tensor ids = pad ? at::full({rows, width}, *pad, at::kLong) : at::zeros({rows, width}, at::kLong),
               types = at::zeros({rows, width}, at::kLong),
               mask = pad ? at::ones({rows, width}, at::kLong) : at::zeros({rows, width}, at::kLong);
    auto ia = ids.accessor<int64_t, 2>(), ta = types.accessor<int64_t, 2>(), ma = mask.accessor<int64_t, 2>();
    for (int64_t r = 0; r < rows; ++r) {
      const auto& e = enc[order[start + r]];
      for (size_t k = 0; k < e.size(); ++k) {
        ia[r][k] = e.ids[k];
        ta[r][k] = e.type_ids[k];
        ma[r][k] = 1;
      }
    }
    at::Device dev = backbone_->device();
    at::Tensor hidden = backbone_->forward(ids.to(dev), types.to(dev), mask.to(dev));
    at::Tensor pool_mask = mask.to(dev);
    if (prompt_tokens > 0) pool_mask.narrow(1, 0, std::min<int64_t>(prompt_tokens, width)).zero_();
    at::Tensor pooled = (*pooler_)(hidden, pool_mask, ids.to(dev));
    for (const DenseLayer& dense : dense_) pooled = dense(pooled);
    if (options.normalize.value_or(settings_.normalize)) pooled = pooled / pooled.norm(2, -1, true).clamp_min(1e-12);
    pooled = pooled.to(at::kCPU, at::kFloat);
    // Each pooled row to its input's place: one scatter, not rows x (select, select, copy).
    const std::vector<int64_t> places(order.begin() + static_cast<std::ptrdiff_t>(start),
                                      order.begin() + static_cast<std::ptrdiff_t>(end));
    out.index_copy_(0, at::tensor(places, at::kLong), pooled);
  }
  return out;
}

}  // namespace mpool::models
