"""The native CLIP and SigLIP families against transformers (the oracle): tiny
random models built in the test (two_tower_models.py), compared on the same
pixel values and ids, then end to end from image files through the pool."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import mpool
import mpool.testing
from two_tower_models import save_clip, save_siglip

TEXTS = ["a photo of a cat", "the big red house on the tree", "dog", "a blue car in a house of trees"]


def rel_err(ours, ref):
    ref = np.asarray(ref)
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))


def features(out):
    return (out.pooler_output if hasattr(out, "pooler_output") else out).detach().numpy()


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def hf_pixels(proc, images):
    return proc(images=[Image.fromarray(i) if isinstance(i, np.ndarray) else i for i in images], return_tensors="pt")[
        "pixel_values"
    ]


def photo_like(seed, h, w):
    """Shapes, a gradient and noise drawn with PIL: an RGB image of h x w."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(h + w, 1)], -1)
    img = Image.fromarray((base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8))
    from PIL import ImageDraw

    d = ImageDraw.Draw(img)
    d.ellipse([w // 5, h // 4, w // 2, h // 2 + h // 4], fill=(200, 30, 40))
    d.rectangle([w // 2, h // 6, w - w // 8, h // 2], fill=(20, 160, 60))
    return img


CLIP_CONFIGS = {
    "vit-patch6-quick_gelu": dict(),
    "patch4-image32-gelu": dict(image_size=32, patch_size=4, act="gelu"),
    "one-layer-patch10": dict(layers=1, image_size=40, patch_size=10, heads=2),
    "three-layers-legacy-eos": dict(layers=3, legacy_eos=True, hidden=48, heads=6),
}


@pytest.fixture(scope="module", params=list(CLIP_CONFIGS))
def clip_model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / request.param
    model, tok, proc = save_clip(path, seed=len(request.param) % 5, **CLIP_CONFIGS[request.param])
    return path, model, tok, proc


def test_clip_image_and_text_features_match_transformers_in_each_config(each_float32_gemm, clip_model):
    path, model, tok, _ = clip_model
    size = model.config.vision_config.image_size
    px = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref_i = features(model.get_image_features(pixel_values=px))
        ref_t = features(model.get_text_features(**enc))
    out = mpool.testing.probe(
        "clip.features", {"pixel_values": px.numpy(), "input_ids": enc["input_ids"].numpy()}, path=str(path)
    )
    assert out["image_embeds"].shape == ref_i.shape
    assert rel_err(out["image_embeds"], ref_i) <= 1e-4
    assert rel_err(out["text_embeds"], ref_t) <= 1e-4


def test_clip_pool_embeds_texts_and_images_like_the_processor_and_model(clip_model):
    path, model, tok, proc = clip_model
    images = [photo_like(0, 57, 83), photo_like(1, 120, 40), photo_like(2, 31, 31)]
    with torch.no_grad():
        ref_t = features(model.get_text_features(**tok(TEXTS, padding=True, return_tensors="pt")))
        ref_i = features(model.get_image_features(pixel_values=hf_pixels(proc, images)))
    with mpool.Pool() as pool:
        pool.register("clip", str(path))
        assert set(pool.models()[0]["capabilities"]) == {"image_embedding", "text_embedding"}
        texts = pool.embed("clip", TEXTS)
        raw_texts = pool.embed("clip", TEXTS, normalize=False)
        imgs = pool.embed_images("clip", [np.asarray(i) for i in images])
        raw_imgs = pool.embed_images("clip", [np.asarray(i) for i in images], normalize=False)
    assert rel_err(raw_texts, ref_t) <= 1e-4
    assert rel_err(texts, unit(ref_t)) <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert rel_err(raw_imgs, ref_i) <= 1e-4
    assert rel_err(imgs, unit(ref_i)) <= 1e-4


def test_clip_zero_shot_matches_transformers_softmax_of_logits_per_image(clip_model):
    path, model, tok, proc = clip_model
    images = [photo_like(3, 64, 48), photo_like(4, 30, 90)]
    labels = ["cat", "dog", "red house", "tree"]
    with mpool.Pool() as pool:
        pool.register("clip", str(path))
        probs = pool.zero_shot("clip", [np.asarray(i) for i in images], labels, template="a photo of the {}")
    enc = tok([f"a photo of the {x}" for x in labels], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(pixel_values=hf_pixels(proc, images), **enc).logits_per_image.softmax(-1).numpy()
    assert probs.shape == (2, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, ref, atol=1e-5)


SIGLIP_CONFIGS = {
    "patch8-image32": dict(),
    "patch4-image24-gelu-3layers": dict(image_size=24, patch_size=4, act="gelu", layers=3),
    "wide-heads2": dict(hidden=48, heads=2, max_positions=12),
}


@pytest.fixture(scope="module", params=list(SIGLIP_CONFIGS))
def siglip_model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("siglip") / request.param
    model, tok, proc = save_siglip(path, seed=len(request.param) % 3, **SIGLIP_CONFIGS[request.param])
    return path, model, tok, proc


def siglip_ids(tok, model, texts):
    n = model.config.text_config.max_position_embeddings
    return tok(texts, padding="max_length", max_length=n, truncation=True, return_tensors="pt")["input_ids"]


def test_siglip_image_and_text_features_match_transformers_in_each_config(siglip_model):
    path, model, tok, _ = siglip_model
    size = model.config.vision_config.image_size
    px = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    ids = siglip_ids(tok, model, TEXTS)
    with torch.no_grad():
        ref_i = features(model.get_image_features(pixel_values=px))
        ref_t = features(model.get_text_features(input_ids=ids))
    out = mpool.testing.probe("siglip.features", {"pixel_values": px.numpy(), "input_ids": ids.numpy()}, path=str(path))
    assert rel_err(out["image_embeds"], ref_i) <= 1e-4
    assert rel_err(out["text_embeds"], ref_t) <= 1e-4


def test_siglip_pool_pads_texts_to_the_model_length_and_zero_shot_uses_sigmoid_with_bias(siglip_model):
    path, model, tok, proc = siglip_model
    images = [photo_like(5, 50, 70), photo_like(6, 33, 20)]
    labels = ["cat", "big dog"]
    with torch.no_grad():
        ref_t = features(model.get_text_features(input_ids=siglip_ids(tok, model, TEXTS)))
        ref_i = features(model.get_image_features(pixel_values=hf_pixels(proc, images)))
        lab = siglip_ids(tok, model, [f"a photo of a {x}." for x in labels])
        ref_p = torch.sigmoid(model(pixel_values=hf_pixels(proc, images), input_ids=lab).logits_per_image).numpy()
    with mpool.Pool() as pool:
        pool.register("sig", str(path))
        raw_t = pool.embed("sig", TEXTS, normalize=False)
        t = pool.embed("sig", TEXTS)
        raw_i = pool.embed_images("sig", [np.asarray(i) for i in images], normalize=False)
        probs = pool.zero_shot("sig", [np.asarray(i) for i in images], labels)
    assert rel_err(raw_t, ref_t) <= 1e-4
    assert rel_err(t, unit(ref_t)) <= 1e-4
    assert rel_err(raw_i, ref_i) <= 1e-4
    np.testing.assert_allclose(probs, ref_p, atol=1e-5)
    assert not np.allclose(probs.sum(1), 1.0)  # independent sigmoids, not a softmax


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip_e2e") / "clip"
    model, tok, proc = save_clip(path, image_size=32, patch_size=8)
    return path, model, tok, proc


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt,kw",
    [("PNG", {}), ("JPEG", {"quality": 90}), ("JPEG", {"quality": 85, "progressive": True}), ("BMP", {})],
    ids=["png", "jpeg", "progressive-jpeg", "bmp"],
)
def test_clip_from_image_files_matches_the_processor_and_model_end_to_end(clip_dir, tmp_path, fmt, kw):
    path, model, _, proc = clip_dir
    originals = [photo_like(10, 90, 130), photo_like(11, 200, 64).convert("L").convert("RGB")]
    files = []
    for i, img in enumerate(originals):
        f = tmp_path / f"img{i}.{fmt.lower()}"
        f.write_bytes(encoded(img, fmt, **kw))
        files.append(f)
    with torch.no_grad():
        ref = features(model.get_image_features(pixel_values=hf_pixels(proc, [Image.open(f) for f in files])))
    with mpool.Pool() as pool:
        pool.register("clip", str(path))
        ours = pool.embed_images("clip", [str(f) for f in files])
    cos = (ours * unit(ref)).sum(1)
    assert cos.min() >= 0.9999


def _exif_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(img, "JPEG", quality=92, exif=exif.tobytes())


def _rgba(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    alpha = np.zeros((img.height, img.width), np.uint8)
    alpha[:, : img.width // 2] = 255
    alpha[img.height // 3 :, img.width // 2 :] = 90
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


def _sixteen_bit_png(img: Image.Image) -> bytes:
    gray = (np.asarray(img.convert("L")).astype(np.uint16) * 1) + 3  # 16-bit samples that Pillow clips at 255
    return encoded(Image.fromarray(gray), "PNG")


def _gif(img: Image.Image) -> bytes:
    frames = [img.convert("P", palette=Image.Palette.ADAPTIVE), img.rotate(90).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    return buf.getvalue()


FILE_KINDS = {
    "exif-rotated-jpeg-6": lambda im: _exif_jpeg(im, 6),
    "exif-rotated-jpeg-3": lambda im: _exif_jpeg(im, 3),
    "exif-transposed-jpeg-5": lambda im: _exif_jpeg(im, 5),
    "palette-png": lambda im: encoded(im.convert("P", palette=Image.Palette.ADAPTIVE, colors=60), "PNG"),
    "rgba-png": lambda im: encoded(_rgba(im), "PNG"),
    "16-bit-gray-png": _sixteen_bit_png,
    "grayscale-png": lambda im: encoded(im.convert("L"), "PNG"),
    "grayscale-jpeg": lambda im: encoded(im.convert("L"), "JPEG", quality=90),
    "webp-lossy": lambda im: encoded(im, "WEBP", quality=80),
    "webp-lossless-alpha": lambda im: encoded(_rgba(im), "WEBP", lossless=True),
    "gif-first-frame": _gif,
}


@pytest.mark.parametrize("kind", list(FILE_KINDS))
def test_clip_embeds_every_image_kind_as_the_hf_processor_sees_it(clip_dir, tmp_path, kind):
    from PIL import ImageOps

    path, model, _, proc = clip_dir
    f = tmp_path / f"image-{kind}"
    f.write_bytes(FILE_KINDS[kind](photo_like(30, 70, 110)))
    with Image.open(f) as opened:  # the oracle: what transformers sees of the file, orientation applied
        seen = ImageOps.exif_transpose(opened)
        seen.load()
    with torch.no_grad():
        ref = features(model.get_image_features(pixel_values=hf_pixels(proc, [seen])))
    with mpool.Pool() as pool:
        pool.register("clip", str(path))
        ours = pool.embed_images("clip", str(f))
    assert (ours * unit(ref)).sum(1).min() >= 0.9999


def test_images_batch_across_concurrent_requests_with_the_same_results(clip_dir):
    path, *_ = clip_dir
    images = [np.asarray(photo_like(20 + i, 40 + 3 * i, 50)) for i in range(12)]
    with mpool.Pool() as pool:
        pool.register("clip", str(path), max_replicas=1)
        alone = pool.embed_images("clip", images)
        results: dict[int, np.ndarray] = {}

        def client(i):
            results[i] = pool.embed_images("clip", images[i])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = pool.stats()["models"]["clip"]
    for i in range(len(images)):
        np.testing.assert_allclose(results[i], alone[i : i + 1], atol=1e-5)
    assert stats["replicas"] <= 1


def test_a_bad_image_fails_only_its_own_request_and_the_model_keeps_serving(clip_dir, tmp_path):
    path, *_ = clip_dir
    bad = tmp_path / "truncated.png"
    bad.write_bytes(encoded(photo_like(1, 40, 40), "PNG")[:60])
    good = np.asarray(photo_like(2, 40, 40))
    with mpool.Pool() as pool:
        pool.register("clip", str(path))
        with pytest.raises(mpool.InvalidInput, match="image #1"):
            pool.embed_images("clip", [good, str(bad)])
        assert pool.embed_images("clip", good).shape == (1, 16)


def test_zero_shot_refuses_bad_templates_and_labels_with_invalid_input(clip_dir):
    path, *_ = clip_dir
    img = np.zeros((8, 8, 3), np.uint8)
    with mpool.Pool() as pool:
        pool.register("clip", str(path))
        # "{:d}" and "{:{}}" hold one {} but cannot format a str label.
        for template in ["no placeholder", "{} and {}", "{0}", "{x}", 3, "{:d}", "{:{}}", "{!r:d}"]:
            with pytest.raises(mpool.InvalidInput, match="template"):
                pool.zero_shot("clip", img, ["cat"], template=template)  # type: ignore[arg-type]
        for labels in [[], "cat", ["cat", ""], ["cat", 3]]:
            with pytest.raises(mpool.InvalidInput, match="labels"):
                pool.zero_shot("clip", img, labels)  # type: ignore[arg-type]
        with pytest.raises(mpool.InvalidInput, match="normalize"):
            pool.embed("clip", "x", normalize="yes")  # type: ignore[arg-type]
        assert pool.zero_shot("clip", img, ["cat"]).shape == (1, 1)


def test_zero_shot_on_a_model_without_a_text_tower_is_invalid_input():
    class Colors:
        dimension = 3

        def embed_images(self, images):
            return np.stack([i.reshape(-1, 3).mean(0) for i in images]).astype(np.float32)

    with mpool.Pool() as pool:
        pool.register("colors", mpool.PyModel("image_embedding", lambda d: Colors(), memory_mb=1))
        with pytest.raises(mpool.InvalidInput, match="does not embed texts"):
            pool.zero_shot("colors", np.zeros((4, 4, 3), np.uint8), ["cat"])
        unit_rows = pool.embed_images("colors", np.full((4, 4, 3), 7, np.uint8), normalize=True)
        np.testing.assert_allclose(np.linalg.norm(unit_rows, axis=1), 1.0, rtol=1e-6)


def test_clip_texts_longer_than_the_positions_are_cut_or_refused(clip_dir):
    path, model, tok, _ = clip_dir
    long = " ".join(["cat"] * 60)
    with torch.no_grad():
        enc = tok([long], truncation=True, max_length=24, return_tensors="pt")
        ref = features(model.get_text_features(**enc))
    with mpool.Pool() as pool:
        pool.register("clip", str(path))
        ours = pool.embed("clip", long, normalize=False)
        with pytest.raises(mpool.InvalidInput, match="tokens"):
            pool.embed("clip", long, truncate=False)
    assert rel_err(ours, ref) <= 1e-4


@pytest.mark.parametrize("layout", ["dict_keys_only", "null_configs_and_dict_keys", "dict_keys_over_other_values"])
def test_clip_config_with_towers_in_the_older_config_dict_keys_reads_as_transformers_reads_it(tmp_path, layout):
    from transformers import CLIPImageProcessor, CLIPModel

    model, tok, _ = save_clip(tmp_path, hidden=24, heads=3, image_size=24, patch_size=4, act="gelu", seed=3)
    config = json.loads((tmp_path / "config.json").read_text())
    if layout == "dict_keys_over_other_values":  # the _dict values win over the *_config ones
        config["text_config_dict"] = dict(config["text_config"])
        config["vision_config_dict"] = dict(config["vision_config"])
        config["vision_config"]["hidden_size"] = 768
        config["text_config"]["hidden_act"] = "quick_gelu"
    else:
        config["text_config_dict"] = config.pop("text_config")
        config["vision_config_dict"] = config.pop("vision_config")
        if layout == "null_configs_and_dict_keys":
            config["text_config"] = config["vision_config"] = None
    (tmp_path / "config.json").write_text(json.dumps(config))
    reference = CLIPModel.from_pretrained(str(tmp_path)).eval()
    assert reference.config.vision_config.hidden_size == model.config.vision_config.hidden_size
    image = np.asarray(photo_like(4, 40, 30))
    proc = CLIPImageProcessor.from_pretrained(str(tmp_path))
    with torch.no_grad():
        ref_image = features(reference.get_image_features(pixel_values=hf_pixels(proc, [image])))
        ref_text = features(reference.get_text_features(**tok(TEXTS, padding=True, return_tensors="pt")))
    with mpool.Pool() as pool:
        pool.register("clip", str(tmp_path))
        assert rel_err(pool.embed_images("clip", [image], normalize=False), ref_image) <= 1e-4
        assert rel_err(pool.embed("clip", TEXTS, normalize=False), ref_text) <= 1e-4


def test_a_two_tower_model_without_an_image_processor_is_refused_at_registration(tmp_path):
    path = tmp_path / "clip"
    save_clip(path)
    (path / "preprocessor_config.json").unlink()
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match="preprocessor_config.json"):
            pool.register("clip", str(path))


def test_siglip2_naflex_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "sig"
    save_siglip(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "siglip2"
    (path / "config.json").write_text(json.dumps(cfg))
    report = mpool.inspect(str(path))
    assert "siglip" in json.dumps(report)
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match="siglip2"):
            pool.register("sig", str(path))


def test_cli_embed_image_prints_embeddings_and_zero_shot_probabilities(clip_dir, tmp_path):
    path, *_ = clip_dir
    f = tmp_path / "x.png"
    photo_like(7, 50, 50).save(f)
    out = subprocess.run(
        [sys.executable, "-m", "mpool", "embed-image", str(f), "--model", str(path), "--labels", "cat", "dog", "--json"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    result = json.loads(out.stdout)
    assert np.asarray(result["embeddings"]).shape == (1, 16)
    assert result["labels"] == ["cat", "dog"]
    assert abs(sum(result["probabilities"][0]) - 1.0) < 1e-5
    bad = subprocess.run(
        [sys.executable, "-m", "mpool", "embed-image", str(tmp_path / "missing.png"), "--model", str(path)],
        capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == 1 and "InvalidInput" in bad.stderr


def test_zero_shot_on_a_model_with_both_capabilities_but_no_contrastive_head_is_invalid_input():
    class Both:
        dimension = 3

        def embed(self, texts, task=None):
            return np.ones((len(texts), 3), np.float32)

        def embed_images(self, images):
            return np.ones((len(images), 3), np.float32)

    with mpool.Pool() as pool:
        pool.register("both", mpool.PyModel(["image_embedding", "text_embedding"], lambda d: Both(), memory_mb=1))
        with pytest.raises(mpool.InvalidInput, match="no contrastive head"):
            pool.zero_shot("both", np.zeros((4, 4, 3), np.uint8), ["cat"])
        with pytest.raises(mpool.PoolError, match="nope"):
            pool.zero_shot("nope", np.zeros((4, 4, 3), np.uint8), ["cat"])
        assert pool.embed("both", "still serving").shape == (1, 3)
