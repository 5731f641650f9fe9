"""A sentence-transformers pipeline as sentence-transformers (the oracle) runs it.

The models are saved by the installed sentence-transformers itself (its current
file formats: `pooling_mode` names, Dense modules with their activation), over a
tiny random BERT built by test_native_bert.build_tiny. A module mpool does not
run is refused at registration, never skipped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import mpool
from test_native_bert import build_tiny

TEXTS = [
    "magnets attract iron",
    "a somewhat longer sentence about the weather in the mountains this week",
    "short",
    "Tokyo is the capital of Japan, and its largest city by far.",
]
HIDDEN = 32


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    """The Transformer module of a tiny random BERT, mean-pooled sentence-transformers layout."""
    from sentence_transformers import SentenceTransformer

    d, _, _ = build_tiny(tmp_path_factory.mktemp("base"), "bert", pooling="mean_tokens")
    return SentenceTransformer(str(d), device="cpu")[0]


def _save(tmp_path: Path, transformer, pooling, dense=(), normalize=True, include_prompt=True, prompts=None) -> tuple[Path, object]:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling

    modules = [transformer, Pooling(HIDDEN, pooling_mode=pooling, include_prompt=include_prompt), *dense]
    if normalize:
        modules.append(Normalize())
    st = SentenceTransformer(modules=modules, device="cpu", prompts=prompts)
    out = tmp_path / "model"
    st.save(str(out))
    return out, st


def _ours(path: Path, texts=TEXTS, **kwargs) -> np.ndarray:
    with mpool.Pool() as pool:
        pool.register("m", path, **kwargs)
        return pool.embed("m", texts)


def _dense(kind: str):
    import torch
    from sentence_transformers.models import Dense

    torch.manual_seed(len(kind))
    return {
        "none": [],
        "tanh": [Dense(HIDDEN, 16)],  # sentence-transformers' default: bias and Tanh (LaBSE, distiluse)
        "identity-no-bias": [Dense(HIDDEN, 24, bias=False, activation_function=torch.nn.Identity())],  # sentence-t5
        "relu-then-identity": [
            Dense(HIDDEN, 24, activation_function=torch.nn.ReLU()),
            Dense(24, 12, bias=False, activation_function=torch.nn.Identity()),
        ],
        "gelu-residual": [Dense(HIDDEN, HIDDEN, activation_function=torch.nn.GELU(), use_residual=True)],
        "silu-projected-residual": [Dense(HIDDEN, 20, activation_function=torch.nn.SiLU(), use_residual=True)],
        "sigmoid": [Dense(HIDDEN, 8, activation_function=torch.nn.Sigmoid())],
    }[kind]


@pytest.mark.parametrize(
    ("pooling", "dense", "normalize"),
    [
        ("mean", "none", True),
        ("cls", "tanh", True),
        ("max", "identity-no-bias", True),
        ("mean_sqrt_len_tokens", "relu-then-identity", False),
        ("weightedmean", "none", False),
        ("weightedmean", "gelu-residual", True),
        ("lasttoken", "silu-projected-residual", True),
        (("cls", "mean"), "none", True),
        ("mean", "sigmoid", False),
    ],
)
def test_a_model_saved_by_sentence_transformers_embeds_as_it_does(tmp_path, transformer, pooling, dense, normalize):
    layers = _dense(dense)
    if layers and isinstance(pooling, tuple):
        pytest.skip("the Dense stacks take one pooled width")
    path, st = _save(tmp_path, transformer, pooling, layers, normalize)
    ref = st.encode(TEXTS, convert_to_numpy=True)
    ours = _ours(path)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-6)


def test_a_dense_model_in_int8_keeps_its_dense_layers_and_their_width(tmp_path, transformer):
    path, st = _save(tmp_path, transformer, "mean", _dense("tanh"))
    ref = st.encode(TEXTS, convert_to_numpy=True)
    ours = _ours(path, dtype="int8")
    assert ours.shape == ref.shape == (len(TEXTS), 16)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99


def test_the_memory_estimate_counts_the_dense_weights(tmp_path, transformer):
    import torch
    from sentence_transformers.models import Dense

    torch.manual_seed(0)
    wide = [Dense(HIDDEN, 4096), Dense(4096, 64, bias=False, activation_function=torch.nn.Identity())]
    plain, _ = _save(tmp_path / "plain", transformer, "mean")
    dense, _ = _save(tmp_path / "dense", transformer, "mean", wide)
    with mpool.Pool() as pool:
        a = pool.register("plain", plain)
        b = pool.register("dense", dense)
    dense_mb = 4 * (HIDDEN * 4096 + 4096 + 4096 * 64) / 2**20
    assert b["weight_mb"] - a["weight_mb"] == pytest.approx(dense_mb, rel=1e-9)
    assert b["memory_mb"] - a["memory_mb"] == pytest.approx(dense_mb, rel=1e-9)


@pytest.mark.parametrize("pooling", ["cls", "lasttoken", "weightedmean", "mean"])
def test_prompts_left_out_of_pooling_skip_their_tokens_as_sentence_transformers_does(tmp_path, transformer, pooling):
    prompts = {"query": "query for the search: ", "document": ""}
    path, st = _save(tmp_path, transformer, pooling, include_prompt=False, prompts=prompts)
    with mpool.Pool() as pool:
        pool.register("m", path)
        for task in prompts:
            np.testing.assert_allclose(
                pool.embed("m", TEXTS, task=task), st.encode(TEXTS, prompt_name=task), rtol=1e-4, atol=2e-6
            )


@pytest.mark.parametrize("pooling", ["mean", "max", "cls", "lasttoken"])
def test_a_prompt_longer_than_max_seq_length_is_measured_truncated_as_sentence_transformers_does(
    tmp_path, transformer, pooling
):
    # The prompt alone fills max_seq_length: sentence-transformers measures it
    # truncated like a text, so the closing [SEP] is what gets pooled. mpool
    # masked every position (zero rows; -1e9 with max).
    from sentence_transformers import SentenceTransformer

    prompts = {"long": "represent this sentence for searching relevant passages about many things: "}
    path, _ = _save(tmp_path, transformer, pooling, normalize=False, include_prompt=False, prompts=prompts)
    config = json.loads((path / "sentence_bert_config.json").read_text())
    config["max_seq_length"] = 10
    (path / "sentence_bert_config.json").write_text(json.dumps(config))
    ref = SentenceTransformer(str(path), device="cpu").encode(TEXTS, prompt_name="long")
    with mpool.Pool() as pool:
        pool.register("m", path)
        np.testing.assert_allclose(pool.embed("m", TEXTS, task="long"), ref, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_a_prompt_without_a_closing_special_token_is_left_out_whole(tmp_path, transformer, pooling):
    # A tokenizer that adds no special tokens (a decoder's, say): all of the prompt's tokens are prompt.
    from sentence_transformers import SentenceTransformer

    path, _ = _save(tmp_path, transformer, pooling, include_prompt=False, prompts={"query": "query for the search: "})
    doc = json.loads((path / "tokenizer.json").read_text())
    doc["post_processor"] = None
    (path / "tokenizer.json").write_text(json.dumps(doc))
    st = SentenceTransformer(str(path), device="cpu")
    with mpool.Pool() as pool:
        pool.register("m", path)
        np.testing.assert_allclose(
            pool.embed("m", TEXTS, task="query"), st.encode(TEXTS, prompt_name="query"), rtol=1e-4, atol=2e-6
        )


def test_a_legacy_pooling_config_that_sets_no_mode_pools_by_the_mean_as_sentence_transformers_does(tmp_path, transformer):
    from sentence_transformers import SentenceTransformer

    path, _ = _save(tmp_path, transformer, "cls", normalize=False)
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": False, "pooling_mode_max_tokens": False})
    )
    ref = SentenceTransformer(str(path), device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(_ours(path), ref, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize(
    "flags",
    [("mean", "max"), ("cls", "mean", "max"), ("max", "mean_sqrt_len", "lasttoken"), ("cls", "weightedmean", "max")],
    ids="+".join,
)
def test_a_legacy_pooling_config_of_several_modes_concatenates_them_in_sentence_transformers_order(
    tmp_path, transformer, flags
):
    # sentence-transformers joins cls, max, mean, mean_sqrt_len, weightedmean,
    # lasttoken in that order whatever the file's key order; max came after mean here.
    from sentence_transformers import SentenceTransformer

    keys = {
        "cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
        "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens", "weightedmean": "pooling_mode_weightedmean_tokens",
        "lasttoken": "pooling_mode_lasttoken",
    }
    path, _ = _save(tmp_path, transformer, "cls", normalize=False)
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": HIDDEN, **{keys[f]: True for f in flags}})
    )
    ref = SentenceTransformer(str(path), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert ref.shape[1] == HIDDEN * len(flags)
    np.testing.assert_allclose(_ours(path), ref, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("limit", [0, -5])
def test_a_max_seq_length_below_one_is_invalid_input_naming_the_key(tmp_path, transformer, limit):
    path, _ = _save(tmp_path, transformer, "mean")
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": limit}))
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match=rf'sentence_bert_config.json: "max_seq_length" must be at least 1.*{limit}'):
            pool.register("m", path)


def test_max_seq_length_of_sentence_bert_config_overrides_the_tokenizers_as_in_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    d, _, _ = build_tiny(tmp_path, "bert", pooling="mean_tokens")  # the tokenizer says 126
    long_text = " ".join(["the quick brown fox jumps over the lazy dog"] * 12)
    for limit in (20, 100):
        (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": limit, "do_lower_case": False}))
        tok_config = json.loads((d / "tokenizer_config.json").read_text())
        tok_config["model_max_length"] = 60
        (d / "tokenizer_config.json").write_text(json.dumps(tok_config))
        st = SentenceTransformer(str(d), device="cpu")
        assert st.max_seq_length == limit
        np.testing.assert_allclose(_ours(d, [long_text, "short"]), st.encode([long_text, "short"]), rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("tokenizer", ["cased-wordpiece", "bpe-without-normalizer", "already-lowercase"])
def test_do_lower_case_lowercases_the_input_as_sentence_transformers_does(tmp_path, tokenizer):
    from sentence_transformers import SentenceTransformer

    model_type = "roberta" if tokenizer == "bpe-without-normalizer" else "bert"
    d, _, _ = build_tiny(tmp_path, model_type, pooling="mean_tokens")
    doc = json.loads((d / "tokenizer.json").read_text())
    if tokenizer == "cased-wordpiece":
        doc["normalizer"]["lowercase"] = False  # a cased BertNormalizer: sentence-transformers adds Lowercase ahead
    elif tokenizer == "already-lowercase":
        doc["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "Lowercase"}]}
    (d / "tokenizer.json").write_text(json.dumps(doc))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": True}))
    texts = ["Magnets ATTRACT Iron", "ÉCOLE Élémentaire in PARIS", "ΣΊΣΥΦΟΣ and İstanbul"]
    st = SentenceTransformer(str(d), device="cpu")
    ref = st.encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(_ours(d, texts), ref, rtol=1e-4, atol=2e-6)
    # and the lowercasing is what makes them equal: the upper-case texts embed like their lower-case forms
    np.testing.assert_allclose(_ours(d, [t.lower() for t in texts[:1]]), ref[:1], rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("prompt", [None, "query for the search: "])
def test_a_tokenizer_that_truncates_on_the_left_keeps_the_end_of_long_texts_as_sentence_transformers_does(tmp_path, prompt):
    from sentence_transformers import SentenceTransformer

    d, _, _ = build_tiny(tmp_path, "bert", pooling="mean_tokens", prompts={"query": prompt} if prompt else None)
    config = json.loads((d / "tokenizer_config.json").read_text())
    config["truncation_side"] = "left"
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    texts = [" ".join(f"word{i} the fox" for i in range(60)), "short", " ".join(["the quick brown fox"] * 20)]
    st = SentenceTransformer(str(d), device="cpu")
    assert st.tokenizer.truncation_side == "left"
    kwargs = {"prompt_name": "query"} if prompt else {}
    with mpool.Pool() as pool:
        pool.register("m", d)
        ours = pool.embed("m", texts, **({"task": "query"} if prompt else {}))
    np.testing.assert_allclose(ours, st.encode(texts, **kwargs), rtol=1e-4, atol=2e-6)


def test_a_truncation_side_that_is_neither_left_nor_right_is_invalid_input_naming_the_file(tmp_path):
    d, _, _ = build_tiny(tmp_path, "bert", pooling="mean_tokens")
    config = json.loads((d / "tokenizer_config.json").read_text())
    config["truncation_side"] = "middle"
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    _healthy_after(d, r"tokenizer_config\.json: \"truncation_side\" must be \"left\" or \"right\", got \"middle\"")


def _healthy_after(path: Path, match: str) -> None:
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match=match):
            pool.register("m", path)
        pool.register("minilm", mpool.default_embedding_model_path())
        assert pool.embed("minilm", ["still healthy"]).shape == (1, 384)


def test_a_module_mpool_does_not_run_is_invalid_input_naming_it_not_skipped(tmp_path, transformer):
    path, _ = _save(tmp_path, transformer, "mean")
    modules = json.loads((path / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "norm", "path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"})
    for i, m in enumerate(modules):
        m["idx"] = i
    (path / "modules.json").write_text(json.dumps(modules))
    _healthy_after(path, r"modules\.json: module \"norm\" is a sentence_transformers\.models\.LayerNorm, which mpool does not run")


def test_modules_out_of_their_order_are_invalid_input(tmp_path, transformer):
    path, _ = _save(tmp_path, transformer, "mean", _dense("tanh"))
    modules = json.loads((path / "modules.json").read_text())
    modules[2]["idx"], modules[3]["idx"] = 3, 2  # Normalize before Dense
    (path / "modules.json").write_text(json.dumps(modules))
    _healthy_after(path, r"modules\.json: module \"2\" \(Dense\) follows a Normalize module")


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("activation_function", "torch.nn.modules.activation.Softplus",
         r"2_Dense/config\.json: \"activation_function\" is \"torch\.nn\.modules\.activation\.Softplus\""),
        ("in_features", HIDDEN + 1, r"2_Dense/config\.json: \"in_features\" is 33, but the embedding it receives is 32 wide"),
        ("module_input_name", "token_embeddings", r"2_Dense/config\.json: this Dense module reads or writes \"token_embeddings\""),
    ],
)
def test_a_dense_config_mpool_cannot_run_is_invalid_input_naming_the_file(tmp_path, transformer, key, value, match):
    path, _ = _save(tmp_path, transformer, "mean", _dense("tanh"))
    config = json.loads((path / "2_Dense" / "config.json").read_text())
    config[key] = value
    (path / "2_Dense" / "config.json").write_text(json.dumps(config))
    _healthy_after(path, match)


def test_dense_weights_missing_misshapen_or_pickled_are_invalid_input_naming_the_file(tmp_path, transformer):
    import torch
    from safetensors.torch import save_file

    path, _ = _save(tmp_path, transformer, "mean", _dense("tanh"))
    weights = path / "2_Dense" / "model.safetensors"
    save_file({"linear.weight": torch.zeros(16, HIDDEN)}, str(weights))  # no bias
    _healthy_after(path, r"linear\.bias")
    save_file({"linear.weight": torch.zeros(15, HIDDEN), "linear.bias": torch.zeros(16)}, str(weights))
    _healthy_after(path, r"linear\.weight")
    weights.unlink()
    torch.save({"linear.weight": torch.zeros(16, HIDDEN)}, str(path / "2_Dense" / "pytorch_model.bin"))
    _healthy_after(path, r"pytorch_model\.bin")
    shutil.rmtree(path / "2_Dense")
    _healthy_after(path, r"2_Dense")


def test_inspect_lists_the_dense_modules(tmp_path, transformer):
    path, _ = _save(tmp_path, transformer, ("cls", "mean"), normalize=False)
    info = mpool.inspect(path)["sentence_transformers"]
    assert info["pooling"]["mode"] == "cls+mean" and info["dense"] == []
    path2, _ = _save(tmp_path / "2", transformer, "mean", _dense("relu-then-identity"))
    dense = mpool.inspect(path2)["sentence_transformers"]["dense"]
    assert [(d["in_features"], d["out_features"], d["bias"], d["activation_function"].rsplit(".", 1)[1]) for d in dense] == [
        (HIDDEN, 24, True, "ReLU"),
        (24, 12, False, "Identity"),
    ]
