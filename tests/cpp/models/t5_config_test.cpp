// T5Config::from (torch-free): T5Config's defaults, the feed-forward forms
// transformers accepts, and the checks that name the key.
#include <gtest/gtest.h>

#include <string>

#include "models/t5/config.h"
#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "mpool/loading/json.h"

namespace mpool::models::t5 {
namespace {

T5Config t5(const std::string& fields) {
  const std::string json = R"({"model_type": "t5")" + (fields.empty() ? "" : ", " + fields) + "}";
  return T5Config::from(loading::parse_model_config(loading::parse_json_object(json, "config.json")));
}

void expect_invalid(const std::string& fields, const std::string& part) {
  try {
    t5(fields);
    ADD_FAILURE() << "no error for " << fields << "; expected one containing '" << part << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput) << e.what();
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(T5Config, TakesT5ConfigDefaultsForWhatTheFileLeavesOut) {
  const T5Config c = t5("");
  EXPECT_EQ(c.vocab_size, 32128);
  EXPECT_EQ(c.d_model, 512);
  EXPECT_EQ(c.d_kv, 64);
  EXPECT_EQ(c.d_ff, 2048);
  EXPECT_EQ(c.num_layers, 6);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.relative_attention_num_buckets, 32);
  EXPECT_EQ(c.relative_attention_max_distance, 128);
  EXPECT_DOUBLE_EQ(c.layer_norm_epsilon, 1e-6);
  EXPECT_EQ(c.feed_forward_proj, "relu");
  EXPECT_EQ(c.dense_act_fn, nn::Activation::kRelu);
  EXPECT_FALSE(c.is_gated_act);
}

TEST(T5Config, ReadsAnXxlEncoderWhoseHeadsTimesDkvIsNotDModel) {
  const T5Config c = t5(R"("vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
                           "num_heads": 64, "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-06)");
  EXPECT_EQ(c.inner_dim(), 4096);
  EXPECT_EQ(c.d_ff, 10240);
  EXPECT_EQ(c.num_layers, 24);
  EXPECT_TRUE(c.is_gated_act);
  const T5Config small = t5(R"("d_model": 32, "d_kv": 12, "num_heads": 3)");
  EXPECT_EQ(small.inner_dim(), 36);
}

TEST(T5Config, GatedGeluMeansTheTanhGeluAsTransformersKeepsIt) {
  EXPECT_EQ(t5(R"("feed_forward_proj": "gated-gelu")").dense_act_fn, nn::Activation::kGeluTanh);
  EXPECT_EQ(t5(R"("feed_forward_proj": "gelu")").dense_act_fn, nn::Activation::kGelu);
  EXPECT_FALSE(t5(R"("feed_forward_proj": "gelu")").is_gated_act);
}

TEST(T5Config, AcceptsGatedAndPlainFormsOfAnyKnownActivation) {
  const T5Config silu = t5(R"("feed_forward_proj": "gated-silu")");
  EXPECT_TRUE(silu.is_gated_act);
  EXPECT_EQ(silu.dense_act_fn, nn::Activation::kSilu);
  const T5Config relu = t5(R"("feed_forward_proj": "gated-relu")");
  EXPECT_TRUE(relu.is_gated_act);
  EXPECT_EQ(relu.dense_act_fn, nn::Activation::kRelu);
  const T5Config gelu_new = t5(R"("feed_forward_proj": "gated-gelu_new")");
  EXPECT_EQ(gelu_new.dense_act_fn, nn::Activation::kGeluTanh);
  EXPECT_EQ(t5(R"("feed_forward_proj": "silu")").dense_act_fn, nn::Activation::kSilu);
}

TEST(T5Config, StoredDenseActFnAndIsGatedActOverrideWhatFeedForwardProjImplies) {
  const T5Config c =
      t5(R"("feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_pytorch_tanh", "is_gated_act": true)");
  EXPECT_EQ(c.dense_act_fn, nn::Activation::kGeluTanh);
  EXPECT_TRUE(c.is_gated_act);
  const T5Config overridden = t5(R"("feed_forward_proj": "relu", "dense_act_fn": "silu", "is_gated_act": true)");
  EXPECT_EQ(overridden.dense_act_fn, nn::Activation::kSilu);
  EXPECT_TRUE(overridden.is_gated_act);
}

TEST(T5Config, BadFeedForwardFormsAndActivationsNameTheirKey) {
  expect_invalid(R"("feed_forward_proj": "gelu-new")", "config.json: \"feed_forward_proj\" is 'gelu-new'");
  expect_invalid(R"("feed_forward_proj": "gated-gelu-new")", "\"feed_forward_proj\" is 'gated-gelu-new'");
  expect_invalid(R"("feed_forward_proj": "gated-nope")", "config.json: \"feed_forward_proj\": activation 'nope'");
  expect_invalid(R"("feed_forward_proj": "gated")", "\"feed_forward_proj\": activation 'gated'");
  expect_invalid(R"("dense_act_fn": "nope")", "config.json: \"dense_act_fn\": activation 'nope'");
  expect_invalid(R"("feed_forward_proj": 3)", "\"feed_forward_proj\"");
}

TEST(T5Config, SizesMustBePositiveAndBoundedAndNameTheKey) {
  expect_invalid(R"("d_model": 0)", "config.json: \"d_model\" is 0");
  expect_invalid(R"("d_kv": -1)", "config.json: \"d_kv\" is -1");
  expect_invalid(R"("d_ff": 0)", "\"d_ff\" is 0");
  expect_invalid(R"("num_heads": 0)", "\"num_heads\" is 0");
  expect_invalid(R"("vocab_size": 0)", "\"vocab_size\" is 0");
  expect_invalid(R"("num_layers": 0)", "\"num_layers\" is 0");
  expect_invalid(R"("num_layers": 70000)", "\"num_layers\" is 70000; it must be in [1, 65536]");
  expect_invalid(R"("d_model": 3000000000)", "\"d_model\" is 3000000000");
  expect_invalid(R"("num_heads": 65536, "d_kv": 65536)",
                 "config.json: \"num_heads\" x \"d_kv\" (65536 x 65536) exceeds");
}

TEST(T5Config, BucketsNeedAnExactBucketPerDirectionAndAMaxDistanceBeyondThem) {
  EXPECT_EQ(t5(R"("relative_attention_num_buckets": 4, "relative_attention_max_distance": 2)")
                .relative_attention_num_buckets, 4);
  expect_invalid(R"("relative_attention_num_buckets": 2)",
                 "\"relative_attention_num_buckets\" is 2; the encoder needs at least 4");
  expect_invalid(R"("relative_attention_num_buckets": 0)", "\"relative_attention_num_buckets\" is 0");
  expect_invalid(R"("relative_attention_num_buckets": 32, "relative_attention_max_distance": 8)",
                 "\"relative_attention_max_distance\" is 8; it must exceed the 8 exact buckets");
  expect_invalid(R"("relative_attention_max_distance": 0)", "\"relative_attention_max_distance\" is 0");
}

TEST(T5Config, EpsilonMustBePositiveAndFiniteAndModelTypeMustBeT5) {
  expect_invalid(R"("layer_norm_epsilon": 0)", "config.json: \"layer_norm_epsilon\" must be a positive finite number");
  expect_invalid(R"("layer_norm_epsilon": -1e-6)", "\"layer_norm_epsilon\"");
  expect_invalid(R"("is_gated_act": "yes")", "\"is_gated_act\"");
  try {
    T5Config::from(loading::parse_model_config(loading::parse_json_object(R"({"model_type": "bert"})", "config.json")));
    ADD_FAILURE() << "bert accepted as t5";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model_type 'bert' is not t5"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mpool::models::t5
