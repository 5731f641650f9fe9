"""nn::Weights' renamed views reading row ranges of a stored tensor (through the
nn.weights_renamed probe): a third of a fused qkv, two halves in swapped order,
exact byte accounting, the meta device, and errors that name the stored tensor,
the name asked for and the rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import mpool
import mpool.testing


@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    tensors = {"blk.qkv.weight": torch.randn(12, 5, generator=gen), "blk.ada.bias": torch.randn(8, generator=gen)}
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path))
    return str(path), tensors


NAMES = {
    "to_q.weight": {"stored": "blk.qkv.weight", "rows": [[0, 4]]},
    "to_k.weight": {"stored": "blk.qkv.weight", "rows": [[4, 8]]},
    "to_v.weight": {"stored": "blk.qkv.weight", "rows": [[8, 12]]},
    "norm.bias": {"stored": "blk.ada.bias", "rows": [[4, 8], [0, 4]]},
}


def test_renamed_view_reads_thirds_of_a_fused_tensor_and_swapped_halves_exactly(checkpoint) -> None:
    path, tensors = checkpoint
    get = [["to_q.weight", [4, 5]], ["to_k.weight", [4, 5]], ["to_v.weight", [4, 5]], ["norm.bias", [8]],
           ["to_q.weight", [4, 5]]]
    out = mpool.testing.probe("nn.weights_renamed", {}, checkpoint=path, names=NAMES, get=get)
    q, k, v = tensors["blk.qkv.weight"].chunk(3)
    for name, ref in {"to_q.weight": q, "to_k.weight": k, "to_v.weight": v}.items():
        np.testing.assert_array_equal(out[name], ref.numpy())
    shift, scale = tensors["blk.ada.bias"].chunk(2)
    np.testing.assert_array_equal(out["norm.bias"], torch.cat([scale, shift]).numpy())
    # Each distinct range counts once (q read twice): the whole qkv plus the bias, in float32.
    assert int(out["bytes_taken"]) == (12 * 5 + 8) * 4


def test_renamed_view_with_row_ranges_measures_on_the_meta_device(checkpoint) -> None:
    path, _ = checkpoint
    out = mpool.testing.probe("nn.weights_renamed", {}, checkpoint=path, names=NAMES, device="meta",
                              get=[["to_v.weight", [4, 5]], ["norm.bias", [8]]])
    assert list(out["to_v.weight"]) == [4, 5] and list(out["norm.bias"]) == [8]
    assert int(out["bytes_taken"]) == (4 * 5 + 8) * 4


@pytest.mark.parametrize("rows, shape", [([[8, 13]], [5, 5]), ([[0, 4]], [5, 5]), ([[0, 4]], [4, 6])])
def test_row_ranges_that_do_not_fit_name_the_stored_tensor_and_the_rows(checkpoint, rows, shape) -> None:
    path, _ = checkpoint
    names = {"x.weight": {"stored": "blk.qkv.weight", "rows": rows}}
    with pytest.raises(mpool.InvalidInput, match=r"tensor 'blk\.qkv\.weight' \(read as 'x\.weight' from rows \["):
        mpool.testing.probe("nn.weights_renamed", {}, checkpoint=path, names=names, get=[["x.weight", shape]])


def test_int8_view_quantizes_each_row_range_and_counts_each_once(checkpoint) -> None:
    path, tensors = checkpoint
    get = [["to_q.weight", [4, 5]], ["to_k.weight", [4, 5]], ["to_v.weight", [4, 5]], ["to_q.weight", [4, 5]]]
    runs = {
        device: mpool.testing.probe("nn.weights_renamed", {}, checkpoint=path, names=NAMES, get=get, int8=True,
                                    device=device)
        for device in ("cpu", "meta")
    }
    for out in runs.values():
        # Three distinct ranges of 4 rows: 4 x 5 int8 weights and 4 float32 scales each.
        assert int(out["bytes_taken"]) == 3 * (4 * 5 + 4 * 4)
    out = runs["cpu"]
    q, k, v = tensors["blk.qkv.weight"].chunk(3)
    for name, ref in {"to_q.weight": q, "to_k.weight": k, "to_v.weight": v}.items():
        scale = ref.abs().amax(1, keepdim=True) / 127  # per row, to within half a step
        assert (np.abs(out[name] - ref.numpy()) <= scale.numpy() / 2 * (1 + 1e-6)).all()
