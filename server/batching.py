"""Dynamic micro-batching of localisation requests, each finished in the order it was submitted.

Why batch. A query's cost is dominated by reading the map, not by the query: the Nordland spiking map (3375
places, 5 members) holds 67k read-out neurons x 1024 inputs in bfloat16 (137 MB), and one frame's matrix-vector
product reads all of it; a product over 16 frames reads it once for all of them, for about twice the time of one
(``benchmarks/map_batch_cost.py``: 4.3 and 8.1 ms on 2 threads of this project's VM). SAD reads its 3375 x 2048
reference pixels per call the same way. Separate calls per request therefore cost one read of the map each, however
many threads run them; one call for every request waiting shares the read.

:class:`MicroBatcher` (one per served map): requests :meth:`~MicroBatcher.submit` a payload and get a
:class:`concurrent.futures.Future` of its result. One worker thread takes the oldest waiting payload, then every
payload that arrives until ``max_batch`` are taken or ``max_wait_s`` has passed since that oldest one was
submitted (payloads already waiting longer are taken at once, up to ``max_batch``). For the batch it runs each
item's ``prepare`` (the service decodes the image there), calls ``compute`` once for all the prepared images, then
runs each item's ``finish`` on its :class:`Row` (the service sequence-matches and ranks there) **in submission
order**: a session's frames join its sequence in the order they were submitted, whichever batch each falls in,
without any request thread waiting for its turn. Under load the queue fills while a batch runs, so batches grow
with the load without any waiting; ``max_wait_s`` only lets a request that arrives at an idle map wait briefly for
company. The worker is the only caller of ``compute`` (no two batches of a map run at once, and torch's threads
are not oversubscribed); it exits after ``idle_exit_s`` without work and is started again by the next submit, so a
map that is dropped leaves no thread behind. Requests need no thread of their own while they wait: the service
awaits the futures on its event loop.

Failures: an exception from an item's ``prepare`` or ``finish`` is set on that item's future alone; one from
``compute`` (or a result of the wrong shape) on every future of the batch, and the worker goes on with the next
batch. A future cancelled before its batch starts is left out of the batch; one abandoned by its waiter (a request
timeout) is computed and finished as usual, and nobody reads it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Compute = Callable[[Sequence[np.ndarray]], np.ndarray]
"""(n images) -> (n, n_places) distances: one call for the whole batch."""


@dataclass(frozen=True)
class Row:
    """One request's distance row and how it was obtained."""

    row: np.ndarray
    queue_s: float
    """From submit to the start of its batch."""
    prepare_s: float
    """This item's ``prepare`` (0 without one)."""
    compute_s: float
    """The batch's ``prepare`` calls and its ``compute`` call: from the start of the batch to its rows."""
    batch_size: int


@dataclass(frozen=True)
class BatchStats:
    """What :class:`MicroBatcher` tells its ``observe`` hook after each batch (for metrics)."""

    size: int
    compute_s: float
    queue_s: tuple[float, ...]
    failed: bool


@dataclass
class _Item:
    payload: Any
    future: Future
    submitted: float
    prepare: Callable[[Any], np.ndarray] | None
    finish: Callable[[Row], Any] | None
    image: np.ndarray | None = None
    prepare_s: float = 0.0


_STOP = object()


class BatcherClosed(RuntimeError):
    """The batcher was closed: it takes no more images, and images still waiting get this error."""


class MicroBatcher:
    """Collects concurrently submitted images into batches for one ``compute`` call each (module docstring)."""

    def __init__(self, compute: Compute, *, max_batch: int = 16, max_wait_s: float = 0.002, idle_exit_s: float = 30.0,
                 name: str = "map", observe: Callable[[BatchStats], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_s < 0 or idle_exit_s <= 0:
            raise ValueError("max_wait_s must be >= 0 and idle_exit_s > 0")
        self.compute, self.max_batch, self.max_wait_s, self.idle_exit_s = compute, max_batch, max_wait_s, idle_exit_s
        self.name, self.observe, self.clock = name, observe, clock
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, payload: Any, *, prepare: Callable[[Any], np.ndarray] | None = None,
               finish: Callable[[Row], Any] | None = None) -> Future:
        """The future of ``finish(row)`` (without ``finish``: of the :class:`Row`) of the image ``prepare(payload)``
        (without ``prepare``: ``payload`` is the image), or of the exception that failed it. Both run in the
        worker thread, ``finish`` in submission order."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosed(f"the batcher of map {self.name!r} is closed")
            self._queue.put(_Item(payload, future, self.clock(), prepare, finish))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=f"spikebot-batcher-{self.name}", daemon=True)
                self._thread.start()
        return future

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive (it exits when idle and restarts on submit)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def close(self, timeout: float | None = 5.0) -> None:
        """Take no more images. Images already submitted are still computed if the worker gets to them within
        ``timeout`` seconds; any still waiting then fail with BatcherClosed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(_STOP)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._fail_waiting()

    def _fail_waiting(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP and item.future.set_running_or_notify_cancel():
                item.future.set_exception(BatcherClosed(f"the batcher of map {self.name!r} was closed"))
        self._queue.put(_STOP)  # for a worker still busy with its batch: stop after it

    def _next_batch(self) -> list[_Item] | None:
        """The next batch, or None when the worker should exit (closed, or idle for ``idle_exit_s``)."""
        while True:
            try:
                first = self._queue.get(timeout=self.idle_exit_s)
                break
            except queue.Empty:
                with self._lock:  # submit puts under this lock: nothing can slip in between the check and the exit
                    if self._queue.empty():
                        self._thread = None
                        return None
        if first is _STOP:
            return None
        batch = [first]
        deadline = first.submitted + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - self.clock()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)  # seen again after this batch: the batch still runs
                break
            batch.append(item)
        return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            self._run(batch)

    def _run(self, batch: list[_Item]) -> None:
        started = self.clock()
        live = [item for item in batch if item.future.set_running_or_notify_cancel() and self._prepare(item)]
        if not live:
            return
        failed = False
        try:
            rows = np.asarray(self.compute([item.image for item in live]))
            if rows.ndim != 2 or len(rows) != len(live):
                raise RuntimeError(f"map {self.name!r}: distances for {len(live)} images have shape {rows.shape}")
        except BaseException as error:  # every waiter learns of it; the worker carries on with the next batch
            failed, compute_s = True, self.clock() - started
            for item in live:
                item.future.set_exception(error)
            if not isinstance(error, Exception):
                raise
        else:
            compute_s = self.clock() - started
            for index, item in enumerate(live):  # copies: a row must not keep the whole batch's array alive
                row = Row(np.array(rows[index]), started - item.submitted, item.prepare_s, compute_s, len(live))
                self._finish(item, row)
        if self.observe is not None:
            try:
                self.observe(BatchStats(len(live), compute_s, tuple(started - item.submitted for item in live), failed))
            except Exception:  # metrics must never stop localisation
                log.exception("observing a batch of map %s failed", self.name)

    def _prepare(self, item: _Item) -> bool:
        """``item.image`` from its payload; False (and the error on its future) if ``prepare`` failed."""
        if item.prepare is None:
            item.image = item.payload
            return True
        begun = self.clock()
        try:
            item.image = item.prepare(item.payload)
        except Exception as error:  # noqa: BLE001 (handed to the waiter, not swallowed)
            item.future.set_exception(error)
            return False
        item.prepare_s = self.clock() - begun
        return True

    @staticmethod
    def _finish(item: _Item, row: Row) -> None:
        if item.finish is None:
            item.future.set_result(row)
            return
        try:
            item.future.set_result(item.finish(row))
        except Exception as error:  # noqa: BLE001 (handed to the waiter, not swallowed)
            item.future.set_exception(error)
