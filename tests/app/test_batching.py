"""Micro-batching: concurrent requests share a batch and each gets its own answer; an error
stays with the request it is about."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import batching
from app.batching import Batcher, Outcome
from app.errors import ModelFailure
from app.main import create_app
from tests.app.support import USER, request_body, settings_for


class FakeScore:
    """Answers each job with itself; the first call blocks until released."""

    def __init__(self, fail_on: object = None) -> None:
        self.batches: list[list[Any]] = []
        self.entered = threading.Event()  # a thread is inside the first call
        self.release = threading.Event()
        self.fail_on = fail_on

    def __call__(self, jobs: Sequence[Any]) -> list[Outcome]:
        if not self.batches:
            self.entered.set()
            self.release.wait(10)
        self.batches.append(list(jobs))
        if self.fail_on in jobs:
            raise RuntimeError("this job breaks the model")
        return [ModelFailure(f"job {j}") if j == "unusable" else j for j in jobs]


async def _submit_all(batcher: Batcher, score: FakeScore, requests: list[list[Any]]
                      ) -> list[Any]:
    first = asyncio.ensure_future(batcher.submit(requests[0]))
    await asyncio.sleep(0.05)  # the first request is being scored: the others queue up
    rest = [asyncio.ensure_future(batcher.submit(r)) for r in requests[1:]]
    await asyncio.sleep(0.05)
    score.release.set()
    return await asyncio.gather(first, *rest, return_exceptions=True)


def test_requests_queued_during_a_batch_are_scored_together_in_order() -> None:
    score = FakeScore()
    batcher = Batcher(score, max_patients=64)  # type: ignore[arg-type]
    requests = [["a"], ["b1", "b2"], ["c"], ["unusable"], ["d"]]
    try:
        results = asyncio.run(_submit_all(batcher, score, requests))
    finally:
        batcher.stop()
    assert [len(b) for b in score.batches] == [1, 5]  # everything queued went in one batch
    assert results[:3] == [["a"], ["b1", "b2"], ["c"]] and results[4] == ["d"]
    assert isinstance(results[3][0], ModelFailure)  # an unusable output is that request's


def test_batches_hold_at_most_max_patients_and_never_split_a_request() -> None:
    score = FakeScore()
    batcher = Batcher(score, max_patients=3)  # type: ignore[arg-type]
    requests = [["a"], ["b1", "b2"], ["c1", "c2"], ["d"]]
    try:
        results = asyncio.run(_submit_all(batcher, score, requests))
    finally:
        batcher.stop()
    assert [b for b in score.batches] == [["a"], ["b1", "b2", "c1", "c2"], ["d"]]
    assert results == requests


def test_an_exception_in_a_merged_batch_fails_only_the_request_that_caused_it() -> None:
    score = FakeScore(fail_on="bad")
    batcher = Batcher(score, max_patients=64)  # type: ignore[arg-type]
    try:
        results = asyncio.run(_submit_all(batcher, score, [["a"], ["b"], ["bad"], ["c"]]))
    finally:
        batcher.stop()
    assert results[:2] == [["a"], ["b"]] and results[3] == ["c"]
    assert isinstance(results[2], RuntimeError)


@pytest.mark.parametrize("delay", [0.0, 0.02])
def test_stop_finishes_what_is_queued(delay: float) -> None:
    batcher = Batcher(lambda jobs: list(jobs), max_patients=4,  # type: ignore[arg-type, return-value]
                      max_delay_s=delay)

    async def run() -> list[list[Outcome]]:
        return list(await asyncio.gather(*(batcher.submit([i]) for i in range(10))))  # type: ignore[list-item]

    try:
        assert asyncio.run(run()) == [[i] for i in range(10)]
    finally:
        batcher.stop()


def test_with_two_threads_one_scores_while_the_other_is_busy() -> None:
    release = threading.Event()

    def score(jobs: Sequence[Any]) -> list[Outcome]:
        if "slow" in jobs:
            release.wait(10)
        return list(jobs)

    batcher = Batcher(score, max_patients=64, threads=2)  # type: ignore[arg-type]
    before = set(threading.enumerate())

    async def run() -> tuple[list[Outcome], list[Outcome], bool]:
        slow = asyncio.ensure_future(batcher.submit(["slow"]))
        await asyncio.sleep(0.05)  # the first thread is inside score
        quick = await asyncio.wait_for(batcher.submit(["quick"]), 5)
        waiting = not slow.done()
        release.set()
        return await slow, quick, waiting

    try:
        slow, quick, waiting = asyncio.run(run())
    finally:
        batcher.stop()
    assert (slow, quick, waiting) == (["slow"], ["quick"], True)
    assert not set(threading.enumerate()) - before  # stop ended both threads


def test_a_large_request_is_scored_in_chunks_and_answered_in_order() -> None:
    batches: list[list[Any]] = []

    def score(jobs: Sequence[Any]) -> list[Outcome]:
        batches.append(list(jobs))
        return [ModelFailure(f"job {j}") if j == 3 else j for j in jobs]

    batcher = Batcher(score, max_patients=2, threads=2, chunk_patients=2)  # type: ignore[arg-type]
    try:
        results = asyncio.run(batcher.submit(list(range(5))))  # type: ignore[arg-type]
    finally:
        batcher.stop()
    assert sorted(map(len, batches)) == [1, 2, 2]  # chunks of at most 2
    assert results[:3] + results[4:] == [0, 1, 2, 4]  # type: ignore[comparison-overlap]
    assert isinstance(results[3], ModelFailure)  # an unusable output stays with its patient


def test_a_chunk_that_raises_fails_its_request() -> None:
    def score(jobs: Sequence[Any]) -> list[Outcome]:
        if 3 in jobs:
            raise RuntimeError("this chunk breaks the model")
        return list(jobs)

    batcher = Batcher(score, threads=2, chunk_patients=2)  # type: ignore[arg-type]
    try:
        with pytest.raises(RuntimeError, match="this chunk breaks"):
            asyncio.run(batcher.submit(list(range(5))))  # type: ignore[arg-type]
        assert asyncio.run(batcher.submit([7, 8, 9])) == [7, 8, 9]  # type: ignore[list-item]
    finally:
        batcher.stop()


def test_concurrent_http_requests_each_get_their_own_answer(client: TestClient) -> None:
    bodies = [request_body(patient_id=f"p{i}", observations=[
        {"time": 0.5 + i, "variable": "heart_rate", "value": 60 + 5 * i},
        {"time": 1.0 + i, "variable": "lactate", "value": 1.0 + i / 4}]) for i in range(12)]
    alone = [client.post("/v1/predict", json=b, headers=USER).json() for b in bodies]
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(
            lambda b: client.post("/v1/predict", json=b, headers=USER).json(), bodies))
    for a, t in zip(alone, together, strict=True):
        assert t["patient_id"] == a["patient_id"]
        assert t["risk"]["probability"] == pytest.approx(a["risk"]["probability"], abs=1e-6)
        assert [v["variable"] for v in t["explanation"]["variables"]] == [
            v["variable"] for v in a["explanation"]["variables"]]


def test_bulk_requests_in_flight_are_answered_in_order_across_chunks(
        shared_model_dir: Path) -> None:
    """Two 300-patient requests at once: chunks of 128 from both, scored by two threads in
    whatever order, each request's answers in its own order and each patient's as alone."""
    def patient(i: int) -> dict[str, object]:
        return request_body(patient_id=f"p{i}", observations=[
            {"time": 0.5 + i % 40, "variable": "heart_rate", "value": 50 + i % 97},
            {"time": 1.0, "variable": "lactate", "value": 0.5 + (i % 13) / 2},
            {"time": 2.0, "variable": "resp_rate", "value": 12 + i % 20},
            {"time": 2.5, "variable": "sbp", "value": 80 + i % 60}])

    requests = [[patient(i) for i in range(300)], [patient(i) for i in range(300, 600)]]
    assert len(json.dumps({"patients": requests[0]})) > 64 * 1024  # parsed off the loop
    settings = settings_for(shared_model_dir, cache_entries=0, inference_threads=2)
    with TestClient(create_app(settings)) as client:
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda patients: client.post(
                "/v1/predict/batch", json={"patients": patients}, headers=USER,
                params={"contributions": "false"}), requests))
        for patients, r in zip(requests, answers, strict=True):
            assert r.status_code == 200
            results = r.json()["results"]
            assert [a["patient_id"] for a in results] == [p["patient_id"] for p in patients]
            for i in (0, 127, 128, 255, 256, 299):  # each side of the chunks' bounds
                alone = client.post("/v1/predict", json=patients[i], headers=USER,
                                    params={"contributions": "false"}).json()
                assert results[i]["risk"]["probability"] == pytest.approx(
                    alone["risk"]["probability"], abs=1e-6)  # float32, batched or alone
                assert results[i]["news2"] == alone["news2"]
                bins = results[i]["explanation"]["attention"]
                assert [(b["start"], b["end"]) for b in bins] == [
                    (b["start"], b["end"]) for b in alone["explanation"]["attention"]]


def test_chunks_of_a_request_cancelled_while_queued_are_not_scored() -> None:
    score = FakeScore()  # its first batch blocks until released
    batcher = Batcher(score, max_patients=2, chunk_patients=2)  # type: ignore[arg-type]

    async def run() -> list[Any]:
        busy = asyncio.ensure_future(batcher.submit(["busy"]))  # type: ignore[list-item]
        assert await asyncio.to_thread(score.entered.wait, 10)  # scoring it: the rest queues
        left = asyncio.ensure_future(batcher.submit(list("abcdef")))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        left.cancel()  # its client went away
        staying = asyncio.ensure_future(batcher.submit(["x", "y"]))  # type: ignore[list-item]
        await asyncio.sleep(0.05)
        score.release.set()
        return await asyncio.gather(busy, staying)

    try:
        answers = asyncio.run(run())
    finally:
        batcher.stop()
    assert answers == [["busy"], ["x", "y"]]
    assert score.batches == [["busy"], ["x", "y"]]  # none of the cancelled request's chunks


def test_a_bulk_batch_whose_client_leaves_is_dropped_not_scored(
        shared_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client disconnects right after sending 1,000 patients (8 chunks): the threads
    may have taken a chunk or two already, the rest are never scored, and the request is
    counted with status 499 (client closed request)."""
    from app import main

    scored: list[int] = []
    predict_each = main.predict_each

    def counting(jobs: Sequence[Any], **kwargs: Any) -> list[Outcome]:
        scored.append(len(jobs))
        return predict_each(jobs, **kwargs)

    monkeypatch.setattr(main, "predict_each", counting)
    body = json.dumps({"patients": [request_body(patient_id=f"p{i}")
                                    for i in range(1000)]}).encode()
    settings = settings_for(shared_model_dir, cache_entries=0, inference_threads=2)
    with TestClient(create_app(settings)) as client:
        async def gone() -> dict[str, Any]:
            return {"type": "http.disconnect"}  # gone as soon as it has sent

        sent = _post_over_asgi(client, body, gone)
        assert sent[0]["status"] == 499
        time.sleep(0.5)  # any chunk a thread had taken finishes
        dropped = sum(scored)
        again = client.post("/v1/predict/batch", json={"patients": [request_body()]},
                            headers=USER)
        metrics = client.get("/metrics").text
    assert dropped <= 4 * 128 < 1000  # at most the chunks the threads had already taken
    assert again.status_code == 200 and sum(scored) == dropped + 1  # the next one is scored
    assert re.search(r'requests_total\{method="POST",route="/v1/predict/batch",'
                     r'status="499"\} 1\.0', metrics)


def _post_over_asgi(client: TestClient, body: bytes,
                    after_body: Callable[[], Awaitable[dict[str, Any]]]) -> list[dict[str, Any]]:
    """POST `body` to /v1/predict/batch (contributions on) straight into the app on the
    TestClient's event loop, `after_body` giving every message the server would send
    after the body (a disconnect); the messages the app sent back."""
    async def call() -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await after_body()

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/predict/batch",
                 "raw_path": b"/v1/predict/batch", "root_path": "",
                 "query_string": b"contributions=true",
                 "headers": [(b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode()),
                             *[(k.lower().encode(), v.encode()) for k, v in USER.items()]],
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
                 "state": dict(client.app_state)}
        await client.app(scope, receive, send)  # type: ignore[arg-type]
        return sent

    assert client.portal is not None
    return client.portal.call(call)


def test_a_batch_whose_disconnect_watch_fails_is_still_answered(client: TestClient) -> None:
    """Only a disconnect drops a batch: a server whose receive fails after the body (none
    known) leaves the client waiting for its answer, which it gets."""
    async def broken() -> dict[str, Any]:
        raise RuntimeError("receive failed")

    body = json.dumps({"patients": [request_body(patient_id=f"p{i}") for i in range(3)]})
    sent = _post_over_asgi(client, body.encode(), broken)
    assert sent[0]["status"] == 200
    results = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))["results"]
    assert [r["patient_id"] for r in results] == ["p0", "p1", "p2"]


def test_a_thread_idle_after_bulk_scoring_gives_memory_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Once a bulk load has passed (a batch of max_patients or more, then nothing to do),
    an inference thread calls after_bulk (app.memory.release_free_memory) once; small
    requests never do, and a failing after_bulk leaves the thread serving."""
    monkeypatch.setattr(batching, "IDLE_AFTER_BULK_S", 0.05)
    calls: list[float] = []

    def after_bulk() -> None:
        calls.append(time.monotonic())
        raise OSError("trim failed")

    batcher = Batcher(lambda jobs: list(jobs), max_patients=4,  # type: ignore[arg-type]
                      chunk_patients=4, after_bulk=after_bulk)

    async def run() -> tuple[int, list[Outcome]]:
        for job in ("a", "b", "c"):
            await batcher.submit([job])  # type: ignore[list-item]
        await asyncio.sleep(0.3)
        after_small = len(calls)
        await batcher.submit(list(range(12)))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        return after_small, await batcher.submit(["d"])  # type: ignore[list-item]

    try:
        after_small, last = asyncio.run(run())
    finally:
        batcher.stop()
    assert after_small == 0
    assert len(calls) == 1
    assert last == ["d"]


def test_memory_is_not_given_back_while_another_thread_scores(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads: one idle after bulk chunks while the other scores a long one waits for
    it; after_bulk runs once both are done."""
    monkeypatch.setattr(batching, "IDLE_AFTER_BULK_S", 0.05)
    done: list[float] = []
    calls: list[float] = []

    def score(jobs: Sequence[Any]) -> list[Any]:
        if jobs[0] == "slow":
            time.sleep(0.5)
            done.append(time.monotonic())
        return list(jobs)

    batcher = Batcher(score, max_patients=4, chunk_patients=4,  # type: ignore[arg-type]
                      threads=2, after_bulk=lambda: calls.append(time.monotonic()))

    async def run() -> None:
        batcher.start()
        await asyncio.sleep(0.05)  # both threads wait: one takes the slow chunk, one the rest
        await asyncio.gather(batcher.submit(["slow", 1, 2, 3]),  # type: ignore[list-item]
                             *(batcher.submit(list(range(4)))  # type: ignore[arg-type]
                               for _ in range(4)))
        await asyncio.sleep(0.3)

    try:
        asyncio.run(run())
    finally:
        batcher.stop()
    assert done and calls
    assert min(calls) >= done[0]
