"""The float32 GEMM library (mpool.cpu): ATen's or oneDNN's, each checked
against float64 products and the real MiniLM against sentence-transformers."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import mpool
from mpool import testing

ACTS = {
    "gelu": torch.nn.functional.gelu,
    "gelu_tanh": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
    "relu": torch.relu,
    "silu": torch.nn.functional.silu,
    "quick_gelu": lambda t: t * torch.sigmoid(1.702 * t),
}


def rel_err(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a), dtype=torch.float64), torch.as_tensor(np.asarray(b), dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("rows", [3, 17, 160])  # the row kernel's few rows, then the GEMM's
@pytest.mark.parametrize("act", [None, *ACTS])
def test_linear_with_a_fused_activation_matches_a_float64_product_on_each_backend(each_float32_gemm, rows, act):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 48, generator=g)
    w = torch.randn(72, 48, generator=g) * 0.2
    b = torch.randn(72, generator=g)
    opts = {} if act is None else {"act": act}
    out = testing.probe("nn.linear", {"x": x.numpy(), "weight": w.numpy(), "bias": b.numpy()}, **opts)["y"]
    ref = torch.nn.functional.linear(x.double(), w.double(), b.double())
    if act is not None:
        ref = ACTS[act](ref)
    assert rel_err(out, ref) <= 2e-6


@pytest.mark.parametrize("rows", [3, 160])
def test_linear_with_a_fused_residual_sum_matches_a_float64_product_on_each_backend(each_float32_gemm, rows):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, rows, 40, generator=g)
    w = torch.randn(40, 40, generator=g) * 0.2
    b = torch.randn(40, generator=g)
    residual = torch.randn(2, rows, 40, generator=g)
    out = testing.probe(
        "nn.linear", {"x": x.numpy(), "weight": w.numpy(), "bias": b.numpy(), "residual": residual.numpy()}
    )["y"]
    ref = torch.nn.functional.linear(x.double(), w.double(), b.double()) + residual.double()
    assert out.shape == (2, rows, 40)
    assert rel_err(out, ref) <= 2e-6


def test_auto_takes_onednn_exactly_on_a_non_intel_cpu_with_avx512():
    with open("/proc/cpuinfo") as f:
        info = f.read()
    vendor = next(line.split(":")[1].strip() for line in info.splitlines() if line.startswith("vendor_id"))
    flags = set(next(line.split(":")[1] for line in info.splitlines() if line.startswith("flags")).split())
    avx512 = {"avx512f", "avx512bw", "avx512vl"} <= flags
    expected = "onednn" if vendor != "GenuineIntel" and avx512 and torch.backends.mkldnn.is_available() else "aten"
    backend, reason = mpool.float32_gemm_auto()
    assert backend == expected, reason
    assert reason


@pytest.mark.parametrize("bad", ["mkl", "", "ONEDNN", 1, None])
def test_set_float32_gemm_refuses_anything_but_the_three_names_and_keeps_the_choice(bad):
    before = mpool.float32_gemm()
    with pytest.raises(mpool.InvalidInput, match="auto, aten, onednn"):
        mpool.set_float32_gemm(bad)
    assert mpool.float32_gemm() == before


def _import_with(value: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPOOL_FLOAT32_GEMM": value}
    code = "import mpool; print(mpool.float32_gemm())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_the_environment_variable_sets_the_backend_at_start_up():
    for value in ["aten", "onednn"] if torch.backends.mkldnn.is_available() else ["aten"]:
        run = _import_with(value)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == value
    run = _import_with("auto")
    assert run.stdout.strip() == mpool.float32_gemm_auto()[0]


def test_a_bad_environment_variable_fails_the_import_naming_it():
    run = _import_with("blas")
    assert run.returncode != 0
    assert "InvalidInput" in run.stderr and "MPOOL_FLOAT32_GEMM" in run.stderr and "'blas'" in run.stderr


def test_minilm_embeds_the_same_on_both_backends_and_as_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from corpus import CORPUS

    texts = [t for t in CORPUS if t.strip()][:200]
    path = mpool.default_embedding_model_path()
    ref = SentenceTransformer(path, device="cpu").encode(texts, batch_size=64)
    before = mpool.float32_gemm()
    out = {}
    try:
        with mpool.Pool() as pool:
            pool.register("m", path, max_replicas=1)
            for backend in ["aten", "onednn"] if torch.backends.mkldnn.is_available() else ["aten"]:
                mpool.set_float32_gemm(backend)
                out[backend] = pool.embed("m", texts)
    finally:
        mpool.set_float32_gemm(before)
    for backend, e in out.items():
        cos = (e * ref).sum(1) / np.linalg.norm(e, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > 1 - 1e-6, backend
        assert np.abs(e - ref).max() < 1e-5, backend


def test_stats_name_the_float32_gemm_library_in_use():
    before = mpool.float32_gemm()
    try:
        with mpool.Pool() as pool:
            mpool.set_float32_gemm("aten")
            assert pool.stats()["float32_gemm"] == "aten"
            if torch.backends.mkldnn.is_available():
                mpool.set_float32_gemm("onednn")
                assert pool.stats()["float32_gemm"] == "onednn"
    finally:
        mpool.set_float32_gemm(before)
