"""mpool.inspect on directories of several components: a tiny diffusers pipeline
(model_index.json, unet/vae/text encoders/tokenizers/scheduler folders), a tiny CLIP
(nested text/vision configs, one checkpoint holding both towers, an image processor)
and single .safetensors files whose tensors carry component prefixes. Every model is
built from random weights and saved locally; nothing comes from a hub."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import numpy as np
import pytest
import safetensors
import safetensors.numpy
import torch
import transformers

import mpool


def tiny_clip_tokenizer(tmp: Path):
    """A CLIP BPE tokenizer over a ten-entry vocabulary, written and loaded locally."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for token in ["a</w>", "b</w>", "c</w>", "a", "b", "c", "ab</w>"]:
        vocab[token] = len(vocab)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\na b</w>\n")
    return transformers.CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"))


def clip_text_config(vocab_size: int):
    return transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab_size, projection_dim=32,
    )


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """A tiny StableDiffusionXLPipeline (the sizes of diffusers' own dummy components), saved."""
    root = tmp_path_factory.mktemp("sdxl")
    tokenizer = tiny_clip_tokenizer(root / "vocab")
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(2, 4), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, sample_size=32, norm_num_groups=2,
    )
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear", timestep_spacing="leading"
    )
    config = clip_text_config(len(tokenizer))
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae, unet=unet, scheduler=scheduler,
        text_encoder=transformers.CLIPTextModel(config), tokenizer=tokenizer,
        text_encoder_2=transformers.CLIPTextModelWithProjection(config), tokenizer_2=tokenizer,
    )
    pipe.save_pretrained(root / "pipeline")
    return pipe, root / "pipeline"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A tiny CLIPModel with its tokenizer and CLIPImageProcessor saved alongside."""
    root = tmp_path_factory.mktemp("clip")
    tokenizer = tiny_clip_tokenizer(root / "vocab")
    config = transformers.CLIPConfig(
        text_config=clip_text_config(len(tokenizer)).to_dict(),
        vision_config=dict(hidden_size=24, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3,
                           image_size=30, patch_size=5),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(config)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 28})
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return model, processor, root / "model"


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["components"]}


def stored_tensors(path: Path) -> dict[str, tuple[int, ...]]:
    with safetensors.safe_open(str(path), "np") as f:
        return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}


def assert_weights_match_file(weights: dict, root: Path) -> None:
    shapes: dict[str, tuple[int, ...]] = {}
    for file in weights["files"]:
        shapes.update(stored_tensors(root / file))
    assert weights["error"] is None
    assert weights["num_tensors"] == len(shapes)
    assert weights["num_parameters"] == sum(int(np.prod(s)) for s in shapes.values())
    assert weights["num_bytes"] == 4 * weights["num_parameters"] and weights["dtypes"] == {"F32": len(shapes)}


def test_every_pipeline_component_is_reported_as_model_index_names_it(sdxl):
    pipe, path = sdxl
    report = mpool.inspect(path)
    assert report["pipeline"]["class_name"] == type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert report["pipeline"]["diffusers_version"] == diffusers.__version__
    assert report["pipeline"]["options"] == {"force_zeros_for_empty_prompt": True}
    components = by_name(report)
    saved = {name: value for name, value in pipe.components.items()}
    entries = {e["name"]: (e["library"], e["class"]) for e in report["pipeline"]["entries"]}
    for name, value in saved.items():
        if value is None:  # saved as [null, null]: an entry, not a component
            assert entries[name] == (None, None) and name not in components
            continue
        library, class_name = pipe.config[name]
        assert entries[name] == (library, class_name)
        c = components[name]
        assert (c["library"], c["class"], c["folder"]) == (library, class_name, name)
        assert c["class"] == type(value).__name__
        assert c["error"] is None
    assert set(components) == {name for name, value in saved.items() if value is not None}
    assert [c["name"] for c in report["components"]] == sorted(components)
    # The single-model keys are all there, and say there is no root model.
    assert report["model_type"] is None and report["config"] is None
    assert report["files"]["weights"]["format"] == "none"


def test_diffusers_models_report_their_config_sizes_and_weights(sdxl):
    pipe, path = sdxl
    components = by_name(mpool.inspect(path))
    for name, model in (("unet", pipe.unet), ("vae", pipe.vae)):
        c = components[name]
        assert c["kind"] == "diffusers_model"
        assert c["config_file"] == f"{name}/config.json"
        assert c["config"]["class_name"] == type(model).__name__
        assert c["config"]["block_out_channels"] == list(model.config.block_out_channels)
        assert c["config"]["in_channels"] == model.config.in_channels
        assert c["weights"]["format"] == "safetensors"
        assert c["weights"]["files"] == [f"{name}/diffusion_pytorch_model.safetensors"]
        assert_weights_match_file(c["weights"], path)
        assert c["weights"]["num_parameters"] == sum(p.numel() for p in model.parameters())
        assert c["weights"]["prefixes"] == []
    unet = components["unet"]["config"]
    assert unet["cross_attention_dim"] == pipe.unet.config.cross_attention_dim == 64
    assert unet["attention_head_dim"] == list(pipe.unet.config.attention_head_dim)
    assert components["vae"]["config"]["latent_channels"] == pipe.vae.config.latent_channels
    assert components["vae"]["config"]["scaling_factor"] == pipe.vae.config.scaling_factor


def test_text_encoders_tokenizers_and_scheduler_are_reported(sdxl):
    pipe, path = sdxl
    components = by_name(mpool.inspect(path))
    for name, model in (("text_encoder", pipe.text_encoder), ("text_encoder_2", pipe.text_encoder_2)):
        c = components[name]
        assert c["kind"] == "transformers_model"
        assert c["config"]["model_type"] == model.config.model_type == "clip_text_model"
        assert c["config"]["hidden_size"] == model.config.hidden_size
        assert c["config"]["num_hidden_layers"] == model.config.num_hidden_layers
        assert c["config"]["architectures"] == [type(model).__name__]
        assert c["weights"]["files"] == [f"{name}/model.safetensors"]
        assert_weights_match_file(c["weights"], path)
        assert c["weights"]["num_tensors"] == len(model.state_dict())
    # transformers 5 saves a bare CLIPTextModel without its text_model. prefix (older
    # versions kept it); the model with a projection keeps the tower under it.
    stored = stored_tensors(path / "text_encoder" / "model.safetensors")
    prefixed = any(name.startswith("text_model.") for name in stored)
    assert [g["prefix"] for g in components["text_encoder"]["weights"]["prefixes"]] == (
        ["text_model."] if prefixed else [])
    with_projection = components["text_encoder_2"]["weights"]["prefixes"]
    assert [g["prefix"] for g in with_projection] == ["text_model.", ""]
    assert with_projection[1]["num_tensors"] == 1
    assert with_projection[1]["num_parameters"] == pipe.text_encoder_2.text_projection.weight.numel()

    for name in ("tokenizer", "tokenizer_2"):
        c = components[name]
        assert c["kind"] == "tokenizer" and c["weights"] is None
        saved = sorted(p.name for p in (path / name).iterdir())
        assert sorted(f.split("/", 1)[1] for f in c["tokenizer_files"]) == saved
        assert c["config"]["tokenizer_class"] == "CLIPTokenizer"
        assert c["config"]["special_tokens"]["eos_token"] == getattr(pipe, name).eos_token

    s = components["scheduler"]
    assert s["kind"] == "scheduler" and s["config_file"] == "scheduler/scheduler_config.json"
    assert s["class"] == type(pipe.scheduler).__name__ == s["config"]["class_name"]
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type", "timestep_spacing"):
        assert s["config"][key] == pipe.scheduler.config[key], key


def test_clip_nested_configs_are_components_with_their_own_sizes(clip):
    model, _, path = clip
    report = mpool.inspect(path)
    assert report["model_type"] == "clip" and report["architectures"] == ["CLIPModel"]
    components = by_name(report)
    assert list(components) == ["model", "text_config", "vision_config", "tokenizer", "image_processor"]
    root = components["model"]
    assert (root["kind"], root["class"], root["folder"], root["config_file"]) == (
        "transformers_model", "CLIPModel", "", "config.json")
    assert root["config"]["projection_dim"] == model.config.projection_dim
    for key, sub in (("text_config", model.config.text_config), ("vision_config", model.config.vision_config)):
        c = components[key]
        assert (c["kind"], c["parent"], c["config_key"], c["config_file"]) == ("sub_config", "model", key, "config.json")
        assert c["weights"] is None
        assert c["config"]["model_type"] == sub.model_type
        assert c["config"]["hidden_size"] == sub.hidden_size
        assert c["config"]["num_hidden_layers"] == sub.num_hidden_layers
        assert c["config"]["num_attention_heads"] == sub.num_attention_heads
    assert components["vision_config"]["config"]["image_size"] == model.config.vision_config.image_size == 30
    assert components["vision_config"]["config"]["patch_size"] == 5
    assert components["text_config"]["config"]["vocab_size"] == model.config.text_config.vocab_size


def test_clip_checkpoint_is_grouped_by_tower(clip):
    model, _, path = clip
    weights = by_name(mpool.inspect(path))["model"]["weights"]
    assert_weights_match_file(weights, path)
    stored = stored_tensors(path / "model.safetensors")
    groups = {g["prefix"]: g for g in weights["prefixes"]}
    assert list(groups) == ["text_model.", "vision_model.", ""]
    for prefix in ("text_model.", "vision_model."):
        tower = getattr(model, prefix[:-1])
        assert groups[prefix]["num_tensors"] == len([n for n in stored if n.startswith(prefix)])
        assert groups[prefix]["num_parameters"] == sum(p.numel() for p in tower.parameters())
    rest = sorted(n for n in stored if not n.startswith(("text_model.", "vision_model.")))
    assert rest == ["logit_scale", "text_projection.weight", "visual_projection.weight"]
    assert groups[""]["num_tensors"] == 3


def test_clip_image_processor_and_tokenizer_are_reported(clip):
    _, processor, path = clip
    components = by_name(mpool.inspect(path))
    p = components["image_processor"]
    assert (p["kind"], p["folder"], p["config_file"]) == ("image_processor", "", "preprocessor_config.json")
    assert p["class"] == "CLIPImageProcessor"
    c = p["config"]
    assert c["size"] == dict(processor.size) == {"shortest_edge": 30}
    assert c["crop_size"] == dict(processor.crop_size) == {"height": 30, "width": 28}
    assert c["image_mean"] == pytest.approx(list(processor.image_mean))
    assert c["image_std"] == pytest.approx(list(processor.image_std))
    assert c["rescale_factor"] == pytest.approx(processor.rescale_factor)
    assert c["resample"] == int(processor.resample)
    for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"):
        assert c[flag] == getattr(processor, flag), flag
    t = components["tokenizer"]
    assert t["kind"] == "tokenizer" and t["folder"] == ""
    assert "tokenizer.json" in t["tokenizer_files"] and "preprocessor_config.json" not in t["tokenizer_files"]


def test_nested_config_errors_name_the_file_and_key_path(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "clip", "text_config": {"model_type": "clip_text_model"},
         "vision_config": {"model_type": "clip_vision_model", "hidden_size": "wide"}}))
    with pytest.raises(mpool.InvalidInput) as info:
        mpool.inspect(tmp_path)
    assert str(info.value) == f'{tmp_path / "config.json"}: "vision_config.hidden_size" must be an integer, got "wide"'


def test_malformed_model_index_and_preprocessor_config_raise_invalid_input(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "P", "unet": ["diffusers"]}))
    with pytest.raises(mpool.InvalidInput, match=r'model_index\.json: "unet" must be \[library, class\]'):
        mpool.inspect(tmp_path)
    (tmp_path / "model_index.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 224}}))
    with pytest.raises(mpool.InvalidInput, match=r'preprocessor_config\.json: "size" must give both'):
        mpool.inspect(tmp_path)


def test_a_lone_safetensors_file_is_split_by_component_prefix(tmp_path):
    tensors = {
        "model.diffusion_model.input_blocks.0.0.weight": np.zeros((4, 4), np.float16),
        "model.diffusion_model.out.2.bias": np.zeros(4, np.float16),
        "first_stage_model.decoder.conv_in.weight": np.zeros((2, 3), np.float32),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": np.zeros(8, np.float32),
        "alphas_cumprod": np.zeros(10, np.float32),
    }
    safetensors.numpy.save_file(tensors, tmp_path / "v1-5.safetensors")
    report = mpool.inspect(tmp_path)
    components = by_name(report)
    assert list(components) == ["checkpoint", "cond_stage_model", "first_stage_model", "model.diffusion_model"]
    whole = components["checkpoint"]["weights"]
    assert whole["num_tensors"] == 5 and whole["tensor_prefix"] is None
    assert [g["prefix"] for g in whole["prefixes"]] == [
        "cond_stage_model.", "first_stage_model.", "model.diffusion_model.", ""]
    unet = components["model.diffusion_model"]
    assert (unet["kind"], unet["parent"]) == ("checkpoint", "checkpoint")
    assert unet["weights"]["tensor_prefix"] == "model.diffusion_model."
    assert unet["weights"]["num_tensors"] == 2
    assert unet["weights"]["num_parameters"] == 20 and unet["weights"]["num_bytes"] == 40
    assert unet["weights"]["dtypes"] == {"F16": 2}
    assert components["first_stage_model"]["weights"]["num_parameters"] == 6
