"""A deterministic multilingual corpus for tokenizer tests and benchmarks.

`CORPUS` is a list of 600 strings mixing English, CJK, Arabic, Hindi, Thai,
emoji (ZWJ sequences, skin tones), combining marks, code, long digit runs,
whitespace runs, tabs and newlines, special-token look-alikes, empty strings and
texts longer than typical max lengths. `make_corpus(n, seed)` builds more.
"""

from __future__ import annotations

import random

FRAGMENTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How's it going? I'm fine, they've said we'll see.",
    "Don't stop believing; it isn't over until it's over.",
    "東京は日本の首都です。",
    "我爱自然语言处理，今天天气很好。",
    "한국어 문장도 포함됩니다.",
    "カタカナとひらがなの混在テキスト",
    "مرحبا بالعالم، كيف حالك اليوم؟",
    "اللغة العربية جميلة جدا",
    "नमस्ते दुनिया, आप कैसे हैं?",
    "हिन्दी में क्षत्रिय और ज्ञान शब्द",
    "สวัสดีครับ ยินดีต้อนรับ",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "Emoji: 😀 😃 👍🏽 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️",
    "Skin tones 👋🏻👋🏼👋🏽👋🏾👋🏿 and flags 🇫🇷🇯🇵",
    "Combining: e\u0301 a\u0300 o\u0308 n\u0303 A\u030a \u1e9b\u0323",
    "Precomposed: café naïve résumé Ångström façade",
    "Ligatures and compat: ﬁ ﬂ ① ㎏ Ⅻ ｆｕｌｌｗｉｄｔｈ",
    "def main(argv):\n    return {'a': [1, 2, 3], \"b\": None}  # comment",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "SELECT name, COUNT(*) FROM users WHERE age >= 21 GROUP BY name;",
    "https://example.com/path?query=1&lang=en#frag",
    "email me at someone@example.org or call +1-555-0100",
    "3.14159265358979323846264338327950288419716939937510",
    "1234567890123456789012345678901234567890",
    "Price: $1,299.99 (was €1.499,00) — save 13%!",
    "tabs\tand\ttabs\t\tdouble",
    "lines\nand\n\nmore lines\r\nwindows",
    "    leading spaces and trailing spaces    ",
    "multiple     spaces      between   words",
    "Mixed CASE Words With Capitals And ALLCAPS",
    "unaffable unbelievable antidisestablishmentarianism",
    "Zero\u200bwidth\u200cjoiners\u200dhere",
    "Nonbreaking\u00a0space and ideographic\u3000space",
    "Ελληνικά κείμενα και Кириллица тоже",
    "Ümlaute: Müller, Größe, Straße; İstanbul ıi",
    "<s> looks special </s> but <unk> may not be",
    "[CLS] bert style [SEP] markers [MASK] inside",
    "<|endoftext|> gpt style marker <|endoftext|>",
    "αβγ ΣΊΣΥΦΟΣ ﬀ",
    "!!! ??? ... --- *** ### @@@",
    "'quoted' \"double\" `back` «guillemets» „German“",
]

WORDS = (
    "data model token pipeline memory thread stream parallel vector matrix "
    "apple banana cherry dragon eagle falcon giraffe horizon island jungle "
    "数据 模型 東京 서울 القاهرة मुंबई กรุงเทพ Zürich São Paulo Kraków"
).split()


def _sentence(rng: random.Random) -> str:
    kind = rng.randrange(10)
    if kind < 4:
        return rng.choice(FRAGMENTS)
    if kind < 7:
        n = rng.randrange(3, 12)
        words = [rng.choice(WORDS) for _ in range(n)]
        seps = [rng.choice([" ", " ", " ", ", ", "  ", "\t", "\n", "-", "_"]) for _ in range(n)]
        return "".join(w + s for w, s in zip(words, seps)).strip(" ")
    if kind < 9:
        a, b = rng.sample(FRAGMENTS, 2)
        return a + rng.choice([" ", "\n", "\t", "  ", ""]) + b
    return str(rng.randrange(10**6)) * rng.randrange(1, 6)


def make_corpus(n: int, seed: int = 1234) -> list[str]:
    """n deterministic sentences from seed."""
    rng = random.Random(seed)
    return [_sentence(rng) for _ in range(n)]


def _build() -> list[str]:
    texts = list(FRAGMENTS)
    texts += ["", " ", "\n", "\t\t", "a", "😀", "e\u0301"]
    # Long texts: well past the usual 128/512 token limits.
    rng = random.Random(99)
    for _ in range(8):
        texts.append(" ".join(rng.choice(FRAGMENTS) for _ in range(40)))
    texts += make_corpus(600 - len(texts), seed=7)
    return texts


CORPUS: list[str] = _build()
