"""The native ModernBERT family against transformers' ModernBertModel and
sentence-transformers (the oracles), on tiny random models built here."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mpool
import mpool.testing
from corpus import CORPUS
from random_weights import randomize

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4
TEXTS = [t for t in CORPUS if t.strip()]


def _bpe_tokenizer():
    """A byte-level BPE with ModernBERT's [CLS] $A [SEP] template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok


def build_tiny(
    tmp_path,
    name="tiny",
    *,
    layers=4,
    heads=4,
    hidden=32,
    local_attention=8,
    every=2,
    bias=False,
    act="gelu",
    head="none",
    pooling=None,
    normalize=False,
    prompts=None,
    seed=0,
    num_labels=3,
    classifier_pooling="cls",
):
    """A random ModernBERT (rope thetas far from transformers' defaults, so that a
    reader that misses them fails) + tokenizer saved in transformers 5's config
    spelling, optionally with a sentence-transformers layout."""
    import transformers

    tok = _bpe_tokenizer()
    config = transformers.ModernBertConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=hidden * 3 // 2, max_position_embeddings=128, local_attention=local_attention,
        global_attn_every_n_layers=every, global_rope_theta=1000.0, local_rope_theta=50.0, hidden_activation=act,
        attention_bias=bias, mlp_bias=bias, norm_bias=bias, pad_token_id=0, cls_token_id=2, sep_token_id=3,
        bos_token_id=2, eos_token_id=3, num_labels=num_labels, classifier_pooling=classifier_pooling,
    )
    cls = {
        "none": transformers.ModernBertModel,
        "classifier": transformers.ModernBertForSequenceClassification,
        "masked_lm": transformers.ModernBertForMaskedLM,
    }[head]
    model = randomize(cls(config), seed)
    d = tmp_path / name
    model.save_pretrained(d, safe_serialization=True)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=128, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )
    fast.save_pretrained(d)
    if pooling is not None:
        (d / "1_Pooling").mkdir()
        flags = {f"pooling_mode_{m}": m == pooling for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "lasttoken")}
        (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": hidden, **flags}))
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        if normalize:
            (d / "2_Normalize").mkdir()
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (d / "modules.json").write_text(json.dumps(modules))
        (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
        (d / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts or {}, "default_prompt_name": None}))
    return d, model, fast


def to_hub_spelling(d, every, global_theta=1000.0, local_theta=50.0):
    """Rewrites config.json as the hub's files spell it (transformers 4.x): the
    layer pattern and thetas as scalars, no layer_types, no rope_parameters."""
    config = json.loads((d / "config.json").read_text())
    config.pop("layer_types", None), config.pop("rope_parameters", None)
    config.update(global_attn_every_n_layers=every, global_rope_theta=global_theta, local_rope_theta=local_theta)
    config["layer_norm_eps"] = 0.5  # hub files carry it; ModernBERT reads norm_eps
    (d / "config.json").write_text(json.dumps(config))


def probe(d, batch, **options):
    return mpool.testing.probe(
        "modernbert.last_hidden_state",
        {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()},
        path=str(d),
        **options,
    )["last_hidden_state"]


def masked_relative_error(ours, ref, mask):
    mask = mask.astype(bool)  # padded positions are not compared
    return np.abs(ours - ref)[mask].max() / np.abs(ref[mask]).max()


def mixed_batch(fast, local_attention):
    """Texts from a few tokens (shorter than one window) to 110 (many windows), padded."""
    texts = [TEXTS[1], TEXTS[0], " ".join(TEXTS[2:6]), TEXTS[3], " ".join(TEXTS[6:14]), "hi"]
    batch = fast(texts, padding=True, truncation=True, max_length=110, return_tensors="pt")
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < local_attention and lengths.max() >= 6 * local_attention
    assert (lengths < lengths.max()).any()  # padding present
    return batch


@pytest.mark.parametrize("local_mode", ["auto", "dense", "blocked"])
@pytest.mark.parametrize(
    ("layers", "heads", "hidden", "local_attention", "every", "bias", "act"),
    [
        (4, 4, 32, 8, 2, False, "gelu"),
        (5, 2, 24, 7, 3, True, "gelu_pytorch_tanh"),  # odd window: radius 3
        (3, 4, 32, 16, 1, False, "silu"),  # every layer global
    ],
)
def test_last_hidden_state_matches_transformers_inside_and_beyond_the_window_with_padding(
    each_float32_gemm, tmp_path, local_mode, layers, heads, hidden, local_attention, every, bias, act
):
    import torch

    d, model, fast = build_tiny(
        tmp_path, layers=layers, heads=heads, hidden=hidden, local_attention=local_attention, every=every, bias=bias, act=act
    )
    batch = mixed_batch(fast, local_attention)
    with torch.no_grad():
        ref = model(**batch).last_hidden_state.numpy()
    ours = probe(d, batch, local_attention=local_mode)
    assert ours.shape == ref.shape
    assert masked_relative_error(ours, ref, batch["attention_mask"].numpy()) <= 1e-4
    # Padded positions come back as zeros (they never ran).
    assert np.all(ours[~batch["attention_mask"].numpy().astype(bool)] == 0)


def test_a_padded_row_gives_what_it_gives_alone(tmp_path):
    import torch

    d, _, fast = build_tiny(tmp_path, local_attention=8)
    batch = mixed_batch(fast, 8)
    together = probe(d, batch)
    for row in range(batch["input_ids"].shape[0]):
        n = int(batch["attention_mask"][row].sum())
        alone = probe(d, {"input_ids": batch["input_ids"][row : row + 1, :n], "attention_mask": torch.ones(1, n, dtype=torch.long)})
        np.testing.assert_allclose(together[row, :n], alone[0], rtol=1e-5, atol=1e-5)


def test_local_layers_see_exactly_half_the_window_on_each_side(tmp_path):
    """A token's change moves the next local layer's outputs only within
    local_attention // 2 positions (one local layer, global layers never)."""
    import torch

    d, _, fast = build_tiny(tmp_path, layers=1, local_attention=10)
    config = json.loads((d / "config.json").read_text())
    config["layer_types"] = ["sliding_attention"]
    (d / "config.json").write_text(json.dumps(config))
    ids = fast(" ".join(TEXTS[:8]), return_tensors="pt")["input_ids"][:, :40]
    assert ids.shape[1] == 40
    changed = ids.clone()
    changed[0, 20] = 7 if int(ids[0, 20]) != 7 else 8
    mask = torch.ones_like(ids)
    a = probe(d, {"input_ids": ids, "attention_mask": mask})[0]
    b = probe(d, {"input_ids": changed, "attention_mask": mask})[0]
    moved = np.nonzero(np.abs(a - b).max(1) > 0)[0]
    assert moved.min() == 15 and moved.max() == 25  # |i - 20| <= 10 // 2


def test_both_config_spellings_give_the_same_result(tmp_path):
    import torch
    import transformers

    d, model, fast = build_tiny(tmp_path, layers=5, every=3)
    batch = mixed_batch(fast, 8)
    new_spelling = probe(d, batch)
    to_hub_spelling(d, every=3)
    hub = json.loads((d / "config.json").read_text())
    assert "layer_types" not in hub and "rope_parameters" not in hub
    # transformers reads the hub spelling into the same pattern and thetas.
    reread = transformers.ModernBertConfig.from_pretrained(d)
    assert reread.layer_types == model.config.layer_types
    assert reread.rope_parameters == model.config.rope_parameters
    np.testing.assert_array_equal(probe(d, batch), new_spelling)
    with torch.no_grad():
        ref = model(**batch).last_hidden_state.numpy()
    assert masked_relative_error(new_spelling, ref, batch["attention_mask"].numpy()) <= 1e-4
    # The thetas are read: other ones give another result.
    to_hub_spelling(d, every=3, global_theta=160000.0, local_theta=10000.0)
    assert masked_relative_error(probe(d, batch), ref, batch["attention_mask"].numpy()) > 1e-3


def test_hub_spelling_defaults_are_transformers_defaults(tmp_path):
    """Without global_attn_every_n_layers and the thetas: every third layer
    global, thetas 160000 / 10000, as ModernBertConfig fills them in."""
    import torch
    import transformers

    d, _, fast = build_tiny(tmp_path, layers=4)
    config = json.loads((d / "config.json").read_text())
    for key in ("layer_types", "rope_parameters", "global_attn_every_n_layers"):
        config.pop(key, None)
    (d / "config.json").write_text(json.dumps(config))
    model = transformers.ModernBertModel.from_pretrained(d).eval()
    assert model.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    batch = mixed_batch(fast, 8)
    with torch.no_grad():
        ref = model(**batch).last_hidden_state.numpy()
    assert masked_relative_error(probe(d, batch), ref, batch["attention_mask"].numpy()) <= 1e-4


@pytest.mark.parametrize("head", ["classifier", "masked_lm"])
def test_checkpoints_with_a_head_serve_their_base_model_under_the_model_prefix(tmp_path, head):
    import torch

    d, model, fast = build_tiny(tmp_path, head=head)
    batch = mixed_batch(fast, 8)
    with torch.no_grad():
        ref = model.model(**batch).last_hidden_state.numpy()
    assert masked_relative_error(probe(d, batch), ref, batch["attention_mask"].numpy()) <= 1e-4
    with mpool.Pool() as pool:
        info = pool.register("cls", d)
        assert info["family"] == "modernbert"
        if head == "masked_lm":
            assert any("head.dense.weight" in w for w in info["warnings"])  # the head is not the encoder's
            assert pool.embed("cls", ["hello there"]).shape == (1, 32)
        else:  # a sequence classifier is a cross-encoder: it reranks (test_rerank.py checks its scores)
            assert not info["warnings"]
            assert pool.score("cls", [("hello", "there")]).shape == (1, 3)


@pytest.mark.parametrize(("pooling", "normalize"), [("mean_tokens", True), ("cls_token", False)])
def test_pooled_embeddings_match_sentence_transformers(tmp_path, pooling, normalize):
    from sentence_transformers import SentenceTransformer

    d, _, _ = build_tiny(tmp_path, pooling=pooling, normalize=normalize, prompts={"query": "search_query: "})
    texts = TEXTS[:48]
    st = SentenceTransformer(str(d), device="cpu")
    ref = st.encode(texts, convert_to_numpy=True)
    ref_query = st.encode(texts[:8], prompt_name="query", convert_to_numpy=True)
    with mpool.Pool() as pool:
        info = pool.register("tiny", d)
        assert info["family"] == "modernbert"
        ours = pool.embed("tiny", texts)
        ours_query = pool.embed("tiny", texts[:8], task="query")
    cosine = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cosine.min() >= 0.99999
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ours_query, ref_query, rtol=1e-4, atol=1e-5)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_long_text_is_truncated_or_refused_with_truncate_false(tmp_path):
    from sentence_transformers import SentenceTransformer

    d, _, fast = build_tiny(tmp_path, pooling="mean_tokens")
    long_text = " ".join(TEXTS[:30])  # far beyond max_seq_length 64
    with mpool.Pool() as pool:
        pool.register("tiny", d)
        np.testing.assert_allclose(
            pool.embed("tiny", [long_text]), SentenceTransformer(str(d), device="cpu").encode([long_text]), rtol=1e-4, atol=1e-5
        )
        with pytest.raises(mpool.InvalidInput, match=r"text #1 has \d+ tokens; the model takes at most 64"):
            pool.embed("tiny", ["short", long_text], truncate=False)
        assert pool.embed("tiny", ["short"], truncate=False).shape == (1, 32)
    # The encoder itself refuses more tokens than max_position_embeddings.
    ids = np.full((1, 129), 5, dtype=np.int64)
    with pytest.raises(mpool.InvalidInput, match="input of 129 tokens is longer than the model's 128 positions"):
        mpool.testing.probe("modernbert.last_hidden_state", {"input_ids": ids, "attention_mask": np.ones_like(ids)}, path=str(d))


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"hidden_size": 30}, "hidden_size 30 is not divisible by num_attention_heads 4"),
        ({"layer_types": ["full_attention"] * 3}, '"layer_types" has 3 entries for 4 layers'),
        ({"layer_types": ["full_attention", "global", "full_attention", "full_attention"]}, r"layer_types\[1\] is 'global'"),
        ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 2.0}}}, r'"rope_parameters.full_attention" has rope_type \'yarn\''),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 5.0}}, '"rope_parameters" of a modernbert model is keyed by layer type'),
        ({"layer_types": None, "global_attn_every_n_layers": 0}, '"global_attn_every_n_layers" must be a positive integer'),
        ({"local_attention": -2}, '"local_attention" must be in'),
        ({"hidden_activation": "swish3"}, '"hidden_activation"'),
        ({"num_attention_heads": None}, '"num_attention_heads" must be a positive integer'),
    ],
)
def test_bad_config_is_refused_at_registration_naming_the_key(tmp_path, change, match):
    d, _, _ = build_tiny(tmp_path)
    config = json.loads((d / "config.json").read_text())
    config.update(change)
    (d / "config.json").write_text(json.dumps(config))
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match=match):
            pool.register("bad", d)


@pytest.mark.parametrize(
    "tensor", ["layers.1.attn.Wqkv.weight", "layers.2.attn_norm.weight", "layers.0.mlp.Wi.weight", "final_norm.weight"]
)
def test_directory_with_a_missing_tensor_fails_to_spawn_naming_it(tmp_path, tensor):
    from safetensors.numpy import load_file, save_file

    d, _, _ = build_tiny(tmp_path, pooling="mean_tokens")
    weights = load_file(d / "model.safetensors")
    del weights[tensor]
    save_file(weights, d / "model.safetensors")
    with mpool.Pool() as pool:
        pool.register("broken", d)
        with pytest.raises(mpool.SpawnFailed, match=tensor.replace(".", r"\.")):
            pool.embed("broken", ["x"])


def test_a_bias_the_config_promises_must_be_stored(tmp_path):
    from safetensors.numpy import load_file, save_file

    d, _, _ = build_tiny(tmp_path, bias=True, pooling="mean_tokens")
    weights = load_file(d / "model.safetensors")
    del weights["layers.3.mlp.Wo.bias"]
    save_file(weights, d / "model.safetensors")
    with mpool.Pool() as pool:
        pool.register("broken", d)
        with pytest.raises(mpool.SpawnFailed, match=r"layers\.3\.mlp\.Wo\.bias"):
            pool.embed("broken", ["x"])


def test_inspect_reports_the_modernbert_family(tmp_path):
    d, _, _ = build_tiny(tmp_path)
    report = mpool.inspect(str(d))
    assert any(f["name"] == "modernbert" and f["supported"] for f in report["families"])
