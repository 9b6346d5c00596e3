"""Hot reload under load: a new version published and reloaded while a real uvicorn server
is busy with mixed traffic; no request fails and predictions switch to the new version.

A bounded run of `benchmarks/soak.py --reload-during` (the 60 s, 32-connection run is the
benchmark; figures in the README, "Reliability").
"""

from __future__ import annotations

import pytest

from benchmarks.soak import run_soak

pytestmark = pytest.mark.slow


def test_reload_under_load_fails_no_request_and_switches_version() -> None:
    result = run_soak(seconds=6.0, concurrency=8, reload_during=True, max_requests=2000,
                      seed=1, warmup=1.0)
    report = "\n".join(result.lines())
    assert result.requests > 20, report
    assert result.connection_errors == 0, report
    assert result.server_errors == 0, report
    assert result.failed == 0, report
    assert result.reload_status == 200, report
    assert result.old_version is not None and result.new_version is not None, report
    assert result.new_version > result.old_version, report
    # every prediction that started after the reload answered on the new version
    assert result.switched, report
    assert sum(result.versions_after_reload.values()) > 0, report
    # the mix really was mixed: valid answers and each kind of refusal were seen
    assert {200, 401, 413, 422} <= set(result.by_status), report
