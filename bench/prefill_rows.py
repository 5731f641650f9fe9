"""What keeping a prompt's rows bit-exact costs: float32 linears at a decoder's
prefill shapes, through oneDNN's GEMM (the path outside kernels::RowInvariant)
and through mpool's row kernel in x tiles (the path a prompt's chunks take, so
that a row's bits do not depend on its chunk), in one run on one machine.

    .venv/bin/python -P bench/prefill_rows.py

Shapes: the bench Llama of bench/generate.py (hidden 768, MLP 3072): q/k/v
768 -> 2304, the output 768 -> 768, gate and up 768 -> 6144, down 3072 -> 768.
GFLOP/s = 2 * rows * in * out / seconds, the best of --repeats timings of
--calls calls each; the compute bound is a 1024^3 float32 matmul in the same run.

Then a prompt's causal attention (12 heads of 64, the bench Llama's) three
ways: mpool's many-row kernel (kernels::attention, outside the scope), the
rows as their decode steps compute them (kernels::prompt_attention, the path
under the scope, so that a block a decode step wrote equals prefill's), and
ATen's scaled_dot_product_attention. GFLOP/s = 4 * heads * rows^2 / 2 * 64 /
seconds (the causal half of the products).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "common"))
from machine import cpu_name, matmul_gflops  # noqa: E402

import mpool.testing  # noqa: E402

SHAPES = {"qkv": (768, 2304), "o": (768, 768), "gate_up": (768, 6144), "down": (3072, 768)}


def seconds(x: np.ndarray, w: np.ndarray, invariant: bool, calls: int, repeats: int) -> float:
    return min(
        float(mpool.testing.probe("nn.linear", {"x": x, "weight": w}, row_invariant=invariant, repeat=calls)["seconds"])
        for _ in range(repeats)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="17,128,512", help="comma-separated row counts (a prompt chunk's tokens)")
    ap.add_argument("--attention-rows", default="128,512,1024", help="comma-separated prompt lengths to attend")
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"CPU: {cpu_name()}")
    print(f"1024^3 float32 matmul: {matmul_gflops():.0f} GFLOP/s (the compute bound)")
    print(f"{'shape':>8} {'rows':>5} {'GEMM GFLOP/s':>13} {'row tiles GFLOP/s':>18} {'tiles / GEMM':>13}")
    for name, (k, n) in SHAPES.items():
        w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
        for m in (int(r) for r in args.rows.split(",")):
            x = rng.standard_normal((m, k)).astype(np.float32)
            flop = 2.0 * m * k * n
            gemm = flop / seconds(x, w, False, args.calls, args.repeats) / 1e9
            tiles = flop / seconds(x, w, True, args.calls, args.repeats) / 1e9
            print(f"{name:>8} {m:>5} {gemm:>13.0f} {tiles:>18.0f} {tiles / gemm:>12.2f}x")
    heads, d = 12, 64
    print(f"{'rows':>5} {'many-row GFLOP/s':>17} {'as decode steps GFLOP/s':>24} {'ATen GFLOP/s':>13}"
          f" {'steps / many-row':>17}")
    for n in (int(r) for r in args.attention_rows.split(",")):
        q, k, v = (rng.standard_normal((1, heads, n, d)).astype(np.float32) for _ in range(3))
        flop = 4.0 * heads * n * n / 2 * d

        def rate(path: str, **options: object) -> float:
            best = min(
                float(mpool.testing.probe("nn.attend", {"q": q, "k": k, "v": v}, path=path, repeat=args.calls,
                                          **options)["seconds"])
                for _ in range(args.repeats)
            )
            return flop / best / 1e9

        rows, steps, aten = rate("rows", causal=True), rate("prompt"), rate("aten", causal=True)
        print(f"{n:>5} {rows:>17.0f} {steps:>24.0f} {aten:>13.0f} {steps / rows:>16.2f}x")


if __name__ == "__main__":
    main()
