"""The service's resident memory: what it imports. Serving reads no DataFrame, and pandas
(with what it pulls in) is ~30 MB resident that a service answering one patient at a time
would carry for nothing (benchmarks/http.py prints the server's RSS)."""

from __future__ import annotations

import subprocess
import sys

from tests.app.test_e2e import ROOT


def test_the_service_starts_without_pandas() -> None:
    code = ("import sys\n"
            "from app.main import create_app\n"
            "create_app()\n"
            "loaded = [m for m in ('pandas', 'matplotlib', 'sklearn') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
