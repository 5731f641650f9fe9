"""Chaos in CI: 2,000 requests from 32 threads across every capability, with the
pool changing under them; and RSS over 100 load/unload cycles of the native MiniLM.
The soak runs the same code at 20,000 requests (see tests/python/chaos.py)."""

from __future__ import annotations

from chaos import GRACE_S, run_chaos, rss_cycles


def test_chaos_every_request_ends_once_nothing_hangs_and_close_leaves_no_thread_or_memory():
    report = run_chaos(requests=2000, threads=32, seed=0)
    problems = report.problems()
    assert not problems, "\n".join(problems)
    assert sum(report.outcomes.values()) == 2000
    assert report.outcomes["ok"] > 0
    assert report.worst_overrun_s <= GRACE_S
    # The run really mixed lifecycle and memory changes into the load.
    for action in ("unload", "unregister", "register", "budget", "pin", "keep_alive"):
        assert report.monkey[action] > 0, report.monkey


def test_rss_returns_within_five_percent_after_100_load_unload_cycles_of_native_minilm():
    report = rss_cycles(cycles=100)
    assert abs(report.ratio - 1) <= 0.05, (report.baseline_mb, report.after_mb)
