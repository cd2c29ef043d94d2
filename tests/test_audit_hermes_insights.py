"""Our Hermes token totals equal ``hermes insights`` (Hermes' own engine) on the same state.db."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hermes_realhost import hermes_or_skip

from bench.bench_audit import gen_hermes
from bench.bench_hermes_insights import insights_totals, our_totals

pytestmark = pytest.mark.realhost


def test_token_totals_match_hermes_insights(tmp_path: Path) -> None:
    home = tmp_path / "hermes"
    gen_hermes(home, 300)
    with hermes_or_skip() as py:  # installed into the cache on first use
        theirs = insights_totals(home, py)
    assert theirs["total_sessions"] == 300
    assert our_totals(home, tmp_path / "state") == theirs
