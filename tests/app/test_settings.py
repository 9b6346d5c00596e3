"""Settings from the environment: prefix VITALCAST_, comma-separated keys, DESIGN.md limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import Settings, get_settings


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MODEL_DIR", "API_KEYS", "ADMIN_KEYS", "MAX_OBSERVATIONS", "MAX_BATCH",
                 "MAX_BODY_BYTES", "DEFAULT_MODEL", "PORT", "HOST"):
        monkeypatch.delenv(f"VITALCAST_{name}", raising=False)
    s = Settings()
    assert (s.model_dir, s.default_model) == (Path("checkpoints"), "default")
    assert (s.max_observations, s.max_batch, s.max_body_bytes) == (20_000, 1_000, 8 * 2**20)
    assert (s.host, s.port, s.api_keys, s.admin_keys) == ("127.0.0.1", 8000, [], [])


def test_environment_overrides_and_keys_are_comma_separated(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITALCAST_API_KEYS", " k1, k2 ,,")
    monkeypatch.setenv("VITALCAST_ADMIN_KEYS", "a1")
    monkeypatch.setenv("VITALCAST_MAX_BATCH", "5")
    monkeypatch.setenv("VITALCAST_LOG_LEVEL", "debug")
    s = Settings()
    assert s.api_keys == ["k1", "k2"] and s.admin_keys == ["a1"]
    assert s.max_batch == 5 and s.log_level == "DEBUG"
    assert "k1" not in repr(s) and "a1" not in repr(s)


def test_invalid_settings_are_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VITALCAST_MAX_BATCH", "0")
    with pytest.raises(ValidationError, match="max_batch"):
        Settings()


def test_get_settings_is_cached() -> None:
    get_settings.cache_clear()
    assert get_settings() is get_settings()
    get_settings.cache_clear()
