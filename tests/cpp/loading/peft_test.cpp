#include <gtest/gtest.h>

#include <cmath>

#include "mpool/base/error.h"
#include "mpool/loading/peft.h"
#include "test_util.h"

namespace mpool::loading {
namespace {

namespace fs = std::filesystem;
using testing::message_of;
using testing::TempDir;
using testing::write_file;

void write_adapter(const fs::path& dir, const std::string& config) {
  write_file(dir / "adapter_config.json", config);
  write_file(dir / "adapter_model.safetensors", "");  // found by name; read by nn::LoraAdapters
}

TEST(LoraAdapterConfig, ScaleIsAlphaOverRankWithPerModulePatterns) {
  TempDir d;
  write_adapter(d.path() / "a", R"({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
      "rank_pattern": {"fc2": 2, "layers.1.mlp.fc2": 8}, "alpha_pattern": {"layers.0.self_attn.q_proj": 3}})");
  const auto a = LoraAdapterConfig::load(d.path() / "a");
  EXPECT_EQ(a.name, "a");
  EXPECT_DOUBLE_EQ(a.scale("layers.0.mlp.fc1"), 2.0);
  EXPECT_EQ(a.rank("layers.0.mlp.fc2"), 2);          // suffix on a dot boundary
  EXPECT_EQ(a.rank("layers.1.mlp.fc2"), 8);          // the longest key wins
  EXPECT_EQ(a.rank("layers.0.mlp.xfc2"), 4);         // not a dotted suffix
  EXPECT_DOUBLE_EQ(a.scale("layers.0.mlp.fc2"), 4.0);  // 8 / 2
  EXPECT_DOUBLE_EQ(a.scale("layers.0.self_attn.q_proj"), 0.75);
}

TEST(LoraAdapterConfig, RsLoraScalesBySquareRootOfRank) {
  TempDir d;
  write_adapter(d.path() / "a", R"({"peft_type": "LORA", "r": 16, "lora_alpha": 8, "use_rslora": true})");
  EXPECT_DOUBLE_EQ(LoraAdapterConfig::load(d.path() / "a").scale("x"), 2.0);
}

TEST(LoraAdapterConfig, VariantsWithOtherArithmeticAreRefusedNamingTheKey) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"peft_type": "LORA", "r": 4, "use_dora": true})", "\"use_dora\" is true"},
      {R"({"peft_type": "LOHA", "r": 4})", "\"peft_type\" is 'LOHA'"},
      {R"({"peft_type": "LORA", "r": 4, "bias": "lora_only"})", "\"bias\" is 'lora_only'"},
      {R"({"peft_type": "LORA", "r": 4, "fan_in_fan_out": true})", "\"fan_in_fan_out\""},
      {R"({"peft_type": "LORA", "r": 4, "modules_to_save": ["classifier"]})", "\"modules_to_save\" is set"},
      {R"({"peft_type": "LORA", "r": -1})", "\"r\" must be a positive rank"},
      {R"({"peft_type": "LORA", "r": 4, "rank_pattern": {"^layers": 2}})", "is a regular expression"},
      {R"({"peft_type": "LORA", "r": 4, "rank_pattern": {"fc1": 0}})", "must be a positive rank"},
  };
  for (const auto& [config, expected] : cases) {
    TempDir d;
    write_adapter(d.path() / "a", config);
    const std::string m = message_of([&] { LoraAdapterConfig::load(d.path() / "a"); });
    EXPECT_NE(m.find("adapter_config.json"), std::string::npos) << m;
    EXPECT_NE(m.find(expected), std::string::npos) << config << " -> " << m;
  }
}

TEST(FindLoraAdapters, SubdirectoriesAndAdaptersFolderByNameSorted) {
  TempDir d;
  write_file(d.path() / "config.json", "{}");
  write_adapter(d.path() / "adapters" / "retrieval_query", R"({"peft_type": "LORA", "r": 4})");
  write_adapter(d.path() / "text_matching", R"({"peft_type": "LORA", "r": 2})");
  write_file(d.path() / "1_Pooling" / "config.json", "{}");  // not an adapter
  const auto found = find_lora_adapters(d.path());
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0].name, "text_matching");
  EXPECT_EQ(found[1].name, "retrieval_query");
  write_adapter(d.path() / "retrieval_query", R"({"peft_type": "LORA", "r": 4})");
  EXPECT_NE(message_of([&] { find_lora_adapters(d.path()); }).find("two LoRA adapters are named 'retrieval_query'"),
            std::string::npos);
}

TEST(FindLoraAdapters, AMissingWeightsFileIsAnErrorNamingTheAdapter) {
  TempDir d;
  write_file(d.path() / "a" / "adapter_config.json", R"({"peft_type": "LORA", "r": 4})");
  EXPECT_NE(message_of([&] { find_lora_adapters(d.path()); }).find("has no adapter_model.safetensors"),
            std::string::npos);
}

TEST(AdapterServesTask, EqualAfterLowercasingAndPunctuationToUnderscore) {
  EXPECT_TRUE(adapter_serves_task("retrieval_query", "retrieval.query"));
  EXPECT_TRUE(adapter_serves_task("Text-Matching", "text_matching"));
  EXPECT_FALSE(adapter_serves_task("retrieval_query", "retrieval.passage"));
  EXPECT_FALSE(adapter_serves_task("query", "retrieval.query"));
}

}  // namespace
}  // namespace mpool::loading
