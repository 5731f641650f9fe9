// Base64 strings and data URIs: what decodes, and the byte offset every refusal names.
#include <gtest/gtest.h>

#include <string>

#include "mpool/base/error.h"
#include "mpool/imageio/source.h"

namespace mpool::imageio {
namespace {

std::string message_of(auto f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return {};
}

TEST(Base64, DecodesPaddedUnpaddedAndWrappedText) {
  EXPECT_EQ(decode_base64("aGVsbG8=", "s"), "hello");
  EXPECT_EQ(decode_base64("aGVsbG8", "s"), "hello");
  EXPECT_EQ(decode_base64("aGVs\r\nbG8h", "s"), "hello!");
  EXPECT_EQ(decode_base64("  aGk=  \n", "s"), "hi");
  EXPECT_EQ(decode_base64("+/+/", "s"), std::string("\xfb\xff\xbf"));
  const std::string all_bytes = [] {
    std::string s;
    for (int i = 0; i < 256; ++i) s.push_back(static_cast<char>(i));
    return s;
  }();
  // Python: base64.b64encode(bytes(range(256)))
  const std::string encoded =
      "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+P0BBQkNERUZHSElKS0xNTk9Q"
      "UVJTVFVWV1hZWltcXV5fYGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn+AgYKDhIWGh4iJiouMjY6PkJGSk5SVlpeYmZqbnJ2en6Ch"
      "oqOkpaanqKmqq6ytrq+wsbKztLW2t7i5uru8vb6/wMHCw8TFxsfIycrLzM3Oz9DR0tPU1dbX2Nna29zd3t/g4eLj5OXm5+jp6uvs7e7v8PHy"
      "8/T19vf4+fr7/P3+/w==";
  EXPECT_EQ(decode_base64(encoded, "s"), all_bytes);
}

TEST(Base64, ABadCharacterIsNamedWithItsByteOffset) {
  EXPECT_EQ(message_of([] { decode_base64("aGVs#G8=", "image #2 (base64)"); }),
            "image #2 (base64): not valid base64: byte 4 is '#' (0x23), not a base64 character (A-Z a-z 0-9 + / =)");
  EXPECT_EQ(message_of([] { decode_base64("aGV\xc3\xa9", "s", 100); }),
            "s: not valid base64: byte 103 is 0xc3, not a base64 character (A-Z a-z 0-9 + / =)");
  EXPECT_EQ(message_of([] { decode_base64("-_", "s"); }),  // URL-safe alphabet: not standard base64
            "s: not valid base64: byte 0 is '-' (0x2d), not a base64 character (A-Z a-z 0-9 + / =)");
}

TEST(Base64, PaddingMustBeWhatTheLengthNeedsAndEndTheText) {
  EXPECT_NE(message_of([] { decode_base64("aG=k", "s"); }).find("byte 3 is 'k' (0x6b) after the '=' padding at byte 2"),
            std::string::npos);
  EXPECT_NE(message_of([] { decode_base64("aGk==", "s"); }).find("2 '=' at byte 3 where 1 belong"), std::string::npos);
  EXPECT_NE(message_of([] { decode_base64("aGVs=", "s"); }).find("1 '=' at byte 4 where none belong"),
            std::string::npos);
  EXPECT_NE(message_of([] { decode_base64("aGVsb", "s"); }).find("5 characters, one too many"), std::string::npos);
  EXPECT_NE(message_of([] { decode_base64("", "s"); }).find("no data"), std::string::npos);
  EXPECT_NE(message_of([] { decode_base64(" \n", "s"); }).find("no data"), std::string::npos);
}

TEST(DataUri, DecodesBase64AndPercentEncodedPayloads) {
  DataUri a = parse_data_uri("data:image/png;base64,aGVsbG8=", "u");
  EXPECT_EQ(a.media_type, "image/png");
  EXPECT_EQ(a.data, "hello");
  DataUri b = parse_data_uri("DATA:image/svg+xml;charset=utf-8;BASE64,aGk=", "u");
  EXPECT_EQ(b.media_type, "image/svg+xml");
  EXPECT_EQ(b.data, "hi");
  DataUri c = parse_data_uri("data:,a%20b%ff", "u");
  EXPECT_EQ(c.media_type, "");
  EXPECT_EQ(c.data, std::string("a b\xff"));
  DataUri d = parse_data_uri("data:text/plain;base64=no,aGk=", "u");  // "base64=no" is a parameter, not the flag
  EXPECT_EQ(d.data, "aGk=");
}

TEST(DataUri, RefusalsNameTheByteOffsetInTheUri) {
  EXPECT_EQ(message_of([] { parse_data_uri("data:image/png;base64,aGVs!G8=", "data URI"); }),
            "data URI: not valid base64: byte 26 is '!' (0x21), not a base64 character (A-Z a-z 0-9 + / =)");
  EXPECT_EQ(message_of([] { parse_data_uri("data:,ab%4", "data URI"); }),
            "data URI: the '%' at byte 8 is not followed by two hexadecimal digits");
  EXPECT_NE(message_of([] { parse_data_uri("data:image/png;base64", "u"); }).find("has no ','"), std::string::npos);
  EXPECT_NE(message_of([] { parse_data_uri("image/png;base64,aGk=", "u"); }).find("not a data URI"),
            std::string::npos);
  EXPECT_NE(message_of([] { parse_data_uri("data:image/png,", "u"); }).find("no data"), std::string::npos);
  EXPECT_NE(message_of([] { parse_data_uri("dat", "u"); }).find("not a data URI"), std::string::npos);
}

}  // namespace
}  // namespace mpool::imageio
