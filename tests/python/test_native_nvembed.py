"""Native NV-Embed (NVEmbedModel): a bidirectional Mistral decoder and a latent-attention pooler.

NV-Embed's modeling code is remote code, not part of transformers. The oracle is:
- for the decoder, transformers' ``MistralModel`` run with a full (non-causal) 4-D
  additive attention mask of shape (b, 1, t, t) that masks only padded keys;
- for the pooler, ``LatentPooler`` below, a plain-torch reference written in this
  test from the published architecture (NV-Embed, Lee et al. 2024, and its model
  card): the token states cross-attend (pre-norm LayerNorms over the states and
  over the latents, queries from the states, keys and values from a learned
  latent array, no mask) with a residual, then a pre-norm GEGLU feed-forward
  (``x, gates = net.0(x).chunk(2)``, ``x * gelu(gates)``, ``net.2``) with a
  residual, then a mean over the pool mask and an L2 normalization;
- for the request pipeline, NV-Embed's ``encode``: the instruction prefixes the
  text, the tokenizer's eos_token ends it, right padding, and the first
  ``len(tokenize(instruction))`` positions are left out of the pool mask.

The tiny model is saved in the NV-Embed layout: ``embedding_model.*`` and
``latent_attention_model.*`` tensors, config.json with model_type "nvembed", a
``text_config`` (mistral) and a ``latent_attention_config``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mpool
import mpool.testing
from decoder_models import EOS, PAD, save_tokenizer, special_ids, vocab_size

INSTRUCTION = "Instruct: Given a question, retrieve passages that answer it\nQuery: "
HIDDEN, LATENT_DIM, NUM_LATENTS, CROSS_HEADS, CROSS_DIM_HEAD = 64, 48, 16, 4, 24

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "x",
    "Rotary position embeddings rotate pairs of dimensions by an angle, and the cache keeps keys.",
    "東京は日本の首都です。",
    "what is the capital of France?",
]


class LatentPooler:
    """NV-Embed's latent-attention pooler in plain torch (see the module docstring)."""

    def __init__(self, seed: int) -> None:
        import torch

        gen = torch.Generator().manual_seed(seed)

        def rnd(*shape: int, scale: float) -> torch.Tensor:
            return torch.randn(*shape, generator=gen) * scale

        inner = CROSS_HEADS * CROSS_DIM_HEAD
        self.tensors: dict[str, torch.Tensor] = {
            "latents": rnd(NUM_LATENTS, LATENT_DIM, scale=1.0),
            "cross_attend_blocks.0.norm.weight": 1.0 + rnd(HIDDEN, scale=0.2),
            "cross_attend_blocks.0.norm.bias": rnd(HIDDEN, scale=0.2),
            "cross_attend_blocks.0.norm_context.weight": 1.0 + rnd(LATENT_DIM, scale=0.2),
            "cross_attend_blocks.0.norm_context.bias": rnd(LATENT_DIM, scale=0.2),
            "cross_attend_blocks.0.fn.to_q.weight": rnd(inner, HIDDEN, scale=1.6 / HIDDEN**0.5),
            "cross_attend_blocks.0.fn.to_kv.weight": rnd(2 * inner, LATENT_DIM, scale=1.6 / LATENT_DIM**0.5),
            "cross_attend_blocks.0.fn.to_out.weight": rnd(HIDDEN, inner, scale=1.0 / inner**0.5),
            "cross_attend_blocks.1.norm.weight": 1.0 + rnd(HIDDEN, scale=0.2),
            "cross_attend_blocks.1.norm.bias": rnd(HIDDEN, scale=0.2),
            "cross_attend_blocks.1.fn.net.0.weight": rnd(2 * 4 * HIDDEN, HIDDEN, scale=1.0 / HIDDEN**0.5),
            "cross_attend_blocks.1.fn.net.0.bias": rnd(2 * 4 * HIDDEN, scale=0.3),
            "cross_attend_blocks.1.fn.net.2.weight": rnd(HIDDEN, 4 * HIDDEN, scale=1.0 / (4 * HIDDEN) ** 0.5),
            "cross_attend_blocks.1.fn.net.2.bias": rnd(HIDDEN, scale=0.3),
        }

    def states(self, hiddens: Any) -> Any:
        import torch
        import torch.nn.functional as F

        t = self.tensors
        b, n, _ = hiddens.shape

        def ln(x: Any, name: str) -> Any:
            return F.layer_norm(x, (x.shape[-1],), t[name + ".weight"], t[name + ".bias"], 1e-5)

        def heads(x: Any) -> Any:  # (b, n, h*d) -> (b, h, n, d)
            return x.view(x.shape[0], x.shape[1], CROSS_HEADS, CROSS_DIM_HEAD).transpose(1, 2)

        x = ln(hiddens, "cross_attend_blocks.0.norm")
        context = ln(t["latents"], "cross_attend_blocks.0.norm_context").expand(b, -1, -1)
        q = heads(x @ t["cross_attend_blocks.0.fn.to_q.weight"].T)
        k, v = (context @ t["cross_attend_blocks.0.fn.to_kv.weight"].T).chunk(2, dim=-1)
        k, v = heads(k), heads(v)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(CROSS_DIM_HEAD), dim=-1) @ v
        out = attn.transpose(1, 2).reshape(b, n, CROSS_HEADS * CROSS_DIM_HEAD)
        hiddens = out @ t["cross_attend_blocks.0.fn.to_out.weight"].T + hiddens
        y = F.linear(ln(hiddens, "cross_attend_blocks.1.norm"), t["cross_attend_blocks.1.fn.net.0.weight"],
                     t["cross_attend_blocks.1.fn.net.0.bias"])
        y, gates = y.chunk(2, dim=-1)
        y = F.linear(y * F.gelu(gates), t["cross_attend_blocks.1.fn.net.2.weight"], t["cross_attend_blocks.1.fn.net.2.bias"])
        return y + hiddens

    def pool(self, hiddens: Any, pool_mask: Any) -> Any:
        m = pool_mask.unsqueeze(-1).float()
        return (self.states(hiddens) * m).sum(1) / m.sum(1)


def full_mask(attention_mask: Any) -> Any:
    """(b, 1, t, t) additive float mask: every query sees every unpadded key."""
    import torch

    b, t = attention_mask.shape
    keep = attention_mask.bool()[:, None, None, :].expand(b, 1, t, t)
    return torch.zeros(b, 1, t, t).masked_fill(~keep, torch.finfo(torch.float32).min)


def build_nvembed(tmp_dir: Path, *, seed: int = 0) -> tuple[Path, Any, LatentPooler]:
    """The tiny NV-Embed directory, its MistralModel and its reference pooler."""
    import torch
    import transformers
    from safetensors.torch import save_file

    ids = special_ids()
    text_config = dict(
        vocab_size=vocab_size(),
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        hidden_act="silu",
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=ids["<s>"],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
    )
    config = transformers.MistralConfig(**text_config)
    torch.manual_seed(seed)
    decoder = transformers.MistralModel(config).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.6 / p.shape[-1] ** 0.5))
    pooler = LatentPooler(seed + 2)

    out = tmp_dir / "nvembed"
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"embedding_model.{k}": v.contiguous() for k, v in decoder.state_dict().items()}
    tensors.update({f"latent_attention_model.{k}": v.contiguous() for k, v in pooler.tensors.items()})
    save_file(tensors, str(out / "model.safetensors"))
    save_tokenizer(out)
    (out / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["NVEmbedModel"],
                "model_type": "nvembed",
                "hidden_size": HIDDEN,
                "padding_side": "right",
                "is_mask_instruction": True,
                "add_eos": True,
                "add_pad_token": True,
                "torch_dtype": "float32",
                "text_config": {**text_config, "model_type": "mistral", "architectures": ["MistralModel"]},
                "latent_attention_config": {
                    "model_type": "latent_attention",
                    "num_latents_value": NUM_LATENTS,
                    "num_cross_heads": CROSS_HEADS,
                    "cross_dim_head": CROSS_DIM_HEAD,
                    "latent_dim": LATENT_DIM,
                    "hidden_dim": HIDDEN,
                    "output_normalize": True,
                },
            },
            indent=2,
        )
    )
    # The sentence-transformers files: the instructions are the prompts by task.
    (out / "modules.json").write_text(
        json.dumps([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}])
    )
    (out / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": INSTRUCTION, "passage": ""}, "default_prompt_name": None})
    )
    return out, decoder, pooler


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, LatentPooler]:
    return build_nvembed(tmp_path_factory.mktemp("nvembed"))


def tokenizer(path: Path) -> Any:
    import transformers

    tok = transformers.PreTrainedTokenizerFast.from_pretrained(str(path))
    tok.padding_side = "right"
    return tok


def reference_embeddings(path: Path, decoder: Any, pooler: LatentPooler, texts: list[str], instruction: str) -> Any:
    """NV-Embed's encode: instruction + text + eos, right padding, instruction tokens out of the pool mask."""
    import torch

    tok = tokenizer(path)
    batch = tok([instruction + t + tok.eos_token for t in texts], padding=True, return_tensors="pt")
    pool_mask = batch["attention_mask"].clone()
    instruction_lens = len(tok.tokenize(instruction)) if instruction else 0
    pool_mask[:, :instruction_lens] = 0
    with torch.no_grad():
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=full_mask(batch["attention_mask"])).last_hidden_state
        pooled = pooler.pool(hidden, pool_mask)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_bidirectional_decoder_hidden_states_match_mistral_with_a_full_mask(tiny) -> None:
    import torch

    path, decoder, pooler = tiny
    tok = tokenizer(path)
    batch = tok([t + tok.eos_token for t in TEXTS], padding=True, return_tensors="pt")
    assert not bool(batch["attention_mask"].all())  # the batch is padded
    with torch.no_grad():
        ref = decoder(input_ids=batch["input_ids"], attention_mask=full_mask(batch["attention_mask"])).last_hidden_state
        causal = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    out = mpool.testing.probe(
        "nvembed.forward",
        {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()},
        path=str(path),
    )
    mask = batch["attention_mask"].numpy().astype(bool)
    ours, ref_np = out["hidden"], ref.numpy()
    assert np.abs(ours - ref_np)[mask].max() / np.abs(ref_np[mask]).max() <= 1e-4
    # The run is really bidirectional: a causal one differs.
    assert np.abs(ours - causal.numpy())[mask].max() / np.abs(ref_np[mask]).max() > 1e-2
    # The pooler alone, on the same states, against the reference.
    expected = pooler.pool(ref, batch["attention_mask"]).numpy()
    np.testing.assert_allclose(out["pooled"], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_passage_embeddings_match_the_reference_in_a_padded_batch(tiny) -> None:
    path, decoder, pooler = tiny
    ref = reference_embeddings(path, decoder, pooler, TEXTS, "")
    with mpool.Pool() as pool:
        info = pool.register("nv", path)
        assert info["capabilities"] == ["text_embedding"]
        ours = pool.embed("nv", TEXTS, task="passage")
        default = pool.embed("nv", TEXTS)
    assert ours.shape == (len(TEXTS), HIDDEN)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert cosines(ours, ref).min() >= 0.99999
    np.testing.assert_array_equal(default, ours)  # the passage prompt is empty


def test_query_embeddings_leave_the_instruction_tokens_out_of_the_pooling(tiny) -> None:
    path, decoder, pooler = tiny
    ref = reference_embeddings(path, decoder, pooler, TEXTS, INSTRUCTION)
    with mpool.Pool() as pool:
        pool.register("nv", path)
        ours = pool.embed("nv", TEXTS, task="query")
        one = pool.embed("nv", [TEXTS[0]], task="query")  # alone: no padding
    assert cosines(ours, ref).min() >= 0.99999
    assert cosines(one, ref[:1]).min() >= 0.99999
    # Pooling the instruction's tokens too gives other vectors: the mask matters.
    import torch

    tok = tokenizer(path)
    batch = tok([INSTRUCTION + t + tok.eos_token for t in TEXTS], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=full_mask(batch["attention_mask"])).last_hidden_state
        with_instruction = torch.nn.functional.normalize(pooler.pool(hidden, batch["attention_mask"]), dim=-1).numpy()
    assert cosines(ours, with_instruction).max() < 0.9999


def test_normalize_false_returns_the_pooled_mean(tiny) -> None:
    path, decoder, pooler = tiny
    import torch

    tok = tokenizer(path)
    batch = tok([t + tok.eos_token for t in TEXTS], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = decoder(input_ids=batch["input_ids"], attention_mask=full_mask(batch["attention_mask"])).last_hidden_state
        ref = pooler.pool(hidden, batch["attention_mask"]).numpy()
    with mpool.Pool() as pool:
        pool.register("nv", path)
        ours = pool.embed("nv", TEXTS, normalize=False)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_unknown_task_names_the_model_prompts(tiny) -> None:
    path, _, _ = tiny
    with mpool.Pool() as pool:
        pool.register("nv", path)
        with pytest.raises(mpool.InvalidInput, match="unknown task 'summary'; this model's tasks: passage, query"):
            pool.embed("nv", ["x"], task="summary")


def _copy(tiny_path: Path, dest: Path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny_path, dest / "copy"))


def _edit_config(path: Path, edit) -> None:
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c.pop("latent_attention_config"), r'"latent_attention_config" is missing'),
        (lambda c: c.pop("text_config"), r'"text_config" is missing'),
        (lambda c: c["text_config"].pop("model_type"), r'"text_config.model_type"'),
        (lambda c: c["text_config"].update(model_type="llama"), r'"text_config.model_type" is \'llama\''),
        (lambda c: c["latent_attention_config"].update(hidden_dim=32), r'"latent_attention_config.hidden_dim" is 32'),
        (lambda c: c["latent_attention_config"].update(num_cross_heads=0), r'"latent_attention_config.num_cross_heads"'),
        (lambda c: c["latent_attention_config"].update(cross_dim_head="wide"), r'"latent_attention_config.cross_dim_head"'),
    ],
)
def test_bad_config_is_refused_at_registration_naming_the_key(tiny, tmp_path, edit, match) -> None:
    path = _copy(tiny[0], tmp_path)
    _edit_config(path, edit)
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match=match):
            pool.register("nv", path)


def test_missing_latent_key_takes_nv_embed_default_and_fails_on_the_tensor_shape(tiny, tmp_path) -> None:
    # num_latents_value defaults to NV-Embed's 512, which the checkpoint's latents do not have:
    # loading fails naming the tensor and its shape.
    path = _copy(tiny[0], tmp_path)
    _edit_config(path, lambda c: c["latent_attention_config"].pop("num_latents_value"))
    with mpool.Pool() as pool:
        pool.register("nv", path)
        with pytest.raises(mpool.SpawnFailed, match=r"latent_attention_model\.latents.*512"):
            pool.embed("nv", ["x"])


@pytest.mark.parametrize(
    "tensor",
    [
        "latent_attention_model.latents",
        "latent_attention_model.cross_attend_blocks.0.fn.to_kv.weight",
        "latent_attention_model.cross_attend_blocks.1.fn.net.0.bias",
        "embedding_model.layers.1.self_attn.k_proj.weight",
    ],
)
def test_missing_tensor_is_refused_naming_it(tiny, tmp_path, tensor) -> None:
    from safetensors.numpy import load_file, save_file

    path = _copy(tiny[0], tmp_path)
    weights = load_file(path / "model.safetensors")
    del weights[tensor]
    save_file(weights, path / "model.safetensors")
    with mpool.Pool() as pool:
        pool.register("nv", path)
        with pytest.raises(mpool.SpawnFailed, match=tensor.replace(".", r"\.")):
            pool.embed("nv", ["x"])


def test_inspect_names_the_nvembed_family_with_text_embedding_only(tiny) -> None:
    path, _, _ = tiny
    info = mpool.inspect(str(path))
    assert info["supported_by"] == ["nvembed"]
    assert info["capabilities"] == ["text_embedding"]
