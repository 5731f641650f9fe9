"""Matryoshka dimensions: embed(..., dimensions=k) against sentence-transformers'
truncate_dim (which leaves rows un-normalized; mpool re-normalizes when the model
normalizes), declared widths, and bad values."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

import mpool
from corpus import CORPUS
from test_native_bert import build_tiny


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("normalize", [True, False])
def test_dimensions_match_sentence_transformers_truncate_dim_then_renormalized(tmp_path, pool, normalize):
    from sentence_transformers import SentenceTransformer

    d, _, _ = build_tiny(tmp_path, "bert", pooling="mean_tokens", normalize=normalize)
    texts = CORPUS[:8]
    st = SentenceTransformer(str(d), device="cpu", truncate_dim=12).encode(texts)
    pool.register("m", str(d))
    got = pool.embed("m", texts, dimensions=12)
    assert got.shape == (8, 12)
    # a normalizing model's rows are unit length again; a raw one's are the plain cut
    np.testing.assert_allclose(got, _unit(st) if normalize else st, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0 if normalize else np.linalg.norm(st, axis=1), atol=1e-5)
    # the request's normalize decides over the model's default
    np.testing.assert_allclose(pool.embed("m", texts, dimensions=12, normalize=True), _unit(st), atol=2e-6)
    full = pool.embed("m", texts)
    np.testing.assert_allclose(pool.embed("m", texts, dimensions=32), full, atol=1e-6)


def test_real_minilm_truncated_rows_are_the_renormalized_prefix(pool):
    pool.register("minilm", mpool.default_embedding_model_path())
    full = pool.embed("minilm", CORPUS[:10])
    cut = pool.embed("minilm", CORPUS[:10], dimensions=128)
    np.testing.assert_allclose(cut, _unit(full[:, :128]), atol=1e-5)


def test_requests_of_different_widths_batched_together_each_get_their_own(tmp_path, pool):
    d, _, _ = build_tiny(tmp_path, "bert", pooling="mean_tokens", normalize=True)
    pool.register("m", str(d))
    full = pool.embed("m", CORPUS[:4])

    async def run():
        return await asyncio.gather(*[pool.aembed("m", CORPUS[:4], dimensions=k) for k in (4, 8, 16, None, 4, 8)])

    for k, got in zip((4, 8, 16, None, 4, 8), asyncio.run(run())):
        np.testing.assert_allclose(got, full if k is None else _unit(full[:, :k]), atol=1e-5)


def test_a_model_that_declares_its_widths_takes_only_those(tmp_path, pool):
    d, _, _ = build_tiny(tmp_path, "bert", pooling="mean_tokens", normalize=True)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "matryoshka_dimensions": [8, 16, 32]}))
    pool.register("m", str(d))
    assert pool.embed("m", ["a b"], dimensions=16).shape == (1, 16)
    with pytest.raises(mpool.InvalidInput, match=r"dimensions=12 is not a width this model was trained for \(8, 16, 32\)"):
        pool.embed("m", ["a b"], dimensions=12)
    (d / "config.json").write_text(json.dumps({**config, "matryoshka_dimensions": [8, 64]}))
    with pytest.raises(mpool.InvalidInput, match=r"matryoshka_dimensions.*lists 64, not a width in \[1, 32\]"):
        pool.register("bad", str(d))


def test_bad_dimensions_are_typed_errors_and_the_pool_stays_healthy(tmp_path, pool):
    d, _, _ = build_tiny(tmp_path, "bert", pooling="mean_tokens", normalize=True)
    pool.register("m", str(d))
    with pytest.raises(mpool.InvalidInput, match="dimensions=33 is more than the model's 32"):
        pool.embed("m", ["a b"], dimensions=33)
    for bad in (0, -1, 2.0, "8", True):
        with pytest.raises(mpool.InvalidInput, match="dimensions must be an int"):
            pool.embed("m", ["a b"], dimensions=bad)
    assert pool.embed("m", ["a b"], dimensions=8).shape == (1, 8)
