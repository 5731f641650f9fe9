"""mpool.similarity: cosine scores and top-k matches, against sentence-transformers' util."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import util

import mpool


def test_scores_match_sentence_transformers_cos_sim() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 16)), rng.normal(size=(7, 16))
    ours = mpool.similarity(a, b)
    ref = util.cos_sim(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)).numpy()
    assert ours.shape == (5, 7) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_torch_tensors_that_need_grad_and_huge_ints_are_taken_or_refused_as_arrays() -> None:
    a = torch.randn(3, 8, requires_grad=True)
    np.testing.assert_allclose(mpool.similarity(a), util.cos_sim(a, a).detach().numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(mpool.InvalidInput, match="a must be"):
        mpool.similarity([[10**400, 1]])


def test_top_k_matches_sentence_transformers_semantic_search() -> None:
    rng = np.random.default_rng(1)
    queries, corpus = rng.normal(size=(4, 8)), rng.normal(size=(30, 8))
    top = mpool.similarity(queries, corpus, top_k=5)
    hits = util.semantic_search(
        torch.tensor(queries, dtype=torch.float32), torch.tensor(corpus, dtype=torch.float32), top_k=5
    )
    for q, found in enumerate(hits):
        assert top.indices[q].tolist() == [h["corpus_id"] for h in found]
        np.testing.assert_allclose(top.scores[q], [h["score"] for h in found], rtol=1e-5)


def test_a_single_vector_a_self_comparison_and_k_past_the_corpus() -> None:
    rows = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    np.testing.assert_allclose(mpool.similarity(rows)[0], [1.0, 0.0, np.sqrt(0.5)], rtol=1e-6)
    top = mpool.similarity([0.0, 1.0], rows, top_k=10)  # k beyond the corpus: all rows
    assert top.indices.tolist() == [[1, 2, 0]]
    np.testing.assert_allclose(top.scores, [[1.0, np.sqrt(0.5), 0.0]], atol=1e-6)


def test_ties_rank_the_lower_index_first_and_zero_vectors_score_zero() -> None:
    corpus = np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    top = mpool.similarity([[5.0, 0.0]], corpus, top_k=4)
    assert top.indices.tolist() == [[0, 2, 3, 1]]
    assert top.scores[0, 3] == 0.0


def test_works_on_pool_embeddings() -> None:
    with mpool.Pool() as pool:
        pool.register("minilm", mpool.default_embedding_model_path())
        docs = ["The cat sat on the mat.", "Stock markets fell sharply today.", "A kitten is sleeping on a rug."]
        top = mpool.similarity(pool.embed("minilm", "a cat resting on a carpet"), pool.embed("minilm", docs), top_k=2)
    assert set(top.indices[0].tolist()) == {0, 2}


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (([[1.0, 2.0]], [[1.0, 2.0, 3.0]]), {}, "a has 2-d embeddings but b has 3-d ones"),
        (([[1.0, float("nan")]],), {}, "a\\[0\\] has a non-finite value"),
        ((np.zeros((0, 4)),), {}, "non-empty \\(n, d\\) array, got shape \\(0, 4\\)"),
        ((["x", "y"],), {}, "numeric array"),
        (([[1.0]], [[1.0]]), {"top_k": 0}, "top_k"),
        (([[1.0]], [[1.0]]), {"top_k": 1.5}, "top_k"),
    ],
)
def test_bad_inputs_are_invalid_input_naming_the_argument(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(mpool.InvalidInput, match=message):
        mpool.similarity(*args, **kwargs)
