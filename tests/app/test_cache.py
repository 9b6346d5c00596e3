"""The prediction cache: a repeated series is answered from it, anything the model would see
differently is not, and a reload starts afresh."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.cache import PredictionCache
from app.main import create_app
from tests.app.support import ADMIN, USER, make_checkpoint, request_body, settings_for


def _cache(c: TestClient) -> PredictionCache:
    cache: PredictionCache = c.app.state.cache  # type: ignore[attr-defined]
    return cache


def test_a_repeated_series_is_answered_from_the_cache_with_its_own_id(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    with TestClient(create_app(settings_for(tmp_path))) as c:
        first = c.post("/v1/predict", json=request_body(), headers=USER).json()
        assert (_cache(c).hits, _cache(c).misses) == (0, 1)
        body = request_body(patient_id="someone-else")
        body["observations"] = list(reversed(body["observations"]))  # type: ignore[call-overload]
        again = c.post("/v1/predict", json=body, headers=USER).json()
        assert _cache(c).hits == 1
        assert again["patient_id"] == "someone-else"
        assert {**again, "patient_id": None} == {**first, "patient_id": None}


def test_two_values_at_one_time_are_told_apart_by_their_order(tmp_path: Path) -> None:
    """Of two heart rates at the same time the later row is scored (bin and NEWS2 alike):
    the same rows in the other order are another series, not a cache hit."""
    make_checkpoint(tmp_path)
    rows = [{"time": 1.0, "variable": "heart_rate", "value": v} for v in (80, 140)]
    swapped = request_body(observations=rows[::-1])
    with TestClient(create_app(settings_for(tmp_path, cache_entries=0))) as c:
        fresh = c.post("/v1/predict", json=swapped, headers=USER).json()
    with TestClient(create_app(settings_for(tmp_path))) as c:
        first = c.post("/v1/predict", json=request_body(observations=rows), headers=USER)
        again = c.post("/v1/predict", json=swapped, headers=USER).json()
        assert (_cache(c).hits, _cache(c).misses) == (0, 2)
    assert first.json()["news2"]["parts"]["heart_rate"] == 3  # 140/min
    assert again == fresh and again["news2"]["parts"]["heart_rate"] == 0  # 80/min


def test_a_changed_value_or_a_new_version_is_scored_again(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    with TestClient(create_app(settings_for(tmp_path))) as c:
        c.post("/v1/predict", json=request_body(), headers=USER)
        changed = request_body()
        changed["observations"][0]["value"] = 119  # type: ignore[index]
        c.post("/v1/predict", json=changed, headers=USER)
        assert (_cache(c).hits, _cache(c).misses) == (0, 2)
        new = make_checkpoint(tmp_path, seed=5).name
        assert c.post("/v1/models/reload", headers=ADMIN).status_code == 200
        out = c.post("/v1/predict", json=request_body(), headers=USER).json()
        assert out["model"]["version"] == new
        assert (_cache(c).hits, _cache(c).misses) == (0, 3)


def test_the_cache_is_bounded_and_can_be_switched_off(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    bodies = [request_body(observations=[{"time": 1.0, "variable": "heart_rate",
                                          "value": 60 + i}]) for i in range(5)]
    for entries, kept in ((2, 2), (0, 0)):
        with TestClient(create_app(settings_for(tmp_path, cache_entries=entries))) as c:
            for body in bodies:
                assert c.post("/v1/predict", json=body, headers=USER).status_code == 200
            assert len(_cache(c)) == kept
            c.post("/v1/predict", json=bodies[0], headers=USER)  # least recently used: gone
            assert _cache(c).hits == 0


def test_contributions_can_be_left_out_and_are_cached_apart(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    with TestClient(create_app(settings_for(tmp_path))) as c:
        full = c.post("/v1/predict", json=request_body(), headers=USER).json()
        bare = c.post("/v1/predict", json=request_body(), headers=USER,
                      params={"contributions": "false"}).json()
        assert full["explanation"]["variables"] and bare["explanation"]["variables"] is None
        assert bare["risk"] == full["risk"]
        assert bare["explanation"]["attention"] == full["explanation"]["attention"]
        batch = c.post("/v1/predict/batch", json={"patients": [request_body()] * 2},
                       headers=USER, params={"contributions": "false"}).json()
        assert [r["explanation"]["variables"] for r in batch["results"]] == [None, None]
        assert (_cache(c).hits, _cache(c).misses) == (2, 2)  # the batch: both from it


def test_responses_are_kept_for_a_bounded_number_of_stays(tmp_path: Path) -> None:
    """~4 KB each: only the most recent `max_responses` stays keep theirs; hits on the
    others build a new one, and every answer is the same either way."""
    make_checkpoint(tmp_path)
    bodies = [request_body(observations=[{"time": 1.0, "variable": "heart_rate",
                                          "value": 60 + i}]) for i in range(4)]
    with TestClient(create_app(settings_for(tmp_path))) as c:
        _cache(c).max_responses = 2
        first = [c.post("/v1/predict", json=b, headers=USER).json() for b in bodies]
        stays = list(_cache(c)._entries.values())
        assert [s.response is not None for s in stays] == [False, False, True, True]
        again = [c.post("/v1/predict", json=b, headers=USER).json() for b in bodies]
        assert again == first and _cache(c).hits == 4
        assert sum(s.response is not None for s in stays) == 2
