"""Issue 13: honest savings rows, ``checkpoints list|show``, ``restore``, ``savings`` and
the shared ``/token-optimizer`` report answered from persisted state."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from token_optimizer.cli import main
from token_optimizer.fsutil import StatePaths
from token_optimizer.hosts.openclaw_events import handle
from token_optimizer.policy import PolicySettings
from token_optimizer.read_cache import ReadCache
from token_optimizer.runtime import RESTORE_HEADER, TokenOptimizer, restore_injection
from token_optimizer.session_index import README_TEXT
from token_optimizer.status_report import render_status
from token_optimizer.telemetry import Telemetry, savings_basis, savings_by_session
from token_optimizer.token_estimate import estimate_tokens_from_bytes

NO_COOLDOWN = {"TOKEN_OPTIMIZER_CHECKPOINT_COOLDOWN_MS": "0",
               "TOKEN_OPTIMIZER_RUNTIME_EVALUATION_COOLDOWN_MS": "0"}


def _rows(paths: StatePaths) -> list[dict[str, Any]]:
    if not paths.savings_log.exists():
        return []
    return [json.loads(x) for x in paths.savings_log.read_text().splitlines() if x.strip()]


def _ctx(sid: str = "s1") -> dict[str, Any]:
    return {"sessionId": sid, "sessionKey": f"agent:main:{sid}", "agentId": "main", "trigger": "user"}


def _session(rt: TokenOptimizer, sid: str, prompt_tokens: int) -> None:
    c = _ctx(sid)
    handle(rt, "agent_turn_prepare", {"prompt": "refactor the parser", "messages": []}, c)
    handle(rt, "llm_output", {"sessionId": sid, "model": "claude-sonnet-4", "contextTokenBudget": 200_000,
                              "usage": {"input": prompt_tokens, "output": 10, "total": prompt_tokens + 10}}, c)
    handle(rt, "agent_end", {"messages": [{"role": "user", "content": "refactor the parser"},
                                          {"role": "assistant", "content": "Decided: keep the API."}],
                             "success": True}, c)
    handle(rt, "agent_turn_prepare", {"prompt": "go on", "messages": []}, c)


@pytest.fixture
def rt(paths: StatePaths) -> Any:
    r = TokenOptimizer(paths.root, settings=PolicySettings.from_env(NO_COOLDOWN), cwd=str(paths.root))
    yield r
    r.close()


# ---------------------------------------------------------------- the savings rows


def test_savings_row_basis_keys_trail_the_reference_keys(paths: StatePaths) -> None:
    tel = Telemetry(paths)
    tel.log_savings_event("redundant_read", 120.4, "s1", "read #2 blocked: a.py", basis="measured")
    tel.log_savings_event("fresh_session_nudge", 89000, "s1", "score=33 fill_pct=70.3", basis="estimated")
    tel.log_savings_event("checkpoint_restore", 77, "s1", "queued after compact")  # the reference's row
    rows = _rows(paths)
    assert [list(r) for r in rows] == [
        ["timestamp", "event_type", "tokens_saved", "session_id", "detail", "basis"],
        ["timestamp", "event_type", "tokens_saved", "session_id", "detail", "basis", "estimated_tokens"],
        ["timestamp", "event_type", "tokens_saved", "session_id", "detail"],
    ]
    assert rows[0]["tokens_saved"] == 120 and rows[0]["basis"] == "measured"
    assert rows[1]["tokens_saved"] == 0 and rows[1]["estimated_tokens"] == 89000
    # a row without a basis (the reference's, or ours before) counts as estimated
    assert [savings_basis(r) for r in rows] == [("measured", 120), ("estimated", 89000),
                                                ("estimated", 77)]
    (s,) = savings_by_session(rows)
    assert (s["measuredTokens"], s["estimatedTokens"], s["events"]) == (120, 89077, 3)
    assert s["byType"]["redundant_read"] == {"count": 1, "basis": "measured", "tokens": 120}


def test_blocked_redundant_read_logs_the_files_tokens_net_of_the_reply(
        paths: StatePaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN_OPTIMIZER_READ_CACHE_MODE", "block")
    f = tmp_path / "big.py"
    f.write_text("def f(x):\n    return x * 2\n" * 400)
    rc = ReadCache(paths, cwd=lambda: str(tmp_path))
    assert rc.before_read(str(f), None, None, "main", "s1") is None
    msg = rc.before_read(str(f), None, None, "main", "s1")
    assert msg is not None
    (row,) = _rows(paths)
    want = estimate_tokens_from_bytes(f.stat().st_size) - estimate_tokens_from_bytes(len(msg.encode()))
    assert want > 1000
    assert (row["event_type"], row["tokens_saved"], row["basis"]) == ("redundant_read", want, "measured")
    assert row["detail"] == "read #2 blocked: big.py"
    comp = [json.loads(x) for x in paths.compression_log.read_text().splitlines()]
    assert comp[0]["feature"] == "structure_map" and comp[0]["compressed_tokens"] < comp[0]["original_tokens"]


def test_warn_mode_redundant_read_saves_nothing(paths: StatePaths, tmp_path: Path) -> None:
    f = tmp_path / "big.py"
    f.write_text("def f(x):\n    return x * 2\n" * 400)
    rc = ReadCache(paths, cwd=lambda: str(tmp_path))
    for _ in range(3):
        assert rc.before_read(str(f), None, None, "main", "s1") is None
    assert _rows(paths) == []
    assert Telemetry(paths).compression_summary()["total_tokens_saved"] == 0


def test_delta_read_logs_the_measured_difference(paths: StatePaths, tmp_path: Path) -> None:
    f = tmp_path / "mod.py"
    f.write_text("".join(f"line {i}\n" for i in range(600)))
    rc = ReadCache(paths, cwd=lambda: str(tmp_path))
    assert rc.before_read(str(f), None, None, "main", "s1") is None
    f.write_text("".join(f"line {i}\n" for i in range(600)) + "one more\n")
    st = f.stat()
    os.utime(f, ns=(st.st_mtime_ns + 5_000_000_000, st.st_mtime_ns + 5_000_000_000))
    msg = rc.before_read(str(f), None, None, "main", "s1")
    assert msg is not None and "Delta view" in msg
    (row,) = _rows(paths)
    want = estimate_tokens_from_bytes(f.stat().st_size) - estimate_tokens_from_bytes(len(msg.encode()))
    assert (row["event_type"], row["tokens_saved"], row["basis"]) == ("delta_read", want, "measured")


def test_lean_resume_saving_is_estimated(rt: TokenOptimizer, paths: StatePaths) -> None:
    rt._log_estimated_saving("resume_lean", 541, "old-session", "lean resume vs cold --resume rewrite")
    (row,) = _rows(paths)
    assert row["tokens_saved"] == 0 and row["estimated_tokens"] == 541 and row["basis"] == "estimated"


def test_small_restore_is_not_credited_its_own_size(rt: TokenOptimizer, paths: StatePaths) -> None:
    """The reference credited max(<restore size>, active reads): a 700-character restore
    logged ~40k tokens. Now: the estimate is the active reads only (none here)."""
    _session(rt, "s1", 40_000)
    c = _ctx("s1")
    handle(rt, "before_compaction", {"messageCount": 2}, c)
    out = handle(rt, "after_compaction", {"messageCount": 2, "compactedCount": 1}, c)
    enq = next(a for a in out.actions_json() if a["type"] == "enqueue_next_turn_injection")
    rt.enqueue_result(c["sessionKey"], enq["idempotencyKey"], True)
    (row,) = [r for r in _rows(paths) if r["event_type"] == "checkpoint_restore"]
    assert (row["tokens_saved"], row["estimated_tokens"], row["basis"]) == (0, 0, "estimated")


# ---------------------------------------------------------------- restore: one code path


def test_restore_command_prints_what_the_hook_injects(rt: TokenOptimizer, paths: StatePaths,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _session(rt, "s1", 90_000)
    c = _ctx("s1")
    handle(rt, "before_compaction", {"messageCount": 2}, c)
    own = rt.compaction_checkpoints.get("s1")
    out = handle(rt, "after_compaction", {"messageCount": 2, "compactedCount": 1}, c)
    enq = next(a for a in out.actions_json() if a["type"] == "enqueue_next_turn_injection")
    assert enq["text"] == restore_injection(rt.store, "s1", prefer=own)
    assert enq["text"].startswith(RESTORE_HEADER) and "> Trigger: compact" in enq["text"]
    # the compaction checkpoint is also the newest one: the command prints the same text
    assert main(["--home", str(paths.root), "restore", "s1"]) == 0
    printed = capsys.readouterr().out
    assert printed == (enq["text"] if enq["text"].endswith("\n") else enq["text"] + "\n")
    assert main(["--home", str(paths.root), "restore", "nobody"]) == 1


# ---------------------------------------------------------------- the commands


def test_checkpoints_list_and_show(rt: TokenOptimizer, paths: StatePaths,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    _session(rt, "s1", 90_000)   # 45%: one decision per evaluation, the highest band due
    _session(rt, "s2", 30_000)   # 15%: nothing due
    handle(rt, "before_compaction", {"messageCount": 2}, _ctx("s2"))
    home = str(paths.root)
    assert main(["--home", home, "checkpoints", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["session"], r["trigger"], r["fillPct"]) for r in rows] == [
        ("s1", "progressive-35", 45), ("s2", "quality-80", 15), ("s2", "compact", 15)]
    assert all(Path(r["path"]).is_file() and r["qualityScore"] is not None for r in rows)
    assert main(["--home", home, "checkpoints", "list", "--session", "s2", "--json"]) == 0
    assert [r["trigger"] for r in json.loads(capsys.readouterr().out)] == ["quality-80", "compact"]
    assert main(["--home", home, "checkpoints", "list"]) == 0
    text = capsys.readouterr().out
    assert "progressive-35" in text and "45%" in text and "3 checkpoint(s)" in text
    # show: exact name, unique prefix, ambiguous prefix, unknown
    name = rows[2]["file"]
    assert main(["--home", home, "checkpoints", "show", name]) == 0
    assert capsys.readouterr().out == Path(rows[2]["path"]).read_text()
    assert main(["--home", home, "checkpoints", "show", name[:-len("compact.md")] + "comp"]) == 0
    assert "> Trigger: compact" in capsys.readouterr().out
    assert main(["--home", home, "checkpoints", "show", name[:4]]) == 1
    assert "matches 3 checkpoints" in capsys.readouterr().err
    assert main(["--home", home, "checkpoints", "show", "nope"]) == 1


def test_savings_command_splits_measured_and_estimated(paths: StatePaths,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    tel = Telemetry(paths)
    tel.log_savings_event("redundant_read", 1200, "s1", "read #2 blocked: a.py", basis="measured")
    tel.log_savings_event("fresh_session_nudge", 50_000, "s1", "x", basis="estimated")
    tel.log_savings_event("hint_followed", 5000, "s2", "hint->read: b.py")  # reference row
    with open(paths.savings_log, "a") as fh:
        fh.write(json.dumps({"timestamp": "2020-01-01T00:00:00.000Z", "event_type": "checkpoint_restore",
                             "tokens_saved": 9, "session_id": "old", "detail": None}) + "\n")
    home = str(paths.root)
    assert main(["--home", home, "savings", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert (rep["measuredTokens"], rep["estimatedTokens"], rep["events"]) == (1200, 55_000, 3)
    by = {s["sessionId"]: s for s in rep["sessions"]}
    assert set(by) == {"s1", "s2"}      # the 2020 row is outside the window
    assert (by["s1"]["measuredTokens"], by["s1"]["estimatedTokens"]) == (1200, 50_000)
    assert by["s2"]["byType"] == {"hint_followed": {"count": 1, "basis": "estimated", "tokens": 5000}}
    assert main(["--home", home, "savings", "--days", "4000"]) == 2
    assert main(["--home", home, "savings", "--days", "0"]) == 2
    capsys.readouterr()
    assert main(["--home", home, "savings", "--days", "3650"]) == 0
    text = capsys.readouterr().out
    assert "old" in text and "measured" in text and "estimated" in text and "1.2K" in text


# ---------------------------------------------------------------- the chat report


def test_report_answers_from_persisted_state_after_a_restart(paths: StatePaths) -> None:
    first = TokenOptimizer(paths.root, settings=PolicySettings.from_env(NO_COOLDOWN), cwd=str(paths.root))
    _session(first, "s1", 90_000)
    first.close()
    # a new process: nothing in memory; the chat's key is all the host knows
    again = TokenOptimizer(paths.root, settings=PolicySettings.from_env(NO_COOLDOWN), cwd=str(paths.root))
    try:
        assert again.ledger.snapshot("s1") is None
        text = render_status(again, "", None, "agent:main:s1")
        assert text.startswith("[Token Optimizer] session s1\n  chat: agent:main:s1\n")
        assert "figures from the state on disk" in text
        assert "context fill: 45.0% (at the checkpoint of " in text
        assert "checkpoints: 1 (progressive-35)" in text
        # no key at all (a CLI): the most recently active session on record
        assert render_status(again, "", None, None).startswith("[Token Optimizer] session s1\n")
        assert render_status(again, "", None, "agent:main:other") == (
            "[Token Optimizer] No session seen yet in this chat.")
    finally:
        again.close()


def test_hermes_resumed_chat_before_its_first_message(paths: StatePaths, tmp_path: Path) -> None:
    import asyncio

    from token_optimizer.hosts.hermes import HermesPlugin
    from token_optimizer.hosts.hermes_support import ContextWindows, StateDb

    first = TokenOptimizer(paths.root, settings=PolicySettings.from_env(NO_COOLDOWN), cwd=str(paths.root))
    _session(first, "s1", 90_000)
    first.close()
    again = TokenOptimizer(paths.root, settings=PolicySettings.from_env(NO_COOLDOWN), cwd=str(paths.root))
    plugin = HermesPlugin(again, windows=ContextWindows(), hermes_config=lambda: {},
                          state_db=StateDb(tmp_path / "no-state.db"), session_key=lambda: "agent:main:s1")
    try:
        out = asyncio.run(plugin.command(""))
        assert "No session seen yet" not in out
        assert out.startswith("[Token Optimizer] session s1\n") and "45.0%" in out
    finally:
        plugin.shutdown()


def test_session_index_readme_names_the_sqlite_transcripts() -> None:
    assert "agents/<agent>/agent/openclaw-agent.sqlite" in README_TEXT
    assert "OpenClaw (2026.9.6) keeps transcripts in SQLite" in README_TEXT


def test_blocked_ranged_redundant_read_is_not_credited_as_the_whole_file(
        paths: StatePaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN_OPTIMIZER_READ_CACHE_MODE", "block")
    f = tmp_path / "big.py"
    f.write_text("def f(x):\n    return x * 2\n" * 400)
    rc = ReadCache(paths, cwd=lambda: str(tmp_path))
    assert rc.before_read(str(f), 10, 5, "main", "s1") is None
    msg = rc.before_read(str(f), 10, 5, "main", "s1")
    assert msg is not None and "already in context" in msg  # still blocked
    assert [r for r in _rows(paths) if r["event_type"] == "redundant_read"] == []
    # the full read of the same file is still credited, measured
    assert rc.before_read(str(f), None, None, "main", "s1") is None
    assert rc.before_read(str(f), None, None, "main", "s1") is not None
    (row,) = _rows(paths)
    assert (row["event_type"], row["basis"]) == ("redundant_read", "measured")
