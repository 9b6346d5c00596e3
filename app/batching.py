"""Micro-batching: concurrent requests are scored together, by a few inference threads.

A forward pass and the integrated-gradients passes of 16 stays cost a fraction of 16
single-stay passes, and on a small machine a few threads that own torch (each with
`VITALCAST_TORCH_THREADS` intra-op threads) leave the other cores to the event loop
instead of many pool threads fighting over them and each growing its own allocator arena.
Requests queue while batches run and the next free thread takes everything queued (up to
`max_patients`), so batches grow with the load and a lone request never waits for
company; `max_delay_s` may hold a batch open a little longer for more requests. A request
of more than `chunk_patients` (128) patients, a bulk batch, is queued as chunks of that
size, which the threads score side by side: on a CPU the forward pass runs as fast per
patient at 64-128 stays as at 256, and one chunk's forward pass overlaps another's Python
(chunks of 128 scored a stream of 256-patient requests faster than chunks of 64).

Why more than one thread (`threads`, `VITALCAST_INFERENCE_THREADS`, default 2): torch
lets the GIL go inside each operator, Python around a batch (tensorising, building the
answers) holds it. With one thread the forward pass of one batch and the Python of the
next took turns; with two, one thread's forward pass runs while the other tensorises or
answers, and bulk scoring with requests in flight gains ~25 % on two cores
(benchmarks/scoring.py). Threads share the models (inference only) and the cache (locked).

A single patient the cache holds (`answer`) is answered on the event loop: no torch, no
thread hop; a batch request goes to the threads, whose scoring uses the cache too. A
patient whose own output is unusable fails alone (`predict_each`); if scoring a merged
batch raises, its requests are scored again one at a time so that the
error stays with the request that caused it. Chunks of a request that was cancelled
before a thread took them (a bulk client that went away) are skipped. A thread that has
scored a batch of `max_patients` or more, then finds nothing queued for
`IDLE_AFTER_BULK_S` while no other thread scores, calls `after_bulk`
(app.memory.release_free_memory: what bulk scoring freed goes back to the system once
the load has passed, not during it).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.service import Job, Outcome

__all__ = ["Batcher", "Outcome"]

log = logging.getLogger("vitalcast.batching")

IDLE_AFTER_BULK_S = 0.5

ScoreFn = Callable[[Sequence[Job]], list[Outcome]]
AnswerFn = Callable[[Sequence[Job]], list[Outcome] | None]


@dataclass
class _Item:
    jobs: Sequence[Job]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Outcome]]


class Batcher:
    def __init__(self, score: ScoreFn, max_patients: int = 64, max_delay_s: float = 0.0,
                 answer: AnswerFn | None = None, threads: int = 1,
                 chunk_patients: int = 128, after_bulk: Callable[[], object] | None = None
                 ) -> None:
        if threads < 1 or chunk_patients < 1:
            raise ValueError(f"threads and chunk_patients must be >= 1, got {threads} and "
                             f"{chunk_patients}")
        self.score = score
        self.answer = answer  # cheap answers (the cache), tried on the event loop first
        self.after_bulk = after_bulk  # called when the thread goes idle after bulk scoring
        self.max_patients = max_patients
        self.max_delay_s = max_delay_s
        self.threads = threads
        self.chunk_patients = chunk_patients
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._running: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._scoring = 0  # threads inside a batch (under _lock)

    def start(self) -> None:
        with self._lock:
            self._running = [t for t in self._running if t.is_alive()]
            for i in range(len(self._running), self.threads):
                thread = threading.Thread(target=self._run, name=f"vitalcast-inference-{i}",
                                          daemon=True)
                thread.start()
                self._running.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the threads."""
        with self._lock:
            running, self._running = self._running, []
        for _ in running:  # each thread ends at the first None it takes
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in running:
            thread.join(max(0.0, deadline - time.monotonic()))

    async def submit(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Score `jobs` (one request's patients) in the next batch; outcomes in their order."""
        if (self.answer is not None and len(jobs) == 1
                and (answered := self.answer(jobs)) is not None):
            return answered  # a batch request's many responses would hold up the loop
        self.start()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[list[Outcome]]] = []
        for start in range(0, len(jobs), self.chunk_patients):  # chunks the threads share
            futures.append(loop.create_future())
            self._queue.put(_Item(jobs[start:start + self.chunk_patients], loop, futures[-1]))
        outcomes: list[Outcome] = []
        for chunk in await asyncio.gather(*futures, return_exceptions=True):
            if isinstance(chunk, BaseException):
                raise chunk  # the request fails as a whole, with its first chunk's error
            outcomes.extend(chunk)
        return outcomes

    def _take(self, first: _Item) -> tuple[list[_Item], bool]:
        """`first` and whatever else is queued, up to max_patients; whether to stop after."""
        items, n = [first], len(first.jobs)
        deadline = time.monotonic() + self.max_delay_s
        while n < self.max_patients:
            try:
                wait = deadline - time.monotonic()
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return items, True
            if item.future.done():  # cancelled while queued: takes no room in the batch
                continue
            items.append(item)
            n += len(item.jobs)
        return items, False

    def _run(self) -> None:
        bulk = False  # a bulk batch was scored since the thread last waited with nothing to do
        while True:
            try:
                first = self._queue.get(timeout=IDLE_AFTER_BULK_S) if bulk else self._queue.get()
            except queue.Empty:  # idle after bulk scoring: done unless another thread scores
                with self._lock:
                    bulk = self._scoring > 0
                if not bulk:
                    self._after_bulk()
                continue
            if first is None:
                return
            if first.future.done():  # cancelled while queued (its client went away)
                continue
            items, stop = self._take(first)
            with self._lock:
                self._scoring += 1
            try:
                self._score(items)
            finally:
                with self._lock:
                    self._scoring -= 1
            if stop:
                return
            bulk = bulk or (self.after_bulk is not None
                            and sum(len(item.jobs) for item in items) >= self.max_patients)

    def _after_bulk(self) -> None:
        try:
            if self.after_bulk is not None:
                self.after_bulk()
        except Exception as e:  # noqa: BLE001 - housekeeping: never the thread's end
            log.warning("after bulk scoring: %s", type(e).__name__)

    def _score(self, items: list[_Item]) -> None:
        # A request cancelled while it queued (its client went away: routers.predict) is
        # not scored: under overload, the time goes to requests someone still waits for.
        items = [item for item in items if not item.future.done()]
        if not items:
            return
        jobs = [job for item in items for job in item.jobs]
        try:
            outcomes = self.score(jobs)
        except Exception as e:
            if len(items) > 1:  # find the request it is about
                for item in items:
                    self._score([item])
                return
            _resolve(items[0], error=e)
            return
        start = 0
        for item in items:
            _resolve(item, outcomes[start:start + len(item.jobs)])
            start += len(item.jobs)


def _resolve(item: _Item, outcomes: list[Outcome] | None = None,
             error: BaseException | None = None) -> None:
    def settle() -> None:
        if item.future.done():  # the request was cancelled (client gone)
            return
        if error is not None:
            item.future.set_exception(error)
        else:
            item.future.set_result(outcomes or [])

    try:
        item.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # its event loop has closed: nobody is waiting
        log.debug("a scored request's event loop is closed")
