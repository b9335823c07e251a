"""Dynamic batching: requests that arrive together go through the model together.

The first request of a batch waits at most ``max_wait_ms`` for others; a batch closes when it holds
``max_batch_size`` items or the wait is over. The model runs in one worker thread, so the event loop
keeps accepting requests meanwhile, and those that arrive while a batch runs form the next one
(under load the batches fill up without anyone waiting). ``max_batch_size=1`` turns batching off.

Waiting uses an ``asyncio.Event`` over a deque rather than ``wait_for(queue.get())``: a timed-out
``get`` can lose an item on some Python versions, a timed-out ``Event.wait`` loses nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BatchInfo:
    """How one item was run: the size of its batch, the model's time for the whole batch and the
    item's wait in the queue before its batch started."""

    size: int
    inference_ms: float
    queue_ms: float


@dataclass
class BatchStats:
    requests: int = 0
    batches: int = 0
    sizes: Counter = field(default_factory=Counter)  # batch size -> how many batches
    inference_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "batches": self.batches,
                "mean_batch_size": round(self.requests / self.batches, 3) if self.batches else None,
                "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
                "inference_seconds": round(self.inference_seconds, 3)}


class DynamicBatcher:
    """``await batcher.submit(item) -> (output, BatchInfo)`` with ``run(items) -> outputs`` (same
    length, same order) called on batches of concurrent items in a worker thread.

    Call ``start()`` inside the running event loop before the first ``submit`` and ``stop()`` at the end.
    """

    def __init__(self, run: Callable[[Sequence[Any]], Sequence[Any]], max_batch_size: int = 8,
                 max_wait_ms: float = 5.0) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.run = run
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._pending: deque[tuple[Any, asyncio.Future, float]] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frcnn-model")
        self._task = asyncio.create_task(self._serve(), name="frcnn-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._pending:
            _, future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(RuntimeError("the server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, item: Any) -> tuple[Any, BatchInfo]:
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running (start() it inside the event loop)")
        future = asyncio.get_running_loop().create_future()
        self._pending.append((item, future, time.perf_counter()))
        self._arrived.set()
        return await future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = loop.time() + self.max_wait
            while len(self._pending) < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = [self._pending.popleft() for _ in range(min(len(self._pending), self.max_batch_size))]
            batch = [entry for entry in batch if not entry[1].done()]  # a client that went away
            if batch:
                await self._run(loop, batch)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[tuple[Any, asyncio.Future, float]]) -> None:
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(self._executor, self.run, [item for item, _, _ in batch])
            if len(outputs) != len(batch):
                raise RuntimeError(f"the model returned {len(outputs)} results for {len(batch)} inputs")
        except Exception as error:  # every request of the batch gets the error, the server goes on
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(error)
            return
        seconds = time.perf_counter() - started
        self.stats.requests += len(batch)
        self.stats.batches += 1
        self.stats.sizes[len(batch)] += 1
        self.stats.inference_seconds += seconds
        for (_, future, queued), output in zip(batch, outputs):
            if not future.done():
                future.set_result((output, BatchInfo(len(batch), seconds * 1000.0, (started - queued) * 1000.0)))
