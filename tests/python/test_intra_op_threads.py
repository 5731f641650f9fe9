"""Intra-op threads per replica: the default core share, the pool's and the model's
settings, their checks, and that a replica's thread really runs torch with its count
while the process default and the caller's threads keep theirs."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import torch

import mpool
import mpool.testing
from mpool.errors import InvalidInput

CPUS = len(os.sched_getaffinity(0))


class ThreadReporter:
    """An embedder that records torch's intra-op count on the thread that calls it."""

    dimension = 2

    def __init__(self, seen):
        self.seen = seen
        seen.append(("load", threading.get_native_id(), torch.get_num_threads()))

    def embed(self, texts, task=None):
        self.seen.append(("embed", threading.get_native_id(), torch.get_num_threads()))
        return np.ones((len(texts), 2), dtype=np.float32)


def reporter(seen, **kw):
    return mpool.PyModel("text_embedding", lambda device: ThreadReporter(seen), memory_mb=1, **kw)


def threads_of(pool, key):
    return pool.stats()["models"][key]["intra_op_threads"]


def idle(pool, key="m"):
    """Waits until no replica of `key` is in a job (a reply can come before its replica is idle)."""
    deadline = time.monotonic() + 30
    while pool.stats()["models"][key]["busy_replicas"] > 0:
        assert time.monotonic() < deadline
        time.sleep(0.001)


def count_on_a_fresh_thread():
    out = []
    t = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
    t.start()
    t.join()
    return out[0]


class Gated(ThreadReporter):
    """Its "first" request waits, inside its replica, until a "second" one has run."""

    def __init__(self, seen, running, done):
        super().__init__(seen)
        self.running, self.done = running, done

    def embed(self, texts, task=None):
        out = super().embed(texts, task)
        if texts == ["first"]:
            self.running.set()
            assert self.done.wait(30)
        elif texts == ["second"]:
            self.done.set()
        return out


def test_default_share_is_the_cpus_over_the_replicas_in_a_job_at_its_start():
    seen, running, done = [], threading.Event(), threading.Event()
    model = mpool.PyModel("text_embedding", lambda device: Gated(seen, running, done), memory_mb=1, max_replicas=2)
    with mpool.Pool(cold_start_replicas=2) as pool:
        pool.register("m", model)
        assert threads_of(pool, "m") is None  # no fixed count: the share, per job
        pool.embed("m", ["alone"])
        idle(pool)
        first = threading.Thread(target=pool.embed, args=("m", ["first"]))
        first.start()
        assert running.wait(30)
        pool.embed("m", ["second"])
        first.join()
        idle(pool)
        pool.embed("m", ["alone again"])
        per_replica = pool.stats()["models"]["m"]["replica_intra_op_threads"]
    counts = [n for what, _, n in seen if what == "embed"]
    # alone: every CPU; the second of two replicas in a job: half; the first kept
    # what it started with; alone again: every CPU.
    assert counts == [CPUS, CPUS, max(1, CPUS // 2), CPUS]
    assert len(per_replica) == 2 and all(n >= 1 for n in per_replica)


def test_model_setting_wins_over_the_pools_which_wins_over_the_share():
    with mpool.Pool(intra_op_threads=3) as pool:
        pool.register("pool", reporter([]), max_replicas=2)
        pool.register("own", reporter([]), max_replicas=2, intra_op_threads=5)
        assert threads_of(pool, "pool") == 3
        assert threads_of(pool, "own") == 5
        pool.embed("own", ["x"])
        assert set(pool.stats()["models"]["own"]["replica_intra_op_threads"]) <= {0, 5}  # 0: still loading


def test_native_model_takes_its_own_setting_and_register_overrides_it():
    path = mpool.default_embedding_model_path()
    if path is None:
        pytest.skip("the bundled all-MiniLM-L6-v2 is not installed")
    with mpool.Pool() as pool:
        model = mpool.NativeModel(path, intra_op_threads=2)
        pool.register("native", model)
        pool.register("overridden", model, intra_op_threads=1)
        assert threads_of(pool, "native") == 2
        assert threads_of(pool, "overridden") == 1
        assert model._spec.intra_op_threads == 2  # the override stays with its registration


@pytest.mark.parametrize("bad", [0, -1, 1025, 1.5, True, "2", np.float64(2.0)])
def test_bad_thread_counts_are_invalid_input_naming_the_parameter(bad):
    with pytest.raises(InvalidInput, match="intra_op_threads"):
        mpool.Pool(intra_op_threads=bad)
    with mpool.Pool() as pool:
        with pytest.raises(InvalidInput, match="intra_op_threads"):
            pool.register("m", reporter([]), intra_op_threads=bad)
        assert not pool.stats()["models"]  # nothing was registered
    path = mpool.default_embedding_model_path()
    if path is not None:
        with pytest.raises(InvalidInput, match="intra_op_threads"):
            mpool.NativeModel(path, intra_op_threads=bad)


@pytest.mark.parametrize("count", [1, 3])
def test_replica_threads_run_torch_with_their_count_and_leave_other_threads_alone(count):
    main_before = torch.get_num_threads()
    fresh_before = count_on_a_fresh_thread()
    seen = []
    with mpool.Pool(cold_start_replicas=2, memory_budget_mb={"cpu": 100}) as pool:
        pool.register("m", reporter(seen), max_replicas=2, intra_op_threads=count)
        pool.embed("m", ["a", "b"])
        deadline = time.monotonic() + 30
        while [what for what, _, _ in seen].count("load") < 2:  # the second replica may still be loading
            assert time.monotonic() < deadline
            time.sleep(0.001)
        replica_threads = {tid for _, tid, _ in seen}
        assert threading.get_native_id() not in replica_threads
        assert len(replica_threads) == 2
        assert all(n == count for _, _, n in seen), seen
        # Only the replicas' own threads changed: the caller's count and the count a
        # new thread starts with (torch's process default) are what they were.
        assert torch.get_num_threads() == main_before
        assert count_on_a_fresh_thread() == fresh_before


def test_replica_count_holds_after_the_user_set_torchs_threads_explicitly():
    # torch.set_num_threads stores an explicit count that torch's lazy per-thread
    # init applies on a thread's first op; the replica's count must still win.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        with mpool.Pool(cold_start_replicas=1) as pool:
            pool.register("one", reporter(seen), intra_op_threads=1)
            pool.register("three", reporter(seen), intra_op_threads=3)
            pool.embed("one", ["x"])
            pool.embed("three", ["y"])
        assert [n for what, _, n in seen if what == "embed"] == [1, 3], seen
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_two_models_in_one_pool_each_run_with_their_own_count():
    seen_a, seen_b = [], []
    with mpool.Pool(cold_start_replicas=1) as pool:
        pool.register("a", reporter(seen_a), intra_op_threads=1)
        pool.register("b", reporter(seen_b), intra_op_threads=2)
        for _ in range(3):
            pool.embed("a", ["x"])
            pool.embed("b", ["y"])
    assert {n for _, _, n in seen_a} == {1}
    assert {n for _, _, n in seen_b} == {2}


@pytest.mark.skipif(CPUS < 2, reason="needs 2 CPUs for a team of 2")
def test_big_kernels_beside_torchs_ops_split_over_torchs_own_openmp_team() -> None:
    # The int8 kernel's many-row tiles and the attention kernel run on the
    # calling thread's torch (OpenMP) team, not on TBB's threads, where the
    # OpenMP worker left spinning by torch's ops took a core from them. Only
    # nn/torch_team.cpp is compiled with OpenMP: without it ATen's inline
    # at::parallel_for would run serially and the kernels would fall back to
    # TBB, whose threads carry no torch thread id. Each item records the torch
    # thread id that ran it: team ids 0..threads-1, all of them used.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = mpool.testing.probe("nn.parallel_for_beside_torch", n=64)
    finally:
        torch.set_num_threads(before)
    assert int(out["threads"]) == 2
    assert sorted(set(out["thread_ids"].tolist())) == [0, 1]
