"""Oniguruma's Ruby-syntax regex semantics and HF's single_word rule, against HF `tokenizers`.

HF compiles Split/Replace patterns with Oniguruma; mpool translates them to PCRE2.
Each case below differed before the translation learned it: line anchors, script
properties (Script, not Script_Extensions), \\w inside a bracket class, \\h and \\v.
"""

from __future__ import annotations

import pytest
import tokenizers
from tokenizers import AddedToken, Regex, models, normalizers, pre_tokenizers

import mpool


def replaced(pattern: str, text: str) -> tuple[str, str]:
    """What HF and mpool make of ``text`` under Replace(pattern -> "X"), spelled by a char-level BPE."""
    vocab = {c: i for i, c in enumerate(sorted(set(text) | {"X"}))}
    hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[]))
    hf.normalizer = normalizers.Replace(Regex(pattern), "X")
    ours = mpool.Tokenizer.from_str(hf.to_str())
    return "".join(hf.encode(text).tokens), "".join(ours.encode(text).tokens)


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        (r"\s+$", "ab  \ncd  "),  # $ ends every line
        (r"^\s+", "  ab\n  cd\n"),  # ^ starts every line, also after a final newline
        (r"$", "a\nb"),
        (r"^", "a\n\nb\n"),
        (r"^.*$", "ab\ncd\n"),
        (r"\n^", "a\n\nb\n"),
        (r"[^\w\s]", "x² ½ ³¼ y!"),  # \w inside a class leaves out superscript and fraction digits
        (r"[\w]+", "x²y ½"),
        (r"[\W]+", "x²y ½!"),
        (r"\w+", "x²y ½"),
        (r"\p{Han}+", "中文。「東京」、"),  # Script, not Script_Extensions: the punctuation is Common
        (r"[\p{Han}]+", "中文。「東京」"),
        (r"[^\p{Han}]+", "中文。「東京」ab"),
        (r"\p{Arabic}+", "مَرْحَبًا، عالم"),
        (r"\p{Hiragana}+|\p{Katakana}+", "ひらがな・カタカナー。"),
        (r"\p{Latin}+", "naïve ﬁ ª º Ａｂ"),
        (r"\p{Common}+", "a1 ,。!"),
        (r"\P{Greek}+", "αβγ abc ΩΣ"),
        (r"\h+", "a 9f G"),  # \h is a hex digit
        (r"[\h]+", "a 9f G"),
        (r"\H+", "a 9f G"),
        (r"[^\H]+", "a 9f G"),
        (r"\v", "a\nb\x0bc\x0cd"),  # \v is U+000B only
        # Class intersection (&&) and nested classes, which PCRE2 10.42 reads otherwise.
        (r"[\p{L}&&[^a-z]]+", "abcDEF中文 xyZ"),
        (r"[a-z&&[^aeiou]]+", "hello world"),
        (r"[^a-z&&[^aeiou]]+", "hello world"),
        (r"[a[0-9]]+", "a1b2 c3"),
        (r"[[:alpha:]&&[^a]]+", "banana split"),
        (r"[\w&&\D]+", "ab12_c³"),
        (r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+", "Hello 世界 Ölçü ひらがな"),
        (r"[]a&&[^b]]+", "]a]b"),
    ],
)
def test_replace_pattern_matches_as_oniguruma_does(pattern, text):
    want, got = replaced(pattern, text)
    assert got == want


SCRIPTS = ["Han", "Arabic", "Latin", "Cyrillic", "Greek", "Common", "Inherited", "Hiragana", "Katakana", "Hangul",
           "Thai", "Devanagari", "Hebrew", "Ethiopic"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_property_covers_the_same_code_points_as_hf_in_the_bmp(script):
    text = "".join(chr(c) for c in range(0x20, 0x10000) if not 0xD800 <= c <= 0xDFFF)
    hf = tokenizers.Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(rf"\p{{{script}}}+"), behavior="isolated")
    ours = mpool.Tokenizer.from_str(hf.to_str())
    assert ours.encode(text).offsets == hf.encode(text).offsets


@pytest.mark.parametrize("neighbour", ["न", "\u093e", "\u0e31", "\u05b8", "\u24d0", "\u0345", "x", "_", "5", "²", " ", "!", "\u3002"])
def test_single_word_added_token_sees_word_characters_as_hf_does(neighbour):
    hf = tokenizers.Tokenizer(models.WordPiece({"[UNK]": 0, "x": 1}, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.add_tokens([AddedToken("<tok>", single_word=True)])
    ours = mpool.Tokenizer.from_str(hf.to_str())
    for text in (f"{neighbour}<tok>", f"<tok>{neighbour}", f"a {neighbour}<tok> b"):
        assert ours.encode(text).ids == hf.encode(text).ids, text


@pytest.mark.parametrize("text", ["a中文", "中", "x 中y文z", "東京, 大阪"])
def test_bert_normalizer_chinese_spacing_keeps_hf_offsets(text):
    vocab = {"<unk>": 0, "▁": 1, "a": 2, "▁中": 3, "▁文": 4, "▁a": 5}
    hf = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="<unk>", continuing_subword_prefix="##"))
    hf.normalizer = normalizers.BertNormalizer(handle_chinese_chars=True, lowercase=False, strip_accents=False)
    hf.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never", split=True)
    ours = mpool.Tokenizer.from_str(hf.to_str())
    h, o = hf.encode(text), ours.encode(text)
    assert (o.ids, [tuple(x) for x in o.offsets]) == (h.ids, h.offsets)


# Kimi-K2's split pattern: scripts, class intersection, case-insensitive groups.
KIMI = "|".join([
    r"[\p{Han}]+",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}", r" ?[^\s\p{L}\p{N}]+[\r\n]*", r"\s*[\r\n]+", r"\s+(?!\S)", r"\s+",
])


def test_a_bpe_trained_with_kimi_k2s_split_pattern_gives_hf_ids_on_the_corpus():
    from tokenizers import decoders, trainers

    from corpus import CORPUS

    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(KIMI), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=800, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    ours = mpool.Tokenizer.from_str(hf.to_str())
    texts = list(CORPUS) + ["我爱你。你好、世界「東京」", "Hello World", "naïve Ölçü", "I'M here, you'RE there"]
    assert [e.ids for e in ours.encode_batch(texts)] == [e.ids for e in hf.encode_batch(texts)]


def test_regex_classes_nested_too_deep_are_invalid_input_naming_the_offset():
    hf = tokenizers.Tokenizer(models.BPE(vocab={"a": 0}, merges=[]))
    hf.normalizer = normalizers.Replace(Regex("x" + "[" * 40 + "a" + "]" * 40), "X")
    with pytest.raises(mpool.InvalidInput, match=r"nested deeper than 16 at offset \d+"):
        mpool.Tokenizer.from_str(hf.to_str())
