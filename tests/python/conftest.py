import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub


@pytest.fixture
def pool():
    import mpool

    p = mpool.Pool(maintenance_interval=0.02, request_timeout=20.0)
    yield p
    p.close()


# transformers' from_pretrained turns weight tying off by swapping
# PreTrainedModel.tie_weights for a no-op and back (initialization.no_tie_weights).
# Two loads that overlap in time (from different threads) can restore the no-op,
# and from then on no model of the process ties its embeddings: oracles built
# afterwards keep untied random copies that their saved files do not hold. Every
# test starts with the genuine method, and a test that leaves the no-op behind is
# named on stderr.
def _pretrained_model_class():
    import sys

    module = sys.modules.get("transformers.modeling_utils")
    return None if module is None else module.PreTrainedModel


_GENUINE_TIE_WEIGHTS: dict[str, object] = {}


@pytest.fixture(autouse=True)
def _genuine_transformers_tie_weights(request):
    cls = _pretrained_model_class()
    if cls is not None:
        current = cls.__dict__.get("tie_weights")
        if "f" not in _GENUINE_TIE_WEIGHTS and getattr(current, "__name__", "") == "tie_weights":
            _GENUINE_TIE_WEIGHTS["f"] = current
        if "f" in _GENUINE_TIE_WEIGHTS and current is not _GENUINE_TIE_WEIGHTS["f"]:
            cls.tie_weights = _GENUINE_TIE_WEIGHTS["f"]
    yield
    cls = _pretrained_model_class()
    if cls is None:
        return
    current = cls.__dict__.get("tie_weights")
    if "f" not in _GENUINE_TIE_WEIGHTS and getattr(current, "__name__", "") == "tie_weights":
        _GENUINE_TIE_WEIGHTS["f"] = current
    if "f" in _GENUINE_TIE_WEIGHTS and current is not _GENUINE_TIE_WEIGHTS["f"]:
        import sys

        print(f"\n[conftest] {request.node.nodeid} left transformers' tie_weights disabled; restored", file=sys.stderr)
        cls.tie_weights = _GENUINE_TIE_WEIGHTS["f"]


def _float32_gemms() -> list:
    import torch

    return ["aten", pytest.param("onednn", marks=pytest.mark.skipif(
        not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN"))]


@pytest.fixture(params=_float32_gemms())
def each_float32_gemm(request):
    """Runs the test once per float32 GEMM library (mpool.cpu), whatever this
    CPU's default, so both paths meet their oracle on every machine."""
    import mpool

    before = mpool.float32_gemm()
    mpool.set_float32_gemm(request.param)
    yield request.param
    mpool.set_float32_gemm(before)


@pytest.fixture
def sigint_raises():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test. A runner
    started in the background (`cmd &` without job control) inherits SIGINT
    ignored, and then `_thread.interrupt_main()` does nothing at all."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
