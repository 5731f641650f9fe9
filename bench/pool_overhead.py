"""Round trip through the pool from Python vs. concurrent.futures, in one run.

mpool: pool.embed() on a native no-op model (mpool.testing.noop_model): Python ->
C++ -> job queue -> replica thread -> result -> numpy, GIL released while waiting.
Peer: ThreadPoolExecutor.submit(f).result() for a no-op f.

    python bench/pool_overhead.py [--n 20000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import mpool
import mpool.testing


def per_call_us(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="calls per measurement")
    ap.add_argument("--repeats", type=int, default=7, help="measurements; the median is reported")
    args = ap.parse_args()

    texts = ["x"]
    with mpool.Pool() as pool, ThreadPoolExecutor(max_workers=1) as executor:
        pool.register("noop", mpool.testing.noop_model(dimension=4), max_replicas=1)
        pool.embed("noop", texts)  # cold start outside the measurement

        def via_pool():
            pool.embed("noop", texts)

        def noop():
            return None

        def via_executor():
            executor.submit(noop).result()

        for fn in (via_pool, via_executor):  # warm up both paths
            per_call_us(fn, 2000)
        pool_us, exec_us = [], []
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            pool_us.append(per_call_us(via_pool, args.n))
            exec_us.append(per_call_us(via_executor, args.n))

    p, e = statistics.median(pool_us), statistics.median(exec_us)
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}")
    print(f"calls per measurement: {args.n}, measurements: {args.repeats} (median reported)")
    print(f"mpool pool.embed round trip:            {p:8.2f} us  (min {min(pool_us):.2f}, max {max(pool_us):.2f})")
    print(f"ThreadPoolExecutor.submit().result():   {e:8.2f} us  (min {min(exec_us):.2f}, max {max(exec_us):.2f})")
    print(f"ratio mpool / executor: {p / e:.2f}x  (goal <= 0.50x)")


if __name__ == "__main__":
    main()
