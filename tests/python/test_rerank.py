"""The rerank capability: native BERT / XLM-R cross-encoders against
sentence-transformers' CrossEncoder (the oracle), the Python API (score, rerank,
their asyncio twins, the CLI), batching, and bad inputs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import numpy as np
import pytest

import mpool
from corpus import CORPUS
from test_native_bert import _bpe_tokenizer, _wordpiece_tokenizer

QUERIES = ["what do cats eat", "how fast can a train go", "the weather today"]


def _pairs() -> list[tuple[str, str]]:
    long_doc = " ".join(CORPUS)  # far beyond 126 tokens: cut longest-first
    docs = CORPUS[:6] + [long_doc]
    return [(q, d) for q in QUERIES for d in docs]


def build_classifier(tmp_path, model_type: str, num_labels: int = 1, layers: int = 2, hidden: int = 32,
                     bert_tokenizer: bool = True):
    """A random *ForSequenceClassification model + tokenizer saved as transformers does.
    A BERT one is saved with a BertTokenizerFast (whose pairs carry token type ids
    to the model, as a real BERT cross-encoder's do) unless bert_tokenizer is off:
    then the generic fast tokenizer, which sends none."""
    import torch
    import transformers

    torch.manual_seed(7 + num_labels + layers)
    tok, specials = _wordpiece_tokenizer() if model_type == "bert" else _bpe_tokenizer()
    common = dict(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=hidden * 3, max_position_embeddings=130, num_labels=num_labels,
    )
    if model_type == "bert":
        model = transformers.BertForSequenceClassification(transformers.BertConfig(type_vocab_size=2, **common))
    else:
        model = transformers.XLMRobertaForSequenceClassification(
            transformers.XLMRobertaConfig(pad_token_id=1, type_vocab_size=1, **common)
        )
    model.eval()
    with torch.no_grad():  # logits far from 0, so the order is decided by the model, not by rounding
        for p in model.parameters():
            p.mul_(3.0)
    d = tmp_path / f"{model_type}-ce-{num_labels}"
    model.save_pretrained(d, safe_serialization=True)
    cls = transformers.BertTokenizerFast if model_type == "bert" and bert_tokenizer else transformers.PreTrainedTokenizerFast
    fast = cls(tokenizer_object=tok, model_max_length=126, **specials)
    fast.save_pretrained(d)
    return d


def cross_encoder(path, **kwargs):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(path), device="cpu", **kwargs)


@pytest.mark.parametrize("model_type", ["bert", "bert-generic-tokenizer", "xlm-roberta"])
def test_native_reranker_scores_and_order_match_sentence_transformers_cross_encoder(tmp_path, pool, model_type):
    d = build_classifier(tmp_path, model_type.split("-generic")[0], bert_tokenizer="generic" not in model_type)
    pairs = _pairs()
    expected = cross_encoder(d).predict(pairs, batch_size=4)
    pool.register("ce", str(d))
    assert pool.stats()["models"]["ce"]["capabilities"] == ["rerank"]
    assert mpool.inspect(str(d))["capabilities"] == ["rerank"]  # what this model gets, not all the family has
    got = pool.score("ce", pairs)
    assert got.shape == (len(pairs),) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # rerank: one query against its documents, best first, the same order as the oracle's
    docs = [d_ for _, d_ in pairs[: len(pairs) // len(QUERIES)]]
    ranked = pool.rerank("ce", QUERIES[0], docs)
    oracle = expected[: len(docs)]
    assert [r.index for r in ranked] == list(np.argsort(-oracle, kind="stable"))
    np.testing.assert_allclose([r.score for r in ranked], np.sort(oracle)[::-1], atol=1e-5)
    top = pool.rerank("ce", QUERIES[0], docs, top_n=2, return_documents=True)
    assert [(t.index, t.document) for t in top] == [(r.index, docs[r.index]) for r in ranked[:2]]
    assert ranked[0] == (ranked[0].index, ranked[0].score)  # plain (index, score) tuples


def test_a_tokenizer_that_truncates_on_the_left_cuts_pairs_there_as_cross_encoder_does(tmp_path, pool):
    import transformers

    d = build_classifier(tmp_path, "bert")
    config = json.loads((d / "tokenizer_config.json").read_text())
    config["truncation_side"] = "left"
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    # A long document, cut; without the corpus's special-token strings, since its
    # tail now stays ("[MASK]" is no id of these tiny models).
    long_doc = " ".join(t for t in CORPUS if "[" not in t and "<" not in t)
    pairs = [(q, doc) for q in QUERIES for doc in CORPUS[:4] + [long_doc]]
    oracle = cross_encoder(d)
    assert oracle.tokenizer.truncation_side == "left"
    expected = oracle.predict(pairs, batch_size=4)
    right = transformers.AutoTokenizer.from_pretrained(d, truncation_side="right")
    left = transformers.AutoTokenizer.from_pretrained(d)
    cut = [tok([QUERIES[0]], [long_doc], truncation="longest_first")["input_ids"] for tok in (right, left)]
    assert cut[0] != cut[1]  # the side matters for this pair
    pool.register("ce", str(d))
    np.testing.assert_allclose(pool.score("ce", pairs), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_modernbert_reranker_matches_sentence_transformers_cross_encoder(tmp_path, pool, pooling):
    from test_native_modernbert import build_tiny as build_modernbert

    d, _, _ = build_modernbert(tmp_path, head="classifier", num_labels=1, classifier_pooling=pooling, bias=True,
                               local_attention=8)
    pairs = _pairs()  # the long document runs past several local windows and is cut at 128 tokens
    expected = cross_encoder(d).predict(pairs, batch_size=5)
    pool.register("ce", str(d))
    np.testing.assert_allclose(pool.score("ce", pairs), expected, rtol=0, atol=1e-5)
    docs = [x for _, x in pairs[:7]]
    assert [r.index for r in pool.rerank("ce", QUERIES[0], docs)] == list(np.argsort(-expected[:7], kind="stable"))


def test_raw_scores_are_the_logits_and_a_saved_activation_is_followed(tmp_path, pool):
    import torch

    d = build_classifier(tmp_path, "bert")
    pairs = _pairs()[:5]
    logits = cross_encoder(d).predict(pairs, activation_fn=torch.nn.Identity())
    pool.register("ce", str(d))
    np.testing.assert_allclose(pool.score("ce", pairs, raw=True), logits, atol=1e-5)
    # CrossEncoder.save() records its activation in config_sentence_transformers.json
    saved = tmp_path / "saved-tanh"
    cross_encoder(d, activation_fn=torch.nn.Tanh()).save(str(saved))
    assert "Tanh" in json.loads((saved / "config_sentence_transformers.json").read_text())["activation_fn"]
    expected = cross_encoder(saved).predict(pairs)
    np.testing.assert_allclose(expected, np.tanh(logits), atol=1e-5)
    pool.register("tanh", str(saved))
    np.testing.assert_allclose(pool.score("tanh", pairs), expected, atol=1e-5)


def test_a_cross_encoders_default_prompt_goes_before_each_query_as_predict_puts_it(tmp_path, pool):
    d = build_classifier(tmp_path, "bert")
    saved = tmp_path / "prompted"
    prompts = {"rr": "Judge relevance: ", "other": "unused: "}
    cross_encoder(d, prompts=prompts, default_prompt_name="rr").save(str(saved))
    written = json.loads((saved / "config_sentence_transformers.json").read_text())
    assert written["default_prompt_name"] == "rr"
    pairs = _pairs()[:6]
    expected = cross_encoder(saved).predict(pairs)
    assert np.abs(expected - cross_encoder(d).predict(pairs)).max() > 1e-4  # the prompt changes the scores
    pool.register("ce", str(saved))
    np.testing.assert_allclose(pool.score("ce", pairs), expected, atol=1e-5)
    written["default_prompt_name"] = "missing"
    (saved / "config_sentence_transformers.json").write_text(json.dumps(written))
    with pytest.raises(mpool.InvalidInput, match=r"config_sentence_transformers.json: \"default_prompt_name\" .*missing.*\"prompts\""):
        pool.register("bad", str(saved))


def test_an_activation_mpool_cannot_apply_is_refused_naming_the_file(tmp_path, pool):
    d = build_classifier(tmp_path, "bert")
    (d / "config_sentence_transformers.json").write_text(json.dumps({"activation_fn": "my.module.Swish"}))
    with pytest.raises(mpool.InvalidInput, match=r"config_sentence_transformers.json.*my\.module\.Swish.*Sigmoid"):
        pool.register("ce", str(d))


def test_a_bert_classifier_whose_tokenizer_types_pairs_beyond_its_type_vocab_is_refused_at_registration(tmp_path, pool):
    # BertTokenizerFast gives the document type id 1; type_vocab_size 1 has no row for it
    # (transformers fails on it too, with an index error at the first pair).
    d = build_classifier(tmp_path, "bert")
    config = json.loads((d / "config.json").read_text())
    config["type_vocab_size"] = 1
    (d / "config.json").write_text(json.dumps(config))
    # The table itself must match the config's size, as a real checkpoint's would.
    from safetensors.torch import load_file, save_file

    weights = load_file(d / "model.safetensors")
    name = next(k for k in weights if k.endswith("token_type_embeddings.weight"))
    weights[name] = weights[name][:1].contiguous()
    save_file(weights, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(mpool.InvalidInput, match=r"\"type_vocab_size\" is 1, but the tokenizer .* type id 1"):
        pool.register("ce", str(d))


def test_multi_label_classifier_scores_every_label_and_cannot_rerank(tmp_path, pool):
    d = build_classifier(tmp_path, "xlm-roberta", num_labels=3)
    pairs = _pairs()[:4]
    expected = cross_encoder(d).predict(pairs)  # identity for several labels
    pool.register("nli", str(d))
    got = pool.score("nli", pairs)
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    with pytest.raises(mpool.InvalidInput, match="one score per pair; this one has 3 labels"):
        pool.rerank("nli", "q", ["a", "b"])


def test_truncate_false_refuses_a_long_pair_alone_while_its_batch_mates_succeed(tmp_path, pool):
    d = build_classifier(tmp_path, "bert")
    pool.register("ce", str(d))
    short, long_pair = _pairs()[0], _pairs()[6]
    expected = pool.score("ce", [short])[0]

    async def run():
        calls = [pool.ascore("ce", [short], truncate=False) for _ in range(6)]
        calls.insert(3, pool.ascore("ce", [long_pair], truncate=False))
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(run())
    assert isinstance(results[3], mpool.InvalidInput) and "pass truncate=True" in str(results[3])
    for i, r in enumerate(results):
        if i != 3:
            np.testing.assert_allclose(r, [expected], atol=1e-6)


def test_bad_rerank_inputs_are_typed_errors_and_the_pool_stays_healthy(tmp_path, pool):
    d = build_classifier(tmp_path, "bert")
    pool.register("ce", str(d))
    with pytest.raises(mpool.InvalidInput, match="documents is empty"):
        pool.rerank("ce", "q", [])
    with pytest.raises(mpool.InvalidInput, match=r"documents\[1\] must be a str"):
        pool.rerank("ce", "q", ["a", 3])
    with pytest.raises(mpool.InvalidInput, match="documents must be a sequence of str"):
        pool.rerank("ce", "q", "just one string")
    for bad in (0, -2, 1.5, True):
        with pytest.raises(mpool.InvalidInput, match="top_n must be an int"):
            pool.rerank("ce", "q", ["a"], top_n=bad)
    with pytest.raises(mpool.InvalidInput, match="query must be a non-empty str"):
        pool.rerank("ce", "", ["a"])
    with pytest.raises(mpool.InvalidInput, match=r"pairs\[0\] must be a \(query, document\) pair"):
        pool.score("ce", [("only one",)])
    with pytest.raises(mpool.InvalidInput, match="pairs is empty"):
        pool.score("ce", [])
    minilm = mpool.default_embedding_model_path()
    pool.register("emb", minilm)
    with pytest.raises(mpool.InvalidInput, match="'emb' does not serve rerank .*text_embedding"):
        pool.rerank("emb", "q", ["a"])
    with pytest.raises(mpool.InvalidInput, match="'ce' does not serve text_embedding .*rerank"):
        pool.embed("ce", ["a"])
    assert len(pool.rerank("ce", "q", ["a", "b"], top_n=5)) == 2  # healthy, top_n beyond the count is fine


class KeywordScorer:
    """A Python-defined reranker and embedder: records what each call received."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self.dimension = 2

    def score(self, pairs):
        with self.lock:
            self.calls.append("score")
        assert all(isinstance(q, str) and isinstance(d, str) for q, d in pairs)
        return np.array([float(len(set(q.split()) & set(d.split()))) for q, d in pairs], np.float32)

    def embed(self, texts):
        with self.lock:
            self.calls.append("embed")
        assert all(isinstance(t, str) for t in texts)
        return np.array([[len(t), 1.0] for t in texts], np.float32)


def test_python_model_reranks_and_scoring_never_shares_a_batch_with_embedding(pool):
    model = KeywordScorer()
    pool.register("kw", mpool.PyModel(["rerank", "text_embedding"], lambda device: model, memory_mb=1))
    assert pool.rerank("kw", "red apple pie", ["blue sky", "apple pie", "red apple pie"]) == [
        (2, 3.0), (1, 2.0), (0, 0.0)
    ]

    async def run():
        jobs = []
        for i in range(40):
            if i % 2:
                jobs.append(pool.ascore("kw", [(f"w{i} x", f"w{i} y")]))
            else:
                jobs.append(pool.aembed("kw", ["t" * i]))
        return await asyncio.gather(*jobs)

    results = asyncio.run(run())
    for i, r in enumerate(results):
        if i % 2:
            np.testing.assert_array_equal(r, [1.0])
        else:
            np.testing.assert_array_equal(r, [[i, 1.0]])
    assert set(model.calls) == {"score", "embed"}


def test_arerank_matches_rerank(tmp_path, pool):
    d = build_classifier(tmp_path, "bert")
    pool.register("ce", str(d))
    docs = CORPUS[:5]
    assert asyncio.run(pool.arerank("ce", QUERIES[1], docs, top_n=3)) == pool.rerank("ce", QUERIES[1], docs, top_n=3)


def test_cli_rerank_prints_documents_best_first(tmp_path):
    d = build_classifier(tmp_path, "bert")
    docs = CORPUS[:3]
    out = subprocess.run(
        [sys.executable, "-m", "mpool", "rerank", "--model", str(d), "--json", QUERIES[0], *docs],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    ranked = json.loads(out.stdout)["results"]
    expected = cross_encoder(d).predict([(QUERIES[0], x) for x in docs])
    assert [r["index"] for r in ranked] == list(np.argsort(-expected, kind="stable"))
    assert [r["document"] for r in ranked] == [docs[r["index"]] for r in ranked]
