"""The service's resident memory: what it imports. Serving reads no DataFrame, and pandas
(with what it pulls in) is ~30 MB resident that a service answering one patient at a time
would carry for nothing; Arrow, which reads bulk bodies, loads with the first batch body
(benchmarks/http.py prints the server's RSS)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from models.features import Grid, tensorise_rows
from tests.app.test_e2e import ROOT


def test_the_service_starts_without_pandas() -> None:
    code = ("import sys\n"
            "from app.main import create_app\n"
            "create_app()\n"
            "loaded = [m for m in ('pandas', 'matplotlib', 'sklearn', 'pyarrow')\n"
            "          if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_answering_single_patients_keeps_pandas_out(tmp_path: Path) -> None:
    """Not only at start: /v1/predict (rows, columns, date-times, a what-if), /v1/forecast,
    /v1/predict/fhir, /v2 inference and batches (plain ones decoded by Arrow, whose
    conversions would import pandas) read no DataFrame either; and Arrow itself (35-65 MiB
    resident) stays out until the first batch body."""
    from tests.app.support import make_checkpoint, normalizer, request_body
    from tests.app.test_columns import ISO, as_columns
    from tests.app.test_fhir import bundle
    from tests.app.test_forecast import make_forecaster
    from tests.app.test_oip import infer_body
    from tests.app.test_whatif import ANTIBIOTICS_NOW, make_effect_checkpoint
    from tests.app.test_whatif import body as what_if_body

    make_checkpoint(tmp_path, "default")
    make_forecaster(tmp_path)
    make_effect_checkpoint(tmp_path, "whatif")
    patient = request_body()
    rows = patient["observations"]
    assert isinstance(rows, list)
    tensors = tensorise_rows(np.zeros(len(rows), dtype=np.int64),
                             np.array([r["time"] for r in rows]),
                             [r["variable"] for r in rows],
                             np.array([float(r["value"]) for r in rows]),
                             [{"age": 71, "sex": "female"}], normalizer(), Grid(1.0, 48))
    requests = [
        ("/v1/predict", patient), ("/v1/predict", as_columns(patient)), ("/v1/predict", ISO),
        ("/v1/predict", what_if_body({"label": "a", "interventions": ANTIBIOTICS_NOW})),
        ("/v1/forecast", patient), ("/v1/predict/fhir", bundle()),
        ("/v1/predict/fhir?format=riskassessment", bundle()),
        ("/v2/models/default/infer", infer_body(tensors)),
        ("/v1/predict/batch", {"patients": [patient, ISO]}),  # not plain: no Arrow
        ("/v1/predict/batch", {"patients": [  # plain: Arrow, rows then columns
            patient, {**patient, "static": {"age": 71, "sex": None, "weight": 80}}]}),
        ("/v1/predict/batch", {"patients": [as_columns(patient), {
            **as_columns(patient), "patient_id": "b", "static": {"height": 170.5}}]}),
    ]
    (tmp_path / "requests.json").write_text(json.dumps(requests))
    code = ("import json, sys\n"
            "from pathlib import Path\n"
            "from fastapi.testclient import TestClient\n"
            "from app.main import create_app\n"
            "from tests.app.support import USER, settings_for\n"
            "root = Path(sys.argv[1])\n"
            "with TestClient(create_app(settings_for(root))) as client:\n"
            "    for path, body in json.loads((root / 'requests.json').read_text()):\n"
            "        r = client.post(path, json=body, headers=USER)\n"
            "        assert r.status_code == 200, (path, r.text[:500])\n"
            "        assert 'pandas' not in sys.modules, path\n"
            "        if not path.endswith('/batch'):  # Arrow comes with the first batch body\n"
            "            assert 'pyarrow' not in sys.modules, path\n"
            "    assert 'pyarrow' in sys.modules  # (the plain batches were Arrow's)\n")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
