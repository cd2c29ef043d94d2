"""Each waste detector on a generated host store where it must fire and one where it must not.

Stores are built with the hosts' own DDL (``audit_stores``), scanned with the
real readers, then audited; nothing here builds a ``SessionRow`` by hand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from audit_stores import (
    HermesStore,
    OpenClawStore,
    assistant_event,
    open_writer,
    tool_result_event,
    user_event,
)

from token_optimizer.audit.detectors import (
    COLD_CACHE_RATIO,
    AuditResult,
    Finding,
    dedup_total,
    load_openclaw_config,
    outcome,
    run_detectors,
)
from token_optimizer.audit.model import SessionRow
from token_optimizer.audit.openclaw import read_cron_commands
from token_optimizer.audit.scan import Roots, scan
from token_optimizer.cli import main

T0 = 1_780_000_000_000
MIN = 60_000


@pytest.fixture
def oc(tmp_path: Path) -> Iterator[OpenClawStore]:
    store = OpenClawStore(tmp_path / "openclaw")
    yield store
    store.close()


def rows_of(tmp_path: Path, oc: OpenClawStore | None = None,
            hermes: Path | None = None) -> list[SessionRow]:
    if oc is not None:
        oc.close()
    return scan(Roots(oc.root if oc else None, hermes), tmp_path / "state",
                use_cache=False).rows


def audit(tmp_path: Path, oc: OpenClawStore | None = None,
          hermes: Path | None = None) -> AuditResult:
    return run_detectors(rows_of(tmp_path, oc, hermes),
                         config=load_openclaw_config(oc.root if oc else None),
                         cron=read_cron_commands(oc.root if oc else None))


def fired(res: AuditResult) -> dict[str, Finding]:
    return {f.waste_type: f for f in res.findings}


def session(oc: OpenClawStore, sid: str, turns: int, *, ts: int = T0, agent: str = "main",
            cron: bool = False, extra: list[dict[str, Any]] | None = None,
            status: str | None = "done", **asst: Any) -> None:
    """A session of ``turns`` user+assistant pairs (``asst`` goes to every assistant event)."""
    oc.add_session(sid, agent=agent, created_via="cron" if cron else "operator",
                   key=f"agent:{agent}:cron:job1:run:{sid}" if cron else None, created_ms=ts,
                   status=status)
    evs: list[dict[str, Any]] = []
    for i in range(turns):
        evs.append(user_event(f"task number {i} for the agent", ts + i * 1000))
        evs.append(assistant_event(ts + i * 1000 + 500, **asst))
    oc.add_events(sid, evs + (extra or []), agent=agent)


Build = Callable[[OpenClawStore], None]


def _check(tmp_path: Path, oc: OpenClawStore, build: Build, wtype: str, fires: bool) -> Finding | None:
    build(oc)
    f = fired(audit(tmp_path, oc)).get(wtype)
    assert (f is not None) is fires, (wtype, [x.waste_type for x in audit(tmp_path, oc).findings])
    return f


# ---------------------------------------------------------------- heartbeat detectors


def test_heartbeat_model_waste_fires_on_cron_runs_of_an_expensive_model(
        tmp_path: Path, oc: OpenClawStore) -> None:
    for i in range(2):
        session(oc, f"c{i}", 1, ts=T0 + i * 3_600_000, cron=True, inp=2000, out=200, cost=1.0)
    f = _check(tmp_path, oc, lambda _o: None, "heartbeat_model_waste", True)
    assert f is not None
    assert f.evidence["expensiveCount"] == 2 and f.evidence["modelsUsed"] == ["sonnet"]
    assert f.basis == "estimated" and f.group == "fix" and f.severity == "high"
    assert '"model": "haiku"' in f.fix_snippet


def test_heartbeat_model_waste_silent_on_haiku_cron_and_on_manual_sonnet(
        tmp_path: Path, oc: OpenClawStore) -> None:
    for i in range(2):
        session(oc, f"c{i}", 1, cron=True, model="claude-haiku-4-5", cost=1.0)
        session(oc, f"m{i}", 1, cost=1.0)
    _check(tmp_path, oc, lambda _o: None, "heartbeat_model_waste", False)


def test_heartbeat_over_frequency_fires_per_agent(tmp_path: Path, oc: OpenClawStore) -> None:
    for i in range(5):
        session(oc, f"c{i}", 1, ts=T0 + i * MIN, cron=True, model="claude-haiku-4-5", cost=0.01)
    f = _check(tmp_path, oc, lambda _o: None, "heartbeat_over_frequency", True)
    assert f is not None
    assert f.evidence["avgIntervalSeconds"] == 60 and f.evidence["shortCount"] == 4
    # 60 runs/h − 12 allowed, × 16 h × 30 d × $0.01 a run
    assert f.monthly_waste_usd == pytest.approx(48 * 16 * 30 * 0.01)


def test_heartbeat_over_frequency_silent_for_two_agents_interleaved(
        tmp_path: Path, oc: OpenClawStore) -> None:
    # each agent beats every 400 s; pooled (as the reference does) the gaps would be 200 s
    for i in range(5):
        for j, agent in enumerate(("a", "b")):
            session(oc, f"{agent}{i}", 1, agent=agent, ts=T0 + i * 400_000 + j * 200_000,
                    cron=True, cost=0.01)
    _check(tmp_path, oc, lambda _o: None, "heartbeat_over_frequency", False)


def test_heartbeat_signal_from_heartbeat_outcomes_and_hermes_cron(tmp_path: Path,
                                                                  oc: OpenClawStore) -> None:
    oc.add_session("h1", key="agent:main:hb1")
    oc.add_events("h1", [user_event("beat", T0), assistant_event(T0 + 1, cost=1.0)])
    oc.add_heartbeat("agent:main:main", "agent:main:hb1")
    home = tmp_path / "hermes"
    h = HermesStore(home)
    h.add_session("cron_job_20260601_120000", source="cron", inp=5000, out=100, actual=1.0)
    h.close()
    f = fired(audit(tmp_path, oc, home))["heartbeat_model_waste"]
    assert f.evidence["expensiveCount"] == 2 and f.system == "all"


# ---------------------------------------------------------------- stale_cron


def test_stale_cron_fires_on_missing_hook_path(tmp_path: Path, oc: OpenClawStore) -> None:
    oc.root.mkdir(parents=True, exist_ok=True)
    (oc.root / "config.json").write_bytes(orjson.dumps(
        {"hooks": {"postRun": [{"command": "/nowhere/notify.sh --quiet"}]}}))
    session(oc, "s", 1)
    f = _check(tmp_path, oc, lambda _o: None, "stale_cron", True)
    assert f is not None and f.evidence == {"hook": "postRun",
                                             "command": "/nowhere/notify.sh --quiet",
                                             "missingPath": "/nowhere/notify.sh"}


def test_stale_cron_silent_when_paths_exist(tmp_path: Path, oc: OpenClawStore) -> None:
    script = tmp_path / "notify.sh"
    script.write_text("#!/bin/sh\n")
    oc.root.mkdir(parents=True, exist_ok=True)
    (oc.root / "config.json").write_bytes(orjson.dumps(
        {"hooks": {"postRun": [{"command": f"{script} x"}, {"command": "/usr/bin/true"}]}}))
    session(oc, "s", 1)
    _check(tmp_path, oc, lambda _o: None, "stale_cron", False)


def stale(res: AuditResult) -> list[Finding]:
    return [f for f in res.findings if f.waste_type == "stale_cron"]


def write_openclaw_json(oc: OpenClawStore, text: str) -> None:
    oc.root.mkdir(parents=True, exist_ok=True)
    (oc.root / "openclaw.json").write_text(text)


def test_stale_cron_reads_hooks_from_openclaw_json(tmp_path: Path, oc: OpenClawStore) -> None:
    write_openclaw_json(oc, """{
      // JSON with comments, as OpenClaw writes it
      "hooks": {"postRun": [{"command": "/nowhere/notify.sh --quiet"}],},
    }""")
    session(oc, "s", 1)
    [f] = stale(audit(tmp_path, oc))
    assert f.evidence == {"hook": "postRun", "command": "/nowhere/notify.sh --quiet",
                          "missingPath": "/nowhere/notify.sh"}


def test_stale_cron_same_hook_in_openclaw_json_and_config_json_is_one_finding(
        tmp_path: Path, oc: OpenClawStore) -> None:
    hooks = {"postRun": [{"command": "/nowhere/a.sh /nowhere/a.sh"}]}
    write_openclaw_json(oc, orjson.dumps({"hooks": hooks}).decode())
    (oc.root / "config.json").write_bytes(orjson.dumps(
        {"hooks": {**hooks, "preRun": [{"command": "/nowhere/b.sh"}]}}))
    session(oc, "s", 1)
    found = sorted((f.evidence["hook"], f.evidence["missingPath"]) for f in stale(audit(tmp_path, oc)))
    assert found == [("postRun", "/nowhere/a.sh"), ("preRun", "/nowhere/b.sh")]


def test_stale_cron_silent_on_the_real_hosts_webhook_hooks(tmp_path: Path,
                                                           oc: OpenClawStore) -> None:
    # OpenClaw 2026.9.6's `hooks` is the webhook ingress: URL paths and transform modules
    write_openclaw_json(oc, orjson.dumps({"hooks": {
        "enabled": True, "path": "/hooks", "presets": ["gmail"],
        "mappings": [{"match": {"path": "/github"}, "action": "agent",
                      "transform": {"module": "github.mjs"}}],
        "internal": {"entries": {"session-memory": {"enabled": True}}},
    }}).decode())
    session(oc, "s", 1)
    assert stale(audit(tmp_path, oc)) == []


def test_stale_cron_fires_on_enabled_cron_jobs_with_missing_paths(tmp_path: Path,
                                                                  oc: OpenClawStore) -> None:
    oc.add_cron_job("j1", "nightly backup", "ops", job={
        "schedule": {"kind": "cron", "expr": "0 3 * * *"},
        "payload": {"kind": "command", "argv": ["sh", "-lc", "/nowhere/backup.sh --full"]}})
    oc.add_cron_job("j2", "tail build log", job={
        "schedule": {"kind": "stream", "command": ["/nowhere/tail-log", "-f"],
                     "cwd": "/nowhere/build"},
        "payload": {"kind": "agentTurn", "message": "summarise the new lines"}})
    oc.add_cron_job("j3", "after deploy", job={
        "schedule": {"kind": "on-exit", "command": "cd /tmp &&\n/nowhere/deploy.sh"},
        "payload": {"kind": "systemEvent", "text": "deploy finished"}})
    session(oc, "s", 1)
    found = {(f.evidence["jobId"], f.evidence["field"], f.evidence["missingPath"]): f
             for f in stale(audit(tmp_path, oc))}
    assert set(found) == {("j1", "payload.argv", "/nowhere/backup.sh"),
                          ("j2", "schedule.command", "/nowhere/tail-log"),
                          ("j2", "schedule.cwd", "/nowhere/build"),
                          ("j3", "schedule.command", "/nowhere/deploy.sh")}
    f = found[("j1", "payload.argv", "/nowhere/backup.sh")]
    assert f.evidence == {"hook": "cron:nightly backup", "command": "sh -lc /nowhere/backup.sh --full",
                          "missingPath": "/nowhere/backup.sh", "job": "nightly backup",
                          "jobId": "j1", "field": "payload.argv"}
    assert f.agent_name == "ops" and f.severity == "low" and f.monthly_waste_usd == 0
    assert f.fix_snippet == ("# cron:nightly backup: sh -lc /nowhere/backup.sh --full\n"
                             "openclaw cron disable j1")
    assert found[("j3", "schedule.command", "/nowhere/deploy.sh")].fix_snippet.splitlines() == [
        "# cron:after deploy: cd /tmp && /nowhere/deploy.sh", "openclaw cron disable j3"]


def test_stale_cron_silent_for_cron_jobs_that_are_fine_or_off(tmp_path: Path,
                                                              oc: OpenClawStore) -> None:
    script = tmp_path / "my tools" / "run.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    oc.add_cron_job("ok", "existing script", job={
        "payload": {"kind": "command", "argv": [str(script), "--flag"], "cwd": str(tmp_path)}})
    oc.add_cron_job("usr", "system tools", job={
        "payload": {"kind": "command", "argv": ["/usr/local/bin/nope", "/bin/nope"]}})
    oc.add_cron_job("off", "disabled job", enabled=False, job={
        "payload": {"kind": "command", "argv": ["/nowhere/backup.sh"]}})
    # prompts and inline script source may mention paths; they are not run as commands
    oc.add_cron_job("agent", "agent turn", job={
        "payload": {"kind": "agentTurn", "message": "read /nowhere/notes.md"}})
    oc.add_cron_job("script", "inline script", job={
        "payload": {"kind": "script", "script": "await read('/nowhere/x')"},
        "trigger": {"script": "return exists('/nowhere/y')"}})
    oc.add_cron_job("bare", "no definition")
    session(oc, "s", 1)
    assert stale(audit(tmp_path, oc)) == []


def test_stale_cron_without_config_or_with_bad_stores_finds_nothing(
        tmp_path: Path, oc: OpenClawStore) -> None:
    session(oc, "s", 1)
    assert stale(audit(tmp_path, oc)) == []
    write_openclaw_json(oc, "{ not json at all")
    (oc.root / "config.json").write_text("[1, 2")
    oc.add_cron_job("j", "garbled", job={"payload": {"kind": "command", "argv": "not a list"}})
    c = open_writer(oc.root / "state" / "openclaw.sqlite", "openclaw_state.sql")
    c.execute("UPDATE cron_jobs SET job_json = '{oops' WHERE job_id = 'j'")
    c.execute("INSERT INTO cron_jobs (store_key, job_id, name, enabled, payload_kind, job_json,"
              " updated_at) VALUES ('default', 'k', 'odd', 1, 'command', '[]', 0)")
    c.close()
    assert stale(audit(tmp_path, oc)) == []
    assert load_openclaw_config(oc.root) == {}
    assert read_cron_commands(tmp_path / "no-such-root") == []


def test_audit_command_reports_stale_cron_jobs(tmp_path: Path, oc: OpenClawStore,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    oc.add_cron_job("j1", "nightly backup", job={
        "payload": {"kind": "command", "argv": ["/nowhere/backup.sh"]}})
    session(oc, "s", 1, ts=int(time.time() * 1000) - 3_600_000)
    oc.close()
    assert main(["audit", "--json", "--openclaw-root", str(oc.root),
                 "--hermes-home", str(tmp_path / "none")]) == 0
    rep = orjson.loads(capsys.readouterr().out)
    [f] = [f for f in rep["findings"] if f["wasteType"] == "stale_cron"]
    assert f["evidence"]["hook"] == "cron:nightly backup"


# ---------------------------------------------------------------- tier-2 reference detectors


CASES: list[tuple[str, Build, Build]] = [
    ("empty_runs",
     lambda o: [session(o, f"e{i}", 1, inp=60_000, out=10, cost=0.2) for i in range(2)],
     lambda o: [session(o, f"e{i}", 1, inp=60_000, out=500, cost=0.2) for i in range(2)]),
    ("session_history_bloat",
     lambda o: session(o, "b", 16, inp=40_000, out=500),
     lambda o: session(o, "b", 5, inp=120_000, out=500)),
    ("loop_detection",
     lambda o: [session(o, f"l{i}", 11, inp=4000, cache_read=6000, out=3, cost=0.1)
                for i in range(2)],
     lambda o: [session(o, f"l{i}", 11, inp=4000, cache_read=6000, out=10, cost=0.1)
                for i in range(2)]),
    ("abandoned_sessions",
     lambda o: [session(o, f"a{i}", 1, inp=20_000, out=50, cost=0.05) for i in range(3)],
     lambda o: [session(o, f"a{i}", 1, inp=20_000, out=50, cost=0.05) for i in range(2)]),
    ("ghost_token_qjl",
     lambda o: [session(o, f"g{i}", 2, inp=3000, out=20, cost=0.05) for i in range(3)],
     lambda o: [session(o, f"g{i}", 2, model=m, inp=3000, out=20, cost=0.05)
                for i, m in enumerate(("claude-sonnet-4-6", "claude-haiku-4-5", "gpt-5.2"))]),
    ("tool_loading_overhead",
     lambda o: [session(o, f"t{i}", 1, inp=210_000, out=3000,
                        tools=tuple(f"tool{k}" for k in range(16))) for i in range(3)],
     lambda o: [session(o, f"t{i}", 1, inp=210_000, out=3000,
                        tools=tuple(f"tool{k}" for k in range(15))) for i in range(3)]),
    ("overpowered_model",
     lambda o: [session(o, f"o{i}", 2, inp=1000, out=300, cost=0.5) for i in range(3)],
     lambda o: [session(o, f"o{i}", 2, model="claude-haiku-4-5", inp=1000, out=300, cost=0.5)
                for i in range(3)]),
    ("weak_model",
     lambda o: [session(o, f"w{i}", 1, model="claude-haiku-4-5", inp=100_000, out=3000,
                        tools=tuple(f"t{k}" for k in range(10))) for i in range(2)],
     lambda o: [session(o, f"w{i}", 1, model="claude-haiku-4-5", inp=100_000, out=3000,
                        tools=tuple(f"t{k}" for k in range(9))) for i in range(2)]),
    ("bad_decomposition",
     lambda o: [session(o, f"d{i}", 15, inp=15_000, out=10, cost=0.05) for i in range(2)],
     lambda o: [session(o, f"d{i}", 15, inp=15_000, out=400, cost=0.05) for i in range(2)]),
    ("output_waste",
     lambda o: [session(o, f"x{i}", 3, inp=5000, out=15_000, cost=0.5) for i in range(2)],
     lambda o: [session(o, f"x{i}", 3, inp=15_000, out=5000, cost=0.5) for i in range(2)]),
]


@pytest.mark.parametrize(("wtype", "fire", "quiet"), CASES, ids=[c[0] for c in CASES])
def test_reference_detector_fires(wtype: str, fire: Build, quiet: Build, tmp_path: Path,
                                  oc: OpenClawStore) -> None:
    f = _check(tmp_path, oc, fire, wtype, True)
    assert f is not None and f.tier in (2, 3)
    assert f.basis in ("measured", "estimated") and f.group in ("fix", "nudge", "keep")
    assert f.fix_snippet and f.evidence


@pytest.mark.parametrize(("wtype", "fire", "quiet"), CASES, ids=[c[0] for c in CASES])
def test_reference_detector_silent(wtype: str, fire: Build, quiet: Build, tmp_path: Path,
                                   oc: OpenClawStore) -> None:
    _check(tmp_path, oc, quiet, wtype, False)


def test_evidence_keys_are_the_references(tmp_path: Path, oc: OpenClawStore) -> None:
    for _w, fire, _q in CASES:
        fire(oc)
    got = {f.waste_type: set(f.evidence) for f in audit(tmp_path, oc).findings}
    want = {
        "empty_runs": {"emptyCount", "avgInput", "avgOutput"},
        "session_history_bloat": {"longSessionCount", "totalInputTokens"},
        "loop_detection": {"suspectCount", "avgMessages", "avgOutput"},
        "abandoned_sessions": {"abandonedCount", "avgInputTokens"},
        "ghost_token_qjl": {"strategy", "ghostRunCount", "totalInputTokensWasted",
                            "avgInputPerGhost"},
        "tool_loading_overhead": {"heavySessionCount", "avgToolsPerSession",
                                  "estimatedOverheadPerSession"},
        "overpowered_model": {"simpleCount", "modelsUsed"},
        "weak_model": {"complexCount"},
        "bad_decomposition": {"monolithicCount"},
        "output_waste": {"suspectCount", "avgOutputRatio"},
    }
    for k, keys in want.items():
        assert keys <= got[k], k


# ---------------------------------------------------------------- failure signals


def _error_turn_session(o: OpenClawStore, sid: str, *, error: bool) -> None:
    last = assistant_event(T0 + 99_000, inp=10_000, cost=0.1,
                           stop="error" if error else "stop", error="upstream 529" if error else None)
    session(o, sid, 5, inp=10_000, out=300, cost=0.1, extra=[user_event("again", T0 + 98_000), last])


def test_retry_churn_fires_on_recorded_model_errors(tmp_path: Path, oc: OpenClawStore) -> None:
    f = _check(tmp_path, oc, lambda o: [_error_turn_session(o, f"r{i}", error=True)
                                        for i in range(2)], "retry_churn", True)
    assert f is not None and f.evidence == {"churningCount": 2, "errorTurns": 2}


def test_retry_churn_silent_without_errors(tmp_path: Path, oc: OpenClawStore) -> None:
    _check(tmp_path, oc, lambda o: [_error_turn_session(o, f"r{i}", error=False)
                                    for i in range(2)], "retry_churn", False)


def _tool_error_session(o: OpenClawStore, sid: str, errors: int) -> None:
    res = [tool_result_event(T0 + 50_000 + k, f"tool{k}", is_error=k < errors) for k in range(4)]
    session(o, sid, 2, inp=60_000, out=500, cost=0.5,
            tools=tuple(f"tool{k}" for k in range(6)), extra=res)


def test_tool_cascade_fires_on_is_error_tool_results(tmp_path: Path, oc: OpenClawStore) -> None:
    f = _check(tmp_path, oc, lambda o: [_tool_error_session(o, f"t{i}", 3) for i in range(2)],
               "tool_cascade", True)
    assert f is not None and f.evidence == {"errorSessionCount": 2, "toolErrors": 6}


def test_tool_cascade_silent_below_three_tool_errors(tmp_path: Path, oc: OpenClawStore) -> None:
    _check(tmp_path, oc, lambda o: [_tool_error_session(o, f"t{i}", 2) for i in range(2)],
           "tool_cascade", False)


def test_failure_outcome_from_every_host_signal(tmp_path: Path, oc: OpenClawStore) -> None:
    session(oc, "status", 3, status="failed", out=300)
    session(oc, "killed", 3, status="killed", out=300)
    session(oc, "ok", 3, out=300)
    home = tmp_path / "hermes"
    h = HermesStore(home)
    h.add_session("hfin", inp=100, out=300)
    h.add_message("hfin", "user", "go")
    h.add_message("hfin", "assistant", "x", finish_reason="error")
    h.add_session("htools", inp=100, out=300)
    for _ in range(3):
        h.add_message("htools", "tool", '{"error": "no such file"}', tool_name="read_file")
    h.close()
    rows = {r.session_id: r for r in rows_of(tmp_path, oc, home)}
    assert outcome(rows["status"]) == "failure"
    assert outcome(rows["hfin"]) == "failure"
    assert outcome(rows["htools"]) == "failure"
    assert outcome(rows["ok"]) == "success"
    assert outcome(rows["killed"]) == "success"  # stopped by the operator, not a failure


# ---------------------------------------------------------------- host-aware detectors


def _compactions(n: int) -> list[dict[str, Any]]:
    return [{"type": "compaction", "id": f"k{i}", "parentId": None, "summary": "s",
             "firstKeptEntryId": "x", "tokensBefore": 90_000} for i in range(n)]


def test_compaction_churn_fires_on_openclaw_compactions(tmp_path: Path, oc: OpenClawStore) -> None:
    f = _check(tmp_path, oc, lambda o: session(o, "k", 3, cost=1.0, extra=_compactions(3)),
               "compaction_churn", True)
    assert f is not None and f.evidence["maxCompactions"] == 3
    # 3 compactions = 1 step past the allowed 2: 10% of the session's $3, × 30 / 1-day span
    assert f.monthly_waste_usd == pytest.approx(3.0 * 0.1 * 30)


def test_compaction_churn_silent_on_two_compactions(tmp_path: Path, oc: OpenClawStore) -> None:
    _check(tmp_path, oc, lambda o: session(o, "k", 3, cost=1.0, extra=_compactions(2)),
           "compaction_churn", False)


@pytest.mark.parametrize(("streak", "fires"), [(2, True), (1, False)])
def test_compaction_churn_on_hermes_fallback_streak(streak: int, fires: bool,
                                                    tmp_path: Path) -> None:
    home = tmp_path / "hermes"
    h = HermesStore(home)
    h.add_session("s", inp=50_000, out=1000, actual=2.0, streak=streak)
    h.close()
    assert ("compaction_churn" in fired(audit(tmp_path, hermes=home))) is fires


@pytest.mark.parametrize(("cache_read", "fires"), [(1000, True), (45_000, False)])
def test_cold_cache(cache_read: int, fires: bool, tmp_path: Path, oc: OpenClawStore) -> None:
    for i in range(2):
        session(oc, f"c{i}", 4, inp=15_000, cache_read=cache_read, out=500)
    res = fired(audit(tmp_path, oc))
    assert ("cold_cache" in res) is fires
    if fires:
        f = res["cold_cache"]
        assert f.evidence["threshold"] == COLD_CACHE_RATIO and f.basis == "estimated"
        assert f.evidence["avgCacheReadRatio"] < COLD_CACHE_RATIO


def test_rewind_churn_fires_on_openclaw_windows_and_hermes_count(tmp_path: Path,
                                                                  oc: OpenClawStore) -> None:
    session(oc, "a", 2, cost=1.0)
    for k in range(2):
        oc.add_session(f"a-r{k}", key="agent:main:a", reason="rewind", previous="a")
    home = tmp_path / "hermes"
    h = HermesStore(home)
    h.add_session("hr", inp=1000, out=100, actual=1.0, rewinds=3)
    h.add_session("hq", inp=1000, out=100, actual=1.0, rewinds=1)
    h.close()
    f = fired(audit(tmp_path, oc, home))["rewind_churn"]
    assert set(f.claims) == {"openclaw:a", "hermes:hr"}
    assert f.evidence["rewinds"] == 5


def test_rewind_churn_silent_on_single_rewinds(tmp_path: Path, oc: OpenClawStore) -> None:
    session(oc, "a", 2, cost=1.0)
    oc.add_session("a-r", key="agent:main:a", reason="rewind", previous="a")
    assert "rewind_churn" not in fired(audit(tmp_path, oc))


# ---------------------------------------------------------------- money rules


def test_monthly_dollars_scale_by_the_audited_window_not_the_flagged_runs(
        tmp_path: Path, oc: OpenClawStore) -> None:
    # two empty runs on one afternoon, other sessions spread over 30 days
    for i in range(2):
        session(oc, f"e{i}", 1, ts=T0 + i * MIN, inp=60_000, out=10, cost=1.0)
    for d in range(1, 31, 5):
        session(oc, f"n{d}", 2, ts=T0 + d * 86_400_000, out=3000)
    res = audit(tmp_path, oc)
    f = fired(res)["empty_runs"]
    assert res.span_days == pytest.approx(26.0)  # first start to last start
    assert f.monthly_waste_usd == pytest.approx(2.0 * 30 / 26)  # the reference: 2.0 × 30
    assert isinstance(f.monthly_waste_tokens, int)


def test_a_session_counted_by_two_detectors_is_counted_once(tmp_path: Path,
                                                            oc: OpenClawStore) -> None:
    # three short cron runs on Sonnet: heartbeat_model_waste and overpowered_model both claim them
    for i in range(3):
        session(oc, f"c{i}", 1, ts=T0 + i * 3_600_000, cron=True, inp=1000, out=100, cost=1.0)
    # an empty run only empty_runs can claim... and a second one, to reach the threshold
    for i in range(2):
        session(oc, f"e{i}", 1, ts=T0 + i * 1000, inp=60_000, out=10, cost=0.4,
                model="claude-haiku-4-5")
    res = audit(tmp_path, oc)
    by = fired(res)
    hb, op, em = by["heartbeat_model_waste"], by["overpowered_model"], by["empty_runs"]
    assert set(hb.claims) == set(op.claims) == {"openclaw:c0", "openclaw:c1", "openclaw:c2"}
    assert hb.monthly_waste_usd == pytest.approx(op.monthly_waste_usd)
    assert res.gross_monthly_usd == pytest.approx(sum(f.monthly_waste_usd for f in res.findings))
    # each unit once, at its largest claim
    units: dict[str, float] = {}
    for f in res.findings:
        for u, usd in f.claims.items():
            units[u] = max(units.get(u, 0.0), usd)
    assert res.monthly_savings_usd == pytest.approx(sum(units.values()))
    assert res.monthly_savings_usd == pytest.approx(hb.monthly_waste_usd + em.monthly_waste_usd
                                                    + _only(res, "ghost_token_qjl"))
    assert res.monthly_savings_usd < res.gross_monthly_usd
    # the earlier (registry order breaks the tie) keeps the units, the later one counts 0
    assert hb.counted_usd == pytest.approx(hb.monthly_waste_usd) and op.counted_usd == 0
    assert sum(f.counted_usd for f in res.findings) == pytest.approx(res.monthly_savings_usd)


def _only(res: AuditResult, wtype: str) -> float:
    """The part of ``wtype``'s claims on units no other finding claims."""
    f = fired(res).get(wtype)
    if f is None:
        return 0.0
    others = {u for g in res.findings if g is not f for u in g.claims}
    return sum(v for u, v in f.claims.items() if u not in others)


def test_dedup_takes_the_largest_claim_per_unit() -> None:
    def mk(name: str, claims: dict[str, float]) -> Finding:
        return Finding(name, 2, "low", 0.5, "", sum(claims.values()), 0, "", "", {},
                       "measured", "fix", claims=claims)

    a = mk("a", {"s1": 1.0, "s2": 5.0})
    b = mk("b", {"s2": 2.0, "s3": 3.0})
    assert dedup_total([a, b]) == pytest.approx(1.0 + 5.0 + 3.0)
    assert a.counted_usd == pytest.approx(6.0) and b.counted_usd == pytest.approx(3.0)


def test_a_failing_detector_is_reported_and_skipped(tmp_path: Path, oc: OpenClawStore,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    session(oc, "s", 1)

    def boom(_ctx: object) -> list[Finding]:
        raise RuntimeError("kaput")

    with caplog.at_level(logging.WARNING, logger="token_optimizer"):
        res = run_detectors(rows_of(tmp_path, oc), registry=[("boom", boom)])
    assert res.findings == []
    assert [r.getMessage() for r in caplog.records] == ["[token-optimizer] detector boom failed: kaput"]
