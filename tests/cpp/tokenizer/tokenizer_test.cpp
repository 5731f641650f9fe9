#include "mpool/tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <string>

#include "mpool/base/error.h"

using mpool::Error;
using mpool::ErrorCode;
using mpool::tokenizer::DecodeStream;
using mpool::tokenizer::Tokenizer;

namespace {

// Byte-level BPE over a vocabulary with every byte plus a few merges.
std::string byte_level_json() {
  std::string vocab;
  // The printable byte-level alphabet, in the GPT-2 order.
  std::vector<std::string> alphabet;
  std::vector<int> bytes;
  for (int b = '!'; b <= '~'; ++b) bytes.push_back(b);
  for (int b = 0xA1; b <= 0xAC; ++b) bytes.push_back(b);
  for (int b = 0xAE; b <= 0xFF; ++b) bytes.push_back(b);
  int extra = 0;
  std::vector<char32_t> table(256);
  for (int b = 0; b < 256; ++b) {
    bool printable = std::find(bytes.begin(), bytes.end(), b) != bytes.end();
    table[b] = printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
  }
  auto utf8 = [](char32_t c) {
    std::string s;
    if (c < 0x80) {
      s.push_back(static_cast<char>(c));
    } else {
      s.push_back(static_cast<char>(0xC0 | (c >> 6)));
      s.push_back(static_cast<char>(0x80 | (c & 0x3F)));
    }
    return s;
  };
  int id = 0;
  for (int b = 0; b < 256; ++b) {
    std::string t = utf8(table[b]);
    if (t == "\"") t = "\\\"";
    if (t == "\\") t = "\\\\";
    vocab += (id ? "," : "") + std::string("\"") + t + "\":" + std::to_string(id);
    ++id;
  }
  vocab += ",\"he\":256,\"ll\":257,\"hell\":258,\"hello\":259,\"\xC4\xA0w\":260";
  return R"({"version":"1.0","truncation":null,"padding":null,
    "added_tokens":[{"id":261,"content":"<|end|>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
    "normalizer":null,
    "pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
    "post_processor":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
    "decoder":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},
    "model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,
      "fuse_unk":false,"byte_fallback":false,"ignore_merges":false,
      "vocab":{)" + vocab + R"(},"merges":["h e","l l","he ll","hell o","\u0120 w"]}})";
}

std::string wordpiece_json(const std::string& extra_model_fields = "") {
  return R"({"version":"1.0","added_tokens":[
      {"id":0,"content":"[UNK]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
      {"id":1,"content":"[CLS]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
      {"id":2,"content":"[SEP]","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
    "normalizer":{"type":"BertNormalizer","clean_text":true,"handle_chinese_chars":true,"strip_accents":null,"lowercase":true},
    "pre_tokenizer":{"type":"BertPreTokenizer"},
    "post_processor":{"type":"BertProcessing","sep":["[SEP]",2],"cls":["[CLS]",1]},
    "decoder":{"type":"WordPiece","prefix":"##","cleanup":true},
    "model":{"type":"WordPiece","unk_token":"[UNK]","continuing_subword_prefix":"##","max_input_chars_per_word":100)" +
         extra_model_fields + R"(,
      "vocab":{"[UNK]":0,"[CLS]":1,"[SEP]":2,"hello":3,"world":4,"un":5,"##aff":6,"##able":7,"!":8,"cafe":9}}})";
}

TEST(TokenizerTest, ByteLevelBpeAppliesMergesAndReportsOffsets) {
  auto tok = Tokenizer::from_json(byte_level_json());
  auto e = tok->encode("hello world");
  ASSERT_EQ(e.tokens.size(), 6u);  // hello, Ġw, o, r, l, d
  EXPECT_EQ(e.tokens[0], "hello");
  EXPECT_EQ(e.tokens[1], "\xC4\xA0w");
  EXPECT_EQ(e.offsets[0], (std::pair<size_t, size_t>{0, 5}));
  // trim_offsets drops the leading space of "Ġw" from its offsets.
  EXPECT_EQ(e.offsets[1], (std::pair<size_t, size_t>{6, 7}));
  EXPECT_EQ(tok->decode(e.ids), "hello world");
}

TEST(TokenizerTest, ByteLevelCharOffsetsCountCharactersNotBytes) {
  auto tok = Tokenizer::from_json(byte_level_json());
  auto e = tok->encode("\xC3\xA9h");  // "éh"
  ASSERT_EQ(e.tokens.size(), 3u);     // two bytes of é, then h
  EXPECT_EQ(e.offsets[0], (std::pair<size_t, size_t>{0, 2}));
  EXPECT_EQ(e.char_offsets[0], (std::pair<size_t, size_t>{0, 1}));
  EXPECT_EQ(e.char_offsets[2], (std::pair<size_t, size_t>{1, 2}));
}

TEST(TokenizerTest, SpecialTokenInsideTextIsOneTokenAndSkippedOnDecode) {
  auto tok = Tokenizer::from_json(byte_level_json());
  auto e = tok->encode("hello<|end|>hello");
  ASSERT_EQ(e.ids.size(), 3u);
  EXPECT_EQ(e.ids[1], 261u);
  EXPECT_EQ(tok->decode(e.ids, true), "hellohello");
  EXPECT_EQ(tok->decode(e.ids, false), "hello<|end|>hello");
}

TEST(TokenizerTest, WordPieceSplitsSubwordsAndAddsClsSep) {
  auto tok = Tokenizer::from_json(wordpiece_json());
  auto e = tok->encode("Unaffable CAFÉ hello!");
  std::vector<std::string> want{"[CLS]", "un", "##aff", "##able", "cafe", "hello", "!", "[SEP]"};
  EXPECT_EQ(e.tokens, want);
  EXPECT_EQ(e.special_tokens_mask.front(), 1u);
  // "cafe" maps back to the original "CAFÉ" (bytes 10..15, É is two bytes).
  EXPECT_EQ(e.offsets[4], (std::pair<size_t, size_t>{10, 15}));
  EXPECT_EQ(e.char_offsets[4], (std::pair<size_t, size_t>{10, 14}));
  EXPECT_EQ(tok->decode(e.ids), "unaffable cafe hello!");
}

TEST(TokenizerTest, WordLevelMapsWholeWordsAndUnknownOnesToTheUnkToken) {
  const std::string json = R"({"version":"1.0","pre_tokenizer":{"type":"Whitespace"},
    "model":{"type":"WordLevel","unk_token":"[UNK]","vocab":{"[UNK]":0,"hello":1,"world":2,"!":3}}})";
  auto tok = Tokenizer::from_json(json);
  auto e = tok->encode("hello brave world!");
  EXPECT_EQ(e.ids, (std::vector<uint32_t>{1, 0, 2, 3}));
  EXPECT_EQ(e.tokens, (std::vector<std::string>{"hello", "[UNK]", "world", "!"}));
  EXPECT_EQ(e.offsets[1], (std::pair<size_t, size_t>{6, 11}));  // the unknown word's own bytes
  // Without the unk token in the vocabulary, an unknown word is an error naming it.
  auto no_unk = Tokenizer::from_json(R"({"version":"1.0","pre_tokenizer":{"type":"Whitespace"},
    "model":{"type":"WordLevel","unk_token":"[UNK]","vocab":{"hello":0}}})");
  EXPECT_EQ(no_unk->encode("hello").ids, std::vector<uint32_t>{0});
  try {
    no_unk->encode("hello brave");
    ADD_FAILURE() << "no error";
  } catch (const Error& err) {
    EXPECT_EQ(err.code(), ErrorCode::kInvalidInput);
    EXPECT_NE(std::string(err.what()).find("\"brave\" is not in the vocabulary"), std::string::npos) << err.what();
  }
}

TEST(TokenizerTest, PairGetsSecondTypeIdAndTruncationKeepsBudget) {
  auto tok = Tokenizer::from_json(wordpiece_json());
  mpool::tokenizer::TruncationParams t;
  t.max_length = 6;
  tok->set_truncation(t);
  auto e = tok->encode("hello world hello", std::string_view("world world"));
  EXPECT_EQ(e.size(), 6u);
  // Budget 3 after specials: longest-first gives the longer first sequence 2, the pair 1.
  std::vector<uint32_t> types{0, 0, 0, 0, 1, 1};
  EXPECT_EQ(e.type_ids, types);
}

TEST(TokenizerTest, PaddingFillsToFixedLength) {
  auto tok = Tokenizer::from_json(wordpiece_json());
  mpool::tokenizer::PaddingParams p;
  p.fixed_length = 8;
  tok->set_padding(p);
  auto e = tok->encode("hello");
  ASSERT_EQ(e.size(), 8u);
  EXPECT_EQ(e.attention_mask[2], 1u);
  EXPECT_EQ(e.attention_mask[3], 0u);
  EXPECT_EQ(e.tokens[7], "[PAD]");
}

TEST(TokenizerTest, InvalidUtf8NamesTheByteOffset) {
  auto tok = Tokenizer::from_json(byte_level_json());
  try {
    tok->encode(std::string("abc\xFF", 4));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
    EXPECT_NE(std::string(e.what()).find("byte offset 3"), std::string::npos) << e.what();
  }
}

TEST(TokenizerTest, MalformedJsonNamesFileAndPath) {
  try {
    Tokenizer::from_json(wordpiece_json(R"(,"vocab_extra":1)").replace(
                             wordpiece_json().find("\"max_input_chars_per_word\":100"), 30,
                             "\"max_input_chars_per_word\":\"x\""),
                         "my/tokenizer.json");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
    std::string msg = e.what();
    EXPECT_NE(msg.find("my/tokenizer.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("$.model.max_input_chars_per_word"), std::string::npos) << msg;
  }
}

TEST(TokenizerTest, UnsupportedComponentIsRejectedByName) {
  std::string json = wordpiece_json();
  json.replace(json.find("\"type\":\"BertPreTokenizer\""), 25, "\"type\":\"UnicodeScripts\"");
  try {
    Tokenizer::from_json(json);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("UnicodeScripts"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("$.pre_tokenizer.type"), std::string::npos) << e.what();
  }
}

TEST(TokenizerTest, NotJsonIsInvalidInput) {
  EXPECT_THROW(
      {
        try {
          Tokenizer::from_json("{\"model\": [", "x.json");
        } catch (const Error& e) {
          EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
          throw;
        }
      },
      Error);
}

TEST(TokenizerTest, DecodeStreamNeverEmitsHalfACharacter) {
  auto tok = Tokenizer::from_json(byte_level_json());
  std::string text = "hello \xF0\x9F\x98\x80 world \xE4\xB8\x80";  // emoji and CJK: split into byte tokens
  auto e = tok->encode(text);
  DecodeStream stream(*tok);
  std::string joined;
  for (uint32_t id : e.ids) {
    auto piece = stream.step(id);
    if (piece) {
      EXPECT_EQ(piece->find("\xEF\xBF\xBD"), std::string::npos);
      joined += *piece;
    }
  }
  EXPECT_EQ(joined, tok->decode(e.ids));
  EXPECT_EQ(joined, text);
}

TEST(TokenizerTest, DecodeStreamFlushGivesAnUnfinishedCharacterAsDecodeWritesIt) {
  auto tok = Tokenizer::from_json(byte_level_json());
  auto e = tok->encode("ab \xF0\x9F\x98\x80");  // the emoji's four bytes are four tokens
  ASSERT_GE(e.ids.size(), 3u);
  for (size_t cut = 1; cut <= e.ids.size(); ++cut) {
    std::vector<uint32_t> ids(e.ids.begin(), e.ids.begin() + static_cast<long>(cut));
    DecodeStream stream(*tok);
    std::string joined;
    for (uint32_t id : ids)
      if (auto piece = stream.step(id)) joined += *piece;
    joined += stream.flush();
    EXPECT_EQ(joined, tok->decode(ids)) << "first " << cut << " ids";
    EXPECT_EQ(stream.flush(), "") << "a second flush gives nothing more";
  }
}

TEST(TokenizerTest, BatchEncodeMatchesSequentialEncode) {
  auto tok = Tokenizer::from_json(wordpiece_json());
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) texts.push_back(i % 3 ? "hello world unaffable" : "caf\xC3\xA9 !");
  auto batch = tok->encode_batch(texts, nullptr, true, 2);
  ASSERT_EQ(batch.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(batch[i].ids, tok->encode(texts[i]).ids);
}

TEST(TokenizerTest, BpeDropoutIsRejected) {
  std::string json = byte_level_json();
  json.replace(json.find("\"dropout\":null"), 14, "\"dropout\":0.1");
  try {
    Tokenizer::from_json(json);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("$.model.dropout"), std::string::npos) << e.what();
  }
}

}  // namespace

namespace {

TEST(TokenizerTest, BpeWordCacheGivesSameResultsAcrossThreads) {
  auto tok = Tokenizer::from_json(byte_level_json());
  std::vector<std::string> texts;
  for (int i = 0; i < 400; ++i) texts.push_back(i % 2 ? "hello world hello" : "well hello \xE4\xB8\x80 world");
  auto first = tok->encode_batch(texts, nullptr, true, 2);
  auto second = tok->encode_batch(texts, nullptr, true, 2);  // served from the cache
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(first[i].ids, second[i].ids);
    EXPECT_EQ(first[i].offsets, second[i].offsets);
    EXPECT_EQ(first[i].ids, tok->encode(texts[i]).ids);
  }
}

TEST(TokenizerTest, NestingTooDeepIsRejectedNotACrash) {
  std::string json = R"({"model":{"type":"WordPiece","vocab":{"a":0,"[UNK]":1}},"normalizer":)";
  for (int i = 0; i < 5000; ++i) json += R"({"type":"Sequence","normalizers":[)";
  json += R"({"type":"Lowercase"})";
  for (int i = 0; i < 5000; ++i) json += "]}";
  json += "}";
  EXPECT_THROW(Tokenizer::from_json(json), Error);
}

}  // namespace

namespace {

TEST(TokenizerTest, SparseHugeTokenIdDoesNotAllocateADenseTable) {
  std::string json = R"({"model":{"type":"WordPiece","unk_token":"[UNK]","vocab":{"[UNK]":0,"hi":2000000000}}})";
  auto tok = Tokenizer::from_json(json);
  EXPECT_EQ(tok->encode("hi").ids, std::vector<uint32_t>{2000000000u});
  EXPECT_EQ(tok->id_to_token(2000000000u), std::optional<std::string>("hi"));
}

TEST(TokenizerTest, HugePaddingLengthIsRejected) {
  std::string json = R"({"padding":{"strategy":{"Fixed":1000000000000}},"model":{"type":"WordPiece","vocab":{"[UNK]":0}}})";
  try {
    Tokenizer::from_json(json);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("$.padding.strategy.Fixed"), std::string::npos) << e.what();
  }
}

}  // namespace
