"""Native FLUX.1 end to end against diffusers' FluxPipeline and
FluxImg2ImgPipeline: tiny random schnell- and dev-style pipelines saved as
diffusers folders, the same initial latents (or the same torch generator seed),
compared on output_type="np" images (max absolute difference <= 1e-3); FLUX's
schedule (given levels, dynamic shifting) bit for bit; then streaming,
cancellation and the typed errors of bad settings."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import mpool
from image_checks import assert_same
import mpool.testing
from flux_models import flux_pipeline

W, H = 48, 32  # not square: rows and columns of the rotary ids must not be swapped


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Any]:
    out = {}
    for name, dev in {"schnell": False, "dev": True}.items():
        path = tmp_path_factory.mktemp(name)
        pipe = flux_pipeline(dev=dev)
        pipe.save_pretrained(path)
        out[name] = (pipe, path)
    return out


@pytest.fixture(scope="module")
def pool(saved):
    p = mpool.Pool(maintenance_interval=0.05, request_timeout=120.0)
    for name, (_, path) in saved.items():
        p.register(name, mpool.NativeModel(str(path)))
    yield p
    p.close()


def packed_latents(seed: int = 7) -> torch.Tensor:
    """diffusers' FLUX latents: (1, tokens, 16) for a W x H image (4 channels, 2x2 packed)."""
    return torch.randn(1, (H // 8) * (W // 8), 16, generator=torch.Generator().manual_seed(seed))


def unpack(latents: torch.Tensor) -> np.ndarray:
    return latents.view(1, H // 8, W // 8, 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 4, H // 4, W // 4).numpy()


def reference(pipe, prompt: str, **kwargs: Any) -> np.ndarray:
    with torch.no_grad():
        return pipe(prompt, height=H, width=W, output_type="np", **kwargs).images[0]


def ours(pool, key: str, prompt: str, **kwargs: Any) -> np.ndarray:
    return pool.generate_image(key, prompt, width=W, height=H, output_type="np", **kwargs).result()


SCHEDULERS = [
    {"shift": 1.0},
    {"shift": 3.0},
    {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15},
    {"use_dynamic_shifting": True, "time_shift_type": "linear"},
    {"shift": 3.0, "shift_terminal": 0.1},
    {"shift": 2.0, "invert_sigmas": True},
]


@pytest.mark.parametrize("config", SCHEDULERS)
def test_given_levels_schedule_equals_diffusers_bit_for_bit(config: dict) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    ref = FlowMatchEulerDiscreteScheduler(**config)
    for steps in (1, 2, 4, 7, 28, 50):
        if steps == 1 and config.get("shift_terminal"):
            continue
        mu = calculate_shift(4096 // steps, 256, 4096, 0.5, 1.15)
        ref.set_timesteps(steps, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        got = mpool.testing.probe("nn.flow_match_schedule", config=config, steps=steps, mu=mu, linear_sigmas=True)
        assert np.array_equal(got["sigmas"], ref.sigmas.numpy()), (steps, got["sigmas"], ref.sigmas)
        assert np.array_equal(got["timesteps"], ref.timesteps.numpy()), steps


@pytest.mark.parametrize("key", ["schnell", "dev"])
def test_image_matches_diffusers_with_the_same_packed_latents(saved, pool, key) -> None:
    pipe, _ = saved[key]
    guidance = 3.5 if key == "dev" else 0.0
    ref = reference(pipe, "a photo of a cat", num_inference_steps=4, guidance_scale=guidance,
                    latents=packed_latents(), max_sequence_length=64)
    got = ours(pool, key, "a photo of a cat", steps=4, guidance_scale=guidance, latents=packed_latents().numpy(),
               max_sequence_length=64)
    assert_same(got, ref, key)


def test_unpacked_latents_give_the_image_their_packed_form_gives(saved, pool) -> None:
    packed = ours(pool, "dev", "a red house", steps=3, guidance_scale=2.0, latents=packed_latents(3).numpy())
    unpacked = ours(pool, "dev", "a red house", steps=3, guidance_scale=2.0, latents=unpack(packed_latents(3)))
    assert np.array_equal(packed, unpacked)


@pytest.mark.parametrize("key", ["schnell", "dev"])
def test_seeded_image_matches_diffusers_with_the_same_generator_seed(saved, pool, key) -> None:
    pipe, _ = saved[key]
    guidance = 4.0 if key == "dev" else 0.0
    ref = reference(pipe, "two dogs in the snow", num_inference_steps=5, guidance_scale=guidance,
                    generator=torch.Generator().manual_seed(11))
    got = ours(pool, key, "two dogs in the snow", steps=5, guidance_scale=guidance, seed=11)
    assert_same(got, ref, f"{key} seeded")


@pytest.mark.parametrize("key", ["schnell", "dev"])
def test_an_empty_prompt_draws_unconditionally_as_diffusers_does(saved, pool, key) -> None:
    pipe, _ = saved[key]
    guidance = 3.0 if key == "dev" else 0.0
    ref = reference(pipe, "", num_inference_steps=3, guidance_scale=guidance, generator=torch.Generator().manual_seed(4))
    got = ours(pool, key, "", steps=3, guidance_scale=guidance, seed=4)
    assert_same(got, ref, f"{key} empty prompt")


def test_true_cfg_with_a_negative_prompt_matches_diffusers(saved, pool) -> None:
    pipe, _ = saved["dev"]
    ref = reference(pipe, "a bowl of fruit", num_inference_steps=4, guidance_scale=3.0, true_cfg_scale=2.5,
                    negative_prompt="a blurry photo", latents=packed_latents(5))
    got = ours(pool, "dev", "a bowl of fruit", steps=4, guidance_scale=3.0, true_cfg_scale=2.5,
               negative_prompt="a blurry photo", latents=packed_latents(5).numpy())
    assert_same(got, ref, "true cfg")
    # Without a negative prompt true_cfg_scale does nothing, as in diffusers.
    plain = ours(pool, "dev", "a bowl of fruit", steps=4, guidance_scale=3.0, latents=packed_latents(5).numpy())
    ignored = ours(pool, "dev", "a bowl of fruit", steps=4, guidance_scale=3.0, true_cfg_scale=2.5,
                   latents=packed_latents(5).numpy())
    assert np.array_equal(plain, ignored)


@pytest.mark.parametrize("key,strength", [("dev", 0.6), ("schnell", 0.75)])
def test_img2img_matches_diffusers_flux_img2img_with_the_same_seed(saved, key, strength, tmp_path) -> None:
    from diffusers import FluxImg2ImgPipeline

    pipe, path = saved[key]
    img2img = FluxImg2ImgPipeline(**pipe.components)
    rng = np.random.default_rng(0)
    image = (rng.random((H + 8, W - 8, 3)) * 255).astype(np.uint8)  # resized to W x H by both (Lanczos)
    from PIL import Image

    pil = Image.fromarray(image)
    guidance = 3.0 if key == "dev" else 0.0
    with torch.no_grad():
        ref = img2img("a red house", image=pil, height=H, width=W, strength=strength, num_inference_steps=5,
                      guidance_scale=guidance, generator=torch.Generator().manual_seed(4), output_type="np").images[0]
    with mpool.Pool() as p:
        p.register(key, mpool.NativeModel(str(path)))
        got = p.img2img(key, pil, "a red house", strength=strength, width=W, height=H, steps=5,
                        guidance_scale=guidance, seed=4, output_type="np").result()
    assert_same(got, ref, f"{key} img2img")


def test_img2img_strength_that_leaves_no_step_is_refused_as_diffusers_refuses_it(saved, pool) -> None:
    from diffusers import FluxImg2ImgPipeline
    from PIL import Image

    pipe, _ = saved["schnell"]
    init = Image.new("RGB", (W, H), (10, 200, 30))
    with pytest.raises(ValueError, match="steps is 0 which is < 1"):
        FluxImg2ImgPipeline(**pipe.components)("x", image=init, height=H, width=W, strength=0.0,
                                               num_inference_steps=4, guidance_scale=0.0, output_type="np")
    with pytest.raises(mpool.InvalidInput, match="strength 0.000000 leaves none of the 4 steps to run"):
        pool.img2img("schnell", init, "x", strength=0.0, width=W, height=H, steps=4).result()
    one_step = list(pool.img2img("schnell", init, "x", strength=0.01, width=W, height=H, steps=4, seed=1))
    assert [(p.step, p.total) for p in one_step] == [(1, 1)]  # diffusers runs int(4 - 0.04) = 3 .. 4: one step


def test_stream_reports_each_step_with_a_preview_and_the_model_defaults(saved, pool) -> None:
    stream = pool.generate_image("schnell", "a cat", width=W, height=H, seed=1)
    steps = [p for p in stream]
    assert [p.step for p in steps] == [1, 2, 3, 4]  # schnell's default of 4 steps
    assert all(p.total == 4 and p.preview is not None for p in steps)
    assert steps[0].preview.size == (W // 4, H // 4)
    image = stream.result()
    assert image.size == (W, H)
    dev = mpool.NativeModel(str(saved["dev"][1]))
    defaults = dev.defaults
    assert defaults["steps"] == 28 and defaults["guidance_scale"] == 3.5 and defaults["width"] == 128 * 4
    assert defaults["size_multiple"] == 8 and defaults["latent_channels"] == 4 and defaults["latent_packing"] == 2
    assert mpool.NativeModel(str(saved["schnell"][1])).defaults["guidance_scale"] == 0.0
    weights = sum(f.stat().st_size for f in Path(saved["dev"][1]).rglob("*.safetensors")) / 2**20
    assert dev.info["memory_mb"] >= weights


def test_cancelling_mid_run_ends_the_stream_and_the_pool_stays_healthy(saved, pool) -> None:
    stream = pool.generate_image("dev", "a cat", width=W, height=H, steps=8, guidance_scale=2.0, seed=1)
    seen = []
    for chunk in stream:
        seen.append(chunk.step)
        if chunk.step == 2:
            stream.close()
            break
    with pytest.raises(mpool.Cancelled):
        stream.result()
    assert seen == [1, 2]
    assert ours(pool, "schnell", "after", seed=2, steps=1).shape == (H, W, 3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(guidance_scale=3.5), "no guidance embedding"),
        (dict(skip_layer_guidance=True, guidance_scale=0.0), "skip_layer_guidance"),
        (dict(width=W + 4), "multiple of 8"),
        (dict(latents=np.zeros((1, 4, 3, 3), np.float32)), "latents must have shape"),
        (dict(latents=np.zeros((1, 20, 16), np.float32)), r"or \(1, 24, 16\) packed"),
        (dict(true_cfg_scale=float("nan")), "true_cfg_scale"),
        (dict(max_sequence_length=513), "max_sequence_length"),
    ],
)
def test_bad_settings_are_typed_errors_and_the_pool_stays_healthy(pool, kwargs, message) -> None:
    args = dict(width=W, height=H, steps=2)
    args.update(kwargs)
    with pytest.raises(mpool.InvalidInput, match=message):
        pool.generate_image("schnell", "a cat", **args).result()
    assert ours(pool, "schnell", "fine", seed=1, steps=1).shape == (H, W, 3)


def test_sd3_refuses_true_cfg_scale_naming_its_own_guidance(tmp_path) -> None:
    from sd3_models import sd3_pipeline

    sd3_pipeline().save_pretrained(tmp_path)
    with mpool.Pool() as p:
        p.register("sd3", mpool.NativeModel(str(tmp_path)))
        with pytest.raises(mpool.InvalidInput, match="true_cfg_scale"):
            p.generate_image("sd3", "a cat", width=32, height=32, steps=1, true_cfg_scale=2.0).result()


def test_a_transformer_that_does_not_fit_the_vae_is_refused_naming_both(tmp_path) -> None:
    flux_pipeline(dev=False, transformer=dict(in_channels=32), vae=dict(latent_channels=4)).save_pretrained(tmp_path)
    with pytest.raises(mpool.InvalidInput, match="latent channels packed 2x2"):
        mpool.NativeModel(str(tmp_path))


# --- Black Forest Labs' single files -------------------------------------------------

# 128-wide attention heads (the rotary axes a single file implies), a CLIP of
# 64-wide heads (what a CLIP file's width implies) and 32 norm groups in the
# autoencoder (what an LDM file implies), as the real ones have.
BFL_SHAPED = dict(num_attention_heads=1, attention_head_dim=128, axes_dims_rope=[16, 56, 56],
                  pooled_projection_dim=128)


@pytest.fixture(scope="module")
def bfl(tmp_path_factory) -> dict[str, Any]:
    """A dev-style pipeline with FLUX's 128-wide heads (what a single file's
    rotary axes imply), written as BFL's transformer file, the autoencoder as
    ae.safetensors (original names), CLIP-L and T5 as transformers-named files,
    and the tokenizers (and scheduler) in a folder of their own."""
    from safetensors.torch import save_file

    from original_names import flux_to_original, vae_to_ldm_names

    pipe = flux_pipeline(dev=True, transformer=BFL_SHAPED, clip=dict(num_attention_heads=2), scale=0.05,
                         vae=dict(block_out_channels=[32, 32, 32], norm_num_groups=32))
    folder = tmp_path_factory.mktemp("bfl")
    transformer = {f"model.diffusion_model.{k}": v.contiguous() for k, v in flux_to_original(pipe.transformer).items()}
    save_file(transformer, str(folder / "flux1-dev.safetensors"))
    vae = pipe.vae
    save_file(vae_to_ldm_names(vae.state_dict(), len(vae.config.block_out_channels)), str(folder / "ae.safetensors"))
    for name, module in (("clip_l", pipe.text_encoder), ("t5xxl", pipe.text_encoder_2)):
        save_file({k: v.detach().clone().contiguous() for k, v in module.state_dict().items()},
                  str(folder / f"{name}.safetensors"))
    tokenizers = folder / "tokenizers"
    pipe.tokenizer.save_pretrained(tokenizers / "tokenizer")
    pipe.tokenizer_2.save_pretrained(tokenizers / "tokenizer_2")
    options = {"clip_l_file": str(folder / "clip_l.safetensors"), "t5xxl_file": str(folder / "t5xxl.safetensors"),
               "vae_file": str(folder / "ae.safetensors"), "tokenizers": str(tokenizers)}
    return {"pipe": pipe, "file": folder / "flux1-dev.safetensors", "options": options, "tokenizers": tokenizers}


def test_single_file_with_option_files_matches_diffusers(bfl) -> None:
    # No scheduler/ beside the tokenizers: FLUX.1-dev's published one (dynamic shifting), which the fixture's is.
    pipe = bfl["pipe"]
    ref = reference(pipe, "a photo of a cat", num_inference_steps=3, guidance_scale=3.5, latents=packed_latents(2),
                    max_sequence_length=32)
    with mpool.Pool() as p:
        p.register("bfl", mpool.NativeModel(str(bfl["file"]), options=bfl["options"]))
        got = p.generate_image("bfl", "a photo of a cat", width=W, height=H, steps=3, guidance_scale=3.5,
                               latents=packed_latents(2).numpy(), max_sequence_length=32, output_type="np").result()
    assert_same(got, ref, "BFL single file")


def test_single_file_without_an_autoencoder_is_refused_naming_the_option(bfl) -> None:
    options = {k: v for k, v in bfl["options"].items() if k != "vae_file"}
    with pytest.raises(mpool.InvalidInput, match="option vae_file"):
        mpool.NativeModel(str(bfl["file"]), options=options)


def test_single_file_without_tokenizers_is_refused_saying_which_option_gives_them(bfl, tmp_path) -> None:
    options = {k: v for k, v in bfl["options"].items() if k != "tokenizers"}
    with pytest.raises(mpool.InvalidInput, match="option tokenizers"):
        mpool.NativeModel(str(bfl["file"]), options=options)


def test_single_file_options_are_refused_for_a_diffusers_folder(saved) -> None:
    with pytest.raises(mpool.InvalidInput, match="option vae_file is for single-file checkpoints"):
        mpool.NativeModel(str(saved["dev"][1]), options={"vae_file": "ae.safetensors"})


def test_single_file_holding_its_encoders_and_autoencoder_matches_the_option_files(bfl, tmp_path) -> None:
    # An all-in-one file: the encoders under text_encoders.*.transformer., the autoencoder under vae.
    from safetensors.torch import load_file, save_file

    folder = Path(bfl["file"]).parent
    whole = load_file(str(bfl["file"]))
    for prefix, name in (("text_encoders.clip_l.transformer.", "clip_l"), ("text_encoders.t5xxl.transformer.", "t5xxl"),
                         ("vae.", "ae")):
        whole.update({prefix + k: v for k, v in load_file(str(folder / f"{name}.safetensors")).items()})
    save_file(whole, str(tmp_path / "flux1-dev-all-in-one.safetensors"))
    kw = dict(width=W, height=H, steps=2, guidance_scale=3.5, latents=packed_latents(9).numpy(),
              max_sequence_length=16, output_type="np")
    with mpool.Pool() as p:
        p.register("parts", mpool.NativeModel(str(bfl["file"]), options=bfl["options"]))
        p.register("whole", mpool.NativeModel(str(tmp_path / "flux1-dev-all-in-one.safetensors"),
                                              options={"tokenizers": str(bfl["tokenizers"])}))
        a = p.generate_image("parts", "a red house", **kw).result()
        b = p.generate_image("whole", "a red house", **kw).result()
    assert np.array_equal(a, b)


def test_inspect_names_the_flux_family_for_a_flux_pipeline_folder(saved) -> None:
    report = mpool.inspect(saved["schnell"][1])
    assert report["supported_by"] == ["flux"] and report["capabilities"] == ["text_to_image"]
    assert "FluxPipeline" in report["support"]


def test_previews_come_from_a_tiny_autoencoder_when_one_is_given(saved, tmp_path) -> None:
    # TAEF1's place: an AutoencoderTiny over FLUX's latents, decoding the
    # clean-image estimate as diffusers decodes with it in the VAE's place.
    from diffusers import AutoencoderTiny

    from random_weights import randomize

    pipe, path = saved["schnell"]
    tiny = AutoencoderTiny(in_channels=3, out_channels=3, encoder_block_out_channels=(8, 8, 8),
                           decoder_block_out_channels=(8, 8, 8), latent_channels=4, num_encoder_blocks=(1, 1, 1),
                           num_decoder_blocks=(1, 1, 1), scaling_factor=0.3611, shift_factor=0.1159)
    randomize(tiny, 3)
    tiny.save_pretrained(tmp_path / "taef1")
    with mpool.Pool() as p:
        p.register("taef1", mpool.NativeModel(str(path), options={"preview_vae": str(tmp_path / "taef1")}))
        # One step from sigma 1: the clean-image estimate is the final latent.
        chunks = list(p.generate_image("taef1", "a cat", steps=1, latents=packed_latents(4).numpy(), width=W,
                                       height=H))
    with torch.no_grad():
        final = pipe("a cat", num_inference_steps=1, guidance_scale=0.0, latents=packed_latents(4), height=H,
                     width=W, output_type="latent").images  # packed, as FluxPipeline returns latents
        ref = tiny.decode(torch.from_numpy(unpack(final)) / 0.3611 + 0.1159).sample
    ref = ((ref[0].permute(1, 2, 0) / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    preview = np.asarray(chunks[0].preview)
    assert preview.shape == ref.shape == (H, W, 3)
    assert int(np.max(np.abs(preview.astype(int) - ref.astype(int)))) <= 1
