"""mpool.safetensors_load against the safetensors package, and its validation errors."""

from __future__ import annotations

import gc
import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

import mpool

RNG = np.random.default_rng(0)

NUMPY_DTYPES = [
    np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
    np.float16, np.float32, np.float64,
]


def random_array(dtype, shape=(3, 5)) -> np.ndarray:
    if dtype == np.bool_:
        return RNG.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return RNG.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return RNG.standard_normal(shape).astype(dtype)


def raw_file(path: Path, header: dict | bytes, data: bytes, header_len: int | None = None) -> Path:
    """Writes a safetensors file byte by byte (header may be invalid on purpose)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(text) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", n) + text + data)
    return path


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def mapping_of(address: int) -> str:
    """The path of the mapping of this process that holds `address` ("" when anonymous)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= address < hi:
            return fields[5] if len(fields) > 5 else ""
    raise AssertionError(f"address {address:#x} is in no mapping")


def rss_anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_every_numpy_dtype_round_trips_from_the_safetensors_package(tmp_path):
    tensors = {f"t_{np.dtype(d).name}": random_array(d) for d in NUMPY_DTYPES}
    tensors["scalar"] = np.array(3.5, dtype=np.float32)
    tensors["empty"] = np.zeros((0, 4), dtype=np.float32)
    safetensors.numpy.save_file(tensors, tmp_path / "model.safetensors")
    loaded = mpool.safetensors_load(tmp_path / "model.safetensors")
    assert set(loaded) == set(tensors)
    for name, expected in tensors.items():
        assert loaded[name].dtype == expected.dtype, name
        assert loaded[name].shape == expected.shape, name
        np.testing.assert_array_equal(loaded[name], expected, err_msg=name)


def test_bfloat16_and_float8_come_back_as_exact_float32(tmp_path):
    bf16 = torch.randn(4, 6).to(torch.bfloat16)
    f8 = torch.randn(8).to(torch.float8_e4m3fn)
    f8b = torch.randn(8).to(torch.float8_e5m2)
    safetensors.torch.save_file({"bf16": bf16, "f8": f8, "f8b": f8b}, tmp_path / "w.safetensors")
    loaded = mpool.safetensors_load(tmp_path / "w.safetensors")
    for name, t in {"bf16": bf16, "f8": f8, "f8b": f8b}.items():
        assert loaded[name].dtype == np.float32
        np.testing.assert_array_equal(loaded[name], t.float().numpy(), err_msg=name)
    assert "bf16" not in loaded.zero_copy


def test_conversion_to_float16_bfloat16_float32_converts_floats_only(tmp_path):
    x = RNG.standard_normal((16, 16)).astype(np.float32)
    ids = np.arange(10, dtype=np.int64)
    safetensors.numpy.save_file({"x": x, "ids": ids}, tmp_path / "w.safetensors")
    path = tmp_path / "w.safetensors"

    f16 = mpool.safetensors_load(path, dtype="float16")
    assert f16["x"].dtype == np.float16
    np.testing.assert_array_equal(f16["x"], x.astype(np.float16))
    assert f16["ids"].dtype == np.int64 and "ids" in f16.zero_copy

    bf16 = mpool.safetensors_load(path, dtype="bfloat16")
    assert bf16["x"].dtype == np.float32  # numpy has no bfloat16: widened after rounding
    np.testing.assert_array_equal(bf16["x"], torch.from_numpy(x).to(torch.bfloat16).float().numpy())
    assert not np.array_equal(bf16["x"], x)

    f32 = mpool.safetensors_load(path, dtype="float32")
    np.testing.assert_array_equal(f32["x"], x)
    assert "x" in f32.zero_copy  # no conversion needed: still a view of the file

    back = mpool.safetensors_load(tmp_path / "w.safetensors", dtype="float64")
    np.testing.assert_array_equal(back["x"], x.astype(np.float64))


def test_unknown_target_dtype_is_invalid_input(tmp_path):
    safetensors.numpy.save_file({"x": np.zeros(2, np.float32)}, tmp_path / "w.safetensors")
    with pytest.raises(mpool.InvalidInput, match="dtype must be one of"):
        mpool.safetensors_load(tmp_path / "w.safetensors", dtype="int8")


def test_sharded_checkpoint_loads_through_its_index(tmp_path):
    a = {"layer.0.w": random_array(np.float32, (4, 4)), "layer.0.b": random_array(np.float32, (4,))}
    b = {"layer.1.w": random_array(np.float32, (4, 4)), "head": random_array(np.float16, (2, 4))}
    safetensors.numpy.save_file(a, tmp_path / "model-00001-of-00002.safetensors")
    safetensors.numpy.save_file(b, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {k: "model-00001-of-00002.safetensors" for k in a}
    weight_map |= {k: "model-00002-of-00002.safetensors" for k in b}
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )
    for target in (tmp_path, tmp_path / "model.safetensors.index.json"):
        loaded = mpool.safetensors_load(target)
        assert set(loaded) == set(a) | set(b)
        for name, value in (a | b).items():
            np.testing.assert_array_equal(loaded[name], value)
        assert loaded.warnings == []


def test_sharded_index_naming_a_missing_shard_is_an_error(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "model-00001-of-00002.safetensors"}})
    )
    with pytest.raises(mpool.InvalidInput, match="model-00001-of-00002.safetensors.*does not exist"):
        mpool.safetensors_load(tmp_path)


def test_zero_copy_arrays_view_the_mapping_without_anonymous_memory(tmp_path):
    n = 16 * 1024 * 1024  # 64 MiB of float32 per tensor
    tensors = {"a": np.ones(n, np.float32), "b": np.full(n, 2.0, np.float32)}
    safetensors.numpy.save_file(tensors, tmp_path / "big.safetensors")
    del tensors
    gc.collect()
    before = rss_anon_kib()
    loaded = mpool.safetensors_load(tmp_path / "big.safetensors")
    grown_mib = (rss_anon_kib() - before) / 1024
    assert loaded.zero_copy == {"a", "b"}
    assert grown_mib < 16, f"zero-copy load grew anonymous memory by {grown_mib:.0f} MiB"
    # Both arrays sit in one mapping, exactly as far apart as in the file.
    with open(tmp_path / "big.safetensors", "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    gap = header["b"]["data_offsets"][0] - header["a"]["data_offsets"][0]
    assert loaded["b"].ctypes.data - loaded["a"].ctypes.data == gap
    assert float(loaded["b"][123]) == 2.0

    assert mapping_of(loaded["a"].ctypes.data).endswith("big.safetensors")

    # A converted load owns its memory: its arrays lie outside the file's mapping
    # (checked by address, not by RSS growth, which the allocator's reuse of
    # pages freed earlier in the process makes vary from run to run).
    converted = mpool.safetensors_load(tmp_path / "big.safetensors", dtype="float16")
    assert converted.zero_copy == frozenset()
    for name in ("a", "b"):
        assert converted[name].dtype == np.float16
        assert not mapping_of(converted[name].ctypes.data).endswith("big.safetensors"), name
    assert float(converted["b"][123]) == 2.0


def test_writing_a_zero_copy_array_never_changes_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors.numpy.save_file({"w": np.zeros(1024, np.float32)}, path)
    before = path.read_bytes()
    loaded = mpool.safetensors_load(path)
    assert "w" in loaded.zero_copy
    loaded["w"][:] = 7.0
    assert path.read_bytes() == before
    np.testing.assert_array_equal(mpool.safetensors_load(path)["w"], np.zeros(1024, np.float32))


def test_an_array_outlives_its_dict_and_keeps_the_mapping(tmp_path):
    value = random_array(np.float32, (100,))
    safetensors.numpy.save_file({"w": value, "v": value}, tmp_path / "w.safetensors")
    w = mpool.safetensors_load(tmp_path / "w.safetensors")["w"]
    gc.collect()
    (tmp_path / "w.safetensors").unlink()
    np.testing.assert_array_equal(w, value)


def test_unaligned_data_offsets_still_load_by_copying(tmp_path):
    # A 1-byte tensor first pushes the float32 one to an odd offset.
    x = np.array([1.5, -2.25, 3.0], dtype=np.float32)
    header = {"pad": entry("U8", [1], 0, 1), "x": entry("F32", [3], 1, 13)}
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)  # data section aligned, tensor x is not
    raw_file(tmp_path / "u.safetensors", text, b"\x07" + x.tobytes())
    loaded = mpool.safetensors_load(tmp_path / "u.safetensors")
    np.testing.assert_array_equal(loaded["x"], x)
    assert loaded["pad"][0] == 7
    assert "x" not in loaded.zero_copy and "pad" in loaded.zero_copy


def test_header_length_beyond_the_file_names_the_file(tmp_path):
    path = raw_file(tmp_path / "bad.safetensors", b"{}", b"", header_len=1000)
    with pytest.raises(mpool.InvalidInput, match=r"bad\.safetensors: header length 1000 goes beyond the end"):
        mpool.safetensors_load(path)


def test_truncated_file_is_too_small_for_a_header(tmp_path):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01\x02")
    with pytest.raises(mpool.InvalidInput, match=r"tiny\.safetensors: file is 2 bytes, too small"):
        mpool.safetensors_load(path)


def test_malformed_json_header_names_the_file(tmp_path):
    path = raw_file(tmp_path / "bad.safetensors", b'{"w": {"dtype": "F32",', b"")
    with pytest.raises(mpool.InvalidInput, match=r"bad\.safetensors: malformed JSON header"):
        mpool.safetensors_load(path)


def test_offsets_outside_the_data_name_file_and_tensor(tmp_path):
    path = raw_file(tmp_path / "bad.safetensors", {"w": entry("F32", [4], 0, 16)}, b"\0" * 8)
    with pytest.raises(mpool.InvalidInput, match=r'bad\.safetensors: tensor "w": .*outside the data section'):
        mpool.safetensors_load(path)


def test_overlapping_tensors_name_both_tensors(tmp_path):
    header = {"a": entry("F32", [2], 0, 8), "b": entry("F32", [2], 4, 12)}
    path = raw_file(tmp_path / "bad.safetensors", header, b"\0" * 12)
    with pytest.raises(mpool.InvalidInput, match=r'bad\.safetensors: tensor "b": .*overlap tensor "a"'):
        mpool.safetensors_load(path)


def test_shape_times_dtype_must_match_the_byte_range(tmp_path):
    path = raw_file(tmp_path / "bad.safetensors", {"w": entry("F32", [3], 0, 8)}, b"\0" * 8)
    with pytest.raises(mpool.InvalidInput, match=r'bad\.safetensors: tensor "w": shape \[3\] x F32 needs 12 bytes'):
        mpool.safetensors_load(path)


def test_unknown_dtype_names_file_and_tensor(tmp_path):
    path = raw_file(tmp_path / "bad.safetensors", {"w": entry("F128", [1], 0, 16)}, b"\0" * 16)
    with pytest.raises(mpool.InvalidInput, match=r'bad\.safetensors: tensor "w": unknown dtype "F128"'):
        mpool.safetensors_load(path)


def test_missing_expected_tensor_names_it_and_the_files_searched(tmp_path):
    safetensors.numpy.save_file({"a": np.zeros(2, np.float32)}, tmp_path / "s1.safetensors")
    safetensors.numpy.save_file({"b": np.zeros(2, np.float32)}, tmp_path / "s2.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})
    )
    with pytest.raises(mpool.InvalidInput) as info:
        mpool.safetensors_load(tmp_path, expected=["a", "encoder.layer.0.weight"])
    message = str(info.value)
    assert 'missing tensor "encoder.layer.0.weight"' in message
    assert str(tmp_path / "s1.safetensors") in message and str(tmp_path / "s2.safetensors") in message


def test_unexpected_extra_tensors_are_warnings_not_errors(tmp_path, caplog):
    safetensors.numpy.save_file(
        {"w": np.ones(2, np.float32), "pooler.dense.weight": np.ones(2, np.float32)},
        tmp_path / "model.safetensors",
    )
    with caplog.at_level(logging.WARNING, logger="mpool.loading"):
        loaded = mpool.safetensors_load(tmp_path, expected=["w"])
    assert set(loaded) == {"w"}
    assert len(loaded.warnings) == 1
    assert 'unexpected tensor "pooler.dense.weight"' in loaded.warnings[0]
    assert "model.safetensors" in loaded.warnings[0]
    assert [r.getMessage() for r in caplog.records] == loaded.warnings


@pytest.mark.parametrize(
    ("name", "content", "advice"),
    [
        ("pytorch_model.bin", b"PK\x03\x04rest-of-zip", "safe_serialization=True"),
        ("weights.pt", b"\x80\x04\x95 pickle", "safetensors.torch.save_file"),
        ("model.gguf", b"GGUF\x03\x00\x00\x00", "gguf_file="),
    ],
)
def test_other_checkpoint_formats_explain_how_to_convert(tmp_path, name, content, advice):
    (tmp_path / name).write_bytes(content)
    for target in (tmp_path / name, tmp_path):
        with pytest.raises(mpool.InvalidInput) as info:
            mpool.safetensors_load(target)
        assert name in str(info.value) and advice in str(info.value)


def test_valid_file_whose_header_length_looks_like_pickle_magic_loads(tmp_path):
    # A 640-byte header (0x280) makes the file start with b"\x80\x02", pickle's protocol-2 opcode.
    text = json.dumps({"w": entry("U8", [2], 0, 2)}).encode().ljust(640)
    loaded = mpool.safetensors_load(raw_file(tmp_path / "model.safetensors", text, b"\x01\x02"))
    np.testing.assert_array_equal(loaded["w"], np.array([1, 2], np.uint8))


def test_pickle_renamed_to_safetensors_is_recognised(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(mpool.InvalidInput, match="PyTorch pickle checkpoint"):
        mpool.safetensors_load(tmp_path / "model.safetensors")
