// The families' config.json readers (torch-free): what they accept, and the
// bounds that keep the model code's sizes, allocations and arithmetic sane.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "mpool/loading/json.h"
#include "models/bert/config.h"
#include "models/clip/config.h"
#include "models/decoder/config.h"
#include "models/flux/config.h"
#include "models/jinabert/config.h"
#include "models/jinav3/config.h"
#include "models/llava/config.h"
#include "models/siglip/config.h"
#include "models/vae/config.h"

namespace mpool::models {
namespace {

loading::ModelConfig config(const std::string& json) {
  return loading::parse_model_config(loading::parse_json_object(json, "config.json"));
}

const std::string kLlama =
    R"("model_type": "llama", "vocab_size": 100, "hidden_size": 32, "num_attention_heads": 4,
       "intermediate_size": 64, "max_position_embeddings": 64)";
const std::string kRoberta =
    R"("model_type": "roberta", "vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2,
       "num_attention_heads": 4, "intermediate_size": 64)";

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

TEST(FamilyConfigs, AcceptSmallConfigs) {
  auto l = decoder::DecoderConfig::from(config("{" + kLlama + R"(, "num_hidden_layers": 3})"));
  EXPECT_EQ(l.num_layers, 3);
  EXPECT_EQ(l.sliding_window.size(), 3u);
  EXPECT_EQ(l.head_dim, 8);
  auto b = bert::BertConfig::from(config("{" + kRoberta + R"(, "max_position_embeddings": 66, "pad_token_id": 1})"));
  EXPECT_TRUE(b.padding_offset_positions);
  EXPECT_EQ(b.pad_token_id, 1);
}

TEST(FamilyConfigs, KeysLeftOutTakeEachConfigClassesDefault) {
  auto with_type = [](const std::string& type, const std::string& extra) {
    std::string j = "{" + kLlama + R"(, "num_hidden_layers": 2)" + extra + "}";
    j.replace(j.find("llama"), 5, type);
    return decoder::DecoderConfig::from(config(j));
  };
  // MistralConfig slides by 4096 unless the file says null; Qwen2Config's 4096
  // applies once use_sliding_window is on; Phi3Config and LlamaConfig have none.
  EXPECT_EQ(with_type("mistral", "").sliding_window, std::vector<int64_t>({4096, 4096}));
  EXPECT_EQ(with_type("mistral", R"(, "sliding_window": null)").sliding_window, std::vector<int64_t>({0, 0}));
  EXPECT_EQ(with_type("qwen2", R"(, "use_sliding_window": true)").sliding_window, std::vector<int64_t>({4096, 4096}));
  EXPECT_EQ(with_type("qwen2", "").sliding_window, std::vector<int64_t>({0, 0}));
  EXPECT_EQ(with_type("phi3", "").sliding_window, std::vector<int64_t>({0, 0}));
  EXPECT_EQ(with_type("llama", "").sliding_window, std::vector<int64_t>({0, 0}));
  // Phi3Config's rms_norm_eps is 1e-5; the others' 1e-6.
  EXPECT_DOUBLE_EQ(with_type("phi3", "").rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(with_type("mistral", "").rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(with_type("llama", "").rms_norm_eps, 1e-6);
}

TEST(FamilyConfigs, LayerCountIsBoundedBeforeAnythingIsAllocatedPerLayer) {
  // 4e12 layers: the per-layer sliding-window table alone would be 32 TB.
  expect_invalid([] { decoder::DecoderConfig::from(config("{" + kLlama + R"(, "num_hidden_layers": 4000000000000})")); },
                 "config.json: \"num_hidden_layers\" is 4000000000000, more than the 65536 mpool accepts");
  expect_invalid(
      [] {
        bert::BertConfig::from(config("{" + kRoberta.substr(0, kRoberta.find("\"num_hidden_layers\"")) +
                                      R"("num_hidden_layers": 65537, "num_attention_heads": 4, "intermediate_size": 64,
                                         "max_position_embeddings": 66})"));
      },
      "more than the 65536 mpool accepts");
}

TEST(FamilyConfigs, DimensionsAreBounded) {
  expect_invalid(
      [] {
        decoder::DecoderConfig::from(config(
            R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 4294967296, "num_attention_heads": 4,
                "num_hidden_layers": 1, "intermediate_size": 64, "max_position_embeddings": 64})"));
      },
      "\"hidden_size\" is 4294967296, more than the 2147483647 mpool accepts");
}

TEST(FamilyConfigs, RobertaPadTokenMustLeavePositions) {
  // Positions start at pad_token_id + 1: a pad id past the position table left
  // a negative number of positions (and an out-of-range embedding row).
  expect_invalid([] { bert::BertConfig::from(config("{" + kRoberta + R"(, "max_position_embeddings": 514, "pad_token_id": 900})")); },
                 "pad_token_id (900) must be in [0, max_position_embeddings - 1) = [0, 513)");
  expect_invalid([] { bert::BertConfig::from(config("{" + kRoberta + R"(, "max_position_embeddings": 514, "pad_token_id": -1})")); },
                 "pad_token_id (-1)");
  // bert does not offset positions: its pad id is not a position.
  std::string bert = kRoberta;
  bert.replace(bert.find("roberta"), 7, "bert");
  EXPECT_EQ(bert::BertConfig::from(config("{" + bert + R"(, "max_position_embeddings": 8, "pad_token_id": 900})")).pad_token_id,
            900);
  expect_invalid([] { bert::BertConfig::from(config("{" + kRoberta + R"(, "max_position_embeddings": 8, "type_vocab_size": -2})")); },
                 "\"type_vocab_size\" is -2");
}

TEST(FamilyConfigs, JinaBertIsRecognizedAsTheHubWritesIt) {
  // jina-embeddings-v2-base-en: model_type bert, the remote code's architecture, ALiBi, GEGLU.
  std::string bert = kRoberta;
  bert.replace(bert.find("roberta"), 7, "bert");
  const std::string hub = "{" + bert + R"(, "max_position_embeddings": 8192, "architectures": ["JinaBertForMaskedLM"],
      "position_embedding_type": "alibi", "feed_forward_type": "geglu", "emb_pooler": "mean"})";
  EXPECT_TRUE(jinabert::is_jina_bert(config(hub)));
  const auto j = jinabert::JinaBertConfig::from(config(hub));
  EXPECT_EQ(j.feed_forward, jinabert::FeedForwardType::kGeglu);
  EXPECT_EQ(j.max_tokens(), 8192);
  EXPECT_EQ(j.type_vocab_size, 2);
  // The bert family refuses what it would get wrong.
  expect_invalid([&] { bert::BertConfig::from(config(hub)); }, "\"position_embedding_type\" is 'alibi'");
  // ALiBi alone, or the architecture alone (the remote config defaults to ALiBi), or jina_bert.
  EXPECT_TRUE(jinabert::is_jina_bert(config("{" + bert + R"(, "position_embedding_type": "alibi"})")));
  EXPECT_TRUE(jinabert::is_jina_bert(config("{" + bert + R"(, "architectures": ["JinaBertModel"]})")));
  std::string jina = kRoberta;
  jina.replace(jina.find("roberta"), 7, "jina_bert");
  EXPECT_EQ(jinabert::JinaBertConfig::from(config("{" + jina + R"(, "max_position_embeddings": 64})")).feed_forward,
            jinabert::FeedForwardType::kOriginal);
  // A plain BERT or a roberta is not JinaBert.
  EXPECT_FALSE(jinabert::is_jina_bert(config("{" + bert + "}")));
  EXPECT_FALSE(jinabert::is_jina_bert(config("{" + kRoberta + R"(, "position_embedding_type": "alibi"})")));
  expect_invalid([&] { jinabert::JinaBertConfig::from(config("{" + bert + R"(, "max_position_embeddings": 64})")); },
                 "is a JinaBert model only with");
  expect_invalid(
      [&] {
        jinabert::JinaBertConfig::from(config("{" + bert + R"(, "max_position_embeddings": 64,
            "architectures": ["JinaBertModel"], "position_embedding_type": "absolute"})"));
      },
      "\"position_embedding_type\" is 'absolute'");
  expect_invalid(
      [&] {
        jinabert::JinaBertConfig::from(config("{" + bert + R"(, "max_position_embeddings": 64,
            "position_embedding_type": "alibi", "feed_forward_type": "swiglu"})"));
      },
      "\"feed_forward_type\" is 'swiglu'");
  expect_invalid([&] { jinabert::is_jina_bert(config("{" + bert + R"(, "position_embedding_type": 3})")); },
                 "position_embedding_type");
}

TEST(FamilyConfigs, JinaV3ReadsRopeBaseAndTaskInstructions) {
  std::string v3 = kRoberta;
  v3.replace(v3.find("roberta"), 7, "jina_embeddings_v3");
  const std::string base = "{" + v3 + R"(, "max_position_embeddings": 8194)";
  // No rope_parameters: JinaEmbeddingsV3Config's default base, 20000.
  const auto plain = jinav3::JinaV3Config::from(config(base + "}"));
  EXPECT_DOUBLE_EQ(plain.rope.theta, 20000.0);
  EXPECT_EQ(plain.rope.rotary_dim, 8);
  EXPECT_EQ(plain.type_vocab_size, 1);
  EXPECT_DOUBLE_EQ(plain.layer_norm_eps, 1e-5);
  EXPECT_TRUE(plain.task_instructions.empty());
  const auto j = jinav3::JinaV3Config::from(config(base + R"(, "rope_parameters": {"rope_type": "default",
      "rope_theta": 500.0}, "task_instructions": {"retrieval.query": "Q: ", "separation": ""}})"));
  EXPECT_DOUBLE_EQ(j.rope.theta, 500.0);
  ASSERT_EQ(j.task_instructions.size(), 2u);
  EXPECT_EQ(j.task_instructions.at("retrieval.query"), "Q: ");
  expect_invalid([&] { jinav3::JinaV3Config::from(config(base + R"(, "task_instructions": {"a": 1}})")); },
                 "\"task_instructions\".a must be a string");
  expect_invalid([&] { jinav3::JinaV3Config::from(config(base + R"(, "partial_rotary_factor": 0.5})")); },
                 "\"partial_rotary_factor\" must be 1");
  expect_invalid(
      [&] {
        jinav3::JinaV3Config::from(config(base + R"(, "rope_parameters": {"rope_type": "linear", "factor": 2.0}})"));
      },
      "rope_type 'linear'");
  // The hub's remote-code layout is recognized, and the bert family's reader is not its.
  std::string xlmr = kRoberta;
  xlmr.replace(xlmr.find("roberta"), 7, "xlm-roberta");
  EXPECT_TRUE(jinav3::is_remote_code_layout(
      config("{" + xlmr + R"(, "position_embedding_type": "rotary", "rotary_emb_base": 20000.0})")));
  EXPECT_FALSE(jinav3::is_remote_code_layout(config("{" + xlmr + "}")));
  EXPECT_FALSE(jinav3::is_remote_code_layout(config(base + "}")));
  expect_invalid([&] { jinav3::JinaV3Config::from(config("{" + xlmr + "}")); }, "jina_embeddings_v3");
  // The remote-code config reads: rotary_emb_base (default 10000), the stacked adapters' tasks, rank and alpha.
  const std::string remote = "{" + xlmr + R"(, "position_embedding_type": "rotary", "max_position_embeddings": 8194)";
  const auto r = jinav3::JinaV3Config::from(config(remote + R"(, "rotary_emb_base": 20000.0,
      "lora_adaptations": ["retrieval.query", "separation"], "lora_rank": 4, "lora_alpha": 1})"));
  EXPECT_TRUE(r.remote_code);
  EXPECT_DOUBLE_EQ(r.rope.theta, 20000.0);
  EXPECT_EQ(r.lora_adaptations, (std::vector<std::string>{"retrieval.query", "separation"}));
  EXPECT_EQ(r.lora_rank, 4);
  EXPECT_DOUBLE_EQ(r.lora_alpha, 1.0);
  EXPECT_DOUBLE_EQ(jinav3::JinaV3Config::from(config(remote + "}")).rope.theta, 10000.0);
  expect_invalid([&] { jinav3::JinaV3Config::from(config(remote + R"(, "lora_rank": 0})")); }, "\"lora_rank\"");
  expect_invalid([&] { jinav3::JinaV3Config::from(config(remote + R"(, "lora_adaptations": "x"})")); },
                 "lora_adaptations");
  EXPECT_FALSE(plain.remote_code);
}

TEST(FamilyConfigs, RopeScalingBounds) {
  const std::string head = "{" + kLlama + R"(, "num_hidden_layers": 1, "rope_scaling": )";
  expect_invalid([&] { decoder::DecoderConfig::from(config(head + R"({"type": "dynamic", "factor": 1e300}})")); },
                 "max_position_embeddings x factor must be at most 2147483647");
  EXPECT_EQ(decoder::DecoderConfig::from(config(head + R"({"type": "dynamic", "factor": 4}})")).rope.factor, 4);
  expect_invalid(
      [&] {
        decoder::DecoderConfig::from(config(head + R"({"type": "longrope", "short_factor": [1, 1, 1, 1], "long_factor": [1, 1, 1, 1],
                                                 "original_max_position_embeddings": 0}})"));
      },
      "\"original_max_position_embeddings\" must be in [1, 2147483647], got 0");
  expect_invalid(
      [&] {
        decoder::DecoderConfig::from(config(head + R"({"type": "longrope", "short_factor": [1, 1, 1, 1], "long_factor": [1, 1, 1, 1],
                                                 "factor": -2}})"));
      },
      "\"factor\" must be > 0");
}

TEST(FamilyConfigs, RopeKeysReadAsEachFamilysTransformersClassReadsThem) {
  // llama, mistral and qwen rotate whole heads under a default rope whatever
  // partial_rotary_factor says; phi3 rotates its part.
  const std::string llama = "{" + kLlama + R"(, "num_hidden_layers": 1, "partial_rotary_factor": 0.5)";
  const auto whole = decoder::DecoderConfig::from(config(llama + "}"));
  EXPECT_EQ(whole.rope.rotary_dim, whole.head_dim);
  std::string phi3 = llama;
  phi3.replace(phi3.find("llama"), 5, "phi3");
  const auto part = decoder::DecoderConfig::from(config(phi3 + "}"));
  EXPECT_EQ(part.rope.rotary_dim, part.head_dim / 2);
  // A top-level original_max_position_embeddings wins over the rope node's.
  const auto yarn = decoder::DecoderConfig::from(config(
      "{" + kLlama + R"(, "num_hidden_layers": 1, "original_max_position_embeddings": 16,
       "rope_scaling": {"type": "yarn", "factor": 2, "original_max_position_embeddings": 32}})"));
  EXPECT_EQ(yarn.rope.original_max_position_embeddings, 16);
  // Phi3Config renames an old "yarn" type to longrope, and its class defaults
  // original_max_position_embeddings to 4096 when the file has no top-level key.
  const std::string factors = R"("short_factor": [1, 1], "long_factor": [2, 2])";  // rotary dim 4
  const auto renamed = decoder::DecoderConfig::from(
      config(phi3 + R"(, "original_max_position_embeddings": 16, "rope_scaling": {"type": "yarn", )" + factors + "}}"));
  EXPECT_EQ(renamed.rope.type, "longrope");
  EXPECT_EQ(renamed.rope.original_max_position_embeddings, 16);
  const auto class_default = decoder::DecoderConfig::from(
      config(phi3 + R"(, "rope_scaling": {"type": "longrope", "original_max_position_embeddings": 32, )" + factors + "}}"));
  EXPECT_EQ(class_default.rope.original_max_position_embeddings, 4096);
}

TEST(FamilyConfigs, RobertaWithoutAPadTokenIdTakesRobertaConfigsDefaultOfOne) {
  EXPECT_EQ(bert::BertConfig::from(config("{" + kRoberta + R"(, "max_position_embeddings": 514})")).pad_token_id, 1);
  EXPECT_EQ(bert::BertConfig::from(config("{" + kRoberta + R"(, "max_position_embeddings": 514, "pad_token_id": null})")).pad_token_id, 1);
  std::string bert = kRoberta;
  bert.replace(bert.find("roberta"), 7, "bert");
  EXPECT_EQ(bert::BertConfig::from(config("{" + bert + R"(, "max_position_embeddings": 514})")).pad_token_id, 0);
}

const std::string kQwen3Moe =
    R"("model_type": "qwen3_moe", "vocab_size": 100, "hidden_size": 32, "num_attention_heads": 4,
       "intermediate_size": 64, "max_position_embeddings": 64, "num_hidden_layers": 4,
       "moe_intermediate_size": 16, "num_experts_per_tok": 2)";

TEST(MoeConfigs, Qwen3MoeReadsEitherExpertCountKeyAndPlacesExpertsAsTransformersDoes) {
  // transformers 5 writes num_local_experts; hub files say num_experts.
  auto a = decoder::DecoderConfig::from(config("{" + kQwen3Moe + R"(, "num_local_experts": 8})"));
  auto b = decoder::DecoderConfig::from(config("{" + kQwen3Moe + R"(, "num_experts": 8})"));
  EXPECT_EQ(a.moe.num_experts, 8);
  EXPECT_EQ(b.moe.num_experts, 8);
  EXPECT_TRUE(a.qk_norm);
  EXPECT_EQ(a.moe.shared_expert_intermediate_size, 0);
  EXPECT_EQ(a.moe.sparse_layers, std::vector<bool>({true, true, true, true}));
  // Every 2nd layer (1-based), minus layer 3.
  auto c = decoder::DecoderConfig::from(
      config("{" + kQwen3Moe + R"(, "num_experts": 8, "decoder_sparse_step": 2, "mlp_only_layers": [3]})"));
  EXPECT_EQ(c.moe.sparse_layers, std::vector<bool>({false, true, false, false}));
  EXPECT_FALSE(c.is_moe_layer(0));
  EXPECT_TRUE(c.is_moe_layer(1));
  // Absent keys take transformers' defaults.
  auto d = decoder::DecoderConfig::from(config("{" + kLlama + R"(, "num_hidden_layers": 2})"));
  EXPECT_EQ(d.moe.num_experts, 0);
  EXPECT_FALSE(d.is_moe_layer(0));
}

TEST(MoeConfigs, Qwen2MoeHasQkvBiasAndASharedExpert) {
  std::string json = "{" + kQwen3Moe + R"(, "num_experts": 8, "shared_expert_intermediate_size": 48})";
  json.replace(json.find("qwen3_moe"), 9, "qwen2_moe");
  auto q = decoder::DecoderConfig::from(config(json));
  EXPECT_TRUE(q.qkv_bias);
  EXPECT_FALSE(q.o_bias);
  EXPECT_FALSE(q.qk_norm);
  EXPECT_EQ(q.moe.shared_expert_intermediate_size, 48);
  EXPECT_EQ(q.feed_forward_width(), 2 * 16 + 48);  // two routed experts and the shared one, above 64
  json.replace(json.find(": 48"), 4, ": 0");
  expect_invalid([&] { decoder::DecoderConfig::from(config(json)); },
                 "config.json: \"shared_expert_intermediate_size\" must be a positive integer");
}

TEST(MoeConfigs, SlidingWindowsWithoutLayerTypesFollowEachModelTypesRule) {
  const std::string sliding = R"(, "num_experts": 8, "use_sliding_window": true, "sliding_window": 8, "max_window_layers": 3})";
  // Qwen3-MoE: every layer; Qwen2-MoE: the even layers below max_window_layers.
  EXPECT_EQ(decoder::DecoderConfig::from(config("{" + kQwen3Moe + sliding)).sliding_window,
            std::vector<int64_t>({8, 8, 8, 8}));
  std::string qwen2 = "{" + kQwen3Moe + sliding;
  qwen2.replace(qwen2.find("qwen3_moe"), 9, "qwen2_moe");
  EXPECT_EQ(decoder::DecoderConfig::from(config(qwen2)).sliding_window, std::vector<int64_t>({8, 0, 8, 0}));
}

TEST(MoeConfigs, ErrorsNameTheKey) {
  auto with = [](const std::string& extra) { return config("{" + kQwen3Moe + ", " + extra + "}"); };
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("num_experts": 1)")); },
                 "config.json: \"num_experts_per_tok\" (2) is more than the number of experts (1)");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("num_experts": 0)")); },
                 "config.json: \"num_experts\" must be a positive integer");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("num_local_experts": 0)")); },
                 "config.json: \"num_local_experts\" must be a positive integer");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("num_experts": 8, "num_local_experts": 4)")); },
                 "config.json: \"num_experts\" (8) and \"num_local_experts\" (4) disagree");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("num_experts": 8, "moe_intermediate_size": 0)")); },
                 "config.json: \"moe_intermediate_size\" must be a positive integer");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("num_experts": 8, "decoder_sparse_step": 0)")); },
                 "config.json: \"decoder_sparse_step\" must be a positive integer");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("num_experts": 8, "mlp_only_layers": [4])")); },
                 "config.json: \"mlp_only_layers\" holds 4, not a layer in [0, 4)");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("num_experts": 70000)")); },
                 "config.json: \"num_experts\" is 70000, more than the 65536 mpool accepts");
}

const std::string kDeepseek =
    R"("model_type": "deepseek_v3", "architectures": ["DeepseekV3ForCausalLM"], "vocab_size": 100,
       "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 3, "intermediate_size": 64,
       "max_position_embeddings": 256, "q_lora_rank": 24, "kv_lora_rank": 16, "qk_nope_head_dim": 16,
       "qk_rope_head_dim": 8, "v_head_dim": 12, "head_dim": 8, "n_routed_experts": 8, "n_group": 4,
       "topk_group": 2, "num_experts_per_tok": 3, "moe_intermediate_size": 16, "n_shared_experts": 2,
       "first_k_dense_replace": 1)";

TEST(DeepseekConfigs, ReadsMlaAndGroupedRoutingWithDenseFirstLayers) {
  auto d = decoder::DecoderConfig::from(config("{" + kDeepseek + "}"));
  EXPECT_TRUE(d.is_mla());
  EXPECT_EQ(d.mla.q_lora_rank, 24);
  EXPECT_EQ(d.mla.kv_lora_rank, 16);
  EXPECT_EQ(d.head_dim, 24);  // qk_nope + qk_rope; the file's head_dim (the rope part) is not it
  EXPECT_EQ(d.rope.rotary_dim, 8);
  EXPECT_TRUE(d.mla.rope_interleave);
  EXPECT_DOUBLE_EQ(d.mla.softmax_scale, 1.0 / std::sqrt(24.0));
  EXPECT_TRUE(d.moe.grouped_sigmoid);
  EXPECT_EQ(d.moe.num_experts, 8);
  EXPECT_EQ(d.moe.n_group, 4);
  EXPECT_EQ(d.moe.topk_group, 2);
  EXPECT_TRUE(d.moe.norm_topk_prob);  // transformers' default
  EXPECT_DOUBLE_EQ(d.moe.routed_scaling_factor, 2.5);
  EXPECT_EQ(d.moe.shared_experts_intermediate_size, 32);
  EXPECT_EQ(d.moe.sparse_layers, std::vector<bool>({false, true, true}));
  EXPECT_EQ(d.feed_forward_width(), 3 * 16 + 32);  // routed plus shared experts outgrow the dense MLP
  // q_lora_rank null: a plain q_proj; num_local_experts is the other spelling.
  auto p = decoder::DecoderConfig::from(
      config("{" + kDeepseek + R"(, "q_lora_rank": null, "num_local_experts": 8, "rope_interleave": false})"));
  EXPECT_EQ(p.mla.q_lora_rank, 0);
  EXPECT_FALSE(p.mla.rope_interleave);
}

TEST(DeepseekConfigs, YarnMscaleAllDimScalesTheSoftmaxInEitherRopeSpelling) {
  const std::string yarn =
      R"({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 1.0,
          "mscale_all_dim": 0.7})";
  const double m = 0.1 * 0.7 * std::log(4.0) + 1.0;
  for (const std::string key : {"rope_parameters", "rope_scaling"}) {
    auto d = decoder::DecoderConfig::from(config("{" + kDeepseek + ", \"" + key + "\": " + yarn + "}"));
    EXPECT_EQ(d.rope.type, "yarn") << key;
    EXPECT_DOUBLE_EQ(d.mla.softmax_scale, m * m / std::sqrt(24.0)) << key;
    EXPECT_DOUBLE_EQ(d.rope.attention_factor, (0.1 * std::log(4.0) + 1.0) / m) << key;
  }
}

TEST(DeepseekConfigs, KimiK2IsServedOnlyWhenItNamesTheDeepseekArchitecture) {
  std::string kimi = "{" + kDeepseek + "}";
  kimi.replace(kimi.find("deepseek_v3"), 11, "kimi_k2");
  EXPECT_TRUE(decoder::DecoderConfig::from(config(kimi)).is_mla());
  kimi.replace(kimi.find("DeepseekV3ForCausalLM"), 21, "KimiForCausalLM");
  expect_invalid([&] { decoder::DecoderConfig::from(config(kimi)); },
                 "model_type 'kimi_k2' is served only when \"architectures\" names DeepseekV3ForCausalLM");
}

TEST(DeepseekConfigs, ErrorsNameTheKey) {
  auto with = [](const std::string& extra) { return config("{" + kDeepseek + ", " + extra + "}"); };
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("num_experts_per_tok": 9)")); },
                 "\"num_experts_per_tok\" (9) is more than the number of experts (8)");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("num_experts_per_tok": 5)")); },
                 "\"num_experts_per_tok\" (5) is more than the experts of \"topk_group\" groups (4)");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("topk_group": 5)")); },
                 "\"topk_group\" (5) is more than \"n_group\" (4)");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("n_group": 3)")); },
                 "\"n_routed_experts\" (8) is not divisible by \"n_group\" (3)");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("n_group": 8)")); },
                 "\"n_group\" (8) leaves fewer than 2 experts per group");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("n_group": 0)")); },
                 "\"n_group\" must be a positive integer");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("n_routed_experts": 8, "num_local_experts": 4)")); },
                 "\"n_routed_experts\" (8) and \"num_local_experts\" (4) disagree");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("scoring_func": "softmax")")); },
                 "\"scoring_func\" is 'softmax'; only 'sigmoid' is supported");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("topk_method": "greedy")")); },
                 "\"topk_method\" is 'greedy'; only 'noaux_tc' is supported");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("kv_lora_rank": 0)")); },
                 "\"kv_lora_rank\" must be a positive integer");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("v_head_dim": -1)")); },
                 "\"v_head_dim\" must be a positive integer");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("routed_scaling_factor": 0)")); },
                 "\"routed_scaling_factor\" must be a finite number > 0");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("n_shared_experts": -1)")); },
                 "\"n_shared_experts\" must be in [0, 65536], got -1");
  // Latent attention rotates the whole qk_rope_head_dim: a scaled rope on part of it is refused.
  expect_invalid([&] {
    decoder::DecoderConfig::from(with(R"("partial_rotary_factor": 0.5, "rope_scaling": {"type": "yarn", "factor": 2.0})"));
  },
                 "\"partial_rotary_factor\" is 0.500000 with rope type 'yarn'; this architecture rotates whole heads");
  expect_invalid([&] { decoder::DecoderConfig::from(with(R"("first_k_dense_replace": -1)")); },
                 "\"first_k_dense_replace\" must be >= 0, got -1");
}

TEST(TwoTowerConfigs, ClipTakesCLIPConfigDefaultsForWhatTheFileLeavesOut) {
  auto c = clip::ClipConfig::from(config(R"({"model_type": "clip", "vision_config": {"patch_size": 14}})"));
  EXPECT_EQ(c.text.hidden_size, 512);
  EXPECT_EQ(c.text.num_heads, 8);
  EXPECT_EQ(c.text.max_positions, 77);
  EXPECT_EQ(c.vision.hidden_size, 768);
  EXPECT_EQ(c.vision.grid(), 16);
  EXPECT_EQ(c.projection_dim, 512);
  EXPECT_EQ(c.vision.act, nn::Activation::kQuickGelu);
  EXPECT_FALSE(c.pool_at_largest_id());
  auto legacy = clip::ClipConfig::from(config(R"({"model_type": "clip", "text_config": {"eos_token_id": 2}})"));
  EXPECT_TRUE(legacy.pool_at_largest_id());
}

TEST(LlavaConfigs, ALlamaTextConfigWrittenAsADiffGetsLlamaConfigDefaults) {
  // llava-hf/llava-1.5-7b-hf's config.json, as it is on the hub.
  auto c = llava::LlavaConfig::from(config(R"({"model_type": "llava", "image_token_index": 32000,
      "projector_hidden_act": "gelu", "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
      "text_config": {"model_type": "llama", "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "vocab_size": 32064},
      "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
                        "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768}})"));
  EXPECT_EQ(c.text.hidden_size, 4096);
  EXPECT_EQ(c.text.num_layers, 32);
  EXPECT_EQ(c.text.intermediate_size, 11008);
  EXPECT_EQ(c.text.max_position_embeddings, 4096);
  EXPECT_EQ(c.text.vocab_size, 32064);
  EXPECT_EQ(c.vision.num_patches(), 576);
  EXPECT_EQ(c.image_tokens(), 576);
  EXPECT_EQ(c.feature_layer_counts(), std::vector<int64_t>{23});
  EXPECT_EQ(c.feature_width(), 1024);
  EXPECT_EQ(c.projector_act, nn::Activation::kGelu);
  EXPECT_TRUE(c.projector_bias);
}

TEST(LlavaConfigs, AMistralTextConfigWrittenAsADiffGetsMistralConfigDefaultsAndKeepsANullWindow) {
  // The form of llava-hf/llava-v1.6-mistral-7b-hf's text_config: a diff of MistralConfig's defaults.
  const std::string head = R"({"model_type": "llava_next", "image_token_index": 32000,
      "text_config": {"model_type": "mistral", "intermediate_size": 14336, "max_position_embeddings": 32768,
                      "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "vocab_size": 32064)";
  auto c = llava::LlavaConfig::from(config(head + R"(, "sliding_window": null}})"));
  EXPECT_EQ(c.text.hidden_size, 4096);
  EXPECT_EQ(c.text.num_layers, 32);
  EXPECT_EQ(c.text.num_kv_heads, 8);
  EXPECT_EQ(c.text.max_position_embeddings, 32768);
  EXPECT_EQ(c.text.sliding_window, std::vector<int64_t>(32, 0));  // null: full attention
  auto windowed = llava::LlavaConfig::from(config(head + "}}"));
  EXPECT_EQ(windowed.text.sliding_window, std::vector<int64_t>(32, 4096));  // MistralConfig's default
}

TEST(LlavaConfigs, FeatureLayersStrategyAndImageTokenAreChecked) {
  const std::string text = R"("image_token_id": 5, "text_config": {)" + kLlama + R"(, "num_hidden_layers": 2},
      "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                        "image_size": 30, "patch_size": 6})";
  auto c = llava::LlavaConfig::from(config(R"({"model_type": "llava", "image_token_index": 99, "vision_feature_layer": [-4, 0, 3],
      "vision_feature_select_strategy": "full", )" + text + "}"));
  EXPECT_EQ(c.image_token_id, 99);
  EXPECT_EQ(c.feature_layer_counts(), (std::vector<int64_t>{0, 0, 3}));
  EXPECT_EQ(c.feature_width(), 96);
  EXPECT_EQ(c.image_tokens(), 26);
  expect_invalid([&] { llava::LlavaConfig::from(config(R"({"model_type": "llava", "vision_feature_layer": -5, )" + text + "}")); },
                 "config.json: \"vision_feature_layer\" names hidden state -5");
  expect_invalid([&] { llava::LlavaConfig::from(config(R"({"model_type": "llava", "vision_feature_layer": [], )" + text + "}")); },
                 "is empty");
  expect_invalid([&] { llava::LlavaConfig::from(config(R"({"model_type": "llava", "image_token_index": 100, )" + text + "}")); },
                 "config.json: \"image_token_index\" is 100, outside the text model's vocabulary of 100");
  expect_invalid(
      [&] { llava::LlavaConfig::from(config(R"({"model_type": "llava", "vision_feature_select_strategy": "cls", )" + text + "}")); },
      "(default or full)");
  expect_invalid([&] {
    llava::LlavaConfig::from(config(R"({"model_type": "llava", "vision_config": {"model_type": "siglip_vision_model"}, "text_config": {)" + kLlama + "}}"));
  }, "the llava family serves the CLIP vision tower");
  expect_invalid([&] { llava::LlavaConfig::from(config(R"({"model_type": "llava", "text_config": {"model_type": "gpt2"}})")); },
                 "gpt2");
}

TEST(LlavaConfigs, LlavaNextTakesItsGridPinpointsAndChecksThemAgainstTheTower) {
  const std::string towers = R"("text_config": {)" + kLlama + R"(, "num_hidden_layers": 2}, "image_token_index": 5,
      "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                        "image_size": 30, "patch_size": 6})";
  auto c = llava::LlavaConfig::from(config(R"({"model_type": "llava_next", "image_grid_pinpoints": [[30, 60], [90, 30]], )" + towers + "}"));
  EXPECT_TRUE(c.anyres);
  EXPECT_EQ(c.grid_pinpoints, (llava::Pinpoints{{30, 60}, {90, 30}}));
  auto defaults = llava::LlavaConfig::from(config(R"({"model_type": "llava_next", "image_token_index": 5, "text_config": {"model_type": "llama"}})"));
  EXPECT_EQ(defaults.grid_pinpoints.size(), 5u);  // LlavaNextConfig's, for the 336-pixel tower
  EXPECT_FALSE(llava::LlavaConfig::from(config(R"({"model_type": "llava", )" + towers + "}")).anyres);
  expect_invalid([&] { llava::LlavaConfig::from(config(R"({"model_type": "llava_next", "image_grid_pinpoints": [[30, 50]], )" + towers + "}")); },
                 "holds 30x50, which is not a grid of the vision tower's 30-pixel tiles");
  expect_invalid([&] { llava::LlavaConfig::from(config(R"({"model_type": "llava_next", "image_grid_pinpoints": [[30]], )" + towers + "}")); },
                 "must be a non-empty list of [height, width]");
  expect_invalid([&] { llava::LlavaConfig::from(config(R"({"model_type": "llava_next", "image_grid_pinpoints": [], )" + towers + "}")); },
                 "must be a non-empty list");
  expect_invalid([&] {
    llava::LlavaConfig::from(config(R"({"model_type": "llava_next", "image_grid_pinpoints": [[30, 60]], "vision_feature_select_strategy": "full", )" + towers + "}"));
  }, "LLaVA-NeXT lays tile features out as a grid");
}

TEST(TwoTowerConfigs, TowerSizesAreCheckedAndNamedWithTheirNestedKey) {
  expect_invalid([] { clip::ClipConfig::from(config(R"({"model_type": "clip", "vision_config": {"patch_size": 33}})")); },
                 "config.json: \"vision_config.patch_size\" (33) must divide");
  expect_invalid(
      [] { clip::ClipConfig::from(config(R"({"model_type": "clip", "text_config": {"num_attention_heads": 7}})")); },
      "\"text_config.hidden_size\" (512) is not divisible by");
  expect_invalid(
      [] { clip::ClipConfig::from(config(R"({"model_type": "clip", "text_config": {"num_hidden_layers": 70000}})")); },
      "\"text_config.num_hidden_layers\" is 70000; it must be in [1, 65536]");
  expect_invalid([] { clip::ClipConfig::from(config(R"({"model_type": "clip", "projection_dim": 0})")); },
                 "\"projection_dim\" is 0");
  expect_invalid(
      [] { clip::ClipConfig::from(config(R"({"model_type": "clip", "vision_config": {"layer_norm_eps": -1}})")); },
      "\"vision_config.layer_norm_eps\" must be a positive finite number");
  expect_invalid([] { clip::ClipConfig::from(config(R"({"model_type": "clip", "text_config": {"hidden_act": "nope"}})")); },
                 "text_config.hidden_act");
}

TEST(TwoTowerConfigs, SiglipNeedsItsPoolingHeadAndOneSpace) {
  auto s = siglip::SiglipConfig::from(config(R"({"model_type": "siglip"})"));
  EXPECT_EQ(s.vision.grid(), 14);
  EXPECT_EQ(s.text.max_positions, 64);
  EXPECT_EQ(s.projection_size, 768);
  EXPECT_EQ(s.vision.act, nn::Activation::kGeluTanh);
  expect_invalid(
      [] { siglip::SiglipConfig::from(config(R"({"model_type": "siglip", "vision_config": {"vision_use_head": false}})")); },
      "vision_use_head\" is false");
  expect_invalid(
      [] { siglip::SiglipConfig::from(config(R"({"model_type": "siglip", "text_config": {"projection_size": 512}})")); },
      "do not share one space");
  expect_invalid([] { siglip::SiglipConfig::from(config(R"({"model_type": "siglip2"})")); }, "NaFlex");
}

// SD3's vae/config.json as diffusers writes it (trimmed of bookkeeping keys).
const std::string kSd3Vae = R"({"_class_name": "AutoencoderKL", "_diffusers_version": "0.29.0",
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
    "force_upcast": true, "in_channels": 3, "latent_channels": 16, "latents_mean": null, "latents_std": null,
    "layers_per_block": 2, "mid_block_add_attention": true, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 1024, "scaling_factor": 1.5305, "shift_factor": 0.0609,
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"],
    "use_post_quant_conv": false, "use_quant_conv": false})";

// kSd3Vae with `key` set to `value` (a JSON fragment).
std::string sd3_with(const std::string& key, const std::string& value) {
  nlohmann::json j = nlohmann::json::parse(kSd3Vae);
  j[key] = nlohmann::json::parse(value);
  return j.dump();
}

TEST(VaeConfigs, Sd3AutoencoderKLReadsEveryField) {
  const auto c = vae::AutoencoderKLConfig::from(config(kSd3Vae));
  EXPECT_EQ(c.block_out_channels, (std::vector<int64_t>{128, 256, 512, 512}));
  EXPECT_EQ(c.num_blocks(), 4);
  EXPECT_EQ(c.spatial_scale_factor(), 8);
  EXPECT_EQ(c.layers_per_block, 2);
  EXPECT_EQ(c.latent_channels, 16);
  EXPECT_EQ(c.norm_num_groups, 32);
  EXPECT_EQ(c.sample_size, 1024);
  EXPECT_EQ(c.act, nn::Activation::kSilu);
  EXPECT_DOUBLE_EQ(c.scaling_factor, 1.5305);
  ASSERT_TRUE(c.shift_factor.has_value());
  EXPECT_DOUBLE_EQ(c.shift(), 0.0609);
  EXPECT_FALSE(c.use_quant_conv);
  EXPECT_FALSE(c.use_post_quant_conv);
  EXPECT_TRUE(c.mid_block_add_attention);
  EXPECT_TRUE(c.force_upcast);
}

TEST(VaeConfigs, AutoencoderKLTakesDiffusersDefaultsAndANullShiftIsNoShift) {
  const auto c = vae::AutoencoderKLConfig::from(config(R"({"shift_factor": null})"));
  EXPECT_EQ(c.block_out_channels, (std::vector<int64_t>{64}));
  EXPECT_EQ(c.spatial_scale_factor(), 1);
  EXPECT_EQ(c.in_channels, 3);
  EXPECT_EQ(c.out_channels, 3);
  EXPECT_EQ(c.latent_channels, 4);
  EXPECT_EQ(c.layers_per_block, 1);
  EXPECT_DOUBLE_EQ(c.scaling_factor, 0.18215);
  EXPECT_FALSE(c.shift_factor.has_value());
  EXPECT_EQ(c.shift(), 0.0);
  EXPECT_TRUE(c.use_quant_conv && c.use_post_quant_conv && c.mid_block_add_attention);
  // Block types left out: one of the only kind per level.
  EXPECT_EQ(vae::AutoencoderKLConfig::from(config(R"({"block_out_channels": [32, 64, 64]})")).num_blocks(), 3);
}

TEST(VaeConfigs, AutoencoderKLErrorsNameTheKey) {
  using vae::AutoencoderKLConfig;
  expect_invalid([] { AutoencoderKLConfig::from(config(sd3_with("down_block_types", R"(["DownBlock2D"])"))); },
                 "config.json: \"down_block_types\" has 1 entries, but config.json: \"block_out_channels\" has 4");
  expect_invalid(
      [] {
        AutoencoderKLConfig::from(config(sd3_with(
            "up_block_types",
            R"(["UpDecoderBlock2D", "AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"])")));
      },
      "config.json: \"up_block_types\" holds 'AttnUpDecoderBlock2D'; only UpDecoderBlock2D is supported");
  expect_invalid([] { AutoencoderKLConfig::from(config(sd3_with("norm_num_groups", "48"))); },
                 "config.json: \"block_out_channels\" holds 128, which config.json: \"norm_num_groups\" (48)");
  expect_invalid([] { AutoencoderKLConfig::from(config(sd3_with("latent_channels", "0"))); },
                 "config.json: \"latent_channels\" is 0");
  expect_invalid([] { AutoencoderKLConfig::from(config(sd3_with("layers_per_block", "1000"))); },
                 "config.json: \"layers_per_block\" is 1000");
  expect_invalid([] { AutoencoderKLConfig::from(config(sd3_with("act_fn", R"("mish")"))); }, "act_fn");
  expect_invalid([] { AutoencoderKLConfig::from(config(sd3_with("scaling_factor", "0"))); },
                 "config.json: \"scaling_factor\" must not be zero");
  expect_invalid([] { AutoencoderKLConfig::from(config(sd3_with("_class_name", R"("AutoencoderTiny")"))); },
                 "config.json: \"_class_name\" is 'AutoencoderTiny', not AutoencoderKL");
  expect_invalid([] { AutoencoderKLConfig::from(config(R"({"block_out_channels": []})")); },
                 "config.json: \"block_out_channels\" has 0 entries");
  expect_invalid([] { AutoencoderKLConfig::from(config(R"({"block_out_channels": [64, -64]})")); },
                 "config.json: \"block_out_channels\" holds -64");
  expect_invalid([] { AutoencoderKLConfig::from(config(R"({"use_quant_conv": "yes"})")); }, "use_quant_conv");
}

TEST(VaeConfigs, AutoencoderTinyTakesTaesdDefaults) {
  const auto c =
      vae::AutoencoderTinyConfig::from(config(R"({"_class_name": "AutoencoderTiny", "latent_channels": 16})"));
  EXPECT_EQ(c.encoder_block_out_channels, (std::vector<int64_t>{64, 64, 64, 64}));
  EXPECT_EQ(c.num_encoder_blocks, (std::vector<int64_t>{1, 3, 3, 3}));
  EXPECT_EQ(c.num_decoder_blocks, (std::vector<int64_t>{3, 3, 3, 1}));
  EXPECT_EQ(c.act, nn::Activation::kRelu);
  EXPECT_EQ(c.latent_channels, 16);
  EXPECT_EQ(c.encoder_scale_factor(), 8);
  EXPECT_EQ(c.decoder_scale_factor(), 8);
  EXPECT_DOUBLE_EQ(c.latent_magnitude, 3.0);
  EXPECT_DOUBLE_EQ(c.latent_shift, 0.5);
  EXPECT_DOUBLE_EQ(c.scaling_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.shift_factor, 0.0);
  EXPECT_FALSE(c.force_upcast);
  EXPECT_EQ(vae::AutoencoderTinyConfig::from(config(R"({"upsampling_scaling_factor": 3})")).decoder_scale_factor(), 27);
}

TEST(VaeConfigs, AutoencoderTinyErrorsNameTheKey) {
  using vae::AutoencoderTinyConfig;
  expect_invalid([] { AutoencoderTinyConfig::from(config(R"({"num_encoder_blocks": [1, 3]})")); },
                 "config.json: \"num_encoder_blocks\" must have as many entries as config.json: "
                 "\"encoder_block_out_channels\"");
  expect_invalid([] { AutoencoderTinyConfig::from(config(R"({"decoder_block_out_channels": [64, 64, 32, 64]})")); },
                 "config.json: \"decoder_block_out_channels\" mixes widths 64 and 32");
  expect_invalid([] { AutoencoderTinyConfig::from(config(R"({"upsample_fn": "bilinear"})")); },
                 "config.json: \"upsample_fn\" is 'bilinear'; only nearest is supported");
  expect_invalid([] { AutoencoderTinyConfig::from(config(R"({"upsampling_scaling_factor": 4096})")); },
                 "config.json: \"upsampling_scaling_factor\" (4096) over 4 levels");
  expect_invalid([] { AutoencoderTinyConfig::from(config(R"({"num_decoder_blocks": [3, 3, -1, 1]})")); },
                 "config.json: \"num_decoder_blocks\" holds -1");
  expect_invalid([] { AutoencoderTinyConfig::from(config(R"({"latent_magnitude": 0})")); },
                 "config.json: \"latent_magnitude\" must be positive");
  expect_invalid([] { AutoencoderTinyConfig::from(config(R"({"_class_name": "AutoencoderKL"})")); },
                 "not AutoencoderTiny");
}

flux::FluxConfig flux_config(const std::string& json) {
  return flux::FluxConfig::from(loading::parse_json_object(json, "config.json"));
}

TEST(FluxConfig, AnEmptyFileIsFluxOneSchnellsShape) {
  const flux::FluxConfig c = flux_config("{}");
  EXPECT_EQ(c.patch_size, 1);
  EXPECT_EQ(c.in_channels, 64);
  EXPECT_EQ(c.out_channels, 64);
  EXPECT_EQ(c.num_layers, 19);
  EXPECT_EQ(c.num_single_layers, 38);
  EXPECT_EQ(c.inner_dim(), 3072);
  EXPECT_EQ(c.joint_attention_dim, 4096);
  EXPECT_EQ(c.pooled_projection_dim, 768);
  EXPECT_FALSE(c.guidance_embeds);
  EXPECT_EQ(c.axes_dims_rope, (std::vector<int64_t>{16, 56, 56}));
}

TEST(FluxConfig, ReadsEveryFieldAndANullOutputIsTheInput) {
  const flux::FluxConfig c = flux_config(R"({"_class_name": "FluxTransformer2DModel", "patch_size": 2,
      "in_channels": 16, "out_channels": null, "num_layers": 0, "num_single_layers": 3, "attention_head_dim": 32,
      "num_attention_heads": 3, "joint_attention_dim": 24, "pooled_projection_dim": 20, "guidance_embeds": true,
      "axes_dims_rope": [8, 12, 12]})");
  EXPECT_EQ(c.patch_size, 2);
  EXPECT_EQ(c.out_channels, 16);
  EXPECT_EQ(c.num_layers, 0);
  EXPECT_EQ(c.num_single_layers, 3);
  EXPECT_EQ(c.inner_dim(), 96);
  EXPECT_TRUE(c.guidance_embeds);
  EXPECT_EQ(c.axes_dims_rope, (std::vector<int64_t>{8, 12, 12}));
  EXPECT_EQ(flux_config(R"({"in_channels": 16, "out_channels": 8})").out_channels, 8);
}

TEST(FluxConfig, ErrorsNameTheKey) {
  expect_invalid([] { flux_config(R"({"axes_dims_rope": [16, 56, 48]})"); },
                 "config.json: \"axes_dims_rope\" adds up to 120, not attention_head_dim = 128");
  expect_invalid([] { flux_config(R"({"attention_head_dim": 16, "axes_dims_rope": [3, 7, 6]})"); },
                 "config.json: \"axes_dims_rope\": an axis of 3 dimensions");
  expect_invalid([] { flux_config(R"({"attention_head_dim": 16, "axes_dims_rope": [0, 16]})"); },
                 "config.json: \"axes_dims_rope\"");
  expect_invalid([] { flux_config(R"({"axes_dims_rope": []})"); },
                 "config.json: \"axes_dims_rope\" must list 1 to 16 axes");
  expect_invalid([] { flux_config(R"({"axes_dims_rope": "16,56,56"})"); }, "axes_dims_rope");
  expect_invalid([] { flux_config(R"({"num_single_layers": -1})"); }, "config.json: \"num_single_layers\" is -1");
  expect_invalid([] { flux_config(R"({"num_layers": 5000})"); }, "config.json: \"num_layers\" is 5000");
  expect_invalid([] { flux_config(R"({"attention_head_dim": 0})"); }, "config.json: \"attention_head_dim\" is 0");
  expect_invalid([] { flux_config(R"({"num_attention_heads": 1000})"); }, "is too wide");
  expect_invalid([] { flux_config(R"({"guidance_embeds": "yes"})"); }, "guidance_embeds");
}

}  // namespace
}  // namespace mpool::models
