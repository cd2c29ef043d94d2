"""The legacy transcript files' cache (one index and one row blob per ``sessions`` dir),
its byte-level JSON output, the process pool, and the audit commands' fast dispatch."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from audit_stores import OpenClawStore, assistant_event, tool_result_event, user_event

from token_optimizer import cli
from token_optimizer.audit import openclaw
from token_optimizer.audit.model import SessionRow
from token_optimizer.audit.scan import Roots, ScanResult, has_store, scan
from token_optimizer.commands.audit import _redact, redact_json_bytes

T0 = 1_780_000_000_000


def _legacy(i: int, n: int = 3, model: str = "claude-sonnet-4-6") -> list[dict[str, Any]]:
    """A Claude-Code-style transcript (the reference's shape) of ``n`` turns."""
    out: list[dict[str, Any]] = []
    for k in range(n):
        ts = f"2026-06-0{1 + i % 9}T10:{k:02d}:0{k % 10}.{k:03d}Z"
        out.append({"type": "user", "timestamp": ts,
                    "message": {"role": "user", "content": f"task {i} step {k}"}})
        out.append({"type": "assistant", "timestamp": ts, "requestId": f"r{i}-{k}",
                    "message": {"role": "assistant", "model": model,
                                "usage": {"input_tokens": 10 * (k + 1) + i, "output_tokens": 5,
                                          "cache_read_input_tokens": 100,
                                          "cache_creation_input_tokens": 7},
                                "content": [{"type": "tool_use", "id": f"t{k}", "name": "Read",
                                             "input": {}}]}})
    return out


def _by_id(res: ScanResult) -> dict[str, SessionRow]:
    return {r.session_id: r for r in res.rows}


@pytest.fixture
def oc(tmp_path: Path) -> OpenClawStore:
    store = OpenClawStore(tmp_path / "openclaw")
    yield store
    store.close()


def test_warm_scan_equals_cold_and_sees_every_change(oc: OpenClawStore, tmp_path: Path) -> None:
    for i in range(6):
        oc.write_jsonl("main" if i % 2 else "ops", f"s{i}.jsonl", _legacy(i))
    state = tmp_path / "state"
    cold = scan(Roots(oc.root, None), state)
    nocache = scan(Roots(oc.root, None), None, use_cache=False)
    warm = scan(Roots(oc.root, None), state)
    assert warm.json_rows() == cold.json_rows() == nocache.json_rows()
    assert [r.to_json() for r in warm.rows] == [r.to_json() for r in nocache.rows]
    assert warm.json_array() == cold.json_array() == orjson.dumps(
        nocache.json_rows(), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
    assert _by_id(warm)["s3"].tokens.input == 10 + 20 + 30 + 3 * 3

    # an appended line (same mtime second on coarse clocks: the size differs)
    p = oc.root / "agents" / "main" / "sessions" / "s3.jsonl"
    with p.open("ab") as fh:
        fh.write(orjson.dumps({"type": "assistant", "timestamp": "2026-06-04T11:00:00.000Z",
                               "message": {"role": "assistant", "model": "claude-sonnet-4-6",
                                           "usage": {"input_tokens": 1000,
                                                     "output_tokens": 1}}}) + b"\n")
    # a rewrite of the same size with only the mtime changed
    q = oc.root / "agents" / "ops" / "sessions" / "s0.jsonl"
    data = q.read_bytes().replace(b'"input_tokens":10', b'"input_tokens":90')
    q.write_bytes(data)
    st = q.stat()
    os.utime(q, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    # one file gone, one new
    (oc.root / "agents" / "main" / "sessions" / "s5.jsonl").unlink()
    oc.write_jsonl("main", "s9.jsonl", _legacy(9))
    after = scan(Roots(oc.root, None), state)
    rows = _by_id(after)
    assert rows["s3"].tokens.input == 10 + 20 + 30 + 3 * 3 + 1000
    assert rows["s3"].assistant_messages == 4
    assert rows["s0"].tokens.input == 90 + 20 + 30
    assert "s5" not in rows and "s9" in rows
    fresh = scan(Roots(oc.root, None), None, use_cache=False)
    assert after.json_array() == fresh.json_array()
    assert scan(Roots(oc.root, None), state).json_array() == fresh.json_array()


def test_a_file_shadowed_by_sqlite_and_copies(oc: OpenClawStore, tmp_path: Path) -> None:
    oc.add_session("live")
    oc.add_events("live", [user_event("in sqlite", T0), assistant_event(T0 + 1, inp=7),
                           tool_result_event(T0 + 2)])
    oc.write_jsonl("main", "live.jsonl", _legacy(1))
    oc.write_jsonl("main", "gone.jsonl.deleted.2026-09-01T10-00-00.000Z", _legacy(2, 1))
    oc.write_jsonl("main", "gone.jsonl.reset.2026-09-02T10-00-00.000Z.zst", _legacy(2, 2),
                   compress=True)
    oc.write_jsonl("main", "empty.jsonl", [{"type": "session", "id": "empty"}])
    state = tmp_path / "state"
    for _ in range(2):  # cold, then warm from the cache
        res = scan(Roots(oc.root, None), state)
        rows = _by_id(res)
        assert set(rows) == {"live", "gone"}
        assert rows["live"].tokens.input == 7 and "#transcript_events" in rows["live"].source
        assert rows["gone"].assistant_messages == 2 and rows["gone"].source.endswith(".zst")
        assert res.duplicates == 2


def test_unpriced_file_rows_are_reported(oc: OpenClawStore, tmp_path: Path) -> None:
    oc.write_jsonl("main", "a.jsonl", _legacy(1, model="totally-new-model-x"))
    oc.write_jsonl("main", "b.jsonl", _legacy(2))
    for _ in range(2):
        res = scan(Roots(oc.root, None), tmp_path / "state")
        assert res.unpriced_models == ["totally-new-model-x"]
        assert res.unpriced_tokens == _by_id(res)["a"].tokens.total > 0


def test_pricing_change_recomputes_cached_rows(oc: OpenClawStore, tmp_path: Path) -> None:
    from token_optimizer.pricing import reset_pricing_cache

    oc.write_jsonl("main", "a.jsonl", _legacy(1))
    state = tmp_path / "state"
    before = _by_id(scan(Roots(oc.root, None), state))["a"].cost_usd
    (oc.root / "openclaw.json").write_text(orjson.dumps({"models": {"providers": {"p": {
        "models": [{"id": "claude-sonnet-4-6", "name": "claude-sonnet-4-6",
                    "cost": {"input": 1000, "output": 2000, "cacheRead": 100,
                             "cacheWrite": 1000}}]}}}}).decode())
    reset_pricing_cache()
    try:
        after = _by_id(scan(Roots(oc.root, None), state))["a"].cost_usd
        fresh = _by_id(scan(Roots(oc.root, None), None, use_cache=False))["a"].cost_usd
    finally:
        reset_pricing_cache()
    assert after == fresh and after > before * 10


def test_pool_and_in_process_give_the_same_rows(oc: OpenClawStore, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(40):
        oc.write_jsonl(f"a{i % 3}", f"s{i:02d}.jsonl", _legacy(i, 2 + i % 4))
    monkeypatch.setenv("TOKEN_OPTIMIZER_AUDIT_WORKERS", "1")
    one = scan(Roots(oc.root, None), None, use_cache=False)
    monkeypatch.setenv("TOKEN_OPTIMIZER_AUDIT_WORKERS", "2")
    monkeypatch.setattr(openclaw, "POOL_BATCH_BYTES", 4096)  # many small batches
    pooled: list[int] = []
    real = openclaw._read_pooled

    def spy(*a: Any) -> list[Any]:
        out = real(*a)  # (an exception here would fall back to in-process: not wanted)
        pooled.append(len(out))
        return out

    monkeypatch.setattr(openclaw, "_read_pooled", spy)
    two = scan(Roots(oc.root, None), tmp_path / "state")
    assert pooled == [40]
    assert two.json_array() == one.json_array()
    assert len(two.rows) == 40


def test_session_row_json_round_trip(oc: OpenClawStore, tmp_path: Path) -> None:
    oc.add_session("s1")
    oc.add_events("s1", [user_event("hello there", T0),
                         assistant_event(T0 + 5, inp=3, out=4, cost=0.5, tools=("exec",)),
                         assistant_event(T0 + 9, model="unknown-x", inp=3, stop="error",
                                         error="boom")])
    (row,) = scan(Roots(oc.root, None), None, use_cache=False).rows
    back = SessionRow.from_json(orjson.loads(orjson.dumps(row.to_json())), row.started_ms,
                                row.ended_ms)
    assert back == row


TRICKY: list[Any] = [
    "/home/u",
    ["/home/u/x", "/home/ux", "a/home/u", {"/home/u/key": "/home/u/val"}],
    {"sourcePath": "/home/u/.openclaw/a.jsonl", "topic": 'say "/home/u/q" \\ /home/u',
     "nested": {"k": ["/home/u", "", "~"], "/home/u": 1, "n": None, "f": 1.5},
     "esc\\": "/home/u\\\"x", "quote\"/home/u": "/home/u\"", "empty": [], "e2": {}},
    [{"a": "x\\", "b": "/home/u"}, "/home/u\n/home/u", "\\/home/u"],
]


@pytest.mark.parametrize("obj", TRICKY)
@pytest.mark.parametrize("home", ["/home/u", "/home/u\"q", ""])
def test_byte_redaction_equals_the_object_walk(obj: Any, home: str) -> None:
    opts = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    want = orjson.dumps(_redact(obj, home), option=opts)
    assert redact_json_bytes(orjson.dumps(obj, option=opts), home) == want


def test_has_store_matches_detect(oc: OpenClawStore, tmp_path: Path) -> None:
    from token_optimizer.audit.scan import detect

    assert not has_store(Roots(oc.root, tmp_path / "nope"))
    (oc.root / "agents" / "main" / "sessions").mkdir(parents=True)
    (oc.root / "agents" / "main" / "sessions" / "x.trajectory.jsonl").write_text("{}\n")
    assert not has_store(Roots(oc.root, None)) and not detect(Roots(oc.root, None))["found"]
    oc.write_jsonl("main", "x.jsonl", _legacy(1))
    assert has_store(Roots(oc.root, None)) and detect(Roots(oc.root, None))["found"]


def test_command_modules_table_matches_registration() -> None:
    import importlib

    for name in cli.CLI_MODULES:
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers(dest="command")
        importlib.import_module(name).register_cli(sub)
        for command in sub.choices:
            assert cli.COMMAND_MODULES.get(command, name) == name, command
    full = cli.build_parser()
    commands = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    assert set(cli.COMMAND_MODULES) <= set(commands.choices)


def test_command_of_skips_global_options() -> None:
    assert cli._command_of(["--home", "/x", "-v", "scan", "--json"]) == "scan"
    assert cli._command_of(["--home=/x", "report", "daily"]) == "report"
    assert cli._command_of(["--help"]) is None
    assert cli._command_of([]) is None


def test_scan_json_cli_output_is_the_walked_json(oc: OpenClawStore, tmp_path: Path,
                                                 capsysbinary: pytest.CaptureFixture[bytes],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        oc.write_jsonl("main", f"s{i}.jsonl", _legacy(i))
    monkeypatch.setenv("HOME", str(tmp_path))
    argv = ["--home", str(tmp_path / "state"), "scan", "--json", "--since", "2026-01-01",
            "--openclaw-root", str(oc.root), "--hermes-home", str(tmp_path / "nh")]
    outs = []
    for _ in range(2):
        assert cli.main(argv) == 0
        outs.append(capsysbinary.readouterr().out)
    assert outs[0] == outs[1]
    rows = orjson.loads(outs[0])
    assert len(rows) == 3 and all(r["sourcePath"].startswith("~/") for r in rows)
    res = scan(Roots(oc.root, None), None, use_cache=False)
    want = orjson.dumps(_redact(res.json_rows(), str(tmp_path)),
                        option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS) + b"\n"
    assert outs[0] == want
