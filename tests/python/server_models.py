"""Python-defined models the server tests serve, importable by a server subprocess
(``python = "server_models:NAME"`` in its config, with this folder on PYTHONPATH).

Each is deterministic; the gated ones let a test decide when work proceeds and
see, through events, when the pool cancelled it.
"""

from __future__ import annotations

import threading
import time
import zlib

import numpy as np
from PIL import Image

import mpool


class HashEmbedder:
    """Unit vectors from a CRC of each text (and the task)."""

    def embed(self, texts, task=None):
        rows = []
        for t in texts:
            rng = np.random.default_rng(zlib.crc32(f"{task}|{t}".encode()))
            v = rng.standard_normal(16).astype(np.float32)
            rows.append(v / np.linalg.norm(v))
        return np.stack(rows)


class WordStreamer:
    """Streams the prompt's words back, one chunk each."""

    def generate(self, prompt, params):
        for word in prompt.split():
            yield word + " "


class OverlapScorer:
    """Relevance = shared words / document words."""

    def score(self, pairs):
        out = []
        for q, d in pairs:
            qs, ds = set(q.lower().split()), d.lower().split()
            out.append([sum(w in qs for w in ds) / max(len(ds), 1)])
        return np.asarray(out, dtype=np.float32)


class Painter:
    """An image whose color comes from the prompt's CRC and the seed; img2img averages with the init image."""

    def generate_image(self, prompt, config, progress):
        h, w = config["height"], config["width"]
        seed = config.get("seed") or 0
        rgb = np.frombuffer(zlib.crc32(f"{prompt}|{seed}".encode()).to_bytes(4, "little")[:3], dtype=np.uint8)
        img = np.broadcast_to(rgb, (h, w, 3)).astype(np.float32)
        for step in range(config["steps"]):
            progress(step + 1, config["steps"])
        if config["init_image"] is not None:
            img = (img + config["init_image"].astype(np.float32)) / 2
        return Image.fromarray(img.astype(np.uint8))


class Endless:
    """Streams "tick " until the pool stops pulling; `closed` is set when it does."""

    started = threading.Event()
    closed = threading.Event()

    def generate(self, prompt, params):
        Endless.started.set()
        try:
            while True:
                time.sleep(0.005)
                yield "tick "
        finally:
            Endless.closed.set()


class Slow:
    """Streams `count` words 10 ms apart (a stream that outlives a SIGTERM)."""

    def generate(self, prompt, params):
        for i in range(int(prompt)):
            time.sleep(0.01)
            yield f"w{i} "


def embedder() -> mpool.PyModel:
    return mpool.PyModel("text_embedding", lambda d: HashEmbedder(), memory_mb=1)


def streamer() -> mpool.PyModel:
    return mpool.PyModel("text_to_text", lambda d: WordStreamer(), memory_mb=1)


def scorer() -> mpool.PyModel:
    return mpool.PyModel("rerank", lambda d: OverlapScorer(), memory_mb=1)


def painter() -> mpool.PyModel:
    return mpool.PyModel("text_to_image", lambda d: Painter(), memory_mb=1, defaults={"steps": 2, "width": 8, "height": 8})


def endless() -> mpool.PyModel:
    return mpool.PyModel("text_to_text", lambda d: Endless(), memory_mb=1, max_replicas=1)


def slow() -> mpool.PyModel:
    return mpool.PyModel("text_to_text", lambda d: Slow(), memory_mb=1)


class GatedLoad:
    """The loader of `gated_load` waits for `release`: a preload that a test finishes."""

    release = threading.Event()


def gated_load() -> mpool.PyModel:
    def load(device):
        GatedLoad.release.wait(120)
        return HashEmbedder()

    return mpool.PyModel("text_embedding", load, memory_mb=1)


class FileGate:
    """Across processes: `generate("DIR")` creates DIR/started-<pid>-<n>, then waits
    (polling) until DIR/release exists. A Ray replica is another process, so a
    test gates it through files."""

    count = 0

    def generate(self, prompt, params):
        import os

        FileGate.count += 1
        open(os.path.join(prompt, f"started-{os.getpid()}-{FileGate.count}"), "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(prompt, "release")) and time.monotonic() < deadline:
            time.sleep(0.01)
        yield "released"


def file_gate() -> mpool.PyModel:
    return mpool.PyModel("text_to_text", lambda d: FileGate(), memory_mb=1)


class FileEndless:
    """Across processes: streams "tick " until the pool stops pulling, then creates DIR/closed."""

    def generate(self, prompt, params):
        import os

        try:
            while True:
                time.sleep(0.005)
                yield "tick "
        finally:
            open(os.path.join(prompt, "closed"), "w").close()


def file_endless() -> mpool.PyModel:
    return mpool.PyModel("text_to_text", lambda d: FileEndless(), memory_mb=1)


class NotANumber:
    """A text_embedding model whose second dimension is NaN for texts that say 'nan'."""

    dimension = 2

    def embed(self, texts, task=None):
        return np.array([[1.0, np.nan if "nan" in t else 0.0] for t in texts], dtype=np.float32)


def not_a_number() -> mpool.PyModel:
    return mpool.PyModel("text_embedding", lambda device: NotANumber(), memory_mb=1)
