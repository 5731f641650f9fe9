"""Parity of mpool.Tokenizer with Hugging Face `tokenizers` on every code point.

Every code point of planes 0-3 (surrogates excepted) is encoded alone and inside
text ("x{c}y {c}") by each tokenizer kind of the parity suite (trained there, offline)
and by the real all-MiniLM-L6-v2 tokenizer; both libraries load the same
tokenizer.json and must give identical ids. The encodes are batched so the whole
sweep takes seconds. Recent emoji in sentences must also stream-decode to exactly
the full decode.
"""

from __future__ import annotations

import os
import sys


sys.path.insert(0, os.path.dirname(__file__))
# The (HF tokenizer, mpool tokenizer) pair of every parity kind, from the same tokenizer.json.
from test_tokenizer_parity import pair  # noqa: E402,F401

CODE_POINTS = [c for c in range(0x40000) if not 0xD800 <= c <= 0xDFFF]
ALONE = [chr(c) for c in CODE_POINTS]
IN_TEXT = [f"x{chr(c)}y {chr(c)}" for c in CODE_POINTS]

# Emoji of Unicode 15 and 16, a CJK Extension H ideograph, Kawi and Garay letters.
RECENT = ["\U0001fae8", "\U0001fa77", "\U0001fabc", "\U0001f6dc", "\U0001fabe", "\U0001fac6", "\U00031350",
          "\U00011f04", "\U00010d50"]
SENTENCES = [f"I feel {c} today" for c in RECENT] + [
    "Chat: \U0001fae8\U0001fa77 and \U0001fabc\U0001f6dc, then \U0001fabe\U0001fac6!",
    "\U0001fae8",
    "mixed \U00031350\U00011f04 text \U00010d50 \U0001fae8\u200d\U0001fa77 end",
]


def _mismatches(hf, ours, texts):
    want = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    got = [e.ids for e in ours.encode_batch(texts, add_special_tokens=False)]
    assert len(got) == len(want)
    return [(f"U+{ord(t[0] if len(t) == 1 else t[1]):04X}", w, g) for t, w, g in zip(texts, want, got) if w != g]


def test_every_code_point_alone_encodes_to_hf_ids(pair):
    hf, ours = pair
    bad = _mismatches(hf, ours, ALONE)
    assert not bad, f"{len(bad)} code points differ, first: {bad[:10]}"


def test_every_code_point_inside_text_encodes_to_hf_ids(pair):
    hf, ours = pair
    bad = _mismatches(hf, ours, IN_TEXT)
    assert not bad, f"{len(bad)} code points differ, first: {bad[:10]}"


def test_recent_emoji_and_scripts_in_sentences_match_hf_ids_tokens_and_offsets(pair):
    hf, ours = pair
    for text in SENTENCES:
        h, o = hf.encode(text), ours.encode(text)
        assert o.ids == h.ids, text
        assert o.tokens == h.tokens, text
        assert [tuple(x) for x in o.offsets] == [tuple(x) for x in h.offsets], text


def test_recent_emoji_stream_decode_equals_full_decode(pair):
    hf, ours = pair
    for text in SENTENCES:
        ids = hf.encode(text).ids
        stream = ours.decode_stream(skip_special_tokens=True)
        emitted = "".join(p for p in (stream.step(i) for i in ids) if p is not None)
        assert emitted == ours.decode(ids), text
        assert ours.decode(ids) == hf.decode(ids), text
