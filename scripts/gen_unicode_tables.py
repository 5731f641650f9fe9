#!/usr/bin/env python3
"""Generate cpp/src/tokenizer/unicode_tables.inc by probing the installed HF `tokenizers`.

The tokenizer must behave like HF `tokenizers` on every code point, and HF does not
follow one Unicode version: its split regexes run on Oniguruma's tables, its
BertNormalizer and pre-tokenizers on the `unicode_categories` crate, Rust's `char`
methods and the `regex` crate, each of its own vintage. Rather than imitate those
versions, this script asks `tokenizers` itself, code point by code point (all of
0..U+10FFFF except surrogates, batched into a few long strings), and writes what it
answers as compact tables:

  * per-code-point predicate flags (two-stage table): whitespace, numeric, punctuation,
    BertNormalizer's controls and accent marks, StripAccents' marks, the regex crate's
    \\w and \\s, which marks have a combining class, which composites NFC makes;
  * full lowercase, NFD and NFKD of every code point they change;
  * Oniguruma classes (\\p{L}, \\p{N}, ..., \\s, \\w, \\d) as PCRE2 class bodies, which
    the regex translator substitutes for the property names PCRE2 would otherwise
    resolve with its own, older tables.

The tables are generated from tokenizers 0.23.3 (the version the .inc names in its
first line). Run:  python scripts/gen_unicode_tables.py  (from the repository root; rewrites the
.inc file and prints the tokenizers version it was generated from).
"""

from __future__ import annotations

import os
import sys

import tokenizers
from tokenizers import Regex, normalizers, pre_tokenizers

MAX = 0x110000
CPS = [c for c in range(MAX) if not 0xD800 <= c <= 0xDFFF]
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cpp", "src", "tokenizer", "unicode_tables.inc")

# Oniguruma property names the translator replaces (general categories and their groups).
ONIG_PROPS = ["L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No", "P", "Pc", "Pd",
              "Ps", "Pe", "Pi", "Pf", "Po", "S", "Sm", "Sc", "Sk", "So", "Z", "Zs", "Zl", "Zp", "C", "Cc", "Cf",
              "Co", "Cn"]
ONIG_ESCAPES = {"s": r"\s", "w": r"\w", "d": r"\d"}
# Inside a bracket class Oniguruma's \w and \W are other sets than outside one
# (superscript and fraction digits are left out); the translator uses these there.
ONIG_IN_CLASS = {"[\\w]": r"[\w]", "[\\W]": r"[\W]"}
# Script names (Oniguruma reads \p{Han} as the Script property, PCRE2 as
# Script_Extensions); a name the reference does not compile is skipped.
ONIG_SCRIPTS = [
    "Adlam", "Ahom", "Anatolian_Hieroglyphs", "Arabic", "Armenian", "Avestan", "Balinese", "Bamum", "Bassa_Vah",
    "Batak", "Bengali", "Bhaiksuki", "Bopomofo", "Brahmi", "Braille", "Buginese", "Buhid", "Canadian_Aboriginal",
    "Carian", "Caucasian_Albanian", "Chakma", "Cham", "Cherokee", "Chorasmian", "Common", "Coptic", "Cuneiform",
    "Cypriot", "Cypro_Minoan", "Cyrillic", "Deseret", "Devanagari", "Dives_Akuru", "Dogra", "Duployan",
    "Egyptian_Hieroglyphs", "Elbasan", "Elymaic", "Ethiopic", "Georgian", "Glagolitic", "Gothic", "Grantha", "Greek",
    "Gujarati", "Gunjala_Gondi", "Gurmukhi", "Han", "Hangul", "Hanifi_Rohingya", "Hanunoo", "Hatran", "Hebrew",
    "Hiragana", "Imperial_Aramaic", "Inherited", "Inscriptional_Pahlavi", "Inscriptional_Parthian", "Javanese",
    "Kaithi", "Kannada", "Katakana", "Kawi", "Kayah_Li", "Kharoshthi", "Khitan_Small_Script", "Khmer", "Khojki",
    "Khudawadi", "Lao", "Latin", "Lepcha", "Limbu", "Linear_A", "Linear_B", "Lisu", "Lycian", "Lydian", "Mahajani",
    "Makasar", "Malayalam", "Mandaic", "Manichaean", "Marchen", "Masaram_Gondi", "Medefaidrin", "Meetei_Mayek",
    "Mende_Kikakui", "Meroitic_Cursive", "Meroitic_Hieroglyphs", "Miao", "Modi", "Mongolian", "Mro", "Multani",
    "Myanmar", "Nabataean", "Nag_Mundari", "Nandinagari", "New_Tai_Lue", "Newa", "Nko", "Nushu", "Nyiakeng_Puachue_Hmong",
    "Ogham", "Ol_Chiki", "Old_Hungarian", "Old_Italic", "Old_North_Arabian", "Old_Permic", "Old_Persian", "Old_Sogdian",
    "Old_South_Arabian", "Old_Turkic", "Old_Uyghur", "Oriya", "Osage", "Osmanya", "Pahawh_Hmong", "Palmyrene",
    "Pau_Cin_Hau", "Phags_Pa", "Phoenician", "Psalter_Pahlavi", "Rejang", "Runic", "Samaritan", "Saurashtra", "Sharada",
    "Shavian", "Siddham", "SignWriting", "Sinhala", "Sogdian", "Sora_Sompeng", "Soyombo", "Sundanese", "Syloti_Nagri",
    "Syriac", "Tagalog", "Tagbanwa", "Tai_Le", "Tai_Tham", "Tai_Viet", "Takri", "Tamil", "Tangsa", "Tangut", "Telugu",
    "Thaana", "Thai", "Tibetan", "Tifinagh", "Tirhuta", "Toto", "Ugaritic", "Vai", "Vithkuqi", "Wancho", "Warang_Citi",
    "Yezidi", "Yi", "Zanabazar_Square",
]

CHUNK = 0x10000


def chunks():
    for lo in range(0, len(CPS), CHUNK):
        yield CPS[lo:lo + CHUNK]


def removed_by(pretok) -> set[int]:
    """Code points a removing pre-tokenizer drops (those no output piece covers)."""
    out = set()
    for part in chunks():
        covered = bytearray(len(part))
        for _, (s, e) in pretok.pre_tokenize_str("".join(map(chr, part))):
            covered[s:e] = b"\x01" * (e - s)
        out.update(c for c, k in zip(part, covered) if not k)
    return out


def isolated_by(pretok, filler="x") -> set[int]:
    """Code points an isolating pre-tokenizer cuts out alone between two filler characters."""
    out = set()
    for part in chunks():
        text = filler + "".join(chr(c) + filler for c in part)
        alone = {s for _, (s, e) in pretok.pre_tokenize_str(text) if e == s + 1}
        out.update(c for i, c in enumerate(part) if 2 * i + 1 in alone)
    return out


def mapped_by(normalizer, filler="\x01") -> list[str]:
    """What a normalizer makes of each code point, between filler characters it leaves alone."""
    out = []
    for part in chunks():
        # The filler itself is left out of the text and taken to map to itself.
        text = filler + "".join((chr(c) if chr(c) != filler else "") + filler for c in part)
        pieces = normalizer.normalize_str(text).split(filler)
        assert len(pieces) == len(part) + 2, "filler changed by normalizer"
        out.extend(p if chr(c) != filler else filler for c, p in zip(part, pieces[1:-1]))
    return out


def ranges(members: set[int]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for c in sorted(members):
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        elif out and out[-1][1] == 0xD7FF and c == 0xE000:  # bridge the surrogate gap
            out[-1][1] = c
        else:
            out.append([c, c])
    return [tuple(r) for r in out]


def class_body(members: set[int]) -> str:
    parts = []
    for lo, hi in ranges(members):
        if 0xD800 <= hi and lo <= 0xDFFF and lo < 0xD800 < 0xE000 <= hi:
            parts.append(f"\\x{{{lo:X}}}-\\x{{D7FF}}\\x{{E000}}-\\x{{{hi:X}}}")
        else:
            parts.append(f"\\x{{{lo:X}}}" if lo == hi else f"\\x{{{lo:X}}}-\\x{{{hi:X}}}")
    return "".join(parts)


# Flag bits; keep in sync with unicode.cpp.
FLAGS = {
    "kWhitespace": 1 << 0,  # Rust char::is_whitespace (WhitespaceSplit, BertPreTokenizer, BertNormalizer)
    "kNumeric": 1 << 1,  # Rust char::is_numeric (Digits)
    "kPunctuation": 1 << 2,  # unicode_categories is_punctuation (BertPreTokenizer, Punctuation)
    "kBertControl": 1 << 3,  # removed by BertNormalizer clean_text
    "kBertMarkNonspacing": 1 << 4,  # removed by BertNormalizer strip_accents after its NFD
    "kCombiningMark": 1 << 5,  # removed by the StripAccents normalizer
    "kRegexWord": 1 << 6,  # Rust regex \w (Whitespace pre-tokenizer)
    "kRegexSpace": 1 << 7,  # Rust regex \s (Whitespace pre-tokenizer)
    "kCombiningClassNonzero": 1 << 8,  # nonzero canonical combining class in the normalizers' tables
    "kPrimaryComposite": 1 << 9,  # NFC composes to it: it decomposes and NFC leaves it alone
    "kAddedWordChar": 1 << 10,  # next to a single_word added token, keeps it from matching
}


def probe_flags(nfd: list[str]) -> list[int]:
    flags = [0] * MAX

    def mark(cps, bit):
        for c in cps:
            flags[c] |= bit

    mark(removed_by(pre_tokenizers.WhitespaceSplit()), FLAGS["kWhitespace"])
    mark(isolated_by(pre_tokenizers.Digits(individual_digits=True)), FLAGS["kNumeric"])
    mark(isolated_by(pre_tokenizers.Punctuation(behavior="isolated")), FLAGS["kPunctuation"])
    clean = mapped_by(normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=False,
                                                 lowercase=False), filler="x")
    mark([c for c, m in zip(CPS, clean) if m == ""], FLAGS["kBertControl"])
    strip = mapped_by(normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=True,
                                                 lowercase=False))
    mark([c for c, d, m in zip(CPS, nfd, strip) if d == chr(c) and m == ""], FLAGS["kBertMarkNonspacing"])
    nfc = mapped_by(normalizers.NFC())
    mark([c for c, d, m in zip(CPS, nfd, nfc) if d != chr(c) and m == chr(c)], FLAGS["kPrimaryComposite"])
    accents = mapped_by(normalizers.StripAccents())
    mark([c for c, m in zip(CPS, accents) if m == ""], FLAGS["kCombiningMark"])
    # Whitespace runs \w+|[^\w\s]+ and keeps the matches: between word fillers a word
    # character joins them, a space character is dropped, any other stands apart.
    ws = pre_tokenizers.Whitespace()
    for part in chunks():
        text = "x" + "".join(chr(c) + "x" for c in part)
        covered = bytearray(len(text))
        alone = set()
        for _, (s, e) in ws.pre_tokenize_str(text):
            covered[s:e] = b"\x01" * (e - s)
            if e == s + 1:
                alone.add(s)
        for i, c in enumerate(part):
            p = 2 * i + 1
            if not covered[p]:
                flags[c] |= FLAGS["kRegexSpace"]
            elif p not in alone:
                flags[c] |= FLAGS["kRegexWord"]
    # A single_word added token matches only between non-word characters: probe
    # each code point on both sides of one.
    probe = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    probe.add_tokens([tokenizers.AddedToken("<t>", single_word=True, normalized=False)])
    marker = probe.token_to_id("<t>")
    for make in (lambda c: chr(c) + "<t>", lambda c: "<t>" + chr(c)):
        for part in chunks():
            for c, enc in zip(part, probe.encode_batch([make(c) for c in part], add_special_tokens=False)):
                if marker not in enc.ids:
                    flags[c] |= FLAGS["kAddedWordChar"]
    # A nonzero combining class shows as canonical reordering: after U+0301 (class 230)
    # a mark of class 1..229 moves ahead of it; before U+0334 (class 1) one above 1 moves behind.
    nfd_n = normalizers.NFD()
    for part in chunks():
        after = mapped_by_text(nfd_n, part, lambda c: "\u0301" + chr(c))
        before = mapped_by_text(nfd_n, part, lambda c: chr(c) + "\u0334")
        for c, a, b in zip(part, after, before):
            if a == chr(c) + "\u0301" or b == "\u0334" + chr(c):
                flags[c] |= FLAGS["kCombiningClassNonzero"]
    return flags


def mapped_by_text(normalizer, part, make, filler="\x01") -> list[str]:
    text = filler + "".join((make(c) if chr(c) != filler else "") + filler for c in part)
    pieces = normalizer.normalize_str(text).split(filler)
    assert len(pieces) == len(part) + 2
    return pieces[1:-1]


def two_stage(flags: list[int]):
    blocks: dict[tuple, int] = {}
    stage1 = []
    for hi in range(MAX // 256):
        block = tuple(flags[hi * 256:(hi + 1) * 256])
        stage1.append(blocks.setdefault(block, len(blocks)))
    return stage1, list(blocks)


def write_mapping(f, name: str, mapping: dict[int, str]) -> None:
    """A sorted {code point, offset, length} index into one pool of code points."""
    pool: list[int] = []
    f.write(f"constexpr Mapping {name}[{len(mapping)}] = {{\n")
    for c in sorted(mapping):
        f.write(f"{{0x{c:X},{len(pool)},{len(mapping[c])}}},")
        pool.extend(map(ord, mapping[c]))
    f.write(f"}};\nconstexpr char32_t {name}Pool[{len(pool)}] = {{")
    f.write(",".join(f"0x{c:X}" for c in pool))
    f.write("};\n\n")


def main() -> None:
    nfd = mapped_by(normalizers.NFD())
    nfkd = mapped_by(normalizers.NFKD())
    lower = mapped_by(normalizers.Lowercase())
    flags = probe_flags(nfd)
    stage1, stage2 = two_stage(flags)
    onig = {name: removed_by(pre_tokenizers.Split(Regex(rf"\p{{{name}}}"), behavior="removed")) for name in ONIG_PROPS}
    for esc, pat in ONIG_ESCAPES.items():
        onig["\\" + esc] = removed_by(pre_tokenizers.Split(Regex(pat), behavior="removed"))
    for key, pat in ONIG_IN_CLASS.items():
        onig[key] = removed_by(pre_tokenizers.Split(Regex(pat), behavior="removed"))
    for name in ONIG_SCRIPTS:
        try:
            split = pre_tokenizers.Split(Regex(rf"\p{{{name}}}"), behavior="removed")
        except Exception:  # noqa: BLE001 - a script the reference's Oniguruma lacks
            print(f"skipped \\p{{{name}}}: the reference does not compile it", file=sys.stderr)
            continue
        onig[name] = removed_by(split)
    with open(OUT, "w") as f:
        f.write(f"// Generated by scripts/gen_unicode_tables.py from tokenizers {tokenizers.__version__}. Do not edit.\n")
        f.write("// Per-code-point behaviour of HF tokenizers, probed on every code point.\n\n")
        for name, bit in FLAGS.items():
            f.write(f"constexpr uint16_t {name} = {bit};\n")
        f.write(f"\nconstexpr uint16_t kFlagStage1[{len(stage1)}] = {{")
        f.write(",".join(map(str, stage1)))
        f.write(f"}};\n\nconstexpr uint16_t kFlagStage2[{len(stage2)}][256] = {{\n")
        for block in stage2:
            f.write("{" + ",".join(map(str, block)) + "},\n")
        f.write("};\n\n")
        # Hangul syllables decompose algorithmically (unicode.cpp); every other change is listed.
        hangul = range(0xAC00, 0xD7A4)
        f.write("// Full lowercase (Rust char::to_lowercase), NFD and NFKD of each code point they change.\n")
        f.write("struct Mapping { char32_t c; uint16_t offset; uint8_t length; };\n")
        write_mapping(f, "kLowercase", {c: m for c, m in zip(CPS, lower) if m != chr(c)})
        write_mapping(f, "kCanonical", {c: m for c, m in zip(CPS, nfd) if m != chr(c) and c not in hangul})
        write_mapping(f, "kCompatibility", {c: m for c, m in zip(CPS, nfkd) if m != chr(c) and c not in hangul})
        f.write("// Oniguruma classes as PCRE2 class bodies: {name, body}.\n")
        f.write("struct OnigClass { const char* name; const char* body; };\n")
        f.write(f"constexpr OnigClass kOnigClasses[{len(onig)}] = {{\n")
        for name, members in onig.items():
            body = class_body(members).replace("\\", "\\\\")
            key = name.replace("\\", "\\\\")
            f.write(f'{{"{key}", "{body}"}},\n')
        f.write("};\n")
    print(f"wrote {OUT} from tokenizers {tokenizers.__version__}: {len(stage2)} flag blocks", file=sys.stderr)


if __name__ == "__main__":
    main()
