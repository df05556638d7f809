"""Dynamic micro-batching of localisation requests, and the order a session's frames join its sequence.

Why batch. A query's cost is dominated by reading the map, not by the query: the Nordland spiking map (3375
places, 5 members) holds 67k read-out neurons x 1024 inputs in bfloat16 (137 MB), and one frame's matrix-vector
product reads all of it (8 ms on this project's 2-core VM); a product over 16 frames reads it once for all of them
(32 ms, 2 ms a frame). SAD reads its 3375 x 2048 reference pixels per call the same way (15 ms for one frame, 3.3
ms a frame in a batch of 16). Separate calls per request therefore cap a map at about 100 requests/s however many
threads run them; one call for every request waiting does not.

:class:`MicroBatcher` (one per served map): requests :meth:`~MicroBatcher.submit` a decoded image and get a
:class:`concurrent.futures.Future` of its :class:`Row`. One worker thread takes the oldest waiting image, then
every image that arrives until ``max_batch`` are taken or ``max_wait_s`` has passed since that oldest one was
submitted (images already waiting longer are taken at once, up to ``max_batch``), and calls ``compute`` once for
the batch. Under load the queue fills while a batch runs, so batches grow with the load without any waiting;
``max_wait_s`` only lets a request that arrives at an idle map wait briefly for company. The worker is the only
caller of ``compute`` (no two batches of a map run at once, and torch's threads are not oversubscribed by one
thread per request); it exits after ``idle_exit_s`` without work and is started again by the next submit, so a
map that is dropped leaves no thread behind.

Failures: an exception from ``compute`` (or a result of the wrong shape) is set on every future of the batch and
the worker goes on with the next batch. A future cancelled before its batch starts is left out of the batch; one
abandoned by its waiter (a request timeout) is computed and resolved as usual, and nobody reads it.

:class:`InOrder`: tickets per key (a session id) in admission order; :meth:`InOrder.wait` blocks until every
earlier ticket of the same key is :meth:`~InOrder.done`. The service takes a ticket when it admits a session's
frame and pushes the frame's row into the session's sequence only in its turn, so frames whose rows come back in
another order (two frames of one session in one batch, or in consecutive batches and racing afterwards) still
join the sequence in the order they were admitted.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

Compute = Callable[[Sequence[np.ndarray]], np.ndarray]
"""(n images) -> (n, n_places) distances: one call for the whole batch."""


@dataclass(frozen=True)
class Row:
    """One request's distance row and how it was obtained."""

    row: np.ndarray
    queue_s: float
    """From submit to the start of its batch's ``compute``."""
    compute_s: float
    """The batch's ``compute`` call."""
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
    image: np.ndarray
    future: Future
    submitted: float


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

    def submit(self, image: np.ndarray) -> Future:
        """The future of ``image``'s :class:`Row` (or of the exception its batch raised)."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosed(f"the batcher of map {self.name!r} is closed")
            self._queue.put(_Item(image, future, self.clock()))
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
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not live:
            return
        started = self.clock()
        failed = False
        try:
            rows = np.asarray(self.compute([item.image for item in live]))
            if rows.ndim != 2 or len(rows) != len(live):
                raise RuntimeError(f"map {self.name!r}: distances for {len(live)} images have shape {rows.shape}")
            compute_s = self.clock() - started
            for index, item in enumerate(live):  # copies: a row must not keep the whole batch's array alive
                item.future.set_result(Row(np.array(rows[index]), started - item.submitted, compute_s, len(live)))
        except BaseException as error:  # every waiter learns of it; the worker carries on with the next batch
            failed, compute_s = True, self.clock() - started
            for item in live:
                if not item.future.done():
                    item.future.set_exception(error)
            if not isinstance(error, Exception):
                raise
        if self.observe is not None:
            try:
                self.observe(BatchStats(len(live), compute_s, tuple(started - item.submitted for item in live), failed))
            except Exception:  # metrics must never stop localisation
                log.exception("observing a batch of map %s failed", self.name)


@dataclass(frozen=True)
class Ticket:
    key: Hashable
    number: int


class InOrder:
    """Per-key admission order (module docstring). Every ticket must be :meth:`done` exactly once (it is
    idempotent, so a caller may also call it on every error path); a key is forgotten when none of its tickets
    is outstanding."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._pending: dict[Hashable, list[int]] = {}  # admitted, not yet done, ascending
        self._numbers = itertools.count()  # one counter for all keys: a ticket never matches a newer one

    def admit(self, key: Hashable) -> Ticket:
        with self._condition:
            ticket = Ticket(key, next(self._numbers))
            self._pending.setdefault(key, []).append(ticket.number)
            return ticket

    def wait(self, ticket: Ticket, timeout: float | None = None) -> bool:
        """Block until every ticket of ``ticket.key`` admitted before it is done; False if ``timeout`` passed."""
        with self._condition:
            return self._condition.wait_for(lambda: self._first(ticket.key) in (None, ticket.number), timeout)

    def done(self, ticket: Ticket) -> None:
        with self._condition:
            pending = self._pending.get(ticket.key)
            if pending is None or ticket.number not in pending:
                return
            pending.remove(ticket.number)
            if not pending:
                del self._pending[ticket.key]
            self._condition.notify_all()

    def outstanding(self, key: Hashable) -> int:
        with self._condition:
            return len(self._pending.get(key, ()))

    def _first(self, key: Hashable) -> int | None:
        pending = self._pending.get(key)
        return pending[0] if pending else None
