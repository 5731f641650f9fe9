"""Native Stable Diffusion 3 end to end against diffusers' StableDiffusion3Pipeline:
a tiny random pipeline saved as a diffusers folder, the same initial latents (or
the same torch generator seed), compared on output_type="np" images (max
absolute difference <= 1e-3), in each guidance mode; then streaming, seeds,
cancellation and the typed errors of bad settings."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import mpool
from image_checks import ATOL, assert_same
from sd3_models import sd3_pipeline

SIZE = 32


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Any]:
    """The pipelines, saved once: with T5, without T5, and 3.5-style (qk-norm, MMDiT-X)."""
    out = {}
    for name, kwargs in {"sd3": {}, "no_t5": {"t5": False}, "sd35": {"qk_norm": True, "dual": True, "layers": 4}}.items():
        path = tmp_path_factory.mktemp(name)
        pipe = sd3_pipeline(**kwargs)
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


def latents(seed: int = 7) -> torch.Tensor:
    return torch.randn(1, 4, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(seed))


def reference(pipe, prompt: str, **kwargs: Any) -> np.ndarray:
    with torch.no_grad():
        return pipe(prompt, height=SIZE, width=SIZE, output_type="np", **kwargs).images[0]


def ours(pool, key: str, prompt: str, **kwargs: Any) -> np.ndarray:
    return pool.generate_image(key, prompt, width=SIZE, height=SIZE, output_type="np", **kwargs).result()


@pytest.mark.parametrize("negative", [None, "a blurry dog"])
@pytest.mark.parametrize("key", ["sd3", "sd35"])
def test_cfg_image_matches_diffusers_with_the_same_latents(saved, pool, key, negative) -> None:
    pipe, _ = saved[key]
    kw = dict(num_inference_steps=6, guidance_scale=4.5, negative_prompt=negative)
    ref = reference(pipe, "a photo of a cat", latents=latents(), **kw)

    def run() -> np.ndarray:
        return ours(pool, key, "a photo of a cat", steps=6, guidance_scale=4.5, negative_prompt=negative,
                    latents=latents().numpy())

    got = run()
    if float(np.max(np.abs(got - ref))) > ATOL:
        # Say which side fails to reproduce itself before failing.
        again, ref_again = run(), reference(pipe, "a photo of a cat", latents=latents(), **kw)
        pytest.fail(f"{key}: differs by {np.max(np.abs(got - ref)):.3e}; mpool vs itself "
                    f"{np.max(np.abs(got - again)):.3e}, diffusers vs itself {np.max(np.abs(ref - ref_again)):.3e}, "
                    f"rerun mpool vs diffusers {np.max(np.abs(again - ref_again)):.3e}")
    assert_same(got, ref, f"{key} cfg negative={negative!r}")


def test_clip_tokenizers_of_different_lengths_pad_both_prompts_to_the_first_s_as_diffusers(tmp_path) -> None:
    from diffusers import StableDiffusion3Pipeline

    pipe = sd3_pipeline()
    pipe.tokenizer.model_max_length = 40  # tokenizer_2 keeps 77
    pipe.save_pretrained(tmp_path)
    pipe = StableDiffusion3Pipeline.from_pretrained(tmp_path)  # as saved: diffusers reads tokenizer/'s 40
    ref = reference(pipe, "a photo of a cat", latents=latents(), num_inference_steps=2, guidance_scale=3.0)
    with mpool.Pool() as p:
        p.register("m", mpool.NativeModel(str(tmp_path)))
        got = ours(p, "m", "a photo of a cat", steps=2, guidance_scale=3.0, latents=latents().numpy())
    assert_same(got, ref, "CLIP lengths 40 and 77")


def test_skip_layer_guidance_matches_diffusers(saved, pool) -> None:
    pipe, _ = saved["sd35"]
    ref = reference(pipe, "a red house", latents=latents(3), num_inference_steps=10, guidance_scale=5.0,
                    skip_guidance_layers=[1, 2], skip_layer_guidance_start=0.0, skip_layer_guidance_stop=0.6,
                    skip_layer_guidance_scale=2.8)
    got = ours(pool, "sd35", "a red house", latents=latents(3).numpy(), steps=10, guidance_scale=5.0,
               skip_layer_guidance=[1, 2], skip_layer_start=0.0, skip_layer_stop=0.6)
    assert_same(got, ref, "slg")
    plain = ours(pool, "sd35", "a red house", latents=latents(3).numpy(), steps=10, guidance_scale=5.0)
    assert float(np.max(np.abs(plain - got))) > 1e-3, "skip-layer guidance changed nothing"


def test_turbo_settings_without_guidance_match_diffusers(saved, pool) -> None:
    pipe, _ = saved["sd3"]
    ref = reference(pipe, "two dogs", latents=latents(5), num_inference_steps=4, guidance_scale=0.0)
    got = ours(pool, "sd3", "two dogs", latents=latents(5).numpy(), steps=4, guidance_scale=0.0)
    assert_same(got, ref, "turbo")


def test_without_t5_the_context_is_zeros_as_in_diffusers(saved, pool) -> None:
    pipe, _ = saved["no_t5"]
    ref = reference(pipe, "a bowl of fruit", latents=latents(9), num_inference_steps=5, guidance_scale=3.0,
                    max_sequence_length=40)
    got = ours(pool, "no_t5", "a bowl of fruit", latents=latents(9).numpy(), steps=5, guidance_scale=3.0,
               max_sequence_length=40)
    assert_same(got, ref, "no t5")


@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_img2img_matches_diffusers_with_the_same_seed(saved, pool, strength) -> None:
    from diffusers import StableDiffusion3Img2ImgPipeline
    from PIL import Image

    pipe, _ = saved["sd3"]
    img2img = StableDiffusion3Img2ImgPipeline(**pipe.components)
    rng = np.random.default_rng(0)
    init = Image.fromarray((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8))
    with torch.no_grad():
        ref = img2img("a cat", image=init, strength=strength, num_inference_steps=8, guidance_scale=4.0,
                      generator=torch.Generator().manual_seed(11), height=SIZE, width=SIZE,
                      output_type="np").images[0]
    got = pool.img2img("sd3", init, "a cat", strength=strength, steps=8, guidance_scale=4.0, seed=11,
                       width=SIZE, height=SIZE, output_type="np").result()
    assert_same(got, ref, f"img2img strength {strength}")


def test_seeded_text_to_image_matches_diffusers_generator(saved, pool) -> None:
    pipe, _ = saved["sd3"]
    ref = reference(pipe, "a tree", num_inference_steps=4, guidance_scale=2.0,
                    generator=torch.Generator().manual_seed(123))
    got = ours(pool, "sd3", "a tree", steps=4, guidance_scale=2.0, seed=123)
    assert_same(got, ref, "seed")


@pytest.mark.parametrize("key", ["sd3", "no_t5"])
def test_an_empty_prompt_draws_unconditionally_as_diffusers_does(saved, pool, key) -> None:
    pipe, _ = saved[key]
    ref = reference(pipe, "", num_inference_steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(4))
    got = ours(pool, key, "", steps=3, guidance_scale=2.0, seed=4)
    assert_same(got, ref, f"{key} empty prompt")


def test_the_same_seed_gives_the_same_image_and_another_seed_another(pool) -> None:
    a = pool.generate_image("sd3", "a car", steps=3, seed=5).result()
    b = pool.generate_image("sd3", "a car", steps=3, seed=5).result()
    c = pool.generate_image("sd3", "a car", steps=3, seed=6).result()
    assert a.size == (SIZE, SIZE) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_progress_arrives_once_per_step_with_previews(pool) -> None:
    stream = pool.generate_image("sd3", "a dog", steps=5, seed=1)
    chunks = list(stream)
    assert [c.step for c in chunks] == [1, 2, 3, 4, 5] and all(c.total == 5 for c in chunks)
    assert all(c.preview is not None and c.preview.size == (SIZE // 4, SIZE // 4) for c in chunks)
    elapsed = [c.elapsed for c in chunks]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0
    assert stream.result().size == (SIZE, SIZE)
    quiet = list(pool.generate_image("sd3", "a dog", steps=2, seed=1, preview=False))
    assert [c.preview for c in quiet] == [None, None]
    img2img = list(pool.img2img("sd3", np.zeros((SIZE, SIZE, 3), np.uint8), "a dog", strength=0.5, steps=8, seed=1))
    assert [c.step for c in img2img] == [1, 2, 3, 4] and img2img[0].total == 4


def test_cancelling_at_step_two_of_eight_frees_the_replica(pool) -> None:
    stream = pool.generate_image("sd3", "a house", steps=8, seed=2)
    seen = []
    for chunk in stream:
        seen.append(chunk.step)
        if chunk.step == 2:
            stream.close()
            break
    with pytest.raises(mpool.Cancelled):
        stream.result()
    assert seen == [1, 2]
    # The replica is free: the next request runs to the end.
    assert pool.generate_image("sd3", "a house", steps=2, seed=2).result().size == (SIZE, SIZE)


def test_concurrent_requests_each_get_their_own_image(pool) -> None:
    results: dict[int, np.ndarray] = {}

    def run(seed: int) -> None:
        results[seed] = np.asarray(pool.generate_image("sd3", "a cat", steps=2, seed=seed).result())

    threads = [threading.Thread(target=run, args=(s,)) for s in (1, 2, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.array_equal(results[1], np.asarray(pool.generate_image("sd3", "a cat", steps=2, seed=1).result()))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"width": 30}, "width must be a multiple of 8"),
        ({"height": 0}, "height"),
        ({"steps": 0}, "steps"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"strength": 0.5}, "strength applies to img2img"),
        ({"init_image": np.zeros((8, 8, 3), np.uint8), "strength": 1.5}, "strength"),
        ({"latents": np.zeros((1, 4, 4, 4), np.float32)}, r"latents must have shape \(1, 4, 8, 8\)"),
        ({"latents": np.zeros((4, 8, 8), np.float32)}, "latents must be one latent"),
        ({"latents": np.full((1, 4, 8, 8), np.nan, np.float32)}, "finite"),
        ({"skip_layer_guidance": [1], "guidance_scale": 1.0}, "needs guidance_scale > 1"),
        ({"skip_layer_guidance": "7"}, "skip_layer_guidance"),
        ({"output_type": "latent"}, "output_type"),
        ({"max_sequence_length": 600}, "max_sequence_length"),
    ],
)
def test_bad_settings_are_invalid_input_before_queueing(pool, kwargs, match) -> None:
    with pytest.raises(mpool.InvalidInput, match=match):
        pool.generate_image("sd3", "x", **{"width": SIZE, "height": SIZE, **kwargs})
    assert pool.generate_image("sd3", "x", steps=1, seed=0).result().size == (SIZE, SIZE)


def test_settings_only_the_model_can_check_are_invalid_input(pool) -> None:
    with pytest.raises(mpool.InvalidInput, match="block 9 is not one of"):
        pool.generate_image("sd3", "x", skip_layer_guidance=[9], guidance_scale=3.0, steps=1).result()
    with pytest.raises(mpool.InvalidInput, match="multiple of 8 in"):
        pool.generate_image("sd3", "x", width=1024, height=32, steps=1).result()
    with pytest.raises(mpool.InvalidInput, match="strength 0.000000 leaves none of the 4 steps"):
        pool.img2img("sd3", np.zeros((SIZE, SIZE, 3), np.uint8), "x", strength=0.0, steps=4).result()


def test_img2img_strength_zero_is_refused_as_diffusers_refuses_it(saved, pool) -> None:
    from diffusers import StableDiffusion3Img2ImgPipeline
    from PIL import Image

    pipe, _ = saved["sd3"]
    init = Image.new("RGB", (SIZE, SIZE), (10, 200, 30))
    # diffusers makes no image either: its FLUX and SD img2img raise ValueError ("the number of
    # pipeline steps is 0"); its SD3 img2img (0.42) fails inside attention on the empty timesteps.
    with pytest.raises((ValueError, RuntimeError)):
        StableDiffusion3Img2ImgPipeline(**pipe.components)("x", image=init, strength=0.0, num_inference_steps=4,
                                                           height=SIZE, width=SIZE, output_type="np")
    with pytest.raises(mpool.InvalidInput, match="needs strength > 0"):
        pool.img2img("sd3", init, "x", strength=0.0, steps=4).result()
    assert pool.generate_image("sd3", "x", steps=1, seed=0).result().size == (SIZE, SIZE)  # the replica still serves


def test_inspect_says_sd3_builds_the_pipeline_and_registration_refuses_other_pipelines(saved, tmp_path) -> None:
    import json

    _, path = saved["sd3"]
    report = mpool.inspect(path)
    assert report["supported_by"] == ["sd3"] and report["capabilities"] == ["text_to_image"]
    assert "StableDiffusion3Pipeline" in report["support"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "FluxKontextPipeline"}))
    with pytest.raises(mpool.InvalidInput, match="FluxKontextPipeline"):
        mpool.NativeModel(str(other))


def test_tiny_autoencoder_previews_decode_the_clean_image_estimate(saved, tmp_path) -> None:
    from diffusers import AutoencoderTiny

    from sd3_models import randomize

    pipe, path = saved["sd3"]
    tiny = AutoencoderTiny(in_channels=3, out_channels=3, encoder_block_out_channels=(8, 8, 8),
                           decoder_block_out_channels=(8, 8, 8), latent_channels=4, num_encoder_blocks=(1, 1, 1),
                           num_decoder_blocks=(1, 1, 1), scaling_factor=1.5305, shift_factor=0.0609)
    randomize(tiny, 3)
    tiny.save_pretrained(tmp_path / "taesd")
    with mpool.Pool() as p:
        p.register("taesd", mpool.NativeModel(str(path), options={"preview_vae": str(tmp_path / "taesd")}))
        # One step from sigma 1: the clean-image estimate is the final latent.
        chunks = list(p.generate_image("taesd", "a cat", steps=1, guidance_scale=0.0, latents=latents(4).numpy(),
                                       width=SIZE, height=SIZE))
    with torch.no_grad():
        final = pipe("a cat", num_inference_steps=1, guidance_scale=0.0, latents=latents(4), height=SIZE,
                     width=SIZE, output_type="latent").images
        ref = tiny.decode(final / 1.5305 + 0.0609).sample
    ref = ((ref[0].permute(1, 2, 0) / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    preview = np.asarray(chunks[0].preview)
    assert preview.shape == ref.shape == (SIZE, SIZE, 3)
    assert int(np.max(np.abs(preview.astype(int) - ref.astype(int)))) <= 1
    with pytest.raises(mpool.InvalidInput, match="preview_vae"):
        mpool.NativeModel(str(path), options={"preview_vae": str(tmp_path / "missing")})


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_draws_close_to_float32(saved, dtype) -> None:
    # float16 keeps the VAE in float32 (its config's force_upcast), as diffusers does.
    _, path = saved["sd3"]
    with mpool.Pool() as p:
        p.register("low", mpool.NativeModel(str(path), dtype=dtype))
        p.register("fp32", mpool.NativeModel(str(path)))
        kw = dict(steps=4, guidance_scale=3.0, latents=latents(2).numpy(), width=SIZE, height=SIZE, output_type="np")
        low, full = p.generate_image("low", "a cat", **kw).result(), p.generate_image("fp32", "a cat", **kw).result()
    assert low.dtype == np.float32 and low.shape == full.shape
    assert float(np.mean(np.abs(low - full))) < 0.03, float(np.mean(np.abs(low - full)))


def test_text_encoders_on_cpu_option_gives_the_same_image(saved) -> None:
    _, path = saved["sd3"]
    with mpool.Pool() as p:
        p.register("split", mpool.NativeModel(str(path), options={"text_encoders_on_cpu": True}))
        p.register("one", mpool.NativeModel(str(path)))
        kw = dict(steps=2, guidance_scale=3.0, seed=3, width=SIZE, height=SIZE, output_type="np")
        a, b = p.generate_image("split", "a dog", **kw).result(), p.generate_image("one", "a dog", **kw).result()
    assert np.array_equal(a, b)


def test_memory_estimate_covers_every_component_and_defaults_come_from_the_model(saved) -> None:
    _, path = saved["sd3"]
    model = mpool.NativeModel(str(path))
    weights = sum(f.stat().st_size for f in Path(path).rglob("*.safetensors")) / 2**20
    assert model.info["memory_mb"] >= weights
    defaults = model.defaults
    assert (defaults["width"], defaults["height"], defaults["steps"], defaults["guidance_scale"]) == (SIZE, SIZE, 28, 7.0)
    assert defaults["size_multiple"] == 8 and defaults["latent_channels"] == 4


def test_a_turbo_folder_defaults_to_four_steps_without_guidance(saved, tmp_path) -> None:
    import shutil

    _, path = saved["sd3"]
    turbo = tmp_path / "sd3.5-large-turbo"
    shutil.copytree(path, turbo)
    defaults = mpool.NativeModel(str(turbo)).defaults
    assert (defaults["steps"], defaults["guidance_scale"]) == (4, 0.0)
    standard = mpool.NativeModel(str(turbo), options={"variant": "standard"}).defaults
    assert (standard["steps"], standard["guidance_scale"]) == (28, 7.0)
    with pytest.raises(mpool.InvalidInput, match="variant"):
        mpool.NativeModel(str(turbo), options={"variant": "fast"})


@pytest.mark.parametrize(("output", "problem"), [("fox.txt", "image extension"), ("no/such/folder/fox.png", "does not exist")])
def test_cli_image_refuses_an_output_it_could_not_write_before_loading_anything(tmp_path, output, problem) -> None:
    import subprocess
    import sys

    # The model path does not exist either: the output is checked first.
    run = subprocess.run([sys.executable, "-m", "mpool", "image", "--model", str(tmp_path / "none"), "a cat",
                          "-o", str(tmp_path / output)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and problem in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_cli_image_writes_the_image_and_img2img(saved, tmp_path) -> None:
    import subprocess
    import sys

    from PIL import Image

    _, path = saved["sd3"]
    out = tmp_path / "out.png"
    run = subprocess.run([sys.executable, "-m", "mpool", "image", "--model", str(path), "a cat", "-o", str(out),
                          "--steps", "2", "--seed", "1", "--quiet"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    with Image.open(out) as image:
        assert image.size == (SIZE, SIZE)
    again = tmp_path / "again.png"
    run = subprocess.run([sys.executable, "-m", "mpool", "image", "--model", str(path), "a dog", "-o", str(again),
                          "--init-image", str(out), "--strength", "0.5", "--steps", "4", "--seed", "2"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    with Image.open(again) as image:
        assert image.size == (SIZE, SIZE) and "4/4" not in run.stdout  # the bar goes to stderr
    assert "2/2" in run.stderr  # strength 0.5 of 4 steps runs 2, with a progress bar
    bad = subprocess.run([sys.executable, "-m", "mpool", "image", "--model", str(path), "x", "-o", str(again),
                          "--strength", "0.5"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--init-image" in bad.stderr
