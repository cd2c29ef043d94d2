"""The stored whole-scan result (``audit/snapshot.py``): a warm scan with nothing new
opens no store and gives the same bytes; any change to what the rows are made of is
seen; the window and filters are applied to it exactly as to a fresh scan."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from audit_stores import HermesStore, OpenClawStore, assistant_event, user_event
from hypothesis import given, settings
from hypothesis import strategies as st

from token_optimizer.audit import openclaw, snapshot
from token_optimizer.audit import scan as scan_mod
from token_optimizer.audit.cache import CACHE_FILE, AuditCache
from token_optimizer.audit.scan import Roots, ScanResult, scan
from token_optimizer.pricing import reset_pricing_cache

T0 = 1_780_000_000_000
OPTS = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS


def _legacy(i: int, inp: int = 10) -> list[dict[str, Any]]:
    ts = f"2026-06-0{1 + i % 9}T10:00:00.000Z"
    return [{"type": "user", "timestamp": ts, "message": {"role": "user", "content": f"task {i}"}},
            {"type": "assistant", "timestamp": ts, "requestId": f"r{i}",
             "message": {"role": "assistant", "model": "claude-sonnet-4-6",
                         "usage": {"input_tokens": inp, "output_tokens": 5}, "content": []}}]


@pytest.fixture
def stores(tmp_path: Path) -> Any:
    oc = OpenClawStore(tmp_path / "openclaw")
    hm = HermesStore(tmp_path / "hermes")
    for i in range(4):
        oc.add_session(f"db{i}", created_ms=T0 + i * 60_000)
        oc.add_events(f"db{i}", [user_event(f"hello {i}", T0 + i * 60_000),
                                 assistant_event(T0 + i * 60_000 + 1000, inp=100 + i)])
        oc.write_jsonl("main" if i % 2 else "ops", f"f{i}.jsonl", _legacy(i))
        hm.add_session(f"h{i}", started=T0 / 1000 + i * 3600, inp=50 + i, out=7, api_calls=1)
        hm.add_usage(f"h{i}", "anthropic/claude-sonnet-4-6", inp=50 + i, out=7)
    hm.con.commit()
    yield oc, hm
    oc.close()
    hm.close()


def _roots(tmp_path: Path) -> Roots:
    return Roots(tmp_path / "openclaw", tmp_path / "hermes")


def _fresh(tmp_path: Path, **kw: Any) -> ScanResult:
    return scan(_roots(tmp_path), None, use_cache=False, **kw)


def test_warm_scan_is_the_stored_result_and_opens_no_store(stores: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    cold = scan(_roots(tmp_path), state)
    assert cold.events_read > 0

    def no_store(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("a warm scan with nothing new opened a store")

    monkeypatch.setattr(openclaw, "connect_ro", no_store)
    monkeypatch.setattr("token_optimizer.audit.hermes.connect_ro", no_store)
    monkeypatch.setattr(openclaw, "read_transcript", no_store)
    warm = scan(_roots(tmp_path), state)
    assert warm.events_read == 0
    monkeypatch.undo()
    fresh = _fresh(tmp_path)
    assert warm.json_array() == cold.json_array() == fresh.json_array() == orjson.dumps(
        [r.to_json() for r in fresh.rows], option=OPTS)
    assert [r.to_json() for r in warm.rows] == [r.to_json() for r in fresh.rows]
    assert [(r.started_ms, r.ended_ms) for r in warm.rows] == \
        [(r.started_ms, r.ended_ms) for r in fresh.rows]
    assert (warm.duplicates, warm.unpriced_tokens, warm.unpriced_models) == \
        (fresh.duplicates, fresh.unpriced_tokens, fresh.unpriced_models)
    assert len(warm.rows) == 12


@pytest.mark.parametrize("change", ["db-events", "jsonl-append", "jsonl-new", "jsonl-gone",
                                    "hermes", "cron", "prices"])
def test_every_kind_of_change_is_seen(stores: Any, tmp_path: Path, change: str) -> None:
    oc, hm = stores
    state = tmp_path / "state"
    before = scan(_roots(tmp_path), state).json_array()
    sessions = oc.root / "agents" / "main" / "sessions"
    if change == "db-events":
        oc.add_events("db1", [assistant_event(T0 + 90_000, inp=5000)])
    elif change == "jsonl-append":
        with (sessions / "f1.jsonl").open("ab") as fh:
            fh.write(orjson.dumps(_legacy(1, inp=777)[1]) + b"\n")
    elif change == "jsonl-new":
        oc.write_jsonl("main", "f9.jsonl", _legacy(9))
    elif change == "jsonl-gone":
        os.unlink(sessions / "f1.jsonl")
    elif change == "hermes":
        hm.con.execute("UPDATE sessions SET input_tokens = 9999 WHERE id = 'h2'")
        hm.con.commit()
    elif change == "cron":
        oc.add_session("cronrun", key="agent:main:cron:job1:run:1", created_via="cron",
                       created_ms=T0 + 5_000_000)
        oc.add_events("cronrun", [user_event("tick", T0 + 5_000_000)])
        scan(_roots(tmp_path), state)  # the run is in; now only the job's name changes
        before = scan(_roots(tmp_path), state).json_array()
        oc.add_cron_job("job1", "nightly digest")
    elif change == "prices":
        (oc.root / "openclaw.json").write_text(orjson.dumps({"models": {"providers": {"p": {
            "models": [{"id": "claude-sonnet-4-6", "name": "claude-sonnet-4-6",
                        "cost": {"input": 1000, "output": 2000, "cacheRead": 100,
                                 "cacheWrite": 1000}}]}}}}).decode())
        reset_pricing_cache()  # (memoised per process; a CLI run is a new one)
    try:
        after = scan(_roots(tmp_path), state)
        assert after.json_array() != before
        assert after.json_array() == _fresh(tmp_path).json_array()
    finally:
        reset_pricing_cache()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 50)), st.booleans(),
                          st.sampled_from(["a", "b", "c"])), max_size=25),
       st.one_of(st.none(), st.integers(0, 50)), st.one_of(st.none(), st.integers(0, 50)),
       st.one_of(st.none(), st.sets(st.sampled_from(["a", "b", "x"]), min_size=1)))
def test_window_and_filters_on_the_pack_match_a_plain_filter(
        spec: list[tuple[int | None, bool, str]], since: int | None, until: int | None,
        agents: set[str] | None) -> None:
    rows = [{"i": i, "started": s, "host": "hermes" if h else "openclaw", "agent": a}
            for i, (s, h, a) in enumerate(sorted(spec, key=lambda e: -(e[0] or 0)))]
    pack = snapshot.Pack.build(
        ((None if r["started"] is None else float(r["started"]), None, str(r["host"]),
          str(r["agent"]), openclaw.row_fragment(r)) for r in rows), 0, 0, [])
    want = [r for r in rows
            if (since is None or (r["started"] is not None and r["started"] >= since))
            and (until is None or (r["started"] is not None and r["started"] <= until))
            and not (agents and r["host"] != "openclaw" and r["agent"] not in agents)]
    got = pack.array_bytes(pack.select(since, until, agents))
    assert got == orjson.dumps(want, option=OPTS)
    back = snapshot.Pack.from_bytes(pack.header_bytes(b"fp"), bytes(pack.body), b"fp")
    assert back is not None and back.array_bytes(back.select(since, until, agents)) == got


def test_window_and_agent_filter_on_a_warm_scan(stores: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    scan(_roots(tmp_path), state)
    warm = scan(_roots(tmp_path), state)
    since, until = float(T0 + 60_000), float(T0 + 2 * 3_600_000)
    fresh = _fresh(tmp_path)
    want = [r.to_json() for r in fresh.rows
            if r.started_ms is not None and since <= r.started_ms <= until
            and (r.host == "openclaw" or r.agent in {"nobody"})]
    assert 0 < len(want) < len(fresh.rows)
    assert warm.json_rows(since, until, {"nobody"}) == want
    assert warm.json_array(since, until, {"nobody"}) == orjson.dumps(want, option=OPTS)


def test_damaged_or_foreign_blob_is_only_a_miss(stores: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    cold = scan(_roots(tmp_path), state)
    c = AuditCache(state / CACHE_FILE)
    slots = [k for k in list(c.keys()) if k.startswith(snapshot.SLOT_PREFIX)]
    assert sorted(slots) == sorted([slots[0].removesuffix("#body"),
                                    slots[0].removesuffix("#body") + "#body"])
    slot = min(slots, key=len)
    header, body = c.get_bytes(slot), c.get_bytes(slot + "#body")
    assert header is not None and body is not None
    bad_headers = [b"", b"junk", header[:40], header[:-3],
                   header.replace(b"TOSNAP1", b"TOSNAP2", 1)]
    cases = [(h, body) for h in bad_headers] + [(header, body[:-1]), (header, body + b" "),
                                                (header, None)]
    for h, b in cases:
        c.put_bytes(slot, h)
        if b is None:
            c.delete(slot + "#body")
        else:
            c.put_bytes(slot + "#body", b)
        c.flush()
        again = scan(_roots(tmp_path), state)
        assert again.json_array() == cold.json_array()
        assert again.events_read == 0  # the per-store caches still held: nothing re-read
    c.close()


def test_slots_per_filter_are_bounded(stores: Any, tmp_path: Path) -> None:
    state = tmp_path / "state"
    filters: list[dict[str, Any]] = [{}, {"agents": {"main"}}, {"agents": {"ops"}},
                                     {"profiles": {"default"}}, {"agents": {"nobody"}}]
    for kw in filters:
        scan(_roots(tmp_path), state, **kw)
    c = AuditCache(state / CACHE_FILE)
    keys = [k for k in list(c.keys()) if k.startswith(snapshot.SLOT_PREFIX)]
    c.close()
    slots = {k.removesuffix("#body") for k in keys}
    assert len(slots) == snapshot.MAX_SLOTS and len(keys) == 2 * snapshot.MAX_SLOTS
    # the oldest (no filter) went; a warm scan with it is a miss that still gives the same rows
    main_only = scan(_roots(tmp_path), state, agents={"main"})
    assert main_only.events_read == 0
    assert main_only.json_array() == _fresh(tmp_path, agents={"main"}).json_array()
    assert scan(_roots(tmp_path), state).json_array() == _fresh(tmp_path).json_array()


def test_no_cache_means_no_snapshot(stores: Any, tmp_path: Path) -> None:
    res = scan(_roots(tmp_path), tmp_path / "state", use_cache=False)
    assert len(res.rows) == 12
    assert not (tmp_path / "state" / CACHE_FILE).exists()


def test_gc_is_back_on_after_a_scan(stores: Any, tmp_path: Path) -> None:
    import gc

    assert gc.isenabled()
    scan(_roots(tmp_path), tmp_path / "state")
    assert gc.isenabled()
    gc.disable()
    try:
        scan_mod.scan(_roots(tmp_path), tmp_path / "state")
        assert not gc.isenabled()  # a caller's choice is left as it was
    finally:
        gc.enable()


def test_model_split_round_trips_field_by_field() -> None:
    from token_optimizer.audit.model import ModelSplit, Tokens

    s = ModelSplit("m", 3, Tokens(1, 2, 3, 4), 0.5, 0.25, 0.125, 0.0625, 7, "mixed", "src")
    back = ModelSplit.from_json(orjson.loads(orjson.dumps(s.to_json())))
    assert back == s
    assert [back.calls, back.cost_usd, back.recorded_usd, back.estimated_usd, back.table_usd,
            back.unpriced_tokens, back.basis, back.price_source] == \
        [3, 0.5, 0.25, 0.125, 0.0625, 7, "mixed", "src"]
