"""The native diffusers autoencoders (cpp/src/models/vae) against diffusers.

Each model is a tiny diffusers AutoencoderKL or AutoencoderTiny built here with
every parameter random (norm weights around 1, so no term hides), saved with
save_pretrained into a temporary folder and run through the probes
(mpool.testing.probe: ``vae.encode``, ``vae.decode``, ``taesd.encode``,
``taesd.decode``). Everything is float32; outputs must agree to 1e-4 relative
(max abs difference / max abs reference). The original (LDM) single-file layout
is written from the diffusers state dict by the published name mapping, under
SD3's ``first_stage_model.`` prefix.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from original_names import vae_to_ldm_names
from random_weights import randomize
from safetensors.torch import save_file

import mpool
import mpool.testing

RTOL = 1e-4

# name -> (AutoencoderKL arguments, image batch (b, h, w)). SD3 and FLUX: 16 latent
# channels, no quant convs, a scale and shift; SD 1/2: 4 channels with quant convs.
KL_CONFIGS: dict[str, tuple[dict[str, Any], tuple[int, int, int]]] = {
    "sd3_like_3_blocks_2_layers": (
        {"block_out_channels": (16, 32, 32), "layers_per_block": 2, "latent_channels": 16, "norm_num_groups": 8,
         "use_quant_conv": False, "use_post_quant_conv": False, "scaling_factor": 1.5305, "shift_factor": 0.0609},
        (1, 24, 40),
    ),
    "sd1_like_2_blocks_1_layer": (
        {"block_out_channels": (32, 64), "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8},
        (2, 20, 12),
    ),
    "sd1_like_no_mid_attention_odd_size": (
        {"block_out_channels": (16, 32), "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 4,
         "mid_block_add_attention": False},
        (1, 19, 26),
    ),
}

# name -> (AutoencoderTiny arguments, image batch, latent batch (b, h, w)).
TINY_CONFIGS: dict[str, tuple[dict[str, Any], tuple[int, int, int], tuple[int, int, int]]] = {
    "taesd_like_4_levels": (
        {"encoder_block_out_channels": (16, 16, 16, 16), "decoder_block_out_channels": (16, 16, 16, 16),
         "num_encoder_blocks": (1, 2, 2, 1), "num_decoder_blocks": (1, 2, 2, 1), "latent_channels": 4},
        (2, 32, 24), (2, 4, 3),
    ),
    "taesd3_like_silu_upsample_3": (
        {"encoder_block_out_channels": (8, 8, 8), "decoder_block_out_channels": (12, 12, 12),
         "num_encoder_blocks": (1, 1, 2), "num_decoder_blocks": (2, 1, 1), "latent_channels": 16,
         "act_fn": "silu", "upsampling_scaling_factor": 3},
        (1, 20, 28), (1, 3, 5),
    ),
}


@pytest.fixture(scope="module")
def diffusers() -> Any:
    # A test requirement (scripts/setup.sh --test): the oracle never skips.
    import diffusers as module

    return module


def randn(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def assert_close(ours: np.ndarray, ref: torch.Tensor, what: str) -> float:
    expected = ref.detach().numpy()
    assert ours.shape == expected.shape, f"{what}: shape {ours.shape} != reference {expected.shape}"
    scale = float(np.max(np.abs(expected)))
    assert scale > 0, f"{what}: the reference is all zeros; the comparison would prove nothing"
    err = float(np.max(np.abs(ours.astype(np.float64) - expected.astype(np.float64)))) / scale
    print(f"{what}: max relative error {err:.3e}")
    assert err <= RTOL, f"{what}: relative error {err:.3e} > {RTOL:.0e}"
    return err


@pytest.fixture(scope="module")
def kl_models(diffusers: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    root = tmp_path_factory.mktemp("vae")
    out = {}
    for seed, (name, (kwargs, _)) in enumerate(KL_CONFIGS.items()):
        n = len(kwargs["block_out_channels"])
        model = diffusers.AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n, **kwargs
        )
        randomize(model, seed)
        model.save_pretrained(root / name)
        out[name] = (model, root / name)
    return out


@pytest.fixture(scope="module")
def tiny_models(diffusers: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Any, Path]]:
    root = tmp_path_factory.mktemp("taesd")
    out = {}
    for seed, (name, (kwargs, _, _)) in enumerate(TINY_CONFIGS.items()):
        model = randomize(diffusers.AutoencoderTiny(**kwargs), 10 + seed)
        model.save_pretrained(root / name)
        out[name] = (model, root / name)
    return out


# --- AutoencoderKL


@pytest.mark.parametrize("name", list(KL_CONFIGS))
def test_autoencoder_kl_encode_gives_diffusers_latent_mean_and_clamped_logvar(
    kl_models: dict[str, tuple[Any, Path]], name: str
) -> None:
    model, path = kl_models[name]
    b, h, w = KL_CONFIGS[name][1]
    images = randn(b, 3, h, w, seed=1).clamp(-1, 1)
    with torch.no_grad():
        dist = model.encode(images).latent_dist
    out = mpool.testing.probe("vae.encode", {"images": images.numpy()}, path=str(path))
    assert int(out["unused_tensors"]) == 0, "every stored tensor is the model's"
    assert_close(out["mean"], dist.mean, f"{name} encode mean")
    assert_close(out["logvar"], dist.logvar, f"{name} encode logvar")


@pytest.mark.parametrize("name", list(KL_CONFIGS))
def test_autoencoder_kl_decode_gives_diffusers_sample_from_unscaled_latents(
    kl_models: dict[str, tuple[Any, Path]], name: str
) -> None:
    model, path = kl_models[name]
    kwargs, (b, h, w) = KL_CONFIGS[name]
    f = 2 ** (len(kwargs["block_out_channels"]) - 1)
    latents = randn(b, kwargs["latent_channels"], h // f, w // f, seed=2)
    with torch.no_grad():
        sample = model.decode(latents).sample
    out = mpool.testing.probe("vae.decode", {"latents": latents.numpy()}, path=str(path))
    assert int(out["unused_tensors"]) == 0, "every stored tensor is the model's"
    assert_close(out["sample"], sample, f"{name} decode")


def test_autoencoder_kl_encode_clamps_logvar_to_minus_30_and_20_as_diffusers(
    kl_models: dict[str, tuple[Any, Path]], tmp_path: Path
) -> None:
    model, _ = kl_models["sd1_like_2_blocks_1_layer"]
    loud = copy.deepcopy(model)
    with torch.no_grad():
        loud.quant_conv.weight.mul_(300.0)  # moments far outside the clamp's range
    loud.save_pretrained(tmp_path / "loud")
    images = randn(1, 3, 16, 16, seed=7).clamp(-1, 1)
    with torch.no_grad():
        dist = loud.encode(images).latent_dist
    assert float(dist.logvar.max()) == 20.0 and float(dist.logvar.min()) == -30.0, "both bounds must bind"
    out = mpool.testing.probe("vae.encode", {"images": images.numpy()}, path=str(tmp_path / "loud"))
    assert_close(out["logvar"], dist.logvar, "clamped logvar")
    assert_close(out["mean"], dist.mean, "unclamped mean")


@pytest.mark.parametrize("name", ["sd3_like_3_blocks_2_layers", "sd1_like_2_blocks_1_layer"])
def test_autoencoder_kl_reads_the_original_ldm_layout_of_a_single_file_under_its_prefix(
    kl_models: dict[str, tuple[Any, Path]], name: str, tmp_path: Path
) -> None:
    model, path = kl_models[name]
    kwargs, (b, h, w) = KL_CONFIGS[name]
    ldm = vae_to_ldm_names(model.state_dict(), len(kwargs["block_out_channels"]))
    assert "decoder.mid.attn_1.q.weight" in ldm and ldm["decoder.mid.attn_1.q.weight"].dim() == 4
    assert any(".nin_shortcut." in k for k in ldm), "the layout test must cover a shortcut"
    tensors = {f"first_stage_model.{k}": v for k, v in ldm.items()}
    tensors["model.diffusion_model.pos_embed"] = torch.zeros(1, 4)  # another component of the file
    save_file(tensors, str(tmp_path / "sd3.safetensors"))
    images = randn(b, 3, h, w, seed=3).clamp(-1, 1)
    f = 2 ** (len(kwargs["block_out_channels"]) - 1)
    latents = randn(b, kwargs["latent_channels"], h // f, w // f, seed=4)
    with torch.no_grad():
        dist = model.encode(images).latent_dist
        sample = model.decode(latents).sample
    single = {"path": str(path), "checkpoint": str(tmp_path / "sd3.safetensors"), "prefix": "first_stage_model"}
    enc = mpool.testing.probe("vae.encode", {"images": images.numpy()}, **single)
    dec = mpool.testing.probe("vae.decode", {"latents": latents.numpy()}, **single)
    # Every tensor under the prefix is read through the LDM names; the file's other
    # component is outside it.
    assert int(enc["unused_tensors"]) == 0 and int(dec["unused_tensors"]) == 0
    assert_close(enc["mean"], dist.mean, f"{name} LDM encode mean")
    assert_close(enc["logvar"], dist.logvar, f"{name} LDM encode logvar")
    assert_close(dec["sample"], sample, f"{name} LDM decode")


def test_autoencoder_kl_missing_or_misshapen_tensor_is_named_in_either_layout(
    kl_models: dict[str, tuple[Any, Path]], tmp_path: Path
) -> None:
    model, path = kl_models["sd1_like_2_blocks_1_layer"]
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    latents = np.zeros((1, 4, 3, 3), np.float32)
    diffusers_file = tmp_path / "diffusers.safetensors"
    save_file({k: v for k, v in state.items() if k != "decoder.up_blocks.1.resnets.1.conv2.bias"}, str(diffusers_file))
    missing = r"checkpoint has no tensor 'decoder\.up_blocks\.1\.resnets\.1\.conv2\.bias'"
    with pytest.raises(mpool.InvalidInput, match=missing):
        mpool.testing.probe("vae.decode", {"latents": latents}, path=str(path), checkpoint=str(diffusers_file))
    ldm = vae_to_ldm_names(state, 2)
    del ldm["decoder.mid.attn_1.proj_out.weight"]
    ldm_file = tmp_path / "ldm.safetensors"
    save_file(ldm, str(ldm_file))
    with pytest.raises(
        mpool.InvalidInput,
        match=r"checkpoint has no tensor 'decoder\.mid\.attn_1\.proj_out\.weight' "
        r"\(read as 'decoder\.mid_block\.attentions\.0\.to_out\.0\.weight'\)",
    ):
        mpool.testing.probe("vae.decode", {"latents": latents}, path=str(path), checkpoint=str(ldm_file))
    # Only trailing unit dimensions may be dropped: a 3x3 kernel is not a linear weight.
    ldm = vae_to_ldm_names(state, 2)
    ldm["decoder.mid.attn_1.q.weight"] = torch.zeros(64, 64, 3, 3)
    save_file(ldm, str(ldm_file))
    with pytest.raises(
        mpool.InvalidInput,
        match=r"tensor 'decoder\.mid\.attn_1\.q\.weight' \(read as 'decoder\.mid_block\.attentions\.0\.to_q\.weight'\) "
        r"has shape \[64, 64, 3, 3\] but the model's config implies \[64, 64\]",
    ):
        mpool.testing.probe("vae.decode", {"latents": latents}, path=str(path), checkpoint=str(ldm_file))


def test_autoencoder_kl_without_quant_convs_in_the_file_but_in_the_config_names_quant_conv(
    kl_models: dict[str, tuple[Any, Path]], tmp_path: Path
) -> None:
    # An SD3 checkpoint read with a config that asks for quant convs.
    _, path = kl_models["sd3_like_3_blocks_2_layers"]
    config = json.loads((path / "config.json").read_text())
    config["use_quant_conv"] = True
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    weights = "diffusion_pytorch_model.safetensors"
    (folder / weights).write_bytes((path / weights).read_bytes())
    with pytest.raises(mpool.InvalidInput, match=r"checkpoint has no tensor 'quant_conv\.weight'"):
        mpool.testing.probe("vae.encode", {"images": np.zeros((1, 3, 8, 8), np.float32)}, path=str(folder))


def test_autoencoder_kl_bad_config_value_names_the_key(kl_models: dict[str, tuple[Any, Path]], tmp_path: Path) -> None:
    _, path = kl_models["sd1_like_2_blocks_1_layer"]
    for key, value, message in [
        ("norm_num_groups", 12,
         r'config\.json: "block_out_channels" holds 32, which .*config\.json: "norm_num_groups" \(12\)'),
        ("down_block_types", ["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
         r'config\.json: "down_block_types" holds \'AttnDownEncoderBlock2D\''),
        ("latent_channels", 0, r'config\.json: "latent_channels" is 0'),
    ]:
        config = json.loads((path / "config.json").read_text())
        config[key] = value
        folder = tmp_path / key
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(mpool.InvalidInput, match=message):
            mpool.testing.probe(
                "vae.decode", {"latents": np.zeros((1, 4, 2, 2), np.float32)}, path=str(folder),
                checkpoint=str(path / "diffusion_pytorch_model.safetensors"),
            )


def test_autoencoder_kl_rejects_images_with_the_wrong_channel_count(kl_models: dict[str, tuple[Any, Path]]) -> None:
    _, path = kl_models["sd1_like_2_blocks_1_layer"]
    expected = r"AutoencoderKL\.encode: expected a non-empty floating \(b, 3, h, w\) tensor, got \[1, 4, 8, 8\]"
    with pytest.raises(mpool.InvalidInput, match=expected):
        mpool.testing.probe("vae.encode", {"images": np.zeros((1, 4, 8, 8), np.float32)}, path=str(path))


# --- AutoencoderTiny


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_autoencoder_tiny_encode_gives_diffusers_latents(tiny_models: dict[str, tuple[Any, Path]], name: str) -> None:
    model, path = tiny_models[name]
    b, h, w = TINY_CONFIGS[name][1]
    images = randn(b, 3, h, w, seed=5).clamp(-1, 1)
    with torch.no_grad():
        latents = model.encode(images).latents
    out = mpool.testing.probe("taesd.encode", {"images": images.numpy()}, path=str(path))
    assert int(out["unused_tensors"]) == 0, "every stored tensor is the model's"
    assert_close(out["latents"], latents, f"{name} encode")


@pytest.mark.parametrize("name", list(TINY_CONFIGS))
def test_autoencoder_tiny_decode_gives_diffusers_sample_in_minus_one_to_one(
    tiny_models: dict[str, tuple[Any, Path]], name: str
) -> None:
    model, path = tiny_models[name]
    kwargs, _, (b, h, w) = TINY_CONFIGS[name]
    # Beyond +-3, so the tanh soft clamp is exercised.
    latents = randn(b, kwargs["latent_channels"], h, w, seed=6, scale=4.0)
    with torch.no_grad():
        sample = model.decode(latents).sample
    out = mpool.testing.probe("taesd.decode", {"latents": latents.numpy()}, path=str(path))
    assert int(out["unused_tensors"]) == 0, "every stored tensor is the model's"
    assert_close(out["sample"], sample, f"{name} decode")


def test_autoencoder_tiny_missing_tensor_and_bad_config_are_named(
    tiny_models: dict[str, tuple[Any, Path]], tmp_path: Path
) -> None:
    model, path = tiny_models["taesd_like_4_levels"]
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    assert "encoder.layers.1.conv.4.weight" in state
    del state["encoder.layers.1.conv.4.weight"]
    save_file(state, str(tmp_path / "t.safetensors"))
    with pytest.raises(mpool.InvalidInput, match=r"checkpoint has no tensor 'encoder\.layers\.1\.conv\.4\.weight'"):
        mpool.testing.probe(
            "taesd.encode", {"images": np.zeros((1, 3, 8, 8), np.float32)}, path=str(path),
            checkpoint=str(tmp_path / "t.safetensors"),
        )
    config = json.loads((path / "config.json").read_text())
    config["upsample_fn"] = "bilinear"
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(mpool.InvalidInput, match=r'config\.json: "upsample_fn" is \'bilinear\''):
        mpool.testing.probe(
            "taesd.decode", {"latents": np.zeros((1, 4, 2, 2), np.float32)}, path=str(folder),
            checkpoint=str(path / "diffusion_pytorch_model.safetensors"),
        )
