"""Our Hermes token totals equal ``hermes insights`` (Hermes' own engine) on the same state.db."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_audit import gen_hermes
from bench.bench_hermes_insights import DEFAULT_PY, insights_totals, our_totals

pytestmark = pytest.mark.realhost


@pytest.mark.skipif(not DEFAULT_PY.exists(), reason="Hermes venv not installed")
def test_token_totals_match_hermes_insights(tmp_path: Path) -> None:
    home = tmp_path / "hermes"
    gen_hermes(home, 300)
    theirs = insights_totals(home, DEFAULT_PY)
    assert theirs["total_sessions"] == 300
    assert our_totals(home, tmp_path / "state") == theirs
