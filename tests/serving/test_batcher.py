"""DynamicBatcher: concurrent items share batches up to the size limit, in order; errors reach every
item of their batch and the batcher goes on; batching off runs each item alone."""

from __future__ import annotations

import asyncio

import pytest

from frcnn.serving.batcher import DynamicBatcher


def run_with(batcher: DynamicBatcher, body):
    async def main():
        await batcher.start()
        try:
            return await body()
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_concurrent_items_share_batches_in_order():
    calls = []

    def run(items):
        calls.append(list(items))
        return [item * 10 for item in items]

    batcher = DynamicBatcher(run, max_batch_size=3, max_wait_ms=50.0)
    outputs = run_with(batcher, lambda: asyncio.gather(*(batcher.submit(i) for i in range(7))))
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]
    assert [output for output, _ in outputs] == [0, 10, 20, 30, 40, 50, 60]
    assert [info.size for _, info in outputs] == [3, 3, 3, 3, 3, 3, 1]
    assert batcher.stats.as_dict()["batch_sizes"] == {"1": 1, "3": 2} and batcher.stats.requests == 7


def test_batching_off_runs_each_item_alone():
    calls = []
    batcher = DynamicBatcher(lambda items: calls.append(list(items)) or list(items), max_batch_size=1)
    run_with(batcher, lambda: asyncio.gather(*(batcher.submit(i) for i in range(4))))
    assert calls == [[0], [1], [2], [3]]


def test_an_error_reaches_its_batch_and_the_batcher_goes_on():
    def run(items):
        if "bad" in items:
            raise ValueError("model failed")
        return list(items)

    batcher = DynamicBatcher(run, max_batch_size=2, max_wait_ms=50.0)

    async def body():
        first = await asyncio.gather(batcher.submit("bad"), batcher.submit("ok"), return_exceptions=True)
        second = await batcher.submit("fine")
        return first, second

    (first, second) = run_with(batcher, body)
    assert all(isinstance(e, ValueError) and str(e) == "model failed" for e in first)
    assert second[0] == "fine"


def test_a_wrong_number_of_outputs_is_an_error():
    batcher = DynamicBatcher(lambda items: [], max_batch_size=2)
    with pytest.raises(RuntimeError, match="0 results for 1 inputs"):
        run_with(batcher, lambda: batcher.submit(1))


def test_submit_needs_a_started_batcher():
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(DynamicBatcher(list).submit(1))
