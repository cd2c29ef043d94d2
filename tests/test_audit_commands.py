"""``detect``, ``scan`` and ``report`` through the CLI: JSON shapes, windows, no silent $0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audit_stores import HermesStore, OpenClawStore, assistant_event, user_event

from token_optimizer.cli import main

T0 = 1_780_000_000_000  # 2026-05-28T20:26:40Z


@pytest.fixture
def roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("TOKEN_OPTIMIZER_HOME", str(tmp_path / "state"))
    oc = OpenClawStore(tmp_path / "oc")
    oc.add_session("s1")
    oc.add_events("s1", [user_event("first prompt here", T0),
                         assistant_event(T0 + 1000, inp=1000, out=100, cost=0.3)])
    oc.add_session("s2", agent="ops")
    oc.add_events("s2", [user_event("second", T0 + 86_400_000),
                         assistant_event(T0 + 86_401_000, model="mystery-9", inp=50, out=5)],
                  agent="ops")
    oc.close()
    h = HermesStore(tmp_path / "hm")
    h.add_session("h1", inp=200, out=20, actual=0.05, started=(T0 + 2 * 86_400_000) / 1000)
    h.close()
    return ["--openclaw-root", str(tmp_path / "oc"), "--hermes-home", str(tmp_path / "hm")]


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> object:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_scan_json_one_row_per_session(roots: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rows = run_json(capsys, ["scan", "--json", "--days", "3650", *roots])
    assert isinstance(rows, list)
    assert {r["sessionId"] for r in rows} == {"s1", "s2", "h1"}
    s1 = next(r for r in rows if r["sessionId"] == "s1")
    for key in ("system", "agentName", "project", "timestamp", "durationSeconds", "tokens",
                "costUsd", "model", "runType", "messageCount",
                "toolsUsed", "sourcePath", "costBasis", "unpricedTokens", "unpricedModels",
                "models", "toolErrors", "stopReasons", "compactions", "rewinds", "cacheReadRatio"):
        assert key in s1
    assert s1["tokens"] == {"input": 1000, "output": 100, "cacheRead": 0, "cacheWrite": 0}
    assert s1["costUsd"] == 0.3 and s1["costBasis"] == "recorded"
    s2 = next(r for r in rows if r["sessionId"] == "s2")
    assert s2["costBasis"] == "unpriced" and s2["unpricedTokens"] == 55
    assert s2["unpricedModels"] == ["mystery-9"]


def test_filters_agent_and_window(roots: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rows = run_json(capsys, ["scan", "--json", "--agent", "ops", "--since", "2020-01-01",
                             "--openclaw-root", roots[1]])
    assert [r["sessionId"] for r in rows] == ["s2"]
    rows = run_json(capsys, ["scan", "--json", "--since", "2026-05-28", "--until", "2026-05-28",
                             "--timezone", "UTC", *roots])
    assert [r["sessionId"] for r in rows] == ["s1"]


def test_report_daily_with_breakdown(roots: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rep = run_json(capsys, ["report", "daily", "--json", "--breakdown", "--timezone", "UTC", *roots])
    assert isinstance(rep, dict)
    assert rep["type"] == "daily"
    assert [r["key"] for r in rep["rows"]] == ["2026-05-28", "2026-05-29", "2026-05-30"]
    day2 = rep["rows"][1]
    assert day2["unpricedTokens"] == 55 and day2["unpricedModels"] == ["mystery-9"]
    assert day2["breakdown"][0]["model"] == "mystery-9"
    tot = rep["totals"]
    assert tot["sessions"] == 3 and tot["totalTokens"] == 1100 + 55 + 220
    assert tot["costUsd"] == pytest.approx(0.35) and tot["unpricedTokens"] == 55


@pytest.mark.parametrize("kind", ["weekly", "monthly", "session", "model", "agent", "project"])
def test_every_report_kind(kind: str, roots: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    rep = run_json(capsys, ["report", kind, "--json", *roots])
    assert isinstance(rep, dict) and rep["type"] == kind and rep["rows"]
    assert rep["totals"]["totalTokens"] == 1375


def test_text_output_names_unpriced(roots: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "model", *roots]) == 0
    out = capsys.readouterr().out
    assert "mystery-9" in out and "unpriced" in out.lower()
    assert main(["scan", "--days", "3650", *roots]) == 0
    out = capsys.readouterr().out
    assert "3 sessions" in out and "Unpriced" in out


def test_detect(roots: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = run_json(capsys, ["detect", "--json", *roots])
    assert isinstance(info, dict)
    assert info["found"] is True and info["path"] == roots[1]
    assert main(["detect", "--openclaw-root", str(tmp_path / "x"),
                 "--hermes-home", str(tmp_path / "y")]) == 1
