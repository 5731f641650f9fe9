#include "mpool/models/kit.h"

#include "mpool/base/error.h"
#include "mpool/loading/slow_tokenizer.h"
#include "mpool/loading/tensors.h"
#include "mpool/models/cross_encoder.h"

namespace mpool::models::kit {

namespace fs = std::filesystem;

namespace {

struct WeightsDtype {
  at::ScalarType dtype;
  bool int8 = false;
};

// The policy below; "int8" only where the family quantizes (`allows_int8`).
WeightsDtype choose_dtype(const NativeOptions& options, const std::string& family, bool allows_int8) {
  const bool cuda = !options.devices.empty() && options.devices.front().rfind("cuda", 0) == 0;
  const std::string name = options.dtype.value_or(cuda ? "bfloat16" : "float32");
  if (name == "int8") {
    check(allows_int8, ErrorCode::kInvalidInput,
          "dtype 'int8' is not supported for " + family +
              " models (float32, bfloat16, float16); int8 weights apply to the text families: BERT, JinaBERT, "
              "jina-embeddings-v3, ModernBERT, NV-Embed, the decoders and LLaVA");
    for (const auto& d : options.devices)
      check(d.rfind("cpu", 0) == 0, ErrorCode::kInvalidInput,
            "dtype 'int8' runs on the CPU only; device '" + d + "' takes float32, bfloat16 or float16");
    return {at::kFloat, true};
  }
  auto dtype = loading::parse_scalar_type(name);
  check(dtype && (*dtype == at::kFloat || *dtype == at::kBFloat16 || *dtype == at::kHalf), ErrorCode::kInvalidInput,
        "dtype '" + name + "' is not supported for " + family + " models (float32, bfloat16, float16" +
            (allows_int8 ? ", int8)" : ")"));
  return {*dtype, false};
}

}  // namespace

at::ScalarType pick_dtype(const NativeOptions& options, const std::string& family) {
  return choose_dtype(options, family, false).dtype;
}

fs::path require_tokenizer(const fs::path& dir, const loading::TokenizerOptions& options,
                           std::vector<std::string>* warnings) {
  const fs::path file = dir / "tokenizer.json";
  if (fs::is_regular_file(file) && !options.pattern && !options.lowercase) return file;
  // InvalidInput without a rank file or the slow files; with them, the conversion
  // runs once here so that what it cannot convert fails at registration.
  loading::TokenizerDocument doc = loading::read_tokenizer_document(dir, options);
  if (warnings)
    for (auto& w : doc.warnings) warnings->push_back(std::move(w));
  return dir;
}

std::unique_ptr<tokenizer::Tokenizer> open_tokenizer(const fs::path& path, const loading::TokenizerOptions& options) {
  if (!fs::is_directory(path)) return tokenizer::Tokenizer::from_file(path.string());
  const loading::TokenizerDocument doc = loading::read_tokenizer_document(path, options);
  return tokenizer::Tokenizer::from_json(doc.json, doc.source);
}

OptionSpec tokenizer_pattern_option() {
  return {"tokenizer_pattern", OptionSpec::Kind::kString,
          "split regex of a tiktoken rank file (default: tokenizer_config.json's \"pat_str\", else transformers' "
          "tiktoken pattern, with a warning)"};
}

loading::TokenizerOptions tokenizer_options(const NativeOptions& options) {
  loading::TokenizerOptions out;
  if (options.options.values.count("tokenizer_pattern"))
    out.pattern = options.options.get_string("tokenizer_pattern", "");
  return out;
}

int64_t pad_token_id(const fs::path& dir, const tokenizer::Tokenizer& tok, int64_t fallback) {
  std::optional<std::string> pad;
  if (auto tc = loading::load_tokenizer_config(dir)) pad = tc->special.pad_token;
  if (!pad)
    if (auto sm = loading::load_special_tokens_map(dir)) pad = sm->pad_token;
  if (pad)
    if (auto id = tok.token_to_id(*pad)) return *id;
  return fallback;
}

loading::SupportPredicate serves_model_types(std::vector<std::string> model_types, std::string what) {
  return [types = std::move(model_types), what = std::move(what)](const loading::ModelConfig& c,
                                                                 const loading::ModelLayout& layout) {
    if (std::find(types.begin(), types.end(), c.model_type) == types.end())
      return loading::FamilySupport::no("model_type '" + c.model_type + "' is not " + what);
    if (layout.weights.format == loading::WeightsFormat::kNone)
      return loading::FamilySupport::no("no weights found in " + layout.model_dir.string());
    return loading::FamilySupport::yes();
  };
}

loading::SupportPredicate embeds_or_reranks(loading::SupportPredicate serves) {
  return [serves = std::move(serves)](const loading::ModelConfig& config, const loading::ModelLayout& layout) {
    loading::FamilySupport s = serves(config, layout);
    if (s.supported)
      s.capabilities = {is_sequence_classifier(config) ? capabilities::Reranking::kName
                                                       : capabilities::TextEmbedding::kName};
    return s;
  };
}

size_t tokens_per_forward(const NativeOptions& options, size_t fallback) {
  const int64_t per_forward = options.options.get_int("tokens_per_forward", static_cast<int64_t>(fallback));
  check(per_forward >= 1 && per_forward <= 1 << 24, ErrorCode::kInvalidInput,
        "option tokens_per_forward must be in [1, 16777216], got " + std::to_string(per_forward));
  return static_cast<size_t>(per_forward);
}

BuildInputs build_inputs(const loading::ModelDirectory& directory, const NativeOptions& options,
                         const std::string& family, bool allows_int8) {
  const loading::ModelLayout& layout = directory.layout();
  loading::TokenizerOptions tokenizer_opts = tokenizer_options(options);
  // sentence_bert_config.json's do_lower_case, as sentence-transformers applies it.
  if (layout.sentence_transformers && layout.sentence_transformers->do_lower_case.value_or(false))
    tokenizer_opts.lowercase = true;
  std::vector<std::string> warnings;
  fs::path tokenizer = require_tokenizer(layout.tokenizer_dir, tokenizer_opts, &warnings);
  const WeightsDtype dtype = choose_dtype(options, family, allows_int8);
  return BuildInputs{layout,      std::move(tokenizer), std::move(tokenizer_opts), std::move(warnings),
                     dtype.dtype, loading::Checkpoint::open(layout.model_dir), dtype.int8};
}

double replica_memory_mb(double weight_bytes, double other_bytes) {
  return (weight_bytes + other_bytes) / (1024.0 * 1024.0) + kReplicaOverheadMb;
}

void fill_spec(NativeModel& model, const char* capability, double weight_bytes, double activation_bytes,
               size_t batch_budget, const NativeOptions& options, core::Loader loader) {
  model.weight_mb = weight_bytes / (1024.0 * 1024.0);
  core::ModelSpec& spec = model.spec;
  spec.capabilities = {capability};
  spec.memory_mb = replica_memory_mb(weight_bytes, activation_bytes);
  spec.devices = options.devices;
  spec.batch_budget = batch_budget;
  spec.loader = std::move(loader);
}

double measure_weights(const loading::Checkpoint& checkpoint, at::ScalarType dtype,
                       const std::function<void(const nn::Weights&)>& build, std::vector<std::string>& warnings,
                       bool int8) {
  const nn::Weights weights = nn::Weights::open(checkpoint, dtype, at::Device(at::kMeta)).with_int8_linears(int8);
  try {
    build(weights);
  } catch (const Error& e) {
    // The checkpoint does not fit config.json (a missing tensor, a wrong shape):
    // registration still succeeds and loading fails with this same error, as a
    // spawn failure of the request that needs the model. Budget for every tensor.
    if (e.code() != ErrorCode::kInvalidInput) throw;
    warnings.push_back(std::string("the weights do not match config.json, so loading will fail: ") + e.what());
    double bytes = 0;
    for (const auto& name : checkpoint.names()) {
      const auto ref = checkpoint.require(name);
      const at::ScalarType stored = loading::scalar_type(ref.info->dtype);
      bytes += static_cast<double>(ref.info->numel()) *
               static_cast<double>(at::elementSize(at::isFloatingType(stored) ? dtype : stored));
    }
    return bytes;
  }
  for (auto& w : weights.warnings()) warnings.push_back(std::move(w));
  return static_cast<double>(weights.bytes_taken());
}

ProbedModel open_probed_model(const nn::ProbeInput& in) {
  loading::ModelLayout layout = loading::describe_layout(in.get<std::string>("path"));
  loading::ModelConfig config = loading::load_model_config(layout.model_dir);
  const std::string dtype_name = in.get_or<std::string>("dtype", "float32");
  const bool int8 = dtype_name == "int8";
  const auto dtype = int8 ? std::optional<at::ScalarType>(at::kFloat) : loading::parse_scalar_type(dtype_name);
  check(dtype.has_value(), ErrorCode::kInvalidInput, "unknown dtype '" + dtype_name + "'");
  nn::Weights weights =
      nn::Weights::open(loading::Checkpoint::open(layout.model_dir), *dtype, at::kCPU).with_int8_linears(int8);
  return ProbedModel{std::move(layout), std::move(config), std::move(weights)};
}

}  // namespace mpool::models::kit
