"""Scan what the real hosts wrote: the audit over a real OpenClaw gateway's and a real Hermes' stores.

One run of each real-host session harness (tests/test_realhost_session_openclaw.py and
tests/test_realhost_session_hermes.py: the scripted model of tests/realhost/scripted_llm.py
plays tests/realhost/scenario.json) leaves the hosts' own stores behind: OpenClaw's
``$OPENCLAW_STATE_DIR/agents/main/agent/openclaw-agent.sqlite`` and Hermes'
``$HERMES_HOME/state.db``. ``token-optimizer scan --json`` then reads them the way a user
runs it, and each test checks one thing a user would check against what the scripted model
server itself reported (its requests log: ``prompt_tokens`` per call, 30 completion tokens
each): the sessions are found, their message and token totals, the tool calls, that the
scripted model (no price anywhere) is reported unpriced rather than a silent $0, and that
they are manual sessions, not cron. Without the hosts the tests skip (or fail when
TOKEN_OPTIMIZER_REQUIRE_HOSTS=1), like the harnesses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_hermes_realhost import hermes_or_skip
from test_realhost_session_hermes import drive
from test_realhost_session_openclaw import SID1, SID2, host, host_tmp_cleanup, run_session

from token_optimizer.audit.scan import Roots, scan

pytestmark = pytest.mark.realhost

REPO = Path(__file__).resolve().parent.parent
COMPLETION_TOKENS = 30  # what tests/realhost/scripted_llm.py reports for every call
__all__ = ["host"]  # the OpenClaw harness's host fixture, used here


@dataclass
class Scanned:
    """One host run and what our scan made of its store."""

    requests: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    cli_rows: list[dict[str, Any]]
    warm_rows: list[dict[str, Any]]
    sids: dict[str, str]
    """scenario session name ('first'/'second') → the host's session id."""
    turn_requests: dict[str, list[int]]
    """host session id → the request numbers answered in its turns."""
    store: Path


def _cli_scan(tmp: Path, *, openclaw: Path | None = None, hermes: Path | None = None) -> list[Any]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TOKEN_OPTIMIZER_", "OPENCLAW_", "HERMES_"))}
    env["HOME"] = str(tmp / "user-home")
    args = [sys.executable, "-m", "token_optimizer", "--home", str(tmp / "to-state"), "scan",
            "--json", "--days", "3650",
            "--openclaw-root", str(openclaw or tmp / "no-openclaw"),
            "--hermes-home", str(hermes or tmp / "no-hermes")]
    p = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rows: list[Any] = json.loads(p.stdout)
    return rows


@pytest.fixture(scope="module")
def openclaw_scan(host: Any, tmp_path_factory: pytest.TempPathFactory) -> Scanned:
    base = tmp_path_factory.mktemp("oc-audit")
    with host_tmp_cleanup():
        run = run_session(host, base)
    root = base / "home" / ".openclaw"
    store = root / "agents" / "main" / "agent" / "openclaw-agent.sqlite"
    res = scan(Roots(root, None), base / "audit-state")
    cli = _cli_scan(base, openclaw=root)
    warm = _cli_scan(base, openclaw=root)
    turns = {1: SID1, 2: SID1}
    from test_realhost_session_openclaw import SCENARIO

    for session, sid in zip(SCENARIO["sessions"], (SID1, SID2), strict=True):
        for t in session["turns"]:
            turns[t["turn"]] = sid
    by_sid: dict[str, list[int]] = {}
    for r in run.llm.requests:
        if r["kind"] in ("agent", "extra") and r["turn"] in turns:
            by_sid.setdefault(turns[r["turn"]], []).append(r["n"])
    return Scanned(run.llm.requests, [r.to_json() for r in res.rows], cli, warm,
                   {"first": SID1, "second": SID2}, by_sid, store)


@pytest.fixture(scope="module")
def hermes_scan(tmp_path_factory: pytest.TempPathFactory) -> Scanned:
    work = tmp_path_factory.mktemp("hermes-audit")
    with hermes_or_skip() as py:
        run = drive(py, work)
    assert run.data["errors"] == [], run.diag()
    home = work / "hermes-home"
    res = scan(Roots(None, home), work / "audit-state")
    cli = _cli_scan(work, hermes=home)
    warm = _cli_scan(work, hermes=home)
    by_sid: dict[str, list[int]] = {}
    for t in run.data["turns"]:
        by_sid.setdefault(t["session_id"], []).extend(t["requests"])
    return Scanned(run.requests, [r.to_json() for r in res.rows], cli, warm, run.sids, by_sid,
                   home / "state.db")


def _row(s: Scanned, sid: str) -> dict[str, Any]:
    rows = {r["sessionId"]: r for r in s.rows}
    assert sid in rows, f"session {sid} not found by the scan: {sorted(rows)}"
    return rows[sid]


def _calls(s: Scanned, sid: str) -> list[dict[str, Any]]:
    """The scripted model's answers to the session's own turns (helpers and summaries aside)."""
    mine = set(s.turn_requests.get(sid, []))
    return [r for r in s.requests if r["n"] in mine and r["kind"] in ("agent", "extra")]


def _check_totals(s: Scanned, sid: str, row: dict[str, Any], calls: list[dict[str, Any]]) -> None:
    prompt = sum(int(r["prompt_tokens"]) for r in calls)
    t = row["tokens"]
    assert (t["input"] + t["cacheRead"] + t["cacheWrite"], t["output"]) == \
        (prompt, COMPLETION_TOKENS * len(calls)), (sid, t, [r["prompt_tokens"] for r in calls])
    assert row["apiCalls"] == len(calls), (sid, row["apiCalls"], len(calls))
    assert row["totalTokens"] == prompt + COMPLETION_TOKENS * len(calls)


def _tool_calls(calls: list[dict[str, Any]]) -> int:
    return sum(len(r["decision"]) for r in calls if isinstance(r["decision"], list))


# ---------------------------------------------------------------- OpenClaw


def test_openclaw_sessions_found_with_the_models_totals(openclaw_scan: Scanned) -> None:
    s = openclaw_scan
    for sid in (SID1, SID2):
        row = _row(s, sid)
        calls = _calls(s, sid)
        assert calls, sid
        _check_totals(s, sid, row, calls)
        assert row["system"] == "openclaw" and row["agentName"] == "main"
        assert row["sourcePath"] == f"{s.store}#transcript_events"
        assert row["assistantMessages"] == len(calls)
        assert row["messageCount"] == row["userMessages"] + row["assistantMessages"]
        turns = {r["turn"] for r in calls}
        assert row["userMessages"] >= len(turns), (row["userMessages"], turns)
        assert row["toolCalls"] == _tool_calls(calls) and row["toolErrors"] == 0
    assert _row(s, SID1)["compactions"] == 1  # the user's one `openclaw sessions compact`
    assert _row(s, SID2)["compactions"] == 0
    assert "sessions_spawn" in _row(s, SID1)["toolsUsed"]


def test_openclaw_helper_agent_is_its_own_session(openclaw_scan: Scanned) -> None:
    s = openclaw_scan
    helpers = [r for r in s.requests if r["kind"] == "helper"]
    subs = [r for r in s.rows if ":subagent:" in (r["sessionKey"] or "")]
    assert len(subs) == 1, [r["sessionKey"] for r in s.rows]
    sub = subs[0]
    assert sub["tokens"]["input"] == sum(int(r["prompt_tokens"]) for r in helpers)
    assert sub["apiCalls"] == len(helpers) and sub["runType"] == "manual"
    assert len(s.rows) == 3  # the two sessions and the helper: nothing else, nothing twice


def test_openclaw_money_and_run_type(openclaw_scan: Scanned) -> None:
    # the gateway's config prices fake-1 at 0 (models.providers.fake.models[].cost): a $0
    # from the user's own rate table, said so, never an unexplained zero
    for row in openclaw_scan.rows:
        assert row["runType"] == "manual" and row["cronJob"] is None, row["sessionKey"]
        assert row["costUsd"] == 0 and row["costBasis"] == "table", row
        assert row["unpricedTokens"] == 0 and row["unpricedModels"] == []
        assert all(m["priceSource"] for m in row["models"]), row["models"]


def test_openclaw_cli_scan_equals_the_api_warm_and_cold(openclaw_scan: Scanned) -> None:
    s = openclaw_scan
    assert s.cli_rows == s.rows
    assert s.warm_rows == s.cli_rows


# ---------------------------------------------------------------- Hermes


def test_hermes_sessions_found_with_the_models_totals(hermes_scan: Scanned) -> None:
    s = hermes_scan
    for name in ("first", "second"):
        sid = s.sids[name]
        row = _row(s, sid)
        calls = _calls(s, sid)
        assert calls, (name, sid)
        _check_totals(s, sid, row, calls)
        assert row["system"] == "hermes" and row["agentName"] == "default"
        assert row["sourcePath"].startswith(str(s.store))
        assert row["platform"] == "cli"
    second = _row(s, s.sids["second"])
    calls = _calls(s, s.sids["second"])
    assert second["userMessages"] == 1 and second["assistantMessages"] == len(calls)
    assert second["toolCalls"] == _tool_calls(calls) == 1 and second["toolErrors"] == 0
    assert second["toolsUsed"] == ["read_file"]


def test_hermes_helper_agent_is_its_own_session(hermes_scan: Scanned) -> None:
    s = hermes_scan
    helpers = [r for r in s.requests if r["kind"] == "helper"]
    subs = [r for r in s.rows if r["platform"] == "subagent"]
    assert len(subs) == 1, [(r["sessionId"], r["platform"]) for r in s.rows]
    assert subs[0]["tokens"]["input"] == sum(int(r["prompt_tokens"]) for r in helpers)
    assert subs[0]["apiCalls"] == len(helpers) == 1
    assert len(s.rows) == 3


def test_hermes_unpriced_model_is_reported_not_zero(hermes_scan: Scanned) -> None:
    for row in hermes_scan.rows:
        assert row["runType"] == "manual" and row["cronJob"] is None
        assert row["costUsd"] == 0 and row["costBasis"] == "unpriced", row
        assert row["unpricedTokens"] == row["totalTokens"] > 0
        assert row["unpricedModels"] == ["scripted-1"]


def test_hermes_cli_scan_equals_the_api_warm_and_cold(hermes_scan: Scanned) -> None:
    s = hermes_scan
    assert s.cli_rows == s.rows
    assert s.warm_rows == s.cli_rows


def test_hermes_compacted_session_counts_each_message_once(hermes_scan: Scanned) -> None:
    s = hermes_scan
    sid = s.sids["first"]
    row = _row(s, sid)
    calls = _calls(s, sid)
    turns = {r["turn"] for r in calls}
    assert (row["userMessages"], row["assistantMessages"], row["toolCalls"], row["compactions"]) \
        == (len(turns), len(calls), _tool_calls(calls), 1)
