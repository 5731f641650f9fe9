"""Command line: ``python -m mpool demo`` and ``python -m mpool info``."""

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


def _demo(args: argparse.Namespace) -> int:
    from . import demo

    demo.main()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpool", description="Many ML models in one process.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="pool all-MiniLM-L6-v2 and a streaming model, and show what the pool does")
    p.set_defaults(fn=_demo)
    p = sub.add_parser("info", help="version and the memory budget of each device")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=_info)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
