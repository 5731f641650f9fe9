"""Native Hugging Face tokenizer.json tokenizer (no Python at inference time)."""

from __future__ import annotations

from ._core import DecodeStream, Encoding, Tokenizer

__all__ = ["DecodeStream", "Encoding", "Tokenizer"]
