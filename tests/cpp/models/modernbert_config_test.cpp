// The ModernBERT family's config.json reader (torch-free): both spellings of the
// layer pattern and rope thetas, with transformers' precedence and defaults, and
// the bounds the encoder relies on.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "models/modernbert/config.h"
#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "mpool/loading/json.h"

namespace mpool::models::modernbert {
namespace {

// A small config with `extra`'s keys ("key": value, ...) set over it.
ModernBertConfig read(const std::string& extra) {
  nlohmann::json json = nlohmann::json::parse(
      R"({"model_type": "modernbert", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 4,
          "num_attention_heads": 4, "intermediate_size": 48})");
  json.update(nlohmann::json::parse("{" + extra + "}"));
  return ModernBertConfig::from(loading::parse_model_config(loading::parse_json_object(json.dump(), "config.json")));
}

void expect_invalid(const std::string& extra, const std::string& part) {
  try {
    read(extra);
    ADD_FAILURE() << "no error; expected one containing '" << part << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput) << e.what();
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(ModernBertConfig, DefaultsAreTransformers) {
  const ModernBertConfig c = read("");
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_EQ(c.local_attention, 128);
  EXPECT_EQ(c.window_radius(), 64);
  EXPECT_EQ(c.sliding, std::vector<bool>({false, true, true, false}));  // every 3rd layer global, from 0
  EXPECT_EQ(c.global_rope.theta, 160000.0);
  EXPECT_EQ(c.local_rope.theta, 10000.0);
  EXPECT_EQ(c.global_rope.rotary_dim, 8);
  EXPECT_EQ(c.norm_eps, 1e-5);
  EXPECT_FALSE(c.norm_bias || c.attention_bias || c.mlp_bias);
}

TEST(ModernBertConfig, HubSpelling) {
  const ModernBertConfig c = read(R"("global_attn_every_n_layers": 2, "global_rope_theta": 1000.0,
                                     "local_rope_theta": 50.0, "local_attention": 7, "layer_norm_eps": 0.5)");
  EXPECT_EQ(c.sliding, std::vector<bool>({false, true, false, true}));
  EXPECT_EQ(c.global_rope.theta, 1000.0);
  EXPECT_EQ(c.local_rope.theta, 50.0);
  EXPECT_EQ(c.window_radius(), 3);
  EXPECT_EQ(c.norm_eps, 1e-5);  // layer_norm_eps is not ModernBERT's key
}

TEST(ModernBertConfig, TransformersFiveSpellingWinsOverTheHubKeys) {
  const ModernBertConfig c = read(
      R"("global_attn_every_n_layers": 2, "global_rope_theta": 1000.0, "local_rope_theta": 50.0,
         "layer_types": ["sliding_attention", "full_attention", "full_attention", "sliding_attention"],
         "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 7.0}})");
  EXPECT_EQ(c.sliding, std::vector<bool>({true, false, false, true}));
  EXPECT_EQ(c.global_rope.theta, 7.0);
  EXPECT_EQ(c.local_rope.theta, 50.0);  // sliding_attention absent: the hub key, as transformers' setdefault
}

TEST(ModernBertConfig, BadFieldsNameTheirKey) {
  expect_invalid(R"("num_attention_heads": 5)", "hidden_size 32 is not divisible by num_attention_heads 5");
  expect_invalid(R"("num_attention_heads": 32)", "must be even");
  expect_invalid(R"("layer_types": ["full_attention"])", "\"layer_types\" has 1 entries for 4 layers");
  expect_invalid(R"("layer_types": ["full_attention", "x", "full_attention", "full_attention"])",
                 "layer_types[1] is 'x'");
  expect_invalid(R"("global_attn_every_n_layers": 0)", "\"global_attn_every_n_layers\" must be a positive integer");
  expect_invalid(R"("local_attention": -1)", "\"local_attention\" must be in [0, 2147483647]");
  expect_invalid(R"("rope_parameters": {"sliding_attention": {"rope_type": "linear", "factor": 2}})",
                 "\"rope_parameters.sliding_attention\" has rope_type 'linear'");
  expect_invalid(R"("rope_scaling": {"type": "dynamic", "factor": 2})", "\"rope_scaling\" has rope_type 'dynamic'");
  expect_invalid(R"("rope_parameters": {"rope_type": "default", "rope_theta": 5})", "keyed by layer type");
  expect_invalid(R"("global_rope_theta": -3)", "rope_theta of the full_attention layers must be a finite number > 0");
  expect_invalid(R"("norm_eps": 0)", "\"norm_eps\" must be a positive number");
  expect_invalid(R"("hidden_activation": "nope")", "hidden_activation");
  expect_invalid(R"("num_hidden_layers": 70000)", "more than the 65536 mpool accepts");
}

}  // namespace
}  // namespace mpool::models::modernbert
