#!/usr/bin/env bash
# Builds and runs the libFuzzer target for the tokenizer.json loader + encode.
#   scripts/fuzz.sh [seconds]   (default 600)
# Installs clang and its runtime when missing (Debian, as root). Seeds are
# small tokenizers trained with HF `tokenizers` from the test venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECONDS_TO_RUN="${1:-600}"
OUT="build/fuzz"
mkdir -p "$OUT/corpus" "$OUT/artifacts"

if ! command -v clang++ >/dev/null || ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq clang libclang-rt-14-dev >/dev/null
fi

clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -Icpp/include fuzz/tokenizer_json_fuzz.cpp cpp/src/tokenizer/*.cpp cpp/src/core/error.cpp \
  -lpcre2-8 -lutf8proc -ltbb -o "$OUT/tokenizer_json_fuzz"

.venv/bin/python - "$OUT/corpus" <<'PY'
import json, os, sys
sys.path.insert(0, "tests/python")
from corpus import CORPUS
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers, processors, decoders, trainers
out = sys.argv[1]
def seed(name, tok):
    js = json.dumps(json.loads(tok.to_str()))
    for i, text in enumerate(CORPUS[:20:4]):
        with open(os.path.join(out, f"{name}-{i}"), "wb") as f:
            f.write(js.encode() + b"\0" + text.encode())
texts = [t for t in CORPUS if t.isascii()][:200]
t = tokenizers.Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
t.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(" ", "\u2581")])
t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
t.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", 1)])
t.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
t.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>"], show_progress=False))
seed("bpe", t)
t = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
t.normalizer = normalizers.BertNormalizer()
t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Digits(True)])
t.decoder = decoders.WordPiece()
t.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=120, special_tokens=["[UNK]"], show_progress=False))
seed("wordpiece", t)
t = tokenizers.Tokenizer(models.Unigram())
t.pre_tokenizer = pre_tokenizers.Metaspace()
t.decoder = decoders.Metaspace()
t.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=100, special_tokens=["<unk>"], unk_token="<unk>", show_progress=False))
seed("unigram", t)
PY

"$OUT/tokenizer_json_fuzz" "$OUT/corpus" -max_total_time="$SECONDS_TO_RUN" -max_len=65536 -rss_limit_mb=2048 \
  -artifact_prefix="$OUT/artifacts/" -print_final_stats=1
