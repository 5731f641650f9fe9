"""Tokenizer folders with a tiktoken rank file (tiktoken.model or *.tiktoken: one
"<base64 token bytes> <rank>" per line) and tokenizer_config.json instead of
tokenizer.json, as Kimi-K2's are.

Rank files are made here: a byte-level BPE trained with `tokenizers` (ranks in
training order) and one trained by tiktoken's own educational trainer. The
`tiktoken` package with the same ranks, split pattern and special tokens is the
oracle: ids must be equal on the shared tokenizer corpus, and decoding must give
the text back.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import pytest

tiktoken = pytest.importorskip("tiktoken")
tiktoken_load = pytest.importorskip("tiktoken.load")
tokenizers = pytest.importorskip("tokenizers")

import mpool  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from corpus import CORPUS  # noqa: E402
from two_tower_models import _bytes_to_unicode  # noqa: E402

# transformers' TikTokenConverter default (what mpool uses when nothing names one).
DEFAULT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# A GPT-2-like pattern with a lookahead, to show the configured one is used.
OTHER_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

TEXTS = CORPUS[:300] + [
    "",
    " ",
    "  two  spaces  ",
    "I'M HERE, YOU'LL SEE",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more <|im_end|>",
    "<|im_start <|im_end|",  # look-alikes are plain text
]


def trained_ranks(vocab_size: int = 700) -> dict[bytes, int]:
    """A byte-level BPE trained on the corpus, as tiktoken ranks (training order)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    to_byte = {c: b for b, c in _bytes_to_unicode().items()}
    model = json.loads(tok.to_str())["model"]
    ranks: dict[bytes, int] = {}
    # Single bytes first (in byte order), then each merge's result in merge order.
    for b in range(256):
        ranks[bytes([b])] = b
    for left, right in (m if isinstance(m, list) else m.split(" ") for m in model["merges"]):
        token = bytes(to_byte[c] for c in left + right)
        if token not in ranks:
            ranks[token] = len(ranks)
    return ranks


def write_rank_file(path: Path, ranks: dict[bytes, int]) -> Path:
    lines = [f"{base64.b64encode(t).decode()} {r}" for t, r in sorted(ranks.items(), key=lambda kv: kv[1])]
    path.write_text("\n".join(lines) + "\n")
    return path


def save_tiktoken_folder(
    path: Path,
    ranks: dict[bytes, int],
    *,
    pattern: str | None = None,
    file_name: str = "tiktoken.model",
    extra_config: dict | None = None,
) -> dict[str, int]:
    """A folder with the rank file and tokenizer_config.json (specials in
    added_tokens_decoder, after the ranks); returns the specials' ids."""
    path.mkdir(parents=True, exist_ok=True)
    write_rank_file(path / file_name, ranks)
    base = max(ranks.values()) + 1
    specials = {s: base + i for i, s in enumerate(SPECIALS)}
    config: dict = {
        "tokenizer_class": "TikTokenTokenizer",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "added_tokens_decoder": {
            str(i): {"content": s, "lstrip": False, "rstrip": False, "normalized": False,
                     "single_word": False, "special": True}
            for s, i in specials.items()
        },
    }
    if pattern is not None:
        config["pat_str"] = pattern
    config.update(extra_config or {})
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return specials


def oracle(ranks: dict[bytes, int], pattern: str, specials: dict[str, int]):
    return tiktoken.Encoding("test", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)


def check_parity(ours, ref, texts=TEXTS) -> None:
    for text in texts:
        ids = ref.encode(text, allowed_special="all")
        assert ours.encode(text, add_special_tokens=False).ids == ids, text
        assert ours.decode(ids, skip_special_tokens=False) == ref.decode(ids) == text, text


@pytest.fixture(scope="module")
def ranks() -> dict[bytes, int]:
    return trained_ranks()


@pytest.mark.parametrize("pattern", [DEFAULT_PATTERN, OTHER_PATTERN], ids=["default", "gpt2"])
def test_trained_rank_file_matches_tiktoken(tmp_path: Path, ranks: dict[bytes, int], pattern: str) -> None:
    specials = save_tiktoken_folder(tmp_path, ranks, pattern=pattern)
    # tiktoken's own loader reads the same file back.
    loaded = tiktoken_load.load_tiktoken_bpe(str(tmp_path / "tiktoken.model"))
    assert loaded == ranks
    check_parity(mpool.Tokenizer.from_pretrained(str(tmp_path)), oracle(loaded, pattern, specials))


def test_educational_trainer_ranks_match_tiktoken(tmp_path: Path) -> None:
    from tiktoken import _educational

    data = "\n".join(CORPUS[:60])
    enc = _educational.bpe_train(data=data, vocab_size=300, pat_str=OTHER_PATTERN)
    ranks = dict(enc) if isinstance(enc, dict) else enc
    specials = save_tiktoken_folder(tmp_path, ranks, file_name="model.tiktoken")
    ours = mpool.Tokenizer.from_pretrained(str(tmp_path), tokenizer_pattern=OTHER_PATTERN)
    check_parity(ours, oracle(ranks, OTHER_PATTERN, specials), TEXTS[:150] + TEXTS[300:])


def test_rank_order_not_merge_order_decides(tmp_path: Path) -> None:
    # "ab"+"c" and "a"+"bc" both make "abc"; tiktoken merges the pair whose
    # concatenation ranks lowest, leftmost first among equals.
    ranks = {bytes([b]): b for b in range(256)}
    for t in [b"bc", b"ab", b"abc", b"cab", b"abcab", b"ba", b"aba"]:
        ranks[t] = len(ranks)
    specials = save_tiktoken_folder(tmp_path, ranks, pattern=r"\S+|\s+")
    texts = ["abc", "abcab", "ababa", "cabc", "abcabcab", "babab", "a b c"]
    check_parity(mpool.Tokenizer.from_pretrained(str(tmp_path)), oracle(ranks, r"\S+|\s+", specials), texts)


def test_special_tokens_are_never_split(tmp_path: Path, ranks: dict[bytes, int]) -> None:
    specials = save_tiktoken_folder(tmp_path, ranks, pattern=DEFAULT_PATTERN)
    ours = mpool.Tokenizer.from_pretrained(str(tmp_path))
    ids = ours.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False).ids
    assert ids[0] == specials["<|im_start|>"] and ids[-1] == specials["<|im_end|>"]
    assert ours.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert ours.token_to_id("<|endoftext|>") == specials["<|endoftext|>"]


def test_pattern_option_and_default_with_warning(tmp_path: Path, ranks: dict[bytes, int]) -> None:
    specials = save_tiktoken_folder(tmp_path, ranks)  # no "pat_str"
    default = mpool.Tokenizer.from_pretrained(str(tmp_path))
    check_parity(default, oracle(ranks, DEFAULT_PATTERN, specials), TEXTS[:100])
    given = mpool.Tokenizer.from_pretrained(str(tmp_path), tokenizer_pattern=OTHER_PATTERN)
    check_parity(given, oracle(ranks, OTHER_PATTERN, specials), TEXTS[:100])
    with pytest.raises(mpool.InvalidInput, match=r"option tokenizer_pattern: not a usable split pattern"):
        mpool.Tokenizer.from_pretrained(str(tmp_path), tokenizer_pattern="(unclosed")


def test_config_pattern_comes_before_the_option(
    tmp_path: Path, ranks: dict[bytes, int]
) -> None:
    specials = save_tiktoken_folder(tmp_path, ranks, pattern=OTHER_PATTERN)
    ours = mpool.Tokenizer.from_pretrained(str(tmp_path), tokenizer_pattern=DEFAULT_PATTERN)
    check_parity(ours, oracle(ranks, OTHER_PATTERN, specials), TEXTS[:100])


def test_bad_pattern_in_config_names_the_key(tmp_path: Path, ranks: dict[bytes, int]) -> None:
    save_tiktoken_folder(tmp_path, ranks, pattern="[a-")
    with pytest.raises(mpool.InvalidInput, match=r'tokenizer_config.json: "pat_str": not a usable split pattern'):
        mpool.Tokenizer.from_pretrained(str(tmp_path))


@pytest.mark.parametrize(
    "lines, message",
    [
        (["YQ== 0", "Yg== 1", "Y@== 2"], r"model.tiktoken: line 3: not valid base64: byte 1 is '@'"),
        (["YQ== 0", "Yg== one"], r"model.tiktoken: line 2: rank 'one' is not an integer"),
        (["YQ== 0", "Yg== -1"], r"model.tiktoken: line 2: rank '-1' is not an integer"),
        (["YQ== 0", "Yg== 1", "Yw== 1"], r"model.tiktoken: line 3: rank 1 is also line 2's"),
        (["YQ== 0", "YQ== 1"], r"model.tiktoken: line 2: the token is also line 1's"),
        (["YQ==0"], r"model.tiktoken: line 1 must be base64 token bytes, one space and a rank"),
    ],
)
def test_malformed_rank_file_names_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    (tmp_path / "model.tiktoken").write_text("\n".join(lines) + "\n")
    (tmp_path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(mpool.InvalidInput, match=message):
        mpool.Tokenizer.from_pretrained(str(tmp_path))


def test_added_token_inside_the_ranks_is_refused(tmp_path: Path, ranks: dict[bytes, int]) -> None:
    save_tiktoken_folder(tmp_path, ranks, extra_config={"added_tokens_decoder": {"5": {"content": "<x>"}}})
    with pytest.raises(mpool.InvalidInput, match=r"id 5 is a rank of the rank file"):
        mpool.Tokenizer.from_pretrained(str(tmp_path))


def test_pattern_option_needs_a_rank_file(tmp_path: Path) -> None:
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={"a": 0}, merges=[]))
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(mpool.InvalidInput, match=r"the tokenizer_pattern option applies to a tiktoken rank file"):
        mpool.Tokenizer.from_pretrained(str(tmp_path), tokenizer_pattern=r"\S+")


# --- a decoder model whose tokenizer is a rank file ------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_decoder_with_rank_file_registers_generates_and_streams(
    tmp_path: Path, ranks: dict[bytes, int], pool: mpool.Pool
) -> None:
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    base = max(ranks.values()) + 1
    config = transformers.Qwen2Config(
        vocab_size=base + len(SPECIALS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config).eval()
    model.generation_config = transformers.GenerationConfig(eos_token_id=base + 2, do_sample=False)
    path = tmp_path / "qwen2-tiktoken"
    model.save_pretrained(str(path), safe_serialization=True)
    specials = save_tiktoken_folder(path, ranks, extra_config={"chat_template": CHAT_TEMPLATE})
    assert not (path / "tokenizer.json").exists()

    native = mpool.NativeModel(str(path))
    assert any("default tiktoken pattern" in w for w in native.info["warnings"]), native.info["warnings"]
    quiet = mpool.NativeModel(str(path), options={"tokenizer_pattern": DEFAULT_PATTERN})
    assert not any("default tiktoken pattern" in w for w in quiet.info["warnings"]), quiet.info["warnings"]
    with pytest.raises(mpool.InvalidInput, match=r"not a usable split pattern"):
        mpool.NativeModel(str(path), options={"tokenizer_pattern": "(?<"})

    pool.register("m", path, tokenizer_pattern=DEFAULT_PATTERN)
    with pytest.raises(mpool.InvalidInput, match="not both"):
        pool.register("m2", path, tokenizer_pattern=DEFAULT_PATTERN, options={"tokenizer_pattern": DEFAULT_PATTERN})
    prompt = "The quick brown fox"
    ref_ids = oracle(ranks, DEFAULT_PATTERN, specials).encode(prompt)
    with torch.no_grad():
        out = model.generate(torch.tensor([ref_ids]), do_sample=False, max_new_tokens=12, eos_token_id=None)
    expected = [int(t) for t in out[0, len(ref_ids):]]
    ids: list[int] = []
    text = ""
    for chunk in pool.generate("m", prompt, max_tokens=12, temperature=0, ignore_eos=True):
        ids.extend(chunk.token_ids)
        text += chunk.text
    assert ids == expected
    assert text == mpool.Tokenizer.from_pretrained(str(path)).decode(ids, skip_special_tokens=True)
    chat = "".join(
        c.text for c in pool.chat("m", [{"role": "user", "content": "hi"}], max_tokens=5, temperature=0, ignore_eos=True)
    )
    assert isinstance(chat, str)
    assert pool.render_chat("m", [{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_tokenizer_model_that_is_a_rank_file_loads(tmp_path: Path, ranks: dict[bytes, int]) -> None:
    # transformers reads tokenizer.model as a rank file when it is not SentencePiece's.
    specials = save_tiktoken_folder(tmp_path, ranks, pattern=DEFAULT_PATTERN, file_name="tokenizer.model")
    check_parity(mpool.Tokenizer.from_pretrained(str(tmp_path)), oracle(ranks, DEFAULT_PATTERN, specials), TEXTS[:50])


def test_several_tiktoken_files_are_ambiguous(tmp_path: Path, ranks: dict[bytes, int]) -> None:
    save_tiktoken_folder(tmp_path, ranks, file_name="a.tiktoken")
    write_rank_file(tmp_path / "b.tiktoken", ranks)
    with pytest.raises(mpool.InvalidInput, match=r"several tiktoken rank files \(a.tiktoken, b.tiktoken\)"):
        mpool.Tokenizer.from_pretrained(str(tmp_path))


def test_kimi_k2_style_directory_registers_chats_and_streams(
    tmp_path: Path, ranks: dict[bytes, int], pool: mpool.Pool
) -> None:
    # Kimi-K2's shape: a kimi_k2 config naming DeepseekV3ForCausalLM, a tiktoken
    # rank file with its own split pattern, specials and a chat template.
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from decoder_models import _DEEPSEEK

    base = max(ranks.values()) + 1
    config = transformers.DeepseekV3Config(
        vocab_size=base + len(SPECIALS), hidden_size=64, intermediate_size=96, num_attention_heads=4,
        max_position_embeddings=256, tie_word_embeddings=False, **_DEEPSEEK,
    )
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(config).eval()
    with torch.no_grad():  # a bias that matters, as in a trained model
        for layer in model.model.layers[config.first_k_dense_replace:]:
            layer.mlp.gate.e_score_correction_bias.normal_(0.0, 0.1)
    path = tmp_path / "kimi"
    model.save_pretrained(str(path), safe_serialization=True)
    saved = json.loads((path / "config.json").read_text())
    saved.update(model_type="kimi_k2", architectures=["DeepseekV3ForCausalLM"])
    (path / "config.json").write_text(json.dumps(saved))
    specials = save_tiktoken_folder(path, ranks, pattern=OTHER_PATTERN, extra_config={"chat_template": CHAT_TEMPLATE})

    info = pool.register("kimi", path)
    assert not any("default tiktoken pattern" in w for w in info["warnings"]), info["warnings"]
    prompt = "The quick brown fox"
    ref_ids = oracle(ranks, OTHER_PATTERN, specials).encode(prompt)
    with torch.no_grad():
        out = model.generate(torch.tensor([ref_ids]), do_sample=False, max_new_tokens=10, eos_token_id=None)
    expected = [int(t) for t in out[0, len(ref_ids):]]
    chunks = list(pool.generate("kimi", prompt, max_tokens=10, temperature=0, ignore_eos=True))
    assert len(chunks) > 1  # streamed
    assert [t for c in chunks for t in c.token_ids] == expected
    chat_ids = oracle(ranks, OTHER_PATTERN, specials).encode(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", allowed_special="all"
    )
    with torch.no_grad():
        out = model.generate(torch.tensor([chat_ids]), do_sample=False, max_new_tokens=5, eos_token_id=None)
    reply = [t for c in pool.chat("kimi", [{"role": "user", "content": "hi"}], max_tokens=5, temperature=0,
                                  ignore_eos=True) for t in c.token_ids]
    assert reply == [int(t) for t in out[0, len(chat_ids):]]


def test_a_tokenizer_pattern_that_is_not_a_str_is_invalid_input(tmp_path: Path) -> None:
    with pytest.raises(mpool.InvalidInput, match=r"tokenizer_pattern must be a str, got 3 \(int\)"):
        mpool.Tokenizer.from_pretrained(str(tmp_path), tokenizer_pattern=3)
    with pytest.raises(mpool.InvalidInput, match=r"dir_or_repo_id must be a str or os.PathLike, got 3 \(int\)"):
        mpool.Tokenizer.from_pretrained(3)


def test_from_pretrained_takes_a_path_object(tmp_path: Path, ranks: dict[bytes, int]) -> None:
    specials = save_tiktoken_folder(tmp_path, ranks, pattern=OTHER_PATTERN)
    check_parity(mpool.Tokenizer.from_pretrained(tmp_path), oracle(ranks, OTHER_PATTERN, specials), TEXTS[:20])
