"""Image preprocessing from preprocessor_config.json (imageio::preprocess) against
Hugging Face's image processors with their PIL backend (CLIPImageProcessorPil,
SiglipImageProcessorPil: the backend transformers uses without torchvision).

The resampling reproduces PIL's fixed-point algorithm (Pillow 13's pass order),
so pixels match exactly before rescaling; the issue's bound (mean absolute
difference <= 0.5/255, max <= 2/255 in [0, 1] units) is asserted, and, with
Pillow 13 or later, the exact match too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import PIL
import pytest
from PIL import Image, ImageDraw
from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

import mpool
from mpool import _core


def photo_like(h: int, w: int, seed: int) -> np.ndarray:
    """Shapes, a gradient and noise: edges, smooth ramps and texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(h + w - 2, 1)], -1)
    img = Image.fromarray(np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8))
    if h >= 8 and w >= 8:
        draw = ImageDraw.Draw(img)
        draw.ellipse([w // 5, h // 6, w // 2, h // 2], fill=(250, 30, 40))
        draw.rectangle([w // 2, h // 2, w - 3, h - 3], outline=(10, 200, 90), width=3)
        draw.line([0, h - 1, w - 1, 0], fill=(255, 255, 255), width=2)
    return np.asarray(img)


def saved(processor: Any, tmp_path: Path) -> str:
    processor.save_pretrained(tmp_path)
    return str(tmp_path / "preprocessor_config.json")


def compare(ours: np.ndarray, ref: np.ndarray, std: list[float]) -> None:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    # Back to [0, 1] pixel units: the bound is on pixels, normalization only scales.
    diff = np.abs(ours - ref) * np.asarray(std, np.float32)[:, None, None]
    assert diff.mean() <= 0.5 / 255 and diff.max() <= 2 / 255
    if int(PIL.__version__.split(".")[0]) >= 13:
        assert diff.max() <= 1e-6  # PIL's resampling reproduced exactly


SIZES = [(480, 640), (640, 480), (224, 224), (37, 301), (300, 20), (1000, 1500), (100, 100), (5, 7)]


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_clip_preprocessing_matches_clip_image_processor(tmp_path: Path, h: int, w: int) -> None:
    processor = CLIPImageProcessorPil()  # shortest edge 224, bicubic, center crop 224, CLIP mean/std
    image = photo_like(h, w, seed=h * w)
    ref = processor(images=Image.fromarray(image), return_tensors="np")["pixel_values"][0]
    compare(_core._preprocess_image(saved(processor, tmp_path), image), ref, processor.image_std)


@pytest.mark.parametrize(("h", "w"), SIZES)
def test_siglip_preprocessing_matches_siglip_image_processor(tmp_path: Path, h: int, w: int) -> None:
    processor = SiglipImageProcessorPil()  # fixed 224 x 224, bilinear, mean/std 0.5
    image = photo_like(h, w, seed=h + w)
    ref = processor(images=Image.fromarray(image), return_tensors="np")["pixel_values"][0]
    compare(_core._preprocess_image(saved(processor, tmp_path), image), ref, processor.image_std)


@pytest.mark.parametrize(
    "settings",
    [
        dict(size={"shortest_edge": 64}, crop_size={"height": 48, "width": 80}, resample=2),
        dict(size={"shortest_edge": 32}, crop_size={"height": 50, "width": 50}),  # crop larger: zero padding
        dict(size={"height": 96, "width": 40}, do_center_crop=False, resample=3),
        dict(do_resize=False, crop_size={"height": 30, "width": 30}),
        dict(size={"shortest_edge": 50}, do_center_crop=False, do_normalize=False),
    ],
)
def test_other_clip_settings_match(tmp_path: Path, settings: dict[str, Any]) -> None:
    processor = CLIPImageProcessorPil(**settings)
    image = photo_like(77, 120, seed=3)
    ref = processor(images=Image.fromarray(image), return_tensors="np")["pixel_values"][0]
    std = processor.image_std if processor.do_normalize else [1.0, 1.0, 1.0]
    compare(_core._preprocess_image(saved(processor, tmp_path), image), ref, std)


@pytest.mark.parametrize(
    ("cls", "settings"),
    [
        # CLIPFeatureExtractor-era files: bare integers (shortest edge; a square crop).
        (CLIPImageProcessorPil, {"feature_extractor_type": "CLIPFeatureExtractor", "size": 40, "crop_size": 36}),
        (CLIPImageProcessorPil, {"image_processor_type": "CLIPImageProcessor", "size": 30, "crop_size": 44}),
        # Keys left out take the class's values (size, crop, mean and std, normalizing).
        (CLIPImageProcessorPil, {"image_processor_type": "CLIPImageProcessor"}),
        (CLIPImageProcessorPil, {"image_processor_type": "CLIPImageProcessorFast", "size": {"shortest_edge": 50}}),
        (SiglipImageProcessorPil, {"image_processor_type": "SiglipImageProcessor", "size": {"height": 40, "width": 60}}),
        (SiglipImageProcessorPil, {"image_processor_type": "SiglipImageProcessor"}),
    ],
    ids=["clip_feature_extractor_integers", "clip_integers", "clip_bare", "clip_fast_no_crop_key", "siglip_no_mean",
         "siglip_bare"],
)
def test_a_file_with_integer_sizes_or_keys_left_out_reads_as_transformers_reads_it(
    tmp_path: Path, cls: Any, settings: dict[str, Any]
) -> None:
    import json

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings))
    processor = cls.from_pretrained(tmp_path)
    image = photo_like(77, 120, seed=5)
    ref = processor(images=Image.fromarray(image), return_tensors="np")["pixel_values"][0]
    compare(_core._preprocess_image(str(tmp_path / "preprocessor_config.json"), image), ref, processor.image_std)


def test_a_bare_integer_size_of_a_processor_class_mpool_does_not_know_is_refused_saying_what_to_write(
    tmp_path: Path,
) -> None:
    import json

    path = tmp_path / "preprocessor_config.json"
    path.write_text(json.dumps({"image_processor_type": "ViTImageProcessor", "size": 32}))
    with pytest.raises(mpool.InvalidInput, match=r"\"size\" is a bare integer.*'ViTImageProcessor'.*shortest_edge"):
        _core._preprocess_image(str(path), np.zeros((4, 4, 3), np.uint8))


def test_unsupported_settings_are_refused_naming_the_file_and_key(tmp_path: Path) -> None:
    path = saved(CLIPImageProcessorPil(resample=4), tmp_path)  # box
    with pytest.raises(mpool.InvalidInput, match="preprocessor_config.json: \"resample\" 4 is not supported"):
        _core._preprocess_image(path, np.zeros((4, 4, 3), np.uint8))
    path = saved(CLIPImageProcessorPil(image_mean=[0.5, 0.5]), tmp_path)
    with pytest.raises(mpool.InvalidInput, match="\"image_mean\" needs 3 values"):
        _core._preprocess_image(path, np.zeros((4, 4, 3), np.uint8))


def test_an_empty_image_or_a_non_rgb_array_is_invalid_input(tmp_path: Path) -> None:
    path = saved(CLIPImageProcessorPil(), tmp_path)
    with pytest.raises(mpool.InvalidInput, match="the image is empty"):
        _core._preprocess_image(path, np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(mpool.InvalidInput, match="\\(height, width, 3\\) uint8 RGB array"):
        _core._preprocess_image(path, np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize("resample", [1, 2, 3])
def test_resize_equals_pil_exactly_on_random_sizes(tmp_path: Path, resample: int) -> None:
    import json

    rng = np.random.default_rng(resample)
    config = tmp_path / "preprocessor_config.json"
    for _ in range(40):
        h, w, oh, ow = (int(x) for x in rng.integers(1, 400, size=4))
        image = photo_like(h, w, seed=int(rng.integers(1 << 30)))
        config.write_text(json.dumps({
            "size": {"height": oh, "width": ow}, "resample": resample, "do_rescale": False, "do_normalize": False,
        }))
        ours = _core._preprocess_image(str(config), image).transpose(1, 2, 0)
        # The two passes as single-axis PIL resizes (exact in every Pillow), in
        # Pillow 13's order: horizontal first unless the height shrinks by more
        # than twice what the width does.
        pil = Image.fromarray(image)
        if h - oh > 0 and h - oh > (w - ow) * 2:
            ref = pil.resize((w, oh), resample=resample).resize((ow, oh), resample=resample)
        else:
            ref = pil.resize((ow, h), resample=resample).resize((ow, oh), resample=resample)
        assert np.array_equal(ours, np.asarray(ref).astype(np.float32)), (h, w, oh, ow)
        if int(PIL.__version__.split(".")[0]) >= 13:
            direct = np.asarray(pil.resize((ow, oh), resample=resample))
            assert np.array_equal(ours, direct.astype(np.float32)), (h, w, oh, ow)
