"""Image paths that are not small regular files are refused before anything is read."""

from __future__ import annotations

import os

import numpy as np
import pytest

import mpool


class MeanColorEmbedder:
    dimension = 3

    def embed_images(self, images):
        return np.stack([img.reshape(-1, 3).mean(axis=0) for img in images]).astype(np.float32)


@pytest.fixture
def clip(pool):
    pool.register("clip", mpool.PyModel("image_embedding", lambda d: MeanColorEmbedder(), memory_mb=1))
    return pool


def assert_healthy(pool):
    out = pool.embed_images("clip", [np.full((2, 2, 3), 7, np.uint8)])
    np.testing.assert_array_equal(out, [[7, 7, 7]])


def test_dev_zero_is_refused_as_invalid_input_naming_it(clip):
    # Before: read 1 GiB of zeros, then a plain MemoryError.
    with pytest.raises(mpool.InvalidInput, match=r"image #0: /dev/zero: not a regular file \(a character device\)"):
        clip.embed_images("clip", "/dev/zero")
    assert_healthy(clip)


def test_directory_fifo_and_oversized_file_are_refused(clip, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # a blocking open would wait for a writer forever
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate((64 << 20) + 1)  # sparse
    cases = [
        (tmp_path, r"not a regular file \(a directory\)"),
        (fifo, r"not a regular file \(a FIFO\)"),
        (big, r"image file is larger than 67108864 bytes \(64 MiB\)"),
    ]
    for path, match in cases:
        with pytest.raises(mpool.InvalidInput, match=f"image #0: {path}: {match}"):
            clip.embed_images("clip", [str(path)])
    assert_healthy(clip)
