"""Component-by-component parity of mpool.Tokenizer with HF `tokenizers`.

Trained base tokenizers get one component swapped at a time (every split
behaviour, normalizer, decoder, post-processor, added-token option, BPE option),
then both libraries load the same tokenizer.json and must agree.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

import mpool  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from corpus import CORPUS, make_corpus  # noqa: E402

TRAIN = CORPUS + make_corpus(1500, seed=5)
TEXTS = CORPUS[:250] + ["", "  ", "a  b", "x\n\ny", "<mask> hello world World  <mask>", "hello,hello hellos ahello"]


@pytest.fixture(scope="module")
def wordpiece():
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(
        TRAIN, trainers.WordPieceTrainer(vocab_size=1200, special_tokens=["[UNK]", "[CLS]", "[SEP]"], show_progress=False)
    )
    return tok.to_str()


@pytest.fixture(scope="module")
def bytelevel():
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        TRAIN,
        trainers.BpeTrainer(
            vocab_size=1000, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    return tok.to_str()


def assert_parity(hf, tmp_path, texts=TEXTS, pairs=True):
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    hf = tokenizers.Tokenizer.from_file(str(path))
    ours = mpool.Tokenizer.from_file(str(path))
    for text in texts:
        want, got = hf.encode(text), ours.encode(text)
        assert got.ids == want.ids, text
        assert got.tokens == want.tokens, text
        assert [tuple(o) for o in got.offsets] == [tuple(o) for o in want.offsets], text
        assert got.type_ids == want.type_ids, text
        assert got.special_tokens_mask == want.special_tokens_mask, text
        assert ours.decode(want.ids) == hf.decode(want.ids), text
        assert ours.decode(want.ids, skip_special_tokens=False) == hf.decode(want.ids, skip_special_tokens=False), text
    if pairs:
        for a, b in zip(texts[:40], texts[40:80]):
            want, got = hf.encode(a, b), ours.encode(a, pair=b)
            assert (got.ids, got.type_ids) == (want.ids, want.type_ids), (a, b)
            assert [tuple(o) for o in got.offsets] == [tuple(o) for o in want.offsets], (a, b)


BEHAVIORS = ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"]

PRE_TOKENIZERS = {
    **{f"split_string_{b}": pre_tokenizers.Split(" ", behavior=b) for b in BEHAVIORS},
    **{f"split_regex_{b}": pre_tokenizers.Split(Regex(r"\d+|\s+|[,.!?]"), behavior=b) for b in BEHAVIORS},
    **{f"split_regex_inverted_{b}": pre_tokenizers.Split(Regex(r"\w+"), behavior=b, invert=True) for b in BEHAVIORS},
    "digits_contiguous": pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits()]),
    "digits_individual": pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)]
    ),
    "punctuation_merged_with_next": pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="merged_with_next")]
    ),
    "bert": pre_tokenizers.BertPreTokenizer(),
    "whitespace": pre_tokenizers.Whitespace(),
    "whitespace_split": pre_tokenizers.WhitespaceSplit(),
    "metaspace_always_split": pre_tokenizers.Metaspace(prepend_scheme="always", split=True),
    "metaspace_first_split": pre_tokenizers.Metaspace(prepend_scheme="first", split=True),
    "metaspace_never_nosplit": pre_tokenizers.Metaspace(prepend_scheme="never", split=False),
}


@pytest.mark.parametrize("name", sorted(PRE_TOKENIZERS))
def test_pre_tokenizer_variant_matches_hf(wordpiece, tmp_path, name):
    hf = tokenizers.Tokenizer.from_str(wordpiece)
    hf.pre_tokenizer = PRE_TOKENIZERS[name]
    assert_parity(hf, tmp_path)


NORMALIZERS = {
    "nfd": normalizers.NFD(),
    "nfkd": normalizers.NFKD(),
    "nfc": normalizers.NFC(),
    "nfkc": normalizers.NFKC(),
    "lowercase": normalizers.Lowercase(),
    "nfd_strip_accents": normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents()]),
    "strip_left": normalizers.Strip(left=True, right=False),
    "strip_both": normalizers.Strip(),
    "replace_string": normalizers.Replace("e", "EE"),
    "replace_regex": normalizers.Replace(Regex(r"[0-9]+"), "#"),
    "replace_to_empty": normalizers.Replace(Regex(r"\s+"), ""),
    "prepend": normalizers.Prepend("▁"),
    "bert_cased_strip_accents": normalizers.BertNormalizer(lowercase=False, strip_accents=True),
    "bert_no_clean_no_chinese": normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False),
    "sequence": normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Replace(" ", "  ")]),
}


@pytest.mark.parametrize("name", sorted(NORMALIZERS))
def test_normalizer_variant_matches_hf(wordpiece, tmp_path, name):
    hf = tokenizers.Tokenizer.from_str(wordpiece)
    hf.normalizer = NORMALIZERS[name]
    assert_parity(hf, tmp_path)


def test_added_tokens_lstrip_rstrip_single_word_normalized_match_hf(wordpiece, tmp_path):
    hf = tokenizers.Tokenizer.from_str(wordpiece)
    hf.normalizer = normalizers.Lowercase()
    hf.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True), AddedToken("<MSK>", normalized=True)])
    hf.add_tokens([AddedToken("hello", single_word=True), AddedToken("World", normalized=True), "東京"])
    hf.add_tokens([AddedToken("xyz", normalized=False, rstrip=True)])
    assert_parity(hf, tmp_path, texts=TEXTS + ["xyz  abc", "a xyz", "hello東京world", " <mask>  x", "a <MSK> b <msk>"])
    ours = mpool.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for token in ("World", "world", "<MSK>", "<msk>", "xyz", "東京"):
        assert ours.token_to_id(token) == hf.token_to_id(token), token
    for idx in range(hf.get_vocab_size() - 8, hf.get_vocab_size()):
        assert ours.id_to_token(idx) == hf.id_to_token(idx), idx


def test_roberta_processing_with_trimmed_offsets_matches_hf(bytelevel, tmp_path):
    hf = tokenizers.Tokenizer.from_str(bytelevel)
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    hf.post_processor = processors.RobertaProcessing(
        ("</s>", hf.token_to_id("</s>")), ("<s>", hf.token_to_id("<s>")), trim_offsets=True, add_prefix_space=True
    )
    assert_parity(hf, tmp_path)


@pytest.mark.parametrize("use_regex", [True, False])
def test_byte_level_prefix_space_and_use_regex_match_hf(bytelevel, tmp_path, use_regex):
    hf = tokenizers.Tokenizer.from_str(bytelevel)
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=use_regex)
    hf.post_processor = processors.ByteLevel(trim_offsets=True)
    assert_parity(hf, tmp_path)


def test_llama2_style_decoder_chain_matches_hf(tmp_path):
    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.train_from_iterator(
        [t for t in TRAIN if t.isascii()],
        trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>"], show_progress=False),
    )
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    assert_parity(tokenizers.Tokenizer.from_str(json.dumps(data)), tmp_path)


def test_decode_bytes_gives_each_token_s_own_bytes_where_decode_writes_a_replacement(bytelevel, tmp_path):
    # Byte level: a token's bytes through GPT-2's byte table (pre_tokenizers.ByteLevel.alphabet
    # is that table's image); byte fallback: <0xNN> is byte NN. Whole texts decode to their UTF-8.
    path = tmp_path / "tokenizer.json"
    path.write_text(bytelevel)
    ours = mpool.Tokenizer.from_file(str(path))
    table = {ch: b for b, ch in _gpt2_byte_table().items()}
    vocab = json.loads(bytelevel)["model"]["vocab"]
    for token, i in vocab.items():
        assert ours.decode_bytes([i], skip_special_tokens=False) == bytes(table[c] for c in token), token
    text = "naïve café – 日本語 🙂"
    ids = ours.encode(text).ids
    assert b"".join(ours.decode_bytes([i]) for i in ids) == ours.decode_bytes(ids) == text.encode()
    split = [i for i in ids if (b := ours.decode_bytes([i])) and not _valid_utf8(b)]
    assert split and all("\ufffd" in ours.decode([i]) for i in split)  # what decode writes for them

    vocab = {"<unk>": 0, "<0xE2>": 1, "<0x82>": 2, "<0xAC>": 3, "x": 4}
    fallback = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    fallback.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    fallback.save(str(path))
    ours = mpool.Tokenizer.from_file(str(path))
    e2, b82, ac = (ours.token_to_id(t) for t in ("<0xE2>", "<0x82>", "<0xAC>"))
    assert ours.decode_bytes([e2]) == b"\xe2" and ours.decode([e2]) == "\ufffd"
    assert ours.decode_bytes([e2, b82, ac]) == "€".encode() and ours.decode([e2, b82, ac]) == "€"


def _gpt2_byte_table() -> dict[int, str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("fuse_unk", [True, False])
def test_bpe_unk_and_subword_affixes_match_hf(tmp_path, fuse_unk):
    tok = tokenizers.Tokenizer(
        models.BPE(unk_token="[UNK]", fuse_unk=fuse_unk, continuing_subword_prefix="##", end_of_word_suffix="</w>")
    )
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        [t for t in TRAIN if t.isascii()],
        trainers.BpeTrainer(
            vocab_size=700, special_tokens=["[UNK]"], continuing_subword_prefix="##", end_of_word_suffix="</w>",
            show_progress=False,
        ),
    )
    assert_parity(tok, tmp_path)


def _write(tmp_path, data):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def test_malformed_field_error_names_file_and_json_path(wordpiece, tmp_path):
    data = json.loads(wordpiece)
    data["model"]["max_input_chars_per_word"] = "many"
    path = _write(tmp_path, data)
    with pytest.raises(mpool.InvalidInput, match=r"tokenizer\.json.*\$\.model\.max_input_chars_per_word"):
        mpool.Tokenizer.from_file(path)


def test_unsupported_component_error_names_its_type(wordpiece, tmp_path):
    data = json.loads(wordpiece)
    data["pre_tokenizer"] = {"type": "UnicodeScripts"}
    with pytest.raises(mpool.InvalidInput, match="UnicodeScripts"):
        mpool.Tokenizer.from_file(_write(tmp_path, data))


def test_bpe_dropout_is_rejected_with_clear_error(bytelevel, tmp_path):
    data = json.loads(bytelevel)
    data["model"]["dropout"] = 0.1
    with pytest.raises(mpool.InvalidInput, match="dropout"):
        mpool.Tokenizer.from_file(_write(tmp_path, data))


def test_truncated_json_file_is_invalid_input(tmp_path):
    with pytest.raises(mpool.InvalidInput, match="not valid JSON"):
        mpool.Tokenizer.from_file(_write(tmp_path, '{"model": {"type": "BPE", "vocab": {'))


def test_from_pretrained_loads_tokenizer_json_from_directory(wordpiece, tmp_path):
    _write(tmp_path, wordpiece)
    tok = mpool.Tokenizer.from_pretrained(str(tmp_path))
    assert tok.encode("hello world").ids == tokenizers.Tokenizer.from_str(wordpiece).encode("hello world").ids


def test_from_pretrained_without_tokenizer_json_raises_invalid_input_naming_the_file(tmp_path):
    with pytest.raises(mpool.InvalidInput, match="tokenizer.json is missing"):
        mpool.Tokenizer.from_pretrained(str(tmp_path))


def test_invalid_utf8_bytes_raise_invalid_input_naming_the_byte_offset(wordpiece, tmp_path):
    tok = mpool.Tokenizer.from_file(_write(tmp_path, wordpiece))
    with pytest.raises(mpool.InvalidInput, match="byte offset 3"):
        tok.encode(b"abc\xff")
    with pytest.raises(mpool.InvalidInput, match="byte offset 1"):
        tok.encode_batch(["fine", b"x\xc3"])
    assert tok.encode(b"hello world").ids == tok.encode("hello world").ids


def test_lone_surrogate_raises_invalid_input(wordpiece, tmp_path):
    tok = mpool.Tokenizer.from_file(_write(tmp_path, wordpiece))
    with pytest.raises(mpool.InvalidInput, match="not valid UTF-8"):
        tok.encode("ab\ud800")


def test_encode_batch_rejects_non_string_items(wordpiece, tmp_path):
    tok = mpool.Tokenizer.from_file(_write(tmp_path, wordpiece))
    with pytest.raises(mpool.InvalidInput):
        tok.encode_batch(["ok", 3])


# --- arguments of the wrong type -------------------------------------------------


def _minilm_tokenizer() -> mpool.Tokenizer:
    path = mpool.default_embedding_model_path()
    assert path is not None
    return mpool.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))


WRONG_ARGUMENTS = [
    ("from_file", lambda t: mpool.Tokenizer.from_file(3), r"path must be a str or os\.PathLike, got 3 \(int\)"),
    ("from_str", lambda t: mpool.Tokenizer.from_str(b"{}"), r"json must be a str, got b'\{\}' \(bytes\)"),
    ("encode", lambda t: t.encode("a", add_special_tokens="yes"), r"add_special_tokens must be True or False"),
    ("encode_batch", lambda t: t.encode_batch("abc"), r"texts must be a list of str or bytes, got 'abc' \(str\)"),
    ("encode_batch", lambda t: t.encode_batch(["a"], num_threads=-1), r"num_threads must be an int in \[0, 1024\]"),
    ("decode", lambda t: t.decode([1, -1]), r"ids\[1\] must be an int in \[0, 4294967295\], got -1 \(int\)"),
    ("decode", lambda t: t.decode([2**70]), r"ids\[0\] must be an int in \[0, 4294967295\]"),
    ("decode", lambda t: t.decode([1.5]), r"ids\[0\] must be an int .*got 1\.5 \(float\)"),
    ("decode", lambda t: t.decode("abc"), r"ids must be a list of token ids, got 'abc' \(str\)"),
    ("decode", lambda t: t.decode([True]), r"ids\[0\] must be an int .*got True \(bool\)"),
    ("decode_batch", lambda t: t.decode_batch([[1], [None]]), r"sequences\[1\]\[0\] must be an int"),
    ("decode_stream", lambda t: t.decode_stream(skip_special_tokens="x"), r"skip_special_tokens must be True or False"),
    ("decode_stream", lambda t: mpool.Tokenizer.decode_stream(3), r"self must be a Tokenizer, got 3 \(int\)"),
    ("step", lambda t: t.decode_stream().step("x"), r"id must be an int in \[0, 4294967295\], got 'x' \(str\)"),
    ("enable_truncation", lambda t: t.enable_truncation(-1), r"max_length must be an int in \[0, "),
    ("enable_truncation", lambda t: t.enable_truncation(8, strategy=1), r"strategy must be a str, got 1 \(int\)"),
    ("enable_padding", lambda t: t.enable_padding(length=5.0), r"length must be an int in \[0, .*got 5\.0 \(float\)"),
    ("enable_padding", lambda t: t.enable_padding(pad_id=-2), r"pad_id must be an int in \[0, 4294967295\]"),
    ("token_to_id", lambda t: t.token_to_id(5), r"token must be a str, got 5 \(int\)"),
    ("id_to_token", lambda t: t.id_to_token("5"), r"id must be an int .*got '5' \(str\)"),
    ("get_vocab_size", lambda t: t.get_vocab_size(1), r"with_added_tokens must be True or False, got 1 \(int\)"),
    ("encode", lambda t: t.encode("a", foo=1),
     r"Tokenizer\.encode\(\) takes \(text, pair=None, add_special_tokens=True\); got 1 positional argument and the keywords 'foo'"),
    ("encode", lambda t: t.encode(), r"Tokenizer\.encode\(\) takes .*; got 0 positional arguments"),
    ("from_file", lambda t: mpool.Tokenizer.from_file("a", "b"), r"Tokenizer\.from_file\(\) takes \(path\); got 2"),
    ("no_padding", lambda t: t.no_padding(1), r"Tokenizer\.no_padding\(\) takes \(\); got 1 positional argument"),
    ("step", lambda t: t.decode_stream().step(), r"DecodeStream\.step\(\) takes \(id\); got 0"),
]


@pytest.mark.parametrize("call,message", [(c, m) for _, c, m in WRONG_ARGUMENTS],
                         ids=[f"{name}-{i}" for i, (name, _, _) in enumerate(WRONG_ARGUMENTS)])
def test_tokenizer_arguments_of_the_wrong_type_or_shape_are_invalid_input_naming_the_parameter(call, message):
    # Never pybind11's "incompatible function arguments" TypeError; and decode_stream
    # with a bad argument used to crash the process (keep_alive on a failed call).
    tokenizer = _minilm_tokenizer()
    with pytest.raises(mpool.InvalidInput, match=message):
        call(tokenizer)
    assert tokenizer.decode(tokenizer.encode("hello world", add_special_tokens=False).ids) == "hello world"


def test_tokenizer_takes_numpy_integers_and_path_likes_where_it_takes_ints_and_paths(tmp_path):
    import numpy as np
    from pathlib import Path

    path = mpool.default_embedding_model_path()
    assert path is not None
    tokenizer = mpool.Tokenizer.from_file(Path(path) / "tokenizer.json")
    tokenizer.no_padding()  # the bundled file pads to 128
    ids = tokenizer.encode("hello world", add_special_tokens=False).ids
    assert tokenizer.decode(np.array(ids, dtype=np.int64)) == "hello world"
    assert tokenizer.decode(tuple(np.uint32(i) for i in ids)) == "hello world"
    assert tokenizer.id_to_token(np.int32(ids[0])) == "hello"
    stream = tokenizer.decode_stream(skip_special_tokens=False)
    assert "".join(s for s in (stream.step(np.int64(i)) for i in ids) if s) == "hello world"
    tokenizer.enable_padding(length=np.int64(4), pad_id=np.uint8(0))
    assert len(tokenizer.encode("hello").ids) == 4
