"""The group-wide explanation (`service._explanations`) against one stay's (`_explanation`).

Responses build every stay's attention bins for a whole group at once; what each stay gets
must be exactly what the one-stay path gives it (bins, labels in hours or ISO, weights to
the last bit) and a stay whose attention is unusable fails alone, with the same error.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from app import service
from app.errors import ModelFailure
from app.schemas import PredictRequest
from models.checkpoint import latest_version_dir, load_checkpoint
from models.predict import Prediction
from tests.app.support import make_checkpoint, request_body

T = 48


def _job(model_dir: Path, iso: bool) -> service.Job:
    ckpt = load_checkpoint(latest_version_dir(model_dir, "default"))
    body = request_body()
    if iso:
        body = request_body(observations=[
            {"time": "2026-03-01T08:30:00+01:00", "variable": "heart_rate", "value": 118},
            {"time": "2026-03-01T12:10:00+01:00", "variable": "sbp", "value": 95}])
    return service.prepare(PredictRequest.model_validate(body), ckpt, 20_000, explain=False)


def _prediction(rng: np.random.Generator, kind: str,
                offsets: tuple[int, ...] = (0, 0, 3, 500)) -> Prediction:
    attention = rng.random(T) * rng.choice([1e-6, 1.0, 1e6])
    first = int(rng.integers(0, T))
    last = int(rng.integers(first, T))
    mask = np.zeros(T, dtype=bool)
    mask[first:last + 1] = True
    attention[~mask] = 0.0
    if kind == "nan":
        attention[last] = np.nan
    elif kind == "negative":
        attention[first] = -0.5
    elif kind == "zero":
        attention[mask] = 0.0
    elif kind == "gap" and last - first >= 2:
        mask[first + 1] = False
    elif kind == "empty":
        mask[:] = False
    return Prediction(probability=0.3, logit=-0.8, los_days=4.0, attention=attention,
                      step_mask=mask, offset=int(rng.choice(offsets)),
                      contributions=None)


def _bytes(explanation: object) -> bytes:
    """An explanation as the client receives it (its attention is encoded JSON)."""
    return orjson.dumps(explanation)


def _one(job: service.Job, pred: Prediction) -> bytes | str:
    """One stay's explanation as the service's one-stay path writes it (or its error),
    checked byte for byte against the bins written out here as dicts: the window's bins,
    labelled in the request's kind of time, weights the window's attention over its exact
    float sum."""
    try:
        got = _bytes(service._explanation(job, pred))
    except ModelFailure as e:
        return str(e)
    window = np.flatnonzero(pred.step_mask)
    weights = pred.attention[window] / pred.attention[window].sum()
    starts, ends = service._bin_labels(job, pred.offset + window)
    assert got == _bytes({"attention": [{"start": s, "end": e, "weight": w} for s, e, w
                                        in zip(starts, ends, weights.tolist(), strict=True)],
                          "variables": None})
    return got


# Stays whose window starts months after admission (bins far past the marks listed once per
# grid) and stays near admission, in one group.
FAR = (0, 3, 4000, 4100, 87_000)


@pytest.mark.parametrize("iso", [False, True])
@pytest.mark.parametrize("offsets", [(0, 0, 3, 500), FAR], ids=["near", "far"])
def test_group_explanations_equal_each_stay_on_its_own(tmp_path: Path, iso: bool,
                                                       offsets: tuple[int, ...]) -> None:
    make_checkpoint(tmp_path)
    job = _job(tmp_path, iso)
    rng = np.random.default_rng(3)
    kinds = ["ok"] * 40 + ["nan", "negative", "zero", "gap", "empty"] * 3
    preds = [_prediction(rng, str(kind), offsets) for kind in rng.permutation(kinds)]
    got = service._explanations([job] * len(preds), preds)
    want = [_one(job, pred) for pred in preds]
    assert [str(g) if isinstance(g, ModelFailure) else _bytes(g) for g in got] == want
    assert sum(isinstance(g, ModelFailure) for g in got) >= 9  # nan, negative, zero x 3
    assert sum(isinstance(w, bytes) for w in want) >= 40


def test_an_unusable_stay_fails_alone_in_a_batch(tmp_path: Path) -> None:
    make_checkpoint(tmp_path)
    job = _job(tmp_path, iso=False)
    rng = np.random.default_rng(0)
    preds = [_prediction(rng, "ok"), _prediction(rng, "nan"), _prediction(rng, "ok")]
    got = service._explanations([job] * 3, preds)
    assert isinstance(got[1], ModelFailure)
    assert "unusable attention weights" in str(got[1])
    for kept in (got[0], got[2]):
        assert isinstance(kept, dict)
        weights = [b["weight"] for b in orjson.loads(_bytes(kept))["attention"]]
        assert sum(weights) == pytest.approx(1.0)


def test_weights_are_written_as_the_floats_of_any_other_answer() -> None:
    """The weights' JSON, written from the array in one call, is each float's own JSON:
    tiny, huge, subnormal, negative zero and random weights alike."""
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.random(5000), rng.random(500) * 1e-9, rng.random(500) * 1e17,
                             [0.0, -0.0, 1.0, 1e-300, 5e-324, 1e16, 1e15, 0.1, 1 / 3]])
    assert service._floats_json(values) == [orjson.dumps(v) for v in values.tolist()]
    assert service._floats_json(values[::2]) == [orjson.dumps(v) for v in values[::2].tolist()]
    assert service._floats_json(np.zeros(0)) == []


def test_non_finite_contributions_fail_the_stay_not_a_silent_null(tmp_path: Path) -> None:
    """JSON has no NaN: a stay whose integrated gradients are not finite is a model
    failure that says how to get the risk alone, not an answer with null contributions."""
    make_checkpoint(tmp_path)
    job = _job(tmp_path, iso=False)
    pred = _prediction(np.random.default_rng(2), "ok")
    explanation = service._explanation(job, pred)
    news2 = service._news2([job], service._rows([job]))[0]
    pred.contributions = {"heart_rate": 0.2, "sbp": -0.1}
    assert service._shared_response(job, pred, news2, explanation)["risk"]["probability"] == 0.3
    for bad in (math.nan, math.inf):
        pred.contributions = {"heart_rate": 0.2, "sbp": bad}
        with pytest.raises(ModelFailure, match=r"non-finite contributions.*contributions=false"):
            service._shared_response(job, pred, news2, explanation)
