"""The native BERT family against sentence-transformers and transformers (the oracles)."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest

import mpool
import mpool.testing
from corpus import CORPUS

MINILM = mpool.default_embedding_model_path()


def cosine(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def minilm_reference():
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(MINILM, device="cpu")


def test_real_minilm_matches_sentence_transformers_on_the_corpus(minilm_reference):
    texts = [t for t in CORPUS if t.strip()]  # sentence-transformers embeds "" too; we refuse it (tested below)
    assert len(texts) >= 500
    with mpool.Pool() as pool:
        pool.register("minilm", MINILM)
        ours = pool.embed("minilm", texts)
    ref = minilm_reference.encode(texts, batch_size=64, convert_to_numpy=True)
    assert ours.shape == ref.shape == (len(texts), 384)
    assert cosine(ours, ref).min() >= 0.99999
    assert np.abs(ours - ref).max() <= 1e-5


def test_minilm_results_are_identical_together_one_by_one_and_from_16_threads():
    texts = [t for t in CORPUS[:96] if t.strip()]
    with mpool.Pool() as pool:
        pool.register("minilm", MINILM)
        together = pool.embed("minilm", texts)
        one_by_one = np.concatenate([pool.embed("minilm", [t]) for t in texts])
        threaded = [None] * len(texts)

        def worker(k):
            for i in range(k, len(texts), 16):
                threaded[i] = pool.embed("minilm", [texts[i]])

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # Padding differs between batches; the embeddings must not care beyond float noise.
    np.testing.assert_allclose(together, one_by_one, atol=2e-6)
    np.testing.assert_allclose(together, np.concatenate(threaded), atol=2e-6)


# --- tiny random models built here --------------------------------------------------


def _wordpiece_tokenizer(lowercase=True):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        CORPUS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"], show_progress=False)
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    return tok, dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]")


def _bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False)
    )
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
    return tok, dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", cls_token="<s>", sep_token="</s>")


def build_tiny(tmp_path, model_type, layers=2, heads=4, hidden=32, pooling=None, normalize=False, prompts=None, act="gelu"):
    """A random transformers model + tokenizer saved as a (sentence-transformers) directory."""
    import torch
    import transformers

    torch.manual_seed(hash((model_type, layers, heads, hidden)) % 2**31)
    tok, specials = _wordpiece_tokenizer() if model_type == "bert" else _bpe_tokenizer()
    common = dict(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=hidden * 3, max_position_embeddings=128, hidden_act=act,
    )
    if model_type == "bert":
        model = transformers.BertModel(transformers.BertConfig(type_vocab_size=2, **common), add_pooling_layer=False)
    elif model_type == "roberta":
        model = transformers.RobertaModel(transformers.RobertaConfig(pad_token_id=1, type_vocab_size=1, **common), add_pooling_layer=False)
    else:
        model = transformers.XLMRobertaModel(transformers.XLMRobertaConfig(pad_token_id=1, type_vocab_size=1, **common), add_pooling_layer=False)
    model.eval()
    d = tmp_path / f"{model_type}-{layers}-{heads}-{hidden}"
    model.save_pretrained(d, safe_serialization=True)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=126, **specials)
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


@pytest.mark.parametrize(
    ("model_type", "layers", "heads", "hidden", "act"),
    [
        ("bert", 1, 2, 16, "gelu"),
        ("bert", 3, 4, 32, "gelu_new"),
        ("roberta", 2, 4, 32, "gelu"),
        ("xlm-roberta", 2, 2, 24, "relu"),
    ],
)
def test_tiny_random_encoder_last_hidden_state_matches_transformers(each_float32_gemm, tmp_path, model_type, layers, heads, hidden, act):
    import torch

    d, model, fast = build_tiny(tmp_path, model_type, layers, heads, hidden, act=act)
    texts = CORPUS[:12]
    pairs = CORPUS[12:24]
    batch = fast(texts, pairs if model_type == "bert" else None, padding=True, truncation=True, max_length=60, return_tensors="pt")
    types = batch.get("token_type_ids", torch.zeros_like(batch["input_ids"]))
    with torch.no_grad():
        ref = model(**batch).last_hidden_state.numpy()
    ours = mpool.testing.probe(
        "bert.last_hidden_state",
        {
            "input_ids": batch["input_ids"].numpy(),
            "token_type_ids": types.numpy(),
            "attention_mask": batch["attention_mask"].numpy(),
        },
        path=str(d),
    )["last_hidden_state"]
    mask = batch["attention_mask"].numpy().astype(bool)  # padded positions are not compared
    rel = np.abs(ours - ref)[mask].max() / np.abs(ref[mask]).max()
    assert rel <= 1e-4


@pytest.mark.parametrize("pooling", ["cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "lasttoken"])
@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_every_pooling_mode_matches_sentence_transformers(tmp_path, model_type, pooling):
    from sentence_transformers import SentenceTransformer

    d, _, _ = build_tiny(tmp_path, model_type, pooling=pooling, normalize=pooling == "mean_tokens")
    texts = [t for t in CORPUS[:40] if t.strip()]
    ref = SentenceTransformer(str(d), device="cpu").encode(texts, convert_to_numpy=True)
    with mpool.Pool() as pool:
        pool.register("tiny", d)
        ours = pool.embed("tiny", texts)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pad_token_id", [1, 0, 5, "absent"])
def test_roberta_positions_skip_every_pad_token_id_as_transformers_numbers_them(tmp_path, pad_token_id):
    # transformers numbers roberta positions from input_ids != pad_token_id: the pad
    # token written in a text, or a config pad id that real inputs use (0 is <s>), takes
    # the padding position. A config without the key means RobertaConfig's 1.
    from sentence_transformers import SentenceTransformer

    d, _, _ = build_tiny(tmp_path, "roberta", pooling="mean_tokens")
    config = json.loads((d / "config.json").read_text())
    if pad_token_id == "absent":
        del config["pad_token_id"]
    else:
        config["pad_token_id"] = pad_token_id
    (d / "config.json").write_text(json.dumps(config))
    texts = ["hello <pad> world of cats", "the <pad> <pad> train", "a plain sentence", CORPUS[3]]
    ref = SentenceTransformer(str(d), device="cpu").encode(texts, convert_to_numpy=True)
    with mpool.Pool() as pool:
        pool.register("tiny", d)
        np.testing.assert_allclose(pool.embed("tiny", texts), ref, rtol=1e-4, atol=1e-5)


def test_prompts_are_selected_by_task_like_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    prompts = {"query": "query: ", "document": "passage: "}
    d, _, _ = build_tiny(tmp_path, "bert", pooling="mean_tokens", prompts=prompts)
    st = SentenceTransformer(str(d), device="cpu")
    texts = ["how do magnets work", "magnets attract iron"]
    with mpool.Pool() as pool:
        pool.register("tiny", d)
        for task in prompts:
            np.testing.assert_allclose(
                pool.embed("tiny", texts, task=task), st.encode(texts, prompt_name=task), rtol=1e-4, atol=1e-5
            )
        with pytest.raises(mpool.InvalidInput, match="unknown task 'summary'; this model's tasks: document, query"):
            pool.embed("tiny", texts, task="summary")
        assert pool.embed("tiny", ["still healthy"]).shape == (1, 32)


def test_long_text_is_truncated_or_refused_with_truncate_false(tmp_path):
    from sentence_transformers import SentenceTransformer

    d, _, _ = build_tiny(tmp_path, "bert", pooling="mean_tokens")
    long_text = " ".join(CORPUS[:30])  # far beyond max_seq_length 64
    with mpool.Pool() as pool:
        pool.register("tiny", d)
        np.testing.assert_allclose(
            pool.embed("tiny", [long_text]), SentenceTransformer(str(d), device="cpu").encode([long_text]), rtol=1e-4, atol=1e-5
        )
        with pytest.raises(mpool.InvalidInput, match=r"text #1 has \d+ tokens; the model takes at most 64"):
            pool.embed("tiny", ["short", long_text], truncate=False)
        assert pool.embed("tiny", ["short"], truncate=False).shape == (1, 32)


def test_bad_inputs_give_typed_errors_and_the_pool_stays_healthy():
    with mpool.Pool() as pool:
        pool.register("minilm", MINILM)
        for bad, match in [([], "texts is empty"), ([3], r"texts\[0\] must be a str"), (None, "texts must be")]:
            with pytest.raises(mpool.InvalidInput, match=match):
                pool.embed("minilm", bad)
        with pytest.raises(mpool.InvalidInput, match="text #1 is empty"):
            pool.embed("minilm", ["fine", ""])
        with pytest.raises(mpool.InvalidInput, match="unknown task 'query'; this model's tasks: none"):
            pool.embed("minilm", ["x"], task="query")
        assert pool.embed("minilm", ["still healthy"]).shape == (1, 384)


def test_context_length_on_a_model_that_generates_no_text_is_invalid_input_not_ignored():
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match=r"context_length applies to models that generate text; the bert family"):
            pool.register("minilm", MINILM, context_length=4)
        pool.register("minilm", MINILM)
        assert pool.embed("minilm", ["fine"]).shape == (1, 384)


def test_directory_with_a_missing_tensor_fails_to_spawn_naming_it(tmp_path):
    from safetensors.numpy import load_file, save_file

    d, _, _ = build_tiny(tmp_path, "bert", pooling="mean_tokens")
    weights = load_file(d / "model.safetensors")
    del weights["encoder.layer.0.attention.self.key.weight"]
    save_file(weights, d / "model.safetensors")
    with mpool.Pool() as pool:
        pool.register("broken", d)
        with pytest.raises(mpool.SpawnFailed, match="encoder.layer.0.attention.self.key.weight"):
            pool.embed("broken", ["x"])


def test_unsupported_model_type_is_refused_at_registration(tmp_path):
    d, _, _ = build_tiny(tmp_path, "bert")
    config = json.loads((d / "config.json").read_text())
    config["model_type"] = "mamba"
    (d / "config.json").write_text(json.dumps(config))
    with mpool.Pool() as pool:
        with pytest.raises(mpool.InvalidInput, match="no native family supports model_type 'mamba'"):
            pool.register("m", d)


def test_inspect_reports_the_bert_family_for_minilm():
    report = mpool.inspect(MINILM)
    assert any(f["name"] == "bert" and f["supported"] for f in report["families"])


def test_cli_embed_uses_the_bundled_model_by_default(capsys):
    from mpool.__main__ import main

    assert main(["embed", "hello world", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["embeddings"]) == 1 and len(out["embeddings"][0]) == 384
    assert os.path.samefile(out["model"], MINILM)


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--dimensions", "0"], "mpool: InvalidInput: --dimensions must be an int in [1, "),
        (["--dimensions", "1000"], "mpool: InvalidInput: --dimensions=1000 is more than the model's 384"),
        (["--dtype", "int4"], "mpool: InvalidInput: --dtype 'int4' is not supported"),
        (["--task", "nope"], "mpool: InvalidInput: unknown task 'nope'"),  # not leading: the word stays
    ],
)
def test_cli_errors_name_the_flag_not_the_python_parameter(capsys, flags, said):
    from mpool.__main__ import main

    assert main(["embed", "hello", *flags]) == 1
    assert capsys.readouterr().err.startswith(said)


def test_cli_ctrl_c_exits_130_and_a_closed_pipe_141_without_a_traceback(capsys, monkeypatch):
    import subprocess
    import sys

    from mpool.__main__ import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mpool.Pool, "embed", interrupted)
    assert main(["embed", "hello"]) == 130
    assert "Traceback" not in capsys.readouterr().err
    monkeypatch.undo()
    # A reader that stops after the first bytes (`| head -c 1`): far more than a pipe holds (64 KiB) follows.
    texts = [f"text number {i}" for i in range(2500)]
    with subprocess.Popen([sys.executable, "-m", "mpool", "embed", *texts], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout.read(1)
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=300) == 141 and "Traceback" not in err, err


def test_bfloat16_replicas_stay_close_to_float32():
    texts = [t for t in CORPUS[:32] if t.strip()]
    with mpool.Pool() as pool:
        pool.register("fp32", MINILM)
        pool.register("bf16", MINILM, dtype="bfloat16")
        full, half = pool.embed("fp32", texts), pool.embed("bf16", texts)
    assert half.dtype == np.float32
    assert cosine(full, half).min() >= 0.99


def test_register_by_repo_id_from_the_local_hf_cache(tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "abc123"
    snapshot.parent.mkdir(parents=True)
    os.symlink(MINILM, snapshot)  # huggingface_hub lays snapshots out as links too
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with mpool.Pool() as pool:
        info = pool.register("minilm", "sentence-transformers/all-MiniLM-L6-v2")
        assert info["family"] == "bert"
        assert pool.embed("minilm", ["hello"]).shape == (1, 384)
        with pytest.raises(mpool.InvalidInput, match="acme/nothing"):
            pool.register("missing", "acme/nothing")
