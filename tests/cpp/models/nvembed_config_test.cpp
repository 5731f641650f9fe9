// NV-Embed's config.json reader (torch-free): the nested Mistral text_config,
// the latent-attention pooler's keys with NV-Embed's defaults, and the errors
// that name the key.
#include <gtest/gtest.h>

#include <string>

#include "models/nvembed/config.h"
#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "mpool/loading/json.h"

namespace mpool::models::nvembed {
namespace {

loading::ModelConfig config(const std::string& json) {
  return loading::parse_model_config(loading::parse_json_object(json, "config.json"));
}

const std::string kText =
    R"("text_config": {"model_type": "mistral", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
       "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 64,
       "max_position_embeddings": 64, "sliding_window": 16})";

template <typename F>
void expect_invalid(F f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing '" << part << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput) << e.what();
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(NvEmbedConfig, ReadsTheTextConfigAndEveryLatentAttentionKey) {
  const NvEmbedConfig c = NvEmbedConfig::from(config(R"({"model_type": "nvembed", )" + kText + R"(,
      "latent_attention_config": {"num_latents_value": 16, "latent_dim": 24, "num_cross_heads": 2,
                                  "cross_dim_head": 8, "hidden_dim": 32, "output_normalize": false}})"));
  EXPECT_EQ(c.text.model_type, "mistral");
  EXPECT_EQ(c.text.hidden_size, 32);
  EXPECT_EQ(c.text.num_kv_heads, 2);
  EXPECT_EQ(c.latent.num_latents, 16);
  EXPECT_EQ(c.latent.latent_dim, 24);
  EXPECT_EQ(c.latent.heads, 2);
  EXPECT_EQ(c.latent.head_dim, 8);
  EXPECT_EQ(c.latent.hidden_dim, 32);
  EXPECT_FALSE(c.latent.output_normalize);
  EXPECT_EQ(c.latent.ff_mult, 4);
}

TEST(NvEmbedConfig, BidirMistralAndNvEmbedsLatentDefaults) {
  // NV-Embed's own files: text_config "bidir_mistral", latent_attention_config
  // holding only its model_type (LatentAttentionConfig's defaults apply).
  std::string text = kText;
  text.replace(text.find("\"mistral\""), 9, "\"bidir_mistral\"");
  text.replace(text.find("\"hidden_size\": 32"), 17, "\"hidden_size\": 4096");
  const NvEmbedConfig c = NvEmbedConfig::from(config(R"({"model_type": "nvembed", )" + text +
                                                     R"(, "latent_attention_config": {"model_type": "latent_attention"}})"));
  EXPECT_EQ(c.text.model_type, "mistral");
  EXPECT_EQ(c.latent.num_latents, 512);
  EXPECT_EQ(c.latent.latent_dim, 4096);
  EXPECT_EQ(c.latent.heads, 8);
  EXPECT_EQ(c.latent.head_dim, 4096);
  EXPECT_EQ(c.latent.hidden_dim, 4096);
  EXPECT_TRUE(c.latent.output_normalize);
}

TEST(NvEmbedConfig, ErrorsNameTheKey) {
  const std::string latent = R"("latent_attention_config": {"hidden_dim": 32})";
  expect_invalid([&] { NvEmbedConfig::from(config(R"({"model_type": "nvembed", )" + kText + "}")); },
                 "config.json: \"latent_attention_config\" is missing");
  expect_invalid([&] { NvEmbedConfig::from(config(R"({"model_type": "nvembed", )" + latent + "}")); },
                 "config.json: \"text_config\" is missing");
  std::string llama = kText;
  llama.replace(llama.find("\"mistral\""), 9, "\"llama\"");
  expect_invalid([&] { NvEmbedConfig::from(config(R"({"model_type": "nvembed", )" + llama + ", " + latent + "}")); },
                 "\"text_config.model_type\" is 'llama'");
  expect_invalid(
      [&] {
        NvEmbedConfig::from(config(R"({"model_type": "nvembed", )" + kText +
                                   R"(, "latent_attention_config": {"hidden_dim": 32, "num_cross_heads": -1}})"));
      },
      "\"latent_attention_config.num_cross_heads\" must be in [1, ");
  expect_invalid(
      [&] {
        NvEmbedConfig::from(
            config(R"({"model_type": "nvembed", )" + kText + R"(, "latent_attention_config": {"hidden_dim": 64}})"));
      },
      "\"latent_attention_config.hidden_dim\" is 64, but the decoder's hidden_size is 32");
  expect_invalid(
      [&] {
        NvEmbedConfig::from(config(R"({"model_type": "nvembed", )" + kText +
                                   R"(, "latent_attention_config": {"hidden_dim": 32, "num_cross_heads": 65536,
                                       "cross_dim_head": 65536}})"));
      },
      "is too large");
  expect_invalid([&] { NvEmbedConfig::from(config(R"({"model_type": "mistral"})")); },
                 "model_type 'mistral' is not nvembed");
}

}  // namespace
}  // namespace mpool::models::nvembed
