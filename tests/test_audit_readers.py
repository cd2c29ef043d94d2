"""Audit readers over generated OpenClaw and Hermes stores (hosts' own DDL)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from audit_stores import (
    HermesStore,
    OpenClawStore,
    assistant_event,
    tool_result_event,
    user_event,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from token_optimizer.audit.model import SessionRow
from token_optimizer.audit.scan import Roots, ScanResult, detect, scan

T0 = 1_780_000_000_000


def scan_root(openclaw: Path | None = None, hermes: Path | None = None,
              state: Path | None = None) -> ScanResult:
    """Scan the given host roots with a cache under ``state`` (helper for real-host stores too)."""
    return scan(Roots(openclaw, hermes), state)


def by_id(res: ScanResult) -> dict[str, SessionRow]:
    return {r.session_id: r for r in res.rows}


@pytest.fixture
def oc(tmp_path: Path) -> OpenClawStore:
    store = OpenClawStore(tmp_path / "openclaw")
    yield store
    store.close()


def test_openclaw_sqlite_session_with_compressed_events(oc: OpenClawStore, tmp_path: Path) -> None:
    oc.add_session("s1")
    oc.add_events("s1", [
        user_event("Refactor the auth module. Then more", T0),
        assistant_event(T0 + 5000, inp=1000, out=200, cache_read=3000, cost=0.25,
                        text="x" * 3000, tools=("exec", "read")),  # ≥ 1 KiB: compressed
        tool_result_event(T0 + 6000, "exec", is_error=True),
        assistant_event(T0 + 9000, inp=10, out=5, stop="error", error="upstream 500"),
    ])
    con = sqlite3.connect(oc.db_path("main"))
    compressed = con.execute("SELECT count(*) FROM transcript_events WHERE event_json IS NULL"
                             " AND event_zstd IS NOT NULL").fetchone()[0]
    con.close()
    assert compressed == 1
    r = by_id(scan_root(oc.root, state=tmp_path / "state"))["s1"]
    assert r.host == "openclaw" and r.agent == "main"
    assert (r.tokens.input, r.tokens.output, r.tokens.cache_read) == (1010, 205, 3000)
    assert r.user_messages == 1 and r.assistant_messages == 2 and r.message_count == 3
    assert r.tool_calls == 2 and r.tools == ["exec", "read"] and r.tool_errors == 1
    assert r.stop_reasons == {"stop": 1, "error": 1} and r.error_turns == 1
    assert r.topic == "Refactor the auth module"
    assert r.started_ms == T0 and r.duration_seconds == 9.0
    assert r.cache_read_ratio == pytest.approx(3000 / 4010)
    # the recorded $0.25 is taken as is; the second call has no recorded cost: priced from the table
    split = r.models[0]
    assert split.recorded_usd == 0.25 and split.table_usd > 0
    assert r.cost_basis == "recorded" and r.unpriced_tokens == 0


def test_cron_and_heartbeat_signals(oc: OpenClawStore, tmp_path: Path) -> None:
    oc.add_cron_job("job7", "nightly digest")
    oc.add_session("c1", key="agent:main:cron:job7:run:r1", created_via="cron")
    oc.add_events("c1", [user_event("run", T0), assistant_event(T0 + 1)])
    oc.add_session("c2", key="agent:main:other", created_via="cron")
    oc.add_events("c2", [user_event("run", T0), assistant_event(T0 + 1)])
    oc.add_session("h1", key="agent:main:hb")
    oc.add_events("h1", [user_event("beat", T0), assistant_event(T0 + 1)])
    oc.add_heartbeat("agent:main:main", "agent:main:hb")
    oc.add_session("m1")
    oc.add_events("m1", [user_event("hi there", T0), assistant_event(T0 + 1)])
    rows = by_id(scan_root(oc.root, state=tmp_path / "state"))
    assert rows["c1"].run_type == "cron" and rows["c1"].cron_job == "nightly digest"
    assert rows["c2"].run_type == "cron"  # created_via alone is the signal
    assert rows["h1"].run_type == "heartbeat" and rows["h1"].heartbeat_outcomes == 1
    assert rows["m1"].run_type == "manual"


def test_compaction_and_rewind_windows_count_on_the_source_session(oc: OpenClawStore,
                                                                    tmp_path: Path) -> None:
    oc.add_session("a", key="agent:main:k")
    oc.add_events("a", [user_event("one", T0), assistant_event(T0 + 1),
                        {"type": "compaction", "id": "c", "parentId": None, "summary": "s",
                         "firstKeptEntryId": "x", "tokensBefore": 9000}])
    oc.add_session("b", key="agent:main:k", reason="compaction", previous="a")
    oc.add_session("c", key="agent:main:k", reason="rewind", previous="a")
    r = by_id(scan_root(oc.root, state=tmp_path / "state"))["a"]
    assert r.compactions == 2  # one compaction event + one compaction window
    assert r.rewinds == 1


def test_legacy_jsonl_archives_deduplicated_by_session_id(oc: OpenClawStore, tmp_path: Path) -> None:
    oc.add_session("live")
    oc.add_events("live", [user_event("in sqlite", T0), assistant_event(T0 + 1, inp=7)])
    # a leftover file for the same id as a live sqlite session: sqlite wins
    oc.write_jsonl("main", "live.jsonl", [user_event("old", T0), assistant_event(T0 + 1, inp=999)])
    # one deleted session kept as two archive copies; the one with more events wins
    short = [user_event("gone", T0), assistant_event(T0 + 1, inp=10)]
    oc.write_jsonl("main", "gone.jsonl.deleted.2026-09-01T10-00-00.000Z", short)
    oc.write_jsonl("main", "gone.jsonl.reset.2026-09-02T10-00-00.000Z.zst",
                   [*short, user_event("more", T0 + 2), assistant_event(T0 + 3, inp=20)],
                   compress=True)
    # reference-style usage keys (the reference parser's chain) with a streamed repeat
    oc.write_jsonl("main", "legacy.jsonl", [
        {"type": "user", "timestamp": "2026-08-01T10:00:00.000Z",
         "message": {"role": "user", "content": "legacy prompt"}},
        {"type": "assistant", "timestamp": "2026-08-01T10:00:05.000Z", "requestId": "r1",
         "message": {"role": "assistant", "model": "claude-opus-4-8",
                     "usage": {"input_tokens": 100, "output_tokens": 10}}},
        {"type": "assistant", "timestamp": "2026-08-01T10:00:06.000Z", "requestId": "r1",
         "message": {"role": "assistant", "model": "claude-opus-4-8",
                     "usage": {"input_tokens": 100, "output_tokens": 40}}},
    ])
    res = scan_root(oc.root, state=tmp_path / "state")
    rows = by_id(res)
    assert rows["live"].tokens.input == 7 and "#transcript_events" in rows["live"].source
    assert rows["gone"].tokens.input == 30 and rows["gone"].source.endswith(".zst")
    assert (rows["legacy"].tokens.input, rows["legacy"].tokens.output) == (100, 40)
    assert rows["legacy"].api_calls == 1
    assert res.duplicates == 2
    assert len(rows) == 3


def test_unknown_model_is_never_a_silent_zero(oc: OpenClawStore, tmp_path: Path) -> None:
    oc.add_session("u")
    oc.add_events("u", [user_event("hi there", T0),
                        assistant_event(T0 + 1, model="totally-new-model-x", inp=500, out=100)])
    res = scan(Roots(oc.root, None), tmp_path / "state")
    r = by_id(res)["u"]
    assert r.cost_usd == 0
    assert r.cost_basis == "unpriced"
    assert r.unpriced_tokens == 600 and r.unpriced_models == ["totally-new-model-x"]
    assert res.unpriced_models == ["totally-new-model-x"] and res.unpriced_tokens == 600


def test_zero_cost_adapter_default_is_not_a_recorded_price(oc: OpenClawStore, tmp_path: Path) -> None:
    oc.add_session("z")
    oc.add_events("z", [user_event("hi there", T0),
                        assistant_event(T0 + 1, inp=1000, out=100, cost=0.0)])
    r = by_id(scan_root(oc.root, state=tmp_path / "state"))["z"]
    assert r.cost_basis == "table" and r.cost_usd > 0


def test_incremental_rescan_reads_only_new_rows(oc: OpenClawStore, tmp_path: Path) -> None:
    for i in range(3):
        oc.add_session(f"s{i}")
        oc.add_events(f"s{i}", [user_event("hello world", T0), assistant_event(T0 + 1, inp=10)])
    state = tmp_path / "state"
    first = scan_root(oc.root, state=state)
    assert first.events_read == 6
    assert (state / "audit-cache.sqlite").is_file()
    assert scan_root(oc.root, state=state).events_read == 0
    oc.add_events("s1", [user_event("again", T0 + 5), assistant_event(T0 + 6, inp=5)])
    third = scan_root(oc.root, state=state)
    assert third.events_read == 2
    rows = by_id(third)
    assert rows["s1"].tokens.input == 15 and rows["s1"].assistant_messages == 2
    assert rows["s0"].tokens.input == 10
    # same figures as a cold scan
    cold = by_id(scan(Roots(oc.root, None), state, use_cache=False))
    assert {k: v.to_json() for k, v in cold.items()} == {k: v.to_json() for k, v in rows.items()}


def test_rewritten_session_is_reread_whole(oc: OpenClawStore, tmp_path: Path) -> None:
    oc.add_session("s")
    oc.add_events("s", [user_event("hello world", T0), assistant_event(T0 + 1, inp=10)])
    state = tmp_path / "state"
    scan_root(oc.root, state=state)
    c = oc.con()
    c.execute("DELETE FROM transcript_events WHERE session_id='s' AND seq=2")
    oc.add_events("s", [assistant_event(T0 + 2, inp=3), assistant_event(T0 + 3, inp=4)])
    r = by_id(scan_root(oc.root, state=state))["s"]
    assert r.tokens.input == 7 and r.assistant_messages == 2


def test_wal_with_open_writer_is_seen_and_not_blocked(oc: OpenClawStore, tmp_path: Path) -> None:
    oc.add_session("w")
    oc.add_events("w", [user_event("hello world", T0), assistant_event(T0 + 1, inp=10)])
    writer = oc.con()
    writer.execute("PRAGMA wal_autocheckpoint=0")
    oc.add_events("w", [assistant_event(T0 + 2, inp=5)])  # committed, still only in the WAL
    assert Path(str(oc.db_path("main")) + "-wal").stat().st_size > 0
    writer.execute("BEGIN IMMEDIATE")  # the host holds the write lock while we read
    writer.execute("INSERT INTO transcript_events (session_id, seq, event_json, created_at)"
                   " VALUES ('w', 99, '{}', 0)")
    try:
        r = by_id(scan_root(oc.root, state=tmp_path / "state"))["w"]
        assert r.tokens.input == 15  # the WAL content is visible, the uncommitted row is not
    finally:
        writer.execute("COMMIT")  # and the writer was never blocked by the reader


def test_reader_never_writes_the_host_store(oc: OpenClawStore, tmp_path: Path) -> None:
    oc.add_session("s")
    oc.add_events("s", [user_event("hello world", T0), assistant_event(T0 + 1)])
    oc.close()
    db = oc.db_path("main")
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    before = db.read_bytes()
    scan_root(oc.root, state=tmp_path / "state")
    assert db.read_bytes() == before


def test_hermes_sessions_model_splits_and_money(tmp_path: Path) -> None:
    home = tmp_path / "hermes"
    h = HermesStore(home)
    # per-model buckets plus a residual on the session's own model (as `hermes insights`)
    h.add_session("a", model="anthropic/claude-sonnet-4-6", inp=1500, out=300, api_calls=3,
                  actual=0.5, streak=2, rewinds=1, tool_calls=2)
    h.add_usage("a", "anthropic/claude-sonnet-4-6", inp=1000, out=200, calls=2, actual=0.4)
    h.add_usage("a", "openai/gpt-5.2", inp=300, out=50, calls=1, estimated=0.02,
                cost_status="estimated", cost_source="pricing_table")
    h.add_message("a", "user", "hello")
    h.add_message("a", "assistant", "ok", finish_reason="tool_calls")
    h.add_message("a", "tool", "Error executing tool 'x': boom", tool_name="terminal")
    h.add_message("a", "tool", '{"output": "fine"}', tool_name="read_file")
    h.add_message("a", "assistant", "done", finish_reason="stop", compacted=1)
    # no buckets, unknown model: unpriced, never $0
    h.add_session("b", model="weird/unknown-llm", inp=100, out=10)
    # plan-covered usage: an explained $0
    h.add_session("c", model="anthropic/claude-sonnet-4-6", inp=100, out=10, cost_status="included")
    h.add_session("cron_job1_20260601_120000", source="cron", inp=1, out=1)
    h.close()
    prof = HermesStore(home, profile="work")
    prof.add_session("p1", inp=10, out=1)
    prof.close()
    rows = by_id(scan_root(hermes=home, state=tmp_path / "state"))
    a = rows["a"]
    assert (a.tokens.input, a.tokens.output) == (1500, 300)
    models = {m.model: m for m in a.models}
    assert models["openai/gpt-5.2"].estimated_usd == 0.02
    assert models["openai/gpt-5.2"].basis == "estimated"
    son = models["anthropic/claude-sonnet-4-6"]
    assert son.tokens.input == 1200  # 1000 bucket + 200 residual
    assert son.recorded_usd == pytest.approx(0.5)  # 0.4 bucket + 0.1 residual of actual_cost_usd
    assert a.cost_basis == "recorded"
    assert a.compaction_fallback_streak == 2 and a.rewinds == 1
    assert a.tool_errors == 1 and a.tools == ["read_file", "terminal"]
    assert a.stop_reasons == {"tool_calls": 1, "stop": 1} and a.compactions == 1
    assert a.user_messages == 1 and a.assistant_messages == 2
    b = rows["b"]
    assert b.cost_basis == "unpriced" and b.unpriced_tokens == 110
    assert b.unpriced_models == ["weird/unknown-llm"]
    assert rows["c"].cost_basis == "included" and rows["c"].cost_usd == 0
    cron = rows["cron_job1_20260601_120000"]
    assert cron.run_type == "cron" and cron.cron_job == "job1"
    assert rows["p1"].agent == "work"


def test_hermes_incremental_messages(tmp_path: Path) -> None:
    home = tmp_path / "hermes"
    h = HermesStore(home)
    h.add_session("a", inp=10, out=1)
    h.add_message("a", "user", "one")
    state = tmp_path / "state"
    assert scan_root(hermes=home, state=state).events_read == 1
    assert scan_root(hermes=home, state=state).events_read == 0
    h.add_message("a", "tool", "Error: nope", tool_name="terminal")
    res = scan_root(hermes=home, state=state)
    assert res.events_read == 1
    assert by_id(res)["a"].tool_errors == 1 and by_id(res)["a"].message_count == 0 + 2
    h.close()


def test_detect_lists_stores_with_sizes(oc: OpenClawStore, tmp_path: Path) -> None:
    oc.add_session("s")
    oc.write_jsonl("main", "x.jsonl", [user_event("a", 1)])
    HermesStore(tmp_path / "hermes").close()
    info = detect(Roots(oc.root, tmp_path / "hermes"))
    assert info["found"]
    kinds = {(h["host"], s["kind"]) for h in info["hosts"] for s in h["stores"]}
    assert kinds == {("openclaw", "agent-db"), ("openclaw", "transcript-files"),
                     ("hermes", "state-db")}
    assert all(s["bytes"] > 0 for h in info["hosts"] for s in h["stores"])
    assert not detect(Roots(tmp_path / "none", tmp_path / "none2"))["found"]


@settings(max_examples=300, deadline=None)
@given(st.integers(-62_135_596_800_000, 253_402_300_799_999))
def test_timestamp_fast_path_equals_the_full_parser(ms: int) -> None:
    import datetime as dt

    from token_optimizer.audit.accumulate import timestamp_ms
    from token_optimizer.transcripts import timestamp_ms as full

    d = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)
    v = f"{d.year:04d}-{d:%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"
    assert timestamp_ms(v) == full(v)


@pytest.mark.parametrize("v", ["2026-01-01T0 :00:00.000Z", "2026-01-01T+1:00:00.000Z",
                               "２026-01-01T00:00:00.000Z", "2026-01-01T24:00:00.000Z",
                               "2026-02-30T00:00:00.000Z", "2026-01-01T00:00:60.000Z",
                               "0000-01-01T00:00:00.000Z", "2026-13-01T00:00:00.000Z"])
def test_timestamp_fast_path_defers_odd_shapes_to_the_full_parser(v: str) -> None:
    from token_optimizer.audit.accumulate import timestamp_ms
    from token_optimizer.transcripts import timestamp_ms as full

    assert timestamp_ms(v) == full(v)


def test_pooled_event_pass_gives_the_same_rows_cold_and_incremental(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full pass split by session over forked workers equals the in-process pass, on a
    cold read and on an incremental one (sessions continuing from their watermarks)."""
    from token_optimizer.audit import openclaw as ocm

    oc = OpenClawStore(tmp_path / "openclaw")
    n = ocm.FULL_SCAN_MIN_SESSIONS + 10
    for i in range(n):
        oc.add_session(f"s{i:04d}", created_ms=T0 + i * 1000)
        oc.add_events(f"s{i:04d}", [user_event(f"task {i}", T0 + i * 1000),
                                    assistant_event(T0 + i * 1000 + 10, inp=10 + i,
                                                    tools=("exec",) if i % 3 else (),
                                                    stop="toolUse" if i % 3 else "stop")])
    monkeypatch.setattr(ocm, "POOL_MIN_EVENTS", 1)
    pooled: list[int] = []
    real = ocm.AgentStoreReader._full_pass_pooled

    def spy(self: Any, todo: dict[str, int], total: int, workers: int) -> None:
        real(self, todo, total, workers)  # (an exception would fall back: not wanted)
        pooled.append(len(todo))

    monkeypatch.setattr(ocm.AgentStoreReader, "_full_pass_pooled", spy)
    for step in range(2):
        monkeypatch.setenv("TOKEN_OPTIMIZER_AUDIT_WORKERS", "2")
        two = scan(Roots(oc.root, None), tmp_path / "pooled", use_cache=True)
        monkeypatch.setenv("TOKEN_OPTIMIZER_AUDIT_WORKERS", "1")
        one = scan(Roots(oc.root, None), tmp_path / "single", use_cache=True)
        assert two.json_array() == one.json_array()
        assert two.events_read == one.events_read > 0
        assert len(two.rows) == n
        # every session grows: the next pass is incremental from each watermark
        for i in range(n):
            oc.add_events(f"s{i:04d}", [assistant_event(T0 + i * 1000 + 20 + step, inp=7)])
    assert pooled == [n, n]
    oc.close()
