"""Loading benchmark: mpool.safetensors_load vs. plain reads of the same file.

Writes a safetensors checkpoint of a few hundred MB shaped like a transformer
(many matrices, some vectors), makes sure it is in the page cache, then times,
interleaved, with fresh objects each round:

  read()        open(path, "rb").read()           (one copy into a bytes object)
  np.fromfile   np.fromfile(path, dtype=np.uint8)  (one copy into an array)
  mpool         mpool.safetensors_load(path)       (mmap, validate, prefault, wrap every tensor)
  mpool+touch   the same, then one read per 4 KiB page of every tensor (data really usable)
  mpool f16     mpool.safetensors_load(path, dtype="float16")  (convert on load)
  safetensors   safetensors.numpy.load_file(path)  (reference, if installed)

"Cold load" means a fresh load with nothing of the file mapped or parsed before,
as when a replica spawns; the file itself is in the page cache for every
contender, so the comparison is CPU and kernel work, not disk speed.

Usage: python bench/load.py [--size-mb 300] [--repeat 9] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time

import numpy as np

import mpool


def write_checkpoint(path: str, size_mb: int) -> int:
    from safetensors.numpy import save_file

    hidden = 1024
    rng = np.random.default_rng(0)
    tensors: dict[str, np.ndarray] = {}
    total = 0
    layer = 0
    while total < size_mb * 1024 * 1024:
        for name, shape in (("q", (hidden, hidden)), ("k", (hidden, hidden)), ("v", (hidden, hidden)),
                            ("o", (hidden, hidden)), ("up", (4 * hidden, hidden)), ("down", (hidden, 4 * hidden)),
                            ("ln.weight", (hidden,)), ("ln.bias", (hidden,))):
            t = rng.standard_normal(shape, dtype=np.float32)
            tensors[f"layers.{layer}.{name}"] = t
            total += t.nbytes
        layer += 1
    save_file(tensors, path)
    return len(tensors)


def touch_pages(arrays: dict[str, np.ndarray]) -> float:
    """Reads one float per 4 KiB page of every array, so each page must be mapped."""
    return float(sum(a.reshape(-1)[::1024].sum() for a in arrays.values()))


def timed(fn) -> float:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    del result
    gc.collect()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--dir", default=None, help="where to write the checkpoint (default: a temp dir)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "model.safetensors")
        n_tensors = write_checkpoint(path, args.size_mb)
        size = os.path.getsize(path)
        with open(path, "rb") as f:  # into the page cache
            while f.read(1 << 24):
                pass

        contenders = {
            "read()": lambda: open(path, "rb").read(),
            "np.fromfile": lambda: np.fromfile(path, dtype=np.uint8),
            "mpool": lambda: mpool.safetensors_load(path),
            "mpool+touch": lambda: touch_pages(mpool.safetensors_load(path)),
            "mpool f16": lambda: mpool.safetensors_load(path, dtype="float16"),
        }
        try:
            from safetensors.numpy import load_file

            contenders["safetensors"] = lambda: load_file(path)
        except ImportError:
            pass

        times: dict[str, list[float]] = {name: [] for name in contenders}
        for name, fn in contenders.items():  # warm-up: imports, allocator
            timed(fn)
        for _ in range(args.repeat):
            for name, fn in contenders.items():
                times[name].append(timed(fn))

    med = {name: statistics.median(t) for name, t in times.items()}
    base = med["read()"]
    print(f"file: {size / 2**20:.0f} MiB, {n_tensors} tensors (float32), page cache warm; "
          f"median of {args.repeat} runs, {os.cpu_count()} CPUs")
    print()
    print("| contender | median (ms) | GB/s | vs read() |")
    print("|---|---:|---:|---:|")
    for name, m in med.items():
        print(f"| {name} | {m * 1e3:.1f} | {size / m / 1e9:.2f} | {m / base:.2f}x |")


if __name__ == "__main__":
    main()
