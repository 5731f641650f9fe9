#include <gtest/gtest.h>

#include <cstring>
#include <functional>

#include "mpool/base/error.h"
#include "mpool/loading/safetensors.h"
#include "test_util.h"

namespace mpool::loading {
namespace {

using testing::float_tensors;
using testing::safetensors_bytes;
using testing::TempDir;
using testing::write_file;

std::string two_floats(const std::string& name, float a, float b) {
  std::string data(8, '\0');
  std::memcpy(data.data(), &a, 4);
  std::memcpy(data.data() + 4, &b, 4);
  return safetensors_bytes(R"({")" + name + R"(":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", data);
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Checkpoint, SingleFileExposesMappedTensorBytes) {
  TempDir dir;
  write_file(dir.path() / "model.safetensors", two_floats("w", 1.5f, -2.0f));
  const Checkpoint ckpt = Checkpoint::open(dir.path());
  ASSERT_EQ(ckpt.names(), std::vector<std::string>{"w"});
  const TensorRef ref = ckpt.require("w");
  float values[2];
  std::memcpy(values, ref.file->tensor_data(*ref.info), 8);
  EXPECT_EQ(values[0], 1.5f);
  EXPECT_EQ(values[1], -2.0f);
}

TEST(Checkpoint, ShardedIndexMapsEachTensorToItsShard) {
  TempDir dir;
  write_file(dir.path() / "model-00001-of-00002.safetensors", two_floats("a", 1, 2));
  write_file(dir.path() / "model-00002-of-00002.safetensors", two_floats("b", 3, 4));
  write_file(dir.path() / "model.safetensors.index.json",
             R"({"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})");
  const Checkpoint ckpt = Checkpoint::open(dir.path());
  EXPECT_EQ(ckpt.files().size(), 2u);
  EXPECT_EQ(ckpt.require("b").file->path().filename(), "model-00002-of-00002.safetensors");
  EXPECT_TRUE(ckpt.warnings().empty());
  ASSERT_TRUE(ckpt.index_path().has_value());
}

TEST(Checkpoint, MissingTensorNamesTensorAndFilesSearched) {
  TempDir dir;
  write_file(dir.path() / "model.safetensors", two_floats("w", 1, 2));
  const Checkpoint ckpt = Checkpoint::open(dir.path());
  const std::string msg = message_of([&] { ckpt.require("encoder.bias"); });
  EXPECT_NE(msg.find("missing tensor \"encoder.bias\""), std::string::npos) << msg;
  EXPECT_NE(msg.find((dir.path() / "model.safetensors").string()), std::string::npos) << msg;
}

TEST(Checkpoint, UnexpectedTensorsAreWarningsNotErrors) {
  TempDir dir;
  write_file(dir.path() / "model.safetensors", two_floats("pooler.dense.weight", 1, 2));
  const auto warnings = Checkpoint::open(dir.path()).unexpected({});
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("unexpected tensor \"pooler.dense.weight\""), std::string::npos);
}

TEST(Checkpoint, IndexPointingToWrongShardIsRejected) {
  TempDir dir;
  write_file(dir.path() / "s1.safetensors", two_floats("a", 1, 2));
  write_file(dir.path() / "model.safetensors.index.json", R"({"weight_map":{"b":"s1.safetensors"}})");
  const std::string msg = message_of([&] { Checkpoint::open(dir.path()); });
  EXPECT_NE(msg.find("tensor \"b\""), std::string::npos) << msg;
  EXPECT_NE(msg.find("s1.safetensors"), std::string::npos) << msg;
}

TEST(Checkpoint, IndexEscapingTheDirectoryIsRejected) {
  TempDir dir;
  write_file(dir.path() / "model.safetensors.index.json", R"({"weight_map":{"a":"../x.safetensors"}})");
  EXPECT_NE(message_of([&] { Checkpoint::open(dir.path()); }).find("not a file inside"), std::string::npos);
}

TEST(Checkpoint, ShardTensorMissingFromIndexIsAWarning) {
  TempDir dir;
  write_file(dir.path() / "s1.safetensors", two_floats("a", 1, 2));
  write_file(dir.path() / "s2.safetensors", two_floats("extra", 1, 2));
  write_file(dir.path() / "model.safetensors.index.json",
             R"({"weight_map":{"a":"s1.safetensors","x":"s2.safetensors"}})");
  // "x" is not in s2: an error naming it.
  EXPECT_NE(message_of([&] { Checkpoint::open(dir.path()); }).find("tensor \"x\""), std::string::npos);
  write_file(dir.path() / "model.safetensors.index.json", R"({"weight_map":{"a":"s1.safetensors"}})");
  write_file(dir.path() / "s1.safetensors",
             safetensors_bytes(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                               R"("b":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                               "xy"));
  const Checkpoint ckpt = Checkpoint::open(dir.path());
  ASSERT_EQ(ckpt.warnings().size(), 1u);
  EXPECT_NE(ckpt.warnings()[0].find("\"b\" is not listed"), std::string::npos);
  EXPECT_TRUE(ckpt.find("b").has_value());
}

TEST(Checkpoint, PickleAndGgufGiveConversionAdvice) {
  TempDir dir;
  write_file(dir.path() / "pytorch_model.bin", "PK\x03\x04 zip");
  std::string msg = message_of([&] { Checkpoint::open(dir.path()); });
  EXPECT_NE(msg.find("pytorch_model.bin is a PyTorch pickle checkpoint"), std::string::npos) << msg;
  EXPECT_NE(msg.find("safe_serialization=True"), std::string::npos) << msg;
  write_file(dir.path() / "model.gguf", "GGUF....");
  msg = message_of([&] { Checkpoint::open(dir.path() / "model.gguf"); });
  EXPECT_NE(msg.find("GGUF"), std::string::npos) << msg;
  // A pickle renamed to .safetensors is recognised by its first bytes.
  write_file(dir.path() / "renamed.safetensors", std::string("\x80\x02}q\x00.", 6));
  msg = message_of([&] { Checkpoint::open(dir.path() / "renamed.safetensors"); });
  EXPECT_NE(msg.find("pickle"), std::string::npos) << msg;
}

TEST(Checkpoint, HeaderLengthThatLooksLikePickleMagicStillLoads) {
  // 640 = 0x280: the file starts "\x80\x02", like a protocol-2 pickle.
  std::string header = R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})";
  header.resize(640, ' ');
  TempDir dir;
  write_file(dir.path() / "model.safetensors", safetensors_bytes(header, "x"));
  const Checkpoint ckpt = Checkpoint::open(dir.path());
  EXPECT_EQ(ckpt.names(), std::vector<std::string>{"w"});
}

TEST(Checkpoint, DirectoryWithoutWeightsSaysWhatItLookedFor) {
  TempDir dir;
  const std::string msg = message_of([&] { Checkpoint::open(dir.path()); });
  EXPECT_NE(msg.find("has no weights"), std::string::npos) << msg;
  EXPECT_NE(message_of([&] { Checkpoint::open(dir.path() / "nope"); }).find("no such file"), std::string::npos);
}

TEST(CheckpointWithPrefix, ViewsNameStoredTensorsInTheirMessagesAndCompose) {
  TempDir dir;
  write_file(dir.path() / "model.safetensors",
             float_tensors({"text_model.encoder.layers.0.w", "text_model.embeddings.w", "vision_model.w"}));
  const Checkpoint whole = Checkpoint::open(dir.path());
  const Checkpoint text = whole.with_prefix("text_model.");
  EXPECT_EQ(text.names(), (std::vector<std::string>{"embeddings.w", "encoder.layers.0.w"}));
  EXPECT_EQ(text.files().size(), 1u);
  EXPECT_FALSE(text.find("vision_model.w").has_value());
  EXPECT_EQ(text.unexpected({"embeddings.w"}),
            std::vector<std::string>{(dir.path() / "model.safetensors").string() +
                                     ": unexpected tensor \"text_model.encoder.layers.0.w\" is not used by the model "
                                     "and was not loaded"});
  EXPECT_EQ(message_of([&] { text.require("pooler.w"); }),
            "missing tensor \"pooler.w\" (stored as \"text_model.pooler.w\"): not found in " +
                (dir.path() / "model.safetensors").string() + " (tensors under \"text_model.\")");
  const Checkpoint encoder = text.with_prefix("encoder.");
  EXPECT_EQ(encoder.prefix(), "text_model.encoder.");
  EXPECT_EQ(encoder.names(), std::vector<std::string>{"layers.0.w"});
  EXPECT_EQ(message_of([&] { whole.with_prefix("audio_model."); }),
            (dir.path() / "model.safetensors").string() + ": no tensor is stored under the prefix \"audio_model.\"");
}

TEST(Checkpoint, DiffusersFolderOpensItsMainFileBesideAVariant) {
  TempDir dir;
  write_file(dir.path() / "diffusion_pytorch_model.safetensors", float_tensors({"conv_in.weight", "conv_out.weight"}));
  write_file(dir.path() / "diffusion_pytorch_model.fp16.safetensors", float_tensors({"conv_in.weight"}));
  EXPECT_EQ(Checkpoint::open(dir.path()).names(), (std::vector<std::string>{"conv_in.weight", "conv_out.weight"}));
  write_file(dir.path() / "diffusion_pytorch_model.safetensors.index.json",
             R"({"weight_map": {"conv_in.weight": "diffusion_pytorch_model.fp16.safetensors"}})");
  const Checkpoint sharded = Checkpoint::open(dir.path());
  EXPECT_EQ(sharded.index_path(), dir.path() / "diffusion_pytorch_model.safetensors.index.json");
  EXPECT_EQ(sharded.names(), std::vector<std::string>{"conv_in.weight"});
}

}  // namespace
}  // namespace mpool::loading
