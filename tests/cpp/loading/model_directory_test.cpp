#include <gtest/gtest.h>

#include <functional>
#include <map>

#include "mpool/base/error.h"
#include "mpool/loading/inspect.h"
#include "mpool/loading/model_directory.h"
#include "test_util.h"

namespace mpool::loading {
namespace {

namespace fs = std::filesystem;
using testing::float_tensors;
using testing::TempDir;
using testing::write_file;

// Every refusal here must be InvalidInput: the message, after checking the code.
std::string message_of(const std::function<void()>& f) {
  return testing::message_of([&] {
    try {
      f();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidInput) << e.what();
      throw;
    }
  });
}

std::vector<std::string> names_of(const std::vector<const Component*>& components) {
  std::vector<std::string> out;
  for (const Component* c : components) out.push_back(c->name);
  return out;
}

std::vector<std::string> names_of(const std::vector<Component>& components) {
  std::vector<std::string> out;
  for (const Component& c : components) out.push_back(c.name);
  return out;
}

// A Stable Diffusion XL pipeline as diffusers saves it, by hand: two text encoders,
// two tokenizers, a unet, a sharded vae, a scheduler and two components saved as None.
void write_sdxl_pipeline(const fs::path& d) {
  write_file(d / "model_index.json", R"({
    "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1",
    "feature_extractor": [null, null], "image_encoder": [null, null],
    "force_zeros_for_empty_prompt": true,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]})");
  write_file(d / "scheduler" / "scheduler_config.json",
             R"({"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000, "prediction_type": "epsilon"})");
  for (const char* te : {"text_encoder", "text_encoder_2"}) {
    write_file(d / te / "config.json",
               R"({"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_size": 32,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 10})");
    write_file(d / te / "model.safetensors", float_tensors({"text_model.embeddings.token_embedding.weight",
                                                            "text_model.final_layer_norm.weight"}));
  }
  write_file(d / "tokenizer" / "vocab.json", "{}");
  write_file(d / "tokenizer" / "merges.txt", "#version: 0.2\n");
  write_file(d / "tokenizer" / "tokenizer_config.json", R"({"tokenizer_class": "CLIPTokenizer"})");
  write_file(d / "tokenizer_2" / "tokenizer.json", "{}");
  write_file(d / "unet" / "config.json",
             R"({"_class_name": "UNet2DConditionModel", "in_channels": 4, "block_out_channels": [2, 4]})");
  write_file(d / "unet" / "diffusion_pytorch_model.safetensors", float_tensors({"conv_in.weight", "conv_out.weight"}));
  write_file(d / "unet" / "diffusion_pytorch_model.fp16.safetensors", float_tensors({"conv_in.weight"}));
  write_file(d / "vae" / "config.json", R"({"_class_name": "AutoencoderKL", "latent_channels": 4})");
  write_file(d / "vae" / "diffusion_pytorch_model-00001-of-00002.safetensors", float_tensors({"encoder.conv_in.weight"}));
  write_file(d / "vae" / "diffusion_pytorch_model-00002-of-00002.safetensors", float_tensors({"decoder.conv_in.weight"}));
  write_file(d / "vae" / "diffusion_pytorch_model.safetensors.index.json",
             R"({"weight_map": {"encoder.conv_in.weight": "diffusion_pytorch_model-00001-of-00002.safetensors",
                                "decoder.conv_in.weight": "diffusion_pytorch_model-00002-of-00002.safetensors"}})");
}

TEST(ModelDirectoryPipeline, EachModelIndexEntryIsAComponentOfTheKindItsFolderHolds) {
  TempDir dir;
  write_sdxl_pipeline(dir.path());
  const ModelDirectory md = ModelDirectory::open(dir.path());
  ASSERT_TRUE(md.pipeline().has_value());
  EXPECT_EQ(md.pipeline()->class_name, "StableDiffusionXLPipeline");
  EXPECT_EQ(*md.pipeline()->diffusers_version, "0.42.1");
  EXPECT_EQ(md.pipeline()->options.at("force_zeros_for_empty_prompt"), true);
  EXPECT_EQ(names_of(md.components()), (std::vector<std::string>{"scheduler", "text_encoder", "text_encoder_2",
                                                                  "tokenizer", "tokenizer_2", "unet", "vae"}));
  // [null, null] entries are components the pipeline was saved without: listed, not described.
  std::vector<std::string> absent;
  for (const auto& e : md.pipeline()->entries)
    if (!e.class_name) absent.push_back(e.name);
  EXPECT_EQ(absent, (std::vector<std::string>{"feature_extractor", "image_encoder"}));
  EXPECT_EQ(md.pipeline()->entries.size(), 9u);

  const Component& unet = md.require("unet");
  EXPECT_EQ(unet.kind, ComponentKind::kDiffusersModel);
  EXPECT_EQ(*unet.library, "diffusers");
  EXPECT_EQ(*unet.class_name, "UNet2DConditionModel");
  EXPECT_EQ(unet.folder, "unet");
  EXPECT_EQ(*unet.config_file, "unet/config.json");
  EXPECT_EQ(unet.config->get<std::int64_t>("in_channels"), 4);
  EXPECT_EQ(unet.weights->files, std::vector<std::string>{"unet/diffusion_pytorch_model.safetensors"});
  EXPECT_EQ(unet.weights->other_files, std::vector<std::string>{"unet/diffusion_pytorch_model.fp16.safetensors"});
  EXPECT_EQ(md.checkpoint("unet").names(), (std::vector<std::string>{"conv_in.weight", "conv_out.weight"}));

  const Component& vae = md.require("vae");
  EXPECT_EQ(vae.weights->format, WeightsFormat::kSafetensorsSharded);
  EXPECT_EQ(*vae.weights->index, "vae/diffusion_pytorch_model.safetensors.index.json");
  EXPECT_EQ(vae.weights->files.size(), 2u);
  EXPECT_EQ(md.checkpoint("vae").names(), (std::vector<std::string>{"decoder.conv_in.weight", "encoder.conv_in.weight"}));

  const Component& te = md.require("text_encoder_2");
  EXPECT_EQ(te.kind, ComponentKind::kTransformersModel);
  EXPECT_EQ(*te.class_name, "CLIPTextModelWithProjection");  // model_index.json's class wins
  EXPECT_EQ(md.model_config("text_encoder_2").model_type, "clip_text_model");
  EXPECT_EQ(*md.model_config("text_encoder").hidden_size, 32);
  EXPECT_EQ(te.weights->files, std::vector<std::string>{"text_encoder_2/model.safetensors"});

  const Component& sched = md.require("scheduler");
  EXPECT_EQ(sched.kind, ComponentKind::kScheduler);
  EXPECT_EQ(*sched.config_file, "scheduler/scheduler_config.json");
  EXPECT_EQ(sched.config->get<std::string>("prediction_type"), "epsilon");
  EXPECT_FALSE(sched.weights.has_value());

  EXPECT_EQ(names_of(md.of_kind(ComponentKind::kTokenizer)), (std::vector<std::string>{"tokenizer", "tokenizer_2"}));
  EXPECT_EQ(md.require("tokenizer").tokenizer_files,
            (std::vector<std::string>{"tokenizer/tokenizer_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt"}));
  EXPECT_EQ(md.require("tokenizer_2").tokenizer_files, std::vector<std::string>{"tokenizer_2/tokenizer.json"});

  // The single-model view is unchanged: a pipeline root has no config.json or weights.
  EXPECT_FALSE(md.layout().has_config);
  EXPECT_EQ(md.layout().weights.format, WeightsFormat::kNone);
}

TEST(ModelDirectoryPipeline, AMissingOrEmptyFolderIsReportedOnItsComponent) {
  TempDir dir;
  write_file(dir.path() / "model_index.json",
             R"({"_class_name": "P", "unet": ["diffusers", "UNet2DConditionModel"],
                 "scheduler": ["diffusers", "DDIMScheduler"]})");
  fs::create_directories(dir.path() / "scheduler");
  const ModelDirectory md = ModelDirectory::open(dir.path());
  const Component& unet = md.require("unet");
  EXPECT_EQ(unet.kind, ComponentKind::kDiffusersModel);
  EXPECT_NE(unet.error->find("\"unet\" (diffusers UNet2DConditionModel), but " + (dir.path() / "unet").string() +
                             " is not a directory"),
            std::string::npos)
      << *unet.error;
  const Component& sched = md.require("scheduler");
  EXPECT_EQ(sched.kind, ComponentKind::kScheduler);
  EXPECT_NE(sched.error->find("holds no config.json, scheduler_config.json"), std::string::npos) << *sched.error;
  EXPECT_NE(message_of([&] { md.checkpoint("unet"); }).find("component \"unet\" has no weights"), std::string::npos);
}

TEST(ModelDirectoryPipeline, MalformedModelIndexEntriesNameTheFileAndKey) {
  TempDir dir;
  const fs::path index = dir.path() / "model_index.json";
  const auto error_for = [&](const std::string& text) {
    write_file(index, text);
    return message_of([&] { ModelDirectory::open(dir.path()); });
  };
  EXPECT_EQ(error_for(R"({"_class_name": "P", "unet": ["diffusers"]})"),
            index.string() + ": \"unet\" must be [library, class] (two strings, or [null, null]), got [\"diffusers\"]");
  EXPECT_EQ(error_for(R"({"_class_name": "P", "unet": ["diffusers", null]})"),
            index.string() + ": \"unet\" must name both a library and a class, or neither, got [\"diffusers\",null]");
  EXPECT_EQ(error_for(R"({"_class_name": "P", "../up": ["diffusers", "X"]})"),
            index.string() + ": \"../up\" is not a folder name, so it cannot be a component");
  // Found by config_json_fuzz: an entry with an empty name.
  EXPECT_EQ(error_for(R"({"_class_name": "P", "": ["diffusers", "X"]})"),
            index.string() + ": \"\" is not a folder name, so it cannot be a component");
  EXPECT_EQ(error_for(R"({"unet": ["diffusers", "X"]})"), index.string() + ": \"_class_name\" is required but missing");
  EXPECT_EQ(error_for(R"({"_class_name": 3})"), index.string() + ": \"_class_name\" must be a string, got 3");
  EXPECT_NE(error_for("[1]").find("must hold a JSON object"), std::string::npos);
  // A component's own config is read with the same care.
  write_file(dir.path() / "te" / "config.json", R"({"hidden_size": "wide"})");
  EXPECT_EQ(error_for(R"({"_class_name": "P", "te": ["transformers", "CLIPTextModel"]})"),
            (dir.path() / "te" / "config.json").string() + ": \"hidden_size\" must be an integer, got \"wide\"");
}

TEST(ModelDirectoryNested, TextAndVisionConfigsAreComponentsWithTheirOwnModelConfig) {
  TempDir dir;
  const fs::path d = dir.path();
  write_file(d / "config.json", R"({
    "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 16,
    "quantization_config": {"bits": 4},
    "text_config": {"model_type": "clip_text_model", "hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 10},
    "vision_config": {"model_type": "clip_vision_model", "hidden_size": 48, "image_size": 30, "patch_size": 2}})");
  write_file(d / "model.safetensors",
             float_tensors({"logit_scale", "text_model.embeddings.position_ids", "text_model.final_layer_norm.weight",
                            "text_projection.weight", "vision_model.post_layernorm.weight"}));
  const ModelDirectory md = ModelDirectory::open(d);
  EXPECT_EQ(names_of(md.components()), (std::vector<std::string>{"model", "text_config", "vision_config"}));
  EXPECT_EQ(nested_config_keys(*md.require("model").config), (std::vector<std::string>{"text_config", "vision_config"}));
  const Component& model = md.require("model");
  EXPECT_EQ(model.kind, ComponentKind::kTransformersModel);
  EXPECT_EQ(*model.class_name, "CLIPModel");
  EXPECT_EQ(model.weights->files, std::vector<std::string>{"model.safetensors"});
  const Component& vision = md.require("vision_config");
  EXPECT_EQ(vision.kind, ComponentKind::kSubConfig);
  EXPECT_EQ(*vision.parent, "model");
  EXPECT_EQ(*vision.config_key, "vision_config");
  EXPECT_EQ(*vision.config_file, "config.json");
  EXPECT_FALSE(vision.weights.has_value());
  EXPECT_EQ(md.model_config("vision_config").model_type, "clip_vision_model");
  EXPECT_EQ(*md.model_config("vision_config").hidden_size, 48);
  EXPECT_EQ(vision.config->get<std::int64_t>("patch_size"), 2);
  EXPECT_EQ(*md.model_config("text_config").vocab_size, 10);
  EXPECT_EQ(*md.model_config("model").raw.get_optional<std::int64_t>("projection_dim"), 16);

  // The two towers share one file; their tensors are told apart by prefix.
  const Checkpoint whole = md.checkpoint("model");
  const auto groups = group_by_component_prefix(whole.names());
  ASSERT_EQ(groups.size(), 3u);
  EXPECT_EQ(groups[0].prefix, "text_model.");
  EXPECT_EQ(groups[0].names.size(), 2u);
  EXPECT_EQ(groups[1].prefix, "vision_model.");
  EXPECT_EQ(groups[2].prefix, "");
  EXPECT_EQ(groups[2].names, (std::vector<std::string>{"logit_scale", "text_projection.weight"}));
  EXPECT_EQ(whole.with_prefix("vision_model.").names(), std::vector<std::string>{"post_layernorm.weight"});
}

TEST(ModelDirectoryNested, ErrorsNameTheNestedKeyPath) {
  TempDir dir;
  write_file(dir.path() / "config.json",
             R"({"model_type": "llava", "text_config": {"model_type": "llama"},
                 "vision_config": {"model_type": "clip_vision_model", "hidden_size": "abc"}})");
  EXPECT_EQ(message_of([&] { ModelDirectory::open(dir.path()); }),
            (dir.path() / "config.json").string() + ": \"vision_config.hidden_size\" must be an integer, got \"abc\"");
  write_file(dir.path() / "config.json", R"({"model_type": "llava", "text_config": {"eos_token_id": [1, "x"]}})");
  EXPECT_EQ(message_of([&] { ModelDirectory::open(dir.path()); }),
            (dir.path() / "config.json").string() + ": \"text_config.eos_token_id\"[1] must be an integer, got \"x\"");
  write_file(dir.path() / "config.json", R"({"model_type": "llava", "text_config": "llama"})");
  const ModelDirectory md = ModelDirectory::open(dir.path());  // a string is not a nested config
  EXPECT_EQ(names_of(md.components()), std::vector<std::string>{"model"});
  EXPECT_NE(message_of([&] { md.model_config("text_config"); }).find("no component \"text_config\" (it has model)"),
            std::string::npos);
}

TEST(ModelDirectoryTokenizers, TheRootTokenizerAndNumberedFoldersAreEachAComponent) {
  TempDir dir;
  const fs::path d = dir.path();
  write_file(d / "config.json", R"({"model_type": "t5"})");
  write_file(d / "tokenizer.json", "{}");
  write_file(d / "tokenizer_config.json", R"({"tokenizer_class": "T5TokenizerFast"})");
  write_file(d / "tokenizer_2" / "vocab.json", "{}");
  write_file(d / "tokenizer_2" / "merges.txt", "");
  write_file(d / "tokenizer_3" / "spiece.model", "x");
  write_file(d / "tokenizer" / "tokenizer.json", "{}");  // the root's tokenizer is the one transformers loads
  const ModelDirectory md = ModelDirectory::open(d);
  EXPECT_EQ(names_of(md.of_kind(ComponentKind::kTokenizer)),
            (std::vector<std::string>{"tokenizer", "tokenizer_2", "tokenizer_3"}));
  const Component& root = md.require("tokenizer");
  EXPECT_EQ(root.folder, "");
  EXPECT_EQ(*root.class_name, "T5TokenizerFast");
  EXPECT_EQ(root.tokenizer_files, (std::vector<std::string>{"tokenizer.json", "tokenizer_config.json"}));
  EXPECT_EQ(md.require("tokenizer_3").tokenizer_files, std::vector<std::string>{"tokenizer_3/spiece.model"});
  EXPECT_FALSE(md.require("tokenizer_3").class_name.has_value());

  fs::remove(d / "tokenizer.json");
  fs::remove(d / "tokenizer_config.json");
  const ModelDirectory without_root = ModelDirectory::open(d);
  EXPECT_EQ(without_root.require("tokenizer").folder, "tokenizer");
  EXPECT_EQ(names_of(without_root.of_kind(ComponentKind::kTokenizer)),
            (std::vector<std::string>{"tokenizer", "tokenizer_2", "tokenizer_3"}));

  write_file(d / "tokenizer" / "tokenizer_config.json", R"({"tokenizer_class": ["T5"]})");
  EXPECT_EQ(message_of([&] { ModelDirectory::open(d); }),
            (d / "tokenizer" / "tokenizer_config.json").string() +
                ": \"tokenizer_class\" must be a string, got [\"T5\"]");
}

TEST(ModelDirectoryImageProcessor, CommonFieldsAreReadIntoTheStruct) {
  TempDir dir;
  const fs::path d = dir.path();
  write_file(d / "config.json", R"({"model_type": "clip"})");
  write_file(d / "preprocessor_config.json", R"({
    "image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor",
    "do_resize": true, "size": {"shortest_edge": 224}, "resample": 3,
    "do_center_crop": true, "crop_size": {"height": 224, "width": 200},
    "do_rescale": true, "rescale_factor": 0.00392156862745098,
    "do_normalize": true, "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_convert_rgb": true})");
  const ModelDirectory md = ModelDirectory::open(d);
  const Component& c = md.require("image_processor");
  EXPECT_EQ(c.kind, ComponentKind::kImageProcessor);
  EXPECT_EQ(*c.class_name, "CLIPImageProcessor");
  EXPECT_EQ(*c.config_file, "preprocessor_config.json");
  const ImageProcessorConfig& p = *c.image_processor;
  EXPECT_EQ(*p.processor_class, "CLIPProcessor");
  EXPECT_EQ(*p.size->shortest_edge, 224);
  EXPECT_FALSE(p.size->height.has_value());
  EXPECT_EQ(*p.crop_size->height, 224);
  EXPECT_EQ(*p.crop_size->width, 200);
  EXPECT_EQ(*p.resample, 3);
  EXPECT_DOUBLE_EQ(*p.rescale_factor, 1.0 / 255);
  EXPECT_EQ(p.image_mean.size(), 3u);
  EXPECT_DOUBLE_EQ(p.image_std[2], 0.27577711);
  EXPECT_TRUE(*p.do_convert_rgb && *p.do_center_crop && *p.do_normalize && *p.do_rescale && *p.do_resize);
  EXPECT_TRUE(p.raw.has("image_processor_type"));

  // The older form: integer sizes, one number for every channel, feature_extractor_type.
  const ImageProcessorConfig old = parse_image_processor_config(parse_json_object(
      R"({"feature_extractor_type": "ViTFeatureExtractor", "size": 224, "crop_size": 200, "image_mean": 0.5})",
      "preprocessor_config.json"));
  EXPECT_EQ(*old.image_processor_type, "ViTFeatureExtractor");
  EXPECT_EQ(*old.size->value, 224);
  EXPECT_EQ(*old.crop_size->value, 200);
  EXPECT_EQ(old.image_mean, std::vector<double>{0.5});
  EXPECT_TRUE(old.image_std.empty());
}

TEST(ModelDirectoryImageProcessor, MalformedFieldsNameTheKey) {
  const auto error_for = [](const std::string& text) {
    return message_of([&] { parse_image_processor_config(parse_json_object(text, "preprocessor_config.json")); });
  };
  EXPECT_EQ(error_for(R"({"size": {"height": 0, "width": 4}})"),
            "preprocessor_config.json: \"size.height\" must be a positive integer, got 0");
  EXPECT_EQ(error_for(R"({"crop_size": {"height": 4}})"),
            "preprocessor_config.json: \"crop_size\" must give both \"height\" and \"width\", or neither");
  EXPECT_EQ(error_for(R"({"size": {"edge": 4}})"),
            "preprocessor_config.json: \"size\" must have \"height\" and \"width\", \"shortest_edge\" or "
            "\"longest_edge\", got {\"edge\":4}");
  EXPECT_EQ(error_for(R"({"size": "224"})"),
            "preprocessor_config.json: \"size\" must be an integer or an object of sizes, got \"224\"");
  EXPECT_EQ(error_for(R"({"size": {"shortest_edge": 2.5}})"),
            "preprocessor_config.json: \"size.shortest_edge\" must be an integer, got 2.5");
  EXPECT_EQ(error_for(R"({"image_std": [0.5, 0]})"), "preprocessor_config.json: \"image_std[1]\" must be positive, got 0.0");
  EXPECT_EQ(error_for(R"({"image_mean": ["x"]})"), "preprocessor_config.json: \"image_mean\"[0] must be a number, got \"x\"");
  EXPECT_EQ(error_for(R"({"image_mean": []})"), "preprocessor_config.json: \"image_mean\" must not be empty");
  EXPECT_EQ(error_for(R"({"rescale_factor": -1})"),
            "preprocessor_config.json: \"rescale_factor\" must be a positive number, got -1");
  EXPECT_EQ(error_for(R"({"resample": 9})"),
            "preprocessor_config.json: \"resample\" must be a PIL resampling filter (0 to 5), got 9");
  EXPECT_EQ(error_for(R"({"do_resize": "yes"})"), "preprocessor_config.json: \"do_resize\" must be true or false, got \"yes\"");
}

TEST(ModelDirectoryImageProcessor, AProcessorConfigsNestedImageProcessorIsTheComponentWithoutAPreprocessorConfig) {
  TempDir dir;
  const fs::path d = dir.path();
  write_file(d / "config.json", R"({"model_type": "llava"})");
  // transformers 5's LlavaProcessor.save_pretrained writes this, and no preprocessor_config.json.
  write_file(d / "processor_config.json", R"({
    "image_processor": {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 336},
                        "crop_size": {"height": 336, "width": 336}, "resample": 3},
    "image_token": "<image>", "patch_size": 14, "processor_class": "LlavaProcessor"})");
  const ModelDirectory md = ModelDirectory::open(d);
  const Component& c = md.require("image_processor");
  EXPECT_EQ(c.kind, ComponentKind::kImageProcessor);
  EXPECT_EQ(*c.class_name, "CLIPImageProcessor");
  EXPECT_EQ(*c.config_file, "processor_config.json");
  EXPECT_EQ(c.image_processor->size->shortest_edge.value_or(0), 336);
  // Its errors name the nested key.
  write_file(d / "processor_config.json", R"({"image_processor": {"size": {"shortest_edge": "big"}}})");
  EXPECT_NE(message_of([&] { ModelDirectory::open(d); }).find("processor_config.json: \"image_processor.size"),
            std::string::npos);
  // A processor without image settings adds nothing; preprocessor_config.json wins when both exist.
  write_file(d / "processor_config.json", R"({"processor_class": "WhisperProcessor"})");
  EXPECT_EQ(ModelDirectory::open(d).find("image_processor"), nullptr);
  write_file(d / "processor_config.json", R"({"image_processor": {"size": {"shortest_edge": 336}}})");
  write_file(d / "preprocessor_config.json", R"({"size": {"shortest_edge": 224}})");
  EXPECT_EQ(*ModelDirectory::open(d).require("image_processor").config_file, "preprocessor_config.json");
}

TEST(ModelDirectoryImageProcessor, AnAudioFeatureExtractorIsNotAnImageProcessor) {
  TempDir dir;
  write_file(dir.path() / "config.json", R"({"model_type": "whisper"})");
  write_file(dir.path() / "preprocessor_config.json",
             R"({"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 80, "sampling_rate": 16000})");
  const ModelDirectory md = ModelDirectory::open(dir.path());
  const Component& c = md.require("feature_extractor");
  EXPECT_EQ(c.kind, ComponentKind::kFeatureExtractor);
  EXPECT_EQ(*c.class_name, "WhisperFeatureExtractor");
  EXPECT_FALSE(c.image_processor.has_value());
  EXPECT_EQ(md.find("image_processor"), nullptr);
}

TEST(ModelDirectorySingleFile, ComponentPrefixesOfALoneSafetensorsFileBecomeComponents) {
  TempDir dir;
  const fs::path file = dir.path() / "sd_xl.safetensors";
  write_file(file, float_tensors({"alphas_cumprod", "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
                                  "conditioner.embedders.1.model.ln_final.weight", "first_stage_model.decoder.conv_in.weight",
                                  "first_stage_model.encoder.conv_in.weight", "model.diffusion_model.out.2.weight"}));
  for (const fs::path& target : {dir.path(), file}) {
    const ModelDirectory md = ModelDirectory::open(target);
    EXPECT_EQ(md.root(), dir.path());
    EXPECT_EQ(names_of(md.components()),
              (std::vector<std::string>{"checkpoint", "conditioner.embedders.0", "conditioner.embedders.1",
                                        "first_stage_model", "model.diffusion_model"}));
    const Component& vae = md.require("first_stage_model");
    EXPECT_EQ(vae.kind, ComponentKind::kCheckpoint);
    EXPECT_EQ(*vae.parent, "checkpoint");
    EXPECT_EQ(*vae.tensor_prefix, "first_stage_model.");
    EXPECT_EQ(vae.weights->files, std::vector<std::string>{"sd_xl.safetensors"});
    const Checkpoint view = md.checkpoint("first_stage_model");
    EXPECT_EQ(view.names(), (std::vector<std::string>{"decoder.conv_in.weight", "encoder.conv_in.weight"}));
    EXPECT_EQ(view.prefix(), "first_stage_model.");
    EXPECT_EQ(view.require("decoder.conv_in.weight").info->name, "first_stage_model.decoder.conv_in.weight");
    EXPECT_EQ(md.checkpoint("checkpoint").names().size(), 6u);
  }
}

TEST(ModelDirectorySingleFile, AMalformedHeaderIsReportedOnTheCheckpoint) {
  TempDir dir;
  write_file(dir.path() / "broken.safetensors", std::string("\x08\0\0\0\0\0\0\0{\"a\":1}x", 16));
  const ModelDirectory md = ModelDirectory::open(dir.path());
  ASSERT_EQ(names_of(md.components()), std::vector<std::string>{"checkpoint"});
  const Component& c = md.require("checkpoint");
  ASSERT_TRUE(c.error.has_value());
  EXPECT_EQ(c.error->rfind((dir.path() / "broken.safetensors").string(), 0), 0u) << *c.error;
  EXPECT_EQ(message_of([&] { md.checkpoint("checkpoint"); }), *c.error);
  EXPECT_NE(message_of([&] { ModelDirectory::open(dir.path() / "missing"); }).find("no such directory or file"),
            std::string::npos);
  write_file(dir.path() / "notes.txt", "x");
  EXPECT_NE(message_of([&] { ModelDirectory::open(dir.path() / "notes.txt"); })
                .find("is neither a model directory nor a .safetensors file"),
            std::string::npos);
}

TEST(ComponentPrefixes, LongestKnownPatternWinsAndPlainCheckpointsHaveNone) {
  const auto groups = group_by_component_prefix(
      {"text_encoders.clip_l.transformer.text_model.x", "text_encoders.clip_g.transformer.text_model.x",
       "text_encoders.t5xxl.transformer.encoder.x", "model.diffusion_model.joint_blocks.0.x",
       "model.language_model.layers.0.x", "model.vision_tower.x", "text_encoders.lonely"});
  std::vector<std::string> prefixes;
  for (const auto& g : groups) prefixes.push_back(g.prefix);
  EXPECT_EQ(prefixes, (std::vector<std::string>{"model.diffusion_model.", "model.language_model.", "model.vision_tower.",
                                                "text_encoders.clip_g.", "text_encoders.clip_l.", "text_encoders.t5xxl.",
                                                ""}));
  EXPECT_EQ(groups.back().names, std::vector<std::string>{"text_encoders.lonely"});
  // A plain model's names carry no component prefix: no groups at all.
  EXPECT_TRUE(group_by_component_prefix({"model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight",
                                         "lm_head.weight", "embeddings.word_embeddings.weight"})
                  .empty());
  EXPECT_TRUE(group_by_component_prefix({}).empty());
  EXPECT_TRUE(group_by_component_prefix({"text_model."}).empty());  // nothing after the prefix
}

TEST(ModelDirectorySingleComponent, APlainModelDirectoryDescribesAsDescribeLayoutDoes) {
  TempDir dir;
  const fs::path d = dir.path();
  write_file(d / "config.json", R"({"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 8})");
  write_file(d / "model.safetensors", float_tensors({"embeddings.word_embeddings.weight", "pooler.dense.weight"}));
  write_file(d / "pytorch_model.bin", "");
  write_file(d / "vocab.txt", "[PAD]\n");
  write_file(d / "tokenizer_config.json", R"({"tokenizer_class": "BertTokenizer"})");
  const ModelLayout expected = describe_layout(d);
  const ModelDirectory md = ModelDirectory::open(d);
  const ModelLayout& l = md.layout();
  EXPECT_EQ(l.root, expected.root);
  EXPECT_EQ(l.model_dir, expected.model_dir);
  EXPECT_EQ(l.has_config, expected.has_config);
  EXPECT_EQ(l.weights.files, expected.weights.files);
  EXPECT_EQ(l.weights.other_files, std::vector<std::string>{"pytorch_model.bin"});
  EXPECT_EQ(l.tokenizer_files, (std::vector<std::string>{"tokenizer_config.json", "vocab.txt"}));
  EXPECT_EQ(l.tokenizer_files, expected.tokenizer_files);
  EXPECT_EQ(l.tokenizer_dir, expected.tokenizer_dir);

  EXPECT_EQ(names_of(md.components()), (std::vector<std::string>{"model", "tokenizer"}));
  const Component& model = md.require("model");
  EXPECT_EQ(model.folder, "");
  EXPECT_EQ(*model.class_name, "BertModel");
  EXPECT_EQ(*model.library, "transformers");
  EXPECT_EQ(model.weights->files, expected.weights.files);
  EXPECT_EQ(model.weights->other_files, expected.weights.other_files);
  EXPECT_EQ(*md.require("tokenizer").class_name, "BertTokenizer");
  EXPECT_EQ(md.require("tokenizer").tokenizer_files, expected.tokenizer_files);
}

TEST(ModelDirectorySingleComponent, SentenceTransformersModelAndTokenizerLiveInTheTransformerFolder) {
  TempDir dir;
  const fs::path d = dir.path();
  write_file(d / "modules.json", R"([{"idx":0,"name":"0","path":"0_Transformer","type":"sentence_transformers.models.Transformer"}])");
  write_file(d / "0_Transformer" / "config.json", R"({"model_type": "bert"})");
  write_file(d / "0_Transformer" / "model.safetensors", float_tensors({"w"}));
  write_file(d / "0_Transformer" / "tokenizer.json", "{}");
  const ModelDirectory md = ModelDirectory::open(d);
  EXPECT_EQ(md.require("model").folder, "0_Transformer");
  EXPECT_EQ(*md.require("model").config_file, "0_Transformer/config.json");
  EXPECT_EQ(md.require("model").weights->files, std::vector<std::string>{"0_Transformer/model.safetensors"});
  EXPECT_EQ(md.require("tokenizer").folder, "0_Transformer");
  EXPECT_EQ(md.require("tokenizer").tokenizer_files, std::vector<std::string>{"0_Transformer/tokenizer.json"});
  EXPECT_EQ(md.checkpoint("model").names(), std::vector<std::string>{"w"});
}

TEST(ModelDirectorySingleComponent, AStandaloneDiffusersModelFolderIsADiffusersModel) {
  TempDir dir;
  write_file(dir.path() / "config.json", R"({"_class_name": "AutoencoderKL", "latent_channels": 4})");
  write_file(dir.path() / "diffusion_pytorch_model.safetensors", float_tensors({"decoder.w"}));
  const ModelDirectory md = ModelDirectory::open(dir.path());
  const Component& c = md.require("model");
  EXPECT_EQ(c.kind, ComponentKind::kDiffusersModel);
  EXPECT_EQ(*c.class_name, "AutoencoderKL");
  EXPECT_FALSE(c.model_config.has_value());
  EXPECT_EQ(md.checkpoint("model").names(), std::vector<std::string>{"decoder.w"});
  EXPECT_NE(message_of([&] { md.model_config("model"); }).find("(diffusers_model) has no transformers config"),
            std::string::npos);
}

TEST(ModelDirectorySingleComponent, WeightsInAnotherFormatGetConversionAdvice) {
  TempDir dir;
  write_file(dir.path() / "config.json", R"({"model_type": "gpt2"})");
  write_file(dir.path() / "pytorch_model.bin", "PK\x03\x04");
  const ModelDirectory md = ModelDirectory::open(dir.path());
  EXPECT_NE(message_of([&] { md.checkpoint("model"); }).find("safe_serialization=True"), std::string::npos);
  EXPECT_STREQ(component_kind_name(md.require("model").kind), "transformers_model");
}

TEST(InspectComponents, APipelineReportsEachComponentWithItsSummaries) {
  TempDir dir;
  write_sdxl_pipeline(dir.path());
  FamilyRegistry none;
  const nlohmann::json report = inspect_model(dir.path().string(), none).to_json();
  EXPECT_EQ(report["pipeline"]["class_name"], "StableDiffusionXLPipeline");
  EXPECT_EQ(report["pipeline"]["entries"].size(), 9u);
  EXPECT_EQ(report["pipeline"]["options"]["force_zeros_for_empty_prompt"], true);
  ASSERT_EQ(report["components"].size(), 7u);
  std::map<std::string, nlohmann::json> by_name;
  for (const auto& c : report["components"]) by_name[c["name"]] = c;
  const auto& unet = by_name.at("unet");
  EXPECT_EQ(unet["kind"], "diffusers_model");
  EXPECT_EQ(unet["class"], "UNet2DConditionModel");
  EXPECT_EQ(unet["config"]["in_channels"], 4);
  EXPECT_EQ(unet["config"]["block_out_channels"], nlohmann::json::array({2, 4}));
  EXPECT_EQ(unet["weights"]["num_tensors"], 2);
  EXPECT_EQ(unet["weights"]["num_parameters"], 4);
  EXPECT_EQ(unet["weights"]["num_bytes"], 16);
  EXPECT_EQ(unet["weights"]["dtypes"]["F32"], 2);
  EXPECT_EQ(by_name.at("vae")["weights"]["sharded"], true);
  EXPECT_EQ(by_name.at("vae")["weights"]["num_tensors"], 2);
  const auto& te = by_name.at("text_encoder");
  EXPECT_EQ(te["config"]["model_type"], "clip_text_model");
  EXPECT_EQ(te["config"]["hidden_size"], 32);
  EXPECT_EQ(te["weights"]["prefixes"][0]["prefix"], "text_model.");
  EXPECT_EQ(te["weights"]["prefixes"][0]["num_tensors"], 2);
  EXPECT_EQ(by_name.at("scheduler")["config"]["num_train_timesteps"], 1000);
  EXPECT_TRUE(by_name.at("scheduler")["weights"].is_null());
  EXPECT_EQ(by_name.at("tokenizer")["config"]["tokenizer_class"], "CLIPTokenizer");
  EXPECT_EQ(by_name.at("tokenizer_2")["tokenizer_files"], nlohmann::json::array({"tokenizer_2/tokenizer.json"}));
  EXPECT_TRUE(by_name.at("tokenizer_2")["config"].is_null());  // no tokenizer_config.json
  // The single-model keys stay: no root config, no root weights.
  EXPECT_TRUE(report["config"].is_null());
  EXPECT_EQ(report["files"]["weights"]["format"], "none");

  // Missing folders are reported on their components, whatever kind their class suggests.
  for (const char* folder : {"unet", "scheduler", "tokenizer", "text_encoder"}) fs::remove_all(dir.path() / folder);
  const nlohmann::json partial = inspect_model(dir.path().string(), none).to_json();
  std::size_t missing = 0;
  for (const auto& c : partial["components"]) {
    if (c["error"].is_null()) continue;
    ++missing;
    EXPECT_TRUE(c["config"].is_null()) << c.dump();
    EXPECT_TRUE(c["weights"].is_null()) << c.dump();
    EXPECT_NE(c["error"].get<std::string>().find("is not a directory"), std::string::npos) << c.dump();
  }
  EXPECT_EQ(missing, 4u);
}

}  // namespace
}  // namespace mpool::loading
