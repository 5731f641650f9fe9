"""asyncio bridging: native completions wake an event loop, no thread waits for them.

A native stream or future calls a Python callback from the producing replica
thread (with the GIL) when something is ready; these helpers turn that callback
into an asyncio wake-up on the waiting loop. Nothing here knows the Pool: any
front end with native streams and futures can use them.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any

__all__ = ["await_native", "wait_chunks", "wake"]

# Past a native deadline, the loop waits this much longer before the next poll()
# or result(), which then settle the request as Timeout.
_DEADLINE_SLACK_S = 0.05


def wake(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> Callable[[], None]:
    """A callback for a native thread that completes ``waiter`` on ``loop``."""

    def settle() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def ready() -> None:  # on the producing native thread, with the GIL
        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    return ready


async def _done_within(fut: asyncio.Future[None], timeout: float) -> bool:
    """Waits until ``fut`` is done or ``timeout`` seconds passed (inf: no limit);
    True if it is done. Never cancels ``fut``.

    Not ``asyncio.wait_for``: before Python 3.12 it returns normally, swallowing
    the cancellation, when the task waiting in it is cancelled in the same loop
    iteration that ``fut`` completes in. The task then went on waiting for a
    stream nobody cancelled. Here a cancelled task always raises CancelledError.
    """
    if fut.done():
        return True
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()

    def open_gate(_: object = None) -> None:
        if not gate.done():
            gate.set_result(None)

    fut.add_done_callback(open_gate)
    timer = loop.call_later(timeout, open_gate) if math.isfinite(timeout) else None
    try:
        await gate
    finally:
        fut.remove_done_callback(open_gate)
        if timer is not None:
            timer.cancel()
    return fut.done()


async def wait_chunks(poll: Callable[[], tuple[bool, Any]], native: Any) -> AsyncGenerator[Any, None]:
    """Yields a stream's items without holding any thread while it waits.

    ``poll()`` takes what is there; when nothing is, the native stream calls back
    (``on_ready``) as soon as a chunk or the end arrives. Past the deadline,
    ``poll()`` settles the stream as Timeout.
    """
    loop = asyncio.get_running_loop()
    while True:
        got, item = poll()
        if got:
            if item is None:
                return
            yield item
            continue
        waiter: asyncio.Future[None] = loop.create_future()
        native.on_ready(wake(loop, waiter))
        # Past the deadline, the next poll() raises Timeout.
        await _done_within(waiter, max(native.remaining(), 0.0) + _DEADLINE_SLACK_S)


async def submit_off_loop(submit: Callable[[Callable[[], bool]], Any]) -> Any:
    """``submit(cancelled)`` (which decodes or fetches, asks ``cancelled()``, and
    only then queues a native request) on the default executor. A task cancelled
    meanwhile queues nothing; one cancelled as its request was queued cancels it."""
    lock = threading.Lock()
    state: dict[str, Any] = {"cancelled": False, "future": None}

    def cancelled() -> bool:
        with lock:
            return bool(state["cancelled"])

    def run() -> Any:
        future = submit(cancelled)
        with lock:
            state["future"] = future
            cancel = state["cancelled"]
        if cancel:
            future.cancel()
        return future

    try:
        return await asyncio.get_running_loop().run_in_executor(None, run)
    except asyncio.CancelledError:
        with lock:
            state["cancelled"] = True
            future = state["future"]
        if future is not None:
            future.cancel()
        raise


async def await_native(
    future: Any, on_tick: Callable[[], None] | None = None, tick_s: float = 0.5
) -> Any:
    """Awaits a native future: completion arrives by callback, never by a blocked thread.

    ``on_tick`` (a progress display) is called on the loop at least every
    ``tick_s`` seconds while the future is pending.
    """
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def settle() -> None:
        if not done.done():
            done.set_result(None)

    def on_done() -> None:  # on the replica thread, with the GIL
        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    future.add_done_callback(on_done)
    try:
        while True:
            wait = max(future.remaining(), 0.0) + _DEADLINE_SLACK_S
            ticking = on_tick is not None and wait > tick_s
            if await _done_within(done, tick_s if ticking else wait) or not ticking:
                break  # done, or past the deadline: result() below settles it as Timeout
            assert on_tick is not None
            on_tick()
    except asyncio.CancelledError:
        future.cancel()
        raise
    return future.result()
