"""One build's native all-MiniLM-L6-v2 throughput, to compare two builds of mpool.

Runs the mpool that `import mpool` finds: point PYTHONPATH at another build's
package folder (its python/mpool files plus its _core*.so) to measure that one,
and alternate the two in one session on one machine:

    for i in 1 2 3; do
      PYTHONPATH=/tmp/oldmpool .venv/bin/python bench/embed_ab.py
      .venv/bin/python bench/embed_ab.py
    done

(a) bulk: 2,000 corpus sentences in one call; (b) 8 client threads embedding the
same sentences one per request. No peer: this is the regression check between
builds (bench/embed.py compares with sentence-transformers).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
from pathlib import Path

import mpool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
from corpus import make_corpus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=8)
    args = ap.parse_args()
    texts = make_corpus(args.n, seed=11)
    with mpool.Pool() as pool:
        pool.register("m", mpool.default_embedding_model_path())
        pool.embed("m", texts[:50])  # load, warm up
        start = time.perf_counter()
        pool.embed("m", texts)
        bulk = len(texts) / (time.perf_counter() - start)
        order = iter(range(len(texts)))
        lock = threading.Lock()

        def client() -> None:
            while True:
                with lock:
                    i = next(order, None)
                if i is None:
                    return
                pool.embed("m", [texts[i]])

        clients = [threading.Thread(target=client) for _ in range(args.threads)]
        start = time.perf_counter()
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        single = len(texts) / (time.perf_counter() - start)
    where = os.path.dirname(os.path.dirname(mpool.__file__))
    print(f"{platform.machine()}, {os.cpu_count()} cores; mpool from {where}")
    print(f"bulk {bulk:.1f} sentences/s; {args.threads} threads x single sentences {single:.1f} requests/s")


if __name__ == "__main__":
    main()
