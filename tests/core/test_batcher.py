"""The batcher waits for company only while company is on its way."""

import threading
import time

import numpy as np
import pytest

from service.core.batcher import DynamicBatcher
from service.core.errors import ModelUnavailable
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
