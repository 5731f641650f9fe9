#include <gtest/gtest.h>

#include <functional>

#include "mpool/base/error.h"
#include "mpool/loading/layout.h"
#include "test_util.h"

namespace mpool::loading {
namespace {

namespace fs = std::filesystem;
using testing::message_of;
using testing::TempDir;
using testing::write_file;

TEST(ResolveModel, LocalDirectoryWins) {
  TempDir dir;
  const auto r = resolve_model(dir.path().string(), dir.path() / "no-cache");
  EXPECT_EQ(r.source, "local_directory");
  EXPECT_EQ(r.path, dir.path());
}

TEST(ResolveModel, CachedRepoUsesRefsMain) {
  TempDir cache;
  const fs::path repo = cache.path() / "models--org--name";
  write_file(repo / "refs" / "main", "abc123\n");
  write_file(repo / "snapshots" / "abc123" / "config.json", "{}");
  write_file(repo / "snapshots" / "old999" / "config.json", "{}");
  const auto r = resolve_model("org/name", cache.path());
  EXPECT_EQ(r.source, "hf_cache");
  EXPECT_EQ(r.path, repo / "snapshots" / "abc123");
  EXPECT_EQ(*r.revision, "abc123");
  EXPECT_EQ(resolve_model("org/name@old999", cache.path()).path, repo / "snapshots" / "old999");
}

TEST(ResolveModel, SeveralSnapshotsWithoutRefsAskForARevision) {
  TempDir cache;
  write_file(cache.path() / "models--org--name" / "snapshots" / "a" / "config.json", "{}");
  write_file(cache.path() / "models--org--name" / "snapshots" / "b" / "config.json", "{}");
  const std::string msg = message_of([&] { resolve_model("org/name", cache.path()); });
  EXPECT_NE(msg.find("several snapshots (a, b)"), std::string::npos) << msg;
  fs::remove_all(cache.path() / "models--org--name" / "snapshots" / "b");
  EXPECT_EQ(resolve_model("org/name", cache.path()).revision, "a");
}

TEST(ResolveModel, NotFoundNamesEveryPathSearched) {
  TempDir cache;
  const std::string msg = message_of([&] { resolve_model("org/missing", cache.path()); });
  EXPECT_NE(msg.find(fs::absolute("org/missing").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find((cache.path() / "models--org--missing").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("never downloads"), std::string::npos) << msg;
}

TEST(ResolveModel, CacheDirectoryFollowsEnvironment) {
  ::setenv("HF_HUB_CACHE", "/x/hub-cache", 1);
  EXPECT_EQ(hf_hub_cache_dir(), fs::path("/x/hub-cache"));
  ::unsetenv("HF_HUB_CACHE");
  ::setenv("HF_HOME", "/x/hf-home", 1);
  EXPECT_EQ(hf_hub_cache_dir(), fs::path("/x/hf-home/hub"));
  ::unsetenv("HF_HOME");
  const char* home = std::getenv("HOME");
  const std::string saved = home != nullptr ? home : "";
  ::setenv("HOME", "/x/home", 1);
  EXPECT_EQ(hf_hub_cache_dir(), fs::path("/x/home/.cache/huggingface/hub"));
  ::setenv("HOME", saved.c_str(), 1);
}

TEST(DescribeLayout, SentenceTransformersModulesPoolingAndPrompts) {
  TempDir dir;
  const fs::path d = dir.path();
  write_file(d / "modules.json", R"([
    {"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
    {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
    {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}])");
  write_file(d / "1_Pooling" / "config.json",
             R"({"word_embedding_dimension":384,"pooling_mode_cls_token":false,"pooling_mode_mean_tokens":true})");
  write_file(d / "sentence_bert_config.json", R"({"max_seq_length":256,"do_lower_case":false})");
  write_file(d / "config_sentence_transformers.json",
             R"({"prompts":{"query":"query: ","doc":"passage: "},"default_prompt_name":"query","similarity_fn_name":"cosine"})");
  write_file(d / "config.json", R"({"model_type":"bert"})");
  write_file(d / "model.safetensors", "");
  write_file(d / "pytorch_model.bin", "");
  write_file(d / "training_args.bin", "");
  write_file(d / "vocab.txt", "[PAD]\n");
  const ModelLayout l = describe_layout(d);
  ASSERT_TRUE(l.sentence_transformers.has_value());
  const auto& st = *l.sentence_transformers;
  EXPECT_EQ(st.modules.size(), 3u);
  EXPECT_EQ(st.pooling->mode, "mean");
  EXPECT_EQ(*st.pooling->word_embedding_dimension, 384);
  EXPECT_TRUE(st.normalize);
  EXPECT_EQ(*st.max_seq_length, 256);
  EXPECT_EQ(st.prompts.at("doc"), "passage: ");
  EXPECT_EQ(*st.default_prompt_name, "query");
  EXPECT_TRUE(l.has_config);
  EXPECT_EQ(l.weights.format, WeightsFormat::kSafetensors);
  EXPECT_EQ(l.weights.files, std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(l.weights.other_files, std::vector<std::string>{"pytorch_model.bin"});
  EXPECT_EQ(l.tokenizer_files, std::vector<std::string>{"vocab.txt"});
}

TEST(DescribeLayout, SentenceTransformers6PoolingModeNamesDenseModulesAndTheirDefaults) {
  TempDir dir;
  const fs::path d = dir.path();
  write_file(d / "modules.json", R"([
    {"idx":0,"name":"0","path":"","type":"sentence_transformers.base.modules.transformer.Transformer"},
    {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.sentence_transformer.modules.pooling.Pooling"},
    {"idx":2,"name":"2","path":"2_Dense","type":"sentence_transformers.base.modules.dense.Dense"},
    {"idx":3,"name":"3","path":"3_Dense","type":"sentence_transformers.models.Dense"}])");
  write_file(d / "1_Pooling" / "config.json",
             R"({"embedding_dimension":32,"pooling_mode":["cls","weightedmean"],"include_prompt":false})");
  write_file(d / "2_Dense" / "config.json", R"({"in_features":64,"out_features":16,"bias":false,
    "activation_function":"torch.nn.modules.activation.GELU","use_residual":true})");
  write_file(d / "3_Dense" / "config.json", R"({"in_features":16,"out_features":8})");
  const auto st = *describe_layout(d).sentence_transformers;
  EXPECT_EQ(st.pooling->mode, "cls+weightedmean");
  EXPECT_EQ(*st.pooling->word_embedding_dimension, 32);
  EXPECT_FALSE(st.pooling->include_prompt);
  ASSERT_EQ(st.dense.size(), 2u);
  EXPECT_EQ(st.dense[0].path, "2_Dense");
  EXPECT_EQ(st.dense[0].in_features, 64);
  EXPECT_EQ(st.dense[0].out_features, 16);
  EXPECT_FALSE(st.dense[0].bias);
  EXPECT_EQ(st.dense[0].activation, "torch.nn.modules.activation.GELU");
  EXPECT_TRUE(st.dense[0].use_residual);
  // sentence-transformers' defaults: a bias, Tanh, no residual, the pooled embedding in and out.
  EXPECT_TRUE(st.dense[1].bias);
  EXPECT_EQ(st.dense[1].activation, "torch.nn.modules.activation.Tanh");
  EXPECT_FALSE(st.dense[1].use_residual);
  EXPECT_EQ(st.dense[1].input_name, "sentence_embedding");
  EXPECT_EQ(st.dense[1].output_name, "sentence_embedding");
  EXPECT_TRUE(st.other_modules.empty());
  EXPECT_FALSE(st.normalize);
}

TEST(DescribeLayout, PoolingWithoutAnyModeIsTheMeanAsInSentenceTransformers) {
  TempDir dir;
  const fs::path d = dir.path();
  write_file(d / "modules.json",
             R"([{"idx":0,"name":"0","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}])");
  write_file(d / "1_Pooling" / "config.json", R"({"word_embedding_dimension":8,"pooling_mode_cls_token":false})");
  EXPECT_EQ(describe_layout(d).sentence_transformers->pooling->mode, "mean");
  write_file(d / "1_Pooling" / "config.json", R"({"pooling_mode":[]})");
  EXPECT_NE(message_of([&] { describe_layout(d); }).find("\"pooling_mode\" must be a mode name or a non-empty list"),
            std::string::npos);
}

TEST(DescribeLayout, ADenseConfigWithoutItsWidthsNamesTheFile) {
  TempDir dir;
  const fs::path d = dir.path();
  write_file(d / "modules.json", R"([{"idx":0,"name":"0","path":"2_Dense","type":"sentence_transformers.models.Dense"}])");
  write_file(d / "2_Dense" / "config.json", R"({"in_features":16})");
  const std::string message = message_of([&] { describe_layout(d); });
  EXPECT_NE(message.find("2_Dense"), std::string::npos) << message;
  EXPECT_NE(message.find("out_features"), std::string::npos) << message;
  write_file(d / "2_Dense" / "config.json", R"({"in_features":16,"out_features":0})");
  EXPECT_NE(message_of([&] { describe_layout(d); }).find("must be >= 1"), std::string::npos);
}

TEST(DescribeLayout, UndefinedDefaultPromptIsAnError) {
  TempDir dir;
  write_file(dir.path() / "modules.json", "[]");
  write_file(dir.path() / "config_sentence_transformers.json", R"({"prompts":{},"default_prompt_name":"q"})");
  EXPECT_NE(message_of([&] { describe_layout(dir.path()); }).find("\"default_prompt_name\""), std::string::npos);
}

TEST(DescribeLayout, ShardedWeightsListTheirShards) {
  TempDir dir;
  write_file(dir.path() / "model.safetensors.index.json",
             R"({"weight_map":{"a":"m-2.safetensors","b":"m-1.safetensors","c":"m-1.safetensors"}})");
  const ModelLayout l = describe_layout(dir.path());
  EXPECT_EQ(l.weights.format, WeightsFormat::kSafetensorsSharded);
  EXPECT_EQ(l.weights.files, (std::vector<std::string>{"m-1.safetensors", "m-2.safetensors"}));
  EXPECT_EQ(*l.weights.index, "model.safetensors.index.json");
  EXPECT_STREQ(weights_format_name(l.weights.format), "safetensors_sharded");
}

TEST(DescribeWeights, DiffusersNamesAndShardIndexes) {
  TempDir dir;
  const fs::path d = dir.path();
  write_file(d / "unet" / "diffusion_pytorch_model.safetensors", "");
  write_file(d / "unet" / "diffusion_pytorch_model.fp16.safetensors", "");
  const WeightsLayout unet = describe_weights(d / "unet", "unet/");
  EXPECT_EQ(unet.format, WeightsFormat::kSafetensors);
  EXPECT_EQ(unet.files, std::vector<std::string>{"unet/diffusion_pytorch_model.safetensors"});
  EXPECT_EQ(unet.other_files, std::vector<std::string>{"unet/diffusion_pytorch_model.fp16.safetensors"});
  write_file(d / "vae" / "diffusion_pytorch_model.safetensors.index.json",
             R"({"weight_map":{"a":"diffusion_pytorch_model-00002-of-00002.safetensors","b":"diffusion_pytorch_model-00001-of-00002.safetensors"}})");
  const WeightsLayout vae = describe_weights(d / "vae", "vae/");
  EXPECT_EQ(vae.format, WeightsFormat::kSafetensorsSharded);
  EXPECT_EQ(*vae.index, "vae/diffusion_pytorch_model.safetensors.index.json");
  EXPECT_EQ(vae.files, (std::vector<std::string>{"vae/diffusion_pytorch_model-00001-of-00002.safetensors",
                                                 "vae/diffusion_pytorch_model-00002-of-00002.safetensors"}));
  write_file(d / "vae" / "diffusion_pytorch_model.safetensors.index.json", R"({"weight_map":{"a":1}})");
  EXPECT_EQ(message_of([&] { describe_weights(d / "vae"); }),
            (d / "vae" / "diffusion_pytorch_model.safetensors.index.json").string() +
                ": \"weight_map.a\" must be a string, got 1");
}

TEST(DescribeWeights, TokenizerFilesInAFolderKeepTheirFixedOrder) {
  TempDir dir;
  write_file(dir.path() / "merges.txt", "");
  write_file(dir.path() / "vocab.json", "{}");
  write_file(dir.path() / "tokenizer_config.json", "{}");
  EXPECT_EQ(tokenizer_files_in(dir.path(), "tokenizer_2/"),
            (std::vector<std::string>{"tokenizer_2/tokenizer_config.json", "tokenizer_2/vocab.json", "tokenizer_2/merges.txt"}));
  EXPECT_TRUE(tokenizer_files_in(dir.path() / "absent").empty());
}

}  // namespace
}  // namespace mpool::loading
