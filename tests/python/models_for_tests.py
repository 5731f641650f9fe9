"""Python-defined models used across the pool tests."""

from __future__ import annotations

import threading
import time

import numpy as np


class Counter:
    """Counts loader calls and live instances, thread-safely."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loads = 0

    def bump(self) -> None:
        with self.lock:
            self.loads += 1


class HashEmbedder:
    """Deterministic text embedding: a bag of character codes (dimension 8)."""

    dimension = 8

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay = delay
        self.gate = gate

    def embed(self, texts, task=None):
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay:
            time.sleep(self.delay)
        out = np.zeros((len(texts), 8), dtype=np.float32)
        for i, t in enumerate(texts):
            if t == "boom":
                raise RuntimeError("cannot embed 'boom'")
            for j, ch in enumerate(t):
                out[i, j % 8] += ord(ch)
            if task == "query":
                out[i] *= -1
        return out


class WordStreamer:
    """Streams the prompt back word by word, `max_tokens` words at most."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.closed = 0

    def generate(self, prompt, params):
        words = prompt.split() * 1000
        try:
            for i, w in enumerate(words[: params.get("max_tokens", len(words))]):
                if self.delay:
                    time.sleep(self.delay)
                yield {"text": w + " ", "token_ids": [i]}
            yield {"finish_reason": "length", "prompt_tokens": len(prompt.split())}
        finally:
            self.closed += 1


def wait_for(pred, seconds: float = 5.0) -> bool:
    """Polls pred until it holds or `seconds` pass; returns its last value."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.005)
    return pred()
