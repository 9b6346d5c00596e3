"""Micro-batching: concurrent requests are scored together, by one inference thread.

A forward pass and the integrated-gradients passes of 16 stays cost a fraction of 16
single-stay passes, and on a small machine one thread that owns torch (with
`VITALCAST_TORCH_THREADS` intra-op threads) leaves the other cores to the event loop
instead of several pool threads fighting over them and each growing its own allocator
arena. Requests queue while a batch runs and the next batch takes everything queued (up
to `max_patients`), so batches grow with the load and a lone request never waits for
company; `max_delay_s` may hold a batch open a little longer for more requests.

A single patient the cache holds (`answer`) is answered on the event loop: no torch, no
thread hop; a batch request goes to the thread, whose scoring uses the cache too. A
patient whose own output is unusable fails alone (`predict_each`); if scoring a merged
batch raises, its requests are scored again one at a time so that the
error stays with the request that caused it.
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

ScoreFn = Callable[[Sequence[Job]], list[Outcome]]
AnswerFn = Callable[[Sequence[Job]], list[Outcome] | None]


@dataclass
class _Item:
    jobs: Sequence[Job]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Outcome]]


class Batcher:
    def __init__(self, score: ScoreFn, max_patients: int = 64, max_delay_s: float = 0.0,
                 answer: AnswerFn | None = None) -> None:
        self.score = score
        self.answer = answer  # cheap answers (the cache), tried on the event loop first
        self.max_patients = max_patients
        self.max_delay_s = max_delay_s
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="vitalcast-inference",
                                                daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the thread."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    async def submit(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Score `jobs` (one request's patients) in the next batch; outcomes in their order."""
        if (self.answer is not None and len(jobs) == 1
                and (answered := self.answer(jobs)) is not None):
            return answered  # a batch request's many responses would hold up the loop
        self.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Outcome]] = loop.create_future()
        self._queue.put(_Item(jobs, loop, future))
        return await future

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
            items.append(item)
            n += len(item.jobs)
        return items, False

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items, stop = self._take(first)
            self._score(items)
            if stop:
                return

    def _score(self, items: list[_Item]) -> None:
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
