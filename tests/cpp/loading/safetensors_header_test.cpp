#include <gtest/gtest.h>

#include <cstring>

#include "mpool/base/error.h"
#include "mpool/loading/safetensors.h"
#include "test_util.h"

namespace mpool::loading {
namespace {

using testing::safetensors_bytes;

SafetensorsHeader parse(const std::string& bytes) {
  return parse_safetensors_header(reinterpret_cast<const std::byte*>(bytes.data()), bytes.size(), "w.safetensors");
}

// Runs parse and returns the error message ("" when it did not throw).
std::string error_of(const std::string& bytes) {
  try {
    parse(bytes);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidInput);
    return e.what();
  }
  return "";
}

TEST(SafetensorsHeader, ParsesTensorsMetadataAndOffsets) {
  const auto h = parse(safetensors_bytes(
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("b":{"dtype":"BF16","shape":[],"data_offsets":[24,26]}})",
      std::string(26, '\0')));
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.metadata.at("format"), "pt");
  EXPECT_EQ(h.tensors[0].name, "a");
  EXPECT_EQ(h.tensors[0].shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(h.tensors[0].numel(), 6u);
  EXPECT_EQ(h.tensors[1].dtype, DType::kBF16);
  EXPECT_EQ(h.tensors[1].numel(), 1u);
  EXPECT_EQ(h.data_size, 26u);
}

TEST(SafetensorsHeader, EveryDtypeNameRoundTripsWithItsSize) {
  for (const char* name : {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F8_E4M3", "F8_E5M2",
                           "F16", "BF16", "F32", "F64"}) {
    const auto d = parse_dtype(name);
    ASSERT_TRUE(d.has_value()) << name;
    EXPECT_STREQ(dtype_name(*d), name);
  }
  EXPECT_EQ(dtype_size(DType::kF64), 8u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_FALSE(parse_dtype("F128").has_value());
}

TEST(SafetensorsHeader, FileShorterThanLengthPrefixIsRejected) {
  EXPECT_NE(error_of("abc").find("too small"), std::string::npos);
}

TEST(SafetensorsHeader, HeaderLengthBeyondFileNamesFileAndLength) {
  std::string bytes = safetensors_bytes("{}", "");
  bytes[0] = 100;
  const std::string msg = error_of(bytes);
  EXPECT_NE(msg.find("w.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("header length 100 goes beyond the end of the file"), std::string::npos) << msg;
}

TEST(SafetensorsHeader, MalformedJsonIsRejected) {
  const std::string msg = error_of(safetensors_bytes(R"({"a": {"dtype": )", ""));
  EXPECT_NE(msg.find("w.safetensors: malformed JSON header"), std::string::npos) << msg;
}

TEST(SafetensorsHeader, OffsetsOutsideDataNameTheTensor) {
  const std::string msg =
      error_of(safetensors_bytes(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, '\0')));
  EXPECT_NE(msg.find("tensor \"w\""), std::string::npos) << msg;
  EXPECT_NE(msg.find("outside the data section"), std::string::npos) << msg;
}

TEST(SafetensorsHeader, OverlappingTensorsNameBoth) {
  const std::string msg = error_of(safetensors_bytes(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      std::string(12, '\0')));
  EXPECT_NE(msg.find("tensor \"b\""), std::string::npos) << msg;
  EXPECT_NE(msg.find("overlap tensor \"a\""), std::string::npos) << msg;
}

TEST(SafetensorsHeader, EmptyTensorsNeverOverlap) {
  const auto h = parse(safetensors_bytes(
      R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
      std::string(8, '\0')));
  EXPECT_EQ(h.tensors.size(), 2u);
}

TEST(SafetensorsHeader, ShapeTimesDtypeMustMatchByteRange) {
  const std::string msg =
      error_of(safetensors_bytes(R"({"w":{"dtype":"F16","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')));
  EXPECT_NE(msg.find("tensor \"w\": shape [3] x F16 needs 6 bytes, but data_offsets span 8"), std::string::npos)
      << msg;
}

TEST(SafetensorsHeader, ShapeProductOverflowIsRejected) {
  const std::string msg = error_of(safetensors_bytes(
      R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", ""));
  EXPECT_NE(msg.find("more than 2^64"), std::string::npos) << msg;
}

TEST(SafetensorsHeader, WrongFieldTypesNameTheTensor) {
  for (const char* entry : {R"({"w":{"dtype":5,"shape":[],"data_offsets":[0,4]}})",
                            R"({"w":{"dtype":"F33","shape":[],"data_offsets":[0,4]}})",
                            R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})",
                            R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})",
                            R"({"w":{"dtype":"F32","shape":[],"data_offsets":[0]}})",
                            R"({"w":{"dtype":"F32","shape":[],"data_offsets":[4,0]}})", R"({"w":[]})"}) {
    const std::string msg = error_of(safetensors_bytes(entry, std::string(4, '\0')));
    EXPECT_NE(msg.find("tensor \"w\""), std::string::npos) << entry << " -> " << msg;
  }
}

TEST(SafetensorsHeader, NonObjectHeaderAndBadMetadataAreRejected) {
  EXPECT_NE(error_of(safetensors_bytes("[1,2]", "")).find("must be a JSON object"), std::string::npos);
  EXPECT_NE(error_of(safetensors_bytes(R"({"__metadata__":{"k":1}})", "")).find("\"__metadata__\""),
            std::string::npos);
}

TEST(SafetensorsHeader, PaddedHeaderIsAccepted) {
  // Writers pad the header with spaces so the data section is 8-byte aligned.
  const auto h = parse(safetensors_bytes(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}   )", "x"));
  EXPECT_EQ(h.tensors.size(), 1u);
}

}  // namespace
}  // namespace mpool::loading
