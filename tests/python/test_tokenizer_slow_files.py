"""Tokenizer folders without tokenizer.json: byte-level BPE tokenizers saved as
vocab.json + merges.txt + tokenizer_config.json (+ special_tokens_map.json), as
the CLIP tokenizers of Stable Diffusion, SDXL and FLUX repositories are.

Each tokenizer is built here with transformers, saved, stripped of tokenizer.json
and reloaded by transformers from the slow files (the oracle); mpool converts the
same files natively and must give the same ids and decoded text on a varied corpus.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

import mpool  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from corpus import CORPUS  # noqa: E402
from two_tower_models import clip_tokenizer, save_clip  # noqa: E402

TEXTS = CORPUS[:300] + [
    "",
    " ",
    "A photo of THE cat!!",
    "<|startoftext|>a dog<|endoftext|>",
    "it's the 2nd car's",
    "fill the <mask> in",
    # Separators Python's str.strip() counts as whitespace, and Unicode spaces.
    "a cat\x1c",
    "\x1fdog\x1e",
    "x\u0085 \u2028",
    "a\u00a0b\u3000",
]


def save_slow(tok, path: Path, *, config: dict | None = None, special_tokens_map: dict | None = None) -> Path:
    """Saves `tok` to `path` as slow files only: vocab.json and merges.txt written by
    the BPE model, tokenizer_config.json (updated with `config`), no tokenizer.json."""
    path.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(path)
    tok.backend_tokenizer.model.save(str(path))
    (path / "tokenizer.json").unlink()
    if config:
        settings = json.loads((path / "tokenizer_config.json").read_text())
        settings.update(config)
        (path / "tokenizer_config.json").write_text(json.dumps(settings))
    if special_tokens_map is not None:
        (path / "special_tokens_map.json").write_text(json.dumps(special_tokens_map))
    return path


def _trained_bpe(specials):
    """vocab and merges of a byte-level BPE trained here on the corpus (1000 tokens)."""
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=specials,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(CORPUS, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


def gpt2_tokenizer():
    """A GPT2Tokenizer over a BPE trained on the corpus."""
    vocab, merges = _trained_bpe(["<|endoftext|>"])
    return transformers.GPT2Tokenizer(vocab=vocab, merges=merges)


def roberta_tokenizer():
    """A RobertaTokenizer over a BPE trained on the corpus, with RoBERTa's specials."""
    vocab, merges = _trained_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    return transformers.RobertaTokenizer(vocab=vocab, merges=merges)


# SD3 / SDXL tokenizer folders write the special tokens as AddedToken objects in
# both files; tokenizer_2 of SDXL pads with "!".
SD_ADDED = {
    "540": {"content": "<|startoftext|>", "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False, "special": True},
    "541": {"content": "<|endoftext|>", "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True},
}


def _token(content, normalized):
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False, "single_word": False}


SD_MAP = {
    "bos_token": _token("<|startoftext|>", True),
    "eos_token": _token("<|endoftext|>", True),
    "pad_token": "!",
    "unk_token": _token("<|endoftext|>", True),
}

CLIP_FOLDERS = {
    "save_pretrained": dict(),
    "sdxl-tokenizer_2": dict(
        config={"added_tokens_decoder": SD_ADDED, "pad_token": "!", "do_lower_case": True, "model_max_length": 77},
        special_tokens_map=SD_MAP,
    ),
}

GPT2_FOLDERS = {
    "save_pretrained": dict(),
    "prefix-space-and-bos": dict(config={"add_prefix_space": True, "add_bos_token": True}),
}


def assert_same_as_transformers(path: Path):
    ref = transformers.AutoTokenizer.from_pretrained(str(path))
    ours = mpool.Tokenizer.from_pretrained(str(path))
    for text in TEXTS:
        ids = ref(text)["input_ids"]
        assert ours.encode(text).ids == ids, text
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), text
    assert ours.encode("a photo", "of a cat").ids == ref("a photo", "of a cat")["input_ids"]


@pytest.mark.parametrize("folder", list(CLIP_FOLDERS))
def test_clip_tokenizer_from_vocab_and_merges_encodes_and_decodes_the_corpus_like_transformers(folder, tmp_path):
    tok = clip_tokenizer()
    path = save_slow(tok, tmp_path / folder, **CLIP_FOLDERS[folder])
    assert not (path / "tokenizer.json").exists()
    assert_same_as_transformers(path)


def test_clip_slow_files_give_the_ids_of_the_in_memory_tokenizer(tmp_path):
    tok = clip_tokenizer()
    ours = mpool.Tokenizer.from_pretrained(str(save_slow(tok, tmp_path)))
    for text in TEXTS:
        assert ours.encode(text).ids == tok(text)["input_ids"], text


@pytest.mark.parametrize("folder", list(GPT2_FOLDERS))
def test_gpt2_tokenizer_from_vocab_and_merges_encodes_and_decodes_the_corpus_like_transformers(folder, tmp_path):
    path = save_slow(gpt2_tokenizer(), tmp_path / folder, **GPT2_FOLDERS[folder])
    assert_same_as_transformers(path)


def test_roberta_tokenizer_from_vocab_and_merges_encodes_and_decodes_the_corpus_like_transformers(tmp_path):
    assert_same_as_transformers(save_slow(roberta_tokenizer(), tmp_path))


def test_tokenizer_json_is_used_first_when_both_forms_are_present(tmp_path):
    tok = clip_tokenizer()
    path = save_slow(tok, tmp_path)
    # A different tokenizer.json next to the slow files wins.
    gpt2_tokenizer().backend_tokenizer.save(str(path / "tokenizer.json"))
    ours = mpool.Tokenizer.from_pretrained(str(path))
    assert ours.encode("Hello there").ids == tokenizers.Tokenizer.from_file(str(path / "tokenizer.json")).encode(
        "Hello there"
    ).ids


def test_an_unsupported_tokenizer_class_is_invalid_input_naming_folder_and_class(tmp_path):
    path = save_slow(clip_tokenizer(), tmp_path, config={"tokenizer_class": "BertTokenizer"})
    with pytest.raises(mpool.InvalidInput, match=r"tokenizer_class 'BertTokenizer'") as info:
        mpool.Tokenizer.from_pretrained(str(path))
    assert str(path) in str(info.value)


def test_slow_files_without_tokenizer_config_are_invalid_input_naming_the_file(tmp_path):
    path = save_slow(clip_tokenizer(), tmp_path)
    (path / "tokenizer_config.json").unlink()
    with pytest.raises(mpool.InvalidInput, match=r"tokenizer_config.json is missing"):
        mpool.Tokenizer.from_pretrained(str(path))


def test_native_clip_with_a_slow_tokenizer_embeds_texts_like_with_tokenizer_json(tmp_path):
    path = tmp_path / "clip"
    _, tok, _ = save_clip(path)
    texts = ["a photo of a cat", "The big RED house, on the tree!", "dog"]
    with mpool.Pool() as pool:
        pool.register("json", str(path))
        ref = pool.embed("json", texts, normalize=False)
    save_slow(tok, path)
    assert not (path / "tokenizer.json").exists()
    with mpool.Pool() as pool:
        pool.register("slow", str(path))
        ours = pool.embed("slow", texts, normalize=False)
    np.testing.assert_array_equal(ours, ref)


def test_native_sd3_with_slow_clip_tokenizers_draws_the_image_diffusers_draws(tmp_path):
    """SD3 repositories ship tokenizer/ and tokenizer_2/ as slow files only."""
    import torch
    from sd3_models import sd3_pipeline

    pipe = sd3_pipeline(t5=False)
    pipe.save_pretrained(tmp_path)
    for folder, tok in (("tokenizer", pipe.tokenizer), ("tokenizer_2", pipe.tokenizer_2)):
        save_slow(tok, tmp_path / folder)
        assert not (tmp_path / folder / "tokenizer.json").exists()
    prompt, size = "A Photo of THE cat, on a HOUSE!", 32
    latents = torch.randn(1, 4, size // 4, size // 4, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = pipe(prompt, height=size, width=size, output_type="np", latents=latents, num_inference_steps=3,
                   guidance_scale=4.0).images[0]
    with mpool.Pool(request_timeout=120.0) as pool:
        pool.register("sd3", mpool.NativeModel(str(tmp_path)))
        ours = pool.generate_image("sd3", prompt, width=size, height=size, output_type="np", steps=3,
                                   guidance_scale=4.0, latents=latents.numpy()).result()
    assert float(np.std(ref)) > 1e-3
    assert float(np.max(np.abs(ours.astype(np.float64) - ref))) <= 1e-3
