"""The comparison every text-to-image parity test makes: the native image and
diffusers' output_type="np" image, float HWC in [0, 1]."""

from __future__ import annotations

import numpy as np

ATOL = 1e-3


def assert_same(a: np.ndarray, b: np.ndarray, what: str, atol: float = ATOL) -> None:
    """Max absolute difference at most ``atol``, against a reference that is not flat."""
    assert a.shape == b.shape, (a.shape, b.shape)
    err = float(np.max(np.abs(a.astype(np.float64) - b)))
    print(f"{what}: max abs difference {err:.2e}")
    assert err <= atol, f"{what}: max abs difference {err:.2e}"
    assert float(np.std(b)) > 1e-3, "the reference image is flat: the comparison would prove little"
