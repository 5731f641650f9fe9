#include <gtest/gtest.h>

#include <functional>

#include "mpool/base/error.h"
#include "mpool/loading/config.h"
#include "test_util.h"

namespace mpool::loading {
namespace {

using testing::message_of;
using testing::TempDir;
using testing::write_file;

TEST(JsonView, TypedAccessorsNameFileAndKeyOnMismatch) {
  const JsonView j = parse_json_object(R"({"hidden_size":"abc","n":3,"x":null,"sub":{"k":true}})", "config.json");
  EXPECT_EQ(j.get<std::int64_t>("n"), 3);
  EXPECT_EQ(message_of([&] { j.get<std::int64_t>("hidden_size"); }),
            R"(config.json: "hidden_size" must be an integer, got "abc")");
  EXPECT_EQ(message_of([&] { j.get<std::string>("missing"); }), R"(config.json: "missing" is required but missing)");
  EXPECT_FALSE(j.get_optional<std::int64_t>("x").has_value());
  EXPECT_EQ(j.get_or<std::int64_t>("absent", 7), 7);
  EXPECT_TRUE(j.child("sub")->get<bool>("k"));
  EXPECT_EQ(message_of([&] { j.child("sub")->get<std::string>("k"); }),
            R"(config.json: "sub.k" must be a string, got true)");
}

TEST(JsonView, MalformedJsonNamesTheFile) {
  const std::string msg = message_of([] { parse_json_object("{\"a\":", "tokenizer_config.json"); });
  EXPECT_EQ(msg.rfind("tokenizer_config.json: malformed JSON", 0), 0u) << msg;
}

TEST(JsonView, TokenIdsAcceptIntegerOrList) {
  const JsonView j = parse_json_object(R"({"a":2,"b":[1,2],"c":null,"d":"x"})", "generation_config.json");
  EXPECT_EQ(j.get_token_ids("a"), (std::vector<std::int64_t>{2}));
  EXPECT_EQ(j.get_token_ids("b"), (std::vector<std::int64_t>{1, 2}));
  EXPECT_TRUE(j.get_token_ids("c").empty());
  EXPECT_NE(message_of([&] { j.get_token_ids("d"); }).find("an integer or a list of integers"), std::string::npos);
}

TEST(ModelConfig, ReadsCommonFieldsAndRope) {
  const ModelConfig c = parse_model_config(parse_json_object(R"({
    "model_type":"llama","architectures":["LlamaForCausalLM"],"torch_dtype":"bfloat16",
    "vocab_size":128256,"hidden_size":2048,"num_hidden_layers":16,"num_attention_heads":32,
    "num_key_value_heads":8,"intermediate_size":8192,"max_position_embeddings":131072,
    "rope_theta":500000.0,"rms_norm_eps":1e-5,"tie_word_embeddings":true,
    "rope_scaling":{"rope_type":"llama3","factor":32.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
                    "original_max_position_embeddings":8192},
    "bos_token_id":128000,"eos_token_id":[128001,128008,128009]})", "config.json"));
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.architectures, std::vector<std::string>{"LlamaForCausalLM"});
  EXPECT_EQ(*c.torch_dtype, "bfloat16");
  EXPECT_EQ(*c.num_key_value_heads, 8);
  EXPECT_EQ(*c.rope_theta, 500000.0);
  ASSERT_TRUE(c.rope_scaling.has_value());
  EXPECT_EQ(c.rope_scaling->type, "llama3");
  EXPECT_EQ(*c.rope_scaling->original_max_position_embeddings, 8192);
  EXPECT_EQ(c.eos_token_id, (std::vector<std::int64_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.bos_token_id, (std::vector<std::int64_t>{128000}));
  EXPECT_TRUE(c.pad_token_id.empty());
  EXPECT_EQ(c.raw.get<std::int64_t>("vocab_size"), 128256);
}

TEST(ModelConfig, WrongTypeInCommonFieldIsReported) {
  const std::string msg =
      message_of([] { parse_model_config(parse_json_object(R"({"hidden_size":"abc"})", "config.json")); });
  EXPECT_EQ(msg, R"(config.json: "hidden_size" must be an integer, got "abc")");
}

TEST(TokenizerConfig, ReadsSpecialTokensTemplatesAndLimits) {
  const TokenizerConfig t = parse_tokenizer_config(parse_json_object(R"({
    "tokenizer_class":"LlamaTokenizerFast","model_max_length":1000000000000000019884624838656,
    "bos_token":{"content":"<s>","__type":"AddedToken"},"eos_token":"</s>","add_bos_token":true,
    "chat_template":[{"name":"default","template":"{{ x }}"},{"name":"tool_use","template":"{{ y }}"}],
    "added_tokens_decoder":{"0":{"content":"<unk>","special":true}},
    "additional_special_tokens":["<a>",{"content":"<b>"}]})", "tokenizer_config.json"));
  EXPECT_EQ(*t.tokenizer_class, "LlamaTokenizerFast");
  EXPECT_FALSE(t.model_max_length.has_value());  // the "unlimited" sentinel
  EXPECT_EQ(*t.special.bos_token, "<s>");
  EXPECT_EQ(*t.special.eos_token, "</s>");
  EXPECT_EQ(t.special.additional_special_tokens, (std::vector<std::string>{"<a>", "<b>"}));
  EXPECT_EQ(t.chat_templates.at("tool_use"), "{{ y }}");
  EXPECT_EQ(t.added_tokens.at(0).first, "<unk>");
  EXPECT_TRUE(t.added_tokens.at(0).second);
  EXPECT_TRUE(*t.add_bos_token);
}

TEST(TokenizerConfig, ChatTemplateFileIsUsedWhenConfigHasNone) {
  TempDir dir;
  write_file(dir.path() / "tokenizer_config.json", R"({"model_max_length":512})");
  write_file(dir.path() / "chat_template.jinja", "{% for m in messages %}{{ m.content }}{% endfor %}");
  const auto t = load_tokenizer_config(dir.path());
  ASSERT_TRUE(t.has_value());
  EXPECT_EQ(*t->model_max_length, 512);
  EXPECT_EQ(t->chat_templates.at("default"), "{% for m in messages %}{{ m.content }}{% endfor %}");
  EXPECT_FALSE(load_generation_config(dir.path()).has_value());
}

TEST(ChatTemplates, TemplateFilesReplaceTokenizerConfigsTemplateAsInTransformers) {
  TempDir dir;
  write_file(dir.path() / "tokenizer_config.json", R"({"chat_template":"from config"})");
  write_file(dir.path() / "chat_template.jinja", "from jinja");
  write_file(dir.path() / "additional_chat_templates" / "tool_use.jinja", "from tool_use");
  write_file(dir.path() / "additional_chat_templates" / "notes.txt", "not a template");
  write_file(dir.path() / "chat_template.json", R"({"chat_template":"from legacy"})");
  const auto templates = load_chat_templates(dir.path());
  ASSERT_EQ(templates.size(), 2u);
  EXPECT_EQ(templates.at("default").text, "from jinja");
  EXPECT_EQ(templates.at("default").file, dir.path() / "chat_template.jinja");
  EXPECT_EQ(templates.at("tool_use").text, "from tool_use");
  EXPECT_EQ(templates.at("tool_use").where, (dir.path() / "additional_chat_templates" / "tool_use.jinja").string());
  // parse_tokenizer_config with the directory reads the same ones (inspect's source).
  EXPECT_EQ(load_tokenizer_config(dir.path())->chat_templates,
            (std::map<std::string, std::string>{{"default", "from jinja"}, {"tool_use", "from tool_use"}}));
}

TEST(ChatTemplates, AnAdditionalTemplateAloneStillReplacesTheConfigs) {
  TempDir dir;
  write_file(dir.path() / "tokenizer_config.json", R"({"chat_template":"from config"})");
  write_file(dir.path() / "additional_chat_templates" / "tool_use.jinja", "from tool_use");
  const auto templates = load_chat_templates(dir.path());
  ASSERT_EQ(templates.size(), 1u);
  EXPECT_EQ(templates.at("tool_use").text, "from tool_use");
}

TEST(ChatTemplates, TokenizerConfigListThenLegacyJsonAreTheFallbacks) {
  TempDir dir;
  write_file(dir.path() / "tokenizer_config.json",
             R"({"chat_template":[{"name":"default","template":"a"},{"name":"rag","template":"b"}]})");
  write_file(dir.path() / "chat_template.json", R"({"chat_template":"from legacy"})");
  auto templates = load_chat_templates(dir.path());
  ASSERT_EQ(templates.size(), 2u);
  EXPECT_EQ(templates.at("rag").text, "b");
  EXPECT_EQ(templates.at("rag").where, (dir.path() / "tokenizer_config.json").string() + " (template 'rag')");
  write_file(dir.path() / "tokenizer_config.json", R"({"chat_template":null})");
  templates = load_chat_templates(dir.path());
  ASSERT_EQ(templates.size(), 1u);
  EXPECT_EQ(templates.at("default").text, "from legacy");
  EXPECT_EQ(templates.at("default").file, dir.path() / "chat_template.json");
}

TEST(ChatTemplates, ADirectoryWithoutAnyIsEmptyAndAMalformedEntryNamesTheFile) {
  TempDir dir;
  EXPECT_TRUE(load_chat_templates(dir.path()).empty());
  EXPECT_TRUE(load_chat_templates(dir.path() / "missing").empty());
  write_file(dir.path() / "tokenizer_config.json", R"({"chat_template":5})");
  const std::string msg = message_of([&] { load_chat_templates(dir.path()); });
  EXPECT_NE(msg.find("tokenizer_config.json: \"chat_template\" must be a template string"), std::string::npos) << msg;
}

TEST(GenerationConfig, ReadsSamplingDefaults) {
  const GenerationConfig g = parse_generation_config(parse_json_object(
      R"({"eos_token_id":[1,2],"do_sample":true,"temperature":0.6,"top_p":0.9,"max_new_tokens":64})",
      "generation_config.json"));
  EXPECT_EQ(g.eos_token_id, (std::vector<std::int64_t>{1, 2}));
  EXPECT_TRUE(*g.do_sample);
  EXPECT_DOUBLE_EQ(*g.temperature, 0.6);
  EXPECT_EQ(*g.max_new_tokens, 64);
}

TEST(ModelConfig, MissingConfigFileIsNamed) {
  TempDir dir;
  const std::string msg = message_of([&] { load_model_config(dir.path()); });
  EXPECT_NE(msg.find((dir.path() / "config.json").string()), std::string::npos) << msg;
}

}  // namespace
}  // namespace mpool::loading
