"""The native jinav3 family (jina-embeddings-v3) against transformers' JinaEmbeddingsV3Model.

The oracle is transformers' own ``JinaEmbeddingsV3Model`` (5.x), built here with
tiny random weights and saved as transformers saves it (model_type
"jina_embeddings_v3"; save_pretrained writes jina's own tensor names, emb_ln and
encoder.layers.N.mixer.Wqkv / out_proj / norm1 / norm2, by reversing transformers'
conversion mapping). That class holds the base model only: a task here chooses
the instruction prefixed to the text (sentence-transformers prompts when the
directory has them, else config.json's ``task_instructions``, as jina's
checkpoints carry); its LoRA task adapters, stored beside it as PEFT saves
them, are tested against PEFT in test_jinav3_adapters.py.

The hub's remote-code layout (model_type "xlm-roberta", "position_embedding_type":
"rotary", stacked LoRA adapters) goes to this family, never to bert as a plain
XLM-R; it is tested against merged-weight references in test_jinav3_adapters.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mpool
import mpool.testing
from corpus import CORPUS
from test_native_bert import _bpe_tokenizer

MAX_POSITIONS = 128
TASKS = {
    "retrieval.query": "Represent the query for retrieving evidence documents: ",
    "retrieval.passage": "Represent the document for retrieval: ",
    "separation": "",
    "classification": "",
    "text-matching": "",
}


def randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random (norm weights around 1), so no term hides behind zeros or ones."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.1 * noise if "norm" in name.lower() and name.endswith("weight") else 0.2 * noise)
    return model.eval()


def build_v3(tmp_path, layers=2, heads=4, hidden=32, act="gelu", theta=20000.0, masked_lm=False,
             sentence_transformers=False, prompts=None, config_edits=None, name=None):
    """A transformers-saved jina_embeddings_v3 directory with a tokenizer; returns
    (directory, the JinaEmbeddingsV3Model oracle, the tokenizer). ``config_edits``
    change config.json after saving (None deletes a key)."""
    import transformers

    tok, specials = _bpe_tokenizer()
    config = transformers.JinaEmbeddingsV3Config(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=hidden * 3, max_position_embeddings=MAX_POSITIONS, hidden_act=act, pad_token_id=1,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    cls = transformers.JinaEmbeddingsV3ForMaskedLM if masked_lm else transformers.JinaEmbeddingsV3Model
    model = randomized(cls(config), seed=layers * 1000 + heads * 100 + hidden)
    d = tmp_path / (name or f"v3-{layers}-{heads}-{hidden}-{act}-{int(theta)}")
    model.save_pretrained(d, safe_serialization=True)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MAX_POSITIONS - 2, **specials)
    fast.save_pretrained(d)
    if config_edits:
        saved = json.loads((d / "config.json").read_text())
        for k, v in config_edits.items():
            if v is None:
                saved.pop(k, None)
            else:
                saved[k] = v
        (d / "config.json").write_text(json.dumps(saved))
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
        (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 100, "do_lower_case": False}))
        (d / "config_sentence_transformers.json").write_text(
            json.dumps({"prompts": prompts or {}, "default_prompt_name": None})
        )
    encoder = model.roberta if masked_lm else model
    return d, encoder, fast


def run_probe(d, batch):
    return mpool.testing.probe(
        "jinav3.last_hidden_state",
        {
            "input_ids": batch["input_ids"].numpy(),
            "token_type_ids": torch.zeros_like(batch["input_ids"]).numpy(),
            "attention_mask": batch["attention_mask"].numpy(),
        },
        path=str(d),
    )["last_hidden_state"]


def oracle_states(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def relative_error(ours, ref, mask):
    return np.abs(ours - ref)[mask].max() / np.abs(ref[mask]).max()


def oracle_embeddings(model, fast, texts, normalize, prompt=""):
    batch = fast([prompt + t for t in texts], padding=True, truncation=True, max_length=100, return_tensors="pt")
    states = oracle_states(model, batch)
    mask = batch["attention_mask"][..., None].float()
    pooled = (states * mask).sum(1) / mask.sum(1)
    return (torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled).numpy()


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


TEXTS = [t for t in CORPUS if t.strip()][:14]


# --- the encoder ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layers", "heads", "hidden", "act", "theta"),
    [(2, 4, 32, "gelu", 20000.0), (1, 2, 24, "relu", 10000.0), (3, 6, 48, "gelu_new", 500.0)],
)
def test_last_hidden_state_of_a_padded_batch_matches_transformers(each_float32_gemm, tmp_path, layers, heads, hidden, act, theta):
    d, model, fast = build_v3(tmp_path, layers, heads, hidden, act, theta)
    texts = TEXTS + ["short", " ".join(CORPUS[:30])]
    batch = fast(texts, padding=True, truncation=True, max_length=100, return_tensors="pt")
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < 16 and batch["input_ids"].shape[1] == 100  # short and long in one padded batch
    mask = batch["attention_mask"].numpy().astype(bool)
    ref = oracle_states(model, batch).numpy()
    assert relative_error(run_probe(d, batch), ref, mask) <= 1e-4


def test_rope_base_is_the_configs_and_defaults_to_20000_without_rope_parameters(tmp_path):
    d, model, fast = build_v3(tmp_path, theta=20000.0, config_edits={"rope_parameters": None})
    batch = fast(TEXTS[:6], padding=True, return_tensors="pt")
    mask = batch["attention_mask"].numpy().astype(bool)
    ref = oracle_states(model, batch).numpy()
    assert relative_error(run_probe(d, batch), ref, mask) <= 1e-4
    # Another base gives other states: the base is really applied.
    config = json.loads((d / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 10.0}
    (d / "config.json").write_text(json.dumps(config))
    assert relative_error(run_probe(d, batch), ref, mask) > 1e-2


def test_a_masked_lm_checkpoint_under_the_roberta_prefix_embeds_with_its_encoder(tmp_path):
    d, encoder, fast = build_v3(tmp_path, masked_lm=True)
    batch = fast(TEXTS[:5], padding=True, return_tensors="pt")
    ref = oracle_states(encoder, batch).numpy()
    assert relative_error(run_probe(d, batch), ref, batch["attention_mask"].numpy().astype(bool)) <= 1e-4
    with mpool.Pool() as pool:
        info = pool.register("v3", d)
        assert info["family"] == "jinav3"
        ours = pool.embed("v3", TEXTS[:5])
    assert cosine(ours, oracle_embeddings(encoder, fast, TEXTS[:5], normalize=False)).min() >= 0.99999


def test_the_modules_own_tensor_names_load_as_well_as_the_saved_ones(tmp_path):
    """save_pretrained writes jina's names (emb_ln, encoder.layers.N.mixer.Wqkv, norm1,
    norm2); a file of the module's state_dict() has transformers' (q/k/v_proj apart)."""
    from safetensors.torch import save_file

    d, model, fast = build_v3(tmp_path)
    saved = json.loads((d / "config.json").read_text())
    own = tmp_path / "own-names"
    own.mkdir()
    (own / "config.json").write_text(json.dumps(saved))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert "layers.0.self_attn.q_proj.weight" in tensors and "embeddings.LayerNorm.weight" in tensors
    save_file(tensors, str(own / "model.safetensors"))
    fast.save_pretrained(own)
    batch = fast(TEXTS[:6] + ["short"], padding=True, return_tensors="pt")
    mask = batch["attention_mask"].numpy().astype(bool)
    ref = oracle_states(model, batch).numpy()
    assert relative_error(run_probe(own, batch), ref, mask) <= 1e-4
    assert relative_error(run_probe(d, batch), ref, mask) <= 1e-4
    from safetensors.numpy import load_file, save_file as save_np

    weights = load_file(own / "model.safetensors")
    del weights["layers.1.self_attn.v_proj.weight"]
    save_np(weights, own / "model.safetensors")
    with pytest.raises(mpool.InvalidInput, match=r"layers\.1\.self_attn\.v_proj\.weight"):
        run_probe(own, batch)


# --- through the pool -------------------------------------------------------------------


def test_sentence_transformers_layout_mean_pools_and_normalizes_like_the_oracle(tmp_path):
    d, model, fast = build_v3(tmp_path, heads=6, hidden=48, sentence_transformers=True)
    texts = TEXTS + [" ".join(CORPUS[:30])]  # the last one is cut at max_seq_length
    with mpool.Pool() as pool:
        assert pool.register("v3", d)["family"] == "jinav3"
        ours = pool.embed("v3", texts)
    ref = oracle_embeddings(model, fast, texts, normalize=True)
    assert ours.shape == ref.shape == (len(texts), 48)
    assert cosine(ours, ref).min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, rtol=1e-5)


def test_sentence_transformers_itself_gives_the_same_embeddings_for_each_prompt(tmp_path):
    from sentence_transformers import SentenceTransformer

    prompts = {"retrieval.query": TASKS["retrieval.query"], "retrieval.passage": TASKS["retrieval.passage"]}
    d, _, _ = build_v3(tmp_path, sentence_transformers=True, prompts=prompts)
    st = SentenceTransformer(str(d), device="cpu")
    with mpool.Pool() as pool:
        pool.register("v3", d)
        plain = pool.embed("v3", TEXTS)
        np.testing.assert_allclose(plain, st.encode(TEXTS), rtol=1e-4, atol=1e-5)
        for task in prompts:
            ours = pool.embed("v3", TEXTS, task=task)
            assert np.abs(ours - plain).max() > 1e-3  # the prompt changes the embedding
            np.testing.assert_allclose(ours, st.encode(TEXTS, prompt_name=task), rtol=1e-4, atol=1e-5)


def test_without_sentence_transformers_files_it_mean_pools_unnormalized(tmp_path):
    d, model, fast = build_v3(tmp_path)
    with mpool.Pool() as pool:
        pool.register("v3", d)
        ours = pool.embed("v3", TEXTS)
    ref = oracle_embeddings(model, fast, TEXTS, normalize=False)
    assert cosine(ours, ref).min() >= 0.99999
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_tasks_come_from_config_task_instructions_without_sentence_transformers_prompts(tmp_path):
    d, model, fast = build_v3(tmp_path, config_edits={"task_instructions": TASKS})
    texts = TEXTS[:4]
    with mpool.Pool() as pool:
        pool.register("v3", d)
        for task, prompt in TASKS.items():
            ours = pool.embed("v3", texts, task=task)
            assert cosine(ours, oracle_embeddings(model, fast, texts, normalize=False, prompt=prompt)).min() >= 0.99999
        assert cosine(pool.embed("v3", texts), oracle_embeddings(model, fast, texts, normalize=False)).min() >= 0.99999
        with pytest.raises(
            mpool.InvalidInput,
            match="unknown task 'query'; this model's tasks: classification, retrieval.passage, retrieval.query, "
            "separation, text-matching",
        ):
            pool.embed("v3", texts, task="query")
        assert pool.embed("v3", ["still healthy"]).shape == (1, 32)


def test_sentence_transformers_prompts_win_over_task_instructions(tmp_path):
    prompts = {"retrieval.query": "query: ", "retrieval.passage": "passage: "}
    d, model, fast = build_v3(tmp_path, sentence_transformers=True, prompts=prompts,
                              config_edits={"task_instructions": TASKS})
    texts = TEXTS[:4]
    with mpool.Pool() as pool:
        pool.register("v3", d)
        ours = pool.embed("v3", texts, task="retrieval.query")
        assert cosine(ours, oracle_embeddings(model, fast, texts, normalize=True, prompt="query: ")).min() >= 0.99999
        with pytest.raises(mpool.InvalidInput, match="unknown task 'separation'"):
            pool.embed("v3", texts, task="separation")


def test_config_matryoshka_dimensions_restrict_the_widths(tmp_path):
    d, model, fast = build_v3(tmp_path, sentence_transformers=True, config_edits={"matryoshka_dimensions": [8, 16, 32]})
    with mpool.Pool() as pool:
        pool.register("v3", d)
        full = pool.embed("v3", TEXTS[:3])
        short = pool.embed("v3", TEXTS[:3], dimensions=16)
        with pytest.raises(mpool.InvalidInput, match="12"):
            pool.embed("v3", TEXTS[:3], dimensions=12)
    ref = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(short, ref, rtol=1e-5, atol=1e-6)


# --- recognition ------------------------------------------------------------------------


def test_inspect_gives_jina_embeddings_v3_to_jinav3_only(tmp_path):
    d, _, _ = build_v3(tmp_path)
    report = mpool.inspect(d)
    assert report["supported_by"] == ["jinav3"]


def hub_remote_code_config(tmp_path):
    """An XLM-R directory whose config.json is written as jinaai/jina-embeddings-v3's is."""
    from test_native_bert import build_tiny

    d, _, _ = build_tiny(tmp_path, "xlm-roberta")
    config = json.loads((d / "config.json").read_text())
    impl = "jinaai/xlm-roberta-flash-implementation"
    config.update({
        "architectures": ["XLMRobertaModel"],
        "auto_map": {
            "AutoConfig": f"{impl}--configuration_xlm_roberta.XLMRobertaFlashConfig",
            "AutoModel": f"{impl}--modeling_lora.XLMRobertaLoRA",
        },
        "position_embedding_type": "rotary",
        "rotary_emb_base": 20000.0,
        "lora_adaptations": list(TASKS),
        "lora_rank": 4,
        "lora_alpha": 1,
        "task_instructions": TASKS,
    })
    (d / "config.json").write_text(json.dumps(config))
    return d


def test_the_hubs_remote_code_config_goes_to_jinav3_not_to_bert_as_a_plain_xlm_roberta(tmp_path):
    d = hub_remote_code_config(tmp_path)
    report = mpool.inspect(d)
    assert report["supported_by"] == ["jinav3"]
    families = {f["name"]: f for f in report["families"]}
    assert "rotary positions is jina-embeddings-v3, not a plain XLM-R" in families["bert"]["reason"]


# --- bad directories --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edits", "match"),
    [
        ({"num_attention_heads": 5}, "hidden_size 32 is not divisible by num_attention_heads 5"),
        ({"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}},
         r"rope_type 'linear'; the jinav3 family takes only 'default'"),
        ({"partial_rotary_factor": 0.5}, r"\"partial_rotary_factor\" must be 1"),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": -1.0}}, r"\"rope_theta\""),
        ({"hidden_act": "swishy"}, r"\"hidden_act\""),
        ({"max_position_embeddings": 0}, "max_position_embeddings"),
        ({"type_vocab_size": "one"}, "type_vocab_size"),
        ({"task_instructions": {"retrieval.query": 3}}, r"\"task_instructions\"\.retrieval\.query must be a string"),
        ({"task_instructions": ["retrieval.query"]}, "task_instructions"),
    ],
)
def test_bad_configs_are_refused_at_registration_naming_the_key(tmp_path, edits, match):
    d, _, _ = build_v3(tmp_path, config_edits=edits)
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match=match):
            pool.register("bad", d)


@pytest.mark.parametrize(
    "tensor",
    ["encoder.layers.1.mlp.fc2.weight", "encoder.layers.0.mixer.Wqkv.bias", "encoder.layers.1.mixer.Wqkv.weight",
     "encoder.layers.0.mixer.out_proj.weight", "encoder.layers.0.norm2.weight", "encoder.layers.1.norm1.bias",
     "emb_ln.weight", "embeddings.token_type_embeddings.weight"],
)
def test_a_missing_tensor_fails_naming_it(tmp_path, tensor):
    from safetensors.numpy import load_file, save_file

    d, _, fast = build_v3(tmp_path)
    weights = load_file(d / "model.safetensors")
    del weights[tensor]
    save_file(weights, d / "model.safetensors")
    with pytest.raises(mpool.InvalidInput, match=tensor.replace(".", r"\.")):
        run_probe(d, fast(["a short text"], return_tensors="pt"))
    with mpool.Pool() as pool:
        pool.register("broken", d)
        with pytest.raises(mpool.SpawnFailed, match=tensor.replace(".", r"\.")):
            pool.embed("broken", ["x"])
