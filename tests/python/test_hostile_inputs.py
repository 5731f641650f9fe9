"""Hostile inputs: every bad argument is an mpool error naming the parameter, never a
pybind11 TypeError or a silent conversion; durations, copies, fork(), slow image
servers and models that misuse their callbacks cannot hang or crash the process."""

from __future__ import annotations

import asyncio
import copy
import functools
import http.server
import io
import math
import pickle
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from PIL import Image

import mpool
import mpool.testing
from models_for_tests import HashEmbedder, WordStreamer

INF, NAN = math.inf, math.nan


class Painter:
    def generate_image(self, prompt, config, progress):
        progress(1, 1)
        return np.zeros((config["height"], config["width"], 3), dtype=np.uint8)


class Describer:
    def describe(self, image, query, params):
        yield "an image"


class ImageEmbedder:
    dimension = 2

    def embed_images(self, images):
        return np.zeros((len(images), 2), dtype=np.float32)


def png_bytes(size=(4, 4)):
    buf = io.BytesIO()
    Image.new("RGB", size, (255, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def full_pool(pool):
    """A pool with one model per capability."""
    pool.register("emb", mpool.PyModel("text_embedding", lambda d: HashEmbedder(), memory_mb=1))
    pool.register("gen", mpool.PyModel("text_to_text", lambda d: WordStreamer(), memory_mb=1))
    pool.register("img", mpool.PyModel("image_embedding", lambda d: ImageEmbedder(), memory_mb=1))
    pool.register("vis", mpool.PyModel("vision", lambda d: Describer(), memory_mb=1))
    pool.register("paint", mpool.PyModel("text_to_image", lambda d: Painter(), memory_mb=1))
    return pool


def run_async(coro_or_iter):
    async def main():
        if hasattr(coro_or_iter, "__anext__"):
            return [c async for c in coro_or_iter]
        return await coro_or_iter

    return asyncio.run(main())


IMAGE = np.zeros((2, 2, 3), dtype=np.uint8)


def test_values_the_bindings_cannot_convert_are_invalid_input_not_runtime_error(full_pool):
    # The Python layer never sends these; the bindings still translate a failed
    # conversion (pybind11 cast_error) into InvalidInput, as a safety net.
    with pytest.raises(mpool.InvalidInput, match="invalid argument"):
        full_pool._native.generate("gen", "x", {"max_tokens": "5"}, None)
    with pytest.raises(mpool.InvalidInput, match="invalid argument"):
        full_pool._native.generate("gen", [1, "2"], {}, None)


# --- a model that keeps its progress callback -----------------------------------------

STASH_SCRIPT = textwrap.dedent(
    """
    import threading
    import numpy as np
    import mpool

    STASHED = []
    HAMMER_ERRORS = []

    class StashingPainter:
        def generate_image(self, prompt, config, progress):
            progress(1, 2)
            STASHED.append(progress)
            if prompt == "hammer":  # keeps reporting from another thread, across the request's end
                def hammer():
                    try:
                        while True:
                            progress(1, 2, preview=np.zeros((2, 2, 3), np.uint8))
                    except mpool.PoolError as e:
                        HAMMER_ERRORS.append(e)
                t = threading.Thread(target=hammer)
                t.start()
                STASHED.append(t)
            return np.zeros((2, 2, 3), dtype=np.uint8)

    with mpool.Pool() as pool:
        pool.register("paint", mpool.PyModel("text_to_image", lambda d: StashingPainter(), memory_mb=1))
        for i in range(30):
            prompt = "hammer" if i % 3 == 0 else "fox"
            image = pool.generate_image("paint", prompt, width=2, height=2, steps=2).result()
            assert image.size == (2, 2)
            for report in [s for s in STASHED if callable(s)]:
                try:
                    report(2, 2)
                    raise SystemExit("a finished request's callback did not raise")
                except mpool.Cancelled as e:
                    assert "belongs to a finished request" in str(e), str(e)
        for t in [s for s in STASHED if isinstance(s, threading.Thread)]:
            t.join(30)
            assert not t.is_alive()
        assert len(HAMMER_ERRORS) == 10 and all(isinstance(e, mpool.Cancelled) for e in HAMMER_ERRORS)
    print("ok")
    """
)


def test_a_progress_callback_kept_past_its_request_raises_cancelled_and_never_touches_freed_memory():
    # In a subprocess: before the fix this read a dead stack frame, which may crash the interpreter.
    result = subprocess.run([sys.executable, "-c", STASH_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
