// loading::slow_tokenizer_json: tokenizer folders of vocab.json + merges.txt
// composed into tokenizer.json documents, checked by what the composed pipeline
// encodes and decodes, and by the errors for what it cannot convert.
#include "mpool/loading/slow_tokenizer.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "../loading/test_util.h"
#include "mpool/base/error.h"
#include "mpool/tokenizer/tokenizer.h"

using mpool::Error;
using mpool::ErrorCode;
using mpool::loading::read_tokenizer_document;
using mpool::loading::slow_tokenizer_json;
using mpool::loading::testing::message_of;
using mpool::loading::testing::TempDir;
using mpool::loading::testing::write_file;
using mpool::tokenizer::Tokenizer;
using nlohmann::json;

namespace {

// The 256 characters GPT-2's byte-level alphabet maps the bytes to, in byte order.
std::vector<std::string> byte_alphabet() {
  std::vector<std::string> out;
  int extra = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    const int c = printable ? b : 256 + extra++;
    std::string s;
    if (c < 0x80) {
      s.push_back(static_cast<char>(c));
    } else {
      s.push_back(static_cast<char>(0xC0 | (c >> 6)));
      s.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
    out.push_back(s);
  }
  return out;
}

// A CLIP folder: every byte, every byte + "</w>", the merges of "hello</w>", then
// <|startoftext|> and <|endoftext|> last, as in OpenAI's vocabulary.
void write_clip(const std::filesystem::path& dir, const json& config_extra = json::object()) {
  json vocab = json::object();
  for (const auto& c : byte_alphabet()) vocab[c] = vocab.size();
  for (const auto& c : byte_alphabet()) vocab[c + "</w>"] = vocab.size();
  for (const char* t : {"he", "hel", "hell", "hello</w>", "<|startoftext|>", "<|endoftext|>"}) vocab[t] = vocab.size();
  write_file(dir / "vocab.json", vocab.dump());
  write_file(dir / "merges.txt", "#version: 0.2\nh e\nhe l\nhel l\nhell o</w>\n");
  json config = {{"tokenizer_class", "CLIPTokenizer"}, {"model_max_length", 77}};
  config.update(config_extra);
  write_file(dir / "tokenizer_config.json", config.dump());
}

// A GPT-2 folder: every byte, the merges of "Ġhi", and <|endoftext|>.
void write_gpt2(const std::filesystem::path& dir, const json& config_extra = json::object()) {
  json vocab = json::object();
  for (const auto& c : byte_alphabet()) vocab[c] = vocab.size();
  for (const char* t : {"\xC4\xA0h", "\xC4\xA0hi", "<|endoftext|>"}) vocab[t] = vocab.size();
  write_file(dir / "vocab.json", vocab.dump());
  write_file(dir / "merges.txt", "#version: 0.2\n\xC4\xA0 h\n\xC4\xA0h i\n");
  json config = {{"tokenizer_class", "GPT2Tokenizer"}};
  config.update(config_extra);
  write_file(dir / "tokenizer_config.json", config.dump());
}

std::unique_ptr<Tokenizer> open(const std::filesystem::path& dir) {
  const auto doc = read_tokenizer_document(dir);
  return Tokenizer::from_json(doc.json, doc.source);
}

std::vector<std::string> tokens_of(const Tokenizer& t, const std::string& text) {
  return t.encode(text).tokens;
}

TEST(SlowTokenizer, ClipComposesNormalizerSplitBpeSuffixAndStartEndProcessor) {
  TempDir dir;
  write_clip(dir.path());
  const json doc = slow_tokenizer_json(dir.path());
  EXPECT_EQ(doc["normalizer"]["normalizers"][0]["type"], "NFC");
  EXPECT_EQ(doc["normalizer"]["normalizers"][1]["pattern"]["Regex"], "\\s+");
  EXPECT_EQ(doc["normalizer"]["normalizers"][2]["type"], "Lowercase");
  EXPECT_EQ(doc["pre_tokenizer"]["pretokenizers"][0]["behavior"], "Removed");
  EXPECT_EQ(doc["pre_tokenizer"]["pretokenizers"][1]["type"], "ByteLevel");
  EXPECT_EQ(doc["model"]["end_of_word_suffix"], "</w>");
  EXPECT_EQ(doc["model"]["unk_token"], "<|endoftext|>");
  EXPECT_EQ(doc["post_processor"]["type"], "RobertaProcessing");
  EXPECT_EQ(doc["post_processor"]["cls"], json::array({"<|startoftext|>", 516}));
  EXPECT_EQ(doc["post_processor"]["sep"], json::array({"<|endoftext|>", 517}));
  ASSERT_EQ(doc["added_tokens"].size(), 2u);
  EXPECT_EQ(doc["added_tokens"][0]["id"], 516);
  EXPECT_TRUE(doc["added_tokens"][0]["special"].get<bool>());
}

TEST(SlowTokenizer, ClipEncodesLowercasedWordsWithEndOfWordTokensBetweenStartAndEnd) {
  TempDir dir;
  write_clip(dir.path());
  const auto tok = open(dir.path());
  EXPECT_EQ(tokens_of(*tok, "  HeLLo \t\nhi!"),
            (std::vector<std::string>{"<|startoftext|>", "hello</w>", "h", "i</w>", "!</w>", "<|endoftext|>"}));
  const auto ids = tok->encode("Hello hi!").ids;
  EXPECT_EQ(tok->decode(ids, true), "hello hi !");
  EXPECT_EQ(tok->decode(ids, false), "<|startoftext|>hello hi ! <|endoftext|>");
}

TEST(SlowTokenizer, SpecialTokensMapOverridesTokenizerConfigAndAddsNewTokensAfterTheVocabulary) {
  TempDir dir;
  write_clip(dir.path(), {{"pad_token", "<|endoftext|>"}});
  write_file(dir.path() / "special_tokens_map.json",
             json{{"pad_token", {{"content", "<pad>"}, {"lstrip", true}, {"normalized", false}}}}.dump());
  const json doc = slow_tokenizer_json(dir.path());
  ASSERT_EQ(doc["added_tokens"].size(), 3u);
  EXPECT_EQ(doc["added_tokens"][2]["content"], "<pad>");
  EXPECT_EQ(doc["added_tokens"][2]["id"], 518);
  EXPECT_TRUE(doc["added_tokens"][2]["lstrip"].get<bool>());
  const auto tok = open(dir.path());
  EXPECT_EQ(tok->encode("hello <pad>").ids, (std::vector<uint32_t>{516, 515, 518, 517}));
}

TEST(SlowTokenizer, AddedTokensDecoderKeepsItsIdsAndFlags) {
  TempDir dir;
  write_clip(dir.path(), {{"added_tokens_decoder",
                           {{"517", {{"content", "<|endoftext|>"}, {"normalized", true}, {"special", true}}},
                            {"600", {{"content", "<extra>"}, {"special", false}}}}}});
  const json doc = slow_tokenizer_json(dir.path());
  ASSERT_EQ(doc["added_tokens"].size(), 3u);  // <|startoftext|> (516) is added from the defaults
  EXPECT_EQ(doc["added_tokens"][1]["id"], 517);
  EXPECT_TRUE(doc["added_tokens"][1]["normalized"].get<bool>());
  EXPECT_EQ(doc["added_tokens"][2]["id"], 600);
  EXPECT_FALSE(doc["added_tokens"][2]["special"].get<bool>());
  EXPECT_EQ(open(dir.path())->decode({600, 517}, true), "<extra>");
}

TEST(SlowTokenizer, Gpt2UsesAddPrefixSpaceAndAddBosTokenFromTheConfig) {
  TempDir plain, prefixed;
  write_gpt2(plain.path());
  write_gpt2(prefixed.path(), {{"add_prefix_space", true}, {"add_bos_token", true}});
  EXPECT_EQ(tokens_of(*open(plain.path()), "hi hi"), (std::vector<std::string>{"h", "i", "\xC4\xA0hi"}));
  const auto tok = open(prefixed.path());
  EXPECT_EQ(tokens_of(*tok, "hi hi"), (std::vector<std::string>{"<|endoftext|>", "\xC4\xA0hi", "\xC4\xA0hi"}));
  EXPECT_EQ(tok->decode(tok->encode("hi hi").ids, true), " hi hi");
  EXPECT_EQ(slow_tokenizer_json(plain.path())["model"]["end_of_word_suffix"], "");
}

TEST(SlowTokenizer, RobertaWrapsSequencesInClsAndSep) {
  TempDir dir;
  write_gpt2(dir.path(), {{"tokenizer_class", "RobertaTokenizerFast"}, {"bos_token", "<|endoftext|>"},
                          {"cls_token", "<|endoftext|>"}, {"sep_token", "<|endoftext|>"}});
  const auto tok = open(dir.path());
  EXPECT_EQ(tokens_of(*tok, "hi"), (std::vector<std::string>{"<|endoftext|>", "h", "i", "<|endoftext|>"}));
}

TEST(SlowTokenizer, TokenizerJsonIsPreferredWhenPresent) {
  TempDir dir;
  write_clip(dir.path());
  write_file(dir.path() / "tokenizer.json", R"({"model": "the file"})");
  const auto doc = read_tokenizer_document(dir.path());
  EXPECT_EQ(doc.json, R"({"model": "the file"})");
  EXPECT_EQ(doc.source, (dir.path() / "tokenizer.json").string());
}

TEST(SlowTokenizer, UnknownTokenizerClassIsInvalidInputNamingFolderAndClass) {
  TempDir dir;
  write_clip(dir.path(), {{"tokenizer_class", "BertTokenizer"}});
  try {
    slow_tokenizer_json(dir.path());
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find(dir.path().string() + ": tokenizer_class 'BertTokenizer'"),
              std::string::npos)
        << e.what();
  }
}

TEST(SlowTokenizer, MissingFilesAreInvalidInputNamingTheFile) {
  TempDir dir;
  write_clip(dir.path());
  std::filesystem::remove(dir.path() / "tokenizer_config.json");
  EXPECT_NE(message_of([&] { slow_tokenizer_json(dir.path()); }).find("tokenizer_config.json is missing"),
            std::string::npos);
  std::filesystem::remove(dir.path() / "merges.txt");
  EXPECT_NE(message_of([&] { read_tokenizer_document(dir.path()); })
                .find((dir.path() / "tokenizer.json").string() + " is missing"),
            std::string::npos);
}

TEST(SlowTokenizer, MalformedMergesLineIsInvalidInputNamingFileAndLine) {
  TempDir dir;
  write_clip(dir.path());
  write_file(dir.path() / "merges.txt", "#version: 0.2\nh e\nhe l l\n");
  EXPECT_NE(message_of([&] { slow_tokenizer_json(dir.path()); }).find("merges.txt: line 3"), std::string::npos);
}

TEST(SlowTokenizer, NullBosTokenOfClipIsInvalidInputNamingTheToken) {
  TempDir dir;
  write_clip(dir.path(), {{"bos_token", nullptr}});
  EXPECT_NE(message_of([&] { slow_tokenizer_json(dir.path()); }).find(dir.path().string() + ": bos_token is null"),
            std::string::npos);
}

TEST(SlowTokenizer, MissingTokenizerClassIsInvalidInputNamingTheKey) {
  TempDir dir;
  write_clip(dir.path());
  write_file(dir.path() / "tokenizer_config.json", "{}");
  EXPECT_NE(message_of([&] { slow_tokenizer_json(dir.path()); }).find("\"tokenizer_class\" is missing"),
            std::string::npos);
}

}  // namespace

TEST(PrependLowercase, PutsLowercaseAheadOfTheNormalizerUnlessItHasOne) {
  using mpool::loading::prepend_lowercase;
  const auto normalizer = [](const std::string& doc) { return json::parse(doc)["normalizer"]; };
  // None: Lowercase alone (in a Sequence).
  EXPECT_EQ(normalizer(prepend_lowercase(R"({"normalizer":null,"model":{}})", "t")),
            json::parse(R"({"type":"Sequence","normalizers":[{"type":"Lowercase"}]})"));
  // One normalizer: Lowercase, then it.
  EXPECT_EQ(normalizer(prepend_lowercase(R"({"normalizer":{"type":"BertNormalizer","lowercase":false}})", "t")),
            json::parse(R"({"type":"Sequence","normalizers":[{"type":"Lowercase"},{"type":"BertNormalizer","lowercase":false}]})"));
  // A Sequence: Lowercase joins it, first.
  EXPECT_EQ(normalizer(prepend_lowercase(R"({"normalizer":{"type":"Sequence","normalizers":[{"type":"NFD"}]}})", "t")),
            json::parse(R"({"type":"Sequence","normalizers":[{"type":"Lowercase"},{"type":"NFD"}]})"));
  // Already a Lowercase, or a Sequence holding one: unchanged.
  for (const std::string doc : {R"({"normalizer":{"type":"Lowercase"}})",
                                R"({"normalizer":{"type":"Sequence","normalizers":[{"type":"NFD"},{"type":"Lowercase"}]}})"})
    EXPECT_EQ(prepend_lowercase(doc, "t"), doc);
  // The document must be a JSON object; the error names its source.
  EXPECT_NE(message_of([] { prepend_lowercase("[1]", "dir/tokenizer.json"); }).find("dir/tokenizer.json"),
            std::string::npos);
}

TEST(PrependLowercase, ATokenizerReadWithTheOptionLowercasesItsInput) {
  TempDir dir;
  write_file(dir.path() / "tokenizer.json", R"({"version":"1.0","normalizer":null,"pre_tokenizer":{"type":"Whitespace"},
    "model":{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##","max_input_chars_per_word":100,
    "vocab":{"[UNK]":0,"hello":1,"Hello":2}}})");
  mpool::loading::TokenizerOptions lower;
  lower.lowercase = true;
  const auto as_stored = Tokenizer::from_json(read_tokenizer_document(dir.path(), {}).json);
  const auto lowered = Tokenizer::from_json(read_tokenizer_document(dir.path(), lower).json);
  EXPECT_EQ(as_stored->encode("Hello").ids, std::vector<uint32_t>{2});
  EXPECT_EQ(lowered->encode("Hello").ids, std::vector<uint32_t>{1});
}
