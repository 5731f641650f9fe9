#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "mpool/base/error.h"
#include "mpool/loading/inspect.h"
#include "mpool/loading/registry.h"
#include "test_util.h"

namespace mpool::loading {
namespace {

using testing::TempDir;
using testing::write_file;

FamilyInfo bert_family() {
  return {"bert_embedder", {"embed"}, [](const ModelConfig& c, const ModelLayout&) {
            if (c.model_type != "bert") return FamilySupport::no("model_type is \"" + c.model_type + "\", not \"bert\"");
            return FamilySupport::yes();
          }};
}

ModelConfig config_of(const std::string& json) { return parse_model_config(parse_json_object(json, "config.json")); }

TEST(FamilyRegistry, RegisteredFamilyJudgesEachModel) {
  FamilyRegistry registry;
  registry.add(bert_family());
  const auto yes = registry.match(config_of(R"({"model_type":"bert"})"), ModelLayout{});
  ASSERT_EQ(yes.size(), 1u);
  EXPECT_TRUE(yes[0].supported);
  EXPECT_EQ(yes[0].capabilities, std::vector<std::string>{"embed"});
  const auto no = registry.match(config_of(R"({"model_type":"llama"})"), ModelLayout{});
  EXPECT_FALSE(no[0].supported);
  EXPECT_EQ(no[0].reason, "model_type is \"llama\", not \"bert\"");
}

TEST(FamilyRegistry, DuplicateOrIncompleteFamiliesAreRejected) {
  FamilyRegistry registry;
  registry.add(bert_family());
  EXPECT_THROW(registry.add(bert_family()), Error);
  EXPECT_THROW(registry.add({"", {}, bert_family().predicate}), Error);
  EXPECT_THROW(registry.add({"x", {}, nullptr}), Error);
  EXPECT_TRUE(registry.remove("bert_embedder"));
  EXPECT_FALSE(registry.remove("bert_embedder"));
  EXPECT_TRUE(registry.names().empty());
}

TEST(FamilyRegistry, ThrowingPredicateBecomesAReason) {
  FamilyRegistry registry;
  registry.add({"strict", {"generate"}, [](const ModelConfig& c, const ModelLayout&) {
                  c.raw.get<std::int64_t>("num_hidden_layers");
                  return FamilySupport::yes();
                }});
  const auto m = registry.match(config_of(R"({"model_type":"x"})"), ModelLayout{});
  EXPECT_FALSE(m[0].supported);
  EXPECT_NE(m[0].reason.find("\"num_hidden_layers\" is required"), std::string::npos) << m[0].reason;
}

TEST(FamilyRegistry, ConcurrentRegistrationAndMatchingAreSafe) {
  FamilyRegistry registry;
  const ModelConfig config = config_of(R"({"model_type":"bert"})");
  std::atomic<bool> stop{false};
  std::thread reader([&] {
    while (!stop.load()) {
      for (const auto& m : registry.match(config, ModelLayout{})) EXPECT_TRUE(m.supported);
    }
  });
  for (int i = 0; i < 200; ++i) {
    FamilyInfo f = bert_family();
    f.name += std::to_string(i);
    registry.add(std::move(f));
  }
  stop = true;
  reader.join();
  EXPECT_EQ(registry.names().size(), 200u);
}

TEST(Inspect, ReportsSupportFromTheGivenRegistry) {
  TempDir dir;
  write_file(dir.path() / "config.json", R"({"model_type":"bert","architectures":["BertModel"]})");
  FamilyRegistry registry;
  InspectReport none = inspect_model(dir.path().string(), registry);
  EXPECT_EQ(none.support, "no registered family supports model_type \"bert\" (no families are registered)");
  EXPECT_EQ(none.weights.error.value_or(""), "no weight files found in " + dir.path().string());

  registry.add(bert_family());
  registry.add({"llama_decoder", {"generate"}, [](const ModelConfig& c, const ModelLayout&) {
                  return c.model_type == "llama" ? FamilySupport::yes() : FamilySupport::no("not a llama");
                }});
  const nlohmann::json report = inspect_model(dir.path().string(), registry).to_json();
  EXPECT_EQ(report["support"], "supported by bert_embedder");
  EXPECT_EQ(report["capabilities"], nlohmann::json::array({"embed"}));
  EXPECT_EQ(report["families"][1]["reason"], "not a llama");
  EXPECT_EQ(report["model_type"], "bert");

  write_file(dir.path() / "config.json", R"({"model_type":"t5"})");
  const InspectReport t5 = inspect_model(dir.path().string(), registry);
  EXPECT_EQ(t5.support,
            "no registered family supports model_type \"t5\": bert_embedder: model_type is \"t5\", not \"bert\"; "
            "llama_decoder: not a llama");
}

}  // namespace
}  // namespace mpool::loading
