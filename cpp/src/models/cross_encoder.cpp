#include "mpool/models/cross_encoder.h"

#include <map>

#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <filesystem>
#include <numeric>

#include "mpool/base/error.h"
#include "mpool/loading/json.h"
#include "mpool/models/sentence_embedder.h"
#include "mpool/nn/stop.h"

namespace mpool::models {
namespace {

namespace fs = std::filesystem;

// A CrossEncoder activation path ("torch.nn.modules.activation.Sigmoid") as ours.
ScoreActivation activation_named(const std::string& path, const std::string& where) {
  const std::string name = path.substr(path.rfind('.') == std::string::npos ? 0 : path.rfind('.') + 1);
  if (name == "Sigmoid") return ScoreActivation::kSigmoid;
  if (name == "Identity") return ScoreActivation::kIdentity;
  if (name == "Tanh") return ScoreActivation::kTanh;
  throw Error(ErrorCode::kInvalidInput,
              where + " names activation '" + path + "'; mpool applies Sigmoid, Identity or Tanh");
}

// Whether transformers' tokenizer returns token_type_ids (so the model gets them):
// tokenizer_config.json's model_input_names when it lists them, else the
// class's default (BERT-style classes do; RoBERTa's, XLM-R's and the generic
// fast tokenizer do not).
bool tokenizer_sends_type_ids(const loading::ModelLayout& layout) {
  const std::optional<loading::TokenizerConfig> tc = loading::load_tokenizer_config(layout.tokenizer_dir);
  if (!tc) return true;  // a bare tokenizer.json: nothing decides otherwise
  if (auto names = tc->raw.get_optional<std::vector<std::string>>("model_input_names"))
    return std::find(names->begin(), names->end(), "token_type_ids") != names->end();
  std::string cls = tc->tokenizer_class.value_or("");
  if (cls.size() > 4 && cls.compare(cls.size() - 4, 4, "Fast") == 0) cls.resize(cls.size() - 4);
  static const char* const kWithTypes[] = {"BertTokenizer", "BertJapaneseTokenizer", "ElectraTokenizer",
                                           "DebertaTokenizer", "DebertaV2Tokenizer", "MobileBertTokenizer",
                                           "SqueezeBertTokenizer", "ConvBertTokenizer", "FunnelTokenizer",
                                           "RoFormerTokenizer", "XLNetTokenizer", "LayoutLMTokenizer"};
  return std::any_of(std::begin(kWithTypes), std::end(kWithTypes), [&](const char* c) { return cls == c; });
}

}  // namespace

bool is_sequence_classifier(const loading::ModelConfig& config) {
  const std::string suffix = "ForSequenceClassification";
  return std::any_of(config.architectures.begin(), config.architectures.end(), [&](const std::string& a) {
    return a.size() >= suffix.size() && a.compare(a.size() - suffix.size(), suffix.size(), suffix) == 0;
  });
}

CrossEncoderSettings cross_encoder_settings(const loading::ModelLayout& layout, const loading::ModelConfig& config,
                                            size_t max_positions) {
  CrossEncoderSettings s;
  s.max_seq_length = sequence_limit(layout, max_positions);
  s.type_ids = tokenizer_sends_type_ids(layout);
  if (auto tc = loading::load_tokenizer_config(layout.tokenizer_dir); tc && tc->truncation_side == "left")
    s.truncate_left = true;
  const loading::JsonView& raw = config.raw;
  if (auto labels = raw.child("id2label"); labels && !labels->json().empty())
    s.num_labels = static_cast<int64_t>(labels->json().size());
  else
    s.num_labels = raw.get_or<int64_t>("num_labels", 2);  // transformers' PretrainedConfig default
  check(s.num_labels >= 1 && s.num_labels <= 1 << 20, ErrorCode::kInvalidInput,
        raw.where("num_labels") + " must be a label count in [1, 1048576]");

  // The activation, where sentence-transformers wrote it (newest layout first).
  std::optional<std::pair<std::string, std::string>> named;  // path, where
  const fs::path st_config = layout.root / "config_sentence_transformers.json";
  if (fs::exists(st_config)) {
    const loading::JsonView st = loading::load_json_object(st_config);
    if (auto path = st.get_optional<std::string>("activation_fn")) named = {{*path, st.where("activation_fn")}};
    // The default prompt goes before each pair's first text, as CrossEncoder's
    // predict does (prepend_prompt_to_texts).
    const auto prompts = st.get_or<std::map<std::string, std::string>>("prompts", {});
    if (auto name = st.get_optional<std::string>("default_prompt_name")) {
      const auto it = prompts.find(*name);
      check(it != prompts.end(), ErrorCode::kInvalidInput,
            st.where("default_prompt_name") + " names prompt \"" + *name + "\", which \"prompts\" does not define");
      s.prompt = it->second;
    }
  }
  if (!named) {
    if (auto st = raw.child("sentence_transformers")) {
      if (auto path = st->get_optional<std::string>("activation_fn")) named = {{*path, st->where("activation_fn")}};
    }
  }
  if (!named) {
    if (auto path = raw.get_optional<std::string>("sbert_ce_default_activation_function"))
      named = {{*path, raw.where("sbert_ce_default_activation_function")}};
  }
  if (named)
    s.activation = activation_named(named->first, named->second);
  else
    s.activation = s.num_labels == 1 ? ScoreActivation::kSigmoid : ScoreActivation::kIdentity;
  return s;
}

CrossEncoder::CrossEncoder(std::unique_ptr<Scorer> scorer, std::unique_ptr<tokenizer::Tokenizer> tok,
                           CrossEncoderSettings settings)
    : scorer_(std::move(scorer)), tokenizer_(std::move(tok)), settings_(std::move(settings)) {
  tokenizer_->set_padding(std::nullopt);
}

at::Tensor CrossEncoder::score(const std::vector<capabilities::TextPair>& pairs,
                               const capabilities::ScoreOptions& options, capabilities::RequestContext& ctx) {
  const nn::StopScope stop(ctx);  // a pass ends within a layer once the request stops
  std::vector<std::string> first, second;
  first.reserve(pairs.size());
  second.reserve(pairs.size());
  // "pair #i" among several; alone (as a split call's sub-batch retries each
  // input, the pool naming the caller's index) just "the pair".
  auto pair_name = [&](size_t i) { return pairs.size() == 1 ? std::string("the pair") : "pair #" + std::to_string(i); };
  for (size_t i = 0; i < pairs.size(); ++i) {
    check(!pairs[i].first.empty() && !pairs[i].second.empty(), ErrorCode::kInvalidInput,
          pair_name(i) + " has an empty " + (pairs[i].first.empty() ? "query" : "document"));
    first.push_back(settings_.prompt + pairs[i].first);
    second.push_back(pairs[i].second);
  }
  // The pair is cut longest-first to the model's length, as CrossEncoder's
  // tokenizer call (truncation=True) does; or refused when truncate is off.
  const size_t limit = settings_.max_seq_length;
  if (options.truncate)
    tokenizer_->set_truncation(tokenizer::TruncationParams{
        limit, 0, tokenizer::TruncationStrategy::kLongestFirst,
        settings_.truncate_left ? tokenizer::Direction::kLeft : tokenizer::Direction::kRight});
  else
    tokenizer_->set_truncation(std::nullopt);
  std::vector<tokenizer::Encoding> enc = tokenizer_->encode_batch(first, &second, true, 1);
  for (size_t i = 0; i < enc.size(); ++i)
    check(enc[i].size() <= limit, ErrorCode::kInvalidInput,
          pair_name(i) + " has " + std::to_string(enc[i].size()) + " tokens; the model takes at most " +
              std::to_string(limit) + " (pass truncate=True to cut it)");

  // Shortest first, split where padding would cost more than another pass.
  std::vector<size_t> order(enc.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return enc[a].size() < enc[b].size(); });
  at::Tensor out = at::empty({static_cast<int64_t>(enc.size()), settings_.num_labels}, at::kFloat);
  c10::InferenceMode inference;
  std::vector<size_t> widths(order.size());
  for (size_t i = 0; i < order.size(); ++i) widths[i] = enc[order[i]].size();
  for (const auto& [start, end] : plan_forward_passes(widths, settings_.tokens_per_forward)) {
    ctx.throw_if_stopped();
    const int64_t rows = static_cast<int64_t>(end - start);
    const int64_t width = static_cast<int64_t>(enc[order[end - 1]].size());
    at::Tensor ids = at::zeros({rows, width}, at::kLong), types = at::zeros({rows, width}, at::kLong),
               mask = at::zeros({rows, width}, at::kLong);
    auto ia = ids.accessor<int64_t, 2>(), ta = types.accessor<int64_t, 2>(), ma = mask.accessor<int64_t, 2>();
    for (int64_t r = 0; r < rows; ++r) {
      const auto& e = enc[order[start + static_cast<size_t>(r)]];
      for (size_t k = 0; k < e.size(); ++k) {
        ia[r][static_cast<int64_t>(k)] = e.ids[k];
        ta[r][static_cast<int64_t>(k)] = settings_.type_ids ? e.type_ids[k] : 0;
        ma[r][static_cast<int64_t>(k)] = 1;
      }
    }
    const at::Device dev = scorer_->device();
    at::Tensor logits = scorer_->forward(ids.to(dev), types.to(dev), mask.to(dev)).to(at::kCPU, at::kFloat);
    check(logits.dim() == 2 && logits.size(0) == rows && logits.size(1) == settings_.num_labels,
          ErrorCode::kModelError,
          "the classifier returned logits of shape " + std::string(c10::str(logits.sizes())) + " for " +
              std::to_string(rows) + " pairs and " + std::to_string(settings_.num_labels) + " labels");
    if (!options.raw) {
      switch (settings_.activation) {
        case ScoreActivation::kSigmoid: logits = at::sigmoid(logits); break;
        case ScoreActivation::kTanh: logits = at::tanh(logits); break;
        case ScoreActivation::kIdentity: break;
      }
    }
    float* dst = out.data_ptr<float>();
    const float* src = logits.contiguous().const_data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r)
      std::copy(src + r * settings_.num_labels, src + (r + 1) * settings_.num_labels,
                dst + static_cast<int64_t>(order[start + static_cast<size_t>(r)]) * settings_.num_labels);
  }
  return out;
}

}  // namespace mpool::models
