"""The native JinaBert family (jina-embeddings-v2) against a plain-torch reference.

JinaBert's modeling code is remote code on the hub, not part of transformers, so
the oracle here is ``JinaBertReference``, a small torch module written in this
file from the published structure (the ALiBi paper and jina-embeddings-v2's
description), not copied from anywhere:

- a post-norm BERT encoder with no position table: word + token-type embeddings,
  LayerNorm;
- attention scores softmax(q k^T / sqrt(d) + bias) with ALiBi's symmetric bias
  ``-m_h * |i - j|``, m_h from the ALiBi paper (2^(-8 (h + 1) / H) when H is a
  power of two; otherwise the closest power of two's slopes followed by every
  other slope of the next power's series);
- the feed-forward: ``gated_layers`` (no bias, hidden -> 2 x intermediate), the
  first half activated (gelu for geglu, relu for reglu) times the second half,
  ``wo``, then the residual and ``layernorm``; or BERT's original one.

The directories are written as the hub writes jina-embeddings-v2-base-en's:
model_type "bert", architectures ["JinaBertForMaskedLM"], an auto_map to remote
code, "position_embedding_type": "alibi", "feed_forward_type": "geglu",
"emb_pooler": "mean". ALiBi has no table, so inputs run up to the cap the config
states, ``max_position_embeddings`` (96 here, 8192 on the hub), far past the
16 tokens of the shortest inputs these tests use.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import mpool
import mpool.testing
from corpus import CORPUS
from test_native_bert import _wordpiece_tokenizer

CAP = 96  # max_position_embeddings of the tiny configs: the longest input


def reference_slopes(heads: int) -> list[float]:
    """ALiBi's head slopes, as the paper defines them."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return power_of_two(heads)
    closest = 2 ** math.floor(math.log2(heads))
    return power_of_two(closest) + reference_slopes(2 * closest)[0::2][: heads - closest]


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))


class _AttentionOutput(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)


class _Attention(nn.Module):
    def __init__(self, hidden: int, eps: float) -> None:
        super().__init__()
        self.self = _SelfAttention(hidden)
        self.output = _AttentionOutput(hidden, eps)


class _GluMlp(nn.Module):
    def __init__(self, hidden: int, inner: int, eps: float) -> None:
        super().__init__()
        self.gated_layers = nn.Linear(hidden, 2 * inner, bias=False)
        self.wo = nn.Linear(inner, hidden)
        self.layernorm = nn.LayerNorm(hidden, eps=eps)


class _Dense(nn.Module):
    def __init__(self, n_in: int, n_out: int, eps: float | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(n_out, eps=eps)


class _Layer(nn.Module):
    def __init__(self, hidden: int, inner: int, eps: float, feed_forward: str) -> None:
        super().__init__()
        self.attention = _Attention(hidden, eps)
        if feed_forward == "original":
            self.intermediate = _Dense(hidden, inner)
            self.output = _Dense(inner, hidden, eps)
        else:
            self.mlp = _GluMlp(hidden, inner, eps)


class _Embeddings(nn.Module):
    def __init__(self, vocab: int, types: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.token_type_embeddings = nn.Embedding(types, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)


class _Encoder(nn.Module):
    def __init__(self, layers: list[_Layer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)


class JinaBertReference(nn.Module):
    """jina-embeddings-v2's encoder in plain torch, with its tensor names."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.config = config
        h, inner, eps = config["hidden_size"], config["intermediate_size"], config["layer_norm_eps"]
        self.feed_forward = config.get("feed_forward_type", "original")
        self.embeddings = _Embeddings(config["vocab_size"], config["type_vocab_size"], h, eps)
        self.encoder = _Encoder([_Layer(h, inner, eps, self.feed_forward) for _ in range(config["num_hidden_layers"])])

    def forward(self, input_ids, token_type_ids, attention_mask):
        c = self.config
        heads, h = c["num_attention_heads"], c["hidden_size"]
        d = h // heads
        b, t = input_ids.shape
        x = self.embeddings.LayerNorm(
            self.embeddings.word_embeddings(input_ids) + self.embeddings.token_type_embeddings(token_type_ids)
        )
        pos = torch.arange(t)
        distance = (pos[None, :] - pos[:, None]).abs().float()  # |key - query|
        alibi = -torch.tensor(reference_slopes(heads))[:, None, None] * distance  # (heads, t, t)
        padding = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        bias = alibi[None] + padding
        for layer in self.encoder.layer:
            sa = layer.attention.self

            def heads_of(y):
                return y.view(b, t, heads, d).transpose(1, 2)

            q, k, v = heads_of(sa.query(x)), heads_of(sa.key(x)), heads_of(sa.value(x))
            probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1)
            context = (probs @ v).transpose(1, 2).reshape(b, t, h)
            out = layer.attention.output
            x = out.LayerNorm(out.dense(context) + x)
            if self.feed_forward == "original":
                act = {"gelu": torch.nn.functional.gelu, "relu": torch.relu}[c["hidden_act"]]
                y = layer.output.dense(act(layer.intermediate.dense(x)))
                x = layer.output.LayerNorm(y + x)
            else:
                g = layer.mlp.gated_layers(x)
                inner = c["intermediate_size"]
                gated, non_gated = g[..., :inner], g[..., inner:]
                act = torch.nn.functional.gelu if self.feed_forward == "geglu" else torch.relu
                x = layer.mlp.layernorm(layer.mlp.wo(act(gated) * non_gated) + x)
        return x


def hub_style_config(vocab: int, layers: int, heads: int, hidden: int, feed_forward: str = "geglu") -> dict:
    """A config.json written as jinaai/jina-embeddings-v2-base-en's is, at tiny sizes."""
    impl = "jinaai/jina-bert-implementation"
    return {
        "_name_or_path": impl,
        "architectures": ["JinaBertForMaskedLM"],
        "attention_probs_dropout_prob": 0.0,
        "attn_implementation": "torch",
        "auto_map": {
            "AutoConfig": f"{impl}--configuration_bert.JinaBertConfig",
            "AutoModel": f"{impl}--modeling_bert.JinaBertModel",
            "AutoModelForMaskedLM": f"{impl}--modeling_bert.JinaBertForMaskedLM",
            "AutoModelForSequenceClassification": f"{impl}--modeling_bert.JinaBertForSequenceClassification",
        },
        "classifier_dropout": None,
        "emb_pooler": "mean",
        "feed_forward_type": feed_forward,
        "gradient_checkpointing": False,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": hidden * 3,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": CAP,
        "model_max_length": CAP,
        "model_type": "bert",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 0,
        "position_embedding_type": "alibi",
        "torch_dtype": "float32",
        "transformers_version": "4.26.0",
        "type_vocab_size": 2,
        "vocab_size": vocab,
    }


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """Every parameter random (norm weights around 1), so no term hides behind zeros or ones."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.1 * noise if "norm" in name.lower() and name.endswith("weight") else 0.2 * noise)
    return model.eval()


def build_jina(tmp_path, layers=2, heads=4, hidden=32, feed_forward="geglu", sentence_transformers=False,
               prefix="", config_edits=None, name=None, pooler=False):
    """A hub-style JinaBert directory: config.json, model.safetensors, tokenizer files;
    ``pooler``: also JinaBertModel's pooler.dense, which the hub's checkpoints hold
    and mean pooling never uses."""
    import transformers
    from safetensors.torch import save_file

    tok, specials = _wordpiece_tokenizer()
    config = hub_style_config(tok.get_vocab_size(), layers, heads, hidden, feed_forward)
    model = randomized(JinaBertReference(config), seed=layers * 1000 + heads * 100 + hidden)
    config.update(config_edits or {})
    d = tmp_path / (name or f"jina-{layers}-{heads}-{hidden}-{feed_forward}")
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
    if pooler:
        tensors[prefix + "pooler.dense.weight"] = torch.zeros(hidden, hidden)
        tensors[prefix + "pooler.dense.bias"] = torch.zeros(hidden)
    save_file(tensors, str(d / "model.safetensors"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=CAP, **specials)
    fast.save_pretrained(d)
    if sentence_transformers:
        (d / "1_Pooling").mkdir()
        flags = {f"pooling_mode_{m}": m == "mean_tokens" for m in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "lasttoken")}
        (d / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": hidden, **flags}))
        (d / "2_Normalize").mkdir()
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]
        (d / "modules.json").write_text(json.dumps(modules))
        (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": CAP, "do_lower_case": False}))
    return d, model, fast


_WORDS = " ".join(t for t in CORPUS if t.strip()).split()
_TARGETS = [10, 80, 20, 90, 40, 8, 70, 50, 14, 94, 30, 60]  # tokens, specials included


def long_texts(fast, n: int) -> list[str]:
    """n texts of the corpus's words, of about _TARGETS tokens each (at most the cap):
    short and long ones in one batch."""
    out, at = [], 0
    for i in range(n):
        words: list[str] = []
        while len(fast(" ".join(words + [_WORDS[at]]))["input_ids"]) <= _TARGETS[i % len(_TARGETS)]:
            words.append(_WORDS[at])
            at += 1
        at += 1  # a word that did not fit starts nothing
        out.append(" ".join(words) or "x")
    return out


def run_probe(d, batch, **options):
    return mpool.testing.probe(
        "jinabert.last_hidden_state",
        {
            "input_ids": batch["input_ids"].numpy(),
            "token_type_ids": torch.zeros_like(batch["input_ids"]).numpy(),
            "attention_mask": batch["attention_mask"].numpy(),
        },
        path=str(d),
        **options,
    )["last_hidden_state"]


def reference_states(model, batch):
    with torch.no_grad():
        return model(batch["input_ids"], torch.zeros_like(batch["input_ids"]), batch["attention_mask"]).numpy()


def relative_error(ours, ref, mask):
    return np.abs(ours - ref)[mask].max() / np.abs(ref[mask]).max()


# --- ALiBi --------------------------------------------------------------------------


@pytest.mark.parametrize("heads", [4, 6, 8, 12])
def test_alibi_slopes_and_symmetric_bias_follow_the_paper_for_powers_of_two_and_not(heads):
    n = 7
    out = mpool.testing.probe(
        "nn.alibi", {"query_positions": np.arange(n), "key_positions": np.arange(n)}, heads=heads, symmetric=True
    )
    slopes = np.array(reference_slopes(heads), dtype=np.float64)
    if heads in (4, 8):  # a power of two: 2^(-8 (h + 1) / H)
        np.testing.assert_allclose(slopes, [2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)], rtol=1e-12)
    np.testing.assert_allclose(out["slopes"], slopes, rtol=1e-6)
    distance = np.abs(np.arange(n)[None, :] - np.arange(n)[:, None])
    expected = -slopes[:, None, None] * distance
    np.testing.assert_allclose(out["bias"], expected, rtol=1e-6, atol=0)
    # Symmetric: a key k places before the query costs what one k places after it costs.
    np.testing.assert_array_equal(out["bias"], np.swapaxes(out["bias"], 1, 2))


def test_symmetric_alibi_of_a_padded_batch_uses_each_sequences_positions():
    q = np.array([[0, 1, 2], [5, 6, 7]])
    out = mpool.testing.probe("nn.alibi", {"query_positions": q, "key_positions": q}, heads=6, symmetric=True)
    slopes = np.array(reference_slopes(6))
    expected = -slopes[None, :, None, None] * np.abs(q[:, None, None, :] - q[:, None, :, None])
    assert out["bias"].shape == (2, 6, 3, 3)
    np.testing.assert_allclose(out["bias"], expected, rtol=1e-6)


# --- the encoder --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "heads", "hidden", "feed_forward"),
    [(2, 4, 32, "geglu"), (1, 6, 48, "geglu"), (2, 12, 48, "reglu"), (2, 4, 32, "original")],
)
def test_last_hidden_state_matches_the_reference_with_padding_past_the_shortest_input(
    each_float32_gemm, tmp_path, layers, heads, hidden, feed_forward
):
    d, model, fast = build_jina(tmp_path, layers, heads, hidden, feed_forward)
    texts = long_texts(fast, 10)
    batch = fast(texts, padding=True, return_tensors="pt")
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < 24 and 60 < batch["input_ids"].shape[1] <= CAP  # padded, and long
    ours = run_probe(d, batch)
    ref = reference_states(model, batch)
    assert relative_error(ours, ref, batch["attention_mask"].numpy().astype(bool)) <= 1e-4


def test_inputs_up_to_the_configured_cap_match_and_one_more_token_is_refused(tmp_path):
    d, model, fast = build_jina(tmp_path)
    text = " ".join(CORPUS[:40])
    batch = fast([text, "short"], padding=True, truncation=True, max_length=CAP, return_tensors="pt")
    assert batch["input_ids"].shape[1] == CAP
    ours = run_probe(d, batch)
    ref = reference_states(model, batch)
    assert relative_error(ours, ref, batch["attention_mask"].numpy().astype(bool)) <= 1e-4
    too_long = {k: torch.cat([v, v[:, :1]], 1) for k, v in batch.items()}
    with pytest.raises(mpool.InvalidInput, match=r"97 tokens .* cap of 96 \(config.json: \"max_position_embeddings\"\)"):
        run_probe(d, too_long)


def test_queries_run_in_blocks_give_the_same_states(tmp_path):
    d, model, fast = build_jina(tmp_path, heads=4)
    batch = fast(long_texts(fast, 4), padding=True, return_tensors="pt")
    b, t = batch["input_ids"].shape
    whole = run_probe(d, batch)
    blocked = run_probe(d, batch, score_elements=b * 4 * t * 5)  # five queries per block
    single = run_probe(d, batch, score_elements=1)  # one query per block
    np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(single, whole, rtol=1e-5, atol=1e-5)
    mask = batch["attention_mask"].numpy().astype(bool)
    assert relative_error(single, reference_states(model, batch), mask) <= 1e-4


def test_a_checkpoint_saved_under_the_masked_lm_prefix_loads(tmp_path):
    d, model, fast = build_jina(tmp_path, prefix="bert.")
    batch = fast(long_texts(fast, 3), padding=True, return_tensors="pt")
    ours = run_probe(d, batch)
    assert relative_error(ours, reference_states(model, batch), batch["attention_mask"].numpy().astype(bool)) <= 1e-4


# --- through the pool -----------------------------------------------------------------


def reference_embeddings(model, fast, texts):
    batch = fast(texts, padding=True, truncation=True, max_length=CAP, return_tensors="pt")
    states = torch.from_numpy(reference_states(model, batch))
    mask = batch["attention_mask"][..., None].float()
    pooled = (states * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_pool_embeddings_mean_pooled_and_normalized_match_the_reference(tmp_path):
    d, model, fast = build_jina(tmp_path, heads=6, hidden=48, sentence_transformers=True, pooler=True)
    texts = long_texts(fast, 12) + [" ".join(CORPUS[:40])]  # the last one is cut at the cap
    with mpool.Pool() as pool:
        info = pool.register("jina", d)
        assert info["family"] == "jinabert"
        assert any("pooler.dense.weight" in w for w in info["warnings"])  # left unused, and said so
        ours = pool.embed("jina", texts)
    ref = reference_embeddings(model, fast, texts)
    assert ours.shape == ref.shape == (len(texts), 48)
    assert cosine(ours, ref).min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)


def test_hub_directory_without_sentence_transformers_files_mean_pools(tmp_path):
    d, model, fast = build_jina(tmp_path)
    texts = long_texts(fast, 6)
    with mpool.Pool() as pool:
        pool.register("jina", d)
        ours = pool.embed("jina", texts)
    batch = fast(texts, padding=True, return_tensors="pt")
    states = torch.from_numpy(reference_states(model, batch))
    mask = batch["attention_mask"][..., None].float()
    ref = ((states * mask).sum(1) / mask.sum(1)).numpy()
    assert cosine(ours, ref).min() >= 0.99999
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


# --- recognition ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "edits",
    [
        {},  # the hub's: model_type bert, JinaBertForMaskedLM, alibi
        {"architectures": ["JinaBertModel"], "position_embedding_type": None},  # the remote config's default is alibi
        {"architectures": ["BertModel"]},  # alibi alone says JinaBert
        {"model_type": "jina_bert", "architectures": None, "auto_map": None},
    ],
)
def test_jina_configs_go_to_jinabert_and_the_bert_family_hands_them_over(tmp_path, edits):
    d, _, _ = build_jina(tmp_path, config_edits={k: v for k, v in edits.items()})
    config = json.loads((d / "config.json").read_text())
    for key in [k for k, v in edits.items() if v is None]:
        del config[key]
    (d / "config.json").write_text(json.dumps(config))
    report = mpool.inspect(d)
    assert report["supported_by"] == ["jinabert"]
    families = {f["name"]: f for f in report["families"]}
    assert not families["bert"]["supported"]
    if config["model_type"] == "bert":
        assert "jinabert family" in families["bert"]["reason"]
    with mpool.Pool() as pool:
        assert pool.register("jina", d)["family"] == "jinabert"


def test_plain_bert_is_not_claimed_by_jinabert(tmp_path):
    from test_native_bert import build_tiny

    d, _, _ = build_tiny(tmp_path, "bert")
    report = mpool.inspect(d)
    assert report["supported_by"] == ["bert"]
    jina = next(f for f in report["families"] if f["name"] == "jinabert")
    assert "plain BERT" in jina["reason"]


def test_bert_with_relative_positions_is_refused_naming_the_key(tmp_path):
    from test_native_bert import build_tiny

    d, _, _ = build_tiny(tmp_path, "bert")
    config = json.loads((d / "config.json").read_text())
    config["position_embedding_type"] = "relative_key"
    (d / "config.json").write_text(json.dumps(config))
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match=r"\"position_embedding_type\" is 'relative_key'"):
            pool.register("rel", d)


# --- bad directories ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edits", "match"),
    [
        ({"feed_forward_type": "swiglu"}, r"\"feed_forward_type\" is 'swiglu'; the jinabert family takes original, geglu or reglu"),
        ({"architectures": ["JinaBertModel"], "position_embedding_type": "absolute"}, r"\"position_embedding_type\" is 'absolute'"),
        ({"emb_pooler": "cls"}, r"\"emb_pooler\" is 'cls'"),
        ({"num_attention_heads": 5}, "hidden_size 32 is not divisible by num_attention_heads 5"),
        ({"max_position_embeddings": 0}, "max_position_embeddings"),
        ({"intermediate_size": -3}, "intermediate_size"),
        ({"hidden_act": "swishy", "feed_forward_type": "original"}, r"\"hidden_act\""),
        ({"type_vocab_size": "two"}, "type_vocab_size"),
    ],
)
def test_bad_configs_are_refused_at_registration_naming_the_key(tmp_path, edits, match):
    d, _, _ = build_jina(tmp_path, config_edits=edits)
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match=match):
            pool.register("bad", d)


@pytest.mark.parametrize(
    "tensor",
    ["encoder.layer.1.mlp.gated_layers.weight", "encoder.layer.0.mlp.wo.bias", "encoder.layer.0.mlp.layernorm.weight",
     "encoder.layer.0.attention.self.key.weight", "embeddings.token_type_embeddings.weight"],
)
def test_a_missing_tensor_fails_naming_it(tmp_path, tensor):
    from safetensors.numpy import load_file, save_file

    d, _, fast = build_jina(tmp_path)
    weights = load_file(d / "model.safetensors")
    del weights[tensor]
    save_file(weights, d / "model.safetensors")
    with pytest.raises(mpool.InvalidInput, match=tensor.replace(".", r"\.")):
        run_probe(d, fast(["a short text"], return_tensors="pt"))
    with mpool.Pool() as pool:
        pool.register("broken", d)
        with pytest.raises(mpool.SpawnFailed, match=tensor.replace(".", r"\.")):
            pool.embed("broken", ["x"])


def test_a_wrongly_shaped_gated_layer_is_refused_naming_it_and_both_shapes(tmp_path):
    from safetensors.numpy import load_file, save_file

    d, _, fast = build_jina(tmp_path)
    weights = load_file(d / "model.safetensors")
    weights["encoder.layer.0.mlp.gated_layers.weight"] = weights["encoder.layer.0.mlp.gated_layers.weight"][:96]
    save_file(weights, d / "model.safetensors")
    with pytest.raises(mpool.InvalidInput, match=r"encoder\.layer\.0\.mlp\.gated_layers\.weight.*192"):
        run_probe(d, fast(["a short text"], return_tensors="pt"))
