"""mpool's CPU attention kernel for many query rows (kernels::attention, the
default of mpool.cpu_attention): against a float64 reference and ATen's
scaled_dot_product_attention on every mask kind, on each instruction set the CPU
has; a row's bits alone and among others; the process-wide switch."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mpool
from mpool import testing


def _flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


HAS = {
    "avx2": " avx2" in _flags() and " fma" in _flags(),
    "avx512": all(f" {f}" in _flags() for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq")),
}
ISAS = [pytest.param(isa, marks=pytest.mark.skipif(not HAS[isa], reason=f"this CPU has no {isa}")) for isa in HAS]

# (batch, heads, kv_heads, n, t, d, dv): MiniLM's heads, grouped and shared
# (one kv head) keys, widths off every vector length, fewer keys than rows, one
# row, and keys across many score tiles.
SHAPES = [
    (2, 12, 12, 54, 54, 32, 32),
    (3, 4, 2, 17, 17, 64, 64),
    (1, 3, 1, 5, 9, 80, 72),
    (2, 2, 2, 1, 7, 16, 16),
    (1, 2, 2, 130, 130, 128, 128),
    (2, 4, 4, 33, 40, 20, 36),
    (1, 1, 1, 9, 3, 5, 3),
    (1, 2, 1, 7, 600, 16, 24),
]
MASKS = ["none", "causal", "key_padding", "additive", "random", "square_bool", "additive_inf"]


def _mask(kind: str, b: int, h: int, n: int, t: int, g: torch.Generator) -> torch.Tensor | None:
    if kind == "key_padding":  # (b, 1, 1, t): each sequence's last keys are padding
        m = torch.ones(b, 1, 1, t, dtype=torch.bool)
        for i in range(b):
            m[i, ..., max(1, t - 1 - 3 * i):] = False
        return m
    if kind == "additive":
        return torch.randn(1, h, n, t, generator=g)
    if kind == "random":  # (b, h, n, t) with one row whose every key is masked
        m = torch.rand(b, h, n, t, generator=g) > 0.5
        m[0, 0, n // 2] = False
        return m
    if kind == "square_bool":  # (n, t), broadcast over batch and heads
        return torch.rand(n, t, generator=g) > 0.3
    if kind == "additive_inf":  # -inf entries in an additive mask mask those keys
        m = torch.randn(b, 1, n, t, generator=g)
        m[torch.rand(b, 1, n, t, generator=g) > 0.6] = float("-inf")
        return m
    return None


def _reference(q, k, v, mask, causal, scale) -> torch.Tensor:
    group = q.shape[1] // k.shape[1]
    qd, kd, vd = q.double(), k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    s = qd @ kd.transpose(-1, -2) * scale
    n, t = s.shape[-2:]
    if causal:
        s = s.masked_fill(~torch.ones(n, t, dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask.double()
    return (torch.softmax(s, -1) @ vd).nan_to_num(0.0)  # a row with every key masked: zeros


def _run(q, k, v, mask=None, causal=False, scale=None, **options) -> dict:
    tensors = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()}
    if mask is not None:
        tensors["mask"] = mask.numpy()
    if scale is not None:
        options["scale"] = scale
    return testing.probe("nn.attend", tensors, causal=causal, **options)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("kind", MASKS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}_h{}_kv{}_n{}_t{}_d{}_dv{}".format(*s))
def test_attention_kernel_matches_a_float64_reference_and_aten(shape, kind, isa) -> None:
    b, h, kvh, n, t, d, dv = shape
    g = torch.Generator().manual_seed(n * 31 + t)
    q, k = torch.randn(b, h, n, d, generator=g) * 1.5, torch.randn(b, kvh, t, d, generator=g) * 1.5
    v = torch.randn(b, kvh, t, dv, generator=g)
    mask = _mask(kind, b, h, n, t, g)
    causal = kind == "causal"
    scale = 0.6 if kind == "additive" else None
    out = _run(q, k, v, mask, causal, scale, path="rows", isa=isa)["out"]
    ref = _reference(q, k, v, mask, causal, scale if scale is not None else d**-0.5)
    assert out.shape == (b, h, n, dv)
    # float32 rounding only: within 2e-6 of the largest output, or of twice
    # ATen's own error on the same inputs (large scores round coarser).
    aten = _run(q, k, v, mask, causal, scale, path="aten")["out"]
    err, aten_err = np.abs(out - ref.numpy()).max(), np.abs(aten - ref.numpy()).max()
    bound = max(2e-6 * max(1.0, float(ref.abs().max())), 2 * aten_err)
    assert err <= bound, f"{kind}: worst error {err:.2e} (ATen's {aten_err:.2e})"


@pytest.mark.parametrize("isa", ISAS)
def test_attention_kernel_gives_a_row_the_same_bits_alone_among_all_rows_and_with_padded_keys(isa) -> None:
    """A row's result depends only on its query, keys, values and mask: the
    same bits when computed alone, in a block of others, causal or with an
    explicit mask, and with masked padding keys appended."""
    g = torch.Generator().manual_seed(5)
    b, h, n, d = 2, 3, 21, 40
    q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))
    together = _run(q, k, v, causal=True, path="rows", isa=isa)["out"]
    keep = torch.ones(n, n, dtype=torch.bool).tril()
    explicit = _run(q, k, v, keep, path="rows", isa=isa)["out"]
    assert np.array_equal(together, explicit)
    pad = 13  # padding keys after the real ones, masked out
    kp = torch.cat([k, torch.randn(b, h, pad, d, generator=g)], 2)
    vp = torch.cat([v, torch.randn(b, h, pad, d, generator=g)], 2)
    for i in (0, 7, n - 1):
        row_keep = torch.zeros(1, n + pad, dtype=torch.bool)
        row_keep[0, : i + 1] = True
        alone = _run(q[:, :, i : i + 1], kp, vp, row_keep, path="rows", isa=isa)["out"]
        assert np.array_equal(alone[:, :, 0], together[:, :, i]), f"row {i}"


@pytest.mark.parametrize("isa", ISAS)
def test_attention_kernel_keeps_a_peaked_softmax_exact(isa) -> None:
    """Scores hundreds apart: every weight but the top key's underflows to
    zero, and each row is that key's value row, not NaN."""
    q = torch.zeros(1, 2, 3, 8)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, 19, 8)
    k[0, 0, :, 0] = torch.arange(19) * -50.0
    k[0, 0, 4, 0] = 300.0
    v = torch.randn(1, 1, 19, 8, generator=torch.Generator().manual_seed(0))
    out = _run(q, k, v, scale=1.0, path="rows", isa=isa)["out"]
    for head in range(2):
        for row in range(3):
            np.testing.assert_allclose(out[0, head, row], v[0, 0, 4].numpy(), rtol=1e-6)


def test_attend_runs_the_kernel_by_default_and_aten_once_switched(monkeypatch) -> None:
    g = torch.Generator().manual_seed(9)
    q, k, v = torch.randn(2, 4, 11, 16, generator=g), torch.randn(2, 4, 11, 16, generator=g), torch.randn(2, 4, 11, 16, generator=g)
    mask = _mask("key_padding", 2, 4, 11, 11, g)
    assert mpool.cpu_attention() == "mpool"
    ours = _run(q, k, v, mask)
    assert int(ours["kernel"]) == int(HAS["avx2"])
    mpool.set_cpu_attention("aten")
    try:
        assert mpool.cpu_attention() == "aten"
        aten = _run(q, k, v, mask)
    finally:
        mpool.set_cpu_attention("mpool")
    assert int(aten["kernel"]) == 0
    np.testing.assert_allclose(ours["out"], aten["out"], rtol=0, atol=4e-6)
    # bfloat16 and float16 inputs are ATen's either way
    assert int(_run(q, k, v, mask, dtype="bfloat16")["kernel"]) == 0
    assert int(_run(q, k, v, mask, dtype="float16")["kernel"]) == 0


@pytest.mark.parametrize("bad", ["flash", "", "ATEN", 1, None])
def test_set_cpu_attention_refuses_anything_but_the_two_names_and_keeps_the_choice(bad) -> None:
    before = mpool.cpu_attention()
    with pytest.raises(mpool.InvalidInput, match="mpool, aten"):
        mpool.set_cpu_attention(bad)
    assert mpool.cpu_attention() == before


def _import_with(value: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPOOL_CPU_ATTENTION": value}
    code = "import mpool; print(mpool.cpu_attention())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_the_environment_variable_sets_the_cpu_attention_at_start_up() -> None:
    for value in ("aten", "mpool"):
        run = _import_with(value)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == value
    run = _import_with("flash")
    assert run.returncode != 0
    assert "InvalidInput" in run.stderr and "MPOOL_CPU_ATTENTION" in run.stderr and "'flash'" in run.stderr


def test_minilm_embeds_the_same_with_either_attention_and_as_sentence_transformers() -> None:
    from sentence_transformers import SentenceTransformer

    from corpus import CORPUS

    path = mpool.default_embedding_model_path()
    texts = [t for t in CORPUS if t][:96]
    with mpool.Pool(cold_start_replicas=1) as pool:
        pool.register("minilm", path, max_replicas=1)
        ours = pool.embed("minilm", texts)
        mpool.set_cpu_attention("aten")
        try:
            aten = pool.embed("minilm", texts)
        finally:
            mpool.set_cpu_attention("mpool")
    np.testing.assert_allclose(ours, aten, rtol=0, atol=2e-6)
    ref = SentenceTransformer(path, device="cpu").encode(texts, batch_size=16)
    cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.99999


def test_keys_past_the_scratch_limit_go_to_aten_with_the_same_result() -> None:
    """More than 2^20 key elements a head (8,193 keys of 128 columns) would
    need a 4 MiB scratch a thread: attend hands those to ATen."""
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(1, 1, 2, 128, generator=g), torch.randn(1, 1, 8193, 128, generator=g), torch.randn(1, 1, 8193, 128, generator=g)
    out = _run(q, k, v)
    assert int(out["kernel"]) == 0
    np.testing.assert_allclose(out["out"], _reference(q, k, v, None, False, 128**-0.5).numpy(), rtol=0, atol=2e-6)
    shorter = _run(q, k[:, :, :8192], v[:, :, :8192])
    assert int(shorter["kernel"]) == int(HAS["avx2"])


def test_empty_batches_give_empty_outputs_and_zero_heads_are_invalid_input() -> None:
    """No rows to compute: an empty output, and no division by a zero head
    count anywhere (zero key/value heads is an InvalidInput that says so)."""
    empty = np.zeros((0, 2, 3, 8), np.float32)
    out = testing.probe("nn.attend", {"q": empty, "k": empty, "v": empty})
    assert out["out"].shape == (0, 2, 3, 8)
    no_heads = np.zeros((1, 0, 3, 8), np.float32)
    with pytest.raises(mpool.InvalidInput, match="0 key/value heads"):
        testing.probe("nn.attend", {"q": no_heads, "k": no_heads, "v": no_heads})


# (batch, heads, kv_heads, n, start, d, dv, window): a prompt's rows (positions
# start .. start + n - 1) with widths off every vector length, grouped heads,
# row counts off the 4- and 2-row passes, sliding windows narrower and wider
# than a pass, and one row (a decode step's shape).
PROMPT_SHAPES = [
    (1, 4, 2, 37, 0, 64, 64, 0),
    (2, 3, 3, 13, 9, 80, 72, 0),
    (1, 2, 1, 23, 5, 17, 33, 3),
    (1, 2, 2, 19, 40, 128, 128, 16),
    (2, 2, 1, 6, 0, 5, 7, 1),
    (1, 1, 1, 1, 30, 64, 64, 0),
    (1, 2, 2, 70, 0, 48, 144, 64),
]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", PROMPT_SHAPES, ids=lambda s: "b{}_h{}_kv{}_n{}_start{}_d{}_dv{}_w{}".format(*s))
def test_prompt_attention_gives_each_row_the_bits_of_its_decode_step(shape, isa) -> None:
    """kernels::prompt_attention, a prompt's rows several at a time, gives each
    row exactly what decode_attention gives that row alone against the keys
    and values its decode step would read (positions up to its own, the last
    `window` of them): a decode step's cached key and value then equal
    prefill's, bit for bit. The values also match a float64 reference."""
    b, h, kvh, n, start, d, dv, window = shape
    t = start + n
    g = torch.Generator().manual_seed(t * 7 + d)
    q, k = torch.randn(b, h, n, d, generator=g) * 1.5, torch.randn(b, kvh, t, d, generator=g) * 1.5
    v = torch.randn(b, kvh, t, dv, generator=g)
    out = _run(q, k, v, path="prompt", isa=isa, window=window)["out"]
    assert out.shape == (b, h, n, dv)
    positions = torch.arange(start, t)
    keys = torch.arange(t)
    seen = (keys[None, :] <= positions[:, None]) & (
        (keys[None, :] > positions[:, None] - window) if window > 0 else torch.ones(n, t, dtype=torch.bool)
    )
    ref = _reference(q, k, v, seen.expand(b, h, n, t), False, d**-0.5).numpy()
    assert np.abs(out - ref).max() <= 2e-6 * max(1.0, float(np.abs(ref).max()))
    for i in range(n):
        p = start + i
        first = max(0, p + 1 - window) if window > 0 else 0
        step = _run(
            q[:, :, i : i + 1].contiguous(),
            k[:, :, first : p + 1].contiguous(),
            v[:, :, first : p + 1].contiguous(),
            isa=isa,
        )
        assert step["kernel"] == 1
        assert np.array_equal(out[:, :, i : i + 1].view(np.int32), step["out"].view(np.int32)), f"row {i}"


def test_prompt_attention_refuses_keys_that_do_not_end_at_the_last_row_and_a_negative_window() -> None:
    q, k = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 3, 8)
    with pytest.raises(mpool.InvalidInput, match="prompt_attention does not take these inputs"):
        _run(q, k, k, path="prompt")
    with pytest.raises(mpool.InvalidInput, match="probe option 'window' must be 0 .* got -2"):
        _run(q, q, q, path="prompt", window=-2)
