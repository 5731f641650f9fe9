"""What every benchmark says about the machine it ran on: the CPU and its
instruction sets, the matmul rate (the compute bound) and the memory bandwidth
(the decode bound). Imported by the bench/ scripts from bench/common, since
bench/ itself is kept off sys.path (bench/tokenize.py would shadow the
standard library's tokenize)."""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch


def cpu_name() -> str:
    """The CPU's model name, its vector extensions and logical CPU count."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"
    name = next((l.split(":", 1)[1].strip() for l in text.splitlines() if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in text.splitlines() if l.startswith("flags")), [])
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{name} ({', '.join(isa) or 'no AVX2'}), {os.cpu_count()} logical CPUs"


def matmul_gflops(device: str = "cpu", dtype: torch.dtype = torch.float32, library: str = "best") -> float:
    """GFLOP/s of a square matmul (1024 on a CPU, 2048 on a GPU), median of 10 after 3 warm-ups.
    library "aten": torch's matmul (MKL on the CPU); "onednn": the same product through
    oneDNN (torch's mkldnn linear), which on a non-Intel CPU with AVX-512 reaches what
    MKL's AVX2 code there does not; "best" (the compute bound): the better of the two
    for float32 on a CPU with oneDNN, else ATen's."""
    if library == "best":
        rate = matmul_gflops(device, dtype, "aten")
        if device == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available():
            rate = max(rate, matmul_gflops(device, dtype, "onednn"))
        return rate
    n = 2048 if device == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    if library == "onednn":
        product = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")  # noqa: E731
    else:
        product = lambda: a @ b  # noqa: E731
    times = []
    for i in range(13):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        product()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def memory_read_bandwidth(repeats: int = 10) -> float:
    """Bytes/s of a 256 MiB fp32 tensor's sum (read only, torch's vectorized
    reduction on its intra-op threads), median. A decode step only reads its
    weights: where writes cost more than reads (a copy's stores allocate their
    lines first), this stream is the closer bound."""
    src = torch.ones(64 * 1024 * 1024, dtype=torch.float32)
    src.sum()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        src.sum()
        times.append(time.perf_counter() - t)
    return src.numel() * 4 / statistics.median(times)


def memory_bandwidth(repeats: int = 10) -> float:
    """Bytes/s of a 256 MiB fp32 tensor copy (read + write), median."""
    src = torch.ones(64 * 1024 * 1024, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t)
    return 2 * src.numel() * 4 / statistics.median(times)
