"""The runtime core, driven with the reference's and the real host's payloads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from token_optimizer import bounded
from token_optimizer.events import (
    CompactionAfter,
    Identity,
    SessionEnd,
    ToolAfter,
    TurnPrepare,
    Usage,
)
from token_optimizer.fsutil import StatePaths
from token_optimizer.hosts.openclaw_events import handle
from token_optimizer.policy import PolicySettings
from token_optimizer.runtime import TokenOptimizer

NO_COOLDOWN = {
    "TOKEN_OPTIMIZER_CHECKPOINT_COOLDOWN_MS": "0",
    "TOKEN_OPTIMIZER_RUNTIME_EVALUATION_COOLDOWN_MS": "0",
}


@pytest.fixture
def rt(paths: StatePaths, tmp_path: Path) -> TokenOptimizer:
    ws = tmp_path / "ws"
    ws.mkdir()
    return TokenOptimizer(paths.root, settings=PolicySettings.from_env(NO_COOLDOWN), cwd=str(ws))


def ctx(sid: str = "s1", key: str | None = "agent:main:s1", **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"sessionId": sid, "agentId": "main", "trigger": "user"}
    if key is not None:
        c["sessionKey"] = key
    c.update(extra)
    return c


def usage_event(prompt_tokens: int, *, fresh: int | None = None, output: int = 500,
                budget: int | None = 200_000, model: str = "gpt-4o") -> dict[str, Any]:
    fresh_in = prompt_tokens if fresh is None else fresh
    u = {"input": fresh_in, "output": output, "cacheRead": prompt_tokens - fresh_in, "cacheWrite": 0}
    ev: dict[str, Any] = {"model": model, "usage": {**u, "total": sum(u.values())}}
    if budget is not None:
        ev["contextTokenBudget"] = budget
    return ev


def manifest_triggers(paths: StatePaths, sid: str) -> list[str]:
    m = paths.checkpoints / sid / "manifest.jsonl"
    if not m.exists():
        return []
    return [json.loads(line)["trigger"] for line in m.read_text().splitlines() if line.strip()]


def turn(rt: TokenOptimizer, prompt: str, c: dict[str, Any], **event: Any) -> dict[str, Any] | None:
    return handle(rt, "agent_turn_prepare", {"prompt": prompt, **event}, c).result


# ------------------------------------------------------------------ hooks


def test_turn_prepare_returns_none_without_identity_or_prompt(rt: TokenOptimizer) -> None:
    out = handle(rt, "agent_turn_prepare", {"prompt": "hello"}, {"trigger": "user"})
    assert out.result is None
    assert any("sessionId" in a.message for a in out.actions)
    assert handle(rt, "agent_turn_prepare", {"prompt": "   "}, ctx()).result is None
    # A non-string prompt is ignored, not raised into the host.
    assert handle(rt, "agent_turn_prepare", {"prompt": 42}, ctx()).result is None


def test_non_user_turns_and_cron_jobs_are_skipped(rt: TokenOptimizer, paths: StatePaths) -> None:
    handle(rt, "llm_output", usage_event(120_000), ctx())
    assert turn(rt, "do the thing", ctx(trigger="heartbeat")) is None
    assert turn(rt, "do the thing", ctx(jobId="cron-1")) is None
    assert manifest_triggers(paths, "s1") == []
    assert "s1" not in rt.continuity_injected


def test_fill_bands_fire_from_the_latest_prompt(rt: TokenOptimizer, paths: StatePaths) -> None:
    c = ctx()
    turn(rt, "start", c)
    handle(rt, "llm_output", usage_event(45_000), c)          # 22.5 %
    turn(rt, "next", c)
    assert manifest_triggers(paths, "s1") == ["progressive-20"]
    handle(rt, "llm_output", usage_event(104_000), c)         # 52 %
    turn(rt, "next", c)
    trig = manifest_triggers(paths, "s1")
    bands = [t for t in trig if t.startswith("progressive-")]
    # the highest band crossed comes first; the one skipped over is back-filled once
    assert bands == ["progressive-20", "progressive-50", "progressive-35"]
    state = json.loads((paths.checkpoints / "s1" / "policy-state.json").read_text())
    assert sorted(state["capturedFillBands"]) == [20, 35, 50]


def test_uncached_session_at_40_percent_fires_only_20_and_35(rt: TokenOptimizer, paths: StatePaths) -> None:
    """COMPAT: fill is the latest prompt, not cumulative fresh input over the window.

    30 turns with no prompt caching, each prompt growing to 80k tokens of a 200k
    window (40 %). The reference sums fresh input (≈1.2M) and would fire every
    band (and nudge); we fire only the bands actually crossed.
    """
    c = ctx()
    for i in range(1, 31):
        turn(rt, f"step {i}: keep going with the refactor", c)
        handle(rt, "llm_output", usage_event(int(80_000 * i / 30), fresh=None, output=800), c)
    turn(rt, "final step", c)
    trig = manifest_triggers(paths, "s1")
    bands = [t for t in trig if t.startswith("progressive-")]
    assert sorted(bands) == ["progressive-20", "progressive-35"]
    assert rt.status("s1")["fillPct"] == pytest.approx(40.0, abs=0.01)


def test_context_budget_overrides_model_table(rt: TokenOptimizer) -> None:
    c = ctx()
    turn(rt, "hi", c)
    handle(rt, "llm_output", usage_event(50_000, budget=100_000, model="claude-sonnet-4"), c)
    assert rt.status("s1")["fillPct"] == pytest.approx(50.0)
    assert rt.status("s1")["contextWindow"] == 100_000


def test_before_tool_call_reference_and_real_host_read_ids(rt: TokenOptimizer, tmp_path: Path) -> None:
    f = tmp_path / "ws" / "a.py"
    f.write_text("x = 1\n" * 50)
    for name, key in (("Read", "file_path"), ("read", "path")):
        c = ctx(sid=f"s-{name}", key=f"k-{name}")
        for _ in range(2):
            out = handle(rt, "before_tool_call", {"toolName": name, "params": {key: str(f)}}, c)
            assert out.result is None  # warn mode: never blocks a full re-read
            handle(rt, "after_tool_call", {"toolName": name, "params": {key: str(f)}}, c)
        decisions = rt.paths.decisions / f"s-{name}.jsonl"
        rows = [json.loads(x) for x in decisions.read_text().splitlines()]
        assert [r["decision"] for r in rows][-1] == "warn"


def test_block_mode_returns_block_shape(rt: TokenOptimizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN_OPTIMIZER_READ_CACHE_MODE", "block")
    f = tmp_path / "ws" / "b.py"
    f.write_text("def f():\n    return 1\n" * 20)
    c = ctx()
    first = handle(rt, "before_tool_call", {"toolName": "read", "params": {"path": str(f)}}, c)
    assert first.result is None
    second = handle(rt, "before_tool_call", {"toolName": "read", "params": {"path": str(f)}}, c)
    assert second.result is not None
    assert second.result["block"] is True
    assert isinstance(second.result["blockReason"], str) and second.result["blockReason"]
    assert set(second.result) == {"block", "blockReason"}


@pytest.mark.parametrize("name", ["Agent", "Task", "sessions_spawn"])
def test_pre_fanout_milestone_on_agent_spawn(rt: TokenOptimizer, paths: StatePaths, name: str) -> None:
    c = ctx()
    turn(rt, "plan", c)
    handle(rt, "llm_output", usage_event(10_000), c)
    assert handle(rt, "before_tool_call", {"toolName": name, "params": {}}, c).result is None
    assert manifest_triggers(paths, "s1") == ["milestone-pre-fanout"]
    # Once per session lifetime.
    handle(rt, "before_tool_call", {"toolName": name, "params": {}}, c)
    assert manifest_triggers(paths, "s1") == ["milestone-pre-fanout"]


@pytest.mark.parametrize("names", [["Edit", "Write", "MultiEdit", "Edit"], ["edit", "write", "apply_patch", "edit"]])
def test_edit_batch_milestone(rt: TokenOptimizer, paths: StatePaths, names: list[str]) -> None:
    c = ctx()
    turn(rt, "edit things", c)
    handle(rt, "llm_output", usage_event(10_000), c)
    for i, n in enumerate(names):
        handle(rt, "after_tool_call", {"toolName": n, "params": {"file_path": f"/w/f{i % 2}.py"}}, c)
    assert "milestone-edit-batch" in manifest_triggers(paths, "s1")


def test_before_compaction_without_messages_uses_the_ledger(rt: TokenOptimizer, paths: StatePaths) -> None:
    c = ctx()
    history = [{"role": "user", "content": "Please always use tabs in this repo."},
               {"role": "assistant", "content": "I'll convert the indentation to tabs now."}]
    turn(rt, "go", c, messages=history)
    handle(rt, "before_compaction", {"messageCount": 4, "tokenCount": 26}, c)  # real host manual path
    assert manifest_triggers(paths, "s1") == ["compact"]
    entry = json.loads((paths.checkpoints / "s1" / "manifest.jsonl").read_text().splitlines()[0])
    body = Path(entry["file"]).read_text()
    assert entry["messageCount"] == 2
    assert "always use tabs" in body


def test_before_compaction_reference_payload_with_messages(rt: TokenOptimizer, paths: StatePaths) -> None:
    msgs = [{"role": "user", "content": "You must keep the API stable.", "timestamp": "2025-01-01T00:00:00Z"},
            {"role": "assistant", "content": "Decided: using a facade."}]
    out = handle(rt, "before_compaction", {"messages": msgs}, {"sessionId": "ref-1"})
    assert out.result is None
    body = Path(json.loads((paths.checkpoints / "ref-1" / "manifest.jsonl").read_text())["file"]).read_text()
    assert body.startswith("# Session Checkpoint (v2)\n")
    assert "### User (2025-01-01T00:00:00Z)" in body


def _seed_checkpoint(rt: TokenOptimizer, sid: str) -> None:
    handle(rt, "before_compaction", {"messages": [{"role": "user", "content": f"work for {sid}"}]},
              {"sessionId": sid})


def test_after_compaction_enqueues_with_idempotency_keys(rt: TokenOptimizer) -> None:
    """spec §11: omitted host fields → seq:1, seq:2; messageCount → msg:N, stable on retry."""
    s = "test-compact-1"
    _seed_checkpoint(rt, s)
    c = {"sessionId": s, "sessionKey": s, "trigger": "compaction"}
    keys = []
    for _ in range(2):
        out = handle(rt, "after_compaction", {}, c)
        acts = out.actions_json()
        enq = [a for a in acts if a["type"] == "enqueue_next_turn_injection"]
        assert len(enq) == 1
        assert enq[0]["placement"] == "prepend_context"
        assert enq[0]["sessionKey"] == s
        keys.append(enq[0]["idempotencyKey"])
        rt.enqueue_result(s, enq[0]["idempotencyKey"], True)
    assert keys == [f"checkpoint-restore:{s}:{s}:0:seq:1", f"checkpoint-restore:{s}:{s}:0:seq:2"]

    retry = []
    for _ in range(2):
        out = handle(rt, "after_compaction", {"messageCount": 42}, c)
        enq = [a for a in out.actions_json() if a["type"] == "enqueue_next_turn_injection"]
        retry.extend(a["idempotencyKey"] for a in enq)
        for a in enq:
            rt.enqueue_result(s, a["idempotencyKey"], a["idempotencyKey"] not in retry[:-1])
    assert retry and set(retry) == {f"checkpoint-restore:{s}:{s}:0:msg:42"}


def test_after_compaction_without_checkpoint_is_silent(rt: TokenOptimizer) -> None:
    out = handle(rt, "after_compaction", {}, {"sessionId": "none", "sessionKey": "none"})
    assert out.actions_json() == []
    assert len(rt.compaction_counter) == 0


def test_rejected_enqueue_is_delivered_on_next_user_turn_once(rt: TokenOptimizer, paths: StatePaths) -> None:
    c = ctx()
    turn(rt, "start", c, messages=[{"role": "user", "content": "Never push to main directly."}])
    handle(rt, "before_compaction", {"messageCount": 3}, c)
    out = handle(rt, "after_compaction", {"compactedCount": 3, "messageCount": 3}, c)
    enq = [a for a in out.actions_json() if a["type"] == "enqueue_next_turn_injection"]
    assert enq and enq[0]["idempotencyKey"] == "checkpoint-restore:agent:main:s1:s1:3:msg:3"
    rt.enqueue_result("agent:main:s1", enq[0]["idempotencyKey"], False)   # discovery-mode api
    assert rt.has_pending_restore("agent:main:s1")
    first = turn(rt, "continue please", c)
    assert first is not None and enq[0]["text"] in first["prependContext"]
    assert "Never push to main directly." in first["prependContext"]
    second = turn(rt, "and then?", c)
    assert second is None or enq[0]["text"] not in second.get("prependContext", "")
    savings = [json.loads(x) for x in paths.savings_log.read_text().splitlines()]
    assert [r["event_type"] for r in savings].count("checkpoint_restore") == 1


def test_queued_injection_seen_by_host_is_not_delivered_twice(rt: TokenOptimizer) -> None:
    c = ctx()
    _seed_checkpoint(rt, "s1")
    out = handle(rt, "after_compaction", {"messageCount": 7}, c)
    a = next(x for x in out.actions_json() if x["type"] == "enqueue_next_turn_injection")
    res = turn(rt, "next", c, queuedInjections=[{"text": a["text"], "idempotencyKey": a["idempotencyKey"]}])
    assert res is None or a["text"] not in res.get("prependContext", "")
    assert not rt.has_pending_restore("agent:main:s1")


def test_restore_follows_rotated_session_id(rt: TokenOptimizer) -> None:
    """COMPAT (§13.4 F): a host that rotates the id at compaction still gets a restore."""
    _seed_checkpoint(rt, "old-id")
    out = rt.compaction_after(CompactionAfter(Identity("new-id", "K"), previous_session_id="old-id"))
    enq = [a for a in out.actions_json() if a["type"] == "enqueue_next_turn_injection"]
    assert enq and enq[0]["idempotencyKey"] == "checkpoint-restore:K:old-id:0:seq:1"
    assert "work for old-id" in enq[0]["text"]


def test_session_end_releases_every_collection(rt: TokenOptimizer, tmp_path: Path) -> None:
    c = ctx()
    f = tmp_path / "ws" / "r.py"
    f.write_text("print(1)\n")
    turn(rt, "hello", c, messages=[{"role": "user", "content": "hello"}])
    handle(rt, "llm_output", usage_event(60_000), c)
    turn(rt, "again", c)
    handle(rt, "before_tool_call", {"toolName": "read", "params": {"path": str(f)}}, c)
    handle(rt, "after_tool_call", {"toolName": "edit", "params": {"path": str(f)}}, c)
    _seed_checkpoint(rt, "s1")
    handle(rt, "after_compaction", {}, c)
    assert any(v for v in rt.tracked_counts().values())
    handle(rt, "session_end", {"sessionId": "s1", "sessionKey": "agent:main:s1", "reason": "deleted"}, c)
    for name, coll in rt.collections().items():
        assert "s1" not in coll and "agent:main:s1" not in coll, name
    # Disk state stays.
    assert (rt.paths.checkpoints / "s1" / "policy-state.json").exists()


def test_sessions_that_never_end_stay_bounded(rt: TokenOptimizer) -> None:
    for i in range(3000):
        sid = f"leak-{i}"
        c = ctx(sid=sid, key=f"k-{i}")
        handle(rt, "agent_turn_prepare", {"prompt": "hi", "messages": [{"role": "user", "content": "hi"}]}, c)
        handle(rt, "llm_output", usage_event(1000), c)
        handle(rt, "after_tool_call", {"toolName": "edit", "params": {"path": f"/x/{i}"}}, c)
    counts = rt.tracked_counts()
    assert max(counts.values()) <= bounded.MAX_TRACKED_SESSIONS
    assert counts["continuity_injected"] == 2000
    assert counts["policy_states"] == 2000
    # The newest session is still tracked, the oldest is not.
    assert "leak-2999" in rt.continuity_injected and "leak-0" not in rt.continuity_injected
    assert rt.continuity_injected.evictions == 1000


def test_hooks_never_raise(rt: TokenOptimizer, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(rt.store, "capture", boom)
    monkeypatch.setattr(rt.read_cache, "before_read", boom)
    out = handle(rt, "before_compaction", {"messages": [{"role": "user", "content": "x"}]}, ctx())
    assert out.result is None
    assert any(a.level == "error" and "disk on fire" in a.message for a in out.actions)
    assert handle(rt, "before_tool_call", {"toolName": "read", "params": {"path": "/x"}}, ctx()).result is None
    assert handle(rt, "unknown_hook", {}, {}).result is None
    assert handle(rt, "agent_turn_prepare", None, None).result is None  # type: ignore[arg-type]


def test_typed_api_matches_ts_api(paths: StatePaths) -> None:
    rt = TokenOptimizer(paths.root, settings=PolicySettings.from_env(NO_COOLDOWN))
    ident = Identity("typed-1", "typed-key", "main")
    rt.turn_prepare(TurnPrepare(ident, "first"))
    rt.usage(Usage(ident, model="gpt-4o", input_tokens=1000, cache_read_tokens=69_000,
                   context_budget=100_000))
    rt.turn_prepare(TurnPrepare(ident, "second"))
    assert rt.status("typed-1")["fillPct"] == pytest.approx(70.0)
    trig = manifest_triggers(paths, "typed-1")
    assert trig == ["progressive-65"]
    rt.tool_after(ToolAfter(ident, "write_file", {"path": "/p/a"}))
    rt.session_end(SessionEnd(ident))
    assert not rt.ledger.has("typed-1")


def test_restore_credit_counts_reads_cleared_by_compaction(rt: TokenOptimizer, paths: StatePaths,
                                                           tmp_path: Path) -> None:
    """COMPAT (§13.4 C): the active-read credit is taken before compaction clears the cache.

    Issue 13: the credit is an estimate (the re-reads a checkpoint may spare), logged as
    such, and no longer floored at the restore's own size."""
    big = tmp_path / "ws" / "big.py"
    big.write_text("def f(x):\n    return x * 2\n" * 4000)   # ~110 KB, re-read twice
    c = ctx()
    for _ in range(2):
        handle(rt, "before_tool_call", {"toolName": "read", "params": {"path": str(big)}}, c)
        handle(rt, "after_tool_call", {"toolName": "read", "params": {"path": str(big)}}, c)
    active = rt.read_cache.active_read_tokens("main", "s1")
    assert active > 10_000
    turn(rt, "go", c, messages=[{"role": "user", "content": "short"}])
    handle(rt, "before_compaction", {}, c)
    assert rt.read_cache.active_read_tokens("main", "s1") == 0   # cache cleared
    out = handle(rt, "after_compaction", {"messageCount": 1}, c)
    enq = next(a for a in out.actions_json() if a["type"] == "enqueue_next_turn_injection")
    rt.enqueue_result("agent:main:s1", enq["idempotencyKey"], True)
    rows = [json.loads(x) for x in paths.savings_log.read_text().splitlines()]
    credit = [r for r in rows if r["event_type"] == "checkpoint_restore"]
    assert credit == [{"timestamp": credit[0]["timestamp"], "event_type": "checkpoint_restore",
                       "tokens_saved": 0, "session_id": "s1", "detail": "queued after compact",
                       "basis": "estimated", "estimated_tokens": active}]


def test_works_without_an_openclaw_data_dir(paths: StatePaths) -> None:
    """COMPAT: the reference does nothing on a turn when ~/.openclaw is missing; we do not need it."""
    assert not paths.openclaw_dir.exists()
    rt = TokenOptimizer(paths.root, settings=PolicySettings.from_env(NO_COOLDOWN))
    c = ctx()
    handle(rt, "llm_output", usage_event(44_000), c)
    turn(rt, "hello", c)
    assert manifest_triggers(paths, "s1") == ["progressive-20"]


def test_contributions_survive_a_failing_evaluation(rt: TokenOptimizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """COMPAT: the reference drops the turn's contributions when the trailing evaluation throws."""
    c = ctx()
    for _ in range(2):
        handle(rt, "llm_output", {"model": "gpt-4o", "contextTokenBudget": 200_000,
                                 "usage": {"input": 120_000, "output": 100}}, c)
        first = turn(rt, "keep going", c)

    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("evaluation broke")

    assert first is not None  # the nudge fired on the second scored turn
    rt2 = TokenOptimizer(rt.paths.root, settings=PolicySettings.from_env(NO_COOLDOWN))
    monkeypatch.setattr(rt2.policy, "decide_snapshot", boom)
    c2 = ctx(sid="s2", key="k2")
    handle(rt2, "llm_output", {"model": "gpt-4o", "contextTokenBudget": 200_000,
                              "usage": {"input": 120_000, "output": 100}}, c2)
    turn(rt2, "one", c2)
    out = handle(rt2, "agent_turn_prepare", {"prompt": "two"}, c2)
    assert out.result is not None and "[Token Optimizer]" in out.result["prependContext"]
    assert any("evaluation broke" in a.message for a in out.actions)


def test_no_snapshot_checkpoint_before_any_usage(rt: TokenOptimizer, paths: StatePaths) -> None:
    """COMPAT: without a usage report the score is a placeholder (the reference's
    "zero input tokens" case) and drives no quality checkpoint."""
    c = ctx()
    for i in range(3):
        turn(rt, f"turn {i}", c, messages=[{"role": "user", "content": f"turn {j}"} for j in range(i + 1)])
    assert manifest_triggers(paths, "s1") == []
    handle(rt, "llm_output", usage_event(44_000), c)
    turn(rt, "turn 4", c)
    assert manifest_triggers(paths, "s1") == ["progressive-20"]


def test_status_does_not_retrack_a_released_session(rt: TokenOptimizer) -> None:
    c = ctx()
    handle(rt, "llm_output", usage_event(44_000), c)
    turn(rt, "hello", c)
    handle(rt, "session_end", {"sessionId": "s1", "reason": "deleted"}, c)
    st = rt.status("s1")
    assert st["capturedFillBands"] == [20]          # read from disk
    assert all(v == 0 for v in rt.tracked_counts().values())


def test_legacy_transcript_is_followed_incrementally(rt: TokenOptimizer, paths: StatePaths) -> None:
    """Without usage events, a legacy ``agents/<id>/sessions/<sid>.jsonl`` feeds the figures,
    and later turns read only its new tail."""
    from token_optimizer.quality import context_window_for_model

    sessions = paths.openclaw_dir / "agents" / "main" / "sessions"
    sessions.mkdir(parents=True)
    log = sessions / "legacy-1.jsonl"

    def rec(role: str, sec: int, usage: dict[str, int] | None = None) -> str:
        msg: dict[str, Any] = {"role": role, "model": "gpt-4o",
                               "content": [{"type": "text", "text": f"{role} at {sec}"}]}
        if usage:
            msg["usage"] = usage
        return json.dumps({"type": "message", "timestamp": f"2026-08-01T10:00:{sec:02d}.000Z",
                           "message": msg}) + "\n"

    window = context_window_for_model("gpt-4o")
    log.write_text(rec("user", 1) + rec("assistant", 2, {"input_tokens": window // 4, "output_tokens": 50}))
    c = {"sessionId": "legacy-1", "agentId": "main", "trigger": "user"}
    turn(rt, "next", c)
    assert rt.status("legacy-1")["fillPct"] == pytest.approx(25.0)
    assert manifest_triggers(paths, "legacy-1") == ["progressive-20"]
    with log.open("a") as fh:
        fh.write(rec("user", 3) + rec("assistant", 4, {"input_tokens": window // 2, "output_tokens": 50}))
    turn(rt, "again", c)
    assert rt.status("legacy-1")["fillPct"] == pytest.approx(50.0)
    assert manifest_triggers(paths, "legacy-1")[-1] == "progressive-50"
    assert rt.ledger.snapshot("legacy-1").run.message_count == 4  # type: ignore[union-attr]
