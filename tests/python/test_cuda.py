"""The CUDA paths, on a machine with a CUDA device and a CUDA build of torch.

Skipped elsewhere (the CI machine and this project's development machine have no
GPU); the device tool runs them where one is lent. What they hold is what the
CPU suite holds for the CPU: the governor's reading of device memory, and the
continuous batch with its paged cache and prefix reuse on the device.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mpool
from decoder_models import build_decoder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device and a CUDA build of torch")


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_decoder(tmp_path_factory.mktemp("cuda"), "llama")


def test_the_governor_reads_each_visible_device_total_as_torch_cuda_mem_get_info_does() -> None:
    with mpool.Pool() as pool:
        devices = {d["device"]: d for d in pool.stats()["devices"]}
    for ordinal in range(torch.cuda.device_count()):
        _, total = torch.cuda.mem_get_info(ordinal)
        assert devices[f"cuda:{ordinal}"]["total_mb"] == pytest.approx(total / 2**20, rel=0.01)


def test_a_continuous_batch_on_the_device_ends_every_stream_and_frees_its_blocks(llama: Path) -> None:
    prompt = list(range(8, 48))  # two full blocks shared by every request after the first
    with mpool.Pool() as pool:
        pool.register("m", llama, device="cuda:0", max_replicas=1, options={"kv_cache_tokens": 4096})
        first = list(pool.generate("m", prompt + [50], max_tokens=16, temperature=0, ignore_eos=True))
        streams = [pool.generate("m", prompt + [60 + i], max_tokens=16, temperature=0, ignore_eos=True)
                   for i in range(8)]
        outputs = [[i for c in s for i in c.token_ids] for s in streams]
        usage = pool.stats()["models"]["m"]["usage"]
    assert sum(len(c.token_ids) for c in first) == 16
    assert all(len(o) == 16 for o in outputs)
    assert usage["kv_cache_blocks_in_use"] == 0 and usage["prefix_cache_hit_tokens"] == 8 * 32
