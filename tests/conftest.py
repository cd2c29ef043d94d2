"""Shared fixtures: every test runs with HOME and the state root in a temp dir."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from token_optimizer import bounded, pricing
from token_optimizer.fsutil import StatePaths, resolve_paths


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """No test may touch the real home: HOME and TOKEN_OPTIMIZER_HOME point at a temp dir."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("USERPROFILE", raising=False)
    monkeypatch.setenv("TOKEN_OPTIMIZER_HOME", str(home / ".openclaw" / "token-optimizer"))
    for var in list(os.environ):
        if var.startswith("TOKEN_OPTIMIZER_") and var not in ("TOKEN_OPTIMIZER_HOME", "TOKEN_OPTIMIZER_REQUIRE_HOSTS", "TOKEN_OPTIMIZER_CACHE", "TOKEN_OPTIMIZER_ARTIFACTS"):
            monkeypatch.delenv(var, raising=False)
    yield home


@pytest.fixture
def home(_isolated_home: Path) -> Path:
    return _isolated_home


@pytest.fixture
def paths(_isolated_home: Path) -> StatePaths:
    """State paths under the isolated home (root: ~/.openclaw/token-optimizer)."""
    return resolve_paths(_isolated_home / ".openclaw" / "token-optimizer")


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> int:
    """Lower MAX_TRACKED_SESSIONS to 10 for the test."""
    monkeypatch.setattr(bounded, "MAX_TRACKED_SESSIONS", 10)
    return 10


@pytest.fixture
def fresh_pricing() -> Iterator[None]:
    """An empty pricing cache before and after the test (it memoises openclaw.json overrides)."""
    pricing.reset_pricing_cache()
    yield
    pricing.reset_pricing_cache()
