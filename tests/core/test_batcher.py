"""The batcher waits for company only while company is on its way."""

import asyncio
import threading
import time

import numpy as np
import pytest

from service.core.batcher import DynamicBatcher
from service.core.errors import DeadlineExceeded, ModelUnavailable
from service.core.stats import CoreStats


def _batcher(in_flight, stats, wait_ms):
    return DynamicBatcher(lambda x: x * 2, name="m", max_batch_size=8, max_wait_ms=wait_ms,
                          stats=stats, in_flight=in_flight).start()


def test_lone_request_is_not_held_for_the_batching_window():
    stats = CoreStats()
    batcher = _batcher(lambda: 1, stats, wait_ms=5_000)  # a 5 s window nobody should wait out
    try:
        start = time.monotonic()
        out = batcher.submit(np.ones((1, 3), np.float32)).result(timeout=10)
        assert time.monotonic() - start < 2.5
        np.testing.assert_array_equal(out, np.full((1, 3), 2.0))
    finally:
        batcher.close(wait=True)


def test_expected_request_is_waited_for_and_joins_the_pass():
    stats = CoreStats()
    batcher = _batcher(lambda: 2, stats, wait_ms=5_000)  # two admitted: wait for the second
    try:
        second: list = []
        first = batcher.submit(np.ones((1, 3), np.float32))
        threading.Timer(0.2, lambda: second.append(
            batcher.submit(np.zeros((1, 3), np.float32)))).start()
        np.testing.assert_array_equal(first.result(timeout=10), np.full((1, 3), 2.0))
        np.testing.assert_array_equal(second[0].result(timeout=10), np.zeros((1, 3)))
        assert stats.batch_sizes("m") == {2: 1}  # one pass of both
    finally:
        batcher.close(wait=True)


def test_a_pass_that_cannot_be_formed_fails_its_requests_and_the_worker_goes_on():
    # Blocks whose rows differ in width cannot be joined into one pass: np.concatenate raises
    # inside the worker. Those requests fail; the next one is served by the same worker.
    stats = CoreStats()
    admitted = [2]  # two admitted: one pass of both
    batcher = _batcher(lambda: admitted[0], stats, wait_ms=5_000)
    try:
        narrow = batcher.submit(np.ones((1, 3), np.float32))
        wide = batcher.submit(np.ones((1, 4), np.float32))
        for future in (narrow, wide):
            with pytest.raises(ModelUnavailable, match="forward pass of m failed"):
                future.result(timeout=10)
        admitted[0] = 1
        good = batcher.submit(np.ones((2, 3), np.float32))
        np.testing.assert_array_equal(good.result(timeout=10), np.full((2, 3), 2.0))
        assert stats.batch_sizes("m") == {1: 1}  # only the good pass was counted (1 block)
    finally:
        batcher.close(wait=True)


def test_asyncio_callers_share_a_pass_get_their_own_rows_and_one_loop_wake_up():
    import asyncio

    stats = CoreStats()
    batcher = _batcher(lambda: 3, stats, wait_ms=5_000)  # three admitted: one pass of all three

    async def three() -> tuple[list, int]:
        loop = asyncio.get_running_loop()
        wake_ups = 0
        original = loop.call_soon_threadsafe

        def counting(*args, **kwargs):
            nonlocal wake_ups
            wake_ups += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counting
        try:
            outs = await asyncio.gather(*(batcher.run(np.full((1, 3), i, np.float32))
                                          for i in range(3)))
        finally:
            del loop.call_soon_threadsafe
        return outs, wake_ups

    try:
        outs, wake_ups = asyncio.run(three())
        for i, out in enumerate(outs):
            np.testing.assert_array_equal(out, np.full((1, 3), 2.0 * i))
        assert stats.batch_sizes("m") == {3: 1}
        assert wake_ups == 1  # the whole pass reached the loop at once, not one call per block
    finally:
        batcher.close(wait=True)


def test_an_asyncio_caller_that_gave_up_is_skipped_and_a_failed_pass_raises_in_each():
    import asyncio

    stats = CoreStats()
    batcher = _batcher(lambda: 2, stats, wait_ms=5_000)

    async def scenario() -> None:
        gone = asyncio.ensure_future(batcher.run(np.ones((1, 3), np.float32)))
        await asyncio.sleep(0)  # queued
        gone.cancel()
        kept = await batcher.run(np.ones((2, 3), np.float32))
        np.testing.assert_array_equal(kept, np.full((2, 3), 2.0))
        narrow = batcher.run(np.ones((1, 3), np.float32))
        wide = batcher.run(np.ones((1, 4), np.float32))
        for outcome in await asyncio.gather(narrow, wide, return_exceptions=True):
            assert isinstance(outcome, ModelUnavailable)

    try:
        asyncio.run(scenario())
    finally:
        batcher.close(wait=True)
    with pytest.raises(ModelUnavailable, match="shutting down"):
        asyncio.run(batcher.run(np.ones((1, 3), np.float32)))


class _Gate:
    """A forward pass that records the rows it was given and, while closed, blocks: the worker
    is busy, so what is submitted meanwhile waits in the queue."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.started = threading.Event()
        self.seen: list[float] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.started.set()
        self.open.wait(10)
        self.seen.extend(x[:, 0].tolist())
        return x * 2


def _gated(stats: CoreStats) -> tuple[DynamicBatcher, _Gate]:
    gate = _Gate()
    batcher = DynamicBatcher(gate, name="m", max_batch_size=8, max_wait_ms=0, stats=stats,
                             in_flight=lambda: 0).start()
    return batcher, gate


def test_a_block_whose_deadline_passed_in_the_queue_is_dropped_uncomputed():
    stats = CoreStats()
    batcher, gate = _gated(stats)
    try:
        busy = batcher.submit(np.full((1, 3), 1.0, np.float32))
        assert gate.started.wait(10)
        late = batcher.submit(np.full((1, 3), 2.0, np.float32), deadline=time.monotonic() + 0.05)
        timely = batcher.submit(np.full((1, 3), 3.0, np.float32), deadline=time.monotonic() + 60)
        time.sleep(0.1)  # the first deadline passes while the worker is busy
        gate.open.set()
        with pytest.raises(DeadlineExceeded, match="not computed"):
            late.result(timeout=10)
        assert busy.result(timeout=10)[0, 0] == 2.0 and timely.result(timeout=10)[0, 0] == 6.0
        assert gate.seen == [1.0, 3.0]  # the late block never reached the model
        assert stats.dropped("m") == {"deadline": 1}
    finally:
        batcher.close(wait=True)


def test_a_cancelled_block_is_dropped_uncomputed():
    stats = CoreStats()
    batcher, gate = _gated(stats)
    try:
        batcher.submit(np.full((1, 3), 1.0, np.float32))
        assert gate.started.wait(10)
        gone = batcher.submit(np.full((1, 3), 2.0, np.float32))
        kept = batcher.submit(np.full((1, 3), 3.0, np.float32))
        assert gone.cancel()
        gate.open.set()
        assert kept.result(timeout=10)[0, 0] == 6.0
        assert gate.seen == [1.0, 3.0]
        assert stats.dropped("m") == {"cancelled": 1}
    finally:
        batcher.close(wait=True)


def test_a_cancelled_asyncio_caller_leaves_no_work():
    stats = CoreStats()
    batcher, gate = _gated(stats)

    async def scenario() -> None:
        batcher.submit(np.full((1, 3), 1.0, np.float32))
        assert await asyncio.to_thread(gate.started.wait, 10)
        task = asyncio.ensure_future(batcher.run(np.full((1, 3), 2.0, np.float32)))
        await asyncio.sleep(0.05)  # queued
        task.cancel()
        kept = batcher.submit(np.full((1, 3), 3.0, np.float32))
        gate.open.set()
        assert (await asyncio.wrap_future(kept))[0, 0] == 6.0

    try:
        asyncio.run(scenario())
        assert gate.seen == [1.0, 3.0]
        assert stats.dropped("m") == {"cancelled": 1}
    finally:
        batcher.close(wait=True)


def test_a_lone_cheap_request_runs_on_the_callers_thread_and_company_goes_to_the_worker():
    """Concurrency 1: after one measured pass, a lone request's pass runs on the event loop's
    thread (no hand-off); with another request on its way, or a pass too slow for the loop, it
    goes to the batcher's thread as before. Stats count every pass either way."""
    import asyncio

    threads: list[str] = []
    admitted = [1]

    def run(x):
        threads.append(threading.current_thread().name)
        return x * 2

    stats = CoreStats()
    batcher = DynamicBatcher(run, name="m", max_batch_size=8, max_wait_ms=5, stats=stats,
                             in_flight=lambda: admitted[0]).start()

    async def scenario():
        rows = np.ones((1, 3), np.float32)
        first = await batcher.run(rows)  # no pass measured yet: the worker thread
        second = await batcher.run(rows)  # alone and cheap: inline
        admitted[0] = 2  # another request on its way: the worker, which may wait for it
        third = await batcher.run(rows)
        admitted[0] = 1
        batcher._row_s = 1.0  # the latest pass took 1 s a row: never on the loop
        fourth = await batcher.run(rows)
        return first, second, third, fourth

    try:
        loop_thread = threading.current_thread().name
        outs = asyncio.run(scenario())
        for out in outs:
            np.testing.assert_array_equal(out, np.full((1, 3), 2.0))
        assert threads[0] != loop_thread
        assert threads[1] == loop_thread
        assert threads[2] != loop_thread and threads[3] != loop_thread
        assert stats.batch_sizes("m") == {1: 4}
    finally:
        batcher.close(wait=True)


def test_an_inline_pass_that_fails_raises_model_unavailable_in_its_caller():
    import asyncio

    calls = [0]

    def run(x):
        calls[0] += 1
        if calls[0] > 1:
            raise RuntimeError("boom")
        return x

    batcher = DynamicBatcher(run, name="m", max_batch_size=8, max_wait_ms=5,
                             in_flight=lambda: 1).start()

    async def scenario():
        await batcher.run(np.ones((1, 3), np.float32))
        with pytest.raises(ModelUnavailable, match="boom"):
            await batcher.run(np.ones((1, 3), np.float32))

    try:
        asyncio.run(scenario())
    finally:
        batcher.close(wait=True)
