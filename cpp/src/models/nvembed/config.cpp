#include "models/nvembed/config.h"

#include <memory>

#include <nlohmann/json.hpp>

#include "mpool/base/error.h"

namespace mpool::models::nvembed {

namespace {

// The text_config as the decoder family reads it: NV-Embed writes its
// bidirectional Mistral as "bidir_mistral" (or plain "mistral"); the network is
// Mistral's, run without the causal mask.
loading::ModelConfig text_config(const loading::ModelConfig& c) {
  const auto node = c.raw.child("text_config");
  check(node.has_value(), ErrorCode::kInvalidInput,
        c.raw.where("text_config") + " is missing: NV-Embed needs its Mistral decoder's config there");
  const std::string type = node->get<std::string>("model_type");
  check(type == "mistral" || type == "bidir_mistral", ErrorCode::kInvalidInput,
        node->where("model_type") + " is '" + type + "'; NV-Embed's decoder is mistral (or bidir_mistral)");
  nlohmann::json text = node->json();
  text["model_type"] = "mistral";
  auto root = std::make_shared<const nlohmann::json>(std::move(text));
  return loading::parse_model_config(loading::JsonView(root, root.get(), c.raw.file(), "text_config"));
}

int64_t positive(const loading::JsonView& v, const char* key, int64_t fallback) {
  const int64_t value = v.get_or<int64_t>(key, fallback);
  check(value > 0 && value <= loading::kMaxConfigDimension, ErrorCode::kInvalidInput,
        v.where(key) + " must be in [1, " + std::to_string(loading::kMaxConfigDimension) + "], got " +
            std::to_string(value));
  return value;
}

}  // namespace

NvEmbedConfig NvEmbedConfig::from(const loading::ModelConfig& c) {
  check(c.model_type == "nvembed", ErrorCode::kInvalidInput,
        "config.json: model_type '" + c.model_type + "' is not nvembed");
  NvEmbedConfig out;
  out.text = decoder::DecoderConfig::from(text_config(c));
  check(!out.text.is_mla() && out.text.moe.num_experts == 0, ErrorCode::kInvalidInput,
        "config.json: NV-Embed's text_config must be a dense Mistral decoder");

  const auto l = c.raw.child("latent_attention_config");
  check(l.has_value(), ErrorCode::kInvalidInput,
        c.raw.where("latent_attention_config") + " is missing: NV-Embed needs its latent-attention pooler's config");
  LatentAttentionConfig& a = out.latent;
  a.num_latents = positive(*l, "num_latents_value", a.num_latents);
  a.latent_dim = positive(*l, "latent_dim", a.latent_dim);
  a.heads = positive(*l, "num_cross_heads", a.heads);
  a.head_dim = positive(*l, "cross_dim_head", a.head_dim);
  a.hidden_dim = positive(*l, "hidden_dim", a.hidden_dim);
  a.output_normalize = l->get_or<bool>("output_normalize", a.output_normalize);
  check(a.heads * a.head_dim <= loading::kMaxConfigDimension, ErrorCode::kInvalidInput,
        l->where("num_cross_heads") + " times " + l->where("cross_dim_head") + " is too large");
  check(a.hidden_dim == out.text.hidden_size, ErrorCode::kInvalidInput,
        l->where("hidden_dim") + " is " + std::to_string(a.hidden_dim) + ", but the decoder's hidden_size is " +
            std::to_string(out.text.hidden_size) + ": the pooler reads the decoder's token states");
  return out;
}

}  // namespace mpool::models::nvembed
